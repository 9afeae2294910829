"""Shared fixtures: a real PostgreSQL (DATABASE_URL, or a throwaway embedded server) and ways to
run the project's scripts the way a user does."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from psycopg2 import sql as pgsql

import create_tables
import db
import embedded
import sql_queries
from cli import EXIT_INTERRUPTED

PROJECT = Path(__file__).resolve().parents[1]
# The Ctrl-C tests send SIGINT to the scripts they start, as a terminal does. Tests started with
# SIGINT ignored (a background job of a shell without job control, say) would pass that on to
# every script they start, which would then never see it: the scripts start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Hypothesis as the property tests run it: the same examples on every run and machine
# (derandomized), no deadline on a shared machine, the first failure reported.
PROPERTY = hypothesis_settings(
    derandomize=True,
    deadline=None,
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SAMPLE = PROJECT / "data"


# How many processes share the tests under `-n auto` (make test): each starts a private embedded
# server of its own, and runs whole files (--dist loadfile: a file's module fixtures, such as
# the Citus cluster, are made once). Tests given DATABASE_URL share its one database, and run in
# one process. Up to 4: two roughly halve the suite's wall time on the 2-core machine (much of it
# is spent waiting on servers and timeouts).
MOST_WORKERS = 4
SHARED_DATABASE = (
    "DATABASE_URL is set: the tests drop and recreate the tables of its one database, and "
    "processes running at once would undo each other's; run them in one process (-n 0)"
)


def pytest_xdist_auto_num_workers(config) -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if os.environ.get("DATABASE_URL") else min(usable or 1, MOST_WORKERS)


def pytest_configure(config) -> None:
    if os.environ.get("DATABASE_URL") and (getattr(config.option, "numprocesses", 0) or 0) > 1:
        raise pytest.UsageError(SHARED_DATABASE)


# The project's modules: its Python files outside the tests.
MODULE_FILES = [*PROJECT.glob("*.py"), *PROJECT.glob("tools/*.py"), *PROJECT.glob("bench/*.py")]


def import_name(path: Path) -> str:
    """How the module at path is imported from the project folder: tools/x.py as tools.x."""
    return ".".join(path.relative_to(PROJECT).with_suffix("").parts)


# Hypothesis draws some of its examples from the constants of the project's modules imported so
# far: all of them imported here, its examples are the same whichever tests a process ran first.
for module in MODULE_FILES:
    importlib.import_module(import_name(module))


@pytest.fixture(scope="session", autouse=True)
def server():
    """Tests never touch the user's own .pgdata, nor a server the PG* variables name: without
    DATABASE_URL they get a private embedded server, stopped and deleted at the end (the tests
    drop and recreate tables)."""
    if os.environ.get("DATABASE_URL"):
        yield
        return
    home = Path(tempfile.mkdtemp(prefix="spk-"))
    pgdata = home / "pg"
    with environment({"SPARKIFY_PGDATA": str(pgdata), **dict.fromkeys(db.LIBPQ_ENV)}):
        try:
            embedded.start(pgdata)
            # its database made, as create_tables.py would: a test run on its own needs it
            create_tables.ensure_database(db.Settings.from_env())
            yield
        finally:
            embedded.stop(pgdata)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def settings() -> db.Settings:
    return db.Settings.from_env()


def run_script(
    *args: str, env: dict | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """python SCRIPT ARGS from the project folder, as a user types it, in this environment with
    env's changes (None: unset)."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env=changed_environment(env or {}),
        stdin=subprocess.DEVNULL,  # nothing waits for input (psql would)
        timeout=timeout,
    )
    return checked(done, check)


def only_pg_variables(**variables: str) -> dict[str, str | None]:
    """run_script's env for a script that reads these PG* variables and no other, nor the tests'
    DATABASE_URL (which would win over them)."""
    return {"DATABASE_URL": None, **dict.fromkeys(db.LIBPQ_ENV, None), **variables}


def checked(done: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """The run; with check, only if it exited 0."""
    if check and done.returncode != 0:
        raise AssertionError(f"{done.args} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


class Hung(BaseException):
    """A script run in this process outlived its time limit. A BaseException: the scripts turn
    any Exception into an error message and an exit code, and this one must stop the test."""


@contextlib.contextmanager
def as_a_command(script: str, args: tuple[str, ...], env: dict | None, timeout: float):
    """This process, for a while, as `python SCRIPT ARGS` started from the project folder with
    env would be: its environment, working directory and argv (whose name the scripts give the
    server as application_name), and an end within timeout seconds."""

    def hung(signum, frame):
        raise Hung(f"{script} {' '.join(args)} still ran after {timeout} s")

    saved_argv, saved_alarm = sys.argv, signal.signal(signal.SIGALRM, hung)
    sys.argv = [script, *args]
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with environment(env or {}), contextlib.chdir(PROJECT):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved_alarm)
        sys.argv = saved_argv


def run_main(
    script: str, *args: str, env: dict | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """run_script's run, in this process: the script's main(args), with what it printed and its
    exit code. A new interpreter spends most of a small load importing pyarrow and the parsers;
    here they are imported once. What the process gave a test is kept (as_a_command),
    and the load lock is let go of, as the next command a user types finds it (lock_let_go)."""
    main = importlib.import_module(Path(script).stem).main
    out, err = io.StringIO(), io.StringIO()
    holders = lock_holders()
    with (
        as_a_command(script, args, env, timeout),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: a usage error, or --help
            code = exc.code
    if code == EXIT_INTERRUPTED:  # the user's Ctrl-C, which the script took: it stops the tests
        raise KeyboardInterrupt
    lock_let_go(holders)
    done = subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
    return checked(done, check)


def lock_holders() -> set[int]:
    """The server processes that hold the load lock on the tests' database (none before the
    database is created)."""
    try:
        return {row[0] for row in query(sql_queries.lock_holder, {"key": sql_queries.LOCK_KEY})}
    except db.DatabaseError:
        return set()


def lock_let_go(holders: set[int], timeout: float = 15) -> None:
    """A session a script closed ends on the server a moment later, and only then lets go of the
    load lock: wait until no session but those that held it before (holders) holds it."""
    deadline = time.monotonic() + timeout
    while lock_holders() - holders:
        assert time.monotonic() < deadline, "a session the script closed still holds the lock"
        time.sleep(0.005)


def query(sql: str | pgsql.Composable, params=None) -> list[tuple]:
    """The rows of a statement on the tests' server (none for one that returns none)."""
    conn = db.connect(db.Settings.from_env())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def changed_environment(changes: dict[str, str | None]) -> dict[str, str]:
    """This environment with these variables set (None: unset), for a process to start."""
    changed = {**os.environ, **changes}
    return {name: value for name, value in changed.items() if value is not None}


@contextlib.contextmanager
def environment(changes: dict[str, str | None]):
    """The environment with these variables set (None: unset) for a while."""
    previous = {name: os.environ.get(name) for name in changes}
    set_variables(changes)
    try:
        yield
    finally:
        set_variables(previous)


def set_variables(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def free_ports(n: int) -> list[int]:
    """n ports of 127.0.0.1 that nothing listens on now, for servers a test starts."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# The tests' own server: DATABASE_URL as the tests were given it, else the private embedded one.
TESTS_DATABASE_URL = os.environ.get("DATABASE_URL")


def using_database(url: str | None):
    """The readers here (query, table_contents, ...) and the scripts run on the database at url
    for a while; None: the tests' own server."""
    return environment({"DATABASE_URL": url or TESTS_DATABASE_URL})


def drop_tables() -> None:
    """Drop every table of the project, as if create_tables.py had never run."""
    conn = db.connect(db.Settings.from_env())
    try:
        with db.managed_cursor(conn) as cur:
            cur.execute(sql_queries.drop_tables)
    finally:
        conn.close()


def scalar(sql: str | pgsql.Composable, params=None):
    return query(sql, params)[0][0]


def table_contents() -> dict[str, list[tuple]]:
    """Every star table, row for row, in a stable order (songplay_id left out: it numbers rows
    in load order)."""
    return {
        "songplays": query(
            "SELECT start_time, user_id, level, song_id, artist_id, session_id, "
            "item_in_session, location, user_agent, song_title, artist_name, "
            "song_length FROM songplays ORDER BY user_id, session_id, "
            "item_in_session"
        ),
        "users": query("SELECT * FROM users ORDER BY user_id"),
        "songs": query("SELECT * FROM songs ORDER BY song_id"),
        "artists": query("SELECT * FROM artists ORDER BY artist_id"),
        "time": query("SELECT * FROM time ORDER BY start_time"),
    }


def schema_objects() -> list[tuple]:
    """The star tables' constraints and indexes, as the catalog defines them."""
    return query(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE conrelid::regclass::text = ANY (%(t)s) "
        "UNION ALL SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE tablename = ANY (%(t)s) ORDER BY 1, 2, 3",
        {"t": sql_queries.STAR_TABLES},
    )


def counts() -> dict[str, int]:
    return {
        t: scalar(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(t)))
        for t in sql_queries.STAR_TABLES
    }


@pytest.fixture
def fresh_tables():
    run_main("create_tables.py")


@pytest.fixture
def data(fresh_tables, tmp_path) -> Path:
    """Fresh tables and a small data folder: 11 song files and 2 log files in the real format
    (builders.base_sample)."""
    from builders import base_sample  # builders imports this module: imported when needed

    return base_sample(tmp_path / "data")


@pytest.fixture(scope="session")
def truth() -> dict:
    return json.loads((SAMPLE / "truth.json").read_text())


@pytest.fixture(scope="session")
def real_data() -> Path:
    location = os.environ.get("SPARKIFY_REAL_DATA")
    if not location:
        pytest.skip(
            "SPARKIFY_REAL_DATA is not set, so there is no Udacity dataset to test against "
            "(.ci/run sets it when ../shared/data/udacity exists)"
        )
    return Path(location)
