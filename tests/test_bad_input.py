"""Bad input: a bad record or file is rejected with its reason, the rest loads, and every record
read is accounted for (loaded + skipped + duplicates + rejected), in the summary and per file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from builders import (
    BASE,
    BASE_LOG_RECORDS,
    BASE_SKIPPED,
    BASE_SONG_DIR,
    CRAFTED_ARTIST,
    DROP,
    UNCOMPRESSIBLE,
    crafted_items,
    dangling_link,
    etl,
    event,
    last_run,
    line,
    lines,
    link_in_a_loop,
    log_file,
    manifest,
    other_page,
    plus,
    rejects,
    song,
    unprivileged,
    write,
)
from conftest import counts, query, run_script, scalar, table_contents
from summary import CHECKS_PASSED, Counts, parse_summary

import etl as etl_module
from cli import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_OK
from contract import Limits

G = event  # a short name for the tables below
BAD_LOG = "log_data/bad/bad.json"


def play_line_2(bad, reason: str) -> tuple:
    """A log case: a bad line 2 between two good plays (items 0 and 2), which load."""
    return lines(G(0), bad, G(2)), [(2, reason)], [0, 2]


# id: (file content, expected rejects as (line or None, reason pattern), good plays in the file)
LOG_CASES = {
    "malformed JSON on a middle line": play_line_2(
        b'{"ts": 1543622401000, "page": "NextSong",', r"^malformed JSON: "
    ),
    "truncated file, last line cut mid-object": (
        lines(G(0), G(1)) + line(G(2))[:60],
        [(3, r"^malformed JSON: ")],
        [0, 1],
    ),
    "empty log file": (b"", [(None, r"^empty file$")], []),
    "non-UTF-8 byte inside a string": play_line_2(
        line(G(1)).replace(b"London", b"Lon\xffdon"), r"^not valid UTF-8$"
    ),
    "a line that is a JSON array": play_line_2(b"[1,2]", r"^not a JSON object but an array$"),
    "a line that is a JSON string": play_line_2(b'"x"', r"^not a JSON object but a string$"),
    "ts absent": play_line_2(G(1, ts=DROP), r"^ts missing$"),
    'userId "" on a NextSong': play_line_2(G(1, userId=""), r"^userId missing on a play$"),
    'ts as text "abc"': play_line_2(G(1, ts="abc"), r"^ts is not an integer$"),
    "userId null on a play": play_line_2(G(1, userId=None), r"^userId missing on a play$"),
    'userId "abc" on a play': play_line_2(G(1, userId="abc"), r"^userId is not numeric$"),
    'length as text "12.5"': play_line_2(G(1, length="12.5"), r"^length is not a number$"),
    r"NUL escape \u0000 inside a string": play_line_2(G(1, location="Lon\u0000don"), r"\bNUL\b"),
}


def load_expecting_rejects(data: Path, path: str, expected: list) -> tuple:
    """Run etl.py (exit 0); its rejects are the expected lines of path, with matching reasons.
    Returns the run's summary, id and rejects."""
    done = etl(data)
    run_id = last_run()
    found = rejects(run_id)
    assert [(p, ln) for p, ln, _, _ in found] == [(path, ln) for ln, _ in expected], found
    for (_, _, reason, _), (_, pattern) in zip(found, expected, strict=True):
        assert re.search(pattern, reason), reason
    summary = parse_summary(done.stdout)
    assert summary.run_id == run_id
    return summary, run_id, found


@pytest.mark.parametrize("case", list(LOG_CASES))
def test_bad_log_record_is_rejected_and_the_rest_of_its_file_loads(data, case):
    content, expected, good = LOG_CASES[case]
    write(data, BAD_LOG, content)
    n_records = sum(1 for raw in content.split(b"\n") if raw.strip())
    n_line_rejects = sum(1 for ln, _ in expected if ln)
    whole_files = len(expected) - n_line_rejects

    summary, run_id, found = load_expecting_rejects(data, BAD_LOG, expected)
    for _, ln, reason, raw in found:
        assert (raw is None) == (ln is None), raw
        assert f"{data / BAD_LOG}:{ln if ln is not None else '-'}: {reason}" in summary.examples
    assert crafted_items() == good
    assert counts() == plus(songplays=len(good), users=1 if good else 0, time=len(good))
    assert manifest()[BAD_LOG] == Counts(n_records, len(good), rejected=n_line_rejects)
    assert summary.files["log"] == {"new": 3}
    assert summary.records["log"] == Counts(
        records=BASE_LOG_RECORDS + n_records,
        loaded=BASE["songplays"] + len(good),
        skipped=BASE_SKIPPED,
        duplicates=0,
        rejected=n_line_rejects,
    )
    assert summary.reconciled["log"]
    assert summary.rejected == (n_line_rejects, whole_files, run_id)
    assert summary.checks == CHECKS_PASSED

    loaded = table_contents()
    strict = parse_summary(etl(data, "--full-refresh", "--strict", exit_code=EXIT_FAILED).stdout)
    assert [r[:3] for r in rejects(last_run())] == [r[:3] for r in found]
    assert strict.records["log"].rejected == n_line_rejects and strict.reconciled["log"]
    assert table_contents() == loaded


BAD_SONG = "song_data/Z/bad.json"


def song_line_2(bad, reason: str) -> tuple:
    """A song case, one song per line: a bad line 2 between songs 1 and 3, which load."""
    return lines(song(1), bad, song(3)), [(2, reason)], [1, 3]


# id: (file content, expected rejects, song numbers that load)
SONG_CASES = {
    "empty song file": (b"", [(None, r"^empty file$")], []),
    "a song file holding an empty array": (b"[]\n", [(None, r"^empty file$")], []),
    "song without song_id": (line(song(1, song_id=DROP)), [(1, r"^song_id missing$")], []),
    "several songs, one object per line": (lines(song(1), song(2), song(3)), [], [1, 2, 3]),
    "a JSON array of two songs": (json.dumps([song(1), song(2)]).encode(), [], [1, 2]),
    "one bad line among songs one per line": song_line_2(
        song(2, duration="12.5"), r"^duration is not a number$"
    ),
    "non-UTF-8 byte inside a song": song_line_2(
        line(song(2)).replace(b"Crafted song", b"Crafted\xff song"), r"^not valid UTF-8$"
    ),
    r"NUL escape \u0000 inside a title": song_line_2(
        song(2, title="Crafted\u0000song"), r"\bNUL\b"
    ),
}


@pytest.mark.parametrize("case", list(SONG_CASES))
def test_bad_song_record_is_rejected_and_the_rest_of_its_file_loads(data, case):
    content, expected, good = SONG_CASES[case]
    write(data, BAD_SONG, content)
    n_line_rejects = sum(1 for ln, _ in expected if ln)
    n_records = len(good) + n_line_rejects

    summary, run_id, found = load_expecting_rejects(data, BAD_SONG, expected)
    crafted = query("SELECT song_id FROM songs WHERE artist_id = %s ORDER BY 1", (CRAFTED_ARTIST,))
    assert [r[0] for r in crafted] == [song(n)["song_id"] for n in good]
    assert counts() == plus(songs=len(good), artists=1 if good else 0)
    assert manifest()[BAD_SONG] == Counts(n_records, len(good), rejected=n_line_rejects)
    assert summary.files["song"] == {"new": 12}
    assert summary.records["song"] == Counts(
        records=BASE["songs"] + n_records,
        loaded=BASE["songs"] + len(good),
        rejected=n_line_rejects,
    )
    assert summary.reconciled["song"]
    if expected:
        assert summary.rejected == (n_line_rejects, len(expected) - n_line_rejects, run_id)
    else:
        assert summary.rejected is None
    assert summary.checks == CHECKS_PASSED

    loaded = table_contents()
    etl(data, "--full-refresh", "--strict", exit_code=EXIT_FAILED if expected else EXIT_OK)
    assert [r[:3] for r in rejects(last_run())] == [r[:3] for r in found]
    assert table_contents() == loaded


def _no_permission(path: Path) -> None:
    path.write_bytes(lines(G(0)))
    path.chmod(0)


# A log path the walk finds (*.json) but that cannot be read. chmod 000 stops an ordinary
# user's reads only: as root (CI), etl.py runs in a user namespace of its own (unprivileged()).
UNREADABLE = {
    "dangling symlink": (dangling_link, "No such file or directory"),
    "link in a loop": (link_in_a_loop, "Too many levels of symbolic links"),
    "chmod 000": (_no_permission, "Permission denied"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_file_is_rejected_whole_and_the_others_load(data, case):
    make, error = UNREADABLE[case]
    prefix = unprivileged() if make is _no_permission else []
    path = data / "log_data/bad/x.json"
    path.parent.mkdir(parents=True)
    make(path)
    try:
        summary = parse_summary(etl(data, prefix=prefix).stdout)
        run_id = last_run()
        assert [r[:3] for r in rejects(run_id)] == [
            ("log_data/bad/x.json", None, f"cannot read file: {error}")
        ]
        assert counts() == BASE
        assert "log_data/bad/x.json" not in manifest()
        assert summary.files["log"] == {"new": 2, "unreadable": 1}
        assert summary.rejected == (0, 1, run_id)
        assert f"{path}:-: cannot read file: {error}" in summary.examples
        etl(data, "--strict", exit_code=EXIT_FAILED, prefix=prefix)
    finally:
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_a_loaded_file_becoming_unreadable_keeps_its_plays_and_says_so(data, case):
    make, error = UNREADABLE[case]
    prefix = unprivileged() if make is _no_permission else []
    path = write(data, "log_data/bad/x.json", lines(G(0), G(1)))
    etl(data)
    path.unlink()
    make(path)
    try:
        summary = parse_summary(etl(data, prefix=prefix).stdout)
        assert [r[:3] for r in rejects(last_run())] == [
            (
                "log_data/bad/x.json",
                None,
                f"cannot read file: {error}: what it loaded before stays (as a deleted file's "
                "does)",
            )
        ]
        assert summary.files["log"] == {"unchanged": 2, "unreadable": 1}
        assert counts() == plus(songplays=2, users=1, time=2)
        assert manifest()["log_data/bad/x.json"] == Counts(2, 2)
    finally:
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


def test_the_summary_names_a_runs_new_problems_before_those_named_at_every_run(data):
    """Files named again at each run (links left dangling, say) do not hide a new day's rejects
    from the five examples; they follow them."""
    for n in range(6):
        dangling_link(data / f"log_data/2018/11/0{n}-link.json")
    etl(data)
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1, ts="abc")))

    summary = parse_summary(etl(data).stdout)
    assert summary.rejected == (1, 6, last_run())
    assert summary.examples == [
        f"{data}/log_data/2018/12/new.json:2: ts is not an integer",
        *(
            f"{data}/log_data/2018/11/0{n}-link.json:-: cannot read file: No such file or directory"
            for n in range(4)
        ),
    ]


def test_the_summary_names_the_first_rejects_by_file_and_line_whatever_found_them_first(data):
    """A file's rejects are named by line, the files in path order: not in the order the reader
    (malformed JSON) and the checks (a ts not an integer) came upon them."""
    bad_ts, malformed = G(1, ts="abc"), b'{"ts": 1543622401000,'
    write(data, "log_data/2018/12/b.json", lines(G(0), bad_ts, malformed, bad_ts))
    write(data, "log_data/2018/12/a.json", lines(malformed, G(2), bad_ts, malformed))

    summary = parse_summary(etl(data).stdout)
    assert [example.split(": ", 1)[0] for example in summary.examples] == [
        f"{data}/log_data/2018/12/{file}.json:{n}" for file, n in (("a", 1), ("a", 3), ("a", 4))
    ] + [f"{data}/log_data/2018/12/b.json:{n}" for n in (2, 3)]


def test_a_folder_named_like_a_data_file_is_a_folder_its_files_load_and_nothing_is_rejected(data):
    """Spark's df.write.json("day.json") writes a folder of that name: part files, _SUCCESS and
    hidden checksums."""
    spark = data / "log_data/2018/12/day.json"
    write(spark, "part-00000-c0ffee.json", lines(G(0), G(1)))
    write(spark, "part-00001-c0ffee.json", lines(G(2)))
    write(spark, "_SUCCESS", b"")
    write(spark, ".part-00000-c0ffee.json.crc", b"crc")
    (data / "log_data/2018/12/empty.json").mkdir()

    summary = parse_summary(etl(data, "--strict").stdout)

    assert crafted_items() == [0, 1, 2]
    assert summary.files["log"] == {"new": 4}
    assert rejects(last_run()) == []
    assert summary.ignored == 2
    assert parse_summary(etl(data, "--strict").stdout).files["log"] == {"unchanged": 4}


def test_a_strict_run_that_rejected_a_record_ends_its_summary_saying_why_it_exits_1(data):
    write(data, "log_data/2018/12/bad.json", lines(G(0), G(1, ts="abc")))
    done = run_script("etl.py", "--data", str(data), "--no-progress", "--strict", check=False)
    assert (done.returncode, done.stderr) == (EXIT_FAILED, "")
    assert done.stdout.splitlines()[-1] == "  FAILED (records rejected (--strict)): exit 1"
    assert crafted_items() == [0]


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

    summary = parse_summary(etl(data).stdout)
    assert summary.files == {"song": {"new": 11}, "log": {"new": 4}}
    assert summary.records == {
        "song": Counts(records=11, loaded=11, rejected=0),
        "log": Counts(records=136, loaded=115, skipped=17, duplicates=2, rejected=2),
    }
    assert summary.reconciled == {"song": True, "log": True}
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


def test_a_big_log_file_the_database_refuses_in_its_first_part_leaves_the_next_batch_whole(
    fresh_tables, tmp_path, settings
):
    """A log file of several parts, prepared by a worker, that the database refuses in its first
    part: it is rejected whole, and the next batch gets its own parts, none of the refused
    file's left over."""
    refused = [event(i, location="Refused" if i == 5 else "London") for i in range(600)]
    write(tmp_path, "log_data/2018/12/a.json", lines(*refused))
    write(tmp_path, "log_data/2018/12/b.json", lines(*(event(i) for i in range(600, 610))))
    query(
        "ALTER TABLE songplays ADD CONSTRAINT not_refused CHECK (location <> 'Refused'); SELECT 1"
    )

    report = etl_module.run(
        settings,
        tmp_path,
        jobs=1,
        progress=False,
        out=None,
        limits=Limits(log_batch_bytes=64 * 1024, parse_piece_bytes=16 * 1024),
    )

    assert report.exit_code(strict=False) == EXIT_OK
    assert crafted_items() == list(range(600, 610))
    assert [r[:2] for r in rejects()] == [("log_data/2018/12/a.json", None)]
    assert manifest()["log_data/2018/12/a.json"] == (600, 0, 0, 0, 600)


def test_rejects_a_stopped_run_committed_are_reported_by_the_run_that_completes_its_work(
    fresh_tables, tmp_path
):
    """A run that commits a file with a reject and stops before its report (killed, cut off,
    or, here, stopped by an error) reported nothing: the run that loads the rest reports that
    reject too, and --strict fails on it, as it does on an uninterrupted load of the same
    files."""
    refused = [song(0), song(1, title="Refused"), song(2)]  # the database refuses the file
    write(tmp_path, "song_data/refused.json", lines(*refused))
    query("ALTER TABLE songs ADD CONSTRAINT not_refused CHECK (title <> 'Refused'); SELECT 1")
    write(tmp_path, "log_data/a.json", lines(event(0), b'{"ts": 1, "page": broke', event(1)))
    plays = [event(n, sessionId=4242) for n in range(4000)]  # 1.4 MB: a batch of its own
    write(tmp_path, "log_data/b.json", log_file(*plays))
    query(
        "CREATE OR REPLACE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'boom' USING ERRCODE = 'XX000'; END $$; "
        "CREATE TRIGGER boom AFTER INSERT ON songplays FOR EACH ROW "
        "WHEN (NEW.session_id = 4242) EXECUTE FUNCTION boom(); SELECT 1"
    )
    etl(tmp_path, "--batch-mb", "1", exit_code=EXIT_ENVIRONMENT)
    query("DROP TRIGGER boom ON songplays; DROP FUNCTION boom(); SELECT 1")

    report = json.loads(etl(tmp_path, "--batch-mb", "1", "--strict", exit_code=EXIT_FAILED).stdout)

    assert report["files"]["log"] == {"unchanged": 1, "new": 1}
    assert report["loaded_by_earlier_runs"] == {  # the refused song file and a.json
        "runs": [1],
        "files": {"song": 1, "log": 1},
        "records": {"song": 0, "log": 2},
    }
    assert report["rejected"]["records"] == 0
    assert report["rejected"]["by_earlier_runs"] == {
        "runs": [1],
        "records": 4,  # as an uninterrupted load counts them: every record of a refused file
        "files": 1,
        "examples": [
            {
                "path": "song_data/refused.json",
                "where": f"{tmp_path}/song_data/refused.json",
                "line": None,
                "reason": 'the database refused this file: new row for relation "songs" '
                'violates check constraint "not_refused"',
            },
            {
                "path": "log_data/a.json",
                "where": f"{tmp_path}/log_data/a.json",
                "line": 2,
                "reason": "malformed JSON: unexpected character, expected a JSON value at "
                "column 19",
            },
        ],
    }
    assert query("SELECT run_id, status FROM load_runs ORDER BY run_id") == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    again = json.loads(etl(tmp_path, "--strict").stdout)  # reported once
    assert again["rejected"]["by_earlier_runs"]["runs"] == []
    assert again["loaded_by_earlier_runs"]["files"] == {"song": 0, "log": 0}
    fresh = json.loads(etl(tmp_path, "--full-refresh", "--strict", exit_code=EXIT_FAILED).stdout)
    assert (fresh["rejected"]["records"], fresh["rejected"]["files"]) == (4, 1)


def test_a_key_too_long_for_an_index_rejects_its_song_and_every_other_song_of_the_file_loads(
    fresh_tables, tmp_path, settings
):
    """A song_id or artist_id past what a btree entry holds (2,704 bytes, once PostgreSQL has
    compressed what it can) would have the database refuse the song's whole file, a catalogue
    of one song a line with it; a title or artist name of megabytes, every sort of the song
    keys stall on it: the song is rejected on its line, naming the limit, and the rest loads,
    songs and plays."""
    catalogue = [
        song(0),
        song(1, song_id=UNCOMPRESSIBLE),
        song(2),
        song(3, artist_id=UNCOMPRESSIBLE),
        song(5, title="T" * (8 << 20)),
        song(6, artist_name=UNCOMPRESSIBLE[:2501]),
    ]
    write(tmp_path, "song_data/catalogue.json", lines(*catalogue))
    write(tmp_path, "song_data/4.json", line(song(4)))
    write(tmp_path, "log_data/day.json", log_file(*[event(n) for n in range(3)]))

    report = etl_module.run(settings, tmp_path, jobs=0, progress=False, out=None)

    assert report.exit_code(strict=False) == EXIT_OK
    assert query("SELECT song_id FROM songs ORDER BY song_id") == [
        (song(n)["song_id"],) for n in (0, 2, 4)
    ]
    assert scalar("SELECT count(*) FROM songplays") == 3
    assert [r[:3] for r in rejects()] == [
        (
            "song_data/catalogue.json",
            2,
            "song_id longer than 2,500 bytes, which an index cannot key",
        ),
        (
            "song_data/catalogue.json",
            4,
            "artist_id longer than 2,500 bytes, which an index cannot key",
        ),
        (
            "song_data/catalogue.json",
            5,
            "title longer than 2,500 bytes, too long to match plays by",
        ),
        (
            "song_data/catalogue.json",
            6,
            "artist_name longer than 2,500 bytes, too long to match plays by",
        ),
    ]


def test_a_song_file_the_database_refuses_is_rejected_whole_and_every_other_batch_loads(
    fresh_tables, tmp_path, settings
):
    """Song batches of two files, each prepared while the database loads the one before: the
    database refuses one song (a CHECK the load knows nothing of), so that batch is loaded again
    file by file and the refused file is rejected whole; the batch prepared meanwhile, and every
    other, loads."""
    for n in range(7):
        write(tmp_path, f"song_data/{n}.json", line(song(n, title=f"Crafted song {n}")))
    write(tmp_path, "song_data/3.json", line(song(3, title="Refused")))
    query("ALTER TABLE songs ADD CONSTRAINT not_refused CHECK (title <> 'Refused'); SELECT 1")

    report = etl_module.run(
        settings, tmp_path, jobs=0, progress=False, out=None, limits=Limits(song_batch_files=2)
    )

    assert report.exit_code(strict=False) == EXIT_OK
    assert query("SELECT song_id FROM songs ORDER BY song_id") == [
        (song(n)["song_id"],) for n in range(7) if n != 3
    ]
    assert [r[:3] for r in rejects()] == [
        (
            "song_data/3.json",
            None,
            'the database refused this file: new row for relation "songs" violates check '
            'constraint "not_refused"',
        )
    ]
    assert manifest() == {
        f"song_data/{n}.json": (1, 0, 0, 0, 1) if n == 3 else (1, 1, 0, 0, 0) for n in range(7)
    }


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs util-linux's prlimit")
def test_memory_running_short_never_rejects_a_good_record(data):
    """orjson says memory ran short as it says a line is not JSON: under a memory cap, a long
    line (30 MB, within a part) must stop the run (exit 3) or load, never be its reject, and a
    run with memory to spare loads it. The caps span where this machine's run loads, stops, or
    dies in orjson (a segmentation fault, as a kill: the next run resumes)."""
    huge = event(900, userAgent="Mozilla " + "x" * (30 << 20))
    write(data, "log_data/huge.json", log_file(huge))
    for megabytes in (700, 800, 900, 1000, 1100, 1300):
        capped = etl(data, prefix=["prlimit", f"--as={megabytes << 20}"], exit_code=None)
        assert capped.returncode in (EXIT_OK, EXIT_ENVIRONMENT, -11), capped.stderr
        assert rejects() == []

    etl(data)

    assert counts() == plus(songplays=1, users=1, time=1)
    assert scalar("SELECT length(user_agent) FROM songplays WHERE item_in_session = 900") == len(
        huge["userAgent"]
    )
