"""Transform: judge each record, and shape the good ones into the rows of the staging tables.

Pure functions on Arrow tables, each a few vectorised pyarrow.compute kernels over whole columns:
no files, no database. ``prepare.shape`` calls them in this order: valid_songs → song_rows, or
valid_events → play_rows → dedupe_plays, then (``prepare.play_copies``) users_table, time_table
and, in a bulk load, songplay_rows against the song keys (song_key_table); render_csv makes each
table's COPY payload. (A table is a DataFrame away: ``table.to_pandas()``.)
"""

from __future__ import annotations

import functools
import io
import re
import unicodedata
from collections.abc import Iterable

import ftfy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv

import sql_queries as sql
from contract import KEY_BYTES, RAW_TEXT_BYTES, RAW_TEXT_LIMIT, Reject
from parse import EVENT_FIELDS, SONG_FIELDS, Records

INT32 = (-(2**31), 2**31 - 1)
TS_RANGE = (0, 253_402_300_799_999)  # epoch ms up to the end of year 9999
UTC_INSTANT = pa.timestamp("us", tz="UTC")
REJECT_SCHEMA = pa.schema(
    [("path", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)

# The log's text is UTF-8 decoded as Latin-1 (or Windows-1252) and encoded again: repair that
# (song files' text too, so that both sides match alike), leaving quotes, ligatures, widths, line
# breaks, control characters and Unicode normalisation as recorded.
MOJIBAKE_ONLY = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)

# ================================================================ judging records

# A rule: (its reason, or a reason per row; where it fails).
Rule = tuple[str | pa.ChunkedArray, pa.ChunkedArray]


def _yes(mask) -> pa.ChunkedArray:
    """A condition as plain booleans: unknown (null) is no."""
    return pc.fill_null(mask, False)


def _outside(values: pa.ChunkedArray, low: int, high: int) -> pa.ChunkedArray:
    """Where a present value lies outside [low, high]."""
    return _yes(pc.or_(pc.less(values, low), pc.greater(values, high)))


def _rules(records: Records, fields: dict) -> tuple[dict[str, pa.ChunkedArray], dict[str, Rule]]:
    """Per field: whether it is missing (absent, null or empty text, but not flawed), and the
    rule its flaws make (reasons, mask)."""
    missing, flawed = {}, {}
    for field, (kind, *_) in fields.items():
        values, flaw = records.values[field], records.flaw(field)
        missing[field] = pc.is_null(values)
        if flaw is not None:
            missing[field] = pc.and_(missing[field], pc.is_null(flaw))
            flawed[field] = (flaw, pc.is_valid(flaw))
        if kind == "text":
            missing[field] = pc.or_(missing[field], _yes(pc.equal(values, "")))
    return missing, flawed


def _first_failure(rules: list[Rule]) -> pa.Array:
    """The first failing rule's reason per row (null where all pass)."""
    failed = pa.StructArray.from_arrays(
        [_yes(mask).combine_chunks() for _, mask in rules], [str(n) for n in range(len(rules))]
    )
    reasons = [
        pa.scalar(text) if isinstance(text, str) else text.combine_chunks() for text, _ in rules
    ]
    return pc.case_when(failed, *reasons)


def _split(table: pa.Table, reason: pa.Array) -> tuple[pa.Table, pa.Table]:
    """(the rows that pass, without their raw text; rejects for the rest)."""
    if reason.null_count == len(reason):
        return table.drop_columns("raw"), reject_table([])
    bad = pc.is_valid(reason)
    rejects = table.append_column("reason", reason).filter(bad).select(REJECT_SCHEMA.names)
    rows = zip(*(rejects[name].to_pylist() for name in REJECT_SCHEMA.names), strict=True)
    return table.drop_columns("raw").filter(pc.invert(bad)), reject_table(rows)


def valid_songs(records: Records) -> tuple[pa.Table, pa.Table]:
    """Song records that satisfy the schema, and rejects for the rest."""
    table = records.values
    missing, flawed = _rules(records, SONG_FIELDS)
    rules = [
        (f"{field} missing", missing[field])
        for field, (_, required) in SONG_FIELDS.items()
        if required
    ]
    rules += list(flawed.values())
    rules += [
        ("duration is negative", _yes(pc.less(table["duration"], 0))),
        ("year is negative", _yes(pc.less(table["year"], 0))),
        ("year out of range", _outside(table["year"], *INT32)),
        *(
            (
                f"{key} longer than {KEY_BYTES:,} bytes, {why}",
                _yes(pc.greater(pc.binary_length(table[key]), KEY_BYTES)),
            )
            for keys, why in [
                (SONG_IDS, "which an index cannot key"),
                (SONG_MATCHED_BY, "too long to match plays by"),
            ]
            for key in keys
        ),
    ]
    return _split(table, _first_failure(rules))


def song_rows(songs: pa.Table) -> pa.Table:
    """Rows of stage_songs: of a song_id a file holds twice, its last record (an array's songs
    all sit on its first line: the database, which takes a file's last line, could not tell them
    apart); year 0 means unknown, an empty location is no location. Text is repaired as the
    log's is, so a play and its song match whatever the repair makes of either: the same text
    in both stays the same."""
    songs = songs.take(
        _last_of_each(pc.binary_join_element_wise(songs["path"], songs["song_id"], "\0"))
    )
    columns = {name: songs[name] for name in sql.STAGE_COLUMNS["stage_songs"]}
    columns["title"] = repair_text(songs["title"])
    columns["artist_name"] = repair_text(songs["artist_name"])
    columns["year"] = _null_where(songs["year"], 0)
    columns["artist_location"] = _blank_to_null(repair_text(songs["artist_location"]))
    return pa.table(columns)


def _last_of_each(keys: pa.ChunkedArray) -> np.ndarray:
    """The positions of each distinct key's last row, in order. Without Arrow's group_by, whose
    engine took 30 MB more in the process that loads the songs (bench/README.md)."""
    codes = pc.dictionary_encode(keys.combine_chunks()).indices.to_numpy()
    last = np.full(codes.max() + 1 if len(codes) else 0, -1, dtype=np.int64)
    np.maximum.at(last, codes, np.arange(len(codes)))
    return np.sort(last)


def valid_events(records: Records) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(plays, rejects, per path the events skipped by design: pages other than NextSong)."""
    table = records.values
    missing, flawed = _rules(records, EVENT_FIELDS)
    every = [(f"{f} missing", missing[f]) for f, spec in EVENT_FIELDS.items() if spec[1]]
    play = [
        (f"{f} missing on a play", missing[f])
        for f, spec in EVENT_FIELDS.items()
        if spec[2] and not spec[1]
    ]
    for field, rule in flawed.items():
        (every if EVENT_FIELDS[field][1] else play).append(rule)
    every.append(("ts out of range", _outside(table["ts"], *TS_RANGE)))
    numeric = pc.match_substring_regex(table["userId"], r"^[0-9]+$")
    play += [
        ("userId is not numeric", _yes(pc.invert(numeric))),
        ("userId out of range", _beyond_int32(table["userId"])),
        ("sessionId out of range", _outside(table["sessionId"], *INT32)),
        ("itemInSession out of range", _outside(table["itemInSession"], *INT32)),
        ("length is negative", _yes(pc.less(table["length"], 0))),
        (
            "level is not 'free' or 'paid'",
            pc.and_(
                pc.invert(pc.is_in(table["level"], pa.array(["free", "paid"]))),
                pc.invert(missing["level"]),
            ),
        ),
    ]
    # A play's own rules count only for a play that passes the rules of every event.
    is_play = _yes(pc.equal(table["page"], "NextSong"))
    good, rejects = _split(
        table.append_column("is_play", is_play),
        _first_failure(every + [(text, pc.and_(is_play, failed)) for text, failed in play]),
    )
    skipped = per_path(good.filter(pc.invert(good["is_play"])))
    return good.filter(good["is_play"]).drop_columns("is_play"), rejects, skipped


def _beyond_int32(digits: pa.ChunkedArray) -> pa.ChunkedArray:
    """Where a text of digits, leading zeros aside, is a number above INT32's largest: longer,
    or as long and after it (digits of one length sort as their numbers)."""
    value = pc.utf8_ltrim(digits, characters="0")
    length, largest = pc.utf8_length(value), str(INT32[1])
    longer = pc.greater(length, len(largest))
    return _yes(pc.or_(longer, pc.and_(pc.equal(length, len(largest)), pc.greater(value, largest))))


def per_path(table: pa.Table) -> dict[str, int]:
    """How many of the table's rows each path has."""
    counted = pc.value_counts(table["path"])
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


# Texts repaired once a run: titles, names and places recur from batch to batch. The cache is
# bounded in bytes too: 8,000 titles of 30,000 characters each took a run to 1.44 GB when every
# text was kept, 100,000 of them.
REPAIRS_KEPT, REPAIRS_KEPT_UP_TO = 16_384, 256  # texts, characters each


# Mojibake shows each byte of UTF-8 text as one character: Latin-1's, or for 0x80-0x9F often
# Windows-1252's (€ ‚ ƒ … ™ ž Ÿ; a browser reads "latin1" so). SHOWN_BYTE maps both back.
WINDOWS_1252_SIGNS = {
    sign: byte for byte in range(0x80, 0xA0) if (sign := bytes([byte]).decode("cp1252", "ignore"))
}
SHOWN_BYTE = {chr(byte): byte for byte in range(256)} | WINDOWS_1252_SIGNS
_CONTINUATION = "[\x80-\xbf" + "".join(WINDOWS_1252_SIGNS) + "]"
SHOWN_UTF8 = re.compile(
    f"[\xc2-\xdf]{_CONTINUATION}|[\xe0-\xef]{_CONTINUATION}{{2}}|[\xf0-\xf4]{_CONTINUATION}{{3}}"
)


def repair_mojibake(text: str) -> str:
    """Undo every layer of UTF-8 shown as single bytes (peel_layer), then let ftfy mend what
    else looks broken. The exact step goes first: ftfy calls a lone 'Ã¥' or 'Åž' plausible and
    stops a layer short, or leaves it."""
    return _repaired(text) if len(text) <= REPAIRS_KEPT_UP_TO else _repair(text)


@functools.lru_cache(maxsize=REPAIRS_KEPT)
def _repaired(text: str) -> str:
    return _repair(text)


def _repair(text: str) -> str:
    while (peeled := peel_layer(text)) != text:
        text = peeled
    return ftfy.fix_text(text, MOJIBAKE_ONLY)


def peel_layer(text: str) -> str:
    """One layer of UTF-8 shown as Latin-1 or Windows-1252 characters undone, where the text
    reads as one: each of its characters U+0080-U+00FF is part of a shown UTF-8 sequence (others,
    an emoji or “quotes” beside them, may stand alone), and some sequence is certain
    (_certain) or every character it makes is plausible (_plausible). Else the text as it is."""
    pieces, made, done, length = [], [], 0, 0
    certain = False
    for match in SHOWN_UTF8.finditer(text):
        char = _utf8(match[0])
        if char is None:
            continue
        length += match.start() - done
        pieces += [text[done : match.start()], char]
        made.append(length)
        length += 1
        done = match.end()
        certain = certain or _certain(match[0], char)
    pieces.append(text[done:])
    if not made or any("\x80" <= c <= "\xff" for c in "".join(pieces[0::2])):
        return text
    peeled = "".join(pieces)
    return peeled if certain or _plausible(peeled, made) else text


# The letters among Windows-1252's signs (Š ž Œ Ÿ ƒ and their kin): after a capital, its
# punctuation is often text ('CAFÉ…', '“CAFÉ”'), these letters seldom (Czech 'ÍŠ', which makes
# no letter).
WINDOWS_1252_LETTERS = frozenset(sign for sign in WINDOWS_1252_SIGNS if sign.isalpha())


def _certain(shown: str, char: str) -> bool:
    """Whether a shown sequence is mojibake whatever the text: it shows a C1 control, which no
    text holds, or a Windows-1252 letter, and makes a Latin letter ('Åž': Ş, 'ÄŸ': ğ)."""
    rest = shown[1:]
    return any("\x80" <= c <= "\x9f" for c in rest) or (
        any(c in WINDOWS_1252_LETTERS for c in rest) and _latin(char) and char.isalpha()
    )


def _plausible(peeled: str, made: list[int]) -> bool:
    """Whether the characters a layer makes, at these places, read as text: none is a control,
    format or unassigned character or a modifier symbol, and a letter, mark or digit of another
    script than Latin touches no Latin letter or digit it did not make too ('CAFÉ\u00a0!' would
    make 'CAFɠ!', 'MATÚŠ' 'MATڊ')."""
    places = set(made)
    for at in made:
        char = peeled[at]
        if char in SHOWN_BYTE:  # what an outer layer makes: always plausible
            continue
        kind = unicodedata.category(char)
        if kind[0] == "C" or kind == "Sk":
            return False
        if _latin(char) or kind[0] not in "LMN":
            continue
        for beside in (at - 1, at + 1):
            if beside in places or not 0 <= beside < len(peeled):
                continue
            if peeled[beside].isalnum() and _latin(peeled[beside]):
                return False
    return True


# Of Latin Extended-B, the letters of languages' alphabets (Vietnamese, Romanian, Pinyin): its
# others ('Ʌ', 'Ɋ') and IPA's ('ɔ') are what 'CAFÉ…' and '“CAFÉ”' would make.
LATIN_EXTENDED_B_USED = frozenset("ƠơƯưȘșȚțǍǎǏǐǑǒǓǔǕǖǗǘǙǚǛǜ")


def _latin(char: str) -> bool:
    """Latin letters and signs of languages' alphabets: U+0000-U+017F, those of Latin Extended-B,
    and U+1E00-U+1EFF (Vietnamese's ủ, ự)."""
    return char <= "\u017f" or char in LATIN_EXTENDED_B_USED or "\u1e00" <= char <= "\u1eff"


def _utf8(shown: str) -> str | None:
    """The character whose UTF-8 bytes these characters show, if they are UTF-8."""
    try:
        return bytes(SHOWN_BYTE[c] for c in shown).decode("utf-8")
    except UnicodeDecodeError:
        return None


def repair_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Repair the log's text; only non-ASCII values pay for it, each distinct one once."""
    suspect = pc.invert(pc.fill_null(pc.string_is_ascii(values), True))
    if not pc.any(suspect).as_py():
        return values
    distinct = pc.unique(values.filter(suspect))
    repaired = pa.array([repair_mojibake(v) for v in distinct.to_pylist()], pa.string())
    return pc.if_else(suspect, pc.take(repaired, pc.index_in(values, distinct)), values)


def unquoted(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The log wraps user agents in double quotes: drop one pair where it wraps the value."""
    wrapped = pc.and_(pc.starts_with(values, '"'), pc.ends_with(values, '"'))
    quoted = _yes(pc.and_(wrapped, pc.greater(pc.utf8_length(values), 1)))
    return pc.if_else(quoted, pc.utf8_slice_codeunits(values, 1, -1), values)


def _null_where(values: pa.ChunkedArray, value) -> pa.ChunkedArray:
    """Null where the value is this one (the column as it is where it never is)."""
    where = _yes(pc.equal(values, value))
    if not pc.any(where).as_py():
        return values
    return pc.if_else(where, pa.scalar(None, values.type), values)


def _blank_to_null(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return _null_where(values, "")


def play_rows(plays: pa.Table) -> pa.Table:
    """Rows of stage_plays (plus user names): UTC instants, integer ids, repaired text, user
    agents without their wrapping quotes."""
    return pa.table(
        {
            "path": plays["path"],
            "start_time": plays["ts"].cast(pa.timestamp("ms", tz="UTC")).cast(UTC_INSTANT),
            "user_id": plays["userId"].cast(pa.int64()),
            "level": plays["level"],
            "song_title": repair_text(plays["song"]),
            "artist_name": _blank_to_null(repair_text(plays["artist"])),
            "song_length": plays["length"],
            "session_id": plays["sessionId"],
            "item_in_session": plays["itemInSession"],
            "location": _blank_to_null(repair_text(plays["location"])),
            "user_agent": _blank_to_null(unquoted(repair_text(plays["userAgent"]))),
            "first_name": _blank_to_null(repair_text(plays["firstName"])),
            "last_name": _blank_to_null(repair_text(plays["lastName"])),
            "gender": _blank_to_null(plays["gender"]),
        }
    )


def time_table(rows: pa.Table) -> pa.Table:
    """One row per distinct play instant, parts in UTC; week is ISO 8601, weekday 1 = Monday."""
    start = pc.unique(rows["start_time"])
    start = start.take(pc.sort_indices(start))
    iso = pc.iso_calendar(start)
    return pa.table(
        {
            "start_time": start,
            "hour": pc.hour(start),
            "day": pc.day(start),
            "week": iso.field("iso_week"),
            "month": pc.month(start),
            "year": pc.year(start),
            "weekday": iso.field("iso_day_of_week"),
        }
    )


PLAY_ORDER = ["start_time", "session_id", "item_in_session"]
PLAY_KEY = ["user_id", "session_id", "item_in_session"]


def _numbered(table: pa.Table, name: str) -> pa.Table:
    """The table with each row's position (from 0) in a column of this name."""
    return table.append_column(name, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def users_table(rows: pa.Table) -> pa.Table:
    """Each user as of their latest play (by time, then session, then item), with that play's
    position so the database can tell whether an already-loaded play is later still."""
    order = pc.sort_indices(rows, [(c, "ascending") for c in PLAY_ORDER])  # a stable sort
    ordered = _numbered(pa.table({"user_id": rows["user_id"].take(order)}), "at")
    latest = ordered.group_by("user_id").aggregate([("at", "max")])["at_max"]
    users = rows.take(order.take(latest)).sort_by("user_id")
    return users.select(sql.STAGE_COLUMNS["stage_users"])


def dedupe_plays(rows: pa.Table) -> pa.Table:
    """A play is (user, session, item): a file's first line of it stands for the file. Between
    files the database decides, as it does for files of other batches (sql_queries'
    settle_queries), and keeps every file's copy.

    The plays come back in key order, copies of a play in their files' order (a stable sort):
    songplays' keys lead with user_id, so each play's entries land on the pages the one before
    touched: the 10M set's 30th day onto the 29 others 17.0 -> 14.7 s on a server started on
    them (bench/README.md; a first load, which builds the keys at its end, is no faster)."""
    key = ["path", *PLAY_KEY]
    first = _numbered(rows, "row").group_by(key).aggregate([("row", "min")])["row_min"]
    kept = first.sort()
    order = pc.sort_indices(rows.select(PLAY_KEY).take(kept), [(c, "ascending") for c in PLAY_KEY])
    return rows.take(kept.take(order))


SONG_IDS = ["song_id", "artist_id"]
# The text a play finds its song by (with the duration), as long as an id may be: a title of
# megabytes would have every sort of the song keys read it whole again at each comparison, for
# hours.
SONG_MATCHED_BY = ["title", "artist_name"]
SONG_KEY_SCHEMA = pa.schema(
    [("title", pa.string()), ("artist_name", pa.string()), ("duration", pa.float64())]
    + [(name, pa.string()) for name in SONG_IDS]
)


def songplay_rows(rows: pa.Table, song_keys: pa.Table, file_ids: dict[str, int]) -> pa.Table:
    """Rows of songplays from play rows, in their order: each play's song_id and artist_id by
    (title, artist name, duration), as the database's merge resolves them (a NULL matches
    nothing), and its file's id."""
    key = ["song_title", "artist_name", "length_key"]
    keys = song_keys.rename_columns([*key, *SONG_IDS])
    # numeric, which the database compares, has one zero: -0.0 + 0.0 is 0.0
    length_key = pc.add(rows["song_length"], 0.0)
    # Only the key goes through the join (which shuffles rows) and back into order: the plays'
    # other columns, most of their bytes, stay where they are (0.27 s for 850k plays instead of
    # 0.68 s with every column).
    plays = _numbered(rows.select(key[:2]).append_column("length_key", length_key), "row")
    # Arrow builds its hash table on the join's right side: the smaller of the two. A catalogue
    # bigger than a part's plays costs a part five times as much the other way round (300,000
    # song keys and a part's 45,000 plays: 231 ms, against 49 ms).
    if keys.num_rows <= plays.num_rows:
        ids = plays.join(keys, key, join_type="left outer").sort_by("row")
    else:
        ids = keys.join(plays, key, join_type="right outer").sort_by("row")
    paths = pa.array(list(file_ids))
    file_id = pa.array(list(file_ids.values()), pa.int64()).take(
        pc.index_in(rows["path"], value_set=paths)
    )
    return pa.table(
        [*rows.columns, *ids.select(SONG_IDS).columns, file_id],
        names=[*rows.column_names, *SONG_IDS, "file_id"],
    )


def song_key_table(song_keys: bytes) -> pa.Table:
    """SongKeys (contract.SongKeys) as an Arrow table."""
    if not song_keys:
        return SONG_KEY_SCHEMA.empty_table()
    return pyarrow.csv.read_csv(
        pa.py_buffer(song_keys),
        # one block, the whole text: a block must hold a whole row
        read_options=pyarrow.csv.ReadOptions(
            column_names=SONG_KEY_SCHEMA.names, block_size=len(song_keys)
        ),
        parse_options=pyarrow.csv.ParseOptions(newlines_in_values=True),
        convert_options=pyarrow.csv.ConvertOptions(
            column_types=SONG_KEY_SCHEMA,
            null_values=[""],  # and only it: NaN is a number
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


# ================================================================ rendering


def reject_table(rows: Iterable[Reject]) -> pa.Table:
    """Rejects as rows of stage_rejects (built a column at a time: a dict a row took 0.5 KB
    more per reject at its peak)."""
    rows = list(rows)
    paths, lines, reasons, raws = zip(*rows) if rows else ((), (), (), ())
    columns = [paths, lines, reasons, [storable(raw) for raw in raws]]
    return pa.Table.from_arrays(
        [pa.array(column, field.type) for column, field in zip(columns, REJECT_SCHEMA)],
        schema=REJECT_SCHEMA,
    )


def storable(raw) -> str | None:
    """Raw text cut to a sane length; PostgreSQL text holds neither NUL nor invalid UTF-8."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw[:RAW_TEXT_BYTES].decode("utf-8", errors="replace")
    return raw[:RAW_TEXT_LIMIT].replace("\x00", "\\u0000")


def render_csv(table: pa.Table, columns: list[str]) -> bytes:
    """COPY ... (FORMAT csv) input: NULL unquoted, empty string quoted, floats round-trip."""
    if table.num_rows == 0:
        return b""
    table = table.select(columns)
    for n, field in enumerate(table.schema):
        # Instants go as naive UTC, read back as UTC (sql.staging_time_zone): Arrow writes those
        # ten times faster than zoned ones (850,000 instants: 0.13-0.32 s against 3.6-5.7 s,
        # three rounds), seconds of a 1M-event load's parse worker.
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(n, field.name, table[n].cast(pa.timestamp(field.type.unit)))
    out = io.BytesIO()
    options = pyarrow.csv.WriteOptions(include_header=False)
    with pyarrow.csv.CSVWriter(out, table.schema, write_options=options) as writer:
        for batch in table.to_batches():
            if batch.num_rows:  # Arrow writes an empty first batch as a run of NUL bytes
                writer.write_batch(batch)
    return out.getvalue()
