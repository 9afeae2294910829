"""Benchmark of the Sparkify ETL: generated data, the real scripts run as a user runs them,
against the limit of the machine and the classic row-at-a-time pipeline.

    python bench/run.py                  # 1M events, 20k song files (make bench)
    python bench/run.py --rss-scaling    # peak RSS of etl.py at 200k and at 2M events
    python bench/run.py --growth         # the full load at 1M, 3M and 10M events

See bench/README.md for every option and how to read the report.

What it does, in order (every step prints what it measured):
  1. generates the data with generate_data.generate (reused with --keep when it is there with the
     same parameters);
  2. full load: ``create_tables.py`` then ``etl.py --data DIR --no-progress``, each a subprocess,
     timed, with the peak RSS of etl.py's process tree (main process and parse worker);
  3. re-run with nothing new: ``etl.py`` again;
  4. the limit: the fastest parse of the same files alone (orjson for song files,
     pyarrow.json.read_json for log files, no validation), plus a bare COPY of the final rows
     (exported from the loaded star tables) into plain tables without indexes or constraints;
  5. stages: ``create_tables.py``, ``etl.py`` on a folder with song_data only, then ``etl.py`` on
     the full folder (the songs are unchanged by then, so it loads the logs);
  6. the classic pipeline (bench/classic.py) on a slice, extrapolated linearly to the full set;
  7. the peers: dlt (installed in a virtualenv of its own under the work folder, never the
     project's) lands the same files raw, in two tables of its own schema, with its csv loader
     (COPY), run by bench/dlt_peer.py: once from Arrow tables (dlt's fast path) and once from
     dicts (the usual way); skipped with --no-peers, or with the reason when dlt cannot be
     installed;
  8. a Markdown table of it all, and the targets (also saved as WORKDIR/report.md).

With --growth it instead loads each of --growth-sizes (generated on demand) with create_tables.py
and etl.py, and shows how time, memory and the limit grow (WORKDIR/growth.md and growth.png).

The benchmark drops and recreates the project's tables in the database it uses. Unless told
otherwise (--database-url, DATABASE_URL, PG* variables, SPARKIFY_PGDATA) that is an embedded
server of its own under the work folder, stopped at the end; never the project's .pgdata.
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
import shutil
import subprocess
import sys
import tempfile
import threading
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
import generate_data  # noqa: E402
import sql_queries as sql  # noqa: E402

PY = sys.executable
MB = 1024 * 1024
LIMIT_SCHEMA = "bench_limit"
CLASSIC_SCHEMA = "bench_classic"
DLT_SCHEMA = "bench_dlt"
DLT_VERSION = "1.31.0"
GROWTH_SIZES = [1_000_000, 3_000_000, 10_000_000]
DLT_TABLES = {"song_data": "song file", "log_data": "event"}  # as bench/dlt_peer.py names them

# Row labels of the main table, in order: tests/test_bench.py looks for each of them.
ROWS = {
    "create": "create_tables.py",
    "full": "etl.py, full load (songs + logs)",
    "etl": "ETL total (create_tables + full load)",
    "rerun": "etl.py re-run, nothing new",
    "songs": "song stage (etl.py on song_data only)",
    "logs": "log stage (etl.py, songs already loaded)",
    "parse_songs": "limit: parse song files (orjson)",
    "parse_logs": "limit: parse log files (pyarrow.json)",
    "copy": "limit: bare COPY of the final rows",
    "limit": "limit total (parse + bare COPY)",
    "classic": "classic pipeline (extrapolated)",
    "dlt_arrow": "peer: dlt, raw, from Arrow tables (csv)",
    "dlt_dicts": "peer: dlt, raw, from dicts (csv)",
}
DLT_ITEMS = ("arrow", "dicts")  # bench/dlt_peer.py --items, one peer row each
TARGETS = ["ETL / limit", "classic / ETL", "song stage files/s", "re-run / full load"]


# ================================================================ measuring a subprocess


@dataclasses.dataclass
class Measured:
    """A finished subprocess: wall time, exit code, output, peak memory."""

    args: list[str]
    wall: float
    rc: int
    stdout: str
    stderr: str
    rss_max: int  # bytes: peak RSS of the largest process of the tree (its VmHWM)
    rss_sum: int  # bytes: peak of the tree's summed RSS, polled every 20 ms
    rss_by_pid: dict[int, int]

    def check(self) -> Measured:
        if self.rc != 0:
            raise SystemExit(
                f"error: {' '.join(self.args)} exited {self.rc}\n"
                f"{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
            )
        return self


def run_measured(args: list[str], env: dict, poll: float = 0.02) -> Measured:
    """Run args from the project folder; time it and follow the RSS of it and its children.

    Each process's own high-water mark (VmHWM in /proc, exact and kept from exec on) gives
    the largest single process; not wait4()'s ru_maxrss, which starts from this benchmark's
    own RSS at the fork. Polling gives the peak of their sum (shared pages counted once per
    process, so an upper bound). Without /proc (macOS), polled RSS stands in for VmHWM."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            args, cwd=PROJECT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        by_pid: dict[int, int] = {}
        peak_sum = [0]
        done = threading.Event()

        def follow() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.NoSuchProcess:
                return
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    return
                total = 0
                for p in tree:
                    try:
                        rss = p.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                    by_pid[p.pid] = max(by_pid.get(p.pid, 0), rss, high_water(p.pid))
                    total += rss
                peak_sum[0] = max(peak_sum[0], total)
                done.wait(poll)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        _, status = os.waitpid(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            args,
            wall,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            max(by_pid.values(), default=0),
            peak_sum[0],
            by_pid,
        )


def high_water(pid: int) -> int:
    """The process's peak RSS so far in bytes (0 where /proc has no VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# ================================================================ data


def data_dir(workdir: Path, events: int, songs: int, seed: int) -> Path:
    return workdir / f"data-e{events}-s{songs}-seed{seed}"


def ensure_data(workdir: Path, events: int, songs: int, seed: int, keep: bool) -> tuple[Path, dict]:
    """The generated data set, and its truth; regenerated unless --keep finds the same one."""
    out = data_dir(workdir, events, songs, seed)
    truth_file = out / "truth.json"
    complete = all((out / name).is_dir() for name in ("song_data", "log_data"))
    if keep and truth_file.exists() and complete:
        truth = json.loads(truth_file.read_text())
        p = truth.get("params", {})
        if (p.get("events"), p.get("songs"), p.get("seed")) == (events, songs, seed):
            print(f"data: reusing {out} (--keep)", flush=True)
            return out, truth
    print(f"data: generating {events:,} events and {songs:,} song files in {out} ...", flush=True)
    started = time.perf_counter()
    truth = generate_data.generate(out, songs=songs, events=events, seed=seed)
    print(
        f"data: generated in {time.perf_counter() - started:.1f} s: {truth['song_files']:,} "
        f"song files, {truth['log_records']:,} events in {truth['log_files']} log files "
        f"({dir_size(out) / MB:,.0f} MB)",
        flush=True,
    )
    return out, truth


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.json"))


def songs_only_dir(workdir: Path, data: Path) -> Path:
    """A folder whose song_data is the data set's (a symlink) and which has no log_data: the
    manifest's paths (relative to the folder) are the same as in the full folder."""
    out = workdir / f"songs-only-{data.name}"
    out.mkdir(parents=True, exist_ok=True)
    link = out / "song_data"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((data / "song_data").resolve(), target_is_directory=True)
    return out


def classic_slice(
    workdir: Path, data: Path, events: int, song_files: int | None
) -> tuple[Path, dict]:
    """A folder with the first song_files song files (all when None) and the first `events`
    events of the logs in file order (whole files, then the first lines of the next one)."""
    out = workdir / f"classic-slice-{data.name}"
    if out.exists():
        shutil.rmtree(out)
    (out / "log_data").mkdir(parents=True)
    all_songs = sorted((data / "song_data").rglob("*.json"))
    if song_files is None or song_files >= len(all_songs):
        (out / "song_data").symlink_to((data / "song_data").resolve(), target_is_directory=True)
        chosen = len(all_songs)
    else:
        for path in all_songs[:song_files]:
            target = out / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
        chosen = song_files
    taken, files, partial = 0, 0, False
    for path in sorted((data / "log_data").rglob("*.json")):
        if taken >= events:
            break
        lines = path.read_bytes().split(b"\n")
        lines = [line for line in lines if line.strip()]
        keep = lines[: events - taken]
        partial = partial or len(keep) < len(lines)
        target = out / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\n".join(keep))
        taken += len(keep)
        files += 1
    return out, {"song_files": chosen, "events": taken, "log_files": files, "partial": partial}


# ================================================================ the database


def connect(settings: db.Settings):
    return db.connect(settings)


def star_counts(settings: db.Settings) -> dict[str, int]:
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            counts = {}
            for table in sql.STAR_TABLES:
                cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(table)))
                counts[table] = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM songplays WHERE song_id IS NOT NULL")
            counts["resolved"] = cur.fetchone()[0]
            return counts
    finally:
        conn.close()


def truth_mismatches(counts: dict[str, int], truth: dict) -> dict[str, tuple[int, int]]:
    """Counts that differ from the generator's truth.json: {name: (loaded, expected)}."""
    return {
        k: (counts[k], truth[v])
        for k, v in [
            ("songplays", "songplays"),
            ("users", "users"),
            ("songs", "songs"),
            ("artists", "artists"),
            ("time", "time"),
            ("resolved", "songplays_resolved"),
        ]
        if counts[k] != truth[v]
    }


def server_version(settings: db.Settings) -> str:
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0]
    finally:
        conn.close()


def database_version(settings: db.Settings) -> str:
    """ "18.6", or "16.4 with Citus 12.1" on a Citus coordinator."""
    citus = citus_version(settings)
    return server_version(settings) + (f" with Citus {citus}" if citus else "")


def citus_version(settings: db.Settings) -> str | None:
    """The Citus extension's version when the database is a Citus coordinator, else None."""
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
            found = cur.fetchone()
            return found[0] if found else None
    finally:
        conn.close()


def star_size(settings: db.Settings) -> int:
    """Bytes of the star tables with their indexes and TOAST. A table that Citus distributes (or
    replicates) lives in shards on the workers, and pg_total_relation_size would measure only the
    coordinator's empty shell: for those, citus_total_relation_size."""
    conn = connect(settings)
    conn.autocommit = True
    total = 0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
            citus = cur.fetchone()[0]
            for table in sql.STAR_TABLES:
                size = None
                if citus:
                    cur.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition "
                        "WHERE logicalrelid = to_regclass(%s))",
                        (table,),
                    )
                    if cur.fetchone()[0]:
                        with contextlib.suppress(psycopg2.Error):
                            cur.execute("SELECT citus_total_relation_size(%s::regclass)", (table,))
                            size = cur.fetchone()[0]
                if size is None:
                    cur.execute("SELECT pg_total_relation_size(%s::regclass)", (table,))
                    size = cur.fetchone()[0]
                total += size or 0
        return total
    finally:
        conn.close()


def bare_copy(
    settings: db.Settings,
) -> tuple[float, dict[str, float], dict[str, int], int, list[str]]:
    """Export the loaded star tables into memory, then COPY them into plain tables of the same
    columns (no key, index, constraint or default) created and committed beforehand; only the
    COPYs and their commit are timed. On a Citus coordinator the plain tables are distributed
    (or replicated) as the star tables are. Returns (seconds, seconds per table, rows, bytes,
    the tables laid out by Citus)."""
    conn = connect(settings)
    schema = pgsql.Identifier(LIMIT_SCHEMA)
    try:
        payloads, columns, rows = {}, {}, {}
        with conn.cursor() as cur:
            for table in sql.STAR_TABLES:
                cur.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
                    "ORDER BY attnum",
                    (table,),
                )
                columns[table] = cur.fetchall()
                buffer = io.BytesIO()
                cur.copy_expert(
                    pgsql.SQL("COPY (SELECT * FROM {}) TO STDOUT")
                    .format(pgsql.Identifier(table))
                    .as_string(conn),
                    buffer,
                )
                payloads[table] = buffer.getvalue()
                rows[table] = payloads[table].count(b"\n")
            conn.commit()  # on Citus, schema commands may not follow multi-shard reads
            cur.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
            cur.execute(pgsql.SQL("CREATE SCHEMA {}").format(schema))
            for table, cols in columns.items():
                cur.execute(
                    pgsql.SQL("CREATE TABLE {}.{} ({})").format(
                        schema,
                        pgsql.Identifier(table),
                        pgsql.SQL(", ").join(
                            pgsql.SQL("{} {}").format(pgsql.Identifier(name), pgsql.SQL(kind))
                            for name, kind in cols
                        ),
                    )
                )
        conn.commit()
        on_citus = distribute_like(conn, LIMIT_SCHEMA, list(columns))
        per_table = {}
        started = time.perf_counter()
        with conn.cursor() as cur:
            for table, payload in payloads.items():
                t = time.perf_counter()
                cur.copy_expert(
                    pgsql.SQL("COPY {}.{} FROM STDIN")
                    .format(schema, pgsql.Identifier(table))
                    .as_string(conn),
                    io.BytesIO(payload),
                )
                per_table[table] = time.perf_counter() - t
        conn.commit()
        seconds = time.perf_counter() - started
        with conn.cursor() as cur:
            cur.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(schema))
        conn.commit()
        return seconds, per_table, rows, sum(len(p) for p in payloads.values()), on_citus
    finally:
        conn.close()


def distribute_like(conn, schema: str, tables: list[str]) -> list[str]:
    """On a Citus coordinator, distribute (or replicate) each table of schema as the star table of
    the same name is, so that a COPY into it goes to the shards as the load's did. Returns the
    tables so laid out; elsewhere, or where Citus refuses, they stay plain local tables."""
    done = []
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
            if not cur.fetchone()[0]:
                return done
            for table in tables:
                cur.execute(
                    "SELECT partmethod, repmodel, CASE WHEN partkey IS NOT NULL THEN "
                    "column_to_column_name(logicalrelid, partkey) END "
                    "FROM pg_catalog.pg_dist_partition "
                    "WHERE logicalrelid = to_regclass(%s)",
                    (table,),
                )
                found = cur.fetchone()
                target = (
                    pgsql.SQL("{}.{}")
                    .format(pgsql.Identifier(schema), pgsql.Identifier(table))
                    .as_string(conn)
                )
                try:
                    if found and found[0] == "h" and found[2]:
                        cur.execute("SELECT create_distributed_table(%s, %s)", (target, found[2]))
                    elif found and found[0] == "n" and found[1] == "t":
                        cur.execute("SELECT create_reference_table(%s)", (target,))
                    else:
                        continue
                except psycopg2.Error as exc:
                    print(f"limit: {target} stays a local table: {cli.first_line(exc)}", flush=True)
                    continue
                done.append(table)
        return done
    finally:
        conn.autocommit = False


def drop_schema(settings: db.Settings, name: str) -> None:
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(name))
            )
    finally:
        conn.close()


# ================================================================ the limit: parsing alone


def parse_limit(data: Path, repeat: int = 2) -> tuple[float, float]:
    """Best of `repeat` (files in the page cache, as for the ETL which read them just before):
    seconds to read and orjson.loads every song file, and to pyarrow.json.read_json every log
    file (multi-threaded), without any validation."""
    songs = sorted((data / "song_data").rglob("*.json"))
    logs = sorted((data / "log_data").rglob("*.json"))
    best_songs = best_logs = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for path in songs:
            with open(path, "rb") as handle:
                orjson.loads(handle.read())
        best_songs = min(best_songs, time.perf_counter() - started)
        started = time.perf_counter()
        for path in logs:
            pyarrow.json.read_json(path)
        best_logs = min(best_logs, time.perf_counter() - started)
    return best_songs, best_logs


# ================================================================ the peer: dlt


@dataclasses.dataclass
class LoadAndLimit:
    """The full load and the limit at one size, each the faster of --rounds runs taken in turn
    (load, limit, load, limit, ...): noise from other work on a shared machine only adds time."""

    create: Measured
    full: Measured
    counts: dict[str, int]
    copy: tuple  # bare_copy's result
    parse_songs_s: float
    parse_logs_s: float
    rounds: int

    @property
    def etl_s(self) -> float:
        return self.create.wall + self.full.wall

    @property
    def limit_s(self) -> float:
        return self.parse_songs_s + self.parse_logs_s + self.copy[0]


def load_and_limit(bench: Bench, data: Path, rounds: int) -> LoadAndLimit:
    """create_tables.py + etl.py on data, then the limit on what it loaded, `rounds` times."""
    best = None
    for _ in range(rounds):
        create = bench.create_tables()
        full = bench.etl(data)
        counts = star_counts(bench.settings)
        copy = bare_copy(bench.settings)
        parse_songs_s, parse_logs_s = parse_limit(data, repeat=1)
        if best is None:
            best = LoadAndLimit(create, full, counts, copy, parse_songs_s, parse_logs_s, rounds)
            continue
        if create.wall + full.wall < best.etl_s:
            best = dataclasses.replace(best, create=create, full=full, counts=counts)
        best = dataclasses.replace(
            best,
            copy=min(best.copy, copy, key=lambda c: c[0]),
            parse_songs_s=min(best.parse_songs_s, parse_songs_s),
            parse_logs_s=min(best.parse_logs_s, parse_logs_s),
        )
    return best


def libpq_url(settings: db.Settings) -> str:
    """The benchmark's database as a postgresql:// URL (dlt takes nothing else): --database-url
    or DATABASE_URL as given (a key=value string is turned into a URL), the PG* variables as
    query parameters, or the embedded server's socket."""
    if settings.url:
        if "://" in settings.url:
            return settings.url
        pairs = re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", settings.url)
        params = {k: re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith("'") else v for k, v in pairs}
        return "postgresql:///?" + urlencode(params)
    if settings.libpq_env:
        params = {
            key: os.environ[var]
            for key, var in (
                ("host", "PGHOST"),
                ("hostaddr", "PGHOSTADDR"),
                ("port", "PGPORT"),
                ("service", "PGSERVICE"),
            )
            if os.environ.get(var)
        }
        return f"postgresql:///{quote(os.environ.get('PGDATABASE') or db.DATABASE)}?" + urlencode(
            params
        )
    socket_dir = embedded.start(settings.pgdata)
    return f"postgresql://{embedded.SUPERUSER}@/{db.DATABASE}?" + urlencode(
        {"host": str(socket_dir), "port": embedded.PORT}
    )


def dlt_python(workdir: Path, version: str) -> tuple[Path | None, str]:
    """The python of WORKDIR/dlt-venv with dlt[postgres,parquet]==version (the parquet extra
    brings pyarrow), installed there when missing; or (None, why it cannot be had)."""
    venv = workdir / "dlt-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import dlt, orjson, pyarrow; print(dlt.__version__)"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == version:
            return python, ""
    print(f"peer: installing dlt[postgres,parquet]=={version} in {venv} ...", flush=True)
    started = time.perf_counter()
    try:
        made = subprocess.run(
            [PY, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True, timeout=300
        )
        if made.returncode != 0:
            return None, "cannot create its virtualenv: " + last_line(made.stderr or made.stdout)
        done = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--retries",
                "1",
                "--timeout",
                "30",
                f"dlt[postgres,parquet]=={version}",
                "orjson",
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot install dlt[postgres,parquet]=={version}: {exc}"
    if done.returncode != 0:
        return None, (
            f"pip could not install dlt[postgres,parquet]=={version} (no network?): "
            + last_line(done.stderr or done.stdout)
        )
    found = subprocess.run(probe, capture_output=True, text=True)
    if found.returncode != 0:
        return None, f"dlt was installed but does not import: {last_line(found.stderr)}"
    print(
        f"peer: dlt {found.stdout.strip()} installed in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return python, ""


def last_line(text: str) -> str:
    """The last line of a tool's output that says something (pip's ERROR: line, say)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def run_dlt_peers(bench: Bench, data: Path, version: str, chosen: list[str]) -> dict:
    """Each peer of DLT_ITEMS: {items: result, see run_dlt_peer, or {"skipped": why}}."""
    if not chosen:
        return {items: {"skipped": "--no-peers"} for items in DLT_ITEMS}
    python, reason = dlt_python(bench.workdir, version)
    peers = {}
    for items in DLT_ITEMS:
        if items not in chosen:
            peers[items] = {"skipped": f"--dlt-items {','.join(chosen)}"}
        elif python is None:
            peers[items] = {"skipped": reason}
        else:
            peers[items] = run_dlt_peer(bench, python, data, version, items)
        peer = peers[items]
        if "run" in peer:
            bench.say(
                f"peer: dlt {peer['dlt']} from {items}: {peer['run'].wall:.1f} s, peak "
                f"RSS {mb(peer['run'])} MB; rows {peer['rows']}"
            )
        else:
            bench.say(f"peer: dlt from {items} skipped: {peer['skipped']}")
    return peers


def run_dlt_peer(bench: Bench, python: Path, data: Path, version: str, items: str) -> dict:
    """dlt loads the data folder raw (bench/dlt_peer.py --items ITEMS in dlt's virtualenv),
    timed like the other rows. Returns the peer's JSON with "run" (Measured) and "rows" per
    table, or {"skipped": why}. Its schema and working folder are removed afterwards."""
    pipelines = bench.workdir / "dlt-pipelines"
    shutil.rmtree(pipelines, ignore_errors=True)
    for schema in (DLT_SCHEMA, DLT_SCHEMA + "_staging"):
        drop_schema(bench.settings, schema)
    env = {
        **bench.env,
        "SPARKIFY_DLT_URL": libpq_url(bench.settings),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "DLT_DATA_DIR": str(pipelines),
    }
    bench.say(
        f"peer: dlt {version} loading {data.name} raw from {items} into schema {DLT_SCHEMA} ..."
    )
    try:
        run = run_measured(
            [
                str(python),
                str(BENCH / "dlt_peer.py"),
                "--data",
                str(data),
                "--items",
                items,
                "--dataset",
                DLT_SCHEMA,
                "--pipelines-dir",
                str(pipelines),
                "--json",
            ],
            env,
        )
        if run.rc != 0:
            return {"skipped": f"failed, dlt_peer.py exited {run.rc}: {last_line(run.stderr)}"}
        result = json.loads(run.stdout.strip().splitlines()[-1])
        result["run"] = run
        result["rows"] = {}
        conn = connect(bench.settings)
        try:
            with conn, conn.cursor() as cur:
                for table in DLT_TABLES:
                    cur.execute(
                        pgsql.SQL("SELECT count(*) FROM {}.{}").format(
                            pgsql.Identifier(DLT_SCHEMA), pgsql.Identifier(table)
                        )
                    )
                    result["rows"][table] = cur.fetchone()[0]
        finally:
            conn.close()
        return result
    except (ValueError, IndexError, psycopg2.Error) as exc:
        return {"skipped": f"failed: {cli.first_line(exc)}"}
    finally:
        for schema in (DLT_SCHEMA, DLT_SCHEMA + "_staging"):
            drop_schema(bench.settings, schema)
        shutil.rmtree(pipelines, ignore_errors=True)


# ================================================================ the machine


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def code_version() -> str:
    """The commit measured, and whether the working tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "*.py"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # not stripped: each line starts with two status columns and a space
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (
        " with local changes to " + ", ".join(line[3:] for line in dirty.splitlines())
        if dirty.strip()
        else ""
    )


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ================================================================ formatting


def fmt(value, digits: int = 0) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if digits == 0 and abs(value) < 10 and value != int(value):
        digits = 1  # a rate like 0.4 files/s stays readable
    return f"{value:,.{digits}f}"


def rate(n, seconds) -> float | None:
    return n / seconds if n and seconds else None


def mb(measured: Measured | None) -> str:
    if measured is None:
        return ""
    return f"{measured.rss_max / MB:,.0f} / {measured.rss_sum / MB:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = [i > 0 for i in range(len(header))]

    def line(cells):
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right))
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def saved_report(path: Path):
    """What is printed inside goes to stdout as usual, and is also saved in path."""
    copy = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, copy)):
        yield
    path.write_text(copy.getvalue())


# ================================================================ the runs


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workdir = args.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        explicit = (
            args.database_url
            or os.environ.get("DATABASE_URL")
            or any(os.environ.get(k) for k in ("PGHOST", "PGHOSTADDR", "PGSERVICE"))
        )
        if not explicit and not os.environ.get("SPARKIFY_PGDATA"):
            os.environ["SPARKIFY_PGDATA"] = str(self.workdir / "pgdata")
        self.env = dict(os.environ)
        if args.database_url:  # in the scripts' environment, not on their command lines (which
            self.env["DATABASE_URL"] = args.database_url  # every local user can read)
        self.settings = db.Settings.from_env(args.database_url)
        self.started_server = False

    def __enter__(self) -> Bench:
        if self.settings.embedded:
            status = subprocess.run(
                [PY, str(PROJECT / "db.py"), "status"], env=self.env, capture_output=True, text=True
            )
            self.started_server = status.returncode != 0
        print(
            f"database: {self.settings.describe()} (the benchmark drops and recreates the "
            f"Sparkify tables there)",
            flush=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.started_server:
            subprocess.run([PY, str(PROJECT / "db.py"), "stop"], env=self.env, capture_output=True)

    def script(self, name: str, *extra: str) -> Measured:
        return run_measured([PY, str(PROJECT / name), *extra], self.env).check()

    def create_tables(self) -> Measured:
        return self.script("create_tables.py")

    def etl(self, data: Path) -> Measured:
        return self.script("etl.py", "--data", str(data), "--no-progress")

    def say(self, text: str) -> None:
        print(text, flush=True)


def main_benchmark(args: argparse.Namespace) -> int:
    with Bench(args) as bench:
        data, truth = ensure_data(bench.workdir, args.events, args.songs, args.seed, args.keep)
        song_files, log_files = truth["song_files"], truth["log_files"]
        events = truth["log_records"]

        # ---- 2. the full load, as a user runs it, and 4. the limit, taken in turn
        load_start = load_average()
        best = load_and_limit(bench, data, args.rounds)
        info = machine()
        info["postgresql"] = database_version(bench.settings)  # create_tables.py made it
        bench.say(
            f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['ram']} RAM, "
            f"Python {info['python']}, PostgreSQL {info['postgresql']}; "
            f"load average {load_start}"
        )
        create, full, full_counts = best.create, best.full, best.counts
        copy_s, copy_tables, copy_rows, copy_bytes, copy_citus = best.copy
        parse_songs_s, parse_logs_s = best.parse_songs_s, best.parse_logs_s
        bench.say(f"create_tables.py: {create.wall:.2f} s (the faster of {args.rounds})")
        bench.say(
            f"etl.py full load: {full.wall:.1f} s, peak RSS {mb(full)} MB (max process / "
            f"sum of tree); rows {full_counts}"
        )
        mismatches = truth_mismatches(full_counts, truth)
        if mismatches:
            bench.say(f"WARNING: rows differ from truth.json (loaded, expected): {mismatches}")
        bench.say(
            f"limit: bare COPY of {sum(copy_rows.values()):,} rows "
            f"({copy_bytes / MB:,.0f} MB) in {copy_s:.2f} s"
        )
        bench.say(
            f"limit: parse {song_files:,} song files in {parse_songs_s:.2f} s, "
            f"{log_files} log files in {parse_logs_s:.2f} s"
        )

        # ---- 3. nothing new
        rerun = bench.etl(data)
        bench.say(f"etl.py re-run: {rerun.wall:.2f} s")

        # ---- 5. stages
        stage_create = bench.create_tables()
        songs_run = bench.etl(songs_only_dir(bench.workdir, data))
        song_counts = star_counts(bench.settings)
        logs_run = bench.etl(data)
        log_counts = star_counts(bench.settings)
        bench.say(
            f"stages: songs {songs_run.wall:.1f} s, logs {logs_run.wall:.1f} s "
            f"(create_tables {stage_create.wall:.2f} s)"
        )

        # ---- 6. classic
        classic = None
        if args.classic_events > 0:
            classic_data, slice_info = classic_slice(
                bench.workdir, data, args.classic_events, args.classic_songs
            )
            fill = (
                []
                if slice_info["song_files"] >= song_files
                else ["--fill-songs-from", str(data / "song_data")]
            )
            bench.say(
                f"classic: running on {slice_info['song_files']:,} song files and "
                f"{slice_info['events']:,} events ..."
            )
            classic_run = run_measured(
                [
                    PY,
                    str(BENCH / "classic.py"),
                    "--data",
                    str(classic_data),
                    "--json",
                    "--schema",
                    CLASSIC_SCHEMA,
                    "--drop-after",
                    *fill,
                ],
                bench.env,
            ).check()
            classic = json.loads(classic_run.stdout.strip().splitlines()[-1])
            classic["run"] = classic_run
            classic["songs_full_s"] = classic["songs_s"] * song_files / classic["song_files"]
            classic["logs_full_s"] = classic["logs_s"] * events / classic["log_records"]
            classic["total_s"] = (
                classic["schema_s"] + classic["songs_full_s"] + classic["logs_full_s"]
            )
            shutil.rmtree(classic_data, ignore_errors=True)

        # ---- 7. the peers
        peers = run_dlt_peers(
            bench, data, args.dlt_version, [] if args.no_peers else args.dlt_items
        )
        load_end = load_average()

    # ---- 8. the report
    etl_s = create.wall + full.wall
    parse_s = parse_songs_s + parse_logs_s
    limit_s = parse_s + copy_s
    records = song_files + events
    star_rows = {t: full_counts[t] for t in sql.STAR_TABLES}
    rows_total = sum(star_rows.values())
    song_rows = song_counts["songs"] + song_counts["artists"]
    log_rows = sum(log_counts[t] - song_counts[t] for t in sql.STAR_TABLES)

    def row(label, files, recs, rows_written, seconds, measured=None):
        return [
            label,
            fmt(rate(files, seconds)),
            fmt(rate(recs, seconds)),
            fmt(rate(rows_written, seconds)),
            fmt(seconds, 2),
            mb(measured),
        ]

    main_rows = [
        row(ROWS["create"], None, None, None, create.wall, create),
        row(ROWS["full"], song_files + log_files, records, rows_total, full.wall, full),
        row(ROWS["etl"], song_files + log_files, records, rows_total, etl_s),
        row(ROWS["rerun"], None, None, None, rerun.wall, rerun),
        row(ROWS["songs"], song_files, song_files, song_rows, songs_run.wall, songs_run),
        row(ROWS["logs"], log_files, events, log_rows, logs_run.wall, logs_run),
        row(ROWS["parse_songs"], song_files, song_files, None, parse_songs_s),
        row(ROWS["parse_logs"], log_files, events, None, parse_logs_s),
        row(ROWS["copy"], None, None, sum(copy_rows.values()), copy_s),
        row(ROWS["limit"], song_files + log_files, records, rows_total, limit_s),
    ]
    if classic:
        main_rows.append(
            row(
                ROWS["classic"],
                song_files + log_files,
                records,
                rows_total,
                classic["total_s"],
                classic["run"],
            )
        )
    for items, peer in peers.items():
        if "run" in peer:
            main_rows.append(
                row(
                    ROWS[f"dlt_{items}"],
                    song_files + log_files,
                    records,
                    sum(peer["rows"].values()),
                    peer["run"].wall,
                    peer["run"],
                )
            )
        else:
            main_rows.append([ROWS[f"dlt_{items}"], "", "", "", "skipped", ""])

    per_table = []
    for t in sql.STAR_TABLES:
        stage, wall = (
            ("song stage", songs_run.wall)
            if t in ("songs", "artists")
            else ("log stage", logs_run.wall)
        )
        written = song_counts[t] if t in ("songs", "artists") else log_counts[t] - song_counts[t]
        per_table.append(
            [
                t,
                fmt(star_rows[t]),
                fmt(rate(star_rows[t], full.wall)),
                stage,
                fmt(rate(written, wall)),
                fmt(rate(copy_rows[t], copy_tables[t])),
            ]
        )

    with saved_report(bench.workdir / "report.md"):
        print()
        print(
            f"## Sparkify ETL benchmark: {events:,} events in {log_files} log files, "
            f"{song_files:,} song files (seed {args.seed})"
        )
        print()
        print(
            table(
                [
                    "stage",
                    "files/s",
                    "records/s",
                    "rows/s",
                    "wall s",
                    "peak RSS MB (max proc / sum)",
                ],
                main_rows,
            )
        )
        print()
        print(
            table(
                [
                    "table",
                    "rows",
                    "rows/s in full load",
                    "written in",
                    "rows/s in its stage",
                    "rows/s bare COPY",
                ],
                per_table,
            )
        )
        print()
        print(
            "Rates are counts over wall time of the whole subprocess (Python start-up "
            "included). Peak RSS: the largest process (its VmHWM) / the sum over etl.py and its "
            "worker (polled every 20 ms); the PostgreSQL server is not counted."
            + (
                f" On Citus the bare COPY wrote to tables distributed or replicated as the "
                f"star tables are ({', '.join(copy_citus)}); the others were plain tables on "
                "the coordinator."
                if copy_citus
                else ""
            )
        )
        print()
        ratio_limit = etl_s / limit_s
        songs_fps = song_files / songs_run.wall
        rerun_share = rerun.wall / full.wall
        print("### Targets")
        print()
        targets = [
            [
                TARGETS[0],
                f"{etl_s:.1f} s / {limit_s:.1f} s = {ratio_limit:.1f}x",
                "<= 2x",
                verdict(ratio_limit <= 2),
            ],
        ]
        if classic:
            ratio_classic = classic["total_s"] / etl_s
            targets.append(
                [
                    TARGETS[1],
                    f"{classic['total_s']:,.0f} s / {etl_s:.1f} s = {ratio_classic:,.0f}x",
                    ">= 50x",
                    verdict(ratio_classic >= 50),
                ]
            )
        else:
            targets.append([TARGETS[1], "not run (--classic-events 0)", ">= 50x", ""])
        targets += [
            [TARGETS[2], f"{songs_fps:,.0f}", ">= 20,000", verdict(songs_fps >= 20_000)],
            [
                TARGETS[3],
                f"{rerun.wall:.2f} s / {full.wall:.1f} s = {rerun_share:.1%}",
                "< 5%",
                verdict(rerun_share < 0.05),
            ],
        ]
        print(table(["target", "measured", "goal", "verdict"], targets))
        print()
        if classic:
            print(
                f"Classic measured on {classic['log_records']:,} events "
                f"({classic['log_files']} log file(s), {classic['logs_s']:.1f} s) and "
                f"{classic['song_files']:,} song files ({classic['songs_s']:.1f} s), "
                f"extrapolated linearly to {events:,} events and {song_files:,} song files: "
                f"{classic['total_s']:,.0f} s (songs {classic['songs_full_s']:,.0f} s + logs "
                f"{classic['logs_full_s']:,.0f} s). "
                f"Its per-play song SELECTs searched a songs table of "
                f"{classic['songs_at_lookup']:,} rows"
                + (
                    f" (the songs of all {classic['filled_song_files']:,} files were "
                    "bulk-inserted, untimed, after its song stage)"
                    if classic["filled_song_files"]
                    else ""
                )
                + "; later inserts into bigger tables would cost a little more, so the "
                "extrapolation flatters the classic pipeline."
            )
            print()
        ran = {items: peer for items, peer in peers.items() if "run" in peer}
        if ran:
            some = next(iter(ran.values()))
            print(
                f"Peers: dlt {some['dlt']} landed the same files raw, with its "
                f"{some['loader_file_format']} loader file format (COPY), in two tables of "
                f"schema {DLT_SCHEMA} ("
                + ", ".join(f"{name}: one row per {what}" for name, what in DLT_TABLES.items())
                + "): no star schema, no deduplication, no song lookup, no checks. "
                "Their rows/s count those raw rows; their peak RSS is bench/dlt_peer.py's "
                "process tree; the rest of their wall time, beyond dlt's own steps, is Python "
                "start-up and importing dlt."
            )
        for items, peer in peers.items():
            if "run" in peer:
                steps = ", ".join(f"{k} {v:.1f} s" for k, v in peer["steps"].items())
                how = (
                    "Arrow tables (pyarrow.json per log file), written to csv by pyarrow"
                    if items == "arrow"
                    else "pages of orjson-parsed dicts, through dlt's row-by-row normalizer"
                )
                print(
                    f"- From {how}: {peer['run'].wall:.1f} s ({steps}), "
                    f"{peer['run'].wall / etl_s:.1f}x the ETL total ({etl_s:.1f} s)."
                )
                expected = {"song_data": song_files, "log_data": events}
                if peer["rows"] != expected:
                    print(
                        f"\nWARNING: dlt from {items} loaded {peer['rows']} rows, expected "
                        f"{expected}"
                    )
            else:
                print(f"- The dlt row from {items} was skipped: {peer['skipped']}.")
        print()
        print(
            f"Machine: {info['cpus']} CPUs ({info['cpu']}), {info['ram']} RAM, {info['os']}, "
            f"Python {info['python']}, PostgreSQL {info['postgresql']} "
            f"({'embedded, db.py settings' if bench.settings.embedded else 'external server'}). "
            f"Load average (1, 5, 15 min) at start {load_start}, at end {load_end}. "
            f"Code: {code_version()}."
        )
        if mismatches:
            print(f"\nWARNING: the load's rows differ from truth.json: {mismatches}")
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    with contextlib.suppress(OSError):
        shutil.rmtree(bench.workdir / f"songs-only-{data.name}")
    return 0


def rss_scaling(args: argparse.Namespace) -> int:
    """Peak RSS of etl.py (full load after create_tables) at two sizes of the same data shape."""
    sizes = [args.rss_small, args.rss_large]
    results = []
    with Bench(args) as bench:
        load_start = load_average()
        for events in sizes:
            data, truth = ensure_data(bench.workdir, events, args.songs, args.seed, args.keep)
            bench.create_tables()
            run = bench.etl(data)
            bench.say(
                f"{events:,} events: etl.py {run.wall:.1f} s, peak RSS {mb(run)} MB "
                f"(max process / sum of tree); per process: "
                + ", ".join(
                    f"{v / MB:,.0f}" for v in sorted(run.rss_by_pid.values(), reverse=True)[:3]
                )
            )
            results.append((events, dir_size(data / "log_data"), run))
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)
        load_end = load_average()
    (small_events, _, small), (large_events, _, large) = results
    print()
    print(
        f"## Peak RSS of etl.py: {small_events:,} vs {large_events:,} events "
        f"({args.songs:,} song files)"
    )
    print()
    print(
        table(
            [
                "events",
                "log MB",
                "wall s",
                "peak RSS MB, largest process",
                "peak RSS MB, sum of tree",
            ],
            [
                [fmt(e), fmt(size / MB), fmt(r.wall, 1), fmt(r.rss_max / MB), fmt(r.rss_sum / MB)]
                for e, size, r in results
            ],
        )
    )
    ratio_max = large.rss_max / small.rss_max
    ratio_sum = large.rss_sum / small.rss_sum
    print()
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    "RSS ratio, largest process",
                    f"{ratio_max:.2f}x",
                    "<= 1.2x",
                    verdict(ratio_max <= 1.2),
                ],
                [
                    "RSS ratio, sum of tree",
                    f"{ratio_sum:.2f}x",
                    "<= 1.2x",
                    verdict(ratio_sum <= 1.2),
                ],
                [
                    f"RSS at {large_events:,} events, sum of tree",
                    f"{large.rss_sum / MB:,.0f} MB",
                    "< 1024 MB",
                    verdict(large.rss_sum < 1024 * MB),
                ],
            ],
        )
    )
    print()
    print(f"Load average at start {load_start}, at end {load_end}.")
    return 0


def growth(args: argparse.Namespace) -> int:
    """How the full load's cost grows: create_tables.py + etl.py at each of --growth-sizes, with
    the limit (fastest parse + bare COPY) at the same size."""
    results = []
    with Bench(args) as bench:
        load_start = load_average()
        info = machine()
        for events in args.growth_sizes:
            data, truth = ensure_data(bench.workdir, events, args.songs, args.seed, args.keep)
            best = load_and_limit(bench, data, args.rounds)
            if "postgresql" not in info:
                info["postgresql"] = database_version(bench.settings)
            create, full, counts = best.create, best.full, best.counts
            mismatches = truth_mismatches(counts, truth)
            star_bytes = star_size(bench.settings)
            copy_s = best.copy[0]
            parse_s = best.parse_songs_s + best.parse_logs_s
            result = {
                "events": truth["log_records"],
                "song_files": truth["song_files"],
                "log_files": truth["log_files"],
                "log_bytes": dir_size(data / "log_data"),
                "etl_s": create.wall + full.wall,
                "full": full,
                "rows": sum(counts[t] for t in sql.STAR_TABLES),
                "star_bytes": star_bytes,
                "parse_s": parse_s,
                "copy_s": copy_s,
                "limit_s": parse_s + copy_s,
                "mismatches": mismatches,
            }
            results.append(result)
            bench.say(
                f"{result['events']:,} events: ETL {result['etl_s']:.1f} s, peak RSS "
                f"{mb(full)} MB (max process / sum of tree); limit {result['limit_s']:.1f} s "
                f"(parse {parse_s:.1f} s + bare COPY {copy_s:.1f} s); star tables "
                f"{star_bytes / MB:,.0f} MB"
            )
            if mismatches:
                bench.say(f"WARNING: rows differ from truth.json (loaded, expected): {mismatches}")
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)
        load_end = load_average()

    first, last = results[0], results[-1]
    plot = plot_growth(results, bench.workdir / "growth.png")
    with saved_report(bench.workdir / "growth.md"):
        print()
        counted = ", ".join(f"{r['events']:,}" for r in results)
        print(
            f"## How the full load grows: {counted} events ({args.songs:,} song files, "
            f"seed {args.seed})"
        )
        print()
        print(
            table(
                [
                    "events",
                    "log MB",
                    "wall s",
                    "s per 1M events",
                    "rows/s",
                    "peak RSS MB (max proc / sum)",
                    "limit s",
                    "ETL / limit",
                    "star tables MB",
                ],
                [
                    [
                        fmt(r["events"]),
                        fmt(r["log_bytes"] / MB),
                        fmt(r["etl_s"], 1),
                        fmt(r["etl_s"] / r["events"] * 1e6, 1),
                        fmt(rate(r["rows"], r["etl_s"])),
                        mb(r["full"]),
                        fmt(r["limit_s"], 1),
                        f"{r['etl_s'] / r['limit_s']:.1f}x",
                        fmt(r["star_bytes"] / MB),
                    ]
                    for r in results
                ],
            )
        )
        print()
        print(
            "Wall s: create_tables.py + etl.py (full load), whole subprocesses, Python start-up "
            "included; rows/s: star rows written over that time. Peak RSS: the largest process "
            "(its VmHWM) / the sum over etl.py and its worker; the PostgreSQL server is not "
            "counted. Limit: the fastest parse of the same files (orjson, pyarrow.json) plus a "
            "bare COPY of the final rows into tables without keys or indexes. Star tables: "
            "their size in the database, indexes included."
        )
        if len(results) > 1:
            print()
            grow = last["events"] / first["events"]
            print(
                f"From {first['events']:,} to {last['events']:,} events ({grow:.1f}x): wall "
                f"{last['etl_s'] / first['etl_s']:.2f}x, limit "
                f"{last['limit_s'] / first['limit_s']:.2f}x, peak RSS "
                f"{last['full'].rss_max / first['full'].rss_max:.2f}x (largest process) and "
                f"{last['full'].rss_sum / first['full'].rss_sum:.2f}x (sum of tree), star "
                f"tables {last['star_bytes'] / max(first['star_bytes'], 1):.2f}x. A load that "
                f"grows linearly takes the same seconds per 1M events at every size."
            )
        print()
        print(
            f"![How the full load grows]({plot.name})"
            if plot
            else "No plot: matplotlib is not installed."
        )
        print()
        print(
            f"Machine: {info['cpus']} CPUs ({info['cpu']}), {info['ram']} RAM, {info['os']}, "
            f"Python {info['python']}, PostgreSQL {info['postgresql']} "
            f"({'embedded, db.py settings' if bench.settings.embedded else 'external server'}). "
            f"Load average (1, 5, 15 min) at start {load_start}, at end {load_end}. "
            f"Code: {code_version()}."
        )
        for r in results:
            if r["mismatches"]:
                print(
                    f"\nWARNING: at {r['events']:,} events the load's rows differ from "
                    f"truth.json: {r['mismatches']}"
                )
    print(f"\n(saved in {bench.workdir / 'growth.md'}" + (f" and {plot}" if plot else "") + ")")
    return 0


def plot_growth(results: list[dict], path: Path) -> Path | None:
    """A small PNG: seconds (ETL, limit, linear from the first size) and peak RSS, over events."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    events = [r["events"] / 1e6 for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    left.plot(events, [r["etl_s"] for r in results], "o-", label="ETL (create_tables + etl.py)")
    left.plot(events, [r["limit_s"] for r in results], "s-", label="limit (parse + bare COPY)")
    per_event = results[0]["etl_s"] / events[0]
    left.plot(
        events,
        [per_event * e for e in events],
        ":",
        color="grey",
        label="ETL, linear from the first size",
    )
    left.set(xlabel="events (millions)", ylabel="wall s", title="Time")
    left.set_ylim(bottom=0)
    left.legend(fontsize="small")
    right.plot(events, [r["full"].rss_max / MB for r in results], "o-", label="largest process")
    right.plot(events, [r["full"].rss_sum / MB for r in results], "s-", label="sum of tree")
    right.set(xlabel="events (millions)", ylabel="peak RSS MB", title="Memory of etl.py")
    right.set_ylim(bottom=0)
    right.legend(fontsize="small")
    for axis in (left, right):
        axis.set_xlim(left=0)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def dlt_items(text: str) -> list[str]:
    """--dlt-items: a comma-separated choice among DLT_ITEMS."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    if not chosen or any(part not in DLT_ITEMS for part in chosen):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(DLT_ITEMS)}, got {text!r}")
    return chosen


def sizes(text: str) -> list[int]:
    """--growth-sizes: positive event counts, comma-separated (1000000 or 1_000_000)."""
    try:
        values = [cli.positive(part.strip()) for part in text.split(",") if part.strip()]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("no size given")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the Sparkify ETL on generated data: full load, re-run, the "
        "machine's limit (parse + bare COPY), per-stage rates, the classic "
        "row-at-a-time pipeline, and a peer (dlt loading the same files raw); or, "
        "with --rss-scaling, peak memory at two sizes; or, with --growth, how the "
        "full load grows with the data. See bench/README.md.",
        epilog="The Sparkify tables of the database used are dropped and recreated. By default "
        "that is an embedded server of the benchmark's own under WORKDIR/pgdata, "
        "stopped at the end (SPARKIFY_PGDATA, DATABASE_URL or --database-url choose "
        "another: any PostgreSQL, a Citus coordinator included).",
    )
    parser.add_argument(
        "--events",
        type=cli.positive,
        default=1_000_000,
        help="log events to generate (default: %(default)s)",
    )
    parser.add_argument(
        "--songs",
        type=cli.positive,
        default=20_000,
        help="song files to generate (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default: 42)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=BENCH / "out",
        help="where data and the private server go (default: bench/out)",
    )
    parser.add_argument(
        "--classic-events",
        type=int,
        default=20_000,
        help="events the classic pipeline runs on, from the start of the logs; "
        "0 skips it (default: %(default)s)",
    )
    parser.add_argument(
        "--classic-songs",
        type=cli.positive,
        default=2_000,
        help="song files the classic song stage runs on; the rest are "
        "bulk-inserted untimed so that its per-play lookups search the "
        "full songs table (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the generated data, and reuse it when its parameters match",
    )
    parser.add_argument(
        "--database-url",
        help="benchmark on this PostgreSQL instead (its Sparkify tables are dropped)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the peer rows (dlt, installed on first use in WORKDIR/dlt-venv from PyPI)",
    )
    parser.add_argument(
        "--dlt-items",
        type=dlt_items,
        default=list(DLT_ITEMS),
        metavar="arrow,dicts",
        help="which peer rows to run: dlt fed Arrow tables, dicts, or both (default: arrow,dicts)",
    )
    parser.add_argument(
        "--dlt-version",
        default=DLT_VERSION,
        help="dlt release for the peer rows (default: %(default)s)",
    )
    parser.add_argument(
        "--rss-scaling",
        action="store_true",
        help="instead: peak RSS of etl.py at --rss-small and --rss-large events",
    )
    parser.add_argument(
        "--rss-small",
        type=cli.positive,
        default=200_000,
        help="smaller size for --rss-scaling (default: %(default)s)",
    )
    parser.add_argument(
        "--rss-large",
        type=cli.positive,
        default=2_000_000,
        help="larger size for --rss-scaling (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=cli.positive,
        default=2,
        help="how many times the full load and the limit each run, in turn; the faster of "
        "each is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--growth",
        action="store_true",
        help="instead: how the full load grows, at each of --growth-sizes "
        "(WORKDIR/growth.md and growth.png)",
    )
    parser.add_argument(
        "--growth-sizes",
        type=sizes,
        default=GROWTH_SIZES,
        metavar="N,N,...",
        help="events at each size for --growth, each in 30 daily log files "
        "with --songs song files (default: " + ",".join(str(n) for n in GROWTH_SIZES) + ")",
    )
    args = parser.parse_args(argv)
    if args.growth and args.rss_scaling:
        parser.error("--growth and --rss-scaling are two different runs: choose one")
    try:
        if args.growth:
            return growth(args)
        return rss_scaling(args) if args.rss_scaling else main_benchmark(args)
    except db.DatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
