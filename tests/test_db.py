"""db.py: where the scripts connect, and the embedded server's corners."""

import contextlib
import datetime
import io
import json
import os
import pwd
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from builders import (
    BASE,
    CREATE_ON_DATABASE,
    CREATEDB,
    SUPERUSER,
    as_superuser,
    base_sample,
    embedded_url,
    etl,
    event,
    log_file,
    one_error_line,
    requires,
    server_url,
    song,
    write,
)
from conftest import (
    PROJECT,
    SAMPLE,
    changed_environment,
    counts,
    environment,
    free_ports,
    only_pg_variables,
    query,
    run_script,
    table_contents,
    using_database,
)
from psycopg2 import sql as pgsql

import db
import embedded
import sql_queries
from cli import EXIT_ENVIRONMENT
from tools import citus_cluster


def describe(url: str) -> str:
    return db.Settings(url=url, libpq_env=False, pgdata=Path(".")).describe()


def test_describe_rebuilds_the_url_from_what_libpq_reads_with_every_password_as_stars():
    assert (
        describe("postgresql://me:s3cret@host:5432/x?sslmode=require")
        == "postgresql://me:***@host:5432/x?sslmode=require"
    )
    assert describe("postgresql://me@host/x") == "postgresql://me@host/x"
    assert (
        describe("postgresql://host/x?sslmode=require&password=s3cret")
        == "postgresql://:***@host/x?sslmode=require"
    )
    assert describe("host=h password=s3cret dbname=x") == "postgresql://:***@h/x"
    assert describe("host=h password = 'it\\'s s3cret' dbname=x") == "postgresql://:***@h/x"
    assert (
        describe("postgres://me:p@h1,h2:5/x?sslpassword=k3y")
        == "postgresql://me:***@/x?host=h1,h2&port=,5&sslpassword=***"
    )


def keepalives(url: str | None = None) -> dict[str, str]:
    """The TCP keepalive settings libpq connects with, and how long it lets data it sent go
    unacknowledged."""
    conn = db.connect(db.Settings.from_env(url), "postgres")
    try:
        return {
            k: v
            for k, v in conn.get_dsn_parameters().items()
            if k.startswith("keepalives") or k == "tcp_user_timeout"
        }
    finally:
        conn.close()


def test_a_connection_hears_of_a_silent_network_drop_within_a_minute_unless_the_url_says():
    # A host gone or a cable cut, nothing sent back: a run waiting on a statement heard of it
    # only when TCP gave up, two hours later with the system's keepalive defaults. Probed after
    # 30 s of silence, every 10 s, three times: about a minute; data sent and not acknowledged
    # for a minute, likewise (TCP's retransmissions took 15 minutes).
    assert keepalives() == {
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "tcp_user_timeout": "60000",
    }
    assert keepalives(embedded_url() + "&keepalives_idle=5&keepalives=0") == {
        "keepalives": "0",
        "keepalives_idle": "5",
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "tcp_user_timeout": "60000",
    }


def test_settings_prefer_the_command_line_then_database_url_then_pg_variables(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/x")
    monkeypatch.setenv("PGHOST", "elsewhere")
    assert db.Settings.from_env("postgresql://cli/x").url == "postgresql://cli/x"
    assert db.Settings.from_env().url == "postgresql://env/x"
    monkeypatch.delenv("DATABASE_URL")
    settings = db.Settings.from_env()
    assert (settings.url, settings.libpq_env, settings.embedded) == (None, True, False)
    assert db.options(settings) == {"dbname": db.DATABASE}
    monkeypatch.delenv("PGHOST")
    assert db.Settings.from_env().embedded


def test_a_database_url_read_from_a_file_with_its_newline_connects_as_without_it(monkeypatch):
    """A container's secret file, or `echo URL > file`, ends in a newline that the URL does
    not hold (libpq would read it into the database's name)."""
    url = embedded_url(database="postgres")
    for ending in ("\n", "\r\n"):
        monkeypatch.setenv("DATABASE_URL", url + ending)
        settings = db.Settings.from_env()
        assert settings.url == url
        with contextlib.closing(db.connect(settings)) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("postgres",)


def test_a_session_carries_the_users_application_name_else_the_scripts(monkeypatch):
    """The name a URL or PGAPPNAME gives is what pg_stat_activity shows; without one, the
    script's."""

    def application_name(url: str) -> str:
        settings = db.Settings(url=url, libpq_env=False, pgdata=Path("."))
        with contextlib.closing(db.connect(settings)) as conn, conn.cursor() as cur:
            cur.execute("SHOW application_name")
            return cur.fetchone()[0]

    url = embedded_url(database="postgres")
    assert application_name(f"{url}&application_name=nightly-sparkify") == "nightly-sparkify"
    assert application_name(url) == Path(sys.argv[0]).name
    monkeypatch.setenv("PGAPPNAME", "from the environment")
    assert application_name(url) == "from the environment"


def test_the_notebooks_engine_reads_instants_in_utc_whatever_the_sessions_time_zone():
    """East of UTC, the last instant a play may have (9999-12-31 23:59:59.999 UTC, which the
    ETL accepts) is in year 10000, which Python's datetime cannot hold: the notebooks' engine
    reads it in UTC, as the time table's parts are. Its sessions are named as the notebooks'."""
    import sqlalchemy

    last = (
        "SELECT timestamptz '9999-12-31 23:59:59.999+00', current_setting('TimeZone'), "
        "current_setting('application_name')"
    )
    for zone in ["Asia/Kolkata", "Pacific/Chatham", "America/Los_Angeles"]:
        with environment({"PGTZ": zone}):
            settings = db.Settings(
                url=embedded_url(database="postgres"), libpq_env=False, pgdata=Path(".")
            )
            engine = db.sqlalchemy_engine(settings)
            try:
                with engine.connect() as conn:
                    instant, shown_in, named = conn.execute(sqlalchemy.text(last)).one()
            finally:
                engine.dispose()
        assert (instant, shown_in, named) == (
            datetime.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC),
            "UTC",
            "sparkify notebook",
        ), zone


def test_urls_keep_the_database_and_the_password_out_of_messages():
    settings = db.Settings(url="postgresql://me:pw@h:1/mine", libpq_env=False, pgdata=Path("."))
    assert db.options(settings, "postgres") == {
        "user": "me",
        "password": "pw",
        "host": "h",
        "port": "1",
        "dbname": "postgres",
    }
    assert db.sqlalchemy_url(settings) == (
        "postgresql+psycopg2://me:pw@h:1/mine?client_encoding=UTF8"
        "&fallback_application_name=sparkify%20notebook"
    )
    assert settings.describe() == "postgresql://me:***@h:1/mine"


@pytest.mark.parametrize(
    "command", [["etl.py"], ["create_tables.py"], ["erd.py", "--out", "ERD"], ["db.py", "stop"]]
)
def test_a_server_folder_that_cannot_be_made_is_named_in_one_line_exit_3(tmp_path, command):
    (tmp_path / "a file").write_text("")
    pgdata = tmp_path / "a file" / "sub" / "pgdata"
    env = {"SPARKIFY_PGDATA": str(pgdata), "DATABASE_URL": None}

    done = run_script(*command, env=env, check=False)

    assert (done.returncode, done.stdout, done.stderr) == (
        EXIT_ENVIRONMENT,
        "",
        f"error: cannot use {pgdata} for the embedded server: Not a directory: {pgdata.parent}\n",
    )


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs util-linux's prlimit")
def test_a_server_that_cannot_start_for_want_of_file_descriptors_says_so_in_one_line(tmp_path):
    pgdata = tmp_path / "pg"
    env = {"SPARKIFY_PGDATA": str(pgdata), "DATABASE_URL": None}
    run_script("db.py", "start", env=env)
    run_script("db.py", "stop", env=env)
    try:
        done = subprocess.run(
            ["prlimit", "--nofile=12", sys.executable, "db.py", "start"],
            cwd=PROJECT,
            env=changed_environment(env),
            capture_output=True,
            text=True,
        )
    finally:
        run_script("db.py", "stop", env=env)

    assert (done.returncode, done.stdout, done.stderr) == (
        EXIT_ENVIRONMENT,
        "",
        f"error: cannot start the embedded server in {pgdata}: Too many open files\n",
    )


def test_a_server_folder_of_another_user_names_its_owner(tmp_path):
    """As after a `sudo make etl`: the folder is root's, and the user is told so."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    denied = PermissionError(13, "Permission denied", str(theirs / "pgdata.lock"))

    said = str(embedded.unusable(theirs / "pgdata", denied))

    owner = pwd.getpwuid(NOBODY).pw_name
    assert said == (
        f"cannot use {theirs / 'pgdata'} for the embedded server: Permission denied: "
        f"{theirs / 'pgdata.lock'} (it belongs to {owner}: made with sudo, or by another user? "
        f"run as {owner}, or set SPARKIFY_PGDATA to a folder of your own)"
    )


NOBODY = 65534


def test_embedded_server_is_reached_through_the_socket_directory_it_runs_with():
    """That directory is private: see test_errors_and_security."""
    settings = db.Settings.from_env()
    if not settings.embedded:
        pytest.skip("DATABASE_URL is set: no embedded server in this run")
    target = db.options(settings)
    assert Path(target["host"]) == embedded.running(settings.pgdata)[1]
    assert (target["port"], target["user"], target["dbname"]) == (
        str(embedded.PORT),
        embedded.SUPERUSER,
        db.DATABASE,
    )


def test_missing_unshare_is_one_clear_error_not_a_traceback(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("only root runs the server through unshare")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(embedded.ServerError, match="cannot run `unshare`.*DATABASE_URL"):
        embedded.start(tmp_path / "pg")


@pytest.fixture
def short_folder():
    """A folder with a path short enough for a socket in a subfolder, whatever TMPDIR says."""
    folder = Path(tempfile.mkdtemp(prefix="spk-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_long_data_paths_put_the_socket_in_a_private_runtime_folder(
    tmp_path, short_folder, monkeypatch
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_folder))
    deep = tmp_path / ("d" * 120) / "pg"
    folder = embedded.make_socket_dir(deep)
    assert folder == embedded.socket_dir(deep)
    assert folder.parent == short_folder and folder.name.startswith(f"sparkify-pg-{os.geteuid()}-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert embedded.socket_dir(short_folder / "pg") == short_folder / "pg"


def test_a_runtime_folder_too_long_for_a_socket_gives_way_to_the_temporary_folder(
    tmp_path, short_folder, monkeypatch
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / ("r" * 120)))
    monkeypatch.setattr(tempfile, "tempdir", str(short_folder))
    deep = tmp_path / ("d" * 120) / "pg"
    assert embedded.socket_dir(deep).parent == short_folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / ("t" * 120)))
    assert embedded.socket_dir(deep).parent == Path("/tmp")


def test_a_runtime_folder_that_is_not_there_gives_way_and_a_link_in_its_place_is_refused(
    tmp_path, short_folder, monkeypatch
):
    deep = tmp_path / ("d" * 120) / "pg"
    monkeypatch.setattr(tempfile, "tempdir", str(short_folder / "tmp"))
    (short_folder / "tmp").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_folder / "run-of-another-user"))
    assert embedded.make_socket_dir(deep).parent == short_folder / "tmp"

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_folder))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    embedded.socket_dir(deep).symlink_to(elsewhere)
    with pytest.raises(embedded.ServerError, match="is not a private directory of this user"):
        embedded.make_socket_dir(deep)


def test_a_long_data_paths_server_is_found_from_any_runtime_folder_and_stop_removes_its_own(
    tmp_path, short_folder, monkeypatch
):
    started_in, elsewhere = short_folder / "run", short_folder / "other"
    started_in.mkdir()
    elsewhere.mkdir()
    deep = tmp_path / ("d" * 120) / "pg"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(started_in))
    folder = embedded.start(deep)
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(elsewhere))
        assert embedded.socket_of(deep) == folder
        assert folder.parent == started_in
    finally:
        assert embedded.stop(deep)
    assert list(started_in.iterdir()) == []


def on_embedded(pgdata: Path, statement: str, dbname: str = "postgres"):
    """statement run, committed, on the embedded server of pgdata, through the socket it runs
    with; the first value it returns (None: it returns no rows)."""
    with contextlib.closing(
        psycopg2.connect(
            host=embedded.socket_of(pgdata),
            port=embedded.PORT,
            user=embedded.SUPERUSER,
            dbname=dbname,
        )
    ) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchone()[0] if cursor.description else None


def select_one(pgdata: Path) -> int:
    return on_embedded(pgdata, "SELECT 1")


def test_an_embedded_server_under_a_path_of_shell_characters_starts_and_runs_nothing_else(
    short_folder, monkeypatch
):
    """A data folder's path is never read by a shell: quotes, `$` and backticks in it start the
    server as any path does. A comma (libpq's separator of hosts) puts its socket in the
    runtime folder, as a path too long for a socket does."""
    runtime = short_folder / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.chdir(short_folder)
    quoted = short_folder / 'Bob\'s "code" $HOME `touch made` $(touch made)' / "pg"
    comma = short_folder / "a,b" / "pg"
    for pgdata, sockets in [(quoted, quoted), (comma, embedded.socket_dir(comma))]:
        assert embedded.start(pgdata) == sockets
        try:
            assert select_one(pgdata) == 1
        finally:
            assert embedded.stop(pgdata)
    assert embedded.socket_dir(comma).parent == runtime
    assert list(runtime.iterdir()) == []
    assert {p.name for p in short_folder.iterdir()} == {quoted.parent.name, "a,b", "run"}


def test_an_embedded_server_under_a_utf8_path_runs_in_a_process_whose_locale_is_ascii(
    short_folder, data
):
    """A cron job's locale, its encoding ASCII (Python told not to make it UTF-8): the server
    under /home/andré is found, loaded into, and stopped, as in any locale."""
    pgdata = short_folder / "andré" / "pg"
    env = {
        "SPARKIFY_PGDATA": str(pgdata),
        "DATABASE_URL": None,
        "LC_ALL": "C",
        "LANG": None,
        "PYTHONUTF8": "0",
        "PYTHONCOERCECLOCALE": "0",
    }
    try:
        run_script("create_tables.py", env=env)
        loaded = run_script("etl.py", "--data", str(data), "--no-progress", "--json", env=env)
        assert json.loads(loaded.stdout)["tables"]["songplays"]["after"] == BASE["songplays"]
        assert run_script("db.py", "url", env=env).stdout == (
            f"postgresql://postgres@/sparkifydb?host={short_folder}/andr%C3%A9/pg&port=5432\n"
        )
        assert run_script("db.py", "stop", env=env).stdout == "stopped\n"
    finally:
        embedded.stop(pgdata)
    assert not (pgdata / "postmaster.pid").exists()


def test_an_embedded_server_out_of_room_is_one_error_naming_the_cause_in_its_log(short_folder):
    """The data folder's disk full as initdb writes (here a file-size limit, which stops a write
    as a full disk does): one line giving the log's line that says why, not the log's last
    lines (a PANIC that follows it) nor a hint about user namespaces."""
    pgdata = short_folder / "pg"

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))

    env = {**only_pg_variables(), "SPARKIFY_PGDATA": str(pgdata)}
    done = subprocess.run(
        [sys.executable, "db.py", "start"],
        cwd=PROJECT,
        env=changed_environment(env),
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=120,
    )
    assert done.returncode == EXIT_ENVIRONMENT
    log = re.escape(str(short_folder / "pg.log"))
    assert re.fullmatch(
        r'error: `initdb` failed: could not write to file "[^"]+": File too large '
        rf"\(see {log}\)\n",
        done.stderr,
    ), done.stderr
    assert embedded.start(pgdata) == pgdata  # with room, the next start makes it whole
    assert embedded.stop(pgdata)


def test_a_first_start_cut_off_while_the_data_folder_is_made_leaves_nothing_to_trip_on(
    short_folder,
):
    """Ctrl-C while initdb makes the data folder (the first `make etl`): the next start makes it
    whole and the server runs."""
    pgdata = short_folder / "pg"
    env = {**only_pg_variables(), "SPARKIFY_PGDATA": str(pgdata)}
    starting = subprocess.Popen(
        [sys.executable, "db.py", "start"],
        cwd=PROJECT,
        env=changed_environment(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(short_folder.rglob("PG_VERSION")) and time.monotonic() < deadline:
        time.sleep(0.005)
    starting.send_signal(signal.SIGINT)
    assert starting.wait(60) == 130
    assert embedded.running(pgdata) is None
    assert embedded.start(pgdata) == pgdata
    try:
        assert select_one(pgdata) == 1
    finally:
        assert embedded.stop(pgdata)
    assert sorted(p.name for p in short_folder.iterdir()) == ["pg", "pg.lock", "pg.log"]


def kill_server(pgdata: Path) -> int:
    """The server killed (a power cut, the out-of-memory killer), its postmaster.pid left; its
    pid, once gone. It is no child of this process, which started it: nothing here reaps it."""
    pid, _ = embedded.running(pgdata)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while embedded._exists(pid) and time.monotonic() < deadline:  # reaped, as after a reboot
        time.sleep(0.05)
    assert embedded.running(pgdata) is None
    return pid


def lock_file_line(pgdata: Path, number: int, text: str) -> None:
    """pgdata's postmaster.pid with its line number (from 0) replaced by text."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines(keepends=True)
    (pgdata / "postmaster.pid").write_text(
        "".join([*lines[:number], f"{text}\n", *lines[number + 1 :]])
    )


def naming(pgdata: Path, pid: int) -> None:
    """pgdata's postmaster.pid, naming pid for its server."""
    lock_file_line(pgdata, 0, str(pid))


def saying(pgdata: Path, status: str) -> None:
    """pgdata's postmaster.pid, its server's status (its eighth line) said to be status."""
    lock_file_line(pgdata, 7, status)


@pytest.mark.parametrize("status", ["starting", "stopping"])
def test_a_start_that_finds_its_server_starting_or_stopping_waits_for_it(short_folder, status):
    """A stop cut off the command that started it (its crash recovery goes on) or stopped it
    (its shutdown goes on): the next start waits until it is ready, or gone and started anew,
    where it started a second server, which died on the first's lock file."""
    pgdata = short_folder / "pg"
    embedded.start(pgdata)
    pid, _ = embedded.running(pgdata)
    try:
        saying(pgdata, status)
        assert embedded.running(pgdata) is None
        if status == "starting":
            then = threading.Timer(1.0, saying, (pgdata, "ready"))
        else:
            then = threading.Timer(1.0, os.kill, (pid, signal.SIGINT))
        then.start()
        try:
            assert embedded.start(pgdata) == pgdata
        finally:
            then.join()
        assert embedded._alive(pid) == (status == "starting")
        assert select_one(pgdata) == 1
    finally:
        embedded.stop(pgdata)


def test_a_server_that_crashes_as_a_copy_ends_is_a_lost_connection_not_a_refusal(short_folder):
    """The server gone (killed, crashed) while a batch's COPY sends its last rows: psycopg2
    raises a DatabaseError without SQLSTATE, libpq's words, which is the connection lost (what
    was committed stays, run again), not something the database refused."""
    pgdata = short_folder / "pg"
    embedded.start(pgdata)
    server, _ = embedded.running(pgdata)

    class Rows(io.RawIOBase):  # two reads of rows, then the server goes, then the end
        reads = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.reads += 1
            if self.reads < 3:
                return b"row\n" * 10
            os.kill(server, signal.SIGQUIT)  # an immediate shutdown, as after a crash
            deadline = time.monotonic() + 30
            while embedded._exists(server) and time.monotonic() < deadline:
                time.sleep(0.05)
            return b""

    settings = db.Settings(url=None, libpq_env=False, pgdata=pgdata)
    conn = psycopg2.connect(
        host=embedded.socket_of(pgdata), port=embedded.PORT, user=embedded.SUPERUSER
    )
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE t (x text)")
            with pytest.raises(psycopg2.DatabaseError) as raised:
                cur.copy_expert("COPY t FROM STDIN", Rows())
    finally:
        conn.close()
        embedded.stop(pgdata)
    assert db.lost_connection(raised.value)
    assert str(db.database_error(raised.value, settings)).startswith(
        f"the connection to {settings.describe()} was lost (server closed the connection "
        "unexpectedly"
    )


def test_a_lock_file_naming_a_process_that_is_no_server_of_its_folder_is_not_taken_for_one(
    short_folder,
):
    """A killed server leaves its postmaster.pid, and after a reboot its process id may be
    another program's, or another folder's server's: that is not this folder's server, nothing
    signals it, and the next start runs one."""
    pgdata, other = short_folder / "pg", short_folder / "other"
    embedded.start(other)
    embedded.start(pgdata)
    kill_server(pgdata)
    with subprocess.Popen(["sleep", "120"]) as sleeping:
        try:
            for pid in (sleeping.pid, embedded.running(other)[0]):
                naming(pgdata, pid)
                assert embedded.running(pgdata) is None
                assert embedded.stop(pgdata) is False
            naming(pgdata, sleeping.pid)
            assert embedded.start(pgdata) == pgdata
            assert select_one(pgdata) == 1
            assert embedded.stop(pgdata)
            assert (sleeping.poll(), select_one(other)) == (None, 1)
        finally:
            sleeping.kill()
            embedded.stop(other)


def test_a_server_whose_project_folder_was_renamed_is_started_again_from_the_new_place(
    short_folder,
):
    """The server runs until stopped, and writes some files by the path it started on: once
    its project folder is renamed it is ended at once (no shutdown checkpoint by the old path)
    and started from the new place, its committed work recovered. `make stop` ends it too."""
    before, after = short_folder / "sparkify" / "pg", short_folder / "renamed" / "pg"
    embedded.start(before)
    on_embedded(before, "CREATE TABLE kept AS SELECT 1 AS one")
    moved, _ = embedded.running(before)
    (short_folder / "sparkify").rename(short_folder / "renamed")
    assert embedded.running(after) is None
    assert embedded.start(after) == after
    try:
        assert embedded.running(after)[0] != moved
        assert not embedded._alive(moved)
        assert select_one(after) == 1
        assert on_embedded(after, "SELECT one FROM kept") == 1
        (short_folder / "renamed").rename(short_folder / "again")
        assert embedded.stop(short_folder / "again" / "pg")
    finally:
        embedded.stop(short_folder / "again" / "pg")
    assert embedded.running(short_folder / "again" / "pg") is None


def test_a_server_whose_old_place_another_folder_took_is_left_alone_with_what_to_do(
    short_folder,
):
    """A project folder renamed while its server ran, and another cloned in its old place: the
    moved server would remove that folder's socket as it ends, so it is left running, and the
    error says how to end it."""
    before, after = short_folder / "sparkify" / "pg", short_folder / "renamed" / "pg"
    embedded.start(before)
    moved, _ = embedded.running(before)
    (short_folder / "sparkify").rename(short_folder / "renamed")
    before.mkdir(parents=True)
    try:
        status = run_script(
            "db.py",
            "status",
            env={**only_pg_variables(), "SPARKIFY_PGDATA": str(after)},
            check=False,
        )
        assert (status.returncode, status.stdout) == (
            EXIT_ENVIRONMENT,
            f"not running here: the server started in {before} (pid {moved}) before its folder "
            "moved still runs (`python db.py stop` ends it, or says how)\n",
        )
        for action in (embedded.start, embedded.stop):
            with pytest.raises(embedded.ServerError) as refused:
                action(after)
            assert str(refused.value) == (
                f"the embedded server of {after} (pid {moved}) still runs as started in "
                f"{before}, where another folder now is: a server cannot run from a moved "
                f"folder. End it (`kill -9 {moved}`: the next start recovers its data), then run "
                "again"
            )
            assert embedded._alive(moved)
    finally:
        os.kill(moved, signal.SIGKILL)


def test_an_embedded_server_without_its_maintenance_database_says_to_make_it_anew(short_folder):
    """A data folder an older version's first setup left half made (initdb cut off before it
    made the postgres database): create_tables.py, which etl.py sends the user to, says to make
    it anew, not to run itself."""
    pgdata = short_folder / "pg"
    embedded.start(pgdata)
    try:
        on_embedded(pgdata, "DROP DATABASE postgres", dbname="template1")
        env = {**only_pg_variables(), "SPARKIFY_PGDATA": str(pgdata)}
        done = run_script("create_tables.py", env=env, check=False)
        assert (done.returncode, one_error_line(done)) == (
            EXIT_ENVIRONMENT,
            f'error: database "postgres" does not exist on the embedded server in {pgdata}: '
            f"its data folder is not whole (a first setup cut off by an older version): run "
            f"`python db.py stop`, remove {pgdata} and run again",
        )
    finally:
        embedded.stop(pgdata)


def test_two_first_runs_at_once_both_find_their_database(fresh_tables):
    """Two first runs at once (two terminals' `make etl`) each create the database unless it
    exists: the one that finds the other made it meanwhile goes on."""
    requires(CREATEDB, "a database of the test's own")
    name = "sparkify_twice"
    drop = pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(name))
    as_superuser(drop)
    ready = threading.Barrier(2)
    failed = []

    def create() -> None:
        conn = db.connect(db.Settings.from_env(), dbname="postgres")
        try:
            conn.autocommit = True
            ready.wait(30)
            db.create_database_if_missing(conn, name)
        except Exception as exc:  # noqa: BLE001 -- what the other thread must not meet
            failed.append(exc)
        finally:
            conn.close()

    try:
        for _ in range(3):
            as_superuser(drop)
            threads = [threading.Thread(target=create) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert failed == []
            assert scalar_on_postgres(name) == 1
    finally:
        as_superuser(drop)


def scalar_on_postgres(name: str) -> int:
    conn = db.connect(db.Settings.from_env(), dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_the_embedded_server_shows_instants_in_utc_whatever_zone_made_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")  # what initdb writes into the server's settings
    folder = embedded.start(tmp_path / "pg")
    try:
        with (
            contextlib.closing(
                psycopg2.connect(host=folder, port=embedded.PORT, user=embedded.SUPERUSER)
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(
                "SELECT current_setting('TimeZone'), %s::timestamptz::text",
                ("2018-11-01 00:37:42.796+00",),
            )
            assert cursor.fetchone() == ("UTC", "2018-11-01 00:37:42.796+00")
    finally:
        assert embedded.stop(tmp_path / "pg")


def test_create_tables_refuses_to_drop_a_users_views_in_one_line_and_leaves_everything_in_place():
    run_script("create_tables.py")
    query(
        "CREATE VIEW my_plays AS SELECT user_id FROM songplays;"
        "CREATE VIEW my_users AS SELECT user_id FROM users; SELECT 1"
    )
    try:
        done = run_script("create_tables.py", check=False)
        assert done.returncode == 3
        assert done.stderr == (
            "error: cannot drop the tables: view my_users depends on table users; view "
            "my_plays depends on table songplays; drop or change that first (nothing was "
            "dropped)\n"
        )
        assert query(
            "SELECT to_regclass('my_plays') IS NOT NULL, to_regclass('songplays') IS NOT NULL"
        ) == [(True, True)]
    finally:
        query("DROP VIEW my_plays, my_users; SELECT 1")


def test_create_tables_drops_and_creates_in_the_schema_it_creates_in_and_leaves_others_alone(
    tmp_path,
):
    """search_path "mine, public" with the star loaded in public: CREATE TABLE writes into mine,
    so DROP TABLE must not take public's tables (as with PostgreSQL's default "$user", public
    once a schema named after the role exists)."""
    requires(CREATE_ON_DATABASE, "a schema of the test's own")
    run_script("create_tables.py")
    etl(base_sample(tmp_path / "data"))
    query("CREATE SCHEMA mine; SELECT 1")
    try:
        mine = server_url(options="-c search_path=mine,public")
        run_script("create_tables.py", env={"DATABASE_URL": mine})
        assert counts() == BASE
        with using_database(mine):
            assert counts() == dict.fromkeys(BASE, 0)
            assert query("SELECT to_regclass('songplays')::text, current_schema()") == [
                ("songplays", "mine")
            ]
    finally:
        query("DROP SCHEMA mine CASCADE; SELECT 1")


def test_create_tables_names_the_schema_it_created_in_and_refuses_a_path_without_one():
    """A search_path whose first schema is mistyped puts the tables in the next: the message
    names the schema they went to. One naming no schema there is refused in one line."""
    run_script("create_tables.py")
    typo = server_url(options="-c search_path=typo_schema,public")
    created = run_script("create_tables.py", env={"DATABASE_URL": typo})
    assert created.stdout.splitlines()[0] == (
        f"created tables {', '.join(sql_queries.TABLES)} in schema public of {describe(typo)}"
    )
    only_typo = server_url(options="-c search_path=typo_schema")
    done = run_script("create_tables.py", env={"DATABASE_URL": only_typo}, check=False)
    assert done.returncode == EXIT_ENVIRONMENT
    assert one_error_line(done) == (
        "error: the search_path (typo_schema) names no schema that exists and that the role "
        "may use: create the schema, or put one that exists first (nothing was dropped)"
    )
    assert counts() == dict.fromkeys(BASE, 0)


SHADOW_TABLES = (
    "CREATE SCHEMA shadow; "
    "CREATE TABLE shadow.songs (song_id text PRIMARY KEY, title text, artist_id text, "
    "year int, duration numeric); "
    "CREATE TABLE shadow.time (start_time timestamptz PRIMARY KEY); "
    "CREATE TABLE shadow.row_counts (table_name text, row_count bigint, resolved bigint); "
    "SELECT 1"
)


def test_a_load_writes_the_schema_of_its_tables_not_a_same_named_table_earlier_on_the_path(
    tmp_path,
):
    """search_path "shadow, public", the tables in public, and tables of the same names of
    someone else's in shadow (as a schema named after the role holds, first on PostgreSQL's
    default path): the load writes public's, and leaves shadow's alone."""
    requires(CREATE_ON_DATABASE, "a schema of the test's own")
    run_script("create_tables.py")
    query(SHADOW_TABLES)
    try:
        shadowed = server_url(options="-c search_path=shadow,public")
        etl(base_sample(tmp_path / "data"), env={"DATABASE_URL": shadowed})
        assert counts() == BASE
        assert query(
            "SELECT (SELECT count(*) FROM shadow.songs), (SELECT count(*) FROM shadow.time), "
            "(SELECT count(*) FROM shadow.row_counts)"
        ) == [(0, 0, 0)]
    finally:
        query("DROP SCHEMA shadow CASCADE; SELECT 1")


def test_the_row_counts_follow_a_write_from_a_session_whose_search_path_is_elsewhere(tmp_path):
    requires(CREATE_ON_DATABASE, "a schema of the test's own")
    run_script("create_tables.py")
    etl(base_sample(tmp_path / "data"))
    query(SHADOW_TABLES)
    try:
        query(
            "SET search_path = shadow; "
            "INSERT INTO public.artists (artist_id, name) VALUES ('ARSHADOW', 'Shadow'); "
            "SELECT 1"
        )
        assert query("SELECT row_count FROM row_counts WHERE table_name = 'artists'") == [
            (BASE["artists"] + 1,)
        ]
        assert query("SELECT count(*) FROM shadow.row_counts") == [(0,)]
    finally:
        query("DROP SCHEMA shadow CASCADE; SELECT 1")


def test_the_row_counts_follow_a_write_from_a_session_with_a_temporary_table_of_their_name(
    tmp_path,
):
    run_script("create_tables.py")
    etl(base_sample(tmp_path / "data"))
    query(
        "CREATE TEMP TABLE row_counts (table_name text, row_count bigint, resolved bigint); "
        "INSERT INTO row_counts VALUES ('artists', 0, 0); "
        "INSERT INTO public.artists (artist_id, name) VALUES ('ARTEMPORARY', 'Temporary'); "
        "SELECT 1"
    )
    assert query("SELECT row_count FROM row_counts WHERE table_name = 'artists'") == [
        (BASE["artists"] + 1,)
    ]


def test_star_tables_missing_from_row_counts_are_counted_by_the_next_load(tmp_path):
    """row_counts without some of its rows (a schema copied with pg_dump --schema-only and the
    star's data restored beside it, or a row deleted by hand): the next load counts those
    tables once, and its report and the kept counts are exact."""
    run_script("create_tables.py")
    data = base_sample(tmp_path / "data")
    etl(data)
    query("DELETE FROM row_counts WHERE table_name IN ('songplays', 'time'); SELECT 1")
    write(data, "log_data/2018/12/new.json", log_file(event(0), event(1)))

    report = json.loads(etl(data).stdout)
    assert {t: (n["before"], n["after"]) for t, n in report["tables"].items()} == {
        **{t: (n, n) for t, n in BASE.items()},
        "songplays": (BASE["songplays"], BASE["songplays"] + 2),
        "users": (BASE["users"], BASE["users"] + 1),
        "time": (BASE["time"], BASE["time"] + 2),
    }
    assert dict(query("SELECT table_name, row_count FROM row_counts")) == counts()


def test_create_tables_refuses_a_search_path_that_would_make_the_tables_temporary(tmp_path):
    run_script("create_tables.py")
    etl(base_sample(tmp_path / "data"))
    temporary_first = server_url(options="-c search_path=pg_temp,public")
    refused = run_script("create_tables.py", env={"DATABASE_URL": temporary_first}, check=False)
    assert refused.returncode == EXIT_ENVIRONMENT, refused
    assert "search_path puts the session's temporary schema (pg_temp) first" in one_error_line(
        refused
    )
    assert counts() == BASE


def test_db_psql_passes_psqls_own_options_on_and_other_commands_refuse_them(data):
    etl(data)
    done = run_script("db.py", "psql", "-At", "-c", "SELECT count(*) FROM songplays")
    assert done.stdout == f"{BASE['songplays']}\n"
    refused = run_script("db.py", "status", "-c", "SELECT 1", check=False)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == "db.py: error: unrecognized arguments: -c SELECT 1"


@pytest.mark.parametrize(
    "asked",
    [
        {"PGSSLMODE": "require"},
        {"PGSSLMODE": "verify-full"},
        {"PGREQUIRESSL": "1"},
        {"PGSSLMODE": "require", "PGSSLNEGOTIATION": "direct"},
    ],
)
def test_db_psql_opens_the_embedded_server_whatever_encryption_pg_variables_ask_of_others(
    fresh_tables, asked
):
    """A data engineer keeps PGSSLMODE=require for cloud databases; the embedded server is a
    socket of this user's, and its psql has no SSL to refuse it with."""
    if not db.Settings.from_env().embedded:
        pytest.skip("DATABASE_URL is set: no embedded server in this run")
    done = run_script("db.py", "psql", "-At", "-c", "SELECT count(*) FROM songs", env=asked)
    assert done.stdout == "0\n"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["-h", "localhost"], "-h"),  # also db.py's --help: neither is guessed
        (["-At", "-p5433"], "-p"),
        (["-Xd", "postgres"], "-d"),  # in a group of short options
        (
            ["--db=postgresql://u:s3cret@elsewhere/db"],
            "--dbname",
        ),  # abbreviated, as getopt takes it
        (["-c", "SELECT 1", "otherdb"], "database or user name argument"),
    ],
)
def test_db_psql_refuses_psqls_options_that_say_where_to_connect(options, named):
    done = run_script("db.py", "psql", *options, check=False, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == (
        f"db.py: error: psql's {named} is not taken: the server and database come from "
        "--database-url (default: $DATABASE_URL, then PG* variables, then the embedded server)"
    )
    assert "s3cret" not in done.stderr


def test_db_psql_passes_on_values_that_look_like_where_options(data):
    etl(data)
    done = run_script("db.py", "psql", "-At", "-F", "-d", "-c", "SELECT 1, 2")
    assert done.stdout == "1-d2\n"


@pytest.fixture(scope="module")
def ssl_server():
    """A PostgreSQL 15 of the system's (the embedded server is built without SSL) taking both SSL
    and plain connections on loopback, its certificate self-signed: its URL."""
    pg_bin = citus_cluster.PG_BIN
    if not (pg_bin / "postgres").exists() or shutil.which("openssl") is None:
        pytest.skip(f"needs PostgreSQL 15 in {pg_bin} and openssl: the embedded server has no SSL")
    folder = Path(tempfile.mkdtemp(prefix="sparkify-ssl-"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.crt"],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    for path in (folder, folder / "server.key", folder / "server.crt"):
        citus_cluster.give_to_server_user(path)
    (folder / "server.key").chmod(0o600)
    (port,) = free_ports(1)
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",
        "ssl": "on",
        "ssl_cert_file": str(folder / "server.crt"),
        "ssl_key_file": str(folder / "server.key"),
    }
    data, log = folder / "data", folder / "log"
    citus_cluster.start_node(data, settings, citus_cluster.HBA, log)
    try:
        yield f"postgresql://{embedded.SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        citus_cluster.stop_node(data, log)
        shutil.rmtree(folder)


ENCRYPTED = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def test_a_load_session_has_the_server_hear_of_a_client_gone_silent_within_a_minute(ssl_server):
    """A client machine that dies without a word (a crash, a cable cut) left its session holding
    the load lock, every later run refused, until the server's keepalives gave up: over two
    hours with the system's defaults. The server probes it as the client probes the server."""
    conn = db.connect(db.Settings.from_env(f"{ssl_server}?sslmode=disable"))
    try:
        db.as_a_batch_job(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'tcp%'")
            assert dict(cur.fetchall()) == {
                "tcp_keepalives_idle": "30",
                "tcp_keepalives_interval": "10",
                "tcp_keepalives_count": "3",
                "tcp_user_timeout": "60000",
            }
    finally:
        conn.close()


def test_db_psql_opens_an_encrypted_connection_with_the_psql_on_path(ssl_server):
    path = f"{citus_cluster.PG_BIN}{os.pathsep}{os.environ['PATH']}"
    url = f"{ssl_server}?sslmode=require"
    done = run_script(
        "db.py", "psql", "--database-url", url, "-At", "-c", ENCRYPTED, env={"PATH": path}
    )
    assert done.stdout == "t\n"


def test_db_psql_without_a_psql_that_has_ssl_refuses_an_encrypted_connection_in_one_line(
    ssl_server, tmp_path
):
    """libpq's default (sslmode=prefer) encrypts where the server can: the embedded server's
    psql, built without SSL, would have connected unencrypted."""
    nowhere = {"PATH": str(tmp_path)}
    done = run_script(
        "db.py", "psql", "--database-url", ssl_server, "-c", ENCRYPTED, env=nowhere, check=False
    )
    assert (done.returncode, done.stdout) == (EXIT_ENVIRONMENT, "")
    assert one_error_line(done) == (
        f"error: the connection to {ssl_server} is encrypted (SSL), and the only psql found is the "
        "embedded server's, which has no SSL: install psql (Debian/Ubuntu: apt install "
        "postgresql-client; macOS: brew install libpq) and put it on PATH"
    )
    plain = f"{ssl_server}?sslmode=disable"
    done = run_script("db.py", "psql", "--database-url", plain, "-At", "-c", ENCRYPTED, env=nowhere)
    assert done.stdout == "f\n"


def test_a_libpq_service_names_the_database(monkeypatch, tmp_path):
    from builders import embedded_socket_dir

    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(
        f"[sparkify]\nhost={embedded_socket_dir()}\nport={embedded.PORT}\n"
        f"user={embedded.SUPERUSER}\ndbname=postgres\n"
    )
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))
    monkeypatch.setenv("PGSERVICE", "sparkify")
    conn = db.connect(db.Settings.from_env())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("postgres",)
    finally:
        conn.close()


ACCENTED = "Café Thunder — Łukasz"  # a LATIN1 session stores its UTF-8 bytes as 'CafÃ© …'


def accented_sample(root: Path) -> Path:
    data = base_sample(root)
    write(root, "song_data/A/A/TRACCENTED.json", json.dumps(song(99, title=ACCENTED)).encode())
    return data


def accented_title() -> list[tuple]:
    return query("SELECT title FROM songs WHERE song_id = %s", (song(99)["song_id"],))


SEVENTEEN_DIGITS = 123.45678901234567  # a double that needs 17 significant digits to be written


@pytest.mark.parametrize("digits", [-15, 0, 1])
def test_a_first_load_matches_durations_exactly_whatever_extra_float_digits_says(tmp_path, digits):
    """A bulk load matches plays to songs outside the database, from the song keys it reads:
    their durations must come as exact as the server holds them, however it writes floats."""
    data = base_sample(tmp_path / "data")
    precise = song(97, duration=SEVENTEEN_DIGITS)
    write(data, "song_data/A/A/TRPRECISE.json", json.dumps(precise).encode())
    plays = [
        event(90_000 + n, song=precise["title"], artist="Crafted", length=SEVENTEEN_DIGITS)
        for n in range(3)
    ]
    write(data, "log_data/2018/11/precise.json", log_file(*plays))
    run_script("create_tables.py")
    etl(data, env={"PGOPTIONS": f"-c extra_float_digits={digits}"}, process=True)
    assert query("SELECT count(*) FROM songplays WHERE song_id = %s", (precise["song_id"],)) == [
        (3,)
    ]


# Settings a role or a database may give every session, each of which ended a load midway (the
# time limits: the statements and pauses of a load are longer), made it fail on an error it
# expects (exit_on_error: a key tried on plays written twice), or kept its triggers from firing
# (replica: the report's counts came from row_counts, which triggers keep).
SESSION_SETTINGS = {
    "statement_timeout": ("15", None),
    "idle_session_timeout": ("50", 140000),
    "transaction_timeout": ("50", 170000),
    "exit_on_error": ("on", None),
    "session_replication_role": ("replica", None),
}


@pytest.mark.parametrize("setting", SESSION_SETTINGS)
def test_a_load_runs_as_a_batch_job_whatever_its_sessions_are_set_to(tmp_path, truth, setting):
    """As pg_dump's session does. The data holds a log file twice (a resent copy)."""
    value, since = SESSION_SETTINGS[setting]
    run_script("create_tables.py")
    if since and query("SELECT current_setting('server_version_num')::int")[0][0] < since:
        pytest.skip(f"{setting} is new in the server_version_num {since}")
    if query("SELECT context FROM pg_settings WHERE name = %s", (setting,)) == [("superuser",)]:
        requires(SUPERUSER, f"setting {setting}")
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    first_log = min((data / "log_data").rglob("*.json"))
    shutil.copy(first_log, data / "log_data" / "resent.json")
    report = json.loads(etl(data, env={"PGOPTIONS": f"-c {setting}={value}"}, process=True).stdout)
    assert counts() == {table: truth[table] for table in counts()}
    assert {t: rows["after"] for t, rows in report["tables"].items()} == counts()
    resent_plays = sum(
        json.loads(record)["page"] == "NextSong" for record in first_log.read_text().splitlines()
    )
    assert report["records"]["log"]["duplicates"] == resent_plays


TIME_LIMITS = [
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
]


def test_a_load_session_has_no_time_limit_whatever_its_role_says(fresh_tables):
    [(known,)] = query(
        "SELECT array_agg(name) FROM pg_settings WHERE name = ANY(%s)", (TIME_LIMITS,)
    )
    with environment({"PGOPTIONS": " ".join(f"-c {name}=5000" for name in known)}):
        conn = db.connect(db.Settings.from_env())
    try:
        db.as_a_batch_job(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting(name) FROM unnest(%s::text[]) name", (known,))
            assert cur.fetchall() == [("0",)] * len(known)
    finally:
        conn.close()


def test_a_load_session_compiles_no_statement_whatever_its_role_says(fresh_tables):
    """JIT thresholds near 0 (a role's or a database's setting) had every statement of a load
    compiled: one more day's merge ran for minutes, its server process growing by gigabytes."""
    with environment({"PGOPTIONS": "-c jit=on -c jit_above_cost=0"}):
        conn = db.connect(db.Settings.from_env())
    try:
        db.as_a_batch_job(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('jit'), current_setting('jit_above_cost')")
            assert cur.fetchone() == ("off", "0")
    finally:
        conn.close()


def test_a_role_whose_sessions_fire_no_trigger_is_refused_in_one_line(fresh_tables):
    requires(SUPERUSER, "a role whose sessions are set to session_replication_role 'replica'")
    url = embedded_url(role="replica_role")  # the embedded server's only: it lets in any role
    as_superuser(
        "DROP ROLE IF EXISTS replica_role",
        "CREATE ROLE replica_role LOGIN",
        "ALTER ROLE replica_role SET session_replication_role = 'replica'",
    )
    try:
        refused = run_script("etl.py", env={"DATABASE_URL": url}, check=False)
    finally:
        as_superuser("DROP ROLE replica_role")
    assert refused.returncode == EXIT_ENVIRONMENT
    assert one_error_line(refused).startswith(
        "error: session_replication_role is 'replica' for this session"
    )


def test_text_is_stored_as_written_whatever_pgclientencoding_says(tmp_path):
    data = accented_sample(tmp_path / "data")
    run_script("create_tables.py")
    etl(data, env={"PGCLIENTENCODING": "LATIN1"}, process=True)
    assert accented_title() == [(ACCENTED,)]


@contextlib.contextmanager
def a_database_encoded(encoding: str):
    """The scripts and readers here on a database of the tests' server storing text in this
    encoding, dropped afterwards."""
    requires(CREATEDB, "a database of the test's own")
    name = f"sparkify_{encoding.lower()}"
    drop = pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(name))
    create = pgsql.SQL(
        "CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ).format(pgsql.Identifier(name), pgsql.Literal(encoding))
    as_superuser(drop, create)
    try:
        with using_database(server_url(database=name)):
            yield
    finally:
        as_superuser(drop)


def test_a_database_that_cannot_hold_every_title_is_refused_in_one_line():
    with a_database_encoded("LATIN1"):
        created = run_script("create_tables.py", check=False)
    assert created.returncode == EXIT_ENVIRONMENT
    assert one_error_line(created).endswith(
        "stores text as LATIN1, which cannot hold every title and name: use a database created "
        "with ENCODING 'UTF8'"
    )


def test_a_sql_ascii_database_keeps_the_text_as_written(tmp_path):
    with a_database_encoded("SQL_ASCII"):
        run_script("create_tables.py")
        etl(accented_sample(tmp_path / "data"), process=True)
        assert accented_title() == [(ACCENTED,)]


def test_a_read_only_server_is_named_as_such(tmp_path):
    # A hot standby, or a database whose transactions are read-only by default: what PostgreSQL
    # says names a statement, not why it may not run.
    data = base_sample(tmp_path / "data")
    run_script("create_tables.py")
    refused = etl(
        data,
        exit_code=EXIT_ENVIRONMENT,
        process=True,
        env={"PGOPTIONS": "-c default_transaction_read_only=on"},
    )
    assert re.fullmatch(
        r"error: the database refused: cannot execute [A-Z ]+ in a read-only transaction \(the "
        r"server takes no writes here: a standby in recovery, where the primary is the one to "
        r"load into; or default_transaction_read_only is on: for the role or the database, which "
        r"ALTER ROLE or ALTER DATABASE … RESET default_transaction_read_only undoes, in the "
        r"server's configuration, or in the connection's options, the URL's or PGOPTIONS\)",
        one_error_line(refused),
    )


def test_a_server_short_of_disk_says_so_with_its_hint(tmp_path):
    # PostgreSQL's message for a short write names a file and a block; its hint says why.
    data = base_sample(tmp_path / "data")
    run_script("create_tables.py")
    query(
        "CREATE OR REPLACE FUNCTION test_short_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION "
        "'could not extend file \"base/1/2\": wrote only 4096 of 8192 bytes' "
        "USING ERRCODE = '53100', HINT = 'Check free disk space.'; END $$; "
        "CREATE TRIGGER test_short_write AFTER INSERT ON artists "
        "EXECUTE FUNCTION test_short_write(); SELECT 1"
    )
    try:
        refused = etl(data, exit_code=EXIT_ENVIRONMENT, process=True)
    finally:  # a function outlives the tables: DATABASE_URL's database keeps it
        query("DROP FUNCTION test_short_write() CASCADE; SELECT 1")
    assert one_error_line(refused) == (
        'error: the database refused: could not extend file "base/1/2": wrote only 4096 of '
        "8192 bytes (Check free disk space.)"
    )


def test_a_refusal_says_what_the_database_says_in_detail(tmp_path):
    data = base_sample(tmp_path / "data")
    run_script("create_tables.py")
    etl(data, process=True)
    loaded = table_contents()
    query("CREATE TABLE my_favourites (user_id integer REFERENCES users); SELECT 1")
    try:
        refused = etl(data, "--full-refresh", exit_code=EXIT_ENVIRONMENT, process=True)
        assert one_error_line(refused) == (
            "error: cannot empty the tables for --full-refresh: cannot truncate a table "
            'referenced in a foreign key constraint (Table "my_favourites" references "users".); '
            "drop that foreign key, or empty that table too with TRUNCATE ... CASCADE, and run "
            "again (nothing was emptied)"
        )
        assert table_contents() == loaded
    finally:
        query("DROP TABLE my_favourites; SELECT 1")


def test_the_schema_stamp_follows_what_the_statements_make_not_their_comments_or_layout(
    monkeypatch,
):
    stamp = db.schema_stamp()
    first, *rest = sql_queries.create_table_queries
    relaid = "-- a note on the table\n" + first.replace(" ", "   ").replace("\n", "\n\n")
    monkeypatch.setattr(sql_queries, "create_table_queries", [relaid, *rest])
    assert db.schema_stamp() == stamp
    changed = first.replace("(", "(\n    spare text,", 1)
    monkeypatch.setattr(sql_queries, "create_table_queries", [changed, *rest])
    assert db.schema_stamp() != stamp


def test_a_server_older_than_the_oldest_the_tables_can_be_made_on_is_refused_in_one_line(
    monkeypatch,
):
    """The tables need PostgreSQL 11 (a PostgreSQL 10 said only "syntax error at or near
    FUNCTION"): a server below the floor is named with its version. Here the floor is put above
    the tests' own server."""
    settings = db.Settings.from_env()
    with contextlib.closing(db.connect(settings)) as conn:
        version = conn.info.parameter_status("server_version")
        monkeypatch.setattr(db, "OLDEST_SERVER", conn.server_version + 1)
    with pytest.raises(db.DatabaseError) as refused:
        db.connect(settings)
    assert str(refused.value) == (
        f"{settings.describe()} runs PostgreSQL {version}: the project needs PostgreSQL 11 or "
        "newer (its tables use what 11 brought)"
    )
