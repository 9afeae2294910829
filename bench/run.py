"""Benchmark of the Sparkify ETL: the real scripts (create_tables.py, etl.py) on generated data,
each run as a user runs it, against the machine's limit, the classic row-at-a-time pipeline and a
peer (dlt). Prints a Markdown report and saves it, with every figure in WORKDIR/results.json;
bench/README.md says what each row measures and how to read it. It drops and recreates the
Sparkify tables of the database it uses: by default an embedded server of its own under the work
folder, stopped at the end, never the project's .pgdata.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import orjson
import psutil
import psycopg2
import pyarrow.json
from psycopg2 import sql as pgsql

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
sys.path.insert(0, str(PROJECT))

import cli  # noqa: E402
import db  # noqa: E402
import embedded  # noqa: E402
import sql_queries as sql  # noqa: E402
from tools import generate_data  # noqa: E402

PY = sys.executable
MB = 1024 * 1024
TRUTH = {t: t for t in sql.STAR_TABLES} | {"resolved": "songplays_resolved"}  # ours: truth.json's

# The main table: a row's key in results.json's "runs", its label, what its rates count.
ROWS = [
    ("create_tables", "create_tables.py", None),
    ("full_load", "etl.py, full load (songs + logs)", "all"),
    ("etl_total", "ETL total (create_tables + full load)", "all"),
    ("rerun", "etl.py re-run, nothing new", None),
    ("damaged_load", "etl.py, full load, one log line in 1,000 damaged", "all"),
    ("song_stage", "song stage (etl.py on song_data only)", "songs"),
    ("increment", "increment: last day onto the others", "day"),
    ("day_alone", "last day alone (songs loaded, no plays)", "day"),
    ("parse_songs", "limit: parse song files (orjson)", "songs"),
    ("parse_logs", "limit: parse log files (pyarrow.json)", "logs"),
    ("bare_copy", "limit: bare COPY of the final rows", "copy"),
    ("limit_total", "limit total (parse + bare COPY)", "all"),
    ("classic", "classic pipeline (extrapolated)", "all"),
    ("dlt", "peer: dlt, raw, from Arrow tables (csv)", "raw"),
]
RATIOS = {  # name: (row, over row)
    "etl_over_limit": ("etl_total", "limit_total"),
    "increment_over_alone": ("increment", "day_alone"),
    "rerun_over_full_load": ("rerun", "full_load"),
    "damaged_over_full_load": ("damaged_load", "full_load"),
    "classic_over_etl": ("classic", "etl_total"),
    "dlt_over_etl": ("dlt", "etl_total"),
}
TARGETS = [  # name, ratio or figure, goal, met when
    ("ETL / limit", "etl_over_limit", "<= 2x", lambda v: v <= 2),
    ("increment / last day alone", "increment_over_alone", "<= 1.5x", lambda v: v <= 1.5),
    ("classic / ETL", "classic_over_etl", ">= 50x", lambda v: v >= 50),
    ("re-run / full load", "rerun_over_full_load", "< 5%", lambda v: v < 0.05),
    ("song stage files/s", "song_stage_files_per_s", ">= 20,000", lambda v: v >= 20_000),
]
# On Citus, a bare table of the limit is laid out as its star table: its COPY goes to the shards.
LAY_OUT_LIKE = (
    "SELECT CASE WHEN partmethod = 'h' THEN create_distributed_table(%(bare)s, "
    "column_to_column_name(logicalrelid, partkey)) WHEN repmodel = 't' THEN "
    "create_reference_table(%(bare)s) END FROM pg_catalog.pg_dist_partition "
    "WHERE logicalrelid = to_regclass(%(star)s)"
)


@dataclasses.dataclass(frozen=True)
class Run:
    """Wall seconds; for a subprocess, its tree's peak RSS (bytes) and what it printed."""

    seconds: float
    rss_max: int = 0
    rss_sum: int = 0
    rc: int = 0
    stdout: str = ""
    stderr: str = ""

    def figures(self) -> dict:
        rss = {"rss_max_mb": round(self.rss_max / MB), "rss_sum_mb": round(self.rss_sum / MB)}
        return {"seconds": round(self.seconds, 4)} | (rss if self.rss_max else {})


def measure(args: list[str], env: dict) -> Run:
    """Run args from the project folder, timed, its process tree's RSS polled every 20 ms."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            args, cwd=PROJECT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        rss_max = rss_sum = 0
        exited = os.pidfd_open(proc.pid)  # readable the moment the process ends: an exact time
        try:
            while not select.select([exited], [], [], 0.02)[0]:
                largest, total = tree_rss(proc.pid)
                rss_max, rss_sum = max(rss_max, largest), max(rss_sum, total)
        except BaseException:  # the bench stopped (SIGTERM to it alone): so does what it times
            proc.terminate()
            proc.wait()
            raise
        finally:
            os.close(exited)
        seconds = time.perf_counter() - started
        proc.wait()
        for f in (out, err):
            f.seek(0)
        printed = [f.read().decode(errors="replace") for f in (out, err)]
    return Run(seconds, rss_max, rss_sum, proc.returncode, *printed)


def tree_rss(pid: int) -> tuple[int, int]:
    """Over pid and its children: (the largest peak RSS of one, its VmHWM; the sum of their RSS)."""
    largest = total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):
                rss = proc.memory_info().rss
                largest, total = max(largest, rss), total + rss
                peak = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text())
                largest = max(largest, int(peak[1]) * 1024 if peak else 0)
    return largest, total


def keep_faster(best: dict[str, Run], name: str, run: Run) -> None:
    """Noise from other work on a shared machine only adds time: the faster run is the truer."""
    if name not in best or run.seconds < best[name].seconds:
        best[name] = run


def ensure_data(workdir: Path, events: int, args: argparse.Namespace) -> tuple[Path, dict]:
    """(the generated data folder, its truth.json), reused with --keep when the same."""
    out = workdir / f"data-e{events}-s{args.songs}-seed{args.seed}"
    with contextlib.suppress(OSError, ValueError, KeyError):
        truth = json.loads((out / "truth.json").read_text())
        wanted = {"events": events, "songs": args.songs, "seed": args.seed}
        if args.keep and truth["params"] | wanted == truth["params"]:
            print(f"data: reusing {out} (--keep)", flush=True)
            return out, truth
    print(f"data: generating {events:,} events, {args.songs:,} song files in {out}", flush=True)
    return out, generate_data.generate(out, songs=args.songs, events=events, seed=args.seed)


def link_logs(folder: Path, data: Path, logs: list[Path], fresh: bool = False) -> Path:
    """folder as a data folder of links to data's song_data and to the given log files, at their
    own paths (the manifest knows files by those). fresh: made anew, with no log file."""
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "song_data").symlink_to(data / "song_data", target_is_directory=True)
    for path in logs:
        (folder / path.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
        (folder / path.relative_to(data)).symlink_to(path)
    return folder


# The damaged load reads the same logs with one line in DAMAGED_EVERY damaged, in turn cut in
# half (as a write that failed leaves it) and holding its sessionId as a string (a value of
# another type than its field's): messy deliveries, whose good lines should load about as fast.
DAMAGED_EVERY = 1000
SESSION_ID = re.compile(rb'"sessionId":\s*(\d+)')


def damaged_copy(folder: Path, data: Path, logs: list[Path]) -> Path:
    """folder as a data folder of a link to data's song_data and copies of the log files at
    their own paths, with one line in DAMAGED_EVERY damaged (the same lines at every run)."""
    link_logs(folder, data, [], fresh=True)
    count = 0
    for path in logs:
        lines = path.read_bytes().splitlines(keepends=True)
        for n in range(-count % DAMAGED_EVERY, len(lines), DAMAGED_EVERY):
            line = lines[n]
            cut = (count + n) // DAMAGED_EVERY % 2 == 0
            lines[n] = (
                line[: len(line) // 2] + b"\n"
                if cut
                else SESSION_ID.sub(rb'"sessionId":"\1"', line)
            )
        count += len(lines)
        copy = folder / path.relative_to(data)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(b"".join(lines))
    return folder


def query(settings: db.Settings, statement, params=None) -> list[tuple]:
    with contextlib.closing(db.connect(settings)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def star_counts(settings: db.Settings) -> dict[str, int]:
    count = pgsql.SQL("SELECT count(*) FROM {}")
    counts = {t: query(settings, count.format(pgsql.Identifier(t)))[0][0] for t in sql.STAR_TABLES}
    return counts | {"resolved": query(settings, sql.resolved_plays_counted)[0][0]}


def bare_copy(settings: db.Settings) -> tuple[float, dict[str, int]]:
    """The limit's write side: the loaded star rows, exported into memory, COPYed into tables of
    the same columns and nothing else; only the COPYs are timed. Returns (seconds, rows). The
    tables (bench_limit_songplays, ...) go beside the star tables, in their schema, and are
    dropped after: the role needs no privilege that create_tables.py does not."""
    with contextlib.closing(db.connect(settings)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(sql.tables_schema_use)  # the star's schema: the bare tables are made there
        citus = db.distributed(cur)  # as load.server_of chooses
        payloads = {t: io.BytesIO() for t in sql.STAR_TABLES}
        for table, payload in payloads.items():
            export = pgsql.SQL("COPY (SELECT * FROM {}) TO STDOUT")
            cur.copy_expert(export.format(pgsql.Identifier(table)), payload)
            payload.seek(0)
        bare = {table: f"bench_limit_{table}" for table in payloads}
        drop = pgsql.SQL("DROP TABLE IF EXISTS {}").format(
            pgsql.SQL(", ").join(map(pgsql.Identifier, bare.values()))
        )
        cur.execute(drop)  # left by a run that was stopped
        for table, name in bare.items():
            new = pgsql.SQL("CREATE TABLE {} AS SELECT * FROM {} WITH NO DATA")
            cur.execute(new.format(pgsql.Identifier(name), pgsql.Identifier(table)))
            if citus:
                cur.execute(LAY_OUT_LIKE, {"bare": name, "star": table})
        started = time.perf_counter()
        for table, payload in payloads.items():
            into = pgsql.SQL("COPY {} FROM STDIN")
            cur.copy_expert(into.format(pgsql.Identifier(bare[table])), payload)
        seconds = time.perf_counter() - started
        cur.execute(drop)
    return seconds, {t: p.getvalue().count(b"\n") for t, p in payloads.items()}


def parse_limit(data: Path) -> tuple[float, float]:
    """The limit's read side, files in the page cache: seconds to parse the song, the log files."""
    started = time.perf_counter()
    for path in sorted((data / "song_data").rglob("*.json")):
        orjson.loads(path.read_bytes())
    middle = time.perf_counter()
    for path in sorted((data / "log_data").rglob("*.json")):
        pyarrow.json.read_json(path)
    return middle - started, time.perf_counter() - middle


def dlt_python(workdir: Path, version: str) -> tuple[Path | None, str]:
    """WORKDIR/dlt-venv's python, dlt installed on first use; or (None, why it cannot be had)."""
    venv = workdir / "dlt-venv"
    python, package = venv / "bin" / "python", f"dlt[postgres,parquet]=={version}"
    install = [str(python), "-m", "pip", "install", "--quiet", "--retries", "1", package, "orjson"]
    for step in [] if python.exists() else [[PY, "-m", "venv", "--clear", str(venv)], install]:
        print(f"peer: {step[2]} for {package} in {venv} ...", flush=True)
        done = subprocess.run(step, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            return None, f"cannot install {package} (no network?): {done.stderr.strip()[-300:]}"
    probe = [str(python), "-c", "import dlt, orjson, pyarrow; print(dlt.__version__)"]
    if subprocess.run(probe, capture_output=True, text=True).stdout.strip() != version:
        return None, f"{venv} holds no dlt {version} (remove it to reinstall)"
    return python, ""


def dlt_url(settings: db.Settings) -> str:
    """The database as the URL dlt takes, with the user, password and host it insists on."""
    with contextlib.closing(db.connect(settings)) as conn:
        info = {
            k: getattr(conn.info, k) or "" for k in ("user", "password", "dbname", "host", "port")
        }
    user, password = (quote(info[k], safe="") for k in ("user", "password"))
    where = urlencode({"host": info["host"], "port": info["port"]})  # a socket folder wins
    return f"postgresql://{user}:{password}@localhost/{quote(info['dbname'])}?{where}"


def run_dlt(bench: Bench, python: Path, data: Path) -> dict:
    """bench/dlt_peer.py in dlt's venv, measured; then its rows counted, its schemas dropped."""
    pipelines = bench.workdir / "dlt-pipelines"
    env = bench.env | {"SPARKIFY_DLT_URL": dlt_url(bench.settings), "DLT_DATA_DIR": str(pipelines)}
    drop = "DROP SCHEMA IF EXISTS bench_dlt, bench_dlt_staging CASCADE"
    script = [str(python), str(BENCH / "dlt_peer.py"), str(data), "bench_dlt", str(pipelines)]
    try:
        query(bench.settings, drop)
        run = measure(script, env)
        if run.rc != 0:
            return {"skipped": f"dlt_peer.py exited {run.rc}: {run.stderr.strip()[-300:]}"}
        count = pgsql.SQL("SELECT count(*) FROM {}")
        rows = {
            t: query(bench.settings, count.format(pgsql.Identifier("bench_dlt", t)))[0][0]
            for t in ("song_data", "log_data")
        }
        return run.figures() | json.loads(run.stdout.splitlines()[-1]) | {"rows": rows}
    except (ValueError, IndexError, psycopg2.Error) as exc:
        return {"skipped": f"failed: {cli.first_line(exc)}"}
    finally:
        query(bench.settings, drop)
        shutil.rmtree(pipelines, ignore_errors=True)


class Bench:
    """The database the benchmark uses, and the project's scripts run there as a user runs them."""

    def __init__(self, args: argparse.Namespace):
        self.workdir = args.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        chosen = ("DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGSERVICE", "SPARKIFY_PGDATA")
        if not args.database_url and not any(os.environ.get(k) for k in chosen):
            os.environ["SPARKIFY_PGDATA"] = str(self.workdir / "pgdata")
        # A URL reaches the scripts in their environment: every local user can read command lines.
        self.env = os.environ | ({"DATABASE_URL": args.database_url} if args.database_url else {})
        self.settings = db.Settings.from_env(args.database_url)
        self.started_server = False

    def __enter__(self) -> Bench:
        if self.settings.embedded:
            self.started_server = embedded.running(self.settings.pgdata) is None
        print(f"database: {self.settings.describe()} (its Sparkify tables are dropped)", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.started_server:
            embedded.stop(self.settings.pgdata)

    def script(self, *args: str) -> Run:
        run = measure([PY, *args], self.env)
        if run.rc != 0:
            raise SystemExit(f"error: {args[0]} exited {run.rc}\n{run.stdout[-2000:]}{run.stderr}")
        return run

    def etl(self, folder: Path) -> Run:
        return self.script("etl.py", "--data", str(folder), "--no-progress")


def environment(settings: db.Settings, load_start: tuple[float, ...]) -> dict:
    """The machine, the database, the load average at the start and now, the commit measured."""
    (version,) = query(
        settings,
        "SELECT current_setting('server_version') || coalesce(' with Citus ' || "
        "(SELECT extversion FROM pg_extension WHERE extname = 'citus'), '')",
    )[0]
    cpu = re.search(r"model name\s*: (.*)", Path("/proc/cpuinfo").read_text())
    describe = ["git", "-C", str(PROJECT), "describe", "--always", "--dirty"]
    commit = subprocess.run(describe, capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu[1] if cpu else platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": version,
        "embedded_server": settings.embedded,
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "commit": commit or None,  # "-dirty": the tree had local changes
    }


def full_round(bench: Bench, data: Path, best: dict[str, Run], damaged: Path | None = None) -> dict:
    """One round of the full load, its re-run with nothing new, and the limit; and of the full
    load of the damaged copy, where there is one. Returns the rows loaded, and those the bare
    COPY wrote."""
    keep_faster(best, "create_tables", bench.script("create_tables.py"))
    keep_faster(best, "full_load", bench.etl(data))
    keep_faster(best, "rerun", bench.etl(data))
    rows = {"full_load": star_counts(bench.settings)}
    copy_s, rows["bare_copy"] = bare_copy(bench.settings)
    songs_s, logs_s = parse_limit(data)
    for name, seconds in (("bare_copy", copy_s), ("parse_songs", songs_s), ("parse_logs", logs_s)):
        keep_faster(best, name, Run(seconds))
    if damaged:
        bench.script("create_tables.py")
        keep_faster(best, "damaged_load", bench.etl(damaged))
        rows["damaged_load"] = star_counts(bench.settings)
    return rows


def increment_round(bench: Bench, data: Path, logs: list[Path], best: dict[str, Run]) -> dict:
    """One round of the increment (the last day's file onto the songs and the other days) and of
    the last day alone (onto the songs only), with the song stage. Returns the rows after each."""
    folder = link_logs(bench.workdir / "increment", data, logs[:-1], fresh=True)
    bench.script("create_tables.py")
    bench.etl(folder)
    keep_faster(best, "increment", bench.etl(link_logs(folder, data, logs[-1:])))
    rows = {"after_increment": star_counts(bench.settings)}
    folder = link_logs(bench.workdir / "day-alone", data, [], fresh=True)
    bench.script("create_tables.py")
    keep_faster(best, "song_stage", bench.etl(folder))
    keep_faster(best, "day_alone", bench.etl(link_logs(folder, data, logs[-1:])))
    return rows | {"day_alone": star_counts(bench.settings)}


def run_classic(bench: Bench, data: Path, truth: dict, args: argparse.Namespace) -> dict:
    """bench/classic.py on the first events and song files, extrapolated linearly."""
    print(f"classic: {args.classic_events:,} events, {args.classic_songs:,} song files ...")
    slice_ = [str(args.classic_songs), str(args.classic_events)]
    run = bench.script(str(BENCH / "classic.py"), str(data), *slice_)
    c = json.loads(run.stdout.splitlines()[-1])
    songs_s = c["songs_s"] * truth["song_files"] / c["song_files"]
    logs_s = c["logs_s"] * truth["log_records"] / c["events"]
    extrapolated = dataclasses.replace(run, seconds=songs_s + logs_s)
    return extrapolated.figures() | {"measured": c}


def measure_size(bench: Bench, args: argparse.Namespace, events: int, everything: bool) -> dict:
    """Every row at one size, each the fastest of --rounds rounds, interleaved; without everything
    (--growth), the full load, its re-run, the increment, the last day alone and the limit only."""
    data, truth = ensure_data(bench.workdir, events, args)
    logs = sorted((data / "log_data").rglob("*.json"))
    best, rows = {}, {"truth": {k: truth[v] for k, v in TRUTH.items()}}
    damaged = damaged_copy(bench.workdir / "damaged", data, logs) if everything else None
    for n in range(1, args.rounds + 1):
        rows |= full_round(bench, data, best, damaged)
        rows |= increment_round(bench, data, logs, best)
        print(f"round {n}, fastest:", ", ".join(f"{k} {v.seconds:.2f} s" for k, v in best.items()))
    runs = {name: run.figures() for name, run in best.items()}
    etl_s = runs["create_tables"]["seconds"] + runs["full_load"]["seconds"]
    limit_s = sum(runs[k]["seconds"] for k in ("parse_songs", "parse_logs", "bare_copy"))
    runs["etl_total"] = {"seconds": round(etl_s, 4)}
    runs["limit_total"] = {"seconds": round(limit_s, 4)}
    if everything:
        classic = args.classic_events and run_classic(bench, data, truth, args)
        runs["classic"] = classic or {"skipped": "--classic-events 0"}
        python, why = (None, "--no-peers") if args.no_peers else dlt_python(bench.workdir, args.dlt)
        runs["dlt"] = run_dlt(bench, python, data) if python else {"skipped": why}
    s = {key: run.get("seconds") for key, run in runs.items()}
    ratios = {name: round(s[a] / s[b], 4) for name, (a, b) in RATIOS.items() if s.get(a)}
    size = {
        "data": {
            "events": truth["log_records"],
            "song_files": truth["song_files"],
            "log_files": truth["log_files"],
            "log_mb": round(sum(p.stat().st_size for p in logs) / MB, 1),
            "last_day": logs[-1].name,
            "last_day_events": sum(1 for x in logs[-1].read_bytes().splitlines() if x.strip()),
        },
        "runs": {key: runs[key] for key, _, _ in ROWS if key in runs},
        "rows": rows,
        "ratios": ratios,
    }
    if everything:
        values = ratios | {"song_stage_files_per_s": round(truth["song_files"] / s["song_stage"])}
        size["targets"] = {  # those measured: their value, goal and verdict
            name: {"value": values[key], "goal": goal, "met": met(values[key])}
            for name, key, goal, met in TARGETS
            if key in values
        }
    for folder in ["increment", "day-alone", "damaged", *([] if args.keep else [data.name])]:
        shutil.rmtree(bench.workdir / folder, ignore_errors=True)
    return size


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    digits = 1 if digits == 0 and abs(value) < 10 and value != int(value) else digits
    return f"{value:,.{digits}f}"


def rss(run: dict) -> str:
    return f"{run['rss_max_mb']:,} / {run['rss_sum_mb']:,}" if "rss_max_mb" in run else ""


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, every column but the first right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    cells = [
        [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        for row in [header, *rows]
    ]
    rule = ["-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "|".join(rule) + "|", *lines[1:]])


def footer(machine: dict, sizes: list[dict]) -> str:
    m, server = machine, "the embedded " if machine["embedded_server"] else ""
    start, end = (", ".join(map(str, machine[k])) for k in ("load_start", "load_end"))
    lines = [
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}, Python "
        f"{m['python']}, {server}PostgreSQL {m['postgresql']}. Load average (1, 5, 15 min) at the "
        f"start {start}, at the end {end}. Commit: {m['commit'] or 'unknown'}."
    ]
    for rows, d, runs in ((size["rows"], size["data"], size["runs"]) for size in sizes):
        for stage in ("full_load", "after_increment"):
            if rows.get(stage, rows["truth"]) != rows["truth"]:
                lines.append(f"WARNING: the {stage} rows differ from truth.json: {rows[stage]}")
        raw = {"song_data": d["song_files"], "log_data": d["events"]}  # a row per file, per event
        if runs.get("dlt", {}).get("rows", raw) != raw:
            lines.append(f"WARNING: dlt landed {runs['dlt']['rows']} raw rows, not {raw}")
    return "\n\n".join(lines)


def report(r: dict) -> str:
    d, runs, rows = r["data"], r["runs"], r["rows"]
    files, records = d["song_files"] + d["log_files"], d["song_files"] + d["events"]
    counted = {  # what a row's files/s, records/s and rows/s count
        "all": (files, records, sum(rows["full_load"][t] for t in sql.STAR_TABLES)),
        "songs": (d["song_files"], d["song_files"], None),
        "logs": (d["log_files"], d["events"], None),
        "day": (1, d["last_day_events"], None),
        "copy": (None, None, sum(rows["bare_copy"].values())),
        "raw": (files, records, records),
    }
    main = []
    for key, label, what in ROWS:
        run = runs.get(key)
        if run and "skipped" in run:
            main.append([label, "", "", "", "skipped", ""])
        elif run:
            rates = [fmt(n / run["seconds"] if n else None) for n in counted.get(what, [None] * 3)]
            main.append([label, *rates, fmt(run["seconds"], 2), rss(run)])
    stages = ["truth", "full_load", "after_increment", "day_alone", "bare_copy", "damaged_load"]
    counts = [[name, *(fmt(rows[stage].get(name)) for stage in stages)] for name in TRUTH]
    goals = []
    for name, key, goal, _ in (target for target in TARGETS if target[0] in r["targets"]):
        value, met = r["targets"][name]["value"], r["targets"][name]["met"]
        shown = f"{value:.1%}" if "%" in goal else f"{value:,.1f}x" if "x" in goal else fmt(value)
        if key in RATIOS:
            shown = " / ".join(f"{runs[k]['seconds']:,.2f} s" for k in RATIOS[key]) + f" = {shown}"
        goals.append([name, shown, goal, "met" if met else "MISSED"])
    text = [
        f"## Sparkify ETL benchmark: {d['events']:,} events in {d['log_files']} log files "
        f"({d['log_mb']:,} MB), {d['song_files']:,} song files (seed {r['params']['seed']})",
        table(["row", "files/s", "records/s", "rows/s", "wall s", "peak RSS MB (max / sum)"], main),
        f"Each row gives its fastest of --rounds {r['params']['rounds']}, interleaved (the classic "
        "and the peer run once). Rates are counts over the wall time of the whole subprocess, "
        "Python start-up included. Peak RSS: the largest process (its VmHWM) / the peak sum over "
        "the process tree (polled every 20 ms); the PostgreSQL server is not counted. The "
        f"increment loads the last day, {d['last_day']} ({d['last_day_events']:,} events), onto "
        f"the songs and the other {d['log_files'] - 1} days; the last day alone, onto the songs. "
        f"The damaged load reads the same logs with one line in {DAMAGED_EVERY:,} cut in half or "
        "holding its sessionId as a string (each rejected): "
        f"{r['ratios']['damaged_over_full_load']:.2f}x the full load's time.",
        table(["rows", *(stage.replace("_", " ") for stage in stages)], counts),
        "### Targets",
        table(["target", "measured", "goal", "verdict"], goals),
    ]
    if "measured" in runs.get("classic", {}):
        c = runs["classic"]["measured"]
        text.append(
            f"Classic: measured on {c['events']:,} events ({c['logs_s']:.1f} s) and "
            f"{c['song_files']:,} song files ({c['songs_s']:.1f} s), extrapolated linearly; its "
            f"play lookups searched {c['songs_at_lookup']:,} songs."
        )
    peer = runs["dlt"]
    if "skipped" in peer:
        text.append(f"The dlt peer was skipped: {peer['skipped']}.")
    else:
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in peer["steps"].items())
        text.append(f"The dlt peer: dlt {peer['dlt']}, {steps}; raw rows {peer['rows']}.")
    return "\n\n".join([*text, footer(r["machine"], [r])]) + "\n"


def growth_report(r: dict) -> str:
    lines = []
    for s in r["sizes"]:
        events, runs = s["data"]["events"], s["runs"]
        etl_s, limit_s = runs["etl_total"]["seconds"], runs["limit_total"]["seconds"]
        star = sum(s["rows"]["full_load"][t] for t in sql.STAR_TABLES)
        lines.append(
            [fmt(events), fmt(s["data"]["log_mb"]), fmt(etl_s, 1), fmt(etl_s / events * 1e6, 1),
             fmt(star / etl_s), rss(runs["full_load"]), fmt(limit_s, 1), f"{etl_s / limit_s:.1f}x",
             fmt(runs["increment"]["seconds"], 2), fmt(runs["day_alone"]["seconds"], 2),
             f"{s['ratios']['increment_over_alone']:.1f}x"]
        )  # fmt: skip
    header = ["events", "log MB", "wall s", "s per 1M events", "rows/s",
              "peak RSS MB (max / sum)", "limit s", "ETL / limit", "increment s",
              "last day alone s", "increment / alone"]  # fmt: skip
    text = [
        f"## How the full load grows ({r['params']['songs']:,} song files, "
        f"seed {r['params']['seed']})",
        table(header, lines),
        f"Wall s: create_tables.py + etl.py, the fastest of --rounds {r['params']['rounds']}, "
        "interleaved with the limit's; a load growing linearly keeps its s per 1M events. "
        "Increment: the last day's file onto the songs and the other days; last day alone: the "
        "same file onto the songs only (a first load).",
    ]
    return "\n\n".join([*text, footer(r["machine"], r["sizes"])]) + "\n"


def sizes(text: str) -> list[int]:
    return [cli.positive(part.strip()) for part in text.split(",")]


OPTIONS = [  # flag, argparse settings, help
    ("--events", {"type": cli.positive, "default": 1_000_000}, "log events, in 30 daily files"),
    ("--songs", {"type": cli.positive, "default": 20_000}, "song files (also for --growth)"),
    ("--seed", {"type": int, "default": 42}, "generator seed: same seed and sizes, same bytes"),
    ("--workdir", {"type": Path, "default": BENCH / "out"}, "data, server, reports, dlt's venv"),
    ("--keep", {"action": "store_true"}, "keep the generated data, and reuse it when it matches"),
    ("--rounds", {"type": cli.positive, "default": 2}, "rounds of the timed rows, interleaved; "
     "each row's fastest is reported"),
    ("--database-url", {}, "benchmark on this PostgreSQL (a Citus coordinator too; its Sparkify "
     "tables are dropped); without it: DATABASE_URL, the PG* variables, else an embedded server"),
    ("--classic-events", {"type": cli.natural, "default": 20_000}, "events the classic pipeline "
     "runs on, from the start of the logs; 0 skips it"),
    ("--classic-songs", {"type": cli.positive, "default": 2_000}, "song files its song stage runs "
     "on (the rest of the catalogue is copied in untimed)"),
    ("--no-peers", {"action": "store_true"}, "skip the dlt row (it installs dlt from PyPI)"),
    ("--dlt-version", {"default": "1.31.0", "dest": "dlt", "metavar": "V"}, "dlt release for the "
     "peer row, installed in WORKDIR/dlt-venv"),
    ("--growth", {"action": "store_true"}, "instead: the full load, its re-run, the increment, "
     "the last day alone and the limit at each --growth-sizes (WORKDIR/growth.md and "
     "growth.json)"),
    ("--growth-sizes", {"type": sizes, "default": "1000000,3000000,10000000",
                        "metavar": "N,N,..."}, "events at each size of --growth"),
]  # fmt: skip


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default shown (a switch's, off, and an unset one's, not); the description and
    the example kept as written, the example on one line to copy."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        description="Benchmark the Sparkify ETL on generated data: the full load, the re-run with "
        "nothing new, the song stage, the daily increment (the last day onto the others, and "
        "alone), the machine's limit (fastest parse + bare COPY), the classic row-at-a-time "
        "pipeline and a peer (dlt loading the same files raw). Prints a Markdown report, saved as "
        "WORKDIR/report.md, every figure in WORKDIR/results.json. See bench/README.md.",
        epilog="example (a small day, a minute or two): python bench/run.py --events 100000 "
        "--songs 2000 --no-peers",
        formatter_class=HelpFormatter,
    )
    for flag, settings, help_text in OPTIONS:
        parser.add_argument(flag, help=help_text, **settings)
    return cli.run_command(lambda: benchmark(parser.parse_args(argv)))


def benchmark(args: argparse.Namespace) -> int:
    with Bench(args) as bench:
        load_start = os.getloadavg()
        if args.growth:
            results = {"sizes": [measure_size(bench, args, n, False) for n in args.growth_sizes]}
        else:
            results = measure_size(bench, args, args.events, True)
        params = vars(args) | {"database_url": bench.settings.describe()}
        results |= {"params": params, "machine": environment(bench.settings, load_start)}
    md, js = ("growth.md", "growth.json") if args.growth else ("report.md", "results.json")
    text = growth_report(results) if args.growth else report(results)
    (bench.workdir / md).write_text(text)
    (bench.workdir / js).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\n{text}\n(saved as {bench.workdir / md} and {bench.workdir / js})")
    return 0


if __name__ == "__main__":
    cli.finish(main)
