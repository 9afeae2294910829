"""Incremental loads: a re-run loads only what is new or changed (new, appended and edited files),
a full refresh reloads everything to the same tables, songs arriving late resolve earlier plays,
an older event never overwrites a newer user level, and instants do not depend on time zones."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import itertools
import json
import os
import random
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from builders import (
    BASE,
    BASE_SONG_DIR,
    COMPRESS,
    FACE,
    T0,
    USER,
    base_sample,
    crafted_items,
    etl,
    event,
    face_song,
    gzip_cut_holds,
    in_utf16,
    last_run,
    line,
    lines,
    manifest,
    other_page,
    plus,
    refresh_refused,
    rejects,
    song,
    write,
)
from conftest import PROPERTY, counts, query, run_main, scalar, table_contents
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from summary import CHECKS_PASSED, Counts, parse_summary

import etl as etl_module
import extract
import prepare
from cli import EXIT_ENVIRONMENT
from contract import Limits
from tools import generate_data

G = event


def bookkeeping() -> list[tuple]:
    return query(
        "SELECT path, size_bytes, mtime_ns, sha256, run_id, records, loaded, skipped, "
        "duplicates, rejected, loaded_at FROM load_manifest ORDER BY path"
    )


def fresh_load_of(data: Path) -> dict[str, list[tuple]]:
    """The tables after a load of the files as they are now into empty tables."""
    run_main("create_tables.py")
    etl(data)
    return table_contents()


def test_touched_files_with_unchanged_content_set_nothing_aside(data):
    etl(data)
    for path in data.rglob("*.json"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    summary = parse_summary(etl(data).stdout)
    assert summary.nothing_new
    assert summary.keys_left_alone


def test_second_run_with_nothing_new_changes_nothing(data):
    etl(data)
    tables, files, n_rejects = table_contents(), bookkeeping(), len(rejects())

    summary = parse_summary(etl(data).stdout)
    assert summary.nothing_new
    assert summary.files == {"song": {"unchanged": 11}, "log": {"unchanged": 2}}
    assert summary.records == {"song": Counts(0, 0), "log": Counts(0, 0)}
    assert summary.checks is None  # not run: nothing changed
    assert table_contents() == tables
    assert bookkeeping() == files
    assert len(rejects()) == n_rejects
    assert query("SELECT status FROM load_runs ORDER BY run_id") == [("succeeded",)] * 2


def test_new_log_file_is_loaded_alone(data):
    etl(data)
    before = table_contents()
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1), other_page(2, "Home"), G(3)))

    summary = parse_summary(etl(data).stdout)
    assert summary.files == {"song": {"unchanged": 11}, "log": {"unchanged": 2, "new": 1}}
    assert summary.records == {
        "song": Counts(0, 0),
        "log": Counts(records=4, loaded=3, skipped=1, duplicates=0, rejected=0),
    }
    assert summary.reconciled["log"]
    assert summary.rows == {
        "songplays": (3, 114),
        "users": (1, 13),
        "songs": (0, 11),
        "artists": (0, 11),
        "time": (3, 114),
    }
    after = table_contents()
    assert {t: len(rows) for t, rows in after.items()} == plus(songplays=3, users=1, time=3)
    assert set(before["songplays"]) < set(after["songplays"])
    assert query("SELECT path FROM load_manifest WHERE run_id = %s", (last_run(),)) == [
        ("log_data/2018/12/new.json",)
    ]
    assert summary.keys_left_alone  # a small load checks each row as it goes in


def test_appended_log_line_is_loaded_without_duplicating_plays(data):
    path = write(data, "log_data/2018/12/new.json", lines(G(0), G(1)))
    etl(data)
    with path.open("ab") as f:
        f.write(lines(G(2)))

    summary = parse_summary(etl(data).stdout)
    assert summary.files["log"] == {"unchanged": 2, "changed": 1}
    assert summary.records["log"] == Counts(3, 3, skipped=0, duplicates=0, rejected=0)
    assert summary.reconciled["log"]
    assert crafted_items() == [0, 1, 2]
    assert counts() == plus(songplays=3, users=1, time=3)
    assert query(
        "SELECT records, loaded, duplicates, size_bytes, sha256, run_id "
        "FROM load_manifest WHERE path = 'log_data/2018/12/new.json'"
    ) == [(3, 3, 0, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest(), last_run())]
    assert summary.checks == CHECKS_PASSED


def test_edited_log_event_is_reloaded_and_the_new_value_wins(data):
    path = write(data, "log_data/2018/12/new.json", lines(G(0), G(1), G(2)))
    etl(data)
    resolved = "SELECT song_id FROM songplays WHERE user_id = %s AND item_in_session = 1"
    assert scalar(resolved, (USER,)) == FACE["song_id"]
    path.write_bytes(lines(G(0), G(1, song="Another Song", artist="Nobody", length=100.0), G(2)))

    summary = parse_summary(etl(data).stdout)
    assert summary.files["log"] == {"unchanged": 2, "changed": 1}
    assert summary.records["log"][:2] == (3, 3)
    assert query(
        "SELECT item_in_session, song_title, artist_name, song_length, song_id "
        "FROM songplays WHERE user_id = %s ORDER BY 1",
        (USER,),
    ) == [
        (0, "Face the Ashes", "Gob", Decimal("209.60608"), FACE["song_id"]),
        (1, "Another Song", "Nobody", Decimal("100"), None),
        (2, "Face the Ashes", "Gob", Decimal("209.60608"), FACE["song_id"]),
    ]
    assert manifest()["log_data/2018/12/new.json"] == Counts(3, 3)
    assert table_contents() == fresh_load_of(data)


def test_play_removed_from_a_changed_log_file_takes_its_contributions_with_it(data):
    """A changed file that no longer holds a play: the play, its instant in time and the user
    level it set go, as a fresh load of the files as they are now would have it."""
    write(data, "log_data/2018/12/a.json", lines(G(0, level="free"), G(1, level="free")))
    path = write(data, "log_data/2018/12/b.json", lines(G(2, level="paid")))
    etl(data)
    assert scalar("SELECT level FROM users WHERE user_id = %s", (USER,)) == "paid"
    path.write_bytes(lines(G(3, userId="901")))  # another user's play now

    summary = parse_summary(etl(data).stdout)
    assert summary.files["log"] == {"unchanged": 3, "changed": 1}
    assert summary.records["log"][:2] == (1, 1)
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
    assert table_contents() == fresh_load_of(data)


KEPT = "what it loaded before stays (as a deleted file's does)"
ERROR_PAGE = b"<html><body>503 Service Unavailable</body></html>\n"
NO_TS = lines({"page": "NextSong", "userId": str(USER)})  # an event without its instant


def test_a_file_emptied_since_it_was_loaded_keeps_what_it_loaded_until_it_holds_records(data):
    """A failed transfer leaves a loaded file empty, blank, or gzip cut short before its first
    line: like a deleted file, it keeps its plays and its manifest entry; it is named at each
    run; once it holds records again, they replace what it loaded. A blank file bigger than a
    part (--batch-mb 1) too."""
    plays = lines(G(0, level="paid"), G(1, level="paid"))
    path = write(data, "log_data/2018/12/a.json.gz", gzip.compress(plays))
    etl(data)
    loaded, entry = table_contents(), manifest()
    cut = "gzip data cut short before its first line"
    for emptied, why, extra in [
        (b"", "empty file", ()),
        (gzip.compress(b"\n\n"), "empty file", ()),
        (gzip.compress(b"\xef\xbb\xbf"), "empty file", ()),
        (gzip.compress(plays)[:12], cut, ()),
        (gzip.compress(b"\n" * 2_500_000), "empty file", ("--batch-mb", "1")),
    ]:
        path.write_bytes(emptied)
        summary = parse_summary(etl(data, *extra).stdout)
        assert summary.files["log"] == {"unchanged": 2, "emptied": 1}
        assert rejects(last_run()) == [("log_data/2018/12/a.json.gz", None, f"{why}: {KEPT}", None)]
        assert (table_contents(), manifest()) == (loaded, entry)
    path.write_bytes(gzip.compress(lines(G(0, level="free"))))
    assert parse_summary(etl(data).stdout).files["log"] == {"unchanged": 2, "changed": 1}
    assert crafted_items() == [0]
    assert table_contents() == fresh_load_of(data)


def test_a_changed_file_whose_every_record_is_rejected_keeps_what_it_loaded_until_one_is_not(
    data,
):
    """An error page saved in a loaded file's place, its text sent again in another encoding,
    events missing what a record needs: each line is rejected and named, and the file keeps its
    plays and its manifest entry, as an emptied file does, until a version holding a record
    that is not rejected (a page other than NextSong is one) replaces them. A file bigger than a
    part (--batch-mb 1), whose last part alone would show it, too; so do files read together."""
    plays = lines(G(0, level="paid"), G(1, level="paid"))
    path = write(data, "log_data/2018/12/a.json", plays)
    other = write(data, "log_data/2018/12/b.json", lines(G(5)))
    etl(data)
    loaded, entry = table_contents(), manifest()
    for garbled, lines_rejected, extra in [
        (ERROR_PAGE, 1, ()),
        (plays.decode().encode("utf-16-le"), 3, ()),  # its last line: a lone NUL byte
        (NO_TS * 3, 3, ()),
        *((value, 1, ()) for value in (b"null", b"3", b'"moved"')),  # no newline: not cut
        (NO_TS + b"\n" * 1_500_000 + NO_TS * 2, 3, ("--batch-mb", "1")),
    ]:
        path.write_bytes(garbled)
        other.write_bytes(lines(G(5), G(6)))  # a file read beside it still loads
        summary = parse_summary(etl(data, *extra).stdout)
        assert summary.files["log"] == {"unchanged": 2, "changed": 1, "emptied": 1}
        assert summary.records["log"] == Counts(2 + lines_rejected, 2, rejected=lines_rejected)
        assert summary.reconciled["log"]
        found = rejects(last_run())
        whole = [r for r in found if r[1] is None]
        assert whole == [("log_data/2018/12/a.json", None, f"every record rejected: {KEPT}", None)]
        assert [(p, n is not None) for p, n, _, _ in found if n is not None] == [
            ("log_data/2018/12/a.json", True)
        ] * lines_rejected
        assert crafted_items() == [0, 1, 5, 6]
        assert manifest()["log_data/2018/12/a.json"] == entry["log_data/2018/12/a.json"]
        other.write_bytes(lines(G(5)))
        etl(data)
        assert table_contents() == loaded
    path.write_bytes(lines(other_page(0, "Home")))
    assert parse_summary(etl(data).stdout).files["log"] == {"unchanged": 3, "changed": 1}
    assert crafted_items() == [5]
    assert table_contents() == fresh_load_of(data)


@pytest.mark.parametrize("first", [b"", ERROR_PAGE], ids=["empty", "garbled"])
@pytest.mark.parametrize(
    "then, counts, whole_file",
    [
        (NO_TS * 2, Counts(2, 0, rejected=2), []),
        (b"\n\n", Counts(0, 0), ["empty file"]),
    ],
    ids=["then-garbled", "then-emptied"],
)
def test_a_file_that_never_held_a_usable_record_is_replaced_by_its_next_version(
    data, first, then, counts, whole_file
):
    """A file that loaded nothing (empty, or every record rejected) has nothing to keep: its
    next version, unusable too, replaces its entry and is named once, not at every run."""
    path = write(data, "log_data/2018/12/a.json", first)
    etl(data)
    path.write_bytes(then)

    summary = parse_summary(etl(data).stdout)

    assert summary.files["log"] == {"unchanged": 2, "changed": 1}
    assert manifest()["log_data/2018/12/a.json"] == counts
    assert [reason for _, line, reason, _ in rejects(last_run()) if line is None] == whole_file
    assert parse_summary(etl(data).stdout).nothing_new


def cut_in_half(whole: bytes) -> tuple[bytes, int]:
    """gzip data cut short (a failed transfer), and the lines it holds whole."""
    cut = whole[: len(whole) // 2]
    return cut, gzip_cut_holds(cut).count(b"\n")


def crc_failed(whole: bytes, good: bytes) -> tuple[bytes, int]:
    """A member of good lines, then the whole data with its check (CRC-32) failing."""
    damaged = bytearray(whole)
    damaged[-8] ^= 0xFF
    return gzip.compress(good, mtime=0) + bytes(damaged), good.count(b"\n")


@pytest.mark.parametrize("batch_mb", ["32", "1"])
def test_a_damaged_version_of_a_file_loaded_whole_keeps_what_it_loaded_until_a_whole_one_comes(
    data, batch_mb
):
    """A loaded day sent again cut short (a failed transfer), or with its compressed data
    damaged, or as error pages cut short: its plays and manifest entry stay, as an emptied
    file's do, and one reject of the whole file names the damage at each run, until a whole
    version replaces them. A day of more lines than a part holds (--batch-mb 1: 8,192) too."""
    day = lines(*(G(n, level="paid") for n in range(9_000)))
    path = write(data, "log_data/2018/12/a.json.gz", gzip.compress(day, mtime=0))
    etl(data, "--batch-mb", batch_mb)
    loaded, entry = table_contents(), manifest()
    resent = gzip.compress(lines(*(G(n, level="free") for n in range(9_500))), mtime=0)
    for damaged, complete, why in [
        (*cut_in_half(resent), "gzip data cut short"),
        (*cut_in_half(gzip.compress(ERROR_PAGE * 5_000, mtime=0)), "gzip data cut short"),
        (
            *crc_failed(resent, lines(G(9_999))),
            "damaged gzip data (Error -3 while decompressing data: incorrect data check)",
        ),
    ]:
        path.write_bytes(damaged)
        for _ in range(2):
            summary = parse_summary(etl(data, "--batch-mb", batch_mb).stdout)
            assert summary.files["log"] == {"unchanged": 2, "emptied": 1}
            assert rejects(last_run()) == [
                ("log_data/2018/12/a.json.gz", None, f"{why} after line {complete}: {KEPT}", None)
            ]
            assert (table_contents(), manifest()) == (loaded, entry)
    path.write_bytes(resent)
    assert parse_summary(etl(data).stdout).files["log"] == {"unchanged": 2, "changed": 1}
    assert crafted_items() == list(range(9_500))
    assert table_contents() == fresh_load_of(data)


@pytest.mark.parametrize("batch_mb", ["32", "1"])
@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"], ids=["no-newline", "LF", "CRLF"])
def test_a_resend_of_plain_text_cut_mid_line_keeps_what_it_loaded_until_a_whole_one_comes(
    data, batch_mb, ending
):
    """Plain JSON lines sent again and cut short by a failed transfer, in the middle of a line:
    smaller than the version loaded, and ending in a line no record closes. Like compressed data
    cut short, it is not read: the plays and manifest entry stay, and one reject of the whole
    file says after which line it was cut, at each run, until a whole version comes (ending as
    the writer ends its files: with a newline, a Windows one, or none)."""
    day = lines(*(G(n, level="paid") for n in range(9_000)))
    path = write(data, "log_data/2018/12/a.json", day.replace(b"\n", b"\r\n"))
    etl(data, "--batch-mb", batch_mb)
    loaded, entry = table_contents(), manifest()
    resent = lines(*(G(n, level="free") for n in range(9_500))).replace(b"\n", b"\r\n")
    cut = resent[: len(resent) // 3]
    complete = cut.count(b"\n")
    assert not cut.endswith((b"}", b"\n"))
    path.write_bytes(cut)
    for _ in range(2):
        summary = parse_summary(etl(data, "--batch-mb", batch_mb).stdout)
        assert summary.files["log"] == {"unchanged": 2, "emptied": 1}
        assert rejects(last_run()) == [
            (
                "log_data/2018/12/a.json",
                None,
                f"cut short mid-line after line {complete}: {KEPT}",
                None,
            )
        ]
        assert (table_contents(), manifest()) == (loaded, entry)
    path.write_bytes(resent.removesuffix(b"\r\n") + ending)
    assert parse_summary(etl(data).stdout).files["log"] == {"unchanged": 2, "changed": 1}
    assert crafted_items() == list(range(9_500))
    assert table_contents() == fresh_load_of(data)


# A file's text as it is delivered: (its name's suffix, its bytes from its text).
DELIVERED_AS = {
    "gzip": (".gz", COMPRESS[".gz"]),
    "xz": (".xz", COMPRESS[".xz"]),
    "UTF-16": ("", in_utf16),
    "UTF-32 in gzip": (
        ".gz",
        lambda text: COMPRESS[".gz"](codecs.BOM_UTF32_BE + text.decode().encode("utf-32-be")),
    ),
}


@pytest.mark.parametrize("form", list(DELIVERED_AS))
def test_a_resend_whose_text_is_cut_mid_line_keeps_what_it_loaded_whatever_its_form(data, form):
    """Text cut short by the writer, then compressed or encoded whole: the file is intact, its
    text is not, and it is judged as plain text is."""
    suffix, delivered = DELIVERED_AS[form]
    day = lines(*(G(n, level="paid") for n in range(2_000)))
    path = write(data, f"log_data/2018/12/a.json{suffix}", delivered(day))
    etl(data)
    loaded, entry = table_contents(), manifest()
    cut = day[: len(day) // 3]
    complete = cut.count(b"\n")
    assert not cut.endswith((b"}", b"\n"))
    path.write_bytes(delivered(cut))

    summary = parse_summary(etl(data).stdout)

    assert summary.files["log"] == {"unchanged": 2, "emptied": 1}
    assert rejects(last_run()) == [
        (
            f"log_data/2018/12/a.json{suffix}",
            None,
            f"cut short mid-line after line {complete}: {KEPT}",
            None,
        )
    ]
    assert (table_contents(), manifest()) == (loaded, entry)


def test_plain_text_still_being_written_loads_its_whole_lines_at_each_run(data):
    """A file read while its writer is at work ends mid-line too, but it grows: each version
    loads its whole lines (the last, cut, is rejected as the line it is), from one that loaded
    whole too; one cut where a line ends is a shorter file, as any."""
    day = lines(*(G(n) for n in range(3_000)))
    path = write(data, "log_data/2018/12/a.json", day[:1_000])
    etl(data)
    whole = len(lines(*(G(n) for n in range(1_000))))
    for size in (whole, whole + 50_000, whole + 150_000):
        assert day[size - 1 : size] not in (b"}", b"\n") or size == whole
        path.write_bytes(day[:size])
        summary = parse_summary(etl(data).stdout)
        assert summary.files["log"] == {"unchanged": 2, "changed": 1}
        assert crafted_items() == list(range(day[:size].count(b"\n")))
        assert [line for _, line, _, _ in rejects(last_run())] == (
            [] if day[:size].endswith(b"\n") else [day[:size].count(b"\n") + 1]
        )
    path.write_bytes(day[: len(lines(*(G(n) for n in range(500))))])
    assert parse_summary(etl(data).stdout).files["log"] == {"unchanged": 2, "changed": 1}
    assert crafted_items() == list(range(500))
    assert table_contents() == fresh_load_of(data)


def test_a_damaged_version_replaces_one_that_loaded_damaged_too(data):
    """A file loaded from damaged data was never whole: its next version, damaged too, replaces
    what it loaded, as any changed file's does, and loads what comes before its damage."""
    day = gzip.compress(lines(*(G(n) for n in range(2_000))), mtime=0)
    path = write(data, "log_data/2018/12/a.json.gz", day[: len(day) // 4])
    etl(data)
    cut, complete = cut_in_half(day)
    path.write_bytes(cut)

    summary = parse_summary(etl(data).stdout)

    assert summary.files["log"] == {"unchanged": 2, "changed": 1}
    whole_file = [reason for _, line, reason, _ in rejects(last_run()) if line is None]
    assert whole_file == [f"gzip data cut short after line {complete}"]
    assert crafted_items()[:complete] == list(range(complete))
    assert table_contents() == fresh_load_of(data)


def test_a_changed_file_the_database_refuses_keeps_what_it_loaded(data):
    """The database refusing a changed file (a value no rule foresaw: here a CHECK the load
    knows nothing of) rejects every record of it: like a file whose every record is rejected,
    it keeps its plays and its entry."""
    path = write(data, "log_data/2018/12/a.json", lines(G(0), G(1)))
    etl(data)
    loaded, entry = table_contents(), manifest()
    query(
        "ALTER TABLE songplays ADD CONSTRAINT not_refused CHECK (location <> 'Nowhere'); SELECT 1"
    )
    path.write_bytes(lines(G(2), G(3, location="Nowhere")))

    summary = parse_summary(etl(data).stdout)

    assert summary.files["log"] == {"unchanged": 2, "emptied": 1}
    assert summary.records["log"] == Counts(2, 0, rejected=2)
    assert [r[:2] for r in rejects(last_run())] == [("log_data/2018/12/a.json", None)]
    assert rejects(last_run())[0][2].endswith(f": {KEPT}")
    assert (table_contents(), manifest()) == (loaded, entry)


def test_a_file_garbled_again_each_time_its_batch_is_loaded_again_ends_loaded_as_it_stands(
    data, settings, monkeypatch
):
    """A writer saving one error page after another over a loaded file while the run loads it:
    the batch is loaded again a bounded number of times, then the file's last version loads as
    it stands (it replaces what the file loaded), and the run ends."""
    path = write(data, "log_data/2018/12/a.json", lines(G(0), G(1)))
    etl(data)
    path.write_bytes(b"<html>0</html>\n")
    prepare_batch, pages = prepare.prepare, itertools.count(1)

    def a_writer_at_work(batch, limits, direct=None, unusable=None):
        if unusable:  # the batch loaded again: the writer has saved another page meanwhile
            path.write_bytes(b"<html>%d</html>\n" % next(pages))
        return prepare_batch(batch, limits, direct, unusable)

    monkeypatch.setattr(prepare, "prepare", a_writer_at_work)

    report = etl_module.run(settings, data, jobs=0, progress=False, out=None)

    retries = etl_module.UNUSABLE_RETRIES
    assert next(pages) == retries + 1
    assert report.tally.files["log"] == {"unchanged": 2, "changed": 1}
    assert crafted_items() == []
    reason = "malformed JSON: unexpected character, expected a JSON value at column 1"
    assert rejects(last_run()) == [
        ("log_data/2018/12/a.json", 1, reason, f"<html>{retries}</html>")
    ]


def gzipped(content: bytes) -> bytes:
    return COMPRESS[".gz"](content)


def as_is(content: bytes) -> bytes:
    return content


@pytest.mark.parametrize(
    "name, first, then",
    [
        # gzip data is known by its first bytes, whatever the file's name
        ("a.json", as_is, gzipped),
        # a client that gunzips what it fetches keeps the name: a .gz file holding text is text
        ("a.json.gz", gzipped, as_is),
    ],
)
def test_a_log_file_sent_again_in_its_other_form_under_its_own_name_loads_the_same_plays(
    data, name, first, then
):
    content = lines(G(0), G(1, level="paid"), G(2))
    path = write(data, f"log_data/2018/12/{name}", first(content))
    etl(data)
    loaded = table_contents()
    path.write_bytes(then(content))

    summary = parse_summary(etl(data).stdout)
    assert summary.files["log"] == {"unchanged": 2, "changed": 1}
    assert summary.records["log"] == Counts(3, 3)
    assert rejects(last_run()) == []
    assert table_contents() == loaded


@pytest.mark.parametrize("name, form", [("a.json", as_is), ("a.json.gz", gzipped)])
def test_a_log_file_sent_again_compressed_otherwise_keeps_what_it_loaded_and_is_named(
    data, name, form
):
    """Data in a compression that is not read is named, whatever the file's name, not read as
    lines of noise (or as damaged gzip data) that would take the file's plays with them."""
    content = lines(G(0), G(1), G(2))
    path = write(data, f"log_data/2018/12/{name}", form(content))
    etl(data)
    loaded = table_contents()
    path.write_bytes(b"\x04\x22\x4d\x18" + bytes(range(256)))
    summary = parse_summary(etl(data).stdout)
    assert summary.files["log"] == {"unchanged": 2, "emptied": 1}
    reason = (
        "lz4 data, which is not read (gzip, bzip2, xz, zstd and zip are) before its first line: "
        f"{KEPT}"
    )
    assert rejects(last_run()) == [(f"log_data/2018/12/{name}", None, reason, None)]
    assert table_contents() == loaded


@pytest.mark.parametrize("name", ["a.json", "a.json.gz"])
def test_a_log_file_sent_again_in_any_compression_read_loads_the_same_rows(data, name):
    """A log sent again in bzip2, xz, zstd or zip under its own name is read through that
    compression, by its first bytes: a changed file whose records are the same, so the tables
    stay as they were."""
    content = lines(G(0), G(1), G(2))
    path = write(data, f"log_data/2018/12/{name}", COMPRESS[".gz"](content))
    etl(data)
    loaded = table_contents()
    for suffix in [".bz2", ".xz", ".zst", ".zip", ".gz"]:
        path.write_bytes(COMPRESS[suffix](content))
        summary = parse_summary(etl(data).stdout)
        assert summary.files["log"] == {"unchanged": 2, "changed": 1}, suffix
        assert summary.records["log"] == Counts(3, 3)
        assert rejects(last_run()) == []
        assert table_contents() == loaded


def test_gone_files_are_named_the_most_recently_loaded_first(data):
    """Rotation takes old days away; a day deleted by mistake still shows among the five."""
    old = [f"log_data/2018/12/{day:02}.json" for day in range(1, 7)]
    for n, path in enumerate(old):
        write(data, path, lines(G(n)))
    etl(data)
    write(data, "log_data/2018/12/31.json", lines(G(10)))
    etl(data)
    for path in [*old, "log_data/2018/12/31.json"]:
        (data / path).unlink()

    summary = parse_summary(etl(data).stdout)
    assert summary.gone == 7
    assert summary.gone_examples == ["log_data/2018/12/31.json", *old[:4]]


def test_full_refresh_reloads_everything_to_identical_tables(data):
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1), G(2)))
    etl(data)
    before = table_contents()

    summary = parse_summary(etl(data, "--full-refresh").stdout)
    assert summary.files == {"song": {"new": 11}, "log": {"new": 3}}
    assert summary.records == {
        "song": Counts(records=11, loaded=11, rejected=0),
        "log": Counts(records=129, loaded=114, skipped=15, duplicates=0, rejected=0),
    }
    assert summary.reconciled["log"]
    assert table_contents() == before
    assert len(manifest()) == 14


def test_a_full_refresh_with_a_folder_it_cannot_list_empties_nothing_and_says_why(data):
    """What was loaded from a folder that cannot be listed (no permission, a file in its place)
    cannot be loaded again: a full refresh would lose it, where a run without one keeps it."""
    etl(data)
    before = table_contents()
    shutil.rmtree(data / "log_data")
    write(data, "log_data", b"not a folder\n")

    refused = etl(data, "--full-refresh", exit_code=EXIT_ENVIRONMENT)
    assert refused.stderr == refresh_refused(
        data, "log_data", "cannot read folder: Not a directory"
    )
    assert table_contents() == before
    assert len(manifest()) == 13
    assert parse_summary(etl(data).stdout).files["log"] == {"unreadable": 1}
    assert table_contents() == before


def test_songs_arriving_after_their_plays_resolve_them(fresh_tables, tmp_path):
    data = base_sample(tmp_path / "data", songs=False)
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1, song="Unknown")))
    etl(data)
    crafted = "SELECT song_id, artist_id FROM songplays WHERE user_id = %s ORDER BY item_in_session"
    assert query(crafted, (USER,)) == [(None, None), (None, None)]

    write(data, f"{BASE_SONG_DIR}/{FACE['file']}", face_song())
    summary = parse_summary(etl(data).stdout)
    assert summary.resolved == (1, 113, 1)
    assert query(crafted, (USER,)) == [(FACE["song_id"], FACE["artist_id"]), (None, None)]
    assert summary.checks == CHECKS_PASSED


def test_a_play_matches_the_artist_name_its_songs_own_file_gives_not_the_artists_one_name(
    fresh_tables, tmp_path
):
    """An artist's songs may name it in several ways ("Gob", "Gob feat. Ada"), and artists.name
    is one of them (its smallest song_id's). A new song naming the artist otherwise takes no
    play from the artist's other songs, and its own plays resolve to it."""
    data = base_sample(tmp_path / "data")
    other = {"song": "Other Song", "artist": "Gob feat. Ada", "length": 100.5}
    write(data, "log_data/2018/12/new.json", lines(G(0), G(1, **other)))
    etl(data)
    crafted = "SELECT song_id, artist_id FROM songplays WHERE user_id = %s ORDER BY item_in_session"
    assert query(crafted, (USER,)) == [(FACE["song_id"], FACE["artist_id"]), (None, None)]

    smaller = "SOAAAAA12A8C000001"  # before FACE's song_id: the artist takes this song's name
    write(
        data,
        "song_data/0/other.json",
        line(
            song(
                1,
                song_id=smaller,
                artist_id=FACE["artist_id"],
                artist_name="Gob feat. Ada",
                title="Other Song",
                duration=100.5,
            )
        ),
    )
    summary = parse_summary(etl(data).stdout)

    assert query(crafted, (USER,)) == [
        (FACE["song_id"], FACE["artist_id"]),
        (smaller, FACE["artist_id"]),
    ]
    assert query("SELECT name FROM artists WHERE artist_id = %s", (FACE["artist_id"],)) == [
        ("Gob feat. Ada",)
    ]
    assert summary.checks == CHECKS_PASSED
    assert table_contents() == fresh_load_of(data)


def test_plays_resolved_this_run_count_each_play_once_when_its_song_and_a_first_copy_come_together(
    fresh_tables, tmp_path
):
    """A run that brings the song of a stored play and, in a folder first in path order, a copy
    of that play (which takes its place): "this run" is the change in the resolved plays."""
    data = base_sample(tmp_path / "data", songs=False)
    plays = lines(G(0), G(1, song="Unknown"))
    write(data, "log_data/2018/12/new.json", plays)
    etl(data)
    resolved = "SELECT count(song_id) FROM songplays"
    before = scalar(resolved)

    write(data, f"{BASE_SONG_DIR}/{FACE['file']}", face_song())
    write(data, "log_data/0-resent/new.json", plays)
    summary = parse_summary(etl(data).stdout)

    assert (before, scalar(resolved)) == (0, 1)
    assert summary.resolved == (1, 113, 1)
    assert (
        query("SELECT file_id FROM songplays WHERE user_id = %s", (USER,))
        == query("SELECT file_id FROM load_manifest WHERE path = 'log_data/0-resent/new.json'") * 2
    )


def test_a_song_id_several_song_files_hold_takes_the_last_files_values_whatever_the_batches(
    fresh_tables, tmp_path, settings
):
    """A fresh load is a function of the files, not of how they are cut into batches: each
    song_id, and its artist, takes the values of the last file in path order that holds it."""
    rng = random.Random(11)
    files = {}
    for n in range(16):  # 16 files holding 5 songs, each of its own artist
        k = rng.randrange(5)
        files[f"song_data/{rng.choice('ABC')}/{n:02d}.json"] = song(
            k,
            title=f"Version {n}",
            duration=200.25 + n,
            year=1990 + n,
            artist_id=f"ARZZZZZ1187B9{k:05d}",
            artist_name=f"Artist as file {n} has it",
            artist_location=f"Place {n}",
        )
    last = {}
    for path in sorted(files, key=lambda p: p.split("/")):
        write(tmp_path, path, line(files[path]))
        last[files[path]["song_id"]] = files[path]
    expected = (
        sorted(
            (r["song_id"], r["title"], r["artist_id"], r["year"], r["duration"], r["artist_name"])
            for r in last.values()
        ),
        sorted((r["artist_id"], r["artist_name"], r["artist_location"]) for r in last.values()),
    )

    for limits in (
        *(Limits(song_batch_files=files) for files in (1, 2, 3, 10_000)),
        *(Limits(song_batch_bytes=size) for size in (1, 600)),
    ):
        run_main("create_tables.py")
        etl_module.run(settings, tmp_path, jobs=0, progress=False, out=None, limits=limits)
        loaded = (
            query(
                "SELECT song_id, title, artist_id, year, duration::float, artist_name "
                "FROM songs ORDER BY 1"
            ),
            query("SELECT artist_id, name, location FROM artists ORDER BY 1"),
        )
        assert loaded == expected, f"song batches of {limits}"


@pytest.mark.parametrize("form", ["array", "indented array", "one a line"])
def test_a_song_id_one_song_file_holds_twice_takes_its_last_records_values_whatever_the_form(
    fresh_tables, tmp_path, form
):
    """Within a file as between files, the last record of a song_id wins: an array's songs all
    sit on its first line, yet the array's last takes the song as the file's last line does."""
    data = base_sample(tmp_path / "data")
    first = song(1, title="First take", duration=101.5)
    last = song(1, title="Last take", duration=102.5)
    content = {
        "array": json.dumps([first, last]).encode(),
        "indented array": json.dumps([first, last], indent=2).encode(),
        "one a line": lines(first, last),
    }[form]
    write(data, "song_data/Z/twice.json", content)
    write(
        data,
        "log_data/2018/12/new.json",
        lines(G(0, song="Last take", artist="Crafted", length=102.5)),
    )
    etl(data)

    assert query("SELECT song_id, title, duration::float FROM songs WHERE title LIKE '%take'") == [
        (last["song_id"], "Last take", 102.5)
    ]
    assert query("SELECT song_id FROM songplays WHERE user_id = %s", (USER,)) == [
        (last["song_id"],)
    ]


def test_an_artist_takes_its_values_from_its_smallest_song_as_songs_leave_it(
    fresh_tables, tmp_path
):
    """An artist's values are its smallest song's file's: a song file that gives the song to
    another artist takes it out of the running, whether it comes with the artist's other songs
    or after them."""
    data = base_sample(tmp_path / "data")
    former, taker = "ARZZZZZ1187B900001", "ARZZZZZ1187B900002"

    def by(artist_id: str, name: str, place: str) -> dict:
        return {"artist_id": artist_id, "artist_name": name, "artist_location": place}

    artists = "SELECT artist_id, name, location FROM artists WHERE artist_id = ANY(%s) ORDER BY 1"
    write(data, "song_data/A/1.json", line(song(1, **by(former, "Former", "First Place"))))
    write(data, "song_data/A/2.json", line(song(2, **by(former, "Former", "Second Place"))))
    write(data, "song_data/B/1.json", line(song(1, **by(taker, "Taker", "Taken Place"))))
    etl(data)
    assert query(artists, ([former, taker],)) == [
        (former, "Former", "Second Place"),
        (taker, "Taker", "Taken Place"),
    ]

    write(data, "song_data/B/2.json", line(song(2, **by(taker, "Taker", "Taken Place"))))
    write(data, "song_data/A/5.json", line(song(5, **by(former, "Former", "Fifth Place"))))
    etl(data)
    assert query(artists, ([former, taker],)) == [
        (former, "Former", "Fifth Place"),
        (taker, "Taker", "Taken Place"),
    ]
    assert table_contents() == fresh_load_of(data)


def test_an_artist_a_song_moves_away_from_takes_its_next_songs_values_or_goes_with_its_last(
    fresh_tables, tmp_path
):
    """The catalogue corrects two songs' artist_id: the artist that loses its smallest song takes
    the name and place of its smallest song left, the one that loses its only song goes, and the
    plays follow their songs, as a fresh load of the corrected files gives."""
    data = base_sample(tmp_path / "data")
    kept, emptied, taker = "ARZZZZZ1187B900001", "ARZZZZZ1187B900002", "ARZZZZZ1187B900003"

    def record(n: int, artist_id: str, name: str) -> bytes:
        place = f"Place of {n}"
        return line(song(n, artist_id=artist_id, artist_name=name, artist_location=place))

    write(data, "song_data/A/1.json", record(1, kept, "Kept"))
    write(data, "song_data/A/2.json", record(2, kept, "Kept Too"))
    write(data, "song_data/B/3.json", record(3, emptied, "Emptied"))
    plays = [
        event(900 + n, song=song(n)["title"], artist=name, length=song(n)["duration"])
        for n, name in [(1, "Kept"), (3, "Emptied")]
    ]
    write(data, "log_data/moves.json", lines(*plays))
    etl(data)
    artists = "SELECT artist_id, name, location FROM artists WHERE artist_id LIKE 'ARZZZZZ1187B9%'"
    followed = "SELECT song_id, artist_id FROM songplays WHERE item_in_session >= 900 ORDER BY 1"
    assert sorted(query(artists)) == [
        (kept, "Kept", "Place of 1"),
        (emptied, "Emptied", "Place of 3"),
    ]
    assert query(followed) == [(song(1)["song_id"], kept), (song(3)["song_id"], emptied)]

    write(data, "song_data/A/1.json", record(1, taker, "Kept"))
    write(data, "song_data/B/3.json", record(3, taker, "Emptied"))
    summary = parse_summary(etl(data).stdout)
    assert sorted(query(artists)) == [
        (kept, "Kept Too", "Place of 2"),
        (taker, "Kept", "Place of 1"),
    ]
    assert query(followed) == [(song(1)["song_id"], taker), (song(3)["song_id"], taker)]
    assert summary.checks == CHECKS_PASSED
    assert table_contents() == fresh_load_of(data)


@hypothesis_settings(PROPERTY, max_examples=30)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    kind=st.sampled_from(["song", "log"]),
    most=st.integers(1, 4000),
)
def test_batches_stay_under_their_bytes_unless_one_file_alone_is_bigger(
    tmp_path_factory, sizes, kind, most
):
    """Memory follows a batch's bytes, not the input's size: song files holding arrays of songs
    are cut by bytes too, as log files are."""
    root = tmp_path_factory.mktemp("data")
    folder = "song_data" if kind == "song" else "log_data"
    for n, size in enumerate(sizes):
        write(root, f"{folder}/{n:02d}.json", b" " * size)
    source = extract.source(str(root))
    limits = Limits(song_batch_bytes=most, log_batch_bytes=most)

    batches = extract.plan(source, extract.listing(source, kind), kind, {}, limits).batches

    assert [t.size for b in batches for t in b.tasks] == sizes
    for batch in batches:
        assert len(batch.tasks) == 1 or sum(t.size for t in batch.tasks) <= most
    for before, after in zip(batches, batches[1:]):  # a batch ends only where it must
        assert sum(t.size for t in before.tasks) + after.tasks[0].size > most


def test_taking_an_instant_or_a_user_out_finds_their_plays_through_an_index(fresh_tables):
    """A changed file's instants and users that no play holds any more leave time and users;
    the foreign key checks each one against songplays, and without an index leading with its
    column that is a scan of every play, per row taken out."""
    leading = query(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = 'songplays'::regclass"
    )
    assert {"start_time", "user_id"} <= {name for (name,) in leading}


def test_instants_are_stored_exactly_whatever_the_sessions_time_zone(data):
    write(data, "log_data/2018/12/tz.json", lines(G(0), G(1)))
    etl(data, env={"PGTZ": "Pacific/Chatham"})
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
    etl(data)
    assert user() == ("Ada", "paid")

    # Loaded later, but older: it must not win.
    write(data, "log_data/2018/12/a-older.json", lines(G(0, level="free", firstName="Old")))
    etl(data)
    assert user() == ("Ada", "paid")
    assert query(
        "SELECT item_in_session, level FROM songplays WHERE user_id = %s ORDER BY 1", (USER,)
    ) == [(0, "free"), (10, "paid")]

    # Loaded later and newer: it wins.
    write(data, "log_data/2018/12/c-newest.json", lines(G(20, level="free", firstName="New")))
    etl(data)
    assert user() == ("New", "free")
    assert table_contents() == fresh_load_of(data)


def test_a_users_row_is_one_plays_record_a_latest_play_without_names_leaves_them_null(data):
    """The row is the latest play's record of the user, never pieced together from several: a
    name or gender that play lacks (null, or "") is NULL, in a first load and in a merge."""

    def user() -> tuple:
        return query(
            "SELECT first_name, last_name, gender, level FROM users WHERE user_id = %s", (USER,)
        )[0]

    nameless = {"firstName": None, "lastName": "", "gender": None}
    write(
        data, "log_data/2018/12/a.json", lines(G(0, level="free"), G(10, level="paid", **nameless))
    )
    etl(data)
    assert user() == (None, None, None, "paid")

    write(data, "log_data/2018/12/b.json", lines(G(20, level="free", lastName="Byron")))
    etl(data)
    assert user() == ("Ada", "Byron", "F", "free")

    write(data, "log_data/2018/12/c.json", lines(G(30, level="paid", **nameless)))
    etl(data)
    assert user() == (None, None, None, "paid")
    assert table_contents() == fresh_load_of(data)


# ================================================================ plays several files hold
# A play (user, session, item) that several log files hold is the copy of the file first in path
# order, whatever order the files come in; the other copies are kept, for when that file changes.


def user_row() -> tuple:
    return query("SELECT first_name, level FROM users WHERE user_id = %s", (USER,))[0]


def crafted_plays() -> list[tuple]:
    return query(
        "SELECT item_in_session, level, first_name, extract(epoch FROM start_time)::bigint "
        "FROM songplays WHERE user_id = %s ORDER BY item_in_session",
        (USER,),
    )


def test_plays_a_copied_file_also_holds_stay_when_the_first_file_shrinks(data):
    """A log file copied into another folder, loaded, then rewritten smaller: the plays it drops
    are still in the copy, and stay (they once vanished: the copy had only been counted as
    duplicates)."""
    original = write(data, "log_data/2018/12/new.json", lines(*(G(i) for i in range(8))))
    write(data, "log_data/resent/new.json", original.read_bytes())
    etl(data)
    assert manifest()["log_data/2018/12/new.json"] == Counts(8, 8)
    assert manifest()["log_data/resent/new.json"] == Counts(8, 0, duplicates=8)
    original.write_bytes(lines(*(G(i) for i in range(3))))

    summary = parse_summary(etl(data).stdout)
    assert summary.records["log"] == Counts(3, 3)
    assert summary.checks == CHECKS_PASSED
    assert crafted_items() == list(range(8))
    assert manifest()["log_data/2018/12/new.json"] == Counts(3, 3)
    assert manifest()["log_data/resent/new.json"] == Counts(8, 5, duplicates=3)
    assert counts() == plus(songplays=8, users=1, time=8)
    assert table_contents() == fresh_load_of(data)


def test_the_copy_of_the_file_first_in_path_order_wins_whatever_order_files_come_in(data):
    """A resend of part of a file, with other values, arrives later in a folder that sorts first:
    its copy wins, and the user's row and the play's instant follow. When it changes and no
    longer holds the play, the other file's copy is the play again; deleted, a file keeps what
    it loaded."""
    write(data, "log_data/2018/12/b.json", lines(G(1), G(2)))
    etl(data)
    assert user_row() == ("Ada", "paid")
    resend = write(
        data,
        "log_data/2018/0-resent/a.json",
        lines(G(2, level="free", firstName="Eve", ts=T0 + 5000)),
    )
    etl(data)
    assert crafted_plays() == [
        (1, "paid", "Ada", T0 // 1000 + 1),
        (2, "free", "Eve", T0 // 1000 + 5),
    ]
    assert user_row() == ("Eve", "free")
    assert (
        scalar("SELECT count(*) FROM time WHERE start_time = to_timestamp(%s)", (T0 // 1000 + 2,))
        == 0
    )
    assert manifest()["log_data/2018/0-resent/a.json"] == Counts(1, 1)
    assert manifest()["log_data/2018/12/b.json"] == Counts(2, 1, duplicates=1)
    assert table_contents() == fresh_load_of(data)

    resend.write_bytes(lines(G(3, level="free", firstName="Eve")))
    summary = parse_summary(etl(data).stdout)
    assert summary.checks == CHECKS_PASSED
    assert crafted_plays() == [
        (1, "paid", "Ada", T0 // 1000 + 1),
        (2, "paid", "Ada", T0 // 1000 + 2),
        (3, "free", "Eve", T0 // 1000 + 3),
    ]
    assert manifest()["log_data/2018/12/b.json"] == Counts(2, 2)
    assert query("SELECT count(*) FROM songplay_copies") == [(0,)]
    assert user_row() == ("Eve", "free")
    assert table_contents() == fresh_load_of(data)
    resend.unlink()
    assert parse_summary(etl(data).stdout).nothing_new
    assert crafted_items() == [1, 2, 3]


def test_a_file_sent_again_over_itself_takes_over_no_play_its_later_copy_holds(data):
    """A day loaded, its resend under a later path counted as duplicates, then the day sent
    again under its own name (compressed, its lines in another order): its plays leave and
    come back within the run, so no play is taken over and the resend's counts stay."""
    day = [G(i) for i in range(5)]
    original = write(data, "log_data/2018/12/new.json", lines(*day))
    write(data, "log_data/2018/12/resent/new.json", lines(*day))
    etl(data)
    assert manifest()["log_data/2018/12/resent/new.json"] == Counts(5, 0, duplicates=5)
    original.write_bytes(gzip.compress(lines(*reversed(day)), mtime=0))

    summary = parse_summary(etl(data).stdout)
    assert summary.records["log"] == Counts(5, 5)
    assert (summary.taken_over, summary.rows["songplays"]) == (0, (0, BASE["songplays"] + 5))
    assert manifest()["log_data/2018/12/resent/new.json"] == Counts(5, 0, duplicates=5)
    assert manifest()["log_data/2018/12/new.json"] == Counts(5, 5)
    assert table_contents() == fresh_load_of(data)


def test_a_changed_file_takes_over_the_plays_it_now_holds_of_another_file_not_those_it_gave_up(
    data,
):
    """A holds plays 0-4, a later copy R plays 0-7 (it loads 5-7). A changed to plays 3-7 gives
    up 0-4 to R's copies, takes 3 and 4 back and takes over 5-7: three plays taken over."""
    original = write(data, "log_data/2018/12/a.json", lines(*(G(i) for i in range(5))))
    write(data, "log_data/2018/12/resent/a.json", lines(*(G(i) for i in range(8))))
    etl(data)
    assert manifest()["log_data/2018/12/resent/a.json"] == Counts(8, 3, duplicates=5)
    original.write_bytes(lines(*(G(i) for i in range(3, 8))))

    summary = parse_summary(etl(data).stdout)
    assert summary.records["log"] == Counts(5, 5)
    assert (summary.taken_over, summary.rows["songplays"]) == (3, (0, BASE["songplays"] + 8))
    assert manifest()["log_data/2018/12/resent/a.json"] == Counts(8, 3, duplicates=5)
    assert table_contents() == fresh_load_of(data)


def test_a_daily_loads_plays_are_numbered_by_user_session_and_item_as_a_first_loads_are(
    fresh_tables, tmp_path
):
    """songplay_id numbers a part's plays by (user, session, item), in a daily load as in a first
    one and on Citus: the merge's join gave them in the staging table's page order, where a row
    may take the room of one deleted before (2 of 4,335 plays out of order here)."""
    generated = tmp_path / "generated"
    generate_data.generate(str(generated), songs=1500, events=60_000, days=10)
    data = tmp_path / "data"
    shutil.copytree(generated / "song_data", data / "song_data")
    days = sorted((generated / "log_data").rglob("*.json"))
    for day in days[:2]:
        write(data, f"log_data/{day.name}", day.read_bytes())
        etl(data)
        ids = [
            row[0]
            for row in query(
                "SELECT songplay_id FROM songplays WHERE file_id = (SELECT max(file_id) FROM "
                "load_manifest) ORDER BY user_id, session_id, item_in_session"
            )
        ]
        assert len(ids) > 3000 and ids == sorted(ids)
