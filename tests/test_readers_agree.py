"""Whichever reader reads a log line (Arrow's for a clean piece or a clean run of lines, orjson's
line by line for an odd line and the lines near it), the line gets the same verdict and the same
values."""

import json

import pytest
from builders import PLAY, song
from conftest import PROPERTY
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import extract
import parse
import transform

DAMAGED = b'{"ts": 1, "page": "NextSong",\n'  # truncated: sends its piece to the line reader


def line(n: int, **changes) -> bytes:
    return json.dumps({**PLAY, "itemInSession": n, **changes}).encode() + b"\n"


def verdicts(data: bytes) -> tuple[list, list]:
    """(plays as (line, itemInSession, length), rejects as (line, reason)) of a file."""
    parsed, parse_rejects = parse.parse_log_file(data, "log_data/x.json")
    plays, invalid, _ = transform.valid_events(parsed)
    rejects = sorted(
        [(n, reason) for _, n, reason, _ in parse_rejects]
        + [[r["line"], r["reason"]] for r in invalid.to_pylist()]
    )
    kept = [(r["line"], r["itemInSession"], r["length"]) for r in plays.to_pylist()]
    return kept, rejects


ODD_LINES = {
    "NaN where a number goes": b'{"page": "NextSong", "ts": 1541106106796, "length": NaN}\n',
    "Infinity where a number goes": b'{"page": "Home", "ts": 1541106106796, "length": Infinity}\n',
    "two objects on one line, then a blank one": line(7)[:-1] + line(8) + b"\n",
    # JSON has no NaN or Infinity; Python's json.dumps writes them, Arrow's reader takes them
    "NaN in a field the ETL does not read": line(7, registration=float("nan")),
    "-Infinity in a field the ETL does not read": line(7, registration=float("-inf")),
    "a number beyond a double in a field the ETL does not read": line(7)[:-2]
    + b', "registration": 1e400}\n',
    # orjson refuses the line for its NaN, and reads 2**64 as a double, as Arrow does
    "an integer beyond 64 bits where a number goes, beside NaN in a field not read": line(
        7, length=2**64, registration=float("nan")
    ),
    # longer than the integers Python's int() reads from text (sys.get_int_max_str_digits)
    "an integer of 5,000 digits in a field the ETL does not read": line(7)[:-2]
    + b', "registration": '
    + b"9" * 5000
    + b"}\n",
    "an integer of 5,000 digits in a field the ETL reads": line(7)[:-2]
    + b', "sessionId": '
    + b"9" * 5000
    + b"}\n",
    # half a surrogate pair (an emoji cut in two) is no text: orjson refuses it, json reads it
    "a lone surrogate escape in a field the ETL does not read": line(7, method="x\ud83d"),
    "a lone surrogate escape in a field the ETL reads": line(7, userAgent="x\ud83d"),
    "a byte-order mark": b"\xef\xbb\xbf" + line(7),
    "a blank line": b"   \n",
    # Arrow reads a newline as blank space: the object runs on into the next line, and the line
    # holding two objects makes the count of rows that of the lines again.
    "an object left open at the end of its line": b'{"ts": 1, "page": "A", "zz":\n{}}\n'
    + line(7)[:-1]
    + line(8),
}


@pytest.mark.parametrize("odd", list(ODD_LINES))
def test_an_odd_line_gets_the_same_verdict_beside_clean_lines_or_a_damaged_one(odd):
    clean = ODD_LINES[odd] + line(11) + line(12)
    damaged = clean + DAMAGED
    plays_clean, rejects_clean = verdicts(clean)
    plays_damaged, rejects_damaged = verdicts(damaged)
    assert plays_clean == plays_damaged
    assert rejects_damaged == sorted(
        [*rejects_clean, (clean.count(b"\n") + 1, rejects_damaged[-1][1])]
    )
    assert rejects_damaged[-1][1].startswith("malformed JSON")


def test_odd_lines_are_judged_as_json_defines_them():
    assert verdicts(ODD_LINES["NaN where a number goes"] + line(2))[1][0][1].startswith(
        "malformed JSON"
    )
    unread = ODD_LINES["NaN in a field the ETL does not read"]
    assert verdicts(unread + DAMAGED)[0] == [(1, 7, PLAY["length"])]  # as its values are JSON
    unread = ODD_LINES["a lone surrogate escape in a field the ETL does not read"]
    assert verdicts(unread + DAMAGED)[0] == [(1, 7, PLAY["length"])]
    assert verdicts(ODD_LINES["a lone surrogate escape in a field the ETL reads"]) == (
        [],
        [(1, "malformed JSON: no low surrogate in string at column 369")],
    )
    assert verdicts(ODD_LINES["a byte-order mark"])[1] == [
        (1, "a byte-order mark before the record (as files joined together leave one)")
    ]
    plays, rejects = verdicts(line(1) + ODD_LINES["a blank line"] + line(3))
    assert [(n, item) for n, item, _ in plays] == [(1, 1), (3, 3)] and rejects == []
    plays, rejects = verdicts(line(1) + ODD_LINES["two objects on one line, then a blank one"])
    assert [n for n, _, _ in plays] == [1] and rejects[0][0] == 2


def test_a_field_named_twice_counts_with_its_last_value_beside_clean_lines_or_alone():
    """Arrow's reader refuses a block holding it: the line reader reads the block."""
    twice = line(7)[:-2] + b', "itemInSession": 9, "length": 1.5}\n'
    clean_run = b"".join(line(n) for n in range(10, 10 + parse.RUN_LINES_LEAST))
    alone, in_a_run = verdicts(twice + DAMAGED), verdicts(twice + clean_run)
    assert alone[0] == in_a_run[0][:1] == [(1, 9, 1.5)]
    assert in_a_run[1] == []


def test_a_song_file_holding_an_array_of_one_song_is_read():
    song = {
        "song_id": "SOA",
        "title": "T",
        "artist_id": "ARA",
        "artist_name": "N",
        "duration": 1.5,
        "year": 0,
    }
    parsed, rejects = parse.parse_song_file(json.dumps([song]).encode(), "song_data/a.json")
    assert rejects == []
    assert parsed.values.select(["song_id", "line"]).to_pylist() == [{"song_id": "SOA", "line": 1}]


# What a delivery's small files hold: clean events, and now and then a line that sends its piece
# to the line reader (a string where a number goes, a flaw of its record, among them).
CLEAN_LINES = [
    line(1),
    line(2, page="Home", song=None),
    line(3, userId=""),
    line(5, sessionId=2**40),
    b"{}\n",
]
ODD = [
    DAMAGED,
    line(4, length="long"),
    *ODD_LINES.values(),
    b'{"ts": 1, "page": "NextSong"}\r\n',
    b"[1, 2]\n",
]


@hypothesis_settings(PROPERTY, max_examples=300)
@given(
    files=st.lists(
        st.tuples(
            st.lists(st.sampled_from(CLEAN_LINES), min_size=1, max_size=4),
            st.sampled_from([None] * 4 * len(ODD) + ODD),  # a line not clean: one file in five
            st.booleans(),  # its last newline left out
            st.integers(1, 3),  # its first line's number: a part of a bigger file starts later
        ),
        min_size=1,
        max_size=8,
    ),
    piece_bytes=st.sampled_from([1, 150, 400, 1 << 20]),
)
@example(  # an object left open at the end of one file, closed in the next
    files=[
        ([b'{"ts": 1, "page": "A", "zz":\n'], None, False, 1),
        ([b"{}}\n", b'{"ts": 2, "page": "B"}{"ts": 3, "page": "C"}\n'], None, False, 1),
    ],
    piece_bytes=1 << 20,
)
def test_small_files_read_together_get_what_each_gets_read_alone(files, piece_bytes):
    pieces = []
    for n, (lines, odd, cut, first) in enumerate(files):
        data = b"".join(lines[:1] + [odd or b""] + lines[1:])
        pieces.append(parse.Piece(data[:-1] if cut else data, f"log_data/{n}.json", first))
    together, rejects = parse.parse_pieces("log", pieces, piece_bytes)
    alone = [parse.parse_log_file(p.data, p.path, piece_bytes, p.first_line) for p in pieces]
    expected = parse.Records.combined([records for records, _ in alone], parse.EVENT_FIELDS)
    assert together.values.equals(expected.values)
    assert together.flaws.equals(expected.flaws)
    assert rejects == [bad for _, bad in alone]


def line_by_line(data: bytes) -> tuple[parse.Records, list]:
    """The file as the line reader reads it, every line on its own."""
    lines = enumerate(extract.raw_lines(data), 1)
    objects, rejects = parse._decode_lines(lines, "log_data/a.json", read=parse.EVENT_FIELDS)
    return parse.records_from(objects, parse.EVENT_FIELDS), rejects


RUN = parse.RUN_LINES_LEAST
# Odd lines none of whose lines is braced: their own bytes tell they are not plain
UNBRACED = [
    odd
    for odd in ODD
    if not any(
        t.startswith(b"{") and t.removesuffix(b"\r").endswith(b"}") for t in extract.raw_lines(odd)
    )
]


def file_of(runs: list[tuple[int, bytes]], tail: int) -> bytes:
    """Runs of clean lines, each followed by its odd line (or lines), then tail clean lines."""
    data, n = b"", 0
    for count, odd in [*runs, (tail, b"")]:
        data += b"".join(CLEAN_LINES[(n + k) % len(CLEAN_LINES)] for k in range(count)) + odd
        n += count
    return data


@hypothesis_settings(PROPERTY, max_examples=100)
@given(
    runs=st.lists(st.tuples(st.integers(0, 2 * RUN), st.sampled_from(ODD)), min_size=1, max_size=4),
    tail=st.integers(0, 2 * RUN),
    cut=st.booleans(),
    piece_bytes=st.sampled_from([1 << 20, 30_000]),
    block=st.sampled_from([parse.BLOCK_LINES, 150, 7]),
)
def test_a_piece_with_odd_lines_reads_as_every_line_read_on_its_own(
    runs, tail, cut, piece_bytes, block
):
    data = file_of(runs, tail)[: -1 if cut else None]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parse, "BLOCK_LINES", block)  # runs of several blocks too
        parsed, rejects = parse.parse_log_file(data, "log_data/a.json", piece_bytes)
    expected, expected_rejects = line_by_line(data)
    assert parsed.values.drop_columns("raw").equals(expected.values.drop_columns("raw"))
    for raw, expected_raw in zip(
        parsed.values["raw"].to_pylist(), expected.values["raw"].to_pylist()
    ):
        assert raw in (None, expected_raw)
    assert parsed.flaws.equals(expected.flaws)
    assert rejects == expected_rejects


@hypothesis_settings(PROPERTY, max_examples=50)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 2 * RUN), st.sampled_from(UNBRACED)), min_size=1, max_size=4
    ),
    tail=st.integers(0, 2 * RUN),
)
def test_a_damaged_line_costs_its_own_reading_and_clean_runs_around_it_are_read_at_once(runs, tail):
    data = file_of(runs, tail)
    parsed, _ = parse.parse_log_file(data, "log_data/a.json")
    read_at_once = parsed.values["raw"].null_count  # Arrow's reader leaves raw for the rejects
    assert read_at_once == sum(count for count in [*(n for n, _ in runs), tail] if count >= RUN)


@pytest.mark.parametrize("piece_bytes", [1 << 20, 1_000])
def test_a_file_with_windows_line_ends_is_read_at_once_as_its_unix_twin(piece_bytes):
    unix = b"".join(CLEAN_LINES * 300)  # bigger than numpy's threshold, read in pieces too
    windows = unix.replace(b"\n", b"\r\n")
    parsed, rejects = parse.parse_log_file(windows, "log_data/a.json", piece_bytes)
    twin, _ = parse.parse_log_file(unix, "log_data/a.json", piece_bytes)
    assert parsed.values.drop_columns("raw").equals(twin.values.drop_columns("raw"))
    assert rejects == [] and parsed.values["raw"].null_count == unix.count(b"\n")


# Lines plain by their own bytes that Arrow's reader refuses: a value of another type
REFUSED = [line(4, length="long"), line(6, sessionId="6"), line(9, userId=9)]


@hypothesis_settings(PROPERTY, max_examples=50)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 2 * RUN), st.sampled_from(REFUSED)), min_size=1, max_size=4
    ),
    tail=st.integers(0, 2 * RUN),
    block=st.sampled_from([parse.BLOCK_LINES, 150, 7]),
)
def test_a_value_arrow_refuses_costs_the_reading_of_its_block_of_lines_only(runs, tail, block):
    refused, lines = [], 0  # the refused lines' indexes, and how many lines there are
    for count, _ in runs:
        refused.append(lines + count)
        lines += count + 1
    lines += tail
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parse, "BLOCK_LINES", block)
        parsed, _ = parse.parse_log_file(file_of(runs, tail), "log_data/a.json")
    clean_blocks = [
        min(start + block, lines) - start
        for start in range(0, lines, block)
        if not any(start <= n < start + block for n in refused)
    ]
    # Arrow's reader leaves raw for the rejects; lines fewer than RUN are read line by line
    assert parsed.values["raw"].null_count == (sum(clean_blocks) if lines >= RUN else 0)


# A line of a piece: how it starts, what it holds, how it ends
PIECE_LINE = st.tuples(
    st.sampled_from([b"{", b"", b" "]),
    st.lists(st.sampled_from([b"x", b" ", b"\r", b"\x00", b"\\u0000", b"\\uD800"]), max_size=3).map(
        b"".join
    ),
    st.sampled_from([b"}", b"", b"}\r"]),
).map(b"".join)


@hypothesis_settings(PROPERTY, max_examples=300)
@given(lines=st.lists(PIECE_LINE, min_size=1, max_size=8), newline=st.booleans())
def test_a_piece_is_plain_exactly_where_none_of_its_lines_is_odd(lines, newline):
    piece = b"\n".join(lines) + b"\n" * newline or b"\n"  # a piece is never empty
    starts, ends = parse._line_bounds(piece)
    assert len(starts) == len(extract.raw_lines(piece))
    assert parse._plain(piece) == (not parse._odd_lines(piece, starts, ends).any())


def song_text(n: int, **changes) -> bytes:
    return json.dumps({**song(n), **changes}).encode()


# What a batch of song files holds: one song a file, as delivered, and now and then a file that
# is not one plain line (read on its own, as a whole) or a value Arrow's reader refuses.
CLEAN_SONGS = [
    song_text(1),
    song_text(2, year=0, artist_latitude=51.5, artist_longitude=-0.1),
    song_text(3, duration=None, title=""),
    b"{}",
]
ODD_SONGS = [
    song_text(4, year="1999"),  # a string where an integer goes: a flaw of its record
    song_text(5, duration=float("nan")),
    json.dumps([song(6), song(7)]).encode(),
    json.dumps(song(8), indent=2).encode(),
    song_text(9) + b"\n" + song_text(10),
    b'{"song_id": "SOA", "title":',
    b"\xef\xbb\xbf" + song_text(11),
    song_text(12, year=2**64),
    # values Arrow takes and JSON does not, in the field the ETL leaves unread; another field
    song_text(13)[:-1] + b', "num_songs": NaN}',
    song_text(14)[:-1] + b', "num_songs": 1.8e308}',
    song_text(15, num_songs=[[[1]]]),
    song_text(16, label="EMI"),
]


@hypothesis_settings(PROPERTY, max_examples=200)
@given(
    files=st.lists(
        st.tuples(
            st.sampled_from(CLEAN_SONGS * 3 + ODD_SONGS),
            st.booleans(),  # a last newline
        ),
        min_size=1,
        max_size=10,
    ),
    piece_bytes=st.sampled_from([1, 400, 1 << 20]),
)
def test_song_files_read_together_get_what_each_gets_read_alone(files, piece_bytes):
    pieces = [
        parse.Piece(text + b"\n" if newline else text, f"song_data/{n}.json")
        for n, (text, newline) in enumerate(files)
    ]
    together, rejects = parse.parse_pieces("song", pieces, piece_bytes)
    alone = [parse.parse_song_file(p.data, p.path) for p in pieces]
    expected = parse.Records.combined([records for records, _ in alone], parse.SONG_FIELDS)
    # Arrow's reader leaves a song's raw text for the rejects to take from the file (with_raw)
    assert together.values.drop_columns("raw").equals(expected.values.drop_columns("raw"))
    for raw, expected_raw in zip(
        together.values["raw"].to_pylist(), expected.values["raw"].to_pylist()
    ):
        assert raw in (None, expected_raw)
    assert together.flaws.equals(expected.flaws)
    assert rejects == [bad for _, bad in alone]
