"""Issue 4, reliability: bad input, reconciliation, re-runs, kills, concurrent runs, clear errors
and security, each checked the real way: real PostgreSQL (the conftest's server), real
subprocesses of etl.py / create_tables.py / db.py, real files in a temporary data folder.

Small inputs are built per test: a base of 11 song files and 2 daily log files written here in
the real format, plus crafted lines whose every outcome is known in advance. Nothing depends on
the Udacity data, which the project cannot ship.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from conftest import PROJECT, counts, query, run_script, scalar, schema_objects, table_contents

import db
import embedded
import sql_queries

# What the base sample below holds:
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


def line(record) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def lines(*records) -> bytes:
    """JSON lines, each ended by a newline; bytes are taken as they are."""
    return b"".join((r if isinstance(r, bytes) else line(r)) + b"\n" for r in records)


def song(n: int, **changes) -> dict:
    """A song of an artist unknown to the sample."""
    record = {
        "num_songs": 1,
        "artist_id": "ARZZZZZ1187FB00001",
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


@pytest.fixture
def data(tmp_path) -> Path:
    """Fresh tables and a small data folder: 11 real songs, 2 real log files."""
    run_script("create_tables.py")
    return base_sample(tmp_path / "data")


# ================================================================ running and reading back


def etl(data: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_script("etl.py", "--data", str(data), "--no-progress", *extra, check=False)


def expect(done: subprocess.CompletedProcess, code: int) -> subprocess.CompletedProcess:
    assert done.returncode == code, (
        f"exit {done.returncode}, expected {code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done


def rejects(run_id: int | None = None) -> list[tuple]:
    where, params = ("WHERE run_id = %s", (run_id,)) if run_id else ("", None)
    return query(
        f"SELECT path, line, reason, raw FROM load_rejects {where} ORDER BY reject_id", params
    )


def manifest() -> dict[str, tuple]:
    """path: (records, loaded, skipped, duplicates, rejected)."""
    return {
        row[0]: tuple(row[1:])
        for row in query(
            "SELECT path, records, loaded, skipped, duplicates, rejected FROM load_manifest"
        )
    }


def last_run() -> int:
    return scalar("SELECT max(run_id) FROM load_runs")


def crafted_items() -> list[int]:
    return [
        r[0]
        for r in query(
            "SELECT item_in_session FROM songplays WHERE user_id = %s ORDER BY item_in_session",
            (USER,),
        )
    ]


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The clear-error contract: exactly one line on stderr, starting with 'error:'."""
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return err[0]


def plus(**extra) -> dict[str, int]:
    return {t: BASE[t] + extra.get(t, 0) for t in BASE}


# ================================================================ 1. bad input

G = event  # short names for the tables below
BAD_LOG = "log_data/bad/bad.json"

# id: (file content, expected rejects as (line or None, reason pattern), good plays in the file)
LOG_CASES = {
    "malformed JSON on a middle line": (
        lines(G(0), b'{"ts": 1543622401000, "page": "NextSong",', G(2)),
        [(2, r"^malformed JSON: ")],
        [0, 2],
    ),
    "truncated file, last line cut mid-object": (
        lines(G(0), G(1)) + line(G(2))[:60],
        [(3, r"^malformed JSON: ")],
        [0, 1],
    ),
    "empty log file": (b"", [(None, r"^empty file$")], []),
    "non-UTF-8 byte inside a string": (
        lines(G(0), line(G(1)).replace(b"London", b"Lon\xffdon"), G(2)),
        [(2, r"^not valid UTF-8$")],
        [0, 2],
    ),
    "a line that is a JSON array": (
        lines(G(0), b"[1,2]", G(2)),
        [(2, r"^not a JSON object but list$")],
        [0, 2],
    ),
    "a line that is a JSON string": (
        lines(G(0), b'"x"', G(2)),
        [(2, r"^not a JSON object but str$")],
        [0, 2],
    ),
    "ts absent": (lines(G(0), G(1, ts=DROP), G(2)), [(2, r"^ts missing$")], [0, 2]),
    'userId "" on a NextSong': (
        lines(G(0), G(1, userId=""), G(2)),
        [(2, r"^userId missing on a play$")],
        [0, 2],
    ),
    'ts as text "abc"': (
        lines(G(0), G(1, ts="abc"), G(2)),
        [(2, r"^ts is not an integer$")],
        [0, 2],
    ),
    "userId null on a play": (
        lines(G(0), G(1, userId=None), G(2)),
        [(2, r"^userId missing on a play$")],
        [0, 2],
    ),
    'userId "abc" on a play': (
        lines(G(0), G(1, userId="abc"), G(2)),
        [(2, r"^userId is not numeric$")],
        [0, 2],
    ),
    'length as text "12.5"': (
        lines(G(0), G(1, length="12.5"), G(2)),
        [(2, r"^length is not a number$")],
        [0, 2],
    ),
    r"NUL escape \u0000 inside a string": (
        lines(G(0), G(1, location="Lon\u0000don"), G(2)),
        [(2, r"\bNUL\b")],
        [0, 2],
    ),
}


def _records(content: bytes) -> int:
    return sum(1 for raw in content.split(b"\n") if raw.strip())


def load_expecting_rejects(data: Path, path: str, expected: list) -> tuple:
    """Run etl.py (exit 0); its rejects are the expected lines of path, with matching reasons.
    Returns the run's output, id and rejects."""
    done = expect(etl(data), 0)
    run_id = last_run()
    found = rejects(run_id)
    assert [(p, ln) for p, ln, _, _ in found] == [(path, ln) for ln, _ in expected], found
    for (_, _, reason, _), (_, pattern) in zip(found, expected, strict=True):
        assert re.search(pattern, reason), reason
    return done, run_id, found


@pytest.mark.parametrize("case", list(LOG_CASES))
def test_bad_log_record_is_rejected_and_the_rest_of_its_file_loads(data, case):
    content, expected, good = LOG_CASES[case]
    write(data, BAD_LOG, content)
    n_records, n_line_rejects = _records(content), sum(1 for ln, _ in expected if ln)
    whole_files = len(expected) - n_line_rejects

    done, run_id, found = load_expecting_rejects(data, BAD_LOG, expected)
    for _, ln, reason, raw in found:
        assert (raw is None) == (ln is None), raw
        shown = f"{data / BAD_LOG}:{ln if ln is not None else '-'}: {reason}"
        assert shown in done.stdout
    assert crafted_items() == good
    assert counts() == plus(songplays=len(good), users=1 if good else 0, time=len(good))
    assert manifest()[BAD_LOG] == (n_records, len(good), 0, 0, n_line_rejects)
    assert (
        f"log files: 3 (3 new); records: {BASE_LOG_RECORDS + n_records} = "
        f"{BASE['songplays'] + len(good)} loaded + {BASE_SKIPPED} skipped (not NextSong) + "
        f"0 duplicates + {n_line_rejects} rejected [reconciled]"
    ) in done.stdout
    assert (
        f"rejected: {n_line_rejects} records and {whole_files} whole files, kept in table "
        f"load_rejects (run_id = {run_id})"
    ) in done.stdout
    assert "checks: 10 passed, 0 failed" in done.stdout

    loaded = table_contents()
    strict = expect(etl(data, "--full-refresh", "--strict"), 1)
    assert [r[:3] for r in rejects(last_run())] == [r[:3] for r in found]
    assert f"{n_line_rejects} rejected [reconciled]" in strict.stdout
    assert table_contents() == loaded


BAD_SONG = "song_data/Z/bad.json"

# id: (file content, expected rejects, song numbers that load)
SONG_CASES = {
    "empty song file": (b"", [(None, r"^empty file$")], []),
    "song without song_id": (line(song(1, song_id=DROP)), [(1, r"^song_id missing$")], []),
    "several songs, one object per line": (lines(song(1), song(2), song(3)), [], [1, 2, 3]),
    "a JSON array of two songs": (json.dumps([song(1), song(2)]).encode(), [], [1, 2]),
    "one bad line among songs one per line": (
        lines(song(1), song(2, duration="12.5"), song(3)),
        [(2, r"^duration is not a number$")],
        [1, 3],
    ),
    "non-UTF-8 byte inside a song": (
        lines(song(1), line(song(2)).replace(b"Crafted song", b"Crafted\xff song"), song(3)),
        [(2, r"^not valid UTF-8$")],
        [1, 3],
    ),
    r"NUL escape \u0000 inside a title": (
        lines(song(1), song(2, title="Crafted\u0000song"), song(3)),
        [(2, r"\bNUL\b")],
        [1, 3],
    ),
}


@pytest.mark.parametrize("case", list(SONG_CASES))
def test_bad_song_record_is_rejected_and_the_rest_of_its_file_loads(data, case):
    content, expected, good = SONG_CASES[case]
    write(data, BAD_SONG, content)
    n_line_rejects = sum(1 for ln, _ in expected if ln)
    n_records = len(good) + n_line_rejects

    done, run_id, found = load_expecting_rejects(data, BAD_SONG, expected)
    assert [
        r[0]
        for r in query(
            "SELECT song_id FROM songs WHERE artist_id = %s ORDER BY 1", ("ARZZZZZ1187FB00001",)
        )
    ] == [song(n)["song_id"] for n in good]
    assert counts() == plus(songs=len(good), artists=1 if good else 0)
    assert manifest()[BAD_SONG] == (n_records, len(good), 0, 0, n_line_rejects)
    assert (
        f"song files: 12 (12 new); records: {11 + n_records} = {11 + len(good)} loaded + "
        f"{n_line_rejects} rejected [reconciled]"
    ) in done.stdout
    if expected:
        assert (
            f"rejected: {n_line_rejects} records and {len(expected) - n_line_rejects} whole "
            f"files, kept in table load_rejects (run_id = {run_id})"
        ) in done.stdout
    else:
        assert "rejected:" not in done.stdout
    assert "checks: 10 passed, 0 failed" in done.stdout

    loaded = table_contents()
    expect(etl(data, "--full-refresh", "--strict"), 1 if expected else 0)
    assert [r[:3] for r in rejects(last_run())] == [r[:3] for r in found]
    assert table_contents() == loaded


def _dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "missing.json")


def _directory(path: Path) -> None:
    path.mkdir()


def _no_permission(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file: the other two cases cover 'cannot read file'")
    path.write_bytes(lines(G(0)))
    path.chmod(0)


# A log path the walk finds (*.json) but that cannot be read. As root (CI), chmod 000 does not
# stop reading; a dangling symlink and a directory named *.json fail the same way for everyone.
UNREADABLE = {
    "dangling symlink": (_dangling_symlink, "No such file or directory"),
    "directory named x.json": (_directory, "Is a directory"),
    "chmod 000 (not as root)": (_no_permission, "Permission denied"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_file_is_rejected_whole_and_the_others_load(data, case):
    make, error = UNREADABLE[case]
    path = data / "log_data/bad/x.json"
    path.parent.mkdir(parents=True)
    make(path)
    try:
        done = expect(etl(data), 0)
        run_id = last_run()
        assert [r[:3] for r in rejects(run_id)] == [
            ("log_data/bad/x.json", None, f"cannot read file: {error}")
        ]
        assert counts() == BASE
        assert "log_data/bad/x.json" not in manifest()
        assert "log files: 3 (2 new, 1 unreadable)" in done.stdout
        assert (
            f"rejected: 0 records and 1 whole files, kept in table load_rejects (run_id = {run_id})"
        ) in done.stdout
        assert f"{path}:-: cannot read file: {error}" in done.stdout
        expect(etl(data, "--strict"), 1)
    finally:
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


# ================================================================ 2. reconciliation


def test_summary_and_manifest_reconcile_every_record(data):
    a = [
        G(0),
        G(1),
        other_page(2, "Home", userId=""),
        G(1),
        b'{"page":',
        G(3, userId="abc"),
        other_page(5, "Logout"),
        G(4),
    ]
    b = [G(4), G(6)]  # item 4 is already in a.json: a duplicate across files
    write(data, "log_data/2018/12/a.json", lines(*a))
    write(data, "log_data/2018/12/b.json", lines(*b))

    done = expect(etl(data), 0)
    assert (
        "log files: 4 (4 new); records: 136 = 115 loaded + 17 skipped (not NextSong) + "
        "2 duplicates + 2 rejected [reconciled]"
    ) in done.stdout
    assert (
        "song files: 11 (11 new); records: 11 = 11 loaded + 0 rejected [reconciled]" in done.stdout
    )
    assert manifest() == {
        **{
            f"{BASE_SONG_DIR}/{f.name}": (1, 1, 0, 0, 0)
            for f in (data / BASE_SONG_DIR).glob("*.json")
        },
        "log_data/2018/11/2018-11-01-events.json": (15, 11, 4, 0, 0),
        "log_data/2018/11/2018-11-03-events.json": (111, 100, 11, 0, 0),
        "log_data/2018/12/a.json": (8, 3, 2, 1, 2),
        "log_data/2018/12/b.json": (2, 1, 0, 1, 0),
    }
    for path, (records, loaded, skipped, duplicates, rejected) in manifest().items():
        assert records == loaded + skipped + duplicates + rejected, path
    assert crafted_items() == [0, 1, 4, 6]
    assert [r[:2] for r in rejects()] == [
        ("log_data/2018/12/a.json", 5),
        ("log_data/2018/12/a.json", 6),
    ]
    assert (
        scalar(
            "SELECT count(*) FROM songplays p JOIN load_manifest m USING (file_id) "
            "WHERE m.path = 'log_data/2018/12/a.json'"
        )
        == 3
    )


# ================================================================ 3. re-runs and incremental loads


def bookkeeping() -> list[tuple]:
    return query(
        "SELECT path, size_bytes, mtime_ns, sha256, run_id, records, loaded, skipped, "
        "duplicates, rejected, loaded_at FROM load_manifest ORDER BY path"
    )


def test_touched_files_with_unchanged_content_set_nothing_aside(data):
    expect(etl(data), 0)
    for path in data.rglob("*.json"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    done = expect(etl(data), 0)
    assert "nothing new" in done.stdout
    assert "songplays'" not in done.stdout


def test_second_run_with_nothing_new_changes_nothing(data):
    expect(etl(data), 0)
    tables, files, n_rejects = table_contents(), bookkeeping(), len(rejects())

    done = expect(etl(data), 0)
    assert "nothing new: every file is unchanged since it was loaded" in done.stdout
    assert "song files: 11 (11 unchanged); records: 0 = 0 loaded + 0 rejected" in done.stdout
    assert "log files: 2 (2 unchanged); records: 0 = 0 loaded" in done.stdout
    assert "checks: not run, nothing changed since the last run" in done.stdout
    assert table_contents() == tables
    assert bookkeeping() == files
    assert len(rejects()) == n_rejects
    assert query("SELECT status FROM load_runs ORDER BY run_id") == [("succeeded",)] * 2


def test_new_log_file_is_loaded_alone(data):
    expect(etl(data), 0)
    before = table_contents()
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1), other_page(2, "Home"), G(3)))

    done = expect(etl(data), 0)
    assert (
        "log files: 3 (2 unchanged, 1 new); records: 4 = 3 loaded + 1 skipped (not NextSong)"
        " + 0 duplicates + 0 rejected [reconciled]"
    ) in done.stdout
    assert "song files: 11 (11 unchanged); records: 0 = 0 loaded" in done.stdout
    assert (
        "rows written: songplays +3 (= 114), users +1 (= 13), songs +0 (= 11), "
        "artists +0 (= 11), time +3 (= 114)" in done.stdout
    )
    after = table_contents()
    assert {t: len(rows) for t, rows in after.items()} == plus(songplays=3, users=1, time=3)
    assert set(before["songplays"]) < set(after["songplays"])
    assert query("SELECT path FROM load_manifest WHERE run_id = %s", (last_run(),)) == [
        ("log_data/2018/12/new.json",)
    ]
    assert "bulk load" not in done.stdout  # a small load checks each row as it goes in


def test_appended_log_line_is_loaded_without_duplicating_plays(data):
    path = write(data, "log_data/2018/12/new.json", lines(G(0), G(1)))
    expect(etl(data), 0)
    with path.open("ab") as f:
        f.write(lines(G(2)))

    done = expect(etl(data), 0)
    assert (
        "log files: 3 (2 unchanged, 1 changed); records: 3 = 3 loaded + 0 skipped "
        "(not NextSong) + 0 duplicates + 0 rejected [reconciled]"
    ) in done.stdout
    assert crafted_items() == [0, 1, 2]
    assert counts() == plus(songplays=3, users=1, time=3)
    assert query(
        "SELECT records, loaded, duplicates, size_bytes, sha256, run_id "
        "FROM load_manifest WHERE path = 'log_data/2018/12/new.json'"
    ) == [(3, 3, 0, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest(), last_run())]
    assert "checks: 10 passed, 0 failed" in done.stdout


def fresh_load_of(data: Path) -> dict[str, list[tuple]]:
    run_script("create_tables.py")
    expect(etl(data), 0)
    return table_contents()


def test_edited_log_event_is_reloaded_and_the_new_value_wins(data):
    path = write(data, "log_data/2018/12/new.json", lines(G(0), G(1), G(2)))
    expect(etl(data), 0)
    assert (
        scalar("SELECT song_id FROM songplays WHERE user_id = %s AND item_in_session = 1", (USER,))
        == FACE["song_id"]
    )
    path.write_bytes(lines(G(0), G(1, song="Another Song", artist="Nobody", length=100.0), G(2)))

    done = expect(etl(data), 0)
    assert "log files: 3 (2 unchanged, 1 changed); records: 3 = 3 loaded" in done.stdout
    assert query(
        "SELECT item_in_session, song_title, artist_name, song_length, song_id "
        "FROM songplays WHERE user_id = %s ORDER BY 1",
        (USER,),
    ) == [
        (0, "Face the Ashes", "Gob", Decimal("209.60608"), FACE["song_id"]),
        (1, "Another Song", "Nobody", Decimal("100"), None),
        (2, "Face the Ashes", "Gob", Decimal("209.60608"), FACE["song_id"]),
    ]
    assert manifest()["log_data/2018/12/new.json"] == (3, 3, 0, 0, 0)
    assert table_contents() == fresh_load_of(data)


def test_play_removed_from_a_changed_log_file_takes_its_contributions_with_it(data):
    """A changed file that no longer holds a play: the play, its instant in time and the user
    level it set go, as a fresh load of the files as they are now would have it."""
    write(data, "log_data/2018/12/a.json", lines(G(0, level="free"), G(1, level="free")))
    path = write(data, "log_data/2018/12/b.json", lines(G(2, level="paid")))
    expect(etl(data), 0)
    assert scalar("SELECT level FROM users WHERE user_id = %s", (USER,)) == "paid"
    path.write_bytes(lines(G(3, userId="901")))  # another user's play now

    done = expect(etl(data), 0)
    assert "log files: 4 (3 unchanged, 1 changed); records: 1 = 1 loaded" in done.stdout
    assert crafted_items() == [0, 1]
    problems = {
        "user level still set by the removed play": scalar(
            "SELECT level FROM users WHERE user_id = %s", (USER,)
        )
        != "free",
        "time row of the removed play left behind": scalar(
            "SELECT count(*) FROM time WHERE start_time = to_timestamp(%s / 1000.0)", (T0 + 2000,)
        )
        != 0,
    }
    assert not [name for name, found in problems.items() if found]
    reloaded = table_contents()
    assert reloaded == fresh_load_of(data)


def test_full_refresh_reloads_everything_to_identical_tables(data):
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1), G(2)))
    expect(etl(data), 0)
    before = table_contents()

    done = expect(etl(data, "--full-refresh"), 0)
    assert "song files: 11 (11 new); records: 11 = 11 loaded + 0 rejected" in done.stdout
    assert (
        "log files: 3 (3 new); records: 129 = 114 loaded + 15 skipped (not NextSong) + "
        "0 duplicates + 0 rejected [reconciled]"
    ) in done.stdout
    assert table_contents() == before
    assert len(manifest()) == 14


def test_songs_arriving_after_their_plays_resolve_them(tmp_path):
    run_script("create_tables.py")
    data = base_sample(tmp_path / "data", songs=False)
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1, song="Unknown")))
    expect(etl(data), 0)
    assert query(
        "SELECT song_id, artist_id FROM songplays WHERE user_id = %s ORDER BY item_in_session",
        (USER,),
    ) == [(None, None), (None, None)]

    write(data, f"{BASE_SONG_DIR}/{FACE['file']}", face_song())
    done = expect(etl(data), 0)
    assert "plays resolved to a song: 1 of 113 (1 this run)" in done.stdout
    assert query(
        "SELECT song_id, artist_id FROM songplays WHERE user_id = %s ORDER BY item_in_session",
        (USER,),
    ) == [(FACE["song_id"], FACE["artist_id"]), (None, None)]
    assert "checks: 10 passed, 0 failed" in done.stdout


def test_instants_are_stored_exactly_whatever_the_sessions_time_zone(data):
    write(data, "log_data/2018/12/tz.json", lines(G(0), G(1)))
    run_script("etl.py", "--data", str(data), "--no-progress", env={"PGTZ": "Pacific/Chatham"})
    assert query(
        "SELECT extract(epoch FROM p.start_time) * 1000, t.hour, t.day "
        "FROM songplays p JOIN time t USING (start_time) WHERE p.user_id = %s "
        "ORDER BY 1",
        (USER,),
    ) == [(Decimal(T0), 0, 1), (Decimal(T0 + 1000), 0, 1)]


def test_older_events_never_overwrite_a_newer_user_level(data):
    def user():
        return query("SELECT first_name, level FROM users WHERE user_id = %s", (USER,))[0]

    write(data, "log_data/2018/12/b-newer.json", lines(G(10, level="paid")))
    expect(etl(data), 0)
    assert user() == ("Ada", "paid")

    # Loaded later, but older: it must not win.
    write(data, "log_data/2018/12/a-older.json", lines(G(0, level="free", firstName="Old")))
    expect(etl(data), 0)
    assert user() == ("Ada", "paid")
    assert query(
        "SELECT item_in_session, level FROM songplays WHERE user_id = %s ORDER BY 1", (USER,)
    ) == [(0, "free"), (10, "paid")]

    # Loaded later and newer: it wins.
    write(data, "log_data/2018/12/c-newest.json", lines(G(20, level="free", firstName="New")))
    expect(etl(data), 0)
    assert user() == ("New", "free")
    assert table_contents() == fresh_load_of(data)


def test_first_load_sets_foreign_keys_aside_and_restores_them_as_created(data):
    created = schema_objects()
    done = expect(etl(data), 0)
    assert (
        "bulk load: set songplays' foreign keys and file_id index aside while loading; back "
        "now, checked over every row"
    ) in done.stdout
    assert schema_objects() == created
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        query(
            "INSERT INTO songplays (start_time, user_id, level, session_id, item_in_session, "
            "song_title, file_id) VALUES (now(), 1, 'free', 1, 1, 'x', 1)"
        )


def test_load_goes_on_with_keys_in_place_while_a_session_holds_songplays(data):
    holder = db.connect(db.Settings.from_env())
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM songplays")  # a transaction stays open
        done = expect(etl(data), 0)
        assert holder.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    finally:
        holder.close()
    assert "bulk load" not in done.stdout
    assert counts() == BASE


def load_into_a_deadlock(data: Path, first: str, then: str) -> subprocess.CompletedProcess:
    """etl.py, while another session that ran `first` runs `then` as soon as the load waits for
    a lock on time. If that closes a cycle, the load is the one to notice the deadlock: the
    session only looks for one after 60 s."""
    session = db.connect(db.Settings.from_env())
    watch = Watcher()
    try:
        with session.cursor() as cur:
            try:
                cur.execute("SET deadlock_timeout = '60s'")
            except psycopg2.errors.InsufficientPrivilege:
                pytest.skip("setting deadlock_timeout needs a superuser (DATABASE_URL's is not)")
            cur.execute(first)
            load = start_load(data)
            watch.wait(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'time'::regclass",
                bool,
                load,
            )
            cur.execute(then)
        session.rollback()
        out, err = load.communicate(timeout=60)
    finally:
        session.close()
        watch.close()
    return subprocess.CompletedProcess(load.args, load.returncode, out, err)


def test_load_goes_on_with_keys_in_place_when_setting_them_aside_would_deadlock(data):
    """A session that read time reads songplays while the load, holding songplays, waits for
    time to set the keys aside: the load backs off and loads with the keys in place."""
    done = expect(
        load_into_a_deadlock(data, "SELECT count(*) FROM time", "SELECT count(*) FROM songplays"), 0
    )
    assert "bulk load" not in done.stdout
    assert counts() == BASE


def test_foreign_key_that_would_deadlock_coming_back_is_left_for_the_next_run(data):
    """A writer that touched time then writes songplays, while the load holds songplays and
    waits for time to add a key back: the load names the key and fails (exit 1) with its
    summary, and the next run adds the key back."""
    created = schema_objects()
    expect(etl(data), 0)
    query("ALTER TABLE songplays DROP CONSTRAINT songplays_start_time_fkey; SELECT 1")
    done = expect(
        load_into_a_deadlock(
            data,
            "INSERT INTO time SELECT * FROM time LIMIT 0",
            "LOCK songplays IN ROW EXCLUSIVE MODE",
        ),
        1,
    )
    assert (
        "  NOT added back, the next run tries again: songplays' songplays_start_time_fkey: "
        "it deadlocked with another session's writes\n"
    ) in done.stdout
    assert scalar("SELECT status FROM load_runs ORDER BY run_id DESC LIMIT 1") == "failed"
    done = expect(etl(data), 0)
    assert "added back songplays' songplays_start_time_fkey, found missing" in done.stdout
    assert schema_objects() == created


def test_foreign_key_that_cannot_come_back_fails_the_run_naming_it_and_the_rest_come_back(data):
    """Someone removed two foreign keys and wrote a play of an unknown user: the next run adds
    back the key the data allows, fails naming the other, and once the play is gone the run
    after it adds that one back too."""
    created = schema_objects()
    expect(etl(data), 0)
    query(
        "ALTER TABLE songplays DROP CONSTRAINT songplays_user_id_fkey, "
        "DROP CONSTRAINT songplays_start_time_fkey; "
        "INSERT INTO songplays (start_time, user_id, level, session_id, item_in_session, "
        "song_title, file_id) SELECT start_time, 424242, 'free', 1, 1, 'x', 1 FROM time LIMIT 1"
        " RETURNING 1"
    )
    done = expect(etl(data), 1)
    assert (
        "  added back songplays' songplays_start_time_fkey, found missing (as an interrupted "
        "bulk load leaves them); checked over every row\n"
        "  NOT added back, the next run tries again: songplays' songplays_user_id_fkey: "
        'insert or update on table "songplays" violates foreign key constraint '
        '"songplays_user_id_fkey"\n'
    ) in done.stdout
    assert scalar("SELECT status FROM load_runs ORDER BY run_id DESC LIMIT 1") == "failed"
    assert len(schema_objects()) == len(created) - 1

    query("DELETE FROM songplays WHERE user_id = 424242 RETURNING 1")
    done = expect(etl(data), 0)
    assert "added back songplays' songplays_user_id_fkey, found missing" in done.stdout
    assert schema_objects() == created


# ======================================================== 4 and 5: a load that takes a while

# etl.py with 1 MB log batches instead of 32 MB: the test-sized data set then spans ~20
# transactions and a worker process parses while the database loads.
SMALL_BATCHES = ("--batch-mb", "1")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    import generate_data

    root = tmp_path_factory.mktemp("big") / "data"
    generate_data.generate(out=str(root), songs=200, events=40_000, seed=4, days=20)
    return root


@pytest.fixture(scope="module")
def baseline(big) -> dict[str, list[tuple]]:
    """The tables after one uninterrupted, plain `python etl.py`."""
    run_script("create_tables.py")
    expect(etl(big), 0)
    return table_contents()


def start_load(data: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "etl.py", *SMALL_BATCHES, "--data", str(data), "--no-progress"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def files_in(data: Path, *folders: str) -> int:
    return sum(
        1
        for folder in folders or ("song_data", "log_data")
        for _ in (data / folder).rglob("*.json")
    )


class Watcher:
    """A connection that polls the load's progress while it runs."""

    def __init__(self):
        self.conn = db.connect(db.Settings.from_env())
        self.conn.autocommit = True

    def value(self, sql: str):
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]

    def wait(self, sql: str, test, proc: subprocess.Popen, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.value(sql)
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
        self.conn.close()


MANIFEST_ROWS = "SELECT count(*) FROM load_manifest"
SONGPLAYS_FOREIGN_KEYS = (
    "SELECT count(*) FROM pg_constraint WHERE conrelid = 'songplays'::regclass AND contype = 'f'"
)
RUNS = "SELECT count(*) FROM load_runs"


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


def kill_at(proc: subprocess.Popen) -> set[int]:
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
    songs = files_in(big, "song_data")
    watch = Watcher()
    orphans, at_kill, foreign_keys = set(), [], []
    try:
        # 1: right after the first batch (the songs) committed, while logs are being loaded;
        # 2: a resumed run, once a few more log batches committed; 3: a resumed run that has
        # started its run row but committed nothing yet.
        points = [
            (MANIFEST_ROWS, lambda n: n > 0),
            (MANIFEST_ROWS, lambda n, s=songs: n >= s + 6),
            (RUNS, lambda n: n >= 3),
        ]
        for sql, reached in points:
            watch.lock_free()
            proc = start_load(big)
            watch.wait(sql, reached, proc)
            orphans |= kill_at(proc)
            at_kill.append(watch.value(MANIFEST_ROWS))
            foreign_keys.append(watch.value(SONGPLAYS_FOREIGN_KEYS))
        assert 0 < at_kill[0] < at_kill[1] < total, at_kill
        assert foreign_keys == [0, 0, 0]  # each killed in the middle of a bulk load
        assert at_kill[2] == at_kill[1]
        assert counts()["songplays"] < len(baseline["songplays"])

        watch.lock_free()
        proc = start_load(big)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        assert re.search(rf"log files: \d+ \({at_kill[1] - songs} unchanged, \d+ new\)", out), out
        assert "checks: 10 passed, 0 failed" in out
        assert "songplays' foreign keys and file_id index" in out  # set aside, back now
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
    assert scalar("SELECT count(*) FROM load_manifest") == total


def test_killed_load_leaves_no_worker_process_behind(big):
    run_script("create_tables.py")
    watch = Watcher()
    try:
        watch.lock_free()
        proc = start_load(big)
        watch.wait(MANIFEST_ROWS, lambda n: n > 0, proc)
        workers = descendants(proc.pid)
        assert workers, "the load had started no worker process: nothing to check"
        kill_at(proc)
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
        reap(workers if "workers" in locals() else set())


def test_two_loads_at_once_one_loads_and_the_other_exits_4(big, baseline):
    run_script("create_tables.py")
    first, second = start_load(big), start_load(big)
    results = [
        (p.returncode, out, err)
        for p in (first, second)
        for out, err in [p.communicate(timeout=300)]
    ]
    assert sorted(code for code, _, _ in results) == [0, 4], results
    loser = next(r for r in results if r[0] == 4)
    err = loser[2].strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "another load is running" in err[0], (
        loser
    )
    assert loser[1] == ""
    assert table_contents() == baseline
    assert query("SELECT status FROM load_runs") == [("succeeded",)]


def test_create_tables_refuses_while_a_load_runs_and_leaves_tables_alone(big, baseline):
    run_script("create_tables.py")
    watch = Watcher()
    try:
        proc = start_load(big)
        watch.wait(MANIFEST_ROWS, lambda n: n > 0, proc)
        refused = run_script("create_tables.py", check=False)
        still_running = proc.poll() is None
        out, err = proc.communicate(timeout=300)
    finally:
        watch.close()
    assert still_running, "the load ended before create_tables.py ran: the test proves nothing"
    assert refused.returncode == 4, refused
    message = one_error_line(refused)
    assert "another load is running" in message
    assert proc.returncode == 0, out + err
    assert table_contents() == baseline
    assert query("SELECT status FROM load_runs") == [("succeeded",)]


def test_create_tables_ends_a_session_holding_an_open_transaction_on_songplays(data):
    expect(etl(data), 0)
    holder = db.connect(db.Settings.from_env())
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM songplays")  # psycopg2 opened a transaction
            assert cur.fetchone()[0] == BASE["songplays"]
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        assert holder.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS

        done = run_script("create_tables.py", timeout=60, check=False)
        assert done.returncode == 0, done
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


# ================================================================ 6. clear errors

UNREACHABLE = "postgresql://u:s3cret@127.0.0.1:1/x"


def run_plain(*args: str, env: dict) -> subprocess.CompletedProcess:
    """Like run_script, with nothing on stdin (psql must not wait for input)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [["etl.py", "--data", "{data}"], ["create_tables.py"], ["db.py", "psql"]],
    ids=" ".join,
)
def test_unreachable_server_is_one_clear_error_line_without_the_password(tmp_path, command):
    data = base_sample(tmp_path / "data")
    done = run_plain(*[a.format(data=data) for a in command], env={"DATABASE_URL": UNREACHABLE})
    assert done.returncode == 3, done
    message = one_error_line(done)
    assert "127.0.0.1" in message
    assert "s3cret" not in done.stdout + done.stderr


def test_db_url_prints_the_url_without_the_password():
    done = run_plain("db.py", "url", env={"DATABASE_URL": UNREACHABLE})
    assert done.returncode == 0, done
    assert done.stdout == "postgresql://u:***@127.0.0.1:1/x\n"
    assert "s3cret" not in done.stdout + done.stderr


def embedded_socket_dir() -> Path:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the tests use DATABASE_URL, not an embedded server")
    running = embedded.running(Path(os.environ["SPARKIFY_PGDATA"]))
    assert running, "the test server is not running"
    return running[1]


def test_psql_gets_no_password_on_its_command_line():
    """Any local user can read another process's command line (ps)."""
    url = f"postgresql://postgres:s3cret@/{db.DATABASE}?host={embedded_socket_dir()}&port={embedded.PORT}"
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


def drop_all_tables() -> None:
    conn = db.connect(db.Settings.from_env())
    try:
        with conn, conn.cursor() as cur:
            for table in sql_queries.TABLES:
                cur.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    finally:
        conn.close()


def test_missing_tables_exit_3_naming_create_tables(data):
    drop_all_tables()
    try:
        done = expect(etl(data), 3)
        message = one_error_line(done)
        assert "create_tables.py" in message
        assert all(t in message for t in sql_queries.TABLES), message
    finally:
        run_script("create_tables.py")


def test_missing_database_exits_3_naming_create_tables(tmp_path):
    data = base_sample(tmp_path / "data")
    url = f"postgresql://postgres@/no_such_db?host={embedded_socket_dir()}&port={embedded.PORT}"
    done = run_plain("etl.py", "--data", str(data), "--no-progress", env={"DATABASE_URL": url})
    assert done.returncode == 3, done
    message = one_error_line(done)
    assert "no_such_db" in message and "create_tables.py" in message


def test_missing_data_folder_exits_3_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    done = expect(etl(missing), 3)
    assert one_error_line(done) == (
        f"error: data folder {missing} not found (choose one with --data)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    done = expect(etl(empty), 3)
    assert str(empty) in one_error_line(done)


# ================================================================ 7. security

SOURCES = sorted(
    p.name for p in PROJECT.glob("*.py") if re.search(r"\.(execute|copy_expert)\(", p.read_text())
)
EXECUTORS = {"execute", "executemany", "copy_expert", "mogrify"}
TABLE_TEMPLATES = {"copy_into", "row_count"}  # the only templates: a {table} placeholder


def _sql_argument(call: ast.Call) -> ast.AST | None:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if name in EXECUTORS and call.args:
        return call.args[0]
    if name == "execute_batch" and len(call.args) > 1:
        return call.args[1]
    return None


@pytest.mark.parametrize("source", SOURCES)
def test_sql_text_is_never_built_from_values(source):
    """Every statement run is a sql_queries constant, a psycopg2.sql composition, a literal,
    or one of the two {table} templates filled with a table name."""
    tree = ast.parse((PROJECT / source).read_text())
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        arg = _sql_argument(call)
        if arg is None:
            continue
        where = f"{source}:{call.lineno}: {ast.unparse(arg)}"
        if isinstance(arg, ast.Attribute) and ast.unparse(arg.value) in ("sql", "sql_queries"):
            continue  # a constant of sql_queries
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            continue
        if isinstance(arg, ast.Call) and ast.unparse(arg.func).startswith("pgsql.SQL("):
            continue  # psycopg2.sql with Identifier()s
        if isinstance(arg, ast.Name):
            continue  # a loop over sql_queries lists (checked: the loop's source)
        assert (
            isinstance(arg, ast.Call)
            and isinstance(arg.func, ast.Attribute)
            and arg.func.attr == "format"
            and ast.unparse(arg.func.value) in {f"sql.{t}" for t in TABLE_TEMPLATES}
            and not arg.args
            and [k.arg for k in arg.keywords] == ["table"]
        ), where
    text = (PROJECT / source).read_text()
    assert not re.search(r"execute\(\s*f[\"']", text)
    assert not re.search(r"execute\([^)]*[\"']\s*%\s*[\w(]", text)


def test_sql_queries_is_fixed_text_built_from_its_own_constants_only():
    """Nothing reaches sql_queries' text at run time: it defines no function and imports
    nothing, so every statement is fixed when the module loads; the only placeholders are the
    table-name templates and psycopg2.sql's identifier template."""
    tree = ast.parse((PROJECT / "sql_queries.py").read_text())
    assert not [
        n
        for n in ast.walk(tree)
        if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Import, ast.ImportFrom)
        )
    ]
    assert not [
        n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod)
    ], "a % format"
    templates = {
        name: re.findall(r"\{(\w+)\}", value)
        for name, value in vars(sql_queries).items()
        if isinstance(value, str) and re.search(r"\{\w+\}", value)
    }
    assert templates == {**{t: ["table"] for t in TABLE_TEMPLATES}, "create_database": ["name"]}


def test_embedded_server_data_and_socket_directories_are_private():
    socket_dir = embedded_socket_dir()
    pgdata = Path(os.environ["SPARKIFY_PGDATA"])
    assert pgdata.stat().st_mode & 0o777 == 0o700
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    socket = socket_dir / f".s.PGSQL.{embedded.PORT}"
    assert socket.is_socket()
    assert socket.stat().st_mode & 0o777 == 0o700
