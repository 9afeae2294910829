"""A bulk load writes its plays straight into songplays, each play's song resolved by the parse
worker from the song keys the database hands it: the result must be the database's own join on
(title, artist name, duration), whatever the text and however close the durations."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path

import pyarrow
import pytest
from builders import CRAFTED_ARTIST, SESSION, etl, event, line, log_file, other_page, song, write
from conftest import PROPERTY, query, run_script
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import cli
import extract
from contract import KEY_BYTES, Limits
from workers import Preparer, _part_of, _send_parts

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

# Near misses on every field: accents, a trailing space, case, other scripts, and durations that
# differ in their last bit (0.1 + 0.2 is not 0.3) or only in decimal digits a float keeps; and
# text that CSV, which the keys travel as, quotes or could take for a NULL or a number.
TITLES = ["Halo", "Hälo", "Halo ", "halo", "ハロー", 'Say "Halo", again', "Ha\nlo", "NaN", "\\N"]
ARTISTS = ["Beyoncé", "Beyonce", "Gob", "NULL", " , "]
DURATIONS = [0.1 + 0.2, 0.3, 1e-7, 209.60608, 209.606080000001, 123.45678901234568]

SONGS = st.lists(
    st.tuples(
        st.sampled_from(TITLES),
        st.integers(0, len(ARTISTS) - 1),
        st.integers(0, 1),  # the artist id: two may share a name, one's songs name it otherwise
        st.sampled_from(DURATIONS),
    ),
    min_size=1,
    max_size=8,
)
PLAYS = st.lists(
    st.tuples(
        st.sampled_from(TITLES),
        st.one_of(st.none(), st.sampled_from(ARTISTS)),
        st.sampled_from(DURATIONS),
    ),
    min_size=1,
    max_size=12,
)

# What the staged merge does in the database: each play joined to the smallest song_id of its
# title, artist name (as the song's file gives it) and duration.
DATABASE_JOIN = """
SELECT p.session_id, p.item_in_session, k.song_id, k.artist_id
FROM songplays p
LEFT JOIN (SELECT DISTINCT ON (title, artist_name, duration)
                  title, artist_name, duration, song_id, artist_id
           FROM songs
           ORDER BY title, artist_name, duration, song_id) k
       ON k.title = p.song_title AND k.artist_name = p.artist_name
      AND k.duration = p.song_length
ORDER BY 1, 2"""
STORED = "SELECT session_id, item_in_session, song_id, artist_id FROM songplays ORDER BY 1, 2"


@hypothesis_settings(PROPERTY, max_examples=20)
@given(songs=SONGS, plays=PLAYS)
def test_a_bulk_load_resolves_each_play_as_the_databases_join_does(songs, plays, tmp_path_factory):
    data = tmp_path_factory.mktemp("direct")
    for n, (title, artist, artist_id, duration) in enumerate(songs):
        record = song(
            n,
            title=title,
            artist_name=ARTISTS[artist],
            artist_id=f"AR{artist_id:016d}",
            duration=duration,
        )
        write(data, f"song_data/{n}.json", line(record))
    events = [
        event(item, song=title, artist=artist, length=duration)
        for item, (title, artist, duration) in enumerate(plays)
    ]
    # Other pages, for a log file bigger than the empty songplays on disk: a bulk load.
    pages = [other_page(len(plays) + n, "Home") for n in range(30)]
    write(data, "log_data/day.json", log_file(*events, *pages))
    run_script("create_tables.py")

    report = json.loads(etl(data).stdout)

    expected = query(DATABASE_JOIN)
    assert report["keys"]["set_aside"] is True  # a first load: a bulk load
    assert report["tables"]["songplays"]["after"] == len(plays)
    assert query(STORED) == expected
    assert report["plays_resolved"]["this_run"] == sum(1 for *_, song_id, _ in expected if song_id)
    # the files' ids in the order the run loads them, songs first, as a staged load numbers them
    songs_then_logs = sorted(f"song_data/{n}.json" for n in range(len(songs))) + [
        "log_data/day.json"
    ]
    assert query("SELECT path FROM load_manifest ORDER BY file_id") == [
        (path,) for path in songs_then_logs
    ]


@pytest.mark.parametrize("duration", [0.0, -0.0])
def test_a_play_of_length_minus_zero_is_resolved_as_the_databases_join_resolves_it(
    duration, tmp_path
):
    # numeric has one zero: the database's join takes a length of -0.0 for the song of
    # duration 0, as the staged merge does; a float join keeps -0.0 apart from 0.0.
    write(tmp_path, "song_data/zero.json", line(song(0, title="Silence", duration=duration)))
    plays = [event(0, song="Silence", artist="Crafted", length=-0.0)]
    pages = [other_page(1 + n, "Home") for n in range(30)]  # a bulk load
    write(tmp_path, "log_data/day.json", log_file(*plays, *pages))
    run_script("create_tables.py")

    report = json.loads(etl(tmp_path).stdout)

    assert report["keys"]["set_aside"] is True
    assert query(DATABASE_JOIN) == [
        (plays[0]["sessionId"], 0, "SOZZZZZ12A8C000000", CRAFTED_ARTIST)
    ]
    assert query(STORED) == query(DATABASE_JOIN)
    assert report["plays_resolved"]["this_run"] == 1


# Song keys reach the parse worker as the CSV text COPY writes: a quote, a comma, line breaks,
# words a CSV reader may take for a NULL or a number, and a duration that needs 17 digits.
CSV_HOSTILE = [
    ('Say "Halo", again', "Gob", 209.60608),
    ("Two\nlines", "Gob", 209.60608),
    ("Carriage\r\nreturn", "Gob", 209.60608),
    ("NULL", "NULL", 209.60608),
    ("NaN", "nan", 209.60608),
    ("\\N", "N/A", 209.60608),
    ("Halo", "Gob", 0.1 + 0.2),
]


def test_a_bulk_load_resolves_plays_of_songs_whose_text_csv_quotes_or_may_read_as_null(
    tmp_path,
):
    for n, (title, artist, duration) in enumerate(CSV_HOSTILE):
        record = song(
            n, title=title, artist_name=artist, artist_id=f"AR{n:016d}", duration=duration
        )
        write(tmp_path, f"song_data/{n}.json", line(record))
    plays = [
        event(n, song=title, artist=artist, length=duration)
        for n, (title, artist, duration) in enumerate(CSV_HOSTILE)
    ]
    pages = [other_page(len(plays) + n, "Home") for n in range(30)]  # a bulk load
    write(tmp_path, "log_data/day.json", log_file(*plays, *pages))
    run_script("create_tables.py")

    report = json.loads(etl(tmp_path).stdout)

    assert report["keys"]["set_aside"] is True
    assert query("SELECT item_in_session, song_id, artist_id FROM songplays ORDER BY 1") == [
        (n, f"SOZZZZZ12A8C{n:06d}", f"AR{n:016d}") for n in range(len(CSV_HOSTILE))
    ]


# (a song file's text, a play's text of the same song, what both become): text repair on both
# sides, so text the repair changes matches itself, and a song file's mojibake its play's.
REPAIRED = [
    ("Â£5", "Â£5", "£5"),  # looks like mojibake: repaired on both sides alike
    ("Caf\u00c3\u00a9", "Caf\u00c3\u0083\u00c2\u00a9", "Café"),  # encoded once, and twice
    ("Café", "Caf\u00c3\u0083\u00c2\u00a9", "Café"),  # the real dataset's case
    ("Sigur Rós", "Sigur Rós", "Sigur Rós"),
    ("Åžebnem Ferah", "\u00c3\u2026\u00c5\u00beebnem Ferah", "Şebnem Ferah"),  # Windows-1252
    ("HÃ¥kan “Live”", "H\u00c3\u00a5kan \u00e2\u0080\u009cLive\u00e2\u0080\u009d", "Håkan “Live”"),
    ("CAFÉ\u00a0!", "CAF\u00c3\u0089\u00c2\u00a0!", "CAFÉ\u00a0!"),  # not 'CAFɠ!'
    ("Աղասի", "\u00d4\u00b1\u00d5\u00b2\u00d5\u00a1\u00d5\u00bd\u00d5\u00ab", "Աղասի"),
    ("Úštěk", "Úštěk", "Úštěk"),  # not 'ښtěk'
]


@pytest.mark.parametrize("load", ["bulk load", "merge"])
def test_a_play_matches_its_song_whatever_text_repair_makes_of_either(load, tmp_path):
    for n, (text, _, _) in enumerate(REPAIRED):
        record = song(n, title=text, artist_name=text, artist_location=text)
        write(tmp_path, f"song_data/{n}.json", line(record))
    run_script("create_tables.py")
    if load == "merge":  # a play loaded first: the next run's plays are merged
        write(tmp_path, "log_data/0.json", log_file(event(99)))
        etl(tmp_path)
    plays = [
        event(n, song=played, artist=played, length=100.5 + n)
        for n, (_, played, _) in enumerate(REPAIRED)
    ]
    pages = [other_page(len(plays) + n, "Home") for n in range(30)]  # a bulk load, if first
    write(tmp_path, "log_data/1.json", log_file(*plays, *pages))

    report = json.loads(etl(tmp_path).stdout)

    assert report["keys"]["set_aside"] is (load == "bulk load")
    expected = [(n, f"SOZZZZZ12A8C{n:06d}", both) for n, (_, _, both) in enumerate(REPAIRED)]
    assert (
        query(
            "SELECT p.item_in_session, p.song_id, p.song_title FROM songplays p"
            " WHERE p.item_in_session < 99 ORDER BY 1"
        )
        == expected
    )
    assert query("SELECT title, artist_name, artist_location FROM songs ORDER BY song_id") == [
        (both, both, both) for _, _, both in REPAIRED
    ]
    assert query("SELECT name, location FROM artists") == [("£5", "£5")]  # the smallest song's


def test_a_bulk_load_resolves_the_play_of_a_song_whose_title_is_as_long_as_a_key_may_be(
    tmp_path,
):
    title = "x" * KEY_BYTES
    write(tmp_path, "song_data/long.json", line(song(0, title=title)))
    plays = [event(0, song=title, artist="Crafted", length=100.5)]
    pages = [other_page(1 + n, "Home") for n in range(30)]  # a bulk load
    write(tmp_path, "log_data/day.json", log_file(*plays, *pages))
    run_script("create_tables.py")

    report = json.loads(etl(tmp_path).stdout)

    assert report["keys"]["set_aside"] is True
    assert query("SELECT song_id FROM songplays") == [("SOZZZZZ12A8C000000",)]


def test_a_bulk_load_asked_for_more_workers_than_log_batches_ends(tmp_path):
    # --jobs 2 and one log batch (the songs are prepared by etl.py itself): one worker, which
    # takes the song keys (more than a pipe holds); a second one would never read them, and
    # etl.py must exit once its report is printed.
    catalogue = [song(n) for n in range(2000)]
    write(tmp_path, "song_data/catalogue.json", json.dumps(catalogue).encode())
    plays = [event(n, song="Crafted song 7", artist="Crafted", length=107.5) for n in range(5)]
    pages = [other_page(5 + n, "Home") for n in range(30)]  # a bulk load
    write(tmp_path, "log_data/day.json", log_file(*plays, *pages))
    run_script("create_tables.py")

    try:
        done = etl(tmp_path, "--jobs", "2", process=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"etl.py --jobs 2 did not exit within 30 s; it printed:\n{exc.stdout}")

    report = json.loads(done.stdout)
    assert report["keys"]["set_aside"] is True
    assert report["plays_resolved"]["this_run"] == 5


def started_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in set(threading.enumerate()) - before)


def preparer_of(data: Path) -> Preparer:
    """A parse worker for data's log files, as etl.run starts one."""
    source = extract.source(str(data))
    batches = extract.plan(source, extract.listing(source, "log"), "log", {}, Limits()).batches
    return Preparer(batches, Limits(), jobs=1)


# Song keys more than a pipe holds at once (as COPY writes them), and the id of the one log file.
HANDED = (
    "".join(f"Title {n},Crafted,107.5,SO{n:016d},{CRAFTED_ARTIST}\n" for n in range(5000)).encode(),
    {"log_data/day.json": 1},
)


def test_the_parse_worker_once_closed_leaves_no_thread_of_the_run_running(tmp_path):
    # A thread still running while Python exits can be stopped halfway through the cleanup of
    # what it holds: a multiprocessing queue's feeder thread, left holding the queue's named
    # semaphores, made etl.py warn of a "leaked semaphore" at exit now and then.
    write(tmp_path, "log_data/day.json", log_file(*[event(n) for n in range(5)]))
    before = set(threading.enumerate())
    preparer = preparer_of(tmp_path)
    preparer.hand_over(HANDED)

    parts = list(preparer.parts(0))
    preparer.close()

    assert [(f.path, f.accepted, f.file_id) for p in parts for f in p.files] == [
        ("log_data/day.json", 5, 1)
    ]
    assert started_threads(before) == []


def test_parse_workers_the_system_cannot_give_pipes_leave_the_logs_to_this_process(
    tmp_path, capsys
):
    """No file descriptor left for the workers' pipes (a process at its limit): a note says so,
    and the logs are parsed here, as with --jobs 0."""
    write(tmp_path, "log_data/day.json", log_file(*[event(n) for n in range(5)]))
    source = extract.source(str(tmp_path))
    batches = extract.plan(source, extract.listing(source, "log"), "log", {}, Limits()).batches
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    next_free = os.dup(0)
    os.close(next_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (next_free, hard))  # no new descriptor
    try:
        preparer = Preparer(batches, Limits(), jobs=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    preparer.hand_over(None)
    parts = list(preparer.parts(0))
    preparer.close()

    assert capsys.readouterr().err == (
        "note: the parse workers could not start (Too many open files): the logs are parsed in "
        "this process, as with --jobs 0\n"
    )
    assert preparer.workers == []
    assert [(f.path, f.accepted) for p in parts for f in p.files] == [("log_data/day.json", 5)]


@pytest.mark.parametrize(
    "short",
    [
        MemoryError("realloc of size 90880 failed"),
        # what Arrow raises when its thread pool cannot start a thread (an address space
        # limit, prlimit --as), and what importing it says when its library cannot be mapped
        pyarrow.ArrowException(
            "Unknown error: Failed to launch worker thread: Resource temporarily unavailable"
        ),
        ImportError("libarrow.so.2000: failed to map segment from shared object"),
    ],
)
def test_memory_running_out_as_parts_are_prepared_ends_the_run_in_one_line_not_a_traceback(
    short,
):
    def parts():
        yield "the part before"
        raise short

    sent = []
    _send_parts(parts(), lambda item: sent.append(item) or True)

    assert sent[0] == "the part before"
    with pytest.raises(cli.UserError) as raised:
        _part_of(sent[1], "parse worker")
    assert str(raised.value) == (
        f"out of memory reading the files ({short}): what each batch committed before stays; "
        "run again to go on, with a smaller --batch-mb if memory is short (memory follows it)"
    )


def test_a_failure_other_than_memory_as_parts_are_prepared_stays_a_traceback():
    def parts():
        raise ValueError("Cannot parse: a bug")
        yield

    sent = []
    _send_parts(parts(), lambda item: sent.append(item) or True)

    with pytest.raises(RuntimeError) as raised:
        _part_of(sent[0], "parse worker")
    assert str(raised.value).startswith("the parse worker failed:\nTraceback")
    assert str(raised.value).endswith("\nValueError: Cannot parse: a bug\n")


def test_a_parse_worker_closed_before_it_reads_the_hand_over_is_not_waited_for(tmp_path):
    write(tmp_path, "log_data/day.json", log_file(*[event(n) for n in range(5)]))
    before = set(threading.enumerate())
    preparer = preparer_of(tmp_path)
    preparer.hand_over(HANDED)

    preparer.close()  # the worker killed, maybe before it read the song keys

    assert started_threads(before) == []


def test_a_batch_left_unfinished_once_the_workers_are_killed_is_not_waited_for(tmp_path):
    # A run stopped by an error closes the parse workers first; the batch's parts it was
    # receiving are closed later, when the error is let go: waiting for the rest then read a
    # dead worker's queue (at worst a message cut off halfway, which never ends).
    plays = [event(n) for n in range(9000)]  # 3 MB: parts of 1 MB
    write(tmp_path, "log_data/day.json", log_file(*plays))
    limits = Limits(log_batch_bytes=1 << 20)
    source = extract.source(str(tmp_path))
    batches = extract.plan(source, extract.listing(source, "log"), "log", {}, limits).batches
    preparer = Preparer(batches, limits, jobs=1)
    preparer.hand_over(None)
    parts = preparer.parts(0)
    assert not next(parts).last

    preparer.close()
    started = time.monotonic()
    parts.close()

    assert time.monotonic() - started < 10  # not for good


def test_a_file_the_database_refuses_during_a_bulk_load_with_two_workers_loses_nothing_else(
    tmp_path,
):
    """Two workers, batches of 1 MB: the database refuses a play (a CHECK the load knows nothing
    of) in the first part of a file read in parts, so that file is rejected whole, its other
    parts still on their way are set aside, and every play of the other files is loaded, the
    later batches' included."""
    files = {name: n for n, name in enumerate("abcdefgh")}
    for name, n in files.items():
        plays = [event(i, sessionId=SESSION + n) for i in range(100)]
        if name == "b":
            plays[50] = event(50, sessionId=SESSION + n, location="Atlantis")
        pages = [other_page(100 + i, "Home", sessionId=SESSION + n) for i in range(1100)]
        if name == "b":  # 2.5 MB: read in three parts, the refused play in the first
            pages *= 5
        write(tmp_path, f"log_data/{name}.json", log_file(*plays, *pages))
    run_script("create_tables.py")
    query(
        "ALTER TABLE songplays ADD CONSTRAINT not_atlantis CHECK (location <> 'Atlantis'); SELECT 1"
    )

    report = json.loads(etl(tmp_path, "--jobs", "2", "--batch-mb", "1").stdout)

    assert report["keys"]["set_aside"] is True
    assert report["rejected"]["files"] == 1
    assert [e["path"] for e in report["rejected"]["examples"]] == ["log_data/b.json"]
    per_file = "SELECT session_id - %s, count(*) FROM songplays GROUP BY 1 ORDER BY 1"
    assert query(per_file, (SESSION,)) == [(n, 100) for name, n in files.items() if name != "b"]
