"""What the whole-load tests share: a small data folder in the real format, crafted records whose
every outcome is known in advance, etl.py run as a user runs it, and what it left in the
database read back (its summary: summary.py).

The base sample (base_sample) holds 11 song files and 2 daily log files, written here; nothing
depends on the Udacity data, which the project cannot ship.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import PROJECT, query, run_main, run_script, scalar, using_database
from psycopg2 import sql as pgsql
from summary import Counts

import db
import embedded
import sql_queries
from cli import (
    EXIT_ENVIRONMENT,
    EXIT_HUNG_UP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    HUNG_UP,
    INTERRUPTED,
    TERMINATED,
)
from extract import zstd

# ================================================================ the base sample

# song_data/A/A/A: 11 songs by 11 artists; 2018-11-01 and 2018-11-03 logs: 15 + 111 events, of
# which 11 + 100 NextSong plays by 12 users at 111 distinct instants, none matching those songs.
BASE_SONG_DIR = "song_data/A/A/A"
BASE_LOGS = ["2018-11-01-events.json", "2018-11-03-events.json"]
BASE = {"songplays": 111, "users": 12, "songs": 11, "artists": 11, "time": 111}
BASE_LOG_RECORDS, BASE_SKIPPED = 126, 15

# The crafted plays: one user unknown to the sample, after every real event.
USER, SESSION, T0 = 900, 9000, 1_543_622_400_000  # T0 = 2018-12-01 00:00:00 UTC
# This song is in song_data/A/A/A: a play of it resolves.
FACE = {
    "song_id": "SOFSOCN12A8C143F5D",
    "artist_id": "ARXR32B1187FB57099",
    "file": "TRAAAFD128F92F423A.json",
}
CRAFTED_ARTIST = "ARZZZZZ1187FB00001"  # the artist of song(n)
# A real play from the logs, field for field, for the pure-function tests.
PLAY = {
    "artist": "Des'ree",
    "auth": "Logged In",
    "firstName": "Kaylee",
    "gender": "F",
    "itemInSession": 1,
    "lastName": "Summers",
    "length": 246.30812,
    "level": "free",
    "location": "Phoenix-Mesa-Scottsdale, AZ",
    "method": "PUT",
    "page": "NextSong",
    "registration": 1540344794796.0,
    "sessionId": 139,
    "song": "You Gotta Be",
    "status": 200,
    "ts": 1541106106796,
    "userAgent": '"Mozilla/5.0 (Windows NT 6.1)"',
    "userId": "8",
}
DROP = object()  # as a value in event(...)/song(...): remove that field


# ================================================================ building inputs


def changed(record: dict, changes: dict) -> dict:
    """The record with the changes applied; a DROP value removes the field."""
    for key, value in changes.items():
        if value is DROP:
            del record[key]
        else:
            record[key] = value
    return record


def event(item: int, **changes) -> dict:
    """A NextSong event of the crafted user, in the real format; item numbers the play."""
    record = {
        "artist": "Gob",
        "auth": "Logged In",
        "firstName": "Ada",
        "gender": "F",
        "itemInSession": item,
        "lastName": "Lovelace",
        "length": 209.60608,
        "level": "paid",
        "location": "London",
        "method": "PUT",
        "page": "NextSong",
        "registration": 1540919166796.0,
        "sessionId": SESSION,
        "song": "Face the Ashes",
        "status": 200,
        "ts": T0 + item * 1000,
        "userAgent": '"Mozilla/5.0"',
        "userId": str(USER),
    }
    return changed(record, changes)


def other_page(item: int, page: str, **changes) -> dict:
    """A non-NextSong event (skipped by design)."""
    return event(item, page=page, method="GET", song=None, artist=None, length=None, **changes)


def play_among_few_keys(rng: random.Random, items: int, instants: int, **changes) -> dict:
    """A play of one of three crafted users, in one of two sessions, at one of `items` items and
    one of `instants` seconds from T0: plays (user, session, item) and instants repeat within and
    across files, and the level and first name drawn with them make copies differ."""
    return event(
        rng.randrange(items),
        userId=str(USER + rng.randrange(3)),
        sessionId=SESSION + rng.randrange(2),
        ts=T0 + rng.randrange(instants) * 1000,
        level=rng.choice(["free", "paid"]),
        firstName=rng.choice(["Ada", "Grace"]),
        **changes,
    )


def song(n: int, **changes) -> dict:
    """A song of an artist unknown to the sample."""
    record = {
        "num_songs": 1,
        "artist_id": CRAFTED_ARTIST,
        "artist_latitude": None,
        "artist_longitude": None,
        "artist_location": "",
        "artist_name": "Crafted",
        "song_id": f"SOZZZZZ12A8C{n:06d}",
        "title": f"Crafted song {n}",
        "duration": 100.5 + n,
        "year": 2001,
    }
    return changed(record, changes)


def line(record) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


GZIP_FORMAT = 16 + zlib.MAX_WBITS  # zlib's wbits for gzip data


def gzip_cut_holds(cut: bytes) -> bytes:
    """What gzip data cut short decompresses to: all it holds before the cut."""
    return zlib.decompressobj(GZIP_FORMAT).decompress(cut)


def zipped(*files: tuple[str, bytes], how: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of the files (name, content), in order, as zip writes one to a file."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        for name, content in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zip_file.writestr(info, content, compress_type=how)
    return archive.getvalue()


# What each compression read makes of a file's bytes, by the suffix its file is named with (zstd
# with a checksum of each frame, as the zstd tool writes it; a zip archive of the one file).
COMPRESS = {
    ".gz": lambda content: gzip.compress(content, mtime=0),
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda content: zstd.compress(
        content, options={zstd.CompressionParameter.checksum_flag: 1}
    ),
    ".zip": lambda content: zipped(("data.json", content)),
}


def lines(*records) -> bytes:
    """JSON lines, each ended by a newline; bytes are taken as they are."""
    return b"".join((r if isinstance(r, bytes) else line(r)) + b"\n" for r in records)


# Text PostgreSQL cannot compress (as it would squeeze a repeated letter into a few bytes): an id
# of it longer than a btree entry holds is refused by the database.
UNCOMPRESSIBLE = "".join(hashlib.sha256(str(n).encode()).hexdigest() for n in range(47))[:3000]


def in_utf16(text: bytes) -> bytes:
    """UTF-8 text as a UTF-16 writer writes it: little-endian, after its byte-order mark."""
    return codecs.BOM_UTF16_LE + text.decode().encode("utf-16-le")


def log_file(*records) -> bytes:
    """A log file as the real ones are written: JSON lines, no newline after the last."""
    return lines(*records).removesuffix(b"\n")


def write(root: Path, rel: str, content: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def face_song() -> bytes:
    """The base song that the crafted plays ("Face the Ashes" by "Gob", 209.60608 s) match."""
    return json.dumps(
        song(
            0,
            artist_id=FACE["artist_id"],
            artist_name="Gob",
            song_id=FACE["song_id"],
            title="Face the Ashes",
            duration=209.60608,
            year=2007,
            artist_location="",
        )
    ).encode()


def base_logs(day: int, plays: int, others: int) -> bytes:
    """A day of real-format events before T0: plays of users 1..12 (one second apart, each a
    title no song has), then other pages, the first of them logged out."""
    start = T0 - (31 - day) * 86_400_000
    records = [
        event(
            i,
            userId=str(1 + i % 12),
            sessionId=day * 100 + 1 + i % 12,
            ts=start + i * 1000,
            song=f"Base tune {day}-{i}",
            artist="Base band",
            length=100.0 + i,
            firstName=f"User{1 + i % 12}",
            level="free",
        )
        for i in range(plays)
    ]
    records += [
        other_page(
            plays + k,
            "Home",
            ts=start + (plays + k) * 1000,
            userId="" if k == 0 else "1",
            sessionId=day * 100 + 1,
        )
        for k in range(others)
    ]
    return lines(*records)


def base_sample(root: Path, songs: bool = True) -> Path:
    """11 songs (one of them FACE's) and two days of logs, in the real layout."""
    if songs:
        write(root, f"{BASE_SONG_DIR}/{FACE['file']}", face_song())
        for n in range(1, 11):
            write(
                root,
                f"{BASE_SONG_DIR}/TRAAABASE{n:09d}.json",
                json.dumps(
                    song(n, artist_id=f"ARBASE{n:012d}", song_id=f"SOBASE{n:012d}")
                ).encode(),
            )
    write(root, f"log_data/2018/11/{BASE_LOGS[0]}", base_logs(1, 11, 4))
    write(root, f"log_data/2018/11/{BASE_LOGS[1]}", base_logs(3, 100, 11))
    return root


APPLE_DOUBLE = b"\0\x05\x16\x07\0\x02\0\0Mac OS X"  # what macOS writes to ._name beside a file
# Hidden entries among the files, as a Mac, a trash folder and a transfer at work leave them:
# each holds a record that must not load.
HIDDEN = {
    "song_data/A/._TRAAABASE000000001.json": APPLE_DOUBLE,
    "log_data/.Trashes/501/deleted.json": lines(event(30_000)),
    "log_data/2018/.partial.json": lines(event(30_001)),
}


# ================================================================ running etl.py

# How a job is stopped: Ctrl-C at a terminal, or SIGTERM (timeout, systemd, Kubernetes, Airflow),
# each sent to every process of the job; what the run exits with, and its one line.
STOPS = {
    "Ctrl-C": (signal.SIGINT, EXIT_INTERRUPTED, INTERRUPTED),
    "SIGTERM": (signal.SIGTERM, EXIT_TERMINATED, TERMINATED),
}
# The terminal or ssh session closed under a run: a stop too, checked where a run is stopped for
# the first time in a test, not at every moment the others are.
HANGUP = {"SIGHUP": (signal.SIGHUP, EXIT_HUNG_UP, HUNG_UP)}

# 1 MB log batches instead of 32 MB: a test-sized data set then spans many transactions, and a
# worker process parses while the database loads (one asked for: with one CPU none is by default).
SMALL_BATCHES = ("--batch-mb", "1", "--jobs", "1")


def expect(done: subprocess.CompletedProcess, code: int | None) -> subprocess.CompletedProcess:
    """The run, if it exited code (None: whatever it exited)."""
    assert code is None or done.returncode == code, (
        f"exit {done.returncode}, expected {code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done


def etl(
    data: Path,
    *extra: str,
    exit_code: int | None = EXIT_OK,
    env: dict | None = None,
    process: bool = False,
    timeout: float = 600,
    prefix: list[str] = (),
) -> subprocess.CompletedProcess:
    """etl.py --json on the data folder; it must end with exit_code, within timeout seconds. Its
    main() in this process (conftest.run_main), or with process=True in a new one, as a user
    types it: for the tests of what a user's terminal shows; with a prefix (unprivileged()), in
    a new one under it."""
    args = ("etl.py", "--data", str(data), "--no-progress", "--json", *extra)
    if prefix:
        done = subprocess.run(
            [*prefix, sys.executable, *args],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        return expect(done, exit_code)
    run = run_script if process else run_main
    return expect(run(*args, env=env, timeout=timeout, check=False), exit_code)


def load_lock_free(url: str | None = None) -> None:
    """A closed session's server process lets go of the load lock a moment after its client is
    gone: back-to-back loads in this process wait for it (on the database at url; None: the
    tests' own), as a user typing the next command never notices."""
    deadline = time.monotonic() + 15
    with using_database(url):
        while query(sql_queries.lock_holder, {"key": sql_queries.LOCK_KEY}):
            assert time.monotonic() < deadline, "the load lock stays held"
            time.sleep(0.01)


def dangling_link(path: Path) -> None:
    """A link at path to nothing."""
    path.symlink_to(path.parent / "missing.json")


def link_in_a_loop(path: Path) -> None:
    """A link at path to itself: following it never ends."""
    path.symlink_to(path.name)


# As root, file permissions do not stop reads: in a user namespace that maps an ordinary user to
# root, they do (root's files are that user's, their owner bits apply; the embedded server runs
# as root the same way, embedded.py).
UNPRIVILEGED = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--"]


def unprivileged() -> list[str]:
    """The command prefix under which file permissions apply to etl.py: none for an ordinary
    user; as root, a user namespace, or a skip where one cannot be made."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run([*UNPRIVILEGED, "true"]).returncode:
        pytest.skip(
            "root reads a folder whatever its permissions, and unshare cannot make an ordinary "
            "user here: the root-proof unreadable-folder tests cover the rejection"
        )
    return UNPRIVILEGED


def start_load(data: Path, *extra: str) -> subprocess.Popen:
    """etl.py in the background, in small batches, for tests that act while it loads."""
    return subprocess.Popen(
        [
            sys.executable,
            "etl.py",
            *SMALL_BATCHES,
            "--data",
            str(data),
            "--no-progress",
            "--json",
            *extra,
        ],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The clear-error contract: exactly one line on stderr, starting with 'error:'."""
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return err[0]


def embedded_socket_dir() -> Path:
    """The private socket folder of the tests' embedded server (skips under DATABASE_URL)."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the tests use DATABASE_URL, not an embedded server")
    running = embedded.running(Path(os.environ["SPARKIFY_PGDATA"]))
    assert running, "the test server is not running"
    return running[1]


def embedded_url(
    role: str = embedded.SUPERUSER, database: str = db.DATABASE, password: str | None = None
) -> str:
    """A connection string to the tests' embedded server over its socket, as role on database;
    trust authentication lets any password in (password goes in as written: encode it)."""
    user = role if password is None else f"{role}:{password}"
    return f"postgresql://{user}@/{database}?host={embedded_socket_dir()}&port={embedded.PORT}"


def server_url(database: str | None = None, options: str | None = None) -> str:
    """A connection string to the tests' server (DATABASE_URL's, or the embedded one) as their
    role: on database (default: theirs), with libpq's options (-c search_path=..., say) after
    any the URL gives."""
    given = db.options(db.Settings.from_env(), database)
    if options:
        given["options"] = f"{given['options']} {options}" if given.get("options") else options
    return db.as_url(given)


# What some tests need of the tests' role beyond what the scripts need (docs/database.md), as
# CREATE ROLE and GRANT name it, and the query that says whether the role holds it (with the
# role and the database). The embedded server's role is a superuser; a DATABASE_URL's may hold
# less: those tests skip there (requires).
SUPERUSER, CREATEDB = "SUPERUSER", "CREATEDB"
CREATE_ON_DATABASE = "CREATE on database {database}"
HOLDS = {
    SUPERUSER: (
        "SELECT rolsuper, current_user, current_database() FROM pg_roles "
        "WHERE rolname = current_user"
    ),
    CREATEDB: (
        "SELECT rolsuper OR rolcreatedb, current_user, current_database() FROM pg_roles "
        "WHERE rolname = current_user"
    ),
    CREATE_ON_DATABASE: (
        "SELECT has_database_privilege(current_database(), 'CREATE'), current_user, "
        "current_database()"
    ),
}


def requires(privilege: str, what: str) -> None:
    """Skip the test unless the tests' role holds privilege (of HOLDS) on their server; what:
    what the test does that needs it ("an event trigger", say), for the reason shown."""
    [(held, role, database)] = query(HOLDS[privilege])
    if not held:
        needed = privilege.format(database=database)
        pytest.skip(f"{what} needs {needed}, which role {role} lacks on this server")


def as_superuser(*statements: str | pgsql.Composable) -> None:
    """Statements run on the tests' server as their role (the embedded server's superuser; a
    test checks first that a DATABASE_URL's may: requires), outside a transaction (as CREATE and
    DROP DATABASE must)."""
    conn = db.connect(db.Settings.from_env(), dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def connection_error(url: str, root: Path) -> str:
    """etl.py on the base sample (written under root) with DATABASE_URL=url: the one error line
    it exits with (exit 3)."""
    data = base_sample(root / "data")
    done = etl(data, env={"DATABASE_URL": url}, exit_code=EXIT_ENVIRONMENT, process=True)
    return one_error_line(done)


class Watcher:
    """A connection that polls the load's progress while it runs."""

    def __init__(self):
        self.conn = db.connect(db.Settings.from_env())
        self.conn.autocommit = True
        self.watched: list[subprocess.Popen] = []

    def value(self, sql: str, params=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    def wait(self, sql: str, test, proc: subprocess.Popen, timeout: float = 60, params=None):
        self.watched.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.value(sql, params)
            if test(value):
                return value
            if proc.poll() is not None:
                raise AssertionError(
                    f"the load ended (exit {proc.returncode}) before the "
                    f"awaited point: {proc.communicate()}"
                )
            time.sleep(0.01)
        raise AssertionError(f"timeout waiting on {sql}")

    def lock_free(self, timeout: float = 15) -> None:
        """After a SIGKILL, the server ends the killed backend when it next talks to it."""
        deadline = time.monotonic() + timeout
        while self.value("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
            assert time.monotonic() < deadline, "the killed load's advisory lock stays held"
            time.sleep(0.05)

    def close(self):
        """The processes it watched that still run (the test failed before they ended) killed:
        they must not hold the load lock, or a statement, for the tests after."""
        self.conn.close()
        for proc in self.watched:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


# ================================================================ reading back


def rejects(run_id: int | None = None) -> list[tuple]:
    if run_id:
        return query(
            "SELECT path, line, reason, raw FROM load_rejects WHERE run_id = %s ORDER BY reject_id",
            (run_id,),
        )
    return query("SELECT path, line, reason, raw FROM load_rejects ORDER BY reject_id")


def manifest() -> dict[str, Counts]:
    return {
        row[0]: Counts(*row[1:])
        for row in query(
            "SELECT path, records, loaded, skipped, duplicates, rejected FROM load_manifest"
        )
    }


def last_run() -> int:
    return scalar("SELECT max(run_id) FROM load_runs")


def last_run_status() -> str:
    return scalar("SELECT status FROM load_runs ORDER BY run_id DESC LIMIT 1")


def crafted_items() -> list[int]:
    return [
        r[0]
        for r in query(
            "SELECT item_in_session FROM songplays WHERE user_id = %s ORDER BY item_in_session",
            (USER,),
        )
    ]


def refresh_refused(data: Path, folder: str, reason: str) -> str:
    """etl.py's error line refusing a full refresh that would lose what folder loaded."""
    return (
        f"error: not refreshing from {data}: what was loaded from {folder} cannot be loaded "
        f"again, as it cannot be listed ({reason}); nothing was emptied: mend it, or run without "
        "--full-refresh\n"
    )


def plus(**extra) -> dict[str, int]:
    """The base sample's row counts, plus some."""
    return {t: BASE[t] + extra.get(t, 0) for t in BASE}
