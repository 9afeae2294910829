"""Extract and transform on exact inputs, no database: parsing log and song files into Records,
judging records, shaping the staging rows, and rendering COPY payloads."""

import csv
import dataclasses
import io
import json
import string
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from builders import PLAY, line, lines, log_file
from conftest import PROPERTY
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import contract
import extract
import parse
import prepare
import transform

SONG = {
    "num_songs": 1,
    "artist_id": "ARD7TVE1187B99BFB1",
    "artist_latitude": None,
    "artist_longitude": None,
    "artist_location": "",
    "artist_name": "Casual",
    "song_id": "SOMZWCG12A8C13C480",
    "title": "I Didn't Mean To",
    "duration": 218.93179,
    "year": 0,
}


def events(*lines):
    parsed, rejects = parse.parse_log_file(log_file(*lines), "log_data/x.json")
    plays, invalid, skipped = transform.valid_events(parsed)
    return plays, transform.reject_table(rejects), invalid, skipped


def rows(table: pa.Table, *columns: str) -> list[list]:
    """The table's values in these columns, row by row."""
    return [[row[c] for c in columns] for row in table.select(list(columns)).to_pylist()]


def test_repair_mojibake_peels_every_layer_of_double_encoded_utf8():
    assert transform.repair_mojibake("Aliz\u00c3\u0083\u00c2\u00a9e") == "Alizée"
    assert transform.repair_mojibake("S\u00c3\u0083\u00c2\u00a5ng") == "Sång"
    assert transform.repair_mojibake("BjÃ¶rk") == "Björk"
    assert transform.repair_mojibake("Sigur Rós") == "Sigur Rós"
    assert transform.repair_mojibake("It’s “quoted”") == "It’s “quoted”"


def test_repair_mojibake_undoes_windows_1252_layers_and_layers_of_both_encodings():
    cases = {
        "Åžebnem Ferah": "Şebnem Ferah",
        "AÄŸlama": "Ağlama",
        "ÄŒajkovskij": "Čajkovskij",
        "Songâ„¢": "Song™",
        "MÃ–TLEY CRÃœE": "MÖTLEY CRÜE",
        "NemeÈ™": "Nemeș",
        "SÃƒÂ¥ng": "Sång",  # Windows-1252 twice
        "Ã\u0085Å¾ebnem": "Şebnem",  # Windows-1252, then Latin-1
    }
    assert {text: transform.repair_mojibake(text) for text in cases} == cases


def test_repair_mojibake_undoes_other_scripts_shown_without_a_c1_control():
    cases = {"Ô±Õ²Õ¡Õ½Õ«": "Աղասի", "Cá»§a tá»±": "Của tự", "hÆ¡n cÃ³": "hơn có"}
    assert {text: transform.repair_mojibake(text) for text in cases} == cases


def test_repair_mojibake_mends_mojibake_beside_text_no_single_byte_encoding_holds():
    cases = {"HÃ¥kan “Live”": "Håkan “Live”", "SÃ\u0083Â¥ng ™ 🎵": "Sång ™ 🎵"}
    assert {text: transform.repair_mojibake(text) for text in cases} == cases


def test_repair_mojibake_keeps_text_that_only_decodes_as_utf8_to_unlikely_characters():
    kept = [
        "CAFÉ\u00a0!",  # not 'CAFɠ!'
        "Ô\u00a0MON PAYS",
        "OÙ\u00a0?",
        "3×½",
        "Úštěk",  # not 'ښtěk'
        "POSPÍŠIL",
        "MATÚŠ VOJTKO",
        "JULIA MALÕŠEV",
        "CAFÉ…",  # not 'CAFɅ'
        "“CAFÉ”",
        "CAFÉ’S",
        "BEYONCÉ™",
        "DAGØ…",
    ]
    assert [transform.repair_mojibake(text) for text in kept] == kept


# Words, each of one script, between quotes or before punctuation, as titles and names hold
# them: whatever the repair makes of such text, it makes of any layers of mojibake over it, so
# that a play matches its song.
SCRIPTS = [
    string.ascii_letters + string.digits,
    string.ascii_letters + "àáâãäåæçèéêëíîïñòóôõöøùúûüýÿßÀÉÖÜÅÇŠŽšžœŒşğıİłŁőűČčřěůŘəɔɛ",
    string.ascii_letters + "ơưủựữếệầạăđĐ",  # Vietnamese
    "абвгдежзийклмнопрстуфхцчшщъыьэюяПАЁё",
    "αβγδεζηθικλμνξοπρστυφχψωΩ",
    "ԱԲԳԴաբգդեզէըթժիլխծկ",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "中文字橫山森治日本語주고려우건",
    "’“”€™…–🎵",
]


def as_single_bytes(text: str, encoding: str) -> str:
    """text's UTF-8 read one byte a character, as Latin-1 or Windows-1252 (as a browser shows
    the five bytes Windows-1252 leaves undefined: as the C1 controls of the same number)."""
    return "".join(
        bytes([byte]).decode(encoding, errors="ignore") or chr(byte)
        for byte in text.encode("utf-8")
    )


@hypothesis_settings(PROPERTY, max_examples=300)
@given(
    words=st.lists(
        st.tuples(
            st.sampled_from(["", "“", "'"]),
            st.sampled_from(SCRIPTS).flatmap(lambda chars: st.text(chars, min_size=1, max_size=5)),
            st.sampled_from(["", "…", "”", "’s", "!", "\u00a0!", "™"]),
        ).map("".join),
        min_size=1,
        max_size=5,
    ),
    layers=st.lists(st.sampled_from(["latin-1", "cp1252"]), min_size=1, max_size=3),
)
def test_repair_mojibake_makes_of_any_layers_of_mojibake_what_it_makes_of_the_text(words, layers):
    text = " ".join(words)
    shown = text
    for encoding in layers:
        shown = as_single_bytes(shown, encoding)

    assert transform.repair_mojibake(shown) == transform.repair_mojibake(text)


def test_play_rows_make_utc_instants_integer_ids_and_unquoted_user_agents():
    plays, _, _, _ = events(PLAY)
    row = transform.play_rows(plays).to_pylist()[0]
    assert row["start_time"] == datetime(2018, 11, 1, 21, 1, 46, 796000, tzinfo=UTC)
    assert (row["user_id"], row["session_id"], row["item_in_session"]) == (8, 139, 1)
    assert row["user_agent"] == "Mozilla/5.0 (Windows NT 6.1)"
    assert (row["song_title"], row["artist_name"], row["song_length"]) == (
        "You Gotta Be",
        "Des'ree",
        246.30812,
    )


def test_play_rows_repair_every_text_the_app_double_encodes_not_only_song_and_artist():
    double = {"Zoë": "Zo\u00c3\u0083\u00c2\u00ab", "Müller": "M\u00c3\u0083\u00c2\u00bcller"}
    play = {
        **PLAY,
        "song": double["Zoë"],
        "artist": double["Müller"],
        "firstName": double["Zoë"],
        "lastName": double["Müller"],
        "location": f"{double['Müller']}heim, BW",
        "userAgent": f'"Mozilla/5.0 ({double["Zoë"]})"',
    }
    plays, _, _, _ = events(play)
    columns = ["song_title", "artist_name", "first_name", "last_name", "location", "user_agent"]
    assert rows(transform.play_rows(plays), *columns) == [
        ["Zoë", "Müller", "Zoë", "Müller", "Müllerheim, BW", "Mozilla/5.0 (Zoë)"]
    ]


def test_a_user_id_is_the_value_of_its_digits_up_to_the_largest_integer_users_holds():
    ids = ["41", "012", "0" * 24 + "41", "2147483647", "2147483648", "9" * 11, "-1", "4 1", "4.0"]
    plays, _, invalid, _ = events(
        *({**PLAY, "itemInSession": n, "userId": v} for n, v in enumerate(ids))
    )
    assert transform.play_rows(plays)["user_id"].to_pylist() == [41, 12, 41, 2_147_483_647]
    assert rows(invalid, "line", "reason") == [
        [5, "userId out of range"],
        [6, "userId out of range"],
        [7, "userId is not numeric"],
        [8, "userId is not numeric"],
        [9, "userId is not numeric"],
    ]


def test_play_rows_keep_a_play_without_artist_and_unquote_only_wrapping_quotes():
    agents = ['"a\nb"', '"', '""', 'x "y"', None]
    lines = [
        {**PLAY, "itemInSession": n, "artist": None if n == 0 else "BjÃ¶rk", "userAgent": agent}
        for n, agent in enumerate(agents)
    ]
    plays, _, _, _ = events(*lines)
    shaped = transform.play_rows(plays)
    assert shaped["artist_name"].to_pylist() == [
        None,
        "Björk",
        "Björk",
        "Björk",
        "Björk",
    ]
    assert shaped["user_agent"].to_pylist() == [
        "a\nb",
        '"',
        None,
        'x "y"',
        None,
    ]


def test_play_rows_make_every_empty_text_a_play_keeps_null():
    empty = {"artist": "", "location": "", "userAgent": '""', "firstName": "", "lastName": ""}
    plays, _, _, _ = events({**PLAY, **empty, "gender": ""})
    row = transform.play_rows(plays).to_pylist()[0]
    kept = ["artist_name", "location", "user_agent", "first_name", "last_name", "gender"]
    assert [row[column] for column in kept] == [None] * 6
    assert row["song_title"] == PLAY["song"]


def test_repair_mojibake_reads_c1_controls_as_windows_1252_as_the_docs_say():
    cases = {"\u0080": "€", "\u0085nel": "…nel", "x\u0099y": "x™y", "Â£5": "£5", "Ã": "Ã"}
    assert {text: transform.repair_mojibake(text) for text in cases} == cases


def test_valid_events_skips_other_pages_and_rejects_bad_plays_with_their_line():
    home = {**PLAY, "page": "Home", "userId": "", "song": None, "artist": None}
    bad_user = {**PLAY, "userId": "", "itemInSession": 2}
    text_ts = {**PLAY, "ts": "soon", "itemInSession": 3}
    plays, parse_rejects, invalid, skipped = events(PLAY, home, bad_user, b"{oops", text_ts)
    assert plays.num_rows == 1
    assert skipped == {"log_data/x.json": 1}
    assert rows(parse_rejects, "line") == [[4]]
    assert parse_rejects["reason"][0].as_py().startswith("malformed JSON")
    assert rows(invalid, "line", "reason") == [
        [3, "userId missing on a play"],
        [5, "ts is not an integer"],
    ]


def test_a_user_id_of_other_digits_than_ascii_ones_is_not_numeric():
    plays, _, invalid, _ = events(PLAY, {**PLAY, "userId": "\u0661\u0662", "itemInSession": 2})
    assert plays["userId"].to_pylist() == ["8"]
    assert rows(invalid, "line", "reason") == [[2, "userId is not numeric"]]


def test_fast_reader_takes_clean_pieces_with_the_line_by_line_readers_result():
    clean = log_file(PLAY, {**PLAY, "itemInSession": 2, "level": "gold"})
    fast = parse._fast_lines("log", clean, "p", 1, clean.count(b"\n"))
    assert fast is not None
    slow, rejects = parse.parse_log_file(clean + b"\n{oops", "p")
    assert rejects[0][1:3] == (
        3,
        "malformed JSON: unexpected character, expected a string key at column 2",
    )
    assert fast.values.drop_columns("raw").equals(slow.values.drop_columns("raw"))
    plays, invalid, _ = transform.valid_events(fast)
    assert plays.num_rows == 1
    assert rows(invalid, "line", "reason") == [[2, "level is not 'free' or 'paid'"]]


@hypothesis_settings(PROPERTY, max_examples=200)
@given(
    lead=st.sampled_from([0, 1, extract.BLOCK - 2, extract.BLOCK, 2 * extract.BLOCK - 1]),
    parts=st.lists(
        st.sampled_from([b"\n", b"{", b"}", b"x", b" ", b"\n{", b"}\n", b"\n\n"]), max_size=30
    ),
)
def test_lines_are_counted_and_their_ends_checked_wherever_the_newlines_stand(lead, parts):
    # Newlines straddling the megabyte blocks newline_count compares at a time, or not.
    data = b"{" * lead + b"".join(parts)
    assert parse.newline_count(data) == data.count(b"\n")
    if data:  # a piece is never empty
        braced = [t.startswith(b"{") and t.endswith(b"}") for t in extract.raw_lines(data)]
        assert parse._lines_are_braced(data) == all(braced)


def test_big_log_file_is_parsed_in_line_aligned_pieces_numbered_as_one_file():
    lines = [{**PLAY, "itemInSession": n, "ts": PLAY["ts"] + n} for n in range(1, 8)]
    whole, _ = parse.parse_log_file(log_file(*lines), "p")
    piece = len(line(PLAY)) * 2  # two or three lines a piece
    assert [p.count(b"\n") for p in extract.line_aligned_pieces(log_file(*lines), piece)] == [
        2,
        2,
        2,
        0,
    ]
    pieces, _ = parse.parse_log_file(log_file(*lines), "p", piece)
    assert pieces.values["line"].to_pylist() == list(range(1, 8))
    assert pieces.values["itemInSession"].to_pylist() == list(range(1, 8))
    assert pieces.values.equals(whole.values)
    lines[5] = b'{"ts": 1, "page": "NextSong",'
    damaged, rejects = parse.parse_log_file(log_file(*lines), "p", piece)
    assert [line for _, line, _, _ in rejects] == [6]
    assert damaged.values["line"].to_pylist() == [1, 2, 3, 4, 5, 7]


def test_time_table_uses_utc_iso_week_and_monday_as_weekday_1():
    instants = pa.array([1541106106796, 1541106106796, 1543622399000], pa.int64())
    table = transform.time_table(
        pa.table({"start_time": instants.cast(pa.timestamp("ms", tz="UTC"))})
    )
    assert rows(table, "hour", "day", "week", "month", "year", "weekday") == [
        [21, 1, 44, 11, 2018, 4],  # Thursday 1 Nov 2018
        [23, 30, 48, 11, 2018, 5],  # Friday 30 Nov 2018, 23:59:59 UTC
    ]


def test_time_table_year_is_the_calendar_years_and_week_the_iso_weeks():
    instants = pa.array([1546214400000, 1514764800000], pa.int64())  # 2018-12-31, 2018-01-01
    table = transform.time_table(
        pa.table({"start_time": instants.cast(pa.timestamp("ms", tz="UTC"))})
    )
    assert rows(table, "day", "week", "month", "year", "weekday") == [
        [1, 1, 1, 2018, 1],  # Monday 1 Jan 2018: ISO week 1 of 2018
        [31, 1, 12, 2018, 1],  # Monday 31 Dec 2018: ISO week 1 of 2019, calendar year 2018
    ]


def test_users_table_keeps_each_users_latest_play_whatever_the_row_order():
    plays, _, _, _ = events(
        {**PLAY, "ts": 3, "level": "paid", "itemInSession": 5},
        {**PLAY, "ts": 1, "level": "free", "itemInSession": 9},
        {**PLAY, "ts": 3, "level": "free", "itemInSession": 4},
    )
    users = transform.users_table(transform.play_rows(plays))
    assert rows(users, "user_id", "level", "item_in_session") == [[8, "paid", 5]]


def test_dedupe_plays_keeps_the_first_row_of_each_play():
    plays, _, _, _ = events(PLAY, {**PLAY, "itemInSession": 2}, {**PLAY, "level": "paid"})
    kept = transform.dedupe_plays(transform.play_rows(plays))
    assert rows(kept, "item_in_session", "level") == [[1, "free"], [2, "free"]]


@hypothesis_settings(PROPERTY, max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 3), st.integers(1, 2), st.integers(0, 3)),
        max_size=40,
    )
)
def test_dedupe_plays_keeps_each_files_first_copy_in_key_order_files_in_their_order(plays):
    # A part's rows come file by file; a play (user, session, item) may repeat within a file and
    # across files.
    plays = sorted(plays, key=lambda p: p[0])
    table = pa.table(
        {
            "path": [f"log_data/{p[0]}.json" for p in plays],
            "user_id": [p[1] for p in plays],
            "session_id": [p[2] for p in plays],
            "item_in_session": [p[3] for p in plays],
            "line": list(range(1, len(plays) + 1)),
        }
    )
    firsts = {}
    for row in table.to_pylist():
        firsts.setdefault((row["path"], *[row[c] for c in transform.PLAY_KEY]), row)
    expected = sorted(firsts.values(), key=lambda r: [r[c] for c in transform.PLAY_KEY])
    assert transform.dedupe_plays(table).to_pylist() == expected


@hypothesis_settings(PROPERTY, max_examples=60)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a.json", "b/a.json"]), st.sampled_from(["SO1", "SO2", "SO3"])),
        max_size=25,
    )
)
def test_song_rows_keep_each_files_last_record_of_a_song_id_in_order(records):
    rows = [  # an array's songs: all on its first line
        {**SONG, "path": path, "line": 1, "song_id": song_id, "title": f"record {n}"}
        for n, (path, song_id) in enumerate(records)
    ]
    schema = pa.Table.from_pylist([{**SONG, "path": "", "line": 1}]).schema
    songs = pa.Table.from_pylist(rows, schema=schema)
    last = {(path, song_id): n for n, (path, song_id) in enumerate(records)}
    assert transform.song_rows(songs)["title"].to_pylist() == [
        f"record {n}" for n in sorted(last.values())
    ]


def test_song_rows_turn_year_zero_and_empty_location_into_null():
    parsed, rejects = parse.parse_song_file(json.dumps(SONG).encode(), "song_data/s.json")
    good, invalid = transform.valid_songs(parsed)
    row = transform.song_rows(good).to_pylist()[0]
    assert rejects == [] and invalid.num_rows == 0
    assert row["year"] is None and row["artist_location"] is None
    assert (row["song_id"], row["duration"]) == ("SOMZWCG12A8C13C480", 218.93179)


def test_parse_song_file_reads_arrays_and_one_object_per_line():
    two = [SONG, {**SONG, "song_id": "SOTWO"}]
    as_array, _ = parse.parse_song_file(json.dumps(two).encode(), "s")
    as_lines, _ = parse.parse_song_file(log_file(*two), "s")
    assert as_array.values["song_id"].to_pylist() == ["SOMZWCG12A8C13C480", "SOTWO"]
    assert rows(as_lines.values, "song_id", "line") == [
        ["SOMZWCG12A8C13C480", 1],
        ["SOTWO", 2],
    ]


@pytest.mark.parametrize("indent", ["  ", "\t"])
def test_a_song_written_over_several_lines_that_is_not_json_is_one_reject_where_it_breaks(indent):
    """A pretty-printed song with a comma missing at the end of its fifth line: one record
    rejected, at the line where the JSON breaks (its sixth), not one reject per line."""
    lines_of = json.dumps(SONG, indent=indent).splitlines()
    lines_of[4] = lines_of[4].removesuffix(",")
    text = "\n".join(lines_of).encode()
    parsed, rejects = parse.parse_song_file(text + b"\n", "song_data/pretty.json")
    assert parsed.values.num_rows == 0
    assert rejects == [
        contract.Reject(
            "song_data/pretty.json",
            6,
            "malformed JSON: unexpected character, expected ',' or '}' at column "
            f"{len(indent) + 1}",
            text,
        )
    ]


def test_songs_one_a_line_whose_first_line_is_broken_keep_the_others():
    text = (
        json.dumps(SONG)[:40].encode() + b"\n" + json.dumps({**SONG, "song_id": "SOTWO"}).encode()
    )
    parsed, rejects = parse.parse_song_file(text, "s")
    assert parsed.values["song_id"].to_pylist() == ["SOTWO"]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(1, "malformed JSON")]


def test_a_file_giving_a_part_two_chunks_is_counted_once_there_with_its_first_chunks_status():
    first = lines(PLAY, {**PLAY, "itemInSession": 2, "level": "gold"})
    second = log_file({**PLAY, "itemInSession": 3, "page": "Home"}, {**PLAY, "itemInSession": 4})
    read = contract.FileRead("new", len(first + second), "0" * 64)
    file = contract.FilePart("log_data/x.json", 0, read)
    chunks = [
        prepare.read_chunk("log", file, first, 1),
        prepare.read_chunk("log", dataclasses.replace(file, first=False), second, 3),
    ]
    part = prepare.shape("log", 0, True, chunks, [])
    counts = [(f.path, f.first, f.records, f.accepted, f.skipped, f.rejected) for f in part.files]
    assert counts == [("log_data/x.json", True, 4, 2, 1, 1)]
    manifest = list(csv.reader(io.StringIO(part.copies["stage_manifest"].decode())))
    assert [row[:3] + row[6:] for row in manifest] == [
        # a file has no ETag, and no file id taken before it is read: NULL, NULL
        ["log_data/x.json", "log", "true", "4", "0", "1", "1", "", ""]
    ]
    rejects = list(csv.reader(io.StringIO(part.copies["stage_rejects"].decode())))
    assert rejects == [
        [
            "log_data/x.json",
            "2",
            "level is not 'free' or 'paid'",
            lines(PLAY, {**PLAY, "itemInSession": 2, "level": "gold"}).split(b"\n")[1].decode(),
        ]
    ]


def test_render_csv_distinguishes_null_from_empty_text_and_keeps_floats_exact():
    table = pa.table({"a": ["x,y", "", None], "b": [218.93179, 0.1, None]})
    assert transform.render_csv(table, ["a", "b"]) == b'"x,y",218.93179\n"",0.1\n,\n'
    after_nothing = pa.concat_tables([table.slice(0, 0), table])  # as a filter can leave it
    assert transform.render_csv(after_nothing, ["a", "b"]) == b'"x,y",218.93179\n"",0.1\n,\n'
