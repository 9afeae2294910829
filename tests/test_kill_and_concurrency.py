"""Kills and concurrency: a load killed with SIGKILL anywhere resumes to the tables an
uninterrupted load makes and leaves no worker process behind; a run waits up to --wait seconds for
the load lock; of two loads at once that do not wait one loads and the other is refused;
create_tables.py refuses while a load runs, ends other sessions that
hold the tables where its role may, and names those it may not."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from builders import (
    BASE,
    HANGUP,
    SMALL_BATCHES,
    STOPS,
    USER,
    Watcher,
    as_superuser,
    base_sample,
    embedded_url,
    etl,
    event,
    last_run,
    last_run_status,
    lines,
    one_error_line,
    plus,
    start_load,
    write,
)
from conftest import (
    PROJECT,
    counts,
    lock_let_go,
    query,
    run_script,
    scalar,
    schema_objects,
    table_contents,
    using_database,
)
from psycopg2 import sql as pgsql
from summary import CHECKS_PASSED, parse_summary

import db
import embedded
import load
import sql_queries
from cli import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_TERMINATED,
    INTERRUPTED,
    TERMINATED,
)
from extract import FOLDERS

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

MANIFEST_ROWS = "SELECT count(*) FROM load_manifest"
SONGPLAYS_FOREIGN_KEYS = (
    "SELECT count(*) FROM pg_constraint WHERE conrelid = 'songplays'::regclass AND contype = 'f'"
)
RUNS = "SELECT count(*) FROM load_runs"
LOCK_HELD = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Generated data that, in small batches, takes many transactions and a worker process."""
    from tools import generate_data

    root = tmp_path_factory.mktemp("big") / "data"
    generate_data.generate(out=str(root), songs=200, events=40_000, seed=4, days=20)
    return root


@pytest.fixture(scope="module")
def baseline(big) -> dict[str, list[tuple]]:
    """The tables after one uninterrupted, plain `python etl.py`."""
    run_script("create_tables.py")
    etl(big)
    return table_contents()


def files_in(data: Path, *kinds: str) -> int:
    return sum(1 for kind in kinds or FOLDERS for _ in (data / FOLDERS[kind]).rglob("*.json"))


def descendants(pid: int) -> set[int]:
    """Live processes below pid, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """pids still running (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def kill(proc: subprocess.Popen) -> set[int]:
    """SIGKILL the load; returns the processes it had started."""
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()  # not communicate(): orphans would keep the pipes open
    proc.stderr.close()
    return children


def reap(pids: set[int]) -> None:
    """Orphans of a killed test load (ours, by pid) are stopped so they do not outlive the test."""
    for pid in alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_loads_resume_to_the_same_tables_as_an_uninterrupted_run(big, baseline):
    run_script("create_tables.py")
    schema = schema_objects()
    total = files_in(big)
    songs = files_in(big, "song")
    watch = Watcher()
    orphans, at_kill, foreign_keys = set(), [], []
    try:
        # 1: right after the first batch (the songs) committed, while logs are being loaded;
        # 2: a resumed run, once a few more log batches committed; 3: a resumed run that has
        # started its run row but committed nothing yet (held before its first batch's rejects
        # are written, by a session holding load_rejects).
        points = [
            (MANIFEST_ROWS, lambda n: n > 0, False),
            (MANIFEST_ROWS, lambda n, s=songs: n >= s + 6, False),
            (RUNS, lambda n: n >= 3, True),
        ]
        for sql, reached, held in points:
            holder = db.connect(db.Settings.from_env())
            if held:
                with holder.cursor() as cur:
                    cur.execute("LOCK TABLE load_rejects IN SHARE MODE")
            proc = start_load(big)
            watch.wait(sql, reached, proc)
            orphans |= kill(proc)
            holder.close()
            watch.lock_free()  # the killed session has ended: what it committed is in
            at_kill.append(watch.value(MANIFEST_ROWS))
            foreign_keys.append(watch.value(SONGPLAYS_FOREIGN_KEYS))
        assert 0 < at_kill[0] < at_kill[1] < total, at_kill
        assert foreign_keys[0] in (0, 4)  # the songs are in; the bulk load may have begun
        assert foreign_keys[2] == 4  # a resumed run builds what a killed one left out first
        assert at_kill[2] == at_kill[1]
        assert counts()["songplays"] < len(baseline["songplays"])

        watch.lock_free()
        proc = start_load(big)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == EXIT_OK, out + err
        summary = parse_summary(out)
        assert list(summary.files["log"]) == ["unchanged", "new"]
        assert summary.files["log"]["unchanged"] == at_kill[1] - songs
        # what the killed runs committed is named, as no report of theirs did: with this run's,
        # every song (one a file) and every play
        report = json.loads(out)
        earlier = report["loaded_by_earlier_runs"]
        assert (earlier["runs"], earlier["files"]) == (
            [1, 2, 3],
            {"song": songs, "log": at_kill[1] - songs},
        )
        assert earlier["records"]["song"] == songs
        loaded_now = report["records"]["log"]["loaded"]
        assert earlier["records"]["log"] + loaded_now == len(baseline["songplays"])
        assert summary.checks == CHECKS_PASSED
        assert summary.keys_left_alone  # plays are loaded: no bulk load, nothing missing
    finally:
        watch.close()
        reap(orphans)
    assert table_contents() == baseline
    assert schema_objects() == schema
    assert query("SELECT status FROM load_runs ORDER BY run_id") == [
        ("interrupted",),
        ("interrupted",),
        ("interrupted",),
        ("succeeded",),
    ]
    assert scalar(MANIFEST_ROWS) == total


def test_killed_load_leaves_no_worker_process_behind(big):
    run_script("create_tables.py")
    watch = Watcher()
    workers = set()
    try:
        watch.lock_free()
        proc = start_load(big)
        watch.wait(MANIFEST_ROWS, lambda n: n > 0, proc)
        workers = descendants(proc.pid)
        assert workers, "the load had started no worker process: nothing to check"
        kill(proc)
        deadline = time.monotonic() + 10
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            for pid in alive(workers)
        }
        assert not left, f"still running 10 s after the load was killed: {left}"
    finally:
        watch.close()
        reap(workers)


def parse_workers(pid: int) -> set[int]:
    """The parse workers spawned below pid (one just spawned imports for a while)."""
    return {child for child in descendants(pid) if b"spawn_main" in cmdline(child)}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def blocks(pid: int, signal_number: int) -> bool | None:
    """Whether process pid blocks the signal (None: it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    mask = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", status, re.M)[1], 16)
    return bool(mask & 1 << (signal_number - 1))


def ended_by_the_stop(proc: subprocess.Popen, out: str, err: str, stop: str) -> None:
    """The run ended as the stop says, in one line, and its JSON names the run it stopped."""
    _, exit_code, said = (STOPS | HANGUP)[stop]
    assert (proc.returncode, err) == (exit_code, f"error: {said}\n"), out + err
    assert json.loads(out) == {
        "run_id": last_run(),
        "status": "failed",
        "exit_code": exit_code,
        "error": said,
    }


def sending_a_part(pid: int) -> bool:
    """Whether a thread of process pid waits to write the rest of a part into a full pipe."""
    waits = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            waits.append((task / "wchan").read_text())
        except OSError:
            continue
    # pipe_write, anon_pipe_write or pipe_wait_writable, as kernels name it
    return any("pipe" in wait and "writ" in wait for wait in waits)


def test_a_parse_worker_killed_halfway_through_a_part_ends_the_run_in_one_line_the_next_ends_it(
    big, baseline
):
    """The kernel's out-of-memory killer sends SIGKILL; here while the worker has written part of
    a part into the pipe: the load must not wait for the rest."""
    run_script("create_tables.py")
    watch = Watcher()
    workers: set[int] = set()
    proc = start_load(big)
    try:
        watch.wait("SELECT count(*) FROM load_manifest WHERE path LIKE 'log_data/%'", bool, proc)
        workers = parse_workers(proc.pid)
        assert len(workers) == 1, "no parse worker: the test proves nothing"
        (worker,) = workers
        deadline = time.monotonic() + 60
        while not sending_a_part(worker):
            assert proc.poll() is None and time.monotonic() < deadline, "no part was sent"
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        watch.close()
        reap({*workers, proc.pid})  # a load left waiting for the rest of the part too
    assert proc.returncode == EXIT_ENVIRONMENT, err
    assert err == (
        "error: the parse worker was killed (SIGKILL, as the kernel's out-of-memory killer does): "
        "what each batch committed before stays; run again to go on, with a smaller --batch-mb "
        "if memory is short (memory follows it)\n"
    )
    assert json.loads(out) == {
        "run_id": last_run(),
        "status": "failed",
        "exit_code": EXIT_ENVIRONMENT,
        "error": err.removeprefix("error: ").rstrip("\n"),
    }
    assert last_run_status() == "failed"
    assert scalar("SELECT count(*) FROM load_manifest WHERE path LIKE 'log_data/%'") > 0
    etl(big)
    assert table_contents() == baseline


@pytest.mark.parametrize("stop", [*STOPS, *HANGUP])
@pytest.mark.parametrize("when", ["as the worker starts", "once files are loaded"])
def test_ctrl_c_ends_a_load_in_one_line_with_no_worker_left_and_the_next_run_finishes_it(
    big, baseline, when, stop
):
    sent, _, _ = (STOPS | HANGUP)[stop]
    run_script("create_tables.py")
    watch = Watcher()
    workers: set[int] = set()
    try:
        proc = subprocess.Popen(
            [sys.executable, "etl.py", *SMALL_BATCHES, "--data", str(big), "--no-progress"]
            + ["--json"],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        if when == "once files are loaded":
            watch.wait(MANIFEST_ROWS, lambda n: n > 0, proc)
        else:
            deadline = time.monotonic() + 60
            while not parse_workers(proc.pid):
                assert proc.poll() is None and time.monotonic() < deadline, "no worker started"
                time.sleep(0.002)
        workers = descendants(proc.pid)
        blocked = {w: blocks(w, sent) for w in parse_workers(proc.pid)}
        os.killpg(proc.pid, sent)  # to every process of the job
        out, err = proc.communicate(timeout=120)
        deadline = time.monotonic() + 10
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = alive(workers)
    finally:
        watch.close()
        reap(workers)
    assert workers, "no worker process: the test proves nothing about them"
    assert blocked and all(blocked.values()), blocked  # from its start: not only when caught
    ended_by_the_stop(proc, out, err, stop)
    assert not left, f"still running 10 s after {stop}: {left}"
    etl(big)
    assert table_contents() == baseline


# etl.py with a stop sent to itself as its first parse worker is started (the stop waits, blocked,
# until the workers are started, and is raised as they are unblocked), and AGAIN, as an impatient
# Ctrl-C comes: as the first worker is killed, or as the closing of the workers begins.
STOPPED_AS_WORKERS_START = """
import multiprocessing.context, os, runpy, sys
import cli
stop, again = int(os.environ["STOP"]), os.environ["AGAIN"]
start = multiprocessing.context.SpawnProcess.start
kill = multiprocessing.context.SpawnProcess.kill
stops_held = cli.stops_held
def stopped_as_it_starts(process):
    if not multiprocessing.active_children():
        os.kill(os.getpid(), stop)
    start(process)
def stopped_again_as_it_is_killed(process):
    os.kill(os.getpid(), stop)
    kill(process)
def stopped_again_as_the_closing_begins(calls=[]):
    calls.append(None)
    if len(calls) == 2:  # the first holds stops as the workers start
        os.kill(os.getpid(), stop)
    return stops_held()
multiprocessing.context.SpawnProcess.start = stopped_as_it_starts
if again == "as they are killed":
    multiprocessing.context.SpawnProcess.kill = stopped_again_as_it_is_killed
if again == "as their closing begins":
    cli.stops_held = stopped_again_as_the_closing_begins
sys.argv[0] = "etl.py"
runpy.run_path("etl.py", run_name="__main__")
"""


@pytest.mark.parametrize("again", ["", "as they are killed", "as their closing begins"])
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_raised_as_the_parse_workers_start_ends_them_and_the_run(big, baseline, stop, again):
    """The run used to print its error and then wait for good, at exit, for workers nobody had
    killed (multiprocessing asks daemon workers to end with SIGTERM, which they block)."""
    sent, _, _ = STOPS[stop]
    run_script("create_tables.py")
    args = [*SMALL_BATCHES, "--jobs", "2", "--data", str(big), "--no-progress", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_AS_WORKERS_START, *args],
        cwd=PROJECT,
        env={**os.environ, "STOP": str(int(sent)), "AGAIN": again},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        left = descendants(proc.pid)
        reap({proc.pid, *left})
    ended_by_the_stop(proc, out, err, stop)
    etl(big)
    assert table_contents() == baseline


def test_of_two_loads_at_once_one_loads_and_the_other_is_refused_as_locked(big, baseline):
    run_script("create_tables.py")
    watch = Watcher()
    try:
        loads = [start_load(big, "--wait", "0")]
        watch.wait(LOCK_HELD, bool, loads[0])  # the other comes while it loads
        loads.append(start_load(big, "--wait", "0"))
        results = [
            subprocess.CompletedProcess(p.args, p.returncode, out, err)
            for p in loads
            for out, err in [p.communicate(timeout=300)]
        ]
    finally:
        watch.close()
    assert [r.returncode for r in results] == [EXIT_OK, EXIT_LOCKED], results
    loser = next(r for r in results if r.returncode == EXIT_LOCKED)
    assert "another load is running" in one_error_line(loser)
    assert json.loads(loser.stdout) == {
        "run_id": None,
        "status": "failed",
        "exit_code": EXIT_LOCKED,
        "error": one_error_line(loser).removeprefix("error: "),
    }
    assert table_contents() == baseline
    assert query("SELECT status FROM load_runs") == [("succeeded",)]


def a_later_play_of_a_loaded_user(data: Path) -> None:
    """A play of a user loaded, and a later one of theirs delivered: the next run merges it into
    tables that hold the user already (no bulk load), writing the user's row."""
    write(data, "log_data/2018/12/a.json", lines(event(1)))
    etl(data)
    write(data, "log_data/2018/12/b.json", lines(event(2)))


# The run's statement waiting on the server for a lock another session holds.
WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl.py' "
    "AND wait_event_type = 'Lock'"
)


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_ends_a_statement_the_server_keeps_waiting_at_once(data, stop):
    """A statement that would wait minutes on the server (here for a lock an admin's session
    holds, up to --wait; a COMMIT waiting for a synchronous standby that is down, for good)
    holds etl.py in libpq, where Python's handlers cannot run: Ctrl-C and SIGTERM cancel it on
    the server, and the run ends as a stop does, its batch rolled back."""
    sent, _, _ = STOPS[stop]
    a_later_play_of_a_loaded_user(data)
    before = counts()
    admin = db.connect(db.Settings.from_env())
    watch = Watcher()
    try:
        with admin.cursor() as cur:
            cur.execute(*IN_THE_WAY["a table"])
        proc = start_load(data, "--wait", "600")
        watch.wait(WAITING_FOR_A_LOCK, lambda n: n == 1, proc)
        os.kill(proc.pid, sent)
        out, err = proc.communicate(timeout=60)
    finally:
        admin.close()
        watch.close()
    ended_by_the_stop(proc, out, err, stop)
    assert counts() == before
    etl(data)
    assert counts() == plus(songplays=2, users=1, time=2)


# An admin's trigger on users that sleeps and, cancelled, warns and lets its statement end: as
# a COMMIT waiting for a synchronous standby that is down ends, cancelled, with a warning.
WARNS_WHEN_CANCELLED = """
CREATE FUNCTION sleeps_then_warns() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(600);
    RETURN NULL;
EXCEPTION WHEN query_canceled THEN
    RAISE WARNING 'cancelled, and went on';
    RETURN NULL;
END $$;
CREATE TRIGGER sleeps_then_warns AFTER INSERT ON users
FOR EACH STATEMENT EXECUTE FUNCTION sleeps_then_warns();
SELECT 1"""
SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl.py' "
    "AND wait_event = 'PgSleep'"
)


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_whose_cancelled_statement_ends_with_a_warning_still_stops_the_run(data, stop):
    """psycopg2 hands a statement's warnings to Python as it returns, and drops what was raised
    meanwhile: a stop that arrived then was lost, and the run went on to load its batch."""
    sent, exit_code, said = STOPS[stop]
    a_later_play_of_a_loaded_user(data)
    before = counts()
    query(WARNS_WHEN_CANCELLED)
    watch = Watcher()
    try:
        proc = start_load(data)
        watch.wait(SLEEPING, lambda n: n == 1, proc)
        os.kill(proc.pid, sent)
        out, err = proc.communicate(timeout=60)
    finally:
        watch.close()
        query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'etl.py' AND wait_event = 'PgSleep'"
        )
        query("DROP FUNCTION sleeps_then_warns() CASCADE; SELECT 1")
    assert (proc.returncode, err) == (exit_code, f"error: {said}\n")
    assert counts() == before
    etl(data)
    assert counts() == plus(songplays=2, users=1, time=2)


class StopsAsItIsRead:
    """A COPY's data whose first read gets SIGTERM, as a batch's data does when a stop arrives as
    psycopg2 reads it: the handler's exception, raised inside the read, psycopg2 replaces with
    the server's error (COPY from stdin failed: error in .read() call)."""

    def __init__(self):
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return b"1\n" if self.reads < 10_000 else b""


def test_a_stop_raised_inside_a_copys_read_still_ends_the_command_as_a_stop(fresh_tables, capsys):
    settings = db.Settings.from_env()

    def copy() -> int:
        conn = db.connect(settings)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TEMP TABLE copied (n int)")
                cur.copy_expert("COPY copied FROM STDIN", StopsAsItIsRead())
        finally:
            conn.close()
        return EXIT_OK

    runs = 12  # psycopg2 replaced the stop with its error about one time in three
    assert [db.run_command(settings, copy) for _ in range(runs)] == [EXIT_TERMINATED] * runs
    assert capsys.readouterr().err == f"error: {TERMINATED}\n" * runs


# A run waiting for the load lock: its session has tried it (the statement's text as psycopg2
# sends it, the key in place), and, the lock held, tries again.
LOCK_TRIED = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl.py' "
    "AND state = 'idle in transaction' AND query = %s"
)
TRIED = (sql_queries.try_lock % {"key": sql_queries.LOCK_KEY},)


def load_behind_the_lock(data: Path, meanwhile=lambda: None) -> tuple[int, str]:
    """A load started while a session holds the load lock: once it waits for the lock,
    meanwhile() runs, then the lock is let go of. The load's exit code and output."""
    holder = db.connect(db.Settings.from_env())
    watch = Watcher()
    try:
        db.acquire_lock(holder)
        proc = start_load(data)
        watch.wait(LOCK_TRIED, lambda n: n == 1, proc, params=TRIED)
        meanwhile()
        holder.close()
        out, err = proc.communicate(timeout=300)
    finally:
        holder.close()
        watch.close()
    return proc.returncode, out + err


def test_a_run_that_finds_the_lock_held_waits_for_it_and_then_loads(big, baseline):
    run_script("create_tables.py")
    code, output = load_behind_the_lock(big)
    assert code == EXIT_OK, output
    assert table_contents() == baseline
    assert query("SELECT status FROM load_runs") == [("succeeded",)]


def test_a_run_that_waited_for_the_lock_loads_the_files_as_they_are_when_it_gets_it(data):
    """The run before may be long: a day delivered, and one moved to an archive folder, while
    this one waited are found where they are then, not where they were when it started."""
    day = data / "log_data/2018/11/2018-11-03-events.json"

    def deliver_and_move() -> None:
        write(data, "log_data/2018/12/new.json", lines(event(0), event(1)))
        (data / "log_data/archive").mkdir()
        day.rename(data / "log_data/archive" / day.name)

    code, output = load_behind_the_lock(data, deliver_and_move)
    assert code == EXIT_OK, output
    assert query("SELECT count(*) FROM load_rejects") == [(0,)]
    assert counts() == {
        **BASE,
        "songplays": BASE["songplays"] + 2,
        "users": BASE["users"] + 1,
        "time": BASE["time"] + 2,
    }


def python_running(code: str, *args: str) -> subprocess.Popen:
    """Python running code (its arguments args) in the project's folder, its output read
    through pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# A statement the stop comes during, which then ends with a notice (as Citus's DROP and TRUNCATE
# do: "drop cascades to …"), and what the command would print had it gone on.
NOTICED = "DO $$ BEGIN PERFORM pg_sleep(3); RAISE NOTICE 'slept'; END $$"
COMMAND = f"""
import sys, cli, db
def statement():
    conn = db.connect(db.Settings.from_env())
    db.as_a_batch_job(conn)  # as etl.py and create_tables.py set their sessions up
    with db.managed_cursor(conn) as cur:
        cur.execute({NOTICED!r})
    print("went on")
    return 0
sys.exit(cli.run_command(statement))
"""


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_during_a_statement_that_ends_with_a_notice_still_stops_the_command(data, stop):
    """psycopg2 hands a statement's notices to Python as it ends, and clears an exception
    raised meanwhile: the signal's. The commands' sessions get no notices, so a stop is not
    lost (create_tables.py on Citus dropped the tables after SIGTERM)."""
    sent, exit_code, said = STOPS[stop]
    watch = Watcher()
    try:
        proc = python_running(COMMAND)
        watch.wait(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
            lambda n: n == 1,
            proc,
            params=(NOTICED,),
        )
        os.kill(proc.pid, sent)
        out, err = proc.communicate(timeout=60)
    finally:
        watch.close()
    assert (proc.returncode, out, err) == (exit_code, "", f"error: {said}\n")


# A command whose sections hold a stop back, the stop sent to itself where SECTION says.
HOLDS_A_STOP = """
import errno, os, sys, cli
stop, section = {stop}, {section!r}
def command():
    if section == "ending with an error":
        with cli.stops_held():
            os.kill(os.getpid(), stop)
            raise OSError(errno.EAGAIN, "no process to be had")
    with cli.stops_held():
        if section == "around another":
            with cli.stops_held():
                pass
        os.kill(os.getpid(), stop)
        print("held")
    print("went on")
    return 0
sys.exit(cli.run_command(command))
"""


@pytest.mark.parametrize("section", ["alone", "ending with an error", "around another"])
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_held_back_by_a_section_is_raised_as_the_section_ends(section, stop):
    sent, exit_code, said = STOPS[stop]
    proc = python_running(HOLDS_A_STOP.format(stop=int(sent), section=section))
    out, err = proc.communicate(timeout=60)
    held = "" if section == "ending with an error" else "held\n"
    assert (proc.returncode, out, err) == (exit_code, held, f"error: {said}\n")


# A command whose every write of its outcome brings a stop (a pipe's slow reader, an impatient
# Ctrl-C), its outcome a success or the stop it ended with.
STOPPED_AS_IT_WRITES = """
import os, sys, cli
stop, outcome = {stop}, {outcome!r}
class Stopping:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        os.kill(os.getpid(), stop)
        return self.stream.write(text)
    def flush(self):
        self.stream.flush()
def command():
    if outcome == "stopped":
        raise cli.STOP_EXCEPTIONS[stop]()
    cli.write_out('{{"status": "succeeded"}}', "the outcome is written")
    return 0
sys.stdout, sys.stderr = Stopping(sys.stdout), Stopping(sys.stderr)
sys.exit(cli.run_command(command, as_json=True))
"""


@pytest.mark.parametrize("outcome", ["succeeded", "stopped"])
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_that_comes_as_a_command_writes_its_outcome_changes_nothing(outcome, stop):
    """It cut a JSON report in two, or ended the command with a traceback and exit 1."""
    sent, exit_code, said = STOPS[stop]
    proc = python_running(STOPPED_AS_IT_WRITES.format(stop=int(sent), outcome=outcome))
    out, err = proc.communicate(timeout=60)
    if outcome == "succeeded":
        assert (proc.returncode, json.loads(out), err) == (EXIT_OK, {"status": "succeeded"}, "")
    else:
        ended = {"run_id": None, "status": "failed", "exit_code": exit_code, "error": said}
        assert (proc.returncode, json.loads(out), err) == (exit_code, ended, f"error: {said}\n")


# A command whose outcome is more than a pipe holds: its write waits for the reader.
WRITES_A_LONG_OUTCOME = """
import sys, cli
sys.exit(cli.run_command(lambda: cli.write_out("x" * 200_000, "written") or 0))
"""


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_while_the_outcome_waits_for_its_reader_leaves_it_whole(stop):
    """The stop cut the write short, and the command went on to exit 0 with its output cut."""
    sent, _, _ = STOPS[stop]
    proc = python_running(WRITES_A_LONG_OUTCOME)
    try:
        deadline = time.monotonic() + 60
        while not sending_a_part(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "it never waited"
            time.sleep(0.01)
        os.kill(proc.pid, sent)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, len(out), err) == (EXIT_OK, 200_001, "")
    assert out == "x" * 200_000 + "\n"


# A script run as a user runs it, with a stop sent to itself as Python shuts down, once the
# script's outcome is written (an exit hook runs then).
STOPPED_AS_PYTHON_ENDS = """
import atexit, os, runpy, sys
atexit.register(os.kill, os.getpid(), {stop})
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize(
    "command",
    [["create_tables.py", "--help"], ["etl.py", "--data", "/nowhere/sparkify", "--json"]],
    ids=["help", "a failure"],
)
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_once_a_scripts_outcome_is_written_changes_nothing(stop, command):
    """A second Ctrl-C as the script ended: a traceback from Python's shutdown, or the process
    ended by the signal, against the exit code its JSON said."""
    sent, _, _ = STOPS[stop]
    script, *args = command
    proc = python_running(STOPPED_AS_PYTHON_ENDS.format(stop=int(sent), script=script), *args)
    out, err = proc.communicate(timeout=60)
    if script == "create_tables.py":
        assert (proc.returncode, err) == (EXIT_OK, "")
        assert out.startswith("usage: create_tables.py")
    else:
        assert (proc.returncode, len(err.splitlines())) == (EXIT_ENVIRONMENT, 1), err
        assert json.loads(out)["exit_code"] == EXIT_ENVIRONMENT


@pytest.mark.parametrize("stop", list(STOPS))
def test_ctrl_c_ends_a_runs_wait_for_the_lock_at_once(big, stop):
    sent, exit_code, said = STOPS[stop]
    run_script("create_tables.py")
    holder = db.connect(db.Settings.from_env())
    watch = Watcher()
    try:
        db.acquire_lock(holder)
        proc = subprocess.Popen(
            [sys.executable, "etl.py", "--data", str(big), "--no-progress", "--wait", "120"],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        watch.wait(LOCK_TRIED, lambda n: n == 1, proc, params=TRIED)
        interrupted = time.monotonic()
        os.kill(proc.pid, sent)  # to etl.py alone, as timeout(1) sends it
        out, err = proc.communicate(timeout=150)
        took = time.monotonic() - interrupted
    finally:
        holder.close()
        watch.close()
    assert (proc.returncode, err) == (exit_code, f"error: {said}\n"), out + err
    assert took < 30  # not the lock's 120 s wait
    assert query(RUNS) == [(0,)]


@pytest.mark.parametrize("script", ["etl.py", "create_tables.py"])
def test_a_run_refuses_a_server_session_that_an_earlier_run_marked_as_its_own(data, script):
    """Behind a pooler in transaction mode a client is handed a server session that another run
    used, and marked, before (a second run would share its load lock and temporary tables); here
    the mark comes with the session's options. Nothing is changed, nothing is recorded."""
    args = ["--data", str(data)] if script == "etl.py" else []
    etl(data)
    before = table_contents()
    marked = {"PGOPTIONS": "-c sparkify.run=0123456789abcdef"}
    refused = run_script(script, *args, env=marked, check=False)
    assert refused.returncode == EXIT_ENVIRONMENT, refused
    assert one_error_line(refused) == f"error: {db.SESSION_SHARED}"
    assert table_contents() == before
    assert query("SELECT count(*) FROM load_runs") == [(1,)]


def test_a_run_leaves_its_server_session_as_it_found_it_for_the_next_client(fresh_tables):
    """A pooler keeps a server session for its next client once a run is done with it: the
    lock let go of, the mark cleared, so that the next run in it takes them as the first did."""
    conn = db.connect(db.Settings.from_env())
    mine = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    try:
        for _ in range(2):
            with db.load_lock(conn):
                with conn.cursor() as cur:
                    cur.execute(mine)
                    assert cur.fetchone() == (1,)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid() "
                    "UNION ALL SELECT length(current_setting('sparkify.run'))"
                )
                assert cur.fetchall() == [(0,), (0,)]
            conn.rollback()
    finally:
        conn.close()


def holding_the_lock(holder) -> tuple:
    """The load lock taken in holder's session: its server pid, application and connect time."""
    db.acquire_lock(holder)
    with holder.cursor() as cur:
        cur.execute(
            "SELECT pid, application_name, backend_start FROM pg_stat_activity "
            "WHERE pid = pg_backend_pid()"
        )
        return cur.fetchone()


def test_the_session_holding_the_lock_is_named_to_a_role_that_may_not_see_when_it_connected(
    analyst_url,
):
    with using_database(embedded_url(database=ANALYST)):  # a superuser's session there
        holder = db.connect(db.Settings.from_env())
    try:
        pid, application, _ = holding_the_lock(holder)
        with using_database(analyst_url):
            conn = db.connect(db.Settings.from_env())
            try:
                with pytest.raises(db.LockedError) as refused:
                    db.acquire_lock(conn, wait=0)
            finally:
                conn.close()
    finally:
        holder.close()
    assert str(refused.value) == (
        f"another load is running on this database: {application} (server pid {pid}); wait "
        "for it to finish and run again"
    )


@pytest.mark.parametrize("script", ["etl.py", "create_tables.py"])
def test_a_run_gives_up_after_its_wait_and_names_the_session_holding_the_lock(data, script):
    args = ["--data", str(data)] if script == "etl.py" else []
    holder = db.connect(db.Settings.from_env())
    try:
        pid, _, connected = holding_the_lock(holder)
        began = time.monotonic()
        refused = run_script(
            script,
            *args,
            "--wait",
            "2",
            # the session's own time limit does not cut the wait, nor its time zone the time
            env={"PGOPTIONS": "-c statement_timeout=500 -c TimeZone=Asia/Kathmandu"},
            check=False,
        )
        waited = time.monotonic() - began
    finally:
        holder.close()
    assert refused.returncode == EXIT_LOCKED, refused
    at = connected.astimezone()  # as a clock on this machine reads it
    assert f"(server pid {pid}, connected at {at:%H:%M:%S %Z})" in one_error_line(refused)
    assert "waited 2 s for it" in one_error_line(refused)
    assert waited >= 2
    assert query(RUNS) == [(0,)]


# What keeps an incremental load waiting, taken by an admin's session: its statement and its
# parameters; and other sessions that are not in the way (one reading, one writing to another
# table), by application.
IN_THE_WAY = {
    "a table": ("LOCK TABLE users IN SHARE MODE", None),  # as an index built without CONCURRENTLY
    "a row": ("SELECT user_id FROM users WHERE user_id = %s FOR UPDATE", (USER,)),
}
BYSTANDERS = {
    "a notebook": ("SELECT count(*) FROM songplays", None),
    "a writer": ("LOCK TABLE songplays IN ROW EXCLUSIVE MODE", None),
}


@pytest.mark.parametrize("held", list(IN_THE_WAY))
def test_a_load_kept_waiting_by_a_session_stops_after_its_wait_naming_it(data, held):
    """A session whose open transaction keeps writes off users, or holds the row of a user the
    load writes, keeps an incremental load waiting: after --wait seconds the load stops (exit
    4), naming that session (with a row, every session writing to the tables, one of which
    holds it), and is recorded failed; once the session lets go, the next run loads the file."""
    a_later_play_of_a_loaded_user(data)
    before = counts()
    sessions = {"an admin's psql": IN_THE_WAY[held], **BYSTANDERS}
    if held == "a row":
        del sessions["a writer"]  # a writer would be named: any may hold the row
    conns = {application: db.connect(db.Settings.from_env()) for application in sessions}
    try:
        for application, (statement, params) in sessions.items():
            with conns[application].cursor() as cur:
                cur.execute("SELECT set_config('application_name', %s, false)", (application,))
                cur.execute(statement, params)
        with conns["an admin's psql"].cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), current_user")
            pid, role = cur.fetchone()
        refused = etl(data, "--wait", "1", exit_code=EXIT_LOCKED, process=True, timeout=60)
    finally:
        for conn in conns.values():
            conn.close()
    named = f"{pid} (role {role}, an admin's psql) on users"
    why = {
        "a table": f"the load waited for a lock on its tables held by {named}",
        "a row": "the load waited for a row of its tables that an open transaction holds; "
        f"sessions writing to them: {named}",
    }
    assert json.loads(refused.stdout) == {
        "run_id": last_run(),
        "status": "failed",
        "exit_code": EXIT_LOCKED,
        "error": f"{why[held]}; gave up after 1 s (--wait); what finished batches committed stays: "
        "run again once that transaction ends",
    }
    assert last_run_status() == "failed"
    assert counts() == before
    etl(data)
    assert counts()["songplays"] == before["songplays"] + 1


def test_a_session_waiting_in_the_lock_queue_is_not_named_but_the_one_it_waits_for(data):
    """A DBA's LOCK TABLE waits behind a notebook that holds a user's row, and the load queues
    behind the LOCK: the notebook is what keeps both waiting, and the one named."""
    a_later_play_of_a_loaded_user(data)
    notebook, dba = (db.connect(db.Settings.from_env()) for _ in range(2))
    watch = Watcher()
    queued = None
    try:
        with notebook.cursor() as cur:
            cur.execute("SELECT set_config('application_name', 'a notebook', false)")
            cur.execute(*IN_THE_WAY["a row"])
            cur.execute("SELECT pg_backend_pid(), current_user")
            pid, role = cur.fetchone()
        queued = threading.Thread(
            target=dba.cursor().execute, args=("LOCK TABLE users IN ACCESS EXCLUSIVE MODE",)
        )
        queued.start()
        deadline = time.monotonic() + 30
        while not watch.value(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass"
        ):
            assert time.monotonic() < deadline, "the LOCK TABLE never queued"
            time.sleep(0.01)
        refused = etl(data, "--wait", "1", exit_code=EXIT_LOCKED, process=True, timeout=60)
    finally:
        notebook.close()
        if queued:
            queued.join(timeout=30)
        dba.close()
        watch.close()
    assert json.loads(refused.stdout)["error"] == (
        "the load waited for a row of its tables that an open transaction holds; sessions "
        f"writing to them: {pid} (role {role}, a notebook) on users; gave up after 1 s (--wait); "
        "what finished batches committed stays: run again once that transaction ends"
    )


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE songplays SET location = 'Fixed' WHERE songplay_id = "
        "(SELECT min(songplay_id) FROM songplays)",
        "UPDATE songplays SET location = 'Fixed' WHERE false",
        "DELETE FROM songplays WHERE false",
    ],
    ids=["a play's location", "no play", "no play deleted"],
)
def test_an_open_transaction_that_changed_no_count_does_not_hold_up_a_load(data, edit):
    """The star's row counts are one row a table, which a statement's trigger updates: one that
    changed no count leaves it alone, and a notebook's open edit of a play lets loads go on."""
    etl(data)
    write(data, "log_data/2018/12/a.json", lines(event(1)))
    before = counts()
    notebook = db.connect(db.Settings.from_env())
    try:
        with notebook.cursor() as cur:
            cur.execute(edit)
        etl(data, "--wait", "1", process=True, timeout=60)
    finally:
        notebook.close()
    assert counts()["songplays"] == before["songplays"] + 1


def test_a_load_may_wait_the_longest_wait_the_option_takes(data):
    """--wait up to a year: longer than PostgreSQL's lock_timeout holds (24.8 days)."""
    etl(data, "--wait", str(db.LOCK_WAIT_MOST))
    assert counts() == BASE


# A session that takes the load lock as a run does, then runs a statement far longer than a
# load's longest (building a 10M-event load's keys takes about 20 s).
LOCK_THEN_LONG_STATEMENT = """
import db
conn = db.connect(db.Settings.from_env())
db.acquire_lock(conn)
print("locked", flush=True)
conn.cursor().execute("SELECT pg_sleep(120)")
"""


def test_a_first_load_kept_waiting_once_its_keys_are_dropped_says_they_stay_missing(big, baseline):
    """A DBA's session takes songplays (as REINDEX does) while a bulk load writes it: the load
    stops after --wait (exit 4), naming the session, and its one line says that the keys it
    dropped stay missing for the next run to build, which then loads to the same tables."""
    run_script("create_tables.py")
    dba, watch = db.connect(db.Settings.from_env()), Watcher()
    try:
        load = start_load(big, "--wait", "1")
        watch.wait(
            "SELECT NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'songplays_pkey')",
            bool,
            load,
        )
        with dba.cursor() as cur:
            cur.execute(
                "SELECT pg_backend_pid(), current_user, current_setting('application_name')"
            )
            named = "{} (role {}, {}) on songplays".format(*cur.fetchone())
            cur.execute("LOCK TABLE songplays IN SHARE MODE")
        out, err = load.communicate(timeout=120)
    finally:
        dba.close()
        watch.close()
    assert load.returncode == EXIT_LOCKED, out + err
    error = json.loads(out)["error"]
    assert error.startswith(f"the load waited for a lock on its tables held by {named}; "), error
    assert error.endswith(
        "the keys of songplays and time stay missing (songplays_pkey: another session kept a "
        f"conflicting lock on its tables: {named}): the next run builds them first"
    ), error
    etl(big)
    assert table_contents() == baseline


def test_a_killed_runs_lock_is_free_within_seconds_even_in_the_middle_of_a_statement(big):
    if int(scalar("SHOW server_version_num")) < sql_queries.CLIENT_CHECK_SINCE:
        pytest.skip(
            "a server before PostgreSQL 14 lets go of a killed run's lock once its statement "
            "ends, not within seconds (it has no client_connection_check_interval)"
        )
    run_script("create_tables.py")
    holder = python_running(LOCK_THEN_LONG_STATEMENT)
    try:
        assert holder.stdout.readline() == "locked\n", holder.stderr.read()
        time.sleep(0.5)  # into its statement
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    lock_let_go(holders=set(), timeout=5)
    etl(big)


def test_create_tables_refuses_while_a_load_runs_and_leaves_tables_alone(big, baseline):
    run_script("create_tables.py")
    watch = Watcher()
    try:
        proc = start_load(big)
        watch.wait(MANIFEST_ROWS, lambda n: n > 0, proc)
        refused = run_script("create_tables.py", "--wait", "0", check=False)
        still_running = proc.poll() is None
        out, err = proc.communicate(timeout=300)
    finally:
        watch.close()
    assert still_running, "the load ended before create_tables.py ran: the test proves nothing"
    assert refused.returncode == EXIT_LOCKED, refused
    assert "another load is running" in one_error_line(refused)
    assert proc.returncode == EXIT_OK, out + err
    assert table_contents() == baseline
    assert query("SELECT status FROM load_runs") == [("succeeded",)]


def test_create_tables_ends_a_session_holding_an_open_transaction_on_songplays(data):
    etl(data)
    holder = db.connect(db.Settings.from_env())
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM songplays")  # psycopg2 opened a transaction
            assert cur.fetchone()[0] == BASE["songplays"]
            cur.execute(
                "SELECT pg_backend_pid(), current_user, current_setting('application_name')"
            )
            pid, role, application = cur.fetchone()
        assert holder.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS

        done = run_script("create_tables.py", timeout=60, check=False)
        assert done.returncode == EXIT_OK, done
        assert done.stdout.splitlines()[1] == (
            f"  ended 1 session that held them: {pid} (role {role}, {application}) on songplays"
        )
        with (
            pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)),
            holder.cursor() as cur,
        ):
            cur.execute("SELECT 1")
    finally:
        holder.close()
    deadline = time.monotonic() + 5
    while scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)):
        assert time.monotonic() < deadline, "the session holding songplays is still there"
        time.sleep(0.05)
    assert counts() == dict.fromkeys(BASE, 0)


ANALYST = "sparkify_analyst"  # a role that is no superuser, and the database it owns


@pytest.fixture
def analyst_url() -> str:
    """A database of its own on the tests' server, owned by a role that is no superuser (as on
    a shared server): the URL to it as that role."""
    url = embedded_url(role=ANALYST, database=ANALYST)
    analyst = pgsql.Identifier(ANALYST)
    drop = [
        pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(analyst),
        pgsql.SQL("DROP ROLE IF EXISTS {}").format(analyst),
    ]
    as_superuser(
        *drop,
        pgsql.SQL("CREATE ROLE {} LOGIN").format(analyst),
        pgsql.SQL("CREATE DATABASE {name} OWNER {name}").format(name=analyst),
    )
    try:
        yield url
    finally:
        as_superuser(*drop)


def holding(table: str, url: str, application: str):
    """A session of url's role inside a transaction that has read table, and its server pid."""
    conn = psycopg2.connect(url, application_name=application)
    with conn.cursor() as cur:
        cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(table)))
        cur.execute("SELECT pg_backend_pid()")
        return conn, cur.fetchone()[0]


def create_tables_refused(env: dict) -> str:
    """The one line create_tables.py gives up with (exit 3) under env."""
    refused = run_script("create_tables.py", env=env, timeout=60, check=False)
    assert refused.returncode == EXIT_ENVIRONMENT, refused
    return one_error_line(refused)


def test_create_tables_as_an_ordinary_role_ends_its_own_sessions_and_names_those_it_may_not(
    tmp_path, analyst_url
):
    as_analyst = {"DATABASE_URL": analyst_url}
    run_script("create_tables.py", env=as_analyst)
    etl(base_sample(tmp_path / "data"), env=as_analyst, process=True)
    own, _ = holding("songs", analyst_url, "analyst's notebook")
    other, other_pid = holding("songplays", embedded_url(database=ANALYST), "admin's psql")
    try:
        assert create_tables_refused(as_analyst) == (
            f"error: cannot drop the tables: locked by sessions role {ANALYST} may not end: "
            f"{other_pid} (role {embedded.SUPERUSER}, admin's psql) on songplays; end them "
            "(pg_terminate_backend), or run create_tables.py as a superuser (nothing was dropped)"
        )
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            own.cursor().execute("SELECT 1")
        assert other.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        with using_database(analyst_url):
            assert counts() == BASE
        other.rollback()
        run_script("create_tables.py", env=as_analyst, timeout=60)
        with using_database(analyst_url):
            assert counts() == dict.fromkeys(BASE, 0)
    finally:
        own.close()
        other.close()


READER = f"{ANALYST}_reader"  # a role that is neither the analyst nor a superuser


@pytest.fixture
def readers_session(analyst_url):
    """The analyst's tables made, and a session of another ordinary role inside a transaction
    that has read songplays: (its connection, its server pid)."""
    run_script("create_tables.py", env={"DATABASE_URL": analyst_url})
    reader = pgsql.Identifier(READER)
    as_superuser(
        pgsql.SQL("DROP ROLE IF EXISTS {}").format(reader),
        pgsql.SQL("CREATE ROLE {} LOGIN").format(reader),
    )
    with using_database(analyst_url):
        query(pgsql.SQL("GRANT SELECT ON songplays TO {}").format(reader))
    other, pid = holding("songplays", embedded_url(role=READER, database=ANALYST), "psql")
    try:
        yield other, pid
    finally:
        other.close()
        with using_database(analyst_url):
            query(pgsql.SQL("REVOKE SELECT ON songplays FROM {}").format(reader))
        as_superuser(pgsql.SQL("DROP ROLE {}").format(reader))


def test_create_tables_names_pg_signal_backend_where_only_ordinary_roles_hold_the_tables(
    analyst_url, readers_session
):
    """A member of pg_signal_backend may end any session but a superuser's: the advice names it
    only where no superuser's session is in the way."""
    _, other_pid = readers_session
    assert create_tables_refused({"DATABASE_URL": analyst_url}) == (
        f"error: cannot drop the tables: locked by sessions role {ANALYST} may not end: "
        f"{other_pid} (role {READER}, psql) on songplays; end them (pg_terminate_backend), "
        "or run create_tables.py as a superuser or a member of pg_signal_backend (nothing "
        "was dropped)"
    )


def test_create_tables_as_a_member_of_pg_signal_backend_ends_another_roles_session(
    analyst_url, readers_session
):
    """pg_stat_activity hides most of another role's session (its backend_type too) from a role
    without pg_read_all_stats: the session is ended all the same. (The analyst's role, and its
    membership with it, is dropped at the end.)"""
    other, other_pid = readers_session
    as_superuser(pgsql.SQL("GRANT pg_signal_backend TO {}").format(pgsql.Identifier(ANALYST)))
    done = run_script(
        "create_tables.py", env={"DATABASE_URL": analyst_url}, timeout=60, check=False
    )
    assert done.returncode == EXIT_OK, done
    assert done.stdout.splitlines()[1] == (
        f"  ended 1 session that held them: {other_pid} (role {READER}, psql) on songplays"
    )
    with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
        other.cursor().execute("SELECT 1")


def test_a_full_refresh_waits_a_few_seconds_for_a_session_holding_the_tables_then_names_it(
    tmp_path,
):
    data = base_sample(tmp_path / "data")
    run_script("create_tables.py")
    etl(data, process=True)
    notebook, pid = holding("songplays", embedded_url(), "a notebook")
    try:
        refused = etl(data, "--full-refresh", exit_code=EXIT_ENVIRONMENT, process=True, timeout=60)
        assert one_error_line(refused) == (
            "error: cannot empty the tables for --full-refresh: locked by "
            f"{pid} (role {embedded.SUPERUSER}, a notebook) on songplays; commit or end those "
            "sessions and run again (nothing was emptied)"
        )
        assert counts() == BASE
    finally:
        notebook.close()
    etl(data, "--full-refresh", process=True)
    assert counts() == BASE


def test_a_role_short_of_a_privilege_is_refused_in_one_line_that_says_where_to_look(
    tmp_path, analyst_url
):
    """Granted what a load writes but not TRUNCATE, which --full-refresh needs."""
    as_owner = {"DATABASE_URL": embedded_url(database=ANALYST)}
    run_script("create_tables.py", env=as_owner)
    with using_database(as_owner["DATABASE_URL"]):
        query(
            pgsql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}; "
                "SELECT 1"
            ).format(pgsql.Identifier(ANALYST))
        )
    data = base_sample(tmp_path / "data")
    env = {"DATABASE_URL": analyst_url}
    refused = etl(data, "--full-refresh", exit_code=EXIT_ENVIRONMENT, env=env, process=True)
    assert one_error_line(refused) == (
        "error: the database refused: permission denied for table songplays (the role lacks a "
        "privilege: docs/database.md says what each script needs)"
    )


def test_a_role_that_may_not_use_the_tables_schema_is_told_so_not_sent_to_its_search_path(
    tmp_path, analyst_url
):
    """The tables in a schema of another role's, on the session's search_path: without USAGE
    on it they are hidden, and the error names the privilege, not the search_path."""
    owner = f"{embedded_url(database=ANALYST)}&options=-csearch_path%3Dsp"
    with using_database(owner):
        query("CREATE SCHEMA sp; SELECT 1")
    run_script("create_tables.py", env={"DATABASE_URL": owner})
    data = base_sample(tmp_path / "data")
    env = {"DATABASE_URL": f"{analyst_url}&options=-csearch_path%3Dsp"}
    for script in (["etl.py", "--data", str(data)], ["erd.py", "--out", str(tmp_path / "erd")]):
        done = run_script(*script, env=env, check=False)
        assert (done.returncode, one_error_line(done)) == (
            EXIT_ENVIRONMENT,
            "error: the role may not use schema sp the tables are in (it lacks USAGE there): an "
            "owner of the schema grants it (GRANT USAGE ON SCHEMA …), with what "
            "docs/database.md says each script needs",
        )


def test_a_role_that_may_write_the_tables_but_not_alter_them_loads_without_a_bulk_load(
    tmp_path, analyst_url
):
    """The tables created by their owner, the loader granted what a load writes (TRUNCATE for
    --full-refresh), and nothing on their sequences: a first load cannot drop the keys (only the
    owner may), so it merges with them in place."""
    as_owner = {"DATABASE_URL": embedded_url(database=ANALYST)}
    run_script("create_tables.py", env=as_owner)
    with using_database(as_owner["DATABASE_URL"]):
        query(
            pgsql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public "
                "TO {}; SELECT 1"
            ).format(pgsql.Identifier(ANALYST))
        )
    data = base_sample(tmp_path / "data")
    for extra in ((), ("--full-refresh",)):
        done = etl(data, *extra, env={"DATABASE_URL": analyst_url}, process=True)
        report = json.loads(done.stdout)
        assert report["keys"]["set_aside"] is False
        assert report["keys"]["kept_because"] == load.KEPT_FOR_THE_ROLE
        assert report["exit_code"] == EXIT_OK and set(report["checks"].values()) == {0}
        with using_database(analyst_url):
            assert counts() == BASE


@pytest.mark.parametrize(
    "script", [["etl.py", "--data", "data", "--no-progress"], ["create_tables.py"]]
)
def test_ctrl_c_while_a_server_keeps_the_connection_waiting_ends_the_run_at_once(script):
    """A server that takes the connection and never answers (a stalled host, a full backlog)
    holds libpq until connect_timeout; Ctrl-C ends the wait there and then."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)  # the script never connecting fails the test, not hangs it
        port = silent.getsockname()[1]
        url = f"postgresql://u:s3cret@127.0.0.1:{port}/x?connect_timeout=60"
        proc = subprocess.Popen(
            [sys.executable, *script],
            cwd=PROJECT,
            env={**os.environ, "DATABASE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        taken, _ = silent.accept()  # the script is connecting, and is kept waiting
        with taken:
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGINT)
            started = time.monotonic()
            out, err = proc.communicate(timeout=90)
            waited = time.monotonic() - started
    assert (proc.returncode, err) == (EXIT_INTERRUPTED, f"error: {INTERRUPTED}\n")
    assert waited < 30, f"Ctrl-C took {waited:.1f} s to end the run (not connect_timeout's 60)"


def slow_forwarder(
    listener: socket.socket,
    server: Path,
    answer: threading.Event,
    taken: threading.Event,
    closed: threading.Event,
) -> None:
    """Takes one connection (then sets taken) and, once answer is set, forwards it to the
    server's socket until the client closes its end (then sets closed)."""
    client, _ = listener.accept()
    taken.set()
    answer.wait(60)
    upstream = socket.socket(socket.AF_UNIX)
    upstream.connect(str(server / f".s.PGSQL.{embedded.PORT}"))

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the other end gone
            while data := source.recv(65536):
                sink.sendall(data)

    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
    pump(client, upstream)
    upstream.close()  # the server's session ends with it
    closed.set()


def test_a_connection_given_up_by_ctrl_c_is_closed_when_the_server_answers_later(fresh_tables):
    """A notebook keeps an interrupted cell's frame: the attempt, answered after Ctrl-C, must
    not leave a session open on the server."""
    server = Path(embedded_url().partition("host=")[2].partition("&")[0])
    name = "an attempt given up"  # its session's, whatever other sessions come and go
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    answer, taken, closed = threading.Event(), threading.Event(), threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        forwarding = (listener, server, answer, taken, closed)
        threading.Thread(target=slow_forwarder, args=forwarding, daemon=True).start()
        url = f"postgresql://{embedded.SUPERUSER}@127.0.0.1:{port}/{db.DATABASE}"
        url += f"?application_name={name.replace(' ', '%20')}"
        # Ctrl-C once the attempt is held by the forwarder: inside db.connect, which waits; the
        # server answers once it is caught
        interrupt = threading.Thread(
            target=lambda: taken.wait(60) and os.kill(os.getpid(), signal.SIGINT), daemon=True
        )
        interrupt.start()
        kept = []  # the exception, its frame and what that held, as a notebook keeps them
        try:
            db.connect(db.Settings.from_env(url))
            interrupt.join()  # a Ctrl-C that came after the attempt ended is raised here
        except KeyboardInterrupt as exc:
            kept.append(exc)
        answer.set()
        assert kept, "Ctrl-C did not stop the attempt"
        assert closed.wait(60), "the attempt given up was never closed"
        deadline = time.monotonic() + 30
        while (left := query(sessions, (name,))[0][0]) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert left == 0


# A command that writes on before its outcome, into a pipe whose reader has gone.
WRITES_ON_INTO_A_CLOSED_PIPE = """
import sys, cli
def command():
    for _ in range(100):
        print("x" * 100_000, flush=True)
    cli.write_out("done", "done")
    return 0
sys.exit(cli.run_command(command))
"""


def test_a_command_whose_reader_goes_before_its_outcome_does_not_exit_as_done():
    """A pipe broken in the middle of the work is no outcome written: the command stopped
    there (it exited 0, as if done)."""
    proc = python_running(WRITES_ON_INTO_A_CLOSED_PIPE)
    proc.stdout.close()  # the reader gone at once
    err = proc.stderr.read()
    assert (proc.wait(timeout=60), err) == (EXIT_FAILED, "")
