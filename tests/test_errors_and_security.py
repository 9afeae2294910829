"""Errors and security: a problem the user can fix is one clear line on stderr with its exit
code, never a traceback or a password; every command documents its options and exit codes; SQL
text is never built from values (ruff's S608, proven to catch it); the embedded server is
reached through a private socket."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from builders import (
    BASE,
    base_sample,
    connection_error,
    embedded_socket_dir,
    embedded_url,
    etl,
    one_error_line,
    server_url,
    write,
)
from conftest import PROJECT, changed_environment, counts, drop_tables, query, run_script

import db
import embedded
import extract
import sql_queries
from cli import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_LOCKED, EXIT_OK

UNREACHABLE = "postgresql://u:s3cret@127.0.0.1:1/x"


# Every command, as a user types it after `python` in the project folder (the tools are modules).
SCRIPTS = [
    "etl.py",
    "create_tables.py",
    "db.py",
    "erd.py",
    "-m tools.generate_data",
    "-m tools.citus_cluster",
    "bench/run.py",
    "bench/classic.py",
    "bench/dlt_peer.py",
]


def help_examples(script: str) -> list[str]:
    """The command lines of the example(s) that the script's --help ends with."""
    text = run_script(*script.split(), "--help", env={"COLUMNS": "200"}).stdout  # no wrapping
    assert text.startswith("usage:")
    block = re.search(r"^examples?\b[^:\n]*:(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    assert block, f"{script} --help shows no example"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def undescribed(help_text: str) -> list[str]:
    """The options and subcommand lists that --help (unwrapped) shows without a description: an
    entry with neither text beside it nor an indented line under it."""
    listed = re.split(r"^examples?\b", help_text, flags=re.M)[0].splitlines()
    bare = []
    for line, after in zip(listed, [*listed[1:], ""]):
        entry = re.match(r"^  ([-{]\S*(?: \S+)*?)( {2,}\S.*)?$", line)
        if entry and not entry.group(2) and not re.match(r"^ {3,}\S", after):
            bare.append(entry.group(1))
    return bare


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_documents_every_option_and_an_example_of_itself(script):
    examples = help_examples(script)
    assert any(f"python {script}" in line for line in examples), examples
    shown = run_script(*script.split(), "--help", env={"COLUMNS": "200"}).stdout
    assert re.search(r"^  -h, --help {2,}show", shown, re.M), shown  # undescribed() reads it
    assert undescribed(shown) == []


def test_the_load_examples_run_as_written(tmp_path):
    """What a newcomer copies from --help works: the tables, a load of data/, the diagram."""
    commands = [
        line.split()[1:]
        for script in ("create_tables.py", "etl.py", "erd.py")
        for line in help_examples(script)
    ]
    for args in commands:
        args = [str(tmp_path / "erd") if a == "/tmp/erd" else a for a in args]
        run_script(*args)
    assert (tmp_path / "erd" / "schema.svg").exists()


def test_exit_codes_keep_the_numbers_the_help_documents():
    assert (EXIT_OK, EXIT_FAILED, EXIT_ENVIRONMENT, EXIT_LOCKED) == (0, 1, 3, 4)
    documented = " ".join(run_script("etl.py", "--help").stdout.split())
    for code, cause in [
        (EXIT_OK, "loaded"),
        (EXIT_FAILED, "a check or the reconciliation failed"),
        (EXIT_ENVIRONMENT, "database or data folder problem"),
        (EXIT_LOCKED, "another load was still running after --wait"),
    ]:
        assert f"{code} {cause}" in documented, (code, documented)


@pytest.mark.parametrize(
    "command",
    [["etl.py", "--data", "{data}"], ["create_tables.py"], ["db.py", "psql"]],
    ids=" ".join,
)
def test_unreachable_server_is_one_clear_error_line_without_the_password(tmp_path, command):
    data = base_sample(tmp_path / "data")
    done = run_script(
        *[a.format(data=data) for a in command],
        env={"DATABASE_URL": UNREACHABLE},
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_ENVIRONMENT, done
    assert "127.0.0.1" in one_error_line(done)
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.parametrize("cause", ["unreachable server", "missing data folder"])
def test_a_json_run_that_cannot_load_still_prints_one_json_object_naming_its_error(tmp_path, cause):
    data = base_sample(tmp_path / "data")
    if cause == "missing data folder":
        args, env, code = ["--data", str(tmp_path / "none")], {}, EXIT_ENVIRONMENT
    else:
        args, env, code = ["--data", str(data)], {"DATABASE_URL": UNREACHABLE}, EXIT_ENVIRONMENT
    done = run_script("etl.py", "--json", *args, env=env, timeout=60, check=False)
    assert done.returncode == code, done
    assert json.loads(done.stdout) == {
        "run_id": None,
        "status": "failed",
        "exit_code": code,
        "error": one_error_line(done).removeprefix("error: "),
    }
    assert "s3cret" not in done.stdout + done.stderr


def test_a_run_the_database_stops_with_an_error_is_recorded_as_failed(fresh_tables, tmp_path):
    data = base_sample(tmp_path / "data")
    query(
        "CREATE OR REPLACE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'the disk controller is on fire' USING ERRCODE = 'XX000'; END $$; "
        "CREATE TRIGGER broken AFTER INSERT ON artists EXECUTE FUNCTION broken(); SELECT 1"
    )
    try:
        done = run_script("etl.py", "--data", str(data), check=False)
    finally:  # a function outlives the tables: DATABASE_URL's database keeps it
        query("DROP FUNCTION broken() CASCADE; SELECT 1")

    assert done.returncode == EXIT_ENVIRONMENT
    assert one_error_line(done) == "error: the database refused: the disk controller is on fire"
    # no report made: the next run reports what it rejected
    assert query("SELECT status, finished_at FROM load_runs") == [("failed", None)]


class RowsUntilTheSessionEnds:
    """A COPY's data whose third read has the server end the session copying it."""

    ROW = b"%d,a user's name and town\n"

    def __init__(self, pid: int):
        self.pid, self.reads = pid, 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 3:
            query("SELECT pg_terminate_backend(%s)", (self.pid,))
            deadline = time.monotonic() + 30  # the session gone before the next rows are sent
            while query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (self.pid,)):
                assert time.monotonic() < deadline, "the session outlived its termination"
                time.sleep(0.01)
        return b"" if self.reads > 50 else b"".join(self.ROW % i for i in range(1000))


def test_a_connection_lost_in_the_middle_of_a_copy_ends_in_one_line_showing_no_row(
    fresh_tables, capsys
):
    settings = db.Settings.from_env()
    conn = db.connect(settings)

    def copy() -> int:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE copied (n integer, who text)")
            cur.copy_expert(
                "COPY copied FROM STDIN WITH (FORMAT csv)",
                RowsUntilTheSessionEnds(conn.get_backend_pid()),
            )
        return EXIT_OK

    try:
        assert db.run_command(settings, copy) == EXIT_ENVIRONMENT
    finally:
        conn.close()
    err = capsys.readouterr().err
    assert err.startswith("error: the connection to ") and err.count("\n") == 1, err
    assert "name and town" not in err


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare: the run gets a read-only /dev/shm of its own",
)
def test_a_run_with_a_read_only_dev_shm_starts_its_parse_workers_all_the_same(data):
    """A full or read-only /dev/shm (a container's 64 MB, say) once kept the workers' queues
    from their named semaphores; the workers' pipes need none."""
    read_only_shm = 'mount -t tmpfs -o ro,size=4k tmpfs /dev/shm && exec "$0" "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", read_only_shm, sys.executable, "etl.py"]
        + ["--data", str(data), "--jobs", "1", "--no-progress"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (done.returncode, done.stderr) == (EXIT_OK, "")
    assert counts() == BASE


def test_a_server_that_accepts_and_never_answers_is_given_up_on_with_one_line():
    with socket.socket() as listener:  # the kernel accepts connections; nothing ever answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        url = f"postgresql://u@127.0.0.1:{port}/x"
        done = run_script(
            "etl.py", "--no-progress", env={"DATABASE_URL": url}, timeout=60, check=False
        )
    assert done.returncode == EXIT_ENVIRONMENT
    assert one_error_line(done) == (
        f'error: cannot connect to {url}: connection to server at "127.0.0.1", port {port} '
        "failed: timeout expired"
    )


def test_a_url_of_several_servers_names_each_ones_failure():
    """libpq tries each host in turn: the first failure alone would hide why the others failed
    (a primary down behind a standby that is read-only, say)."""
    ports = []
    for _ in range(2):
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            ports.append(closed.getsockname()[1])
    url = f"postgresql://u@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]},no-such-host.invalid:5432/x"
    done = run_script("etl.py", "--no-progress", env={"DATABASE_URL": url}, check=False)
    assert done.returncode == EXIT_ENVIRONMENT
    message, _, unresolved = one_error_line(done).rpartition(" to address: ")
    assert message == (
        "error: cannot connect to postgresql://u@/x?host=127.0.0.1,127.0.0.1,no-such-host.invalid"
        f"&port={ports[0]},{ports[1]},5432: "
        f'connection to server at "127.0.0.1", port {ports[0]} failed: Connection refused; '
        f'connection to server at "127.0.0.1", port {ports[1]} failed: Connection refused; '
        'could not translate host name "no-such-host.invalid"'
    )
    assert unresolved  # the resolver's reason: it differs from machine to machine


def test_db_url_prints_the_url_without_the_password():
    done = run_script("db.py", "url", env={"DATABASE_URL": UNREACHABLE}, timeout=60)
    assert done.stdout == "postgresql://u:***@127.0.0.1:1/x\n"
    assert "s3cret" not in done.stdout + done.stderr


def test_psql_gets_no_password_on_its_command_line(fresh_tables):
    """Any local user can read another process's command line (ps)."""
    url = embedded_url(password="s3cret")
    proc = subprocess.Popen(
        [sys.executable, "db.py", "psql"],
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name == "psql" or proc.poll() is not None:
                break
            assert time.monotonic() < deadline, "db.py psql did not start psql"
            time.sleep(0.02)
        out, err = proc.communicate(b"SELECT 'connected';\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"connected" in out, (out, err)
    assert b"s3cret" not in b" ".join(argv), argv


def test_missing_tables_are_one_error_naming_them_and_create_tables(data):
    drop_tables()
    try:
        message = one_error_line(etl(data, exit_code=EXIT_ENVIRONMENT, process=True))
        assert "create_tables.py" in message
        assert all(t in message for t in sql_queries.TABLES), message
    finally:
        run_script("create_tables.py")


def test_a_table_of_another_app_of_one_of_the_names_is_neither_another_version_nor_dropped(data):
    """A database another app uses, its own `users` there: etl.py says to run create_tables.py
    (not that another version made the tables), and create_tables.py refuses to drop that
    table, naming it, until it is moved out of the way."""
    drop_tables()
    query("CREATE TABLE users (id int PRIMARY KEY, email text); INSERT INTO users VALUES (1, 'a')")
    try:
        done = etl(data, exit_code=EXIT_ENVIRONMENT, process=True)
        assert one_error_line(done) == (
            "error: table(s) songplays, songs, artists, time, songplay_copies, load_rejects, "
            "load_manifest, load_runs, row_counts missing: run `python create_tables.py` first"
        )
        refused = run_script("create_tables.py", check=False)
        assert (refused.returncode, one_error_line(refused)) == (
            EXIT_ENVIRONMENT,
            "error: table(s) users in schema public are not Sparkify's (no load_runs beside "
            "them), and create_tables.py drops only its own: rename or move them, or make the "
            "tables in another schema (options=-csearch_path%3Dsparkify in the URL, the schema "
            "created first) (nothing was dropped)",
        )
        assert query("SELECT * FROM users") == [(1, "a")]
    finally:
        query("DROP TABLE users; SELECT 1")
        run_script("create_tables.py")


STAMP_DIFFERS = "their stamp, the comment on load_runs, is another's"


@pytest.mark.parametrize(
    ("older", "why"),
    [
        ("COMMENT ON TABLE load_runs IS NULL", STAMP_DIFFERS),  # made before the stamp
        (
            "ALTER TABLE songs DROP COLUMN artist_name;"
            "COMMENT ON TABLE load_runs IS 'sparkify tables 0123456789abcdef'",
            STAMP_DIFFERS,
        ),
        # the first versions made neither: their plays stay, and the message says what a remake
        # costs instead of only saying to run create_tables.py
        (
            "DROP TABLE songplay_copies; DROP TABLE row_counts",
            "songplay_copies, row_counts missing beside the others",
        ),
    ],
)
def test_tables_made_by_another_version_of_create_tables_are_one_error_and_nothing_loads(
    data, older, why
):
    run_script("create_tables.py")
    etl(data)
    query(older)
    try:
        done = etl(data, exit_code=EXIT_ENVIRONMENT, process=True)
        assert one_error_line(done) == (
            f"error: the tables were made by another version of create_tables.py ({why}): "
            "nothing was changed; run `python create_tables.py`, then `python etl.py`: the "
            "tables are emptied and the data folder's files loaded again, so what came from "
            "files no longer there is lost (docs/database.md)"
        )
        assert query("SELECT count(*) FROM songplays") == [(BASE["songplays"],)]
    finally:
        run_script("create_tables.py")
    etl(data)


def test_tables_in_a_schema_off_the_search_path_are_one_error_naming_that_schema(data):
    """The role's search_path changed (ALTER ROLE ... SET search_path) away from the schema
    that holds the tables: the error names where they are, not only that they are missing
    (create_tables.py would make a second, empty set)."""
    run_script("create_tables.py")
    elsewhere = server_url(options="-c search_path=analytics")
    done = etl(data, exit_code=EXIT_ENVIRONMENT, process=True, env={"DATABASE_URL": elsewhere})
    assert one_error_line(done) == (
        "error: the tables are not on this session's search_path (analytics): schema public "
        "holds them; put it on the search_path (docs/database.md) rather than running "
        "create_tables.py, which would make another, empty set"
    )


def test_missing_database_on_a_named_server_is_one_error_saying_to_create_it(tmp_path):
    message = connection_error(embedded_url(database="no_such_db"), tmp_path)
    assert 'database "no_such_db" does not exist' in message
    assert message.endswith(
        "create it first (e.g. `createdb`): only the embedded server's is made for you"
    )


def test_missing_or_empty_data_folder_is_one_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    message = one_error_line(etl(missing, exit_code=EXIT_ENVIRONMENT, process=True))
    assert message == f"error: data folder {missing} not found (choose one with --data)"
    empty = tmp_path / "empty"
    (empty / "song_data").mkdir(parents=True)
    assert one_error_line(etl(empty, exit_code=EXIT_ENVIRONMENT, process=True)) == (
        f"error: no data files under {empty}: song_data/ and log_data/ hold no {extract.DATA_FILES}"
    )


def test_a_connection_string_typed_as_the_data_folder_shows_no_part_of_its_password():
    typed = "host=127.0.0.1 password='Pw\\'s3cret-tail'"
    message = one_error_line(etl(Path(typed), exit_code=EXIT_ENVIRONMENT, process=True))
    assert message == (
        f"error: data folder host=127.0.0.1 password=*** not found in {PROJECT} "
        "(choose one with --data)"
    )


def test_a_data_folder_without_song_data_or_log_data_is_named_with_what_it_lacks(tmp_path):
    (tmp_path / "log_data" / "2018").mkdir(parents=True)
    (tmp_path / "log_data" / "2018" / "day.json").write_text("{}\n")
    message = one_error_line(etl(tmp_path / "log_data", exit_code=EXIT_ENVIRONMENT, process=True))
    assert message == (
        f"error: data folder {tmp_path / 'log_data'} holds neither song_data/ nor log_data/: "
        "choose the folder that holds them with --data"
    )


def test_a_relative_data_folder_not_found_is_named_with_the_folder_it_was_looked_for_in(
    tmp_path,
):
    done = subprocess.run(
        [sys.executable, str(PROJECT / "etl.py"), "--data", "nowhere"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_ENVIRONMENT
    assert done.stderr.strip() == (
        f"error: data folder nowhere not found in {tmp_path} (choose one with --data)"
    )


# ---------------------------------------------------------------- SQL is never built from values

# ruff's S608 (ruff.toml, run by `make test`) refuses SQL text built from values in the project's
# modules; these prove that the rule catches each way of building it, and that sql_queries, where
# the statements live, holds nothing but text fixed when it loads.
BUILT_FROM_VALUES = [
    'cur.execute(f"SELECT * FROM songs WHERE title = {title}")',
    'cur.execute("SELECT * FROM songs WHERE title = %s" % title)',
    'cur.execute("SELECT * FROM songs WHERE title = " + title)',
    'cur.execute("SELECT * FROM songs WHERE title = {}".format(title))',
]


def s608_findings(code: str) -> list[str]:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ruff"),
            "check",
            "--select",
            "S608",
            "--no-cache",
            "--output-format",
            "concise",
            "--stdin-filename",
            "module.py",
            "-",
        ],
        input=f"def load(cur, title):\n    {code}\n",
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    return [line for line in done.stdout.splitlines() if "S608" in line]


@pytest.mark.parametrize("code", BUILT_FROM_VALUES)
def test_lint_refuses_sql_text_built_from_a_value(code):
    assert len(s608_findings(code)) == 1


def test_lint_accepts_a_statement_with_its_values_as_parameters():
    assert s608_findings('cur.execute(sql.songs_by_title, {"title": title})') == []


def test_sql_queries_holds_only_fixed_text():
    """No value can reach a statement when it loads: sql_queries imports nothing and defines no
    function, and its only placeholder is create_database's name (filled with
    psycopg2.sql.Identifier)."""
    names = {k: v for k, v in vars(sql_queries).items() if not k.startswith("__")}
    assert [k for k, v in names.items() if callable(v) or isinstance(v, types.ModuleType)] == []
    templates = {
        name: re.findall(r"\{(\w+)\}", value)
        for name, value in names.items()
        if isinstance(value, str) and re.search(r"\{\w+\}", value)
    }
    assert templates == {"create_database": ["name"]}


def test_embedded_server_data_and_socket_directories_are_private():
    socket_dir = embedded_socket_dir()
    pgdata = Path(os.environ["SPARKIFY_PGDATA"])
    assert pgdata.stat().st_mode & 0o777 == 0o700
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    socket = socket_dir / f".s.PGSQL.{embedded.PORT}"
    assert socket.is_socket()
    assert socket.stat().st_mode & 0o777 == 0o700


def test_embedded_server_log_is_readable_by_its_owner_only():
    """The server logs a failed statement's text: a password set in it, say."""
    embedded_socket_dir()
    pgdata = Path(os.environ["SPARKIFY_PGDATA"])
    log = pgdata.parent / f"{pgdata.name}.log"
    assert log.stat().st_size > 0
    assert log.stat().st_mode & 0o777 == 0o600


# Python's standard output buffered, as in a terminal's shell, or not (PYTHONUNBUFFERED=1, as
# some machines set it): a report Python still holds when it exits is flushed then, and a
# failed flush makes the exit code 120.
BUFFERING = {"buffered": {"PYTHONUNBUFFERED": None}, "unbuffered": {"PYTHONUNBUFFERED": "1"}}


def run_etl_into(
    stdout: str, data: Path, *args: str, buffering: str = "buffered"
) -> subprocess.CompletedProcess:
    """etl.py with its standard output on a full disk, in a pipe whose reader has gone, or
    closed (>&-, as a daemon may start a job)."""
    command = [sys.executable, "etl.py", "--no-progress", "--data", str(data), *args]
    env = changed_environment(BUFFERING[buffering])
    if stdout == "a closed pipe":
        proc = subprocess.Popen(
            command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        proc.stdout.close()  # the reader goes before the report comes
        err = proc.stderr.read().decode()
        return subprocess.CompletedProcess(command, proc.wait(timeout=600), "", err)
    if stdout == "closed":
        command = ["sh", "-c", 'exec "$@" >&-', "sh", *command]
    with open("/dev/full" if stdout == "a full disk" else os.devnull, "w") as out:
        return subprocess.run(
            command, cwd=PROJECT, stdout=out, stderr=subprocess.PIPE, text=True, env=env
        )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("buffering", list(BUFFERING))
@pytest.mark.parametrize("stdout", ["a full disk", "a closed pipe", "closed"])
@pytest.mark.parametrize("strict", [False, True])
def test_a_run_whose_report_cannot_be_written_keeps_its_own_exit_code(
    data, stdout, strict, buffering
):
    """A monitor reads the exit code: a run that failed (here --strict, a record rejected)
    exits 1 whatever became of its report; one that succeeded exits 0 into a pipe whose reader
    has gone (head), and 3, naming what is done, where the report could not be written."""
    write(data, "log_data/2018/12/bad.json", b"not json\n")
    done = run_etl_into(stdout, data, *(["--strict"] if strict else []), buffering=buffering)
    why = {"a full disk": "No space left on device", "closed": "it is closed"}.get(stdout)
    said = f"error: cannot write to standard output ({why}): run 1 is done, succeeded\n"
    assert (done.returncode, done.stderr) == (
        EXIT_FAILED if strict else EXIT_OK if why is None else EXIT_ENVIRONMENT,
        "" if why is None else said,
    )
    assert query("SELECT status FROM load_runs") == [("succeeded",)]


def with_stderr_closed(*args: str) -> subprocess.CompletedProcess:
    """etl.py started with its standard error closed (2>&-, as a daemon may start a job)."""
    return subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "etl.py", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        env=changed_environment({}),
    )


def test_a_run_started_with_standard_error_closed_loads_and_says_what_it_did(data, tmp_path):
    """No progress bar to write (its stream closed, not a terminal), and with --json standard
    output holds the one object, a failed run's error in it."""
    done = with_stderr_closed("--data", str(data), "--json")
    assert done.returncode == EXIT_OK, done.stdout
    assert json.loads(done.stdout)["tables"]["songplays"]["after"] == BASE["songplays"]
    missing = with_stderr_closed("--data", str(tmp_path / "nowhere"), "--json")
    assert missing.returncode == EXIT_ENVIRONMENT
    assert json.loads(missing.stdout) == {
        "run_id": None,
        "status": "failed",
        "exit_code": EXIT_ENVIRONMENT,
        "error": f"data folder {tmp_path / 'nowhere'} not found (choose one with --data)",
    }


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("buffering", list(BUFFERING))
@pytest.mark.parametrize(
    ("args", "done", "runs"),
    [
        (["create_tables.py"], "the tables are made", []),
        (["etl.py", "--no-progress"], "run 1 is done, succeeded", [("succeeded",)]),
        (["etl.py", "--no-progress", "--json"], "run 1 is done, succeeded", [("succeeded",)]),
        (["db.py", "url"], "nothing was changed", []),
        (["db.py", "status"], "nothing was changed", []),
    ],
)
def test_a_result_standard_output_cannot_take_is_one_error_saying_what_is_done(
    data, args, done, runs, buffering
):
    """Standard output on a full disk (a cron job's log): one line on stderr and exit 3, not a
    traceback and the exit code of a failed check; what the script did stays done."""
    with open("/dev/full", "w") as full:
        ran = subprocess.run(
            [sys.executable, *args, *(["--data", str(data)] if args[0] == "etl.py" else [])],
            cwd=PROJECT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
            env=changed_environment(BUFFERING[buffering]),
        )
    assert (ran.returncode, ran.stderr) == (
        EXIT_ENVIRONMENT,
        f"error: cannot write to standard output (No space left on device): {done}\n",
    )
    assert query("SELECT status FROM load_runs") == runs
