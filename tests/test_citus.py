"""The same ETL on Citus (distributed PostgreSQL), on a real local cluster: a coordinator and two
workers started by tools/citus_cluster.py for this module and stopped (folder removed) at its end.

Every load is compared row for row (songplay_id aside) with the same load on plain PostgreSQL,
the server the other tests use (conftest's). Skipped where PostgreSQL 15 or the citus extension
is not installed (`sh ../shared/citus/install.sh` installs the extension; .ci/run does).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
import test_file_sequences as sequences
from builders import STOPS, USER, as_superuser, event, lines, song, write
from conftest import (
    PROJECT,
    SAMPLE,
    changed_environment,
    free_ports,
    query,
    run_script,
    schema_objects,
    table_contents,
    using_database,
)
from psycopg2 import sql as pgsql
from summary import CHECKS_PASSED, parse_summary

import db
import sql_queries
from contract import Limits
from tools import citus_cluster

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

GENERATED = {"events": 200_000, "songs": 2000}
# Its first 15 operations: every kind but an edit, and a file loaded whole sent again cut short.
CITUS_SEQUENCE_SEED, CITUS_STEPS = 117112, 15


# ================================================================ the cluster


# The programs a cluster's start runs (as root, each node through runuser).
CLUSTER_PROGRAMS = {"postgres", "initdb", "pg_ctl", "runuser"}


def processes_using(folder: Path) -> list[str]:
    """Command lines of live processes of a cluster's programs that name folder (a server left
    running would; another program looking at the folder is none of the cluster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            program = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if entry.name.isdigit() and program in CLUSTER_PROGRAMS and str(folder) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def cluster():
    try:
        citus_cluster.check_installed()
    except citus_cluster.ClusterError as exc:
        missing = f"Citus tests need PostgreSQL 15 with the citus extension: {exc}"
        if os.environ.get("SPARKIFY_CITUS") == "required":  # CI, where it is installed
            pytest.fail(f"{missing} (SPARKIFY_CITUS=required)")
        pytest.skip(missing)
    folder = Path(tempfile.mkdtemp(prefix="spk-citus-"))
    started = None
    try:
        started = citus_cluster.start(folder, free_ports(3))
        yield started
    finally:
        if started:
            started.stop(remove=True)
        shutil.rmtree(folder, ignore_errors=True)
        left = processes_using(folder)
        assert not left, f"the cluster left processes behind: {left}"
        assert not folder.exists()


def plain_url() -> str | None:
    """The plain PostgreSQL of the other tests: conftest's embedded server, or DATABASE_URL."""
    return os.environ.get("DATABASE_URL")


def etl(url: str | None, data: Path, *extra: str, check: bool = True):
    with using_database(url):
        return run_script(
            "etl.py", "--data", str(data), "--no-progress", "--json", *extra, check=check
        )


def fresh_load(url: str | None, data: Path, *extra: str) -> tuple[dict, str]:
    """create_tables.py, then etl.py: (the star's contents, etl.py's output)."""
    with using_database(url):
        run_script("create_tables.py")
        done = etl(url, data, *extra)
        return table_contents(), done.stdout


def copy_of(data: Path, tmp: Path) -> Path:
    target = tmp / "data"
    shutil.copytree(data, target)
    return target


# ================================================================ the cluster and the schema


def test_cluster_command_reports_every_node_running_and_the_url_without_a_password(cluster):
    status = run_script("-m", "tools.citus_cluster", "status", "--dir", str(cluster.dir))
    names = ["coordinator", "worker1", "worker2"]
    assert status.stdout.splitlines() == [
        f"{n}: running on 127.0.0.1:{p}" for n, p in zip(names, cluster.ports)
    ]
    url = run_script("-m", "tools.citus_cluster", "url", "--dir", str(cluster.dir)).stdout
    assert url == f"postgresql://postgres@127.0.0.1:{cluster.ports[0]}/sparkifydb\n"
    help_text = run_script("-m", "tools.citus_cluster", "--help").stdout
    for option in ("--dir", "--port", "--workers", "--remove", "start", "stop", "status", "url"):
        assert option in help_text
    with using_database(cluster.url):
        assert query("SELECT nodeport, shouldhaveshards FROM pg_dist_node ORDER BY nodeid") == [
            (cluster.ports[0], False),
            (cluster.ports[1], True),
            (cluster.ports[2], True),
        ]


def test_a_cluster_start_that_fails_stops_only_the_nodes_it_started(cluster):
    """A worker stopped and its port taken meanwhile: starting the cluster again fails naming
    the port, and the nodes that were running before go on running."""
    name, port, _ = cluster.nodes()[-1]
    cluster.stop_nodes([name])
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the worker's TIME_WAIT
    try:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(citus_cluster.ClusterError) as failed:
            citus_cluster.start(cluster.dir)
        assert str(failed.value) == f"port {port} on 127.0.0.1 is in use: choose others with --port"
        assert cluster.running() == {"coordinator": True, "worker1": True, name: False}
    finally:
        taken.close()
        citus_cluster.start(cluster.dir)
    assert all(cluster.running().values())


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_cluster_start_stopped_as_its_nodes_are_made_leaves_none_and_starts_next_time(
    cluster, stop, tmp_path
):
    """Stopped as initdb ran, it left initdb running on (runuser forks it) to make a node
    without its settings, which every later start brought up on PostgreSQL's default port."""
    sent, exit_code, said = STOPS[stop]
    folder = Path(tempfile.mkdtemp(prefix="spk-citus-stopped-"))
    (port,) = free_ports(1)
    start = ["-m", "tools.citus_cluster", "start", "--dir", str(folder), "--workers", "0"]
    # its own temporary folder: start records the cluster it started last in one, which the
    # user's own cluster's record must outlive
    private = {"TMPDIR": str(tmp_path)}
    try:
        proc = subprocess.Popen(
            [sys.executable, *start, "--port", str(port)],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=changed_environment(private),
        )
        deadline = time.monotonic() + 60
        while not any("initdb" in line for line in processes_using(folder)):
            assert proc.poll() is None and time.monotonic() < deadline, "initdb never ran"
            time.sleep(0.01)
        proc.send_signal(sent)
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, out) == (exit_code, "")
        assert err.startswith(f"error: {said}")
        assert processes_using(folder) == []
        again = run_script(*start, "--port", str(port), env=private)
        assert again.stdout == f"postgresql://postgres@127.0.0.1:{port}/sparkifydb\n"
        status = run_script("-m", "tools.citus_cluster", "status", "--dir", str(folder))
        assert status.stdout == f"coordinator: running on 127.0.0.1:{port}\n"
    finally:
        run_script(
            "-m", "tools.citus_cluster", "stop", "--dir", str(folder), "--remove", env=private
        )
    assert processes_using(folder) == []


def test_cluster_command_without_postgresql_15_is_one_clear_error_line():
    done = run_script(
        "-m", "tools.citus_cluster", "start", env={"CITUS_PG_BIN": "/nonexistent/bin"}, check=False
    )
    assert done.returncode == 3
    assert done.stderr == (
        "error: PostgreSQL 15 not found in /nonexistent/bin: install it "
        "(apt-get install postgresql-15) or set CITUS_PG_BIN\n"
    )


# The check constraints, and the columns, of the tables the parameter t names.
CHECK_CONSTRAINTS = (
    "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE contype = 'c' "
    "AND conrelid = ANY (SELECT to_regclass(t) FROM unnest(%(t)s::text[]) AS t) ORDER BY 1, 2"
)
COLUMNS = (
    "SELECT attrelid::regclass::text, attname, format_type(atttypid, atttypmod), "
    "attnotnull, attidentity FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped "
    "AND attrelid = ANY (SELECT to_regclass(t) FROM unnest(%(t)s::text[]) AS t) "
    "ORDER BY 1, attnum"
)


def keys_and_indexes() -> list[tuple]:
    """schema_objects() less PostgreSQL 18's catalogued NOT NULLs (compared as columns)."""
    return [row for row in schema_objects() if not row[2].startswith("NOT NULL ")]


def test_create_tables_distributes_the_star_and_keeps_every_key_and_check(cluster):
    run_script("create_tables.py")
    plain = keys_and_indexes()
    plain_columns = query(COLUMNS, {"t": sql_queries.TABLES})
    done = run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    assert (
        "on Citus: songplays, users and songplay_copies distributed on user_id (co-located)"
        in done.stdout
    )
    with using_database(cluster.url):
        placed = query(
            "SELECT logicalrelid::text, partmethod, repmodel, "
            "column_to_column_name(logicalrelid, partkey), colocationid "
            "FROM pg_dist_partition ORDER BY 1"
        )
        assert keys_and_indexes() == plain  # primary, unique and foreign keys, indexes
        assert query(COLUMNS, {"t": sql_queries.TABLES}) == plain_columns
        checks = query(CHECK_CONSTRAINTS, {"t": sql_queries.TABLES})
    with using_database(plain_url()):
        assert checks == query(CHECK_CONSTRAINTS, {"t": sql_queries.TABLES})
    free_or_paid = "CHECK ((level = ANY (ARRAY['free'::text, 'paid'::text])))"
    assert checks == [
        ('"time"', "CHECK (((weekday >= 1) AND (weekday <= 7)))"),
        ("load_manifest", "CHECK ((kind = ANY (ARRAY['song'::text, 'log'::text])))"),
        (
            "load_runs",
            "CHECK ((status = ANY (ARRAY['running'::text, 'succeeded'::text, "
            "'failed'::text, 'interrupted'::text])))",
        ),
        ("songplays", free_or_paid),
        ("songs", "CHECK ((year > 0))"),
        ("users", free_or_paid),
    ]
    colocation = {row[0]: row[4] for row in placed}
    assert [row[:4] for row in placed] == [
        ('"time"', "n", "t", None),  # n, t: a reference table; h: hash-distributed
        ("artists", "n", "t", None),
        ("songplay_copies", "h", "s", "user_id"),
        ("songplays", "h", "s", "user_id"),
        ("songs", "n", "t", None),
        ("stage_plays_citus", "h", "s", "user_id"),
        ("users", "h", "s", "user_id"),
    ]
    assert (
        colocation["songplays"]
        == colocation["users"]
        == colocation["stage_plays_citus"]
        == colocation["songplay_copies"]
    )
    assert ("songplays", "songplays_pkey", "PRIMARY KEY (user_id, songplay_id)") in plain


def test_erd_names_distributed_and_reference_tables_on_citus(cluster, tmp_path):
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    done = run_script("erd.py", "--out", str(tmp_path), env={"DATABASE_URL": cluster.url})
    assert done.stdout.splitlines()[1:] == [
        "  songplays: distributed on user_id",
        "  users: distributed on user_id",
        "  songs: reference table",
        "  artists: reference table",
        "  time: reference table",
        "  songplay_copies: distributed on user_id",
        "  load_rejects: local to the coordinator",
        "  load_manifest: local to the coordinator",
        "  load_runs: local to the coordinator",
    ]
    mermaid = (tmp_path / "schema.mmd").read_text()
    assert "    %% songplays on Citus: distributed on user_id\n    songplays {" in mermaid
    assert "    %% time on Citus: reference table\n    time {" in mermaid
    assert "fact · distributed on user_id" in (tmp_path / "schema.svg").read_text()


# ================================================================ the merge runs on the workers


def test_songplays_merge_is_pushed_down_to_the_shards_not_pulled_to_the_coordinator(cluster):
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    conn = psycopg2.connect(cluster.url)
    try:
        with conn.cursor() as cur:
            cur.copy_expert(
                sql_queries.stage_plays_copy_citus,
                io.BytesIO(
                    b"log_data/a.json,2018-11-01 00:00:00,7,free,Tune,Band,100.5,1,1,Here,Agent,"
                    b"Ada,Lovelace,F\n"
                ),
            )
            cur.execute(
                "EXPLAIN " + sql_queries.songplays_insert_citus,
                {"paths": ["log_data/a.json"], "file_ids": [1]},
            )
            plan = "\n".join(row[0] for row in cur.fetchall())
            cur.execute("SELECT songplay_id FROM stage_plays_citus")
            taken = cur.fetchall()
            cur.execute("SELECT last_value FROM songplays_songplay_id_seq")
            sequence = cur.fetchone()[0]
        conn.rollback()
    finally:
        conn.close()
    assert "pull to coordinator" not in plan and "INSERT/SELECT method" not in plan, plan
    assert plan.splitlines()[0].startswith("Custom Scan (Citus Adaptive)"), plan
    assert "  Task Count: 32" in plan, plan
    assert "->  Insert on songplays_" in plan, plan  # each task inserts into its own shard
    assert taken == [(sequence,)]  # songplay_id taken from songplays' sequence as it was staged


# ================================================================ same star, plain and Citus


@pytest.fixture(scope="module")
def sample_plain() -> dict:
    """data/ loaded on plain PostgreSQL."""
    return fresh_load(plain_url(), SAMPLE)[0]


def test_sample_data_gives_the_same_star_on_citus_as_on_plain_postgresql(
    cluster, sample_plain, truth
):
    citus, out = fresh_load(cluster.url, SAMPLE)
    assert citus == sample_plain
    assert {t: len(rows) for t, rows in citus.items()} == {
        t: truth[t] for t in sql_queries.STAR_TABLES
    }
    assert parse_summary(out).checks == CHECKS_PASSED


def test_udacity_data_gives_the_same_star_on_citus_as_on_plain_postgresql(cluster, real_data):
    plain, _ = fresh_load(plain_url(), real_data)
    citus, out = fresh_load(cluster.url, real_data)
    assert citus == plain
    assert {t: len(rows) for t, rows in citus.items()} == {
        "songplays": 6820,
        "users": 96,
        "songs": 71,
        "artists": 69,
        "time": 6813,
    }
    assert parse_summary(out).checks == CHECKS_PASSED
    assert parse_summary(out).keys_left_alone  # on Citus every load keeps the keys


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from tools import generate_data

    root = tmp_path_factory.mktemp("generated") / "data"
    generate_data.generate(out=str(root), **GENERATED)
    return root


@pytest.fixture(scope="module")
def generated_plain(generated) -> dict:
    """The generated set loaded on plain PostgreSQL: what every Citus load of it must give."""
    started = time.monotonic()
    contents, out = fresh_load(plain_url(), generated)
    print(f"\n200k events on plain PostgreSQL: {time.monotonic() - started:.1f} s; {out[:120]}")
    return contents


def test_generated_200k_events_give_the_same_star_on_citus_as_on_plain_postgresql(
    cluster, generated, generated_plain
):
    truth = json.loads((generated / "truth.json").read_text())
    started = time.monotonic()
    citus, out = fresh_load(cluster.url, generated)
    print(f"\n200k events on Citus: {time.monotonic() - started:.1f} s; {out[:120]}")
    assert citus == generated_plain
    assert {t: len(rows) for t, rows in citus.items()} == {
        t: truth[t] for t in sql_queries.STAR_TABLES
    }
    assert truth["log_records"] == GENERATED["events"]
    assert parse_summary(out).resolved[:2] == (truth["songplays_resolved"], truth["songplays"])
    assert parse_summary(out).checks == CHECKS_PASSED
    assert parse_summary(out).keys_left_alone  # on Citus every load keeps the keys


# ================================================================ re-runs, reloads, refreshes


def test_citus_rerun_with_nothing_new_changes_nothing(cluster):
    before, _ = fresh_load(cluster.url, SAMPLE)
    again = etl(cluster.url, SAMPLE)
    assert parse_summary(again.stdout).nothing_new
    with using_database(cluster.url):
        assert table_contents() == before
        assert query("SELECT status FROM load_runs ORDER BY run_id") == [("succeeded",)] * 2
        assert query("SELECT count(*) FROM stage_plays_citus") == [(0,)]


def test_a_citus_load_goes_on_while_a_backup_reads_every_table(cluster, tmp_path):
    """pg_dump holds every table it dumps, the staging table included, for reading until it
    ends: a load writes past it, as on one server."""
    fresh_load(cluster.url, SAMPLE)
    data = copy_of(SAMPLE, tmp_path)
    write(data, "log_data/2018/12/a.json", lines(event(1)))
    backup = psycopg2.connect(cluster.url, application_name="pg_dump")
    try:
        with backup.cursor() as cur:
            tables = sql_queries.TABLES + sql_queries.CITUS_STAGING
            cur.execute(
                pgsql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    pgsql.SQL(", ").join(map(pgsql.Identifier, tables))
                )
            )
        done = etl(cluster.url, data, "--wait", "1")
    finally:
        backup.close()
    assert parse_summary(done.stdout).records["log"][:2] == (1, 1)


def test_citus_full_refresh_gives_identical_tables(cluster):
    before, _ = fresh_load(cluster.url, SAMPLE)
    done = etl(cluster.url, SAMPLE, "--full-refresh")
    summary = parse_summary(done.stdout)
    assert summary.files["log"] == {"new": 30}
    assert summary.records["log"][:2] == (20000, 17071)
    assert summary.checks == CHECKS_PASSED
    with using_database(cluster.url):
        assert table_contents() == before


def test_citus_keys_found_missing_with_an_instant_written_twice_are_built_by_the_next_run(
    cluster,
):
    """time's key and the foreign key on it, dropped by hand with a copy of an instant left in
    time (as an interrupted bulk load leaves them): the next run keeps one row of the instant
    and builds both, in the one transaction that also analyzes every table."""
    before, _ = fresh_load(cluster.url, SAMPLE)
    with using_database(cluster.url):
        query(
            "ALTER TABLE songplays DROP CONSTRAINT songplays_start_time_fkey;"
            "ALTER TABLE time DROP CONSTRAINT time_pkey;"
            "INSERT INTO time SELECT * FROM time ORDER BY start_time LIMIT 1 RETURNING 1"
        )
        assert query("SELECT count(*) - count(DISTINCT start_time) FROM time") == [(1,)]
    report = json.loads(etl(cluster.url, SAMPLE).stdout)
    assert report["exit_code"] == 0
    assert report["keys"]["found_missing"] == ["time_pkey", "songplays_start_time_fkey"]
    assert report["keys"]["not_restored"] == {}
    with using_database(cluster.url):
        assert table_contents() == before
        assert query(
            "SELECT count(*) FROM pg_constraint WHERE conname IN %s",
            (("time_pkey", "songplays_start_time_fkey"),),
        ) == [(2,)]


def edit_log(path: Path) -> int:
    """Drop every third play of a log file and rename the song of the first kept play: plays
    go, with their instants and the user levels they set; one play no longer resolves. The
    plays dropped."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    plays = [i for i, e in enumerate(events) if e["page"] == "NextSong"]
    gone = set(plays[::3])
    kept = [e for i, e in enumerate(events) if i not in gone]
    first = next(e for e in kept if e["page"] == "NextSong")
    first["song"], first["artist"], first["length"] = "Renamed", "Nobody", 1.5
    path.write_text("".join(json.dumps(e) + "\n" for e in kept))
    return len(gone)


def test_citus_changed_log_file_reloads_to_what_plain_postgresql_loads_fresh(cluster, tmp_path):
    data = copy_of(SAMPLE, tmp_path)
    fresh_load(cluster.url, data)
    log = sorted((data / "log_data").rglob("*.json"))[-1]
    dropped = edit_log(log)
    done = etl(cluster.url, data)
    summary = parse_summary(done.stdout)
    assert summary.files["log"] == {"unchanged": 29, "changed": 1}
    assert summary.checks == CHECKS_PASSED
    with using_database(cluster.url):
        reloaded = table_contents()
    plain, _ = fresh_load(plain_url(), data)
    assert reloaded == plain
    assert dropped > 0 and len(plain["songplays"]) == 17071 - dropped


def test_citus_overlapping_deliveries_load_step_by_step_to_what_plain_postgresql_loads_fresh(
    cluster, tmp_path
):
    """A generated sequence of deliveries (test_file_sequences.py): a log file repeating part of
    another with other values, a whole copy in another folder, a shrink, an emptied file, a
    garbled one, one sent again cut short, a deletion, a growth, song files added, changed,
    emptied, garbled and deleted;
    each loaded on Citus in small batches (big files in parts). After each step the star, the
    manifest and the kept copies are what plain PostgreSQL's fresh load of the files (deleted,
    emptied, garbled and cut ones with the version that counts) gives."""
    citus, plain = db.Settings.from_env(cluster.url), db.Settings.from_env()
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    operations, folder, history = sequences.sequence(CITUS_SEQUENCE_SEED)
    data, model = tmp_path / "data", tmp_path / "model"
    small = Limits(song_batch_files=3, log_batch_bytes=1500, parse_piece_bytes=700)
    kinds = set()
    for step in range(CITUS_STEPS):
        kind, what = sequences.operate(operations, folder)
        kinds.add(kind)
        history.append(what)
        mtime = 1_600_000_000_000_000_000 + step * 1_000_000_000
        sequences.write_folder(data, folder, deleted_too=False, mtime_ns=mtime)
        sequences.write_folder(model, folder, deleted_too=True, mtime_ns=mtime)
        sequences.load(citus, data, small)
        folder.was_loaded()
        sequences.fresh_tables_in(plain)
        sequences.load(plain, model, Limits())
        assert sequences.outcome(citus) == sequences.outcome(plain), history
    assert kinds == set(sequences.OPERATIONS) - {"edit"}


def test_citus_songs_arriving_after_their_plays_resolve_them_as_plain_postgresql_does(
    cluster, sample_plain, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "log_data", data / "log_data")
    fresh_load(cluster.url, data)
    with using_database(cluster.url):
        assert query("SELECT count(*) FROM songplays WHERE song_id IS NOT NULL") == [(0,)]
    shutil.copytree(SAMPLE / "song_data", data / "song_data")
    done = etl(cluster.url, data)
    assert parse_summary(done.stdout).resolved == (5965, 17071, 5965)
    with using_database(cluster.url):
        assert table_contents() == sample_plain


def test_citus_songs_moved_to_other_artists_leave_the_artists_plain_postgresql_loads_fresh(
    cluster, tmp_path
):
    """The sample loaded on Citus, then 40 of its song files corrected to another artist_id: the
    artists that lost their smallest song take their next one's values, those that lost their
    last song go, and the plays follow their songs, on the reference tables after the plays'
    shards were written, as plain PostgreSQL's fresh load of the corrected files gives."""
    data = copy_of(SAMPLE, tmp_path)
    fresh_load(cluster.url, data)
    files = sorted(data.glob("song_data/**/*.json"))
    records = {path: json.loads(path.read_text()) for path in files}
    artist_ids = sorted({record["artist_id"] for record in records.values()})
    before = {record["song_id"]: record["artist_id"] for record in records.values()}
    for path in random.Random(7).sample(files, 40):
        records[path]["artist_id"] = random.Random(path.name).choice(artist_ids)
        path.write_text(json.dumps(records[path]))
    after = {record["song_id"]: record["artist_id"] for record in records.values()}
    assert {"its last song", "its smallest"} <= sequences.artist_moves(before, after)
    done = etl(cluster.url, data)
    assert parse_summary(done.stdout).checks == CHECKS_PASSED
    with using_database(cluster.url):
        moved = table_contents()
    assert moved == fresh_load(plain_url(), data)[0]


# ================================================================ kills and concurrent runs


LOCK_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
    "AND (classid::bigint << 32) | objid::bigint = %s"
)


def start_load(url: str, data: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "etl.py", "--data", str(data), "--no-progress", "--json", *extra],
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    conn, sql: str, params, until, proc: subprocess.Popen | None = None, timeout: float = 120
):
    """Poll sql until its value passes until; the load (proc) must still be running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            value = cur.fetchone()[0]
        if until(value):
            return value
        assert proc is None or proc.poll() is None, (
            f"the load ended before the awaited point: {proc.communicate()}"
        )
        time.sleep(0.05)
    raise AssertionError(f"timeout waiting on {sql}")


def test_citus_kill_9_mid_load_then_rerun_equals_an_uninterrupted_load(
    cluster, generated, generated_plain
):
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    with using_database(cluster.url):
        schema = schema_objects()
    watch = psycopg2.connect(cluster.url)
    watch.autocommit = True
    try:
        proc = start_load(cluster.url, generated)
        # Once the songs and the first log batch have committed, while the next batch loads.
        wait_for(
            watch,
            "SELECT count(*) FROM load_manifest WHERE kind = 'log'",
            None,
            lambda n: n > 0,
            proc,
        )
        children = {
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
        }
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        # the coordinator ends the killed session (and its lock) when it notices
        wait_for(watch, LOCK_HELD, (sql_queries.LOCK_KEY,), lambda n: n == 0, timeout=30)
        with watch.cursor() as cur:
            cur.execute("SELECT count(*) FROM load_manifest WHERE kind = 'log'")
            logs_at_kill = cur.fetchone()[0]
            cur.execute(
                "SELECT count(*) FROM pg_constraint "
                "WHERE conrelid = 'songplays'::regclass AND contype = 'f'"
            )
            foreign_keys_at_kill = cur.fetchone()[0]
    finally:
        watch.close()
    assert 0 < logs_at_kill < 30
    assert foreign_keys_at_kill == 4  # on Citus a first load keeps the keys

    done = etl(cluster.url, generated)
    summary = parse_summary(done.stdout)
    assert summary.files["log"] == {"unchanged": logs_at_kill, "new": 30 - logs_at_kill}
    assert summary.checks == CHECKS_PASSED
    with using_database(cluster.url):
        assert table_contents() == generated_plain
        assert schema_objects() == schema
        assert query("SELECT status FROM load_runs ORDER BY run_id") == [
            ("interrupted",),
            ("succeeded",),
        ]
        assert query("SELECT count(*) FROM stage_plays_citus") == [(0,)]


def test_citus_two_concurrent_runs_one_loads_the_other_exits_4(cluster, generated, generated_plain):
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    watch = psycopg2.connect(cluster.url)
    watch.autocommit = True
    try:
        first = start_load(cluster.url, generated)
        wait_for(watch, LOCK_HELD, (sql_queries.LOCK_KEY,), lambda n: n == 1, first)
        second = start_load(cluster.url, generated, "--wait", "0")
        results = [
            (p.returncode, out, err)
            for p in (first, second)
            for out, err in [p.communicate(timeout=600)]
        ]
    finally:
        watch.close()
    assert [code for code, _, _ in results] == [0, 4], results
    _, out, err = results[1]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: another load is running on this database: etl.py (server pid "
    ), err
    assert json.loads(out) == {
        "run_id": None,
        "status": "failed",
        "exit_code": 4,
        "error": lines[0].removeprefix("error: "),
    }
    with using_database(cluster.url):
        assert table_contents() == generated_plain
        assert query("SELECT status FROM load_runs") == [("succeeded",)]


def test_a_worker_node_down_is_one_line_naming_it_and_the_run_after_its_restart_loads(
    cluster, generated, generated_plain
):
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    name, port, _ = cluster.nodes()[-1]
    cluster.stop_nodes([name])
    try:
        refused = etl(cluster.url, generated, check=False)
    finally:
        citus_cluster.start(cluster.dir)  # at once: its connections may linger in TIME_WAIT
    assert refused.returncode == 3, refused
    line = refused.stderr.strip()
    assert line.startswith(
        f"error: the database refused: connection to the remote node postgres@127.0.0.1:{port} "
        "failed"
    ), line
    assert line.endswith(  # the worker's name once, in the coordinator's words
        " (said of a connection the server made to another node: a Citus worker's; what was "
        "committed stays (a load commits each batch whole), the rest was rolled back: once the "
        "node is back, run the command again to resume)"
    ), line
    assert "***" not in line  # no URL garbled as if it held a password
    etl(cluster.url, generated)
    with using_database(cluster.url):
        assert table_contents() == generated_plain


def test_a_row_an_open_transaction_holds_keeps_a_load_on_citus_no_longer_than_its_wait(
    cluster, tmp_path
):
    """A notebook's open transaction holds a user's row (on the worker holding its shard): the
    load that writes that user gives up after --wait seconds (exit 4), naming the session, as on
    one server; the lock timeout is sent to the workers, where the row is waited for."""
    data = tmp_path / "data"
    write(data, "log_data/a.json", lines(event(1)))
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    etl(cluster.url, data)
    write(data, "log_data/b.json", lines(event(2)))  # a later play of the user loaded
    holder = psycopg2.connect(cluster.url, application_name="a notebook")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT user_id FROM users WHERE user_id = %s FOR UPDATE", (USER,))
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        with using_database(cluster.url):
            refused = run_script(
                "etl.py",
                "--data",
                str(data),
                "--no-progress",
                "--json",
                "--wait",
                "1",
                check=False,
                timeout=60,
            )
    finally:
        holder.close()
    assert json.loads(refused.stdout) == {
        "run_id": 2,  # the run after the first, recorded failed
        "status": "failed",
        "exit_code": 4,
        "error": "the load waited for a row of its tables that an open transaction holds; "
        f"sessions writing to them: {pid} (role postgres, a notebook) on users; gave up after "
        "1 s (--wait); what finished batches committed stays: run again once that transaction "
        "ends",
    }
    assert parse_summary(etl(cluster.url, data).stdout).records["log"].loaded == 1


@pytest.mark.parametrize("script", ["create_tables.py", "etl.py --full-refresh"])
def test_a_session_on_a_worker_holding_a_shard_keeps_a_drop_or_a_refresh_waiting_seconds(
    cluster, tmp_path, script
):
    """A session connected to a worker node itself, its open transaction holding a shard of
    songplays: create_tables.py's DROP and --full-refresh's TRUNCATE give up after their few
    seconds (their lock timeout reaches the workers), say who may hold it, and leave the
    tables as they were."""
    data = tmp_path / "data"
    write(data, "log_data/a.json", lines(event(1)))
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    etl(cluster.url, data)
    with using_database(cluster.url):
        before = table_contents()
    worker = cluster.url.replace(f":{cluster.ports[0]}/", f":{cluster.ports[1]}/")
    holder = psycopg2.connect(worker, application_name="a notebook on a worker")
    try:
        with holder.cursor() as cur:
            cur.execute("SET citus.override_table_visibility = off")  # shards show here
            cur.execute("SELECT relname FROM pg_class WHERE relname ~ '^songplays_[0-9]+$' LIMIT 1")
            shard = pgsql.Identifier(cur.fetchone()[0])
            cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(shard))  # the transaction stays
        name, *args = script.split()
        if name == "etl.py":
            args += ["--data", str(data), "--no-progress"]
        began = time.monotonic()
        with using_database(cluster.url):
            refused = run_script(name, *args, check=False, timeout=120)
        took = time.monotonic() - began
    finally:
        holder.close()
    what = (
        "drop the tables" if name == "create_tables.py" else "empty the tables for --full-refresh"
    )
    assert (refused.returncode, refused.stderr.splitlines()[0].split(":")[:2]) == (
        3,
        ["error", f" cannot {what}"],
    ), refused.stderr
    assert "a session on a worker node (connected to it, not to the coordinator)" in refused.stderr
    assert took < 60
    with using_database(cluster.url):
        assert table_contents() == before


def test_scripts_pointed_at_a_worker_node_say_to_use_the_coordinator(cluster, tmp_path):
    """A worker holds the distributed tables but not the load's books: etl.py and
    create_tables.py say so in one line, and neither changes anything there."""
    data = tmp_path / "data"
    write(data, "log_data/a.json", lines(event(1)))
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    worker = cluster.url.replace(f":{cluster.ports[0]}/", f":{cluster.ports[1]}/")
    said = (
        "error: this is a Citus worker node (songplays is distributed here, the load's books "
        "are not): connect to the coordinator (nothing was changed)\n"
    )
    for script in (["etl.py", "--data", str(data), "--no-progress"], ["create_tables.py"]):
        done = run_script(*script, env={"DATABASE_URL": worker}, check=False)
        assert (done.returncode, done.stderr) == (3, said)
    assert outside_a_transaction(worker, "SELECT to_regclass('songplays') IS NOT NULL") == [(True,)]


def outside_a_transaction(
    url: str, *statements: str | pgsql.Composable | tuple[str, tuple]
) -> list[tuple]:
    """Statements (each alone, or with its parameters) run on url's database one by one, each
    committed: the last one's rows."""
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                text, params = statement if isinstance(statement, tuple) else (statement, None)
                cur.execute(text, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_a_batch_left_prepared_on_a_worker_is_recovered_before_a_run_reads(cluster, tmp_path):
    """A worker that fails as a batch commits (two-phase) keeps its part prepared, committed or
    aborted when the coordinator next recovers (each minute, citus.recover_2pc_interval): a run
    recovers first, so that it reads what was committed. Here a transaction prepared on a
    worker by hand, recorded as committed on the coordinator, the minute's recovery turned off."""
    data = tmp_path / "data"
    write(data, "log_data/l.json", lines(event(0)))
    run_script("create_tables.py", env={"DATABASE_URL": cluster.url})
    etl(cluster.url, data)
    port = cluster.ports[1]
    worker = cluster.url.replace(f":{cluster.ports[0]}/", f":{port}/")
    gid = "citus_0_4242_7_1"  # citus_<coordinator's group>_<pid>_<transaction>_<connection>
    # the minute's recovery off first, and seen off: between the prepare and the record of its
    # commit it would abort the transaction
    outside_a_transaction(
        cluster.url, "ALTER SYSTEM SET citus.recover_2pc_interval = -1", "SELECT pg_reload_conf()"
    )
    deadline = time.monotonic() + 30
    while outside_a_transaction(cluster.url, "SHOW citus.recover_2pc_interval") != [("-1",)]:
        assert time.monotonic() < deadline, "the server never read the setting"
        time.sleep(0.05)
    outside_a_transaction(
        worker,
        "CREATE TABLE indoubt (n int)",
        pgsql.SQL("BEGIN; INSERT INTO indoubt VALUES (1); PREPARE TRANSACTION {}").format(
            pgsql.Literal(gid)  # PREPARE TRANSACTION takes no parameter
        ),
    )
    outside_a_transaction(
        cluster.url,
        (
            "INSERT INTO pg_dist_transaction (groupid, gid) SELECT groupid, %s "
            "FROM pg_dist_node WHERE nodeport = %s",
            (gid, port),
        ),
    )
    try:
        assert parse_summary(etl(cluster.url, data).stdout).nothing_new
        assert outside_a_transaction(
            worker, "SELECT (SELECT count(*) FROM pg_prepared_xacts), n FROM indoubt"
        ) == [(0, 1)]
    finally:
        outside_a_transaction(
            cluster.url, "ALTER SYSTEM RESET citus.recover_2pc_interval", "SELECT pg_reload_conf()"
        )
        if outside_a_transaction(worker, "SELECT count(*) FROM pg_prepared_xacts") != [(0,)]:
            outside_a_transaction(
                worker, pgsql.SQL("ROLLBACK PREPARED {}").format(pgsql.Literal(gid))
            )
        outside_a_transaction(worker, "DROP TABLE indoubt")


def test_what_a_load_picks_and_numbers_is_the_same_whatever_the_collation(cluster, tmp_path):
    """'A' sorts before '_' by code point, after it in en-US: of songs of one artist, and of
    songs a play matches alike, the song_id smallest by code point decides, on a database of
    ICU's en-US collation (the coordinator's PostgreSQL, no Citus there) as on the C one; and
    plays another file takes over get the same songplay_ids on both."""
    data = tmp_path / "data"
    for song_id, artist_id, title in [
        ("SOXA1", "ARX", "T1"),
        ("SOX_1", "ARX", "T2"),
        ("SOYA1", "ARY", "Same"),
        ("SOY_1", "ARY", "Same"),
    ]:
        values = song(0, song_id=song_id, artist_id=artist_id, artist_name=f"Art {artist_id}")
        values |= {"title": title, "artist_location": f"from {song_id}", "duration": 200.25}
        write(data, f"song_data/{song_id}.json", json.dumps(values).encode())
    play = event(0, artist="Art ARY", song="Same", length=200.25)
    write(data, "log_data/l.json", lines(play))
    icu = cluster.url.rsplit("/", 1)[0] + "/sparkify_icu"
    create = (
        "CREATE DATABASE sparkify_icu LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' "
        "TEMPLATE template0"
    )
    with using_database(cluster.url):
        as_superuser("DROP DATABASE IF EXISTS sparkify_icu", create)
    chosen = (
        "SELECT (SELECT location FROM artists WHERE artist_id = 'ARX'), song_id FROM songplays "
        "WHERE song_title = 'Same'"
    )
    # A file first in path order, sent later, takes three plays over: their new songplay_ids
    # follow the plays' keys, not the order a join of their titles came in ("Å", "Iıİi" and
    # "Dup" sort otherwise in en-US).
    held = [event(10 + k, song=title, length=1.5) for k, title in enumerate(["Dup", "Iıİi", "Å"])]
    ids = "SELECT item_in_session, songplay_id FROM songplays WHERE song_length = 1.5 ORDER BY 1"
    taken_over = {}
    try:
        for url in (icu, plain_url()):
            for path in ["log_data/B.json", "log_data/a-b/x.json"]:
                (data / path).unlink(missing_ok=True)
            write(data, "log_data/a-b/x.json", lines(*held))
            with using_database(url):
                run_script("create_tables.py")
                etl(url, data)
                assert query(chosen) == [("from SOXA1", "SOYA1")]
                write(data, "log_data/B.json", lines(*held))
                etl(url, data)
                taken_over[url] = query(ids)
        assert taken_over[icu] == taken_over[plain_url()]
    finally:
        with using_database(cluster.url):
            as_superuser("DROP DATABASE IF EXISTS sparkify_icu")
