"""Records: the one representation every reader of the input produces.

Arrow's JSON reader takes a clean piece of a log, or a batch's clean song files, at once; orjson
reads the rest, line by line (a song file first as a whole). Both give Records with the same
dtypes, and a value of the wrong type becomes
a flaw of its own record, so that what validation decides about a record depends on that record
alone: never on which reader read it or what stood beside it.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import re
from collections.abc import Collection, Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json

from contract import Limits, Reject
from extract import BLOCK, line_aligned_pieces, raw_lines

SONG_FIELDS = {  # field: (kind, required)
    "song_id": ("text", True),
    "title": ("text", True),
    "artist_id": ("text", True),
    "artist_name": ("text", True),
    "duration": ("number", True),
    "year": ("int", False),
    "artist_location": ("text", False),
    "artist_latitude": ("number", False),
    "artist_longitude": ("number", False),
}
EVENT_FIELDS = {  # field: (kind, required on every event, required on a play)
    "ts": ("int", True, True),
    "page": ("text", True, True),
    "userId": ("text", False, True),
    "sessionId": ("int", False, True),
    "itemInSession": ("int", False, True),
    "level": ("text", False, True),
    "song": ("text", False, True),
    "artist": ("text", False, False),
    "length": ("number", False, False),
    "firstName": ("text", False, False),
    "lastName": ("text", False, False),
    "gender": ("text", False, False),
    "location": ("text", False, False),
    "userAgent": ("text", False, False),
}
FIELDS = {"song": SONG_FIELDS, "log": EVENT_FIELDS}

KIND_NAMES = {"text": "a string", "int": "an integer", "number": "a number"}
INT64 = (-(2**63), 2**63 - 1)

# What Arrow's reader and JSON (orjson) could read differently: a piece holding a NUL byte, a CR
# that does not end a line (before its newline, as Windows writes lines, both read it as blank
# space), or a NUL or surrogate escape, goes to the line-by-line reader. Rare in real logs; a
# false alarm only costs speed. (One regex: a scan for each escape costs more than Arrow's parse
# of them; a CR is looked for only where there is one.)
UNLIKE_JSON_BYTE = b"\x00"
LONE_CR = re.compile(rb"\r(?!\n)")
UNLIKE_JSON_ESCAPES = re.compile(rb"\\u(?:0000|[dD][89abAB])")

NEWLINE, CR = ord("\n"), ord("\r")

ARROW_TYPES = {"text": pa.string(), "int": pa.int64(), "number": pa.float64()}
# What Arrow's reader reads of each kind: the fields the ETL reads; of a song file, the one field
# more that song files hold, and no other (a file with another goes to orjson), so that no value
# Arrow takes and JSON does not (NaN, Infinity, a number too big for a float, nesting deeper than
# orjson's 1,024 levels) hides in a field left unread. Logs hold more fields, and unread ones
# are skipped: docs/reliability.md says what that leaves.
ARROW_FIELDS = {"log": EVENT_FIELDS, "song": {**SONG_FIELDS, "num_songs": ("number", False)}}
ARROW_OPTIONS = {
    kind: pyarrow.json.ParseOptions(
        explicit_schema=pa.schema([(f, ARROW_TYPES[spec[0]]) for f, spec in fields.items()]),
        unexpected_field_behavior="ignore" if kind == "log" else "error",
    )
    for kind, fields in ARROW_FIELDS.items()
}


@dataclasses.dataclass(frozen=True)
class Records:
    """Records as validation reads them, whichever reader read them: ``values`` has path, line,
    raw bytes (null where the fast reader read the line), and each field in its kind's Arrow type
    (ARROW_TYPES), null where the field is absent or its value unusable; ``flaws`` says why a
    present value was unusable: a text column per field that has any such value, holding the
    reason (null elsewhere)."""

    values: pa.Table
    flaws: pa.Table

    @classmethod
    def combined(cls, parts: list[Records], fields: dict) -> Records:
        if not parts:
            return records_from([], fields)
        flawed = [f for f in fields if any(f in p.flaws.column_names for p in parts)]
        return cls(
            pa.concat_tables([p.values for p in parts]),
            pa.concat_tables([_flaw_columns(p, flawed) for p in parts]),
        )

    def flaw(self, field: str) -> pa.ChunkedArray | None:
        return self.flaws[field] if field in self.flaws.column_names else None


def _flaw_columns(records: Records, fields: list[str]) -> pa.Table:
    """The records' flaws in these columns, null where a field has none."""
    nulls = pa.nulls(records.values.num_rows, pa.string())
    columns = {f: records.flaw(f) for f in fields}
    return pa.table(
        {f: nulls if flaws is None else flaws for f, flaws in columns.items()},
        schema=pa.schema([(f, pa.string()) for f in fields]),
    )


def _flaw(value, kind: str) -> str | None:
    """Why a present JSON value cannot be a field of this kind (None when it can)."""
    if kind == "text":
        if not isinstance(value, str):
            return "is not a string"
        return "contains a NUL character" if "\x00" in value else None
    if isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float)):
        return f"is not {KIND_NAMES[kind]}"
    if kind == "int" and not INT64[0] <= value <= INT64[1]:
        return "out of range"
    return None


def schema(fields: dict) -> pa.Schema:
    return pa.schema(
        [
            ("path", pa.string()),
            ("line", pa.int64()),
            ("raw", pa.binary()),
            *[(field, ARROW_TYPES[kind]) for field, (kind, *_) in fields.items()],
        ]
    )


def records_from(objects: list[dict], fields: dict) -> Records:
    """Decoded JSON objects (tagged with path, line and raw) as Records, judged one by one."""
    values = {name: [o[name] for o in objects] for name in ("path", "line", "raw")}
    flaws = {}
    for field, (kind, *_) in fields.items():
        column = [o.get(field) for o in objects]
        for row, value in enumerate(column):
            why = None if value is None else _flaw(value, kind)
            if why:
                flaws.setdefault(field, [None] * len(objects))[row] = f"{field} {why}"
                column[row] = None
            elif kind == "number" and value is not None:
                column[row] = float(value)  # Arrow takes an integer only where it is exact
        values[field] = column
    return Records(
        pa.table(values, schema=schema(fields)),
        pa.table(flaws, schema=pa.schema([(f, pa.string()) for f in flaws])),
    )


def _decode_lines(
    lines: Iterable[tuple[int, bytes]],
    path: str,
    encoding: str = "UTF-8",
    read: Collection[str] | None = None,
) -> tuple[list[dict], list[Reject]]:
    """JSON line by line: objects tagged with path, line and raw text; a reject for the rest.
    encoding: the file's, of which the lines are the UTF-8 rendering. read: the fields the ETL
    reads, where the others may hold a number JSON lacks (logs': _beyond_json); None: none."""
    good, bad = [], []
    for number, raw in lines:
        if not raw.strip():
            continue
        try:
            value = loads(raw)
        except orjson.JSONDecodeError as exc:
            value = None if read is None else _beyond_json(raw, read)
            if value is None:
                bad.append(Reject(path, number, _decode_error(exc, encoding), raw))
                continue
        if not isinstance(value, dict):
            bad.append(Reject(path, number, f"not a JSON object but {json_kind(value)}", raw))
            continue
        value.update(path=path, line=number, raw=raw)
        good.append(value)
    return good, bad


def json_kind(value) -> str:
    """What a JSON value that is no object is, in JSON's words: "an array", "a string", "a
    number", "true", "false" or "null"."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {list: "an array", str: "a string"}.get(type(value), "a number")


def _beyond_json(raw: bytes, read: Collection[str]) -> dict | None:
    """A log line orjson refuses only for what is in fields the ETL does not read, as orjson
    reads the fields it does: a number JSON lacks (NaN, Infinity, one beyond a double), which
    Arrow's reader takes (it skips those fields, numbers and all: the line's verdict must not
    hang on which reader reads it), or a lone surrogate escape (half an emoji's pair, as a
    client cutting text leaves it), which is no text but costs a play nothing it keeps. None
    for any other line (such a number or escape in a field read: orjson's verdict stands)."""
    try:  # as bytes, json would skip a byte-order mark
        value = json.loads(raw.decode(), parse_int=_integer)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    kept = {field: value[field] for field in read if field in value}
    if any(isinstance(v, float) and not math.isfinite(v) for v in kept.values()):
        return None
    try:  # as orjson reads them from text (an integer beyond 64 bits as a double, say)
        return loads(json.dumps(kept))
    except orjson.JSONDecodeError:
        return None


def _integer(text: str) -> int | float:
    """A JSON integer, as json reads it; one longer than Python reads from text (4,300 digits,
    sys.get_int_max_str_digits) as infinity, which Arrow's reader skips in a field the ETL
    does not read and _beyond_json refuses in one it reads."""
    try:
        return int(text)
    except ValueError:
        return math.inf


# orjson says memory ran short as it says a text is not JSON. That is the machine's state, not
# the record's: the run must stop (etl.py says so in one line, exit 3), never reject the record.
ORJSON_OUT_OF_MEMORY = "Not enough memory to allocate buffer for parsing"


def loads(text: bytes | str):
    """orjson.loads, raising MemoryError where orjson ran out of memory."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(ORJSON_OUT_OF_MEMORY):
            raise MemoryError(str(exc)) from None
        raise


# Where orjson says it broke: a line of what it was given (1 for a line of a file; a reject names
# the file's line) and a column in it, and the character's offset.
WHERE_IT_BROKE = re.compile(r": line \d+ column (\d+) \(char \d+\)$")


def _decode_error(exc: orjson.JSONDecodeError, encoding: str) -> str:
    """Why a line is not JSON, as its reject says: where in its line, as a column."""
    message = WHERE_IT_BROKE.sub(r" at column \1", str(exc))
    if "byte order mark" in message:  # a line's, not the file's: that one is skipped
        return "a byte-order mark before the record (as files joined together leave one)"
    if "UTF-8" in message:
        return f"not valid {encoding}"
    return f"malformed JSON: {message}"


def parse_song_file(
    data: bytes,
    path: str,
    encoding: str = "UTF-8",
    piece_bytes: int = Limits.parse_piece_bytes,
    first_line: int = 1,
) -> tuple[Records, list[Reject]]:
    """A song file holds one object; an array of objects, or one object per line, is read too
    (encoding: the file's, of which data is the UTF-8 rendering). Read whole, its raw text is
    the file's without one final newline (a line's never holds its newline); one that is not
    JSON is one reject, at the line where it breaks, if it is written over several lines (its
    first line a lone brace or bracket, as json.dump's indent writes it). One object a line is
    read as a log's events are (_parse_lines): a big file comes in parts, and a part after its
    first (from first_line on) holds lines only."""
    if first_line == 1:
        try:
            value = loads(data)
        except orjson.JSONDecodeError as exc:
            if _written_over_lines(data):  # one record, broken where the error says
                whole = data.removesuffix(b"\n")
                reason = _decode_error(exc, encoding)
                return records_from([], SONG_FIELDS), [Reject(path, exc.lineno, reason, whole)]
        else:
            items = value if isinstance(value, list) else [value]
            whole = data.removesuffix(b"\n")
            objects, rejects = _decode_lines(
                ((1, orjson.dumps(item) if isinstance(value, list) else whole) for item in items),
                path,
            )
            return records_from(objects, SONG_FIELDS), rejects
    return _parse_lines("song", data, path, piece_bytes, first_line, encoding)


# How a JSON document written over several lines (json.dump's indent, an editor's) begins: a
# line holding only its opening brace or bracket. Nothing in one object a line starts so.
OPENING_LINE = re.compile(rb"[ \t\r\n]*[\[{][ \t\r]*\n")


def _written_over_lines(data: bytes) -> bool:
    return OPENING_LINE.match(data) is not None


def parse_log_file(
    data: bytes,
    path: str,
    piece_bytes: int = Limits.parse_piece_bytes,
    first_line: int = 1,
    encoding: str = "UTF-8",
) -> tuple[Records, list[Reject]]:
    """JSON lines of events: the whole file, or a part starting at first_line (_parse_lines)."""
    return _parse_lines("log", data, path, piece_bytes, first_line, encoding)


def _parse_lines(
    kind: str, data: bytes, path: str, piece_bytes: int, first_line: int, encoding: str
) -> tuple[Records, list[Reject]]:
    """JSON lines of the kind's records, in line-aligned pieces: Arrow's reader takes a clean
    piece at once, a piece with any problem is read around its odd lines (_around_odd_lines).
    Both give the same Records. encoding: the file's, of which data is the UTF-8 rendering (it
    names the file's invalid lines' reason)."""
    parts, rejects = [], []
    for piece in line_aligned_pieces(data, piece_bytes):
        newlines = newline_count(piece)
        part = _fast_lines(kind, piece, path, first_line, newlines)
        if part is None:
            more, bad = _around_odd_lines(kind, piece, path, first_line, encoding)
        else:
            more, bad = [part], []
        parts += more
        rejects += bad
        first_line += newlines
    return Records.combined(parts, FIELDS[kind]), rejects


# A run of plain lines shorter than this is read line by line: a call of Arrow's reader costs
# about as much as RUN_LINES_LEAST lines read line by line.
RUN_LINES_LEAST = 100
# A longer run is read by Arrow this many lines at a time, each block line by line where Arrow's
# reading of it is not exact (a value of another type than its field's, say): such a line costs
# its block's reading, not its run's or its piece's. Worth: the 1M-event logs' parse with one
# line in 2,000 holding a string sessionId, 7.3 s against 9.6 s with the piece read line by line
# (bench/README.md).
BLOCK_LINES = 1000


def _around_odd_lines(
    kind: str, piece: bytes, path: str, first_line: int, encoding: str
) -> tuple[list[Records], list[Reject]]:
    """A piece Arrow's reader does not take whole, as the line reader reads it, a run at a time
    (_runs): its odd lines (_odd_lines) line by line, and the blocks of plain lines between them
    by Arrow where its reading of the block is exact, else line by line. So a damaged line costs
    its own reading, or its block's, not its piece's. The parts come in the piece's order."""
    starts, ends = _line_bounds(piece)
    parts, rejects = [], []
    for first, last, by_line in _runs(_odd_lines(piece, starts, ends)):
        run, number = piece[starts[first] : ends[last - 1] + 1], first_line + first
        part = None if by_line else _read_at_once(kind, run, path, number, last - first)
        more, bad = (
            ([part], []) if part is not None else _by_line(kind, run, path, number, encoding)
        )
        parts += more
        rejects += bad
    return parts, rejects


def _by_line(
    kind: str, text: bytes, path: str, first_line: int, encoding: str
) -> tuple[list[Records], list[Reject]]:
    """The lines read one by one with orjson, each judged on its own."""
    read = FIELDS[kind] if kind == "log" else None  # Arrow reads each field of a song file
    lines = enumerate(raw_lines(text), first_line)
    objects, rejects = _decode_lines(lines, path, encoding, read)
    return [records_from(objects, FIELDS[kind])], rejects


def _line_bounds(piece: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Where each line of the piece starts, and where it ends (its newline, or the piece's end)."""
    text = np.frombuffer(piece, np.uint8)
    ends = np.flatnonzero(text == NEWLINE)
    if not piece.endswith(b"\n"):
        ends = np.append(ends, len(piece))
    return np.concatenate(([0], ends[:-1] + 1)), ends


def _odd_lines(piece: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which lines of the piece are odd: lines Arrow's reader cannot read as the line reader
    does (_plain), as each line's own bytes say: not starting with "{" and ending with "}" (or
    "}" and the CR of a Windows line end), or holding a byte or escape unlike JSON."""
    text = np.frombuffer(piece, np.uint8)
    last = np.maximum(ends - 1, 0)
    last -= (text[last] == CR) & (last > starts)  # a Windows line end: the byte before its CR
    odd = (text[starts] != ord("{")) | (text[last] != ord("}"))
    odd[np.searchsorted(ends, np.array(_unlike_json_at(piece), np.int64))] = True
    return odd


def _unlike_json_at(piece: bytes) -> list[int]:
    """Where the piece holds a byte or an escape unlike JSON (UNLIKE_JSON_BYTE, LONE_CR and
    UNLIKE_JSON_ESCAPES)."""
    at = [m.start() for m in UNLIKE_JSON_ESCAPES.finditer(piece)]
    at += [m.start() for m in LONE_CR.finditer(piece)] if b"\r" in piece else []
    start = piece.find(UNLIKE_JSON_BYTE)
    while start >= 0:
        at.append(start)
        start = piece.find(UNLIKE_JSON_BYTE, start + 1)
    return at


def _runs(odd: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """The lines in runs (first, last + 1, by_line): odd lines, with any run of clean lines
    between them shorter than RUN_LINES_LEAST, are read line by line (by_line), the other runs
    of clean lines by Arrow, BLOCK_LINES at a time."""
    changes = np.flatnonzero(np.diff(odd.view(np.int8))) + 1
    bounds = [0, *changes.tolist(), len(odd)]
    held = None  # the first line of a run read line by line, not yet yielded
    for first, last in itertools.pairwise(bounds):
        if odd[first] or last - first < RUN_LINES_LEAST:
            held = first if held is None else held
            continue
        if held is not None:
            yield held, first, True
            held = None
        for start in range(first, last, BLOCK_LINES):
            yield start, min(start + BLOCK_LINES, last), False
    if held is not None:
        yield held, len(odd), True


def _fast_lines(
    kind: str, piece: bytes, path: str, first_line: int, newlines: int
) -> Records | None:
    """Arrow's multi-threaded JSON reader (several times faster than line by line), where its
    reading is exactly the line-by-line one (_plain, _arrow_records); None otherwise."""
    lines = newlines + (not piece.endswith(b"\n"))
    return _read_at_once(kind, piece, path, first_line, lines) if _plain(piece) else None


def _read_at_once(
    kind: str, piece: bytes, path: str, first_line: int, lines: int
) -> Records | None:
    """A plain piece's lines, as Arrow's reader reads them where that is exactly the
    line-by-line reading (_arrow_records); None otherwise."""
    table = _arrow_records(kind, piece, lines)
    if table is None:
        return None
    return _tagged(
        table, pa.repeat(pa.scalar(path), lines), np.arange(first_line, first_line + lines)
    )


def _arrow_records(kind: str, piece: bytes, lines: int) -> pa.Table | None:
    """A plain piece's lines (_plain) as Arrow reads them, where that is exactly the
    line-by-line reading: valid UTF-8, every value of its field's type, one object a line and
    no NaN or Infinity (Arrow takes those for numbers, JSON does not). None otherwise."""
    try:
        piece.decode("utf-8")
        table = pyarrow.json.read_json(io.BytesIO(piece), parse_options=ARROW_OPTIONS[kind])
    except (UnicodeDecodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    numbers = [table[f] for f, (of, *_) in ARROW_FIELDS[kind].items() if of == "number"]
    if table.num_rows != lines or any(
        pc.any(pc.is_nan(c)).as_py() or pc.any(pc.is_inf(c)).as_py() for c in numbers
    ):
        return None  # a line holding two objects; NaN or Infinity
    return table.select(list(FIELDS[kind]))


def _plain(piece: bytes) -> bool:
    """Whether the piece's bytes let Arrow read it as the line reader would: no NUL, surrogate
    escape or CR but at a line's end, and each line starting with "{" and ending with "}" (a
    byte-order mark or a blank line, which Arrow skips, is not; and as Arrow reads a newline as
    blank space, an object left open at the end of a line would run on into the next)."""
    return not (
        UNLIKE_JSON_BYTE in piece
        or (b"\r" in piece and LONE_CR.search(piece))
        or UNLIKE_JSON_ESCAPES.search(piece)
        or not _lines_are_braced(piece)
    )


def _tagged(table: pa.Table, paths: pa.Array, lines: np.ndarray) -> Records:
    """Arrow's table as Records: each row's path and line, no raw text (the chunk has it)."""
    table = table.add_column(0, "raw", pa.nulls(table.num_rows, pa.binary()))
    table = table.add_column(0, "line", pa.array(lines, pa.int64()))
    return Records(table.add_column(0, "path", paths), pa.table({}))


@dataclasses.dataclass(frozen=True)
class Piece:
    """A song file, or lines of a log file (all of it, or a part starting at first_line), in
    UTF-8; encoding: the file's."""

    data: bytes
    path: str
    first_line: int = 1
    encoding: str = "UTF-8"


def parse_pieces(
    kind: str, pieces: list[Piece], piece_bytes: int = Limits.parse_piece_bytes
) -> tuple[Records, list[list[Reject]]]:
    """The pieces' Records, in order, and each piece's rejects, as each piece read alone gives
    them (_alone). Pieces smaller than piece_bytes (a batch of small files) are read by Arrow
    together, up to piece_bytes at a time: a call of its reader costs about half a millisecond
    whatever it reads (bench/README.md)."""
    records, rejects = [], []
    for group in _groups(pieces, piece_bytes):
        more, bad = _read_group(kind, group, piece_bytes)
        records += more
        rejects += bad
    return Records.combined(records, FIELDS[kind]), rejects


def _read_group(
    kind: str, group: list[Piece], piece_bytes: int
) -> tuple[list[Records], list[list[Reject]]]:
    """A group read at once where it is clean; else each half the same way, down to a piece on
    its own: a few damaged files cost their group a few calls of Arrow's reader, not one a file."""
    if len(group) == 1:
        parsed, bad = _alone(kind, group[0], piece_bytes)
        return [parsed], [bad]
    together = _fast_together(kind, group)
    if together is not None:
        return [together], [[] for _ in group]
    half = len(group) // 2
    first, first_rejects = _read_group(kind, group[:half], piece_bytes)
    second, second_rejects = _read_group(kind, group[half:], piece_bytes)
    return first + second, first_rejects + second_rejects


def _alone(kind: str, piece: Piece, piece_bytes: int) -> tuple[Records, list[Reject]]:
    """A piece read on its own: a log's lines (Arrow's reader where the piece is clean), or a
    song file (one object, an array of them, or one per line)."""
    if kind == "song":
        return parse_song_file(
            piece.data, piece.path, piece.encoding, piece_bytes, piece.first_line
        )
    return parse_log_file(piece.data, piece.path, piece_bytes, piece.first_line, piece.encoding)


def _groups(pieces: list[Piece], piece_bytes: int) -> Iterator[list[Piece]]:
    """The pieces in order, in runs of small plain ones up to piece_bytes (so a run joined is
    plain too); any other alone (a big one is cut into pieces of its own; one whose bytes are
    not plain is read as orjson reads it)."""
    group, size = [], 0
    for piece in pieces:
        alone = len(piece.data) >= piece_bytes or not _plain(piece.data)
        if group and (alone or size + len(piece.data) > piece_bytes):
            yield group
            group, size = [], 0
        if alone:
            yield [piece]
            continue
        group.append(piece)
        size += len(piece.data)
    if group:
        yield group


def _fast_together(kind: str, group: list[Piece]) -> Records | None:
    """A run of plain pieces (_groups) read by Arrow at once (each ending its last line), where
    that is exactly the line-by-line reading; None otherwise."""
    data = [p.data if p.data.endswith(b"\n") else p.data + b"\n" for p in group]
    counts = np.array([newline_count(d) for d in data])
    table = _arrow_records(kind, b"".join(data), int(counts.sum()))
    if table is None:
        return None
    starts = np.cumsum(counts) - counts
    lines = np.arange(table.num_rows) - np.repeat(starts - [p.first_line for p in group], counts)
    paths = pa.array([p.path for p in group]).take(np.repeat(np.arange(len(group)), counts))
    return _tagged(table, paths, lines)


# Lines are counted, and their ends checked, with numpy rather than bytes.count, which goes a
# byte at a time: over the 1M-event set's 447 MB of logs, 0.30 s of the worker's CPU instead of
# 0.99 s (counting newlines twice and "\n{" once). Up to SMALL bytes (a song file, say),
# bytes.count is the faster: 0.2 against 1.1 µs for 300 bytes, the same at 4 KB.
SMALL = 4096


def newline_count(data: bytes) -> int:
    """How many newlines data holds (a big one compared a megabyte at a time with numpy: no
    copy of data's size)."""
    if len(data) <= SMALL:
        return data.count(b"\n")
    text = np.frombuffer(data, np.uint8)
    return sum(
        int(np.count_nonzero(text[start : start + BLOCK] == NEWLINE))
        for start in range(0, len(text), BLOCK)
    )


def _lines_are_braced(piece: bytes) -> bool:
    """Whether every line of the piece starts with "{" and ends with "}" (before the CR of a
    Windows line end, if it has one)."""
    if not (piece.startswith(b"{") and piece.endswith((b"}", b"}\n", b"}\r\n"))):
        return False
    if len(piece) <= SMALL:  # each newline after "}" and, but a last one, before "{"
        newlines = piece.count(b"\n")
        ends = newlines - piece.endswith(b"\n")
        closed = piece.count(b"}\n") + piece.count(b"}\r\n")
        return closed == newlines and piece.count(b"\n{") == ends
    text = np.frombuffer(piece, np.uint8)
    newlines = np.flatnonzero(text == NEWLINE)
    starts = newlines[newlines < len(text) - 1] + 1  # after each newline but a last one
    last = newlines - 1 - (text[newlines - 1] == CR)  # the byte before a Windows line end's CR
    return bool(np.all(text[starts] == ord("{")) and np.all(text[last] == ord("}")))
