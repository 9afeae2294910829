"""Whichever reader reads a log line (Arrow's for a clean piece, orjson's line by line for a
piece with any problem), the line gets the same verdict and the same values."""

import json

import pytest
from builders import PLAY

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
    "a byte-order mark": b"\xef\xbb\xbf" + line(7),
    "a blank line": b"   \n",
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
    assert verdicts(ODD_LINES["a byte-order mark"])[1] == [(1, "not valid UTF-8")]
    plays, rejects = verdicts(line(1) + ODD_LINES["a blank line"] + line(3))
    assert [(n, item) for n, item, _ in plays] == [(1, 1), (3, 3)] and rejects == []
    plays, rejects = verdicts(line(1) + ODD_LINES["two objects on one line, then a blank one"])
    assert [n for n, _, _ in plays] == [1] and rejects[0][0] == 2


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
