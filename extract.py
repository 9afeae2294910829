"""Extract: find the input files, cut them into batches, read them, parse them into Records.

Records are the one representation every reader produces, so that what validation decides about
a record depends on that record alone, never on which reader read it or what stood beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.json

Kind = Literal["song", "log"]
KINDS: tuple[Kind, ...] = ("song", "log")
FOLDERS = {"song": "song_data", "log": "log_data"}

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

KIND_DTYPES = {"text": "str", "int": "Int64", "number": "float64"}
KIND_NAMES = {"text": "a string", "int": "an integer", "number": "a number"}
INT64 = (-(2**63), 2**63 - 1)

# Bytes on which Arrow's reader and JSON (orjson) could disagree: a piece holding any of them goes
# to the line-by-line reader. Rare in real logs; a false alarm only costs speed.
UNLIKE_JSON = (b"\\u0000", b"\x00", b"\r", b"\xef\xbb\xbf", b"NaN", b"Infinity")

ARROW_TYPES = {"text": pa.string(), "int": pa.int64(), "number": pa.float64()}
ARROW_OPTIONS = pyarrow.json.ParseOptions(
    explicit_schema=pa.schema([(f, ARROW_TYPES[spec[0]]) for f, spec in EVENT_FIELDS.items()]),
    unexpected_field_behavior="ignore",
)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How the work is cut: memory follows these bounds, not the size of the input."""

    song_batch_files: int = 10_000  # song files per batch (one transaction)
    log_batch_bytes: int = 32 * 1024 * 1024  # log bytes per batch, and per part of a bigger file
    parse_piece_bytes: int = 4 * 1024 * 1024  # Arrow's reader takes a log this much at a time


# ================================================================ finding and planning


@dataclasses.dataclass(frozen=True)
class FileTask:
    """A file to read: its path relative to the data folder (forward slashes), where it is, its
    size and mtime when listed, and the SHA-256 the manifest has for it (None when new)."""

    path: str
    location: str
    size: int
    mtime_ns: int
    known_sha256: str | None


@dataclasses.dataclass(frozen=True)
class Batch:
    """Files loaded in one transaction: a kill leaves all of them loaded or none."""

    kind: Kind
    tasks: tuple[FileTask, ...]

    @property
    def new_bytes(self) -> int:
        return sum(t.size for t in self.tasks if t.known_sha256 is None)


def find(data_dir: Path, kind: Kind) -> list[str]:
    """The *.json files under the kind's folder, recursively (symlinked folders not followed),
    sorted by path components."""
    found, stack = [], [str(data_dir / FOLDERS[kind])]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                if entry.name.endswith(".json"):  # a folder so named too: reported unreadable
                    found.append(entry.path)
    return sorted(found, key=lambda p: p.split(os.sep))


def plan(
    data_dir: Path, kind: Kind, known: dict[str, tuple[int, int, str]], limits: Limits = Limits()
) -> tuple[list[Batch], int]:
    """(batches of files to read, how many files are unchanged since their manifest entry by
    size and mtime). A log batch stays under limits.log_batch_bytes unless one file alone is
    bigger, which then makes a batch of its own, read in parts."""
    folder = str(data_dir / FOLDERS[kind])
    tasks, unchanged = [], 0
    for location in find(data_dir, kind):
        rel = FOLDERS[kind] + "/" + location[len(folder) + 1 :].replace(os.sep, "/")
        try:
            st = os.stat(location)
        except OSError:
            st = None
        seen = known.get(rel)
        if st and seen and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
            unchanged += 1
            continue
        tasks.append(
            FileTask(
                rel,
                location,
                st.st_size if st else 0,
                st.st_mtime_ns if st else 0,
                seen[2] if seen else None,
            )
        )
    batches, current, size = [], [], 0
    for task in tasks:
        if current and (
            (kind == "song" and len(current) >= limits.song_batch_files)
            or (kind == "log" and size + task.size > limits.log_batch_bytes)
        ):
            batches.append(Batch(kind, tuple(current)))
            current, size = [], 0
        current.append(task)
        size += task.size
    if current:
        batches.append(Batch(kind, tuple(current)))
    return batches, unchanged


# ================================================================ reading


FileStatus = Literal["new", "changed", "unchanged", "unreadable"]


@dataclasses.dataclass(frozen=True)
class FileRead:
    """What opening a file found: its status, size and SHA-256 as read, or why it could not be
    read."""

    status: FileStatus
    size: int
    sha256: str | None = None
    error: str | None = None


def read_file(task: FileTask, part_bytes: int) -> tuple[FileRead, Iterator[bytes]]:
    """The file's content in line-aligned parts of about part_bytes, unless it cannot be read or
    its content is what the manifest has. A file bigger than part_bytes is hashed in a first
    pass, so that its parts are read one at a time and never held together."""
    try:
        with open(task.location, "rb") as handle:
            if task.size <= part_bytes:
                data = handle.read()
                sha256, size, parts = hashlib.sha256(data).hexdigest(), len(data), iter([data])
            else:
                sha256, size = _sha256(handle)
                parts = _parts(task.location, part_bytes)
    except OSError as exc:
        return FileRead("unreadable", task.size, error=exc.strerror), iter(())
    if sha256 == task.known_sha256:
        return FileRead("unchanged", size, sha256), iter(())
    status = "new" if task.known_sha256 is None else "changed"
    return FileRead(status, size, sha256), parts


def _sha256(handle) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while block := handle.read(1 << 20):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _parts(location: str, part_bytes: int) -> Iterator[bytes]:
    with open(location, "rb") as handle:
        while part := handle.read(part_bytes):
            yield part + (b"" if part.endswith(b"\n") else handle.readline())


def raw_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def line_aligned_pieces(data: bytes, size: int) -> Iterator[bytes]:
    """data cut after a newline every size bytes or so."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + size - 1) + 1 or len(data)
        yield data[start:end]
        start = end


# ================================================================ parsing into Records


@dataclasses.dataclass(frozen=True)
class Records:
    """Records as validation reads them, whichever reader read them: ``values`` has path, line,
    raw text, and each field in its kind's dtype (KIND_DTYPES), NA where the field is absent or
    its value unusable; ``flaws`` says why a present value was unusable: a column per field that
    has any such value, holding the reason (NA elsewhere)."""

    values: pd.DataFrame
    flaws: pd.DataFrame

    @classmethod
    def combined(cls, parts: list[Records], fields: dict) -> Records:
        if not parts:
            return records_from([], fields)
        return cls(
            pd.concat([p.values for p in parts], ignore_index=True),
            pd.concat([p.flaws for p in parts], ignore_index=True),
        )

    def flaw(self, field: str) -> pd.Series | None:
        return self.flaws[field] if field in self.flaws else None


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


def _dtypes(fields: dict) -> dict[str, str]:
    return {
        "path": "object",
        "line": "int64",
        "raw": "object",
        **{field: KIND_DTYPES[kind] for field, (kind, *_) in fields.items()},
    }


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
        values[field] = column
    frame = pd.DataFrame(values, columns=["path", "line", "raw", *fields])
    return Records(
        frame.astype(_dtypes(fields)), pd.DataFrame(flaws, index=frame.index, dtype="object")
    )


def _decode_lines(lines: Iterable[tuple[int, bytes]], path: str) -> tuple[list[dict], list[tuple]]:
    """JSON line by line: objects tagged with path, line and raw text; a reject for the rest."""
    good, bad = [], []
    for number, raw in lines:
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            reason = "not valid UTF-8" if "UTF-8" in str(exc) else f"malformed JSON: {exc}"
            bad.append((path, number, reason, raw))
            continue
        if not isinstance(value, dict):
            bad.append((path, number, f"not a JSON object but {type(value).__name__}", raw))
            continue
        value.update(path=path, line=number, raw=raw)
        good.append(value)
    return good, bad


def parse_song_file(data: bytes, path: str) -> tuple[Records, list[tuple]]:
    """A song file holds one object; an array of objects, or one object per line, is read too."""
    objects, rejects = decode_song_file(data, path)
    return records_from(objects, SONG_FIELDS), rejects


def decode_song_file(data: bytes, path: str) -> tuple[list[dict], list[tuple]]:
    """parse_song_file's objects before they become Records: a batch of many small song files
    makes its Records at once (a DataFrame per file would cost more than the files)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        objects, rejects = _decode_lines(enumerate(raw_lines(data), 1), path)
    else:
        items = value if isinstance(value, list) else [value]
        objects, rejects = _decode_lines(
            ((1, orjson.dumps(item) if isinstance(value, list) else data) for item in items), path
        )
    return objects, rejects


def parse_log_file(
    data: bytes, path: str, piece_bytes: int = Limits.parse_piece_bytes, first_line: int = 1
) -> tuple[Records, list[tuple]]:
    """JSON lines of events (the whole file, or a part starting at first_line), in line-aligned
    pieces: Arrow's reader takes a clean piece at once, a piece with any problem is read line by
    line to judge each line on its own. Both give the same Records."""
    parts, rejects = [], []
    for piece in line_aligned_pieces(data, piece_bytes):
        part = _fast_events(piece, path, first_line)
        if part is None:
            objects, bad = _decode_lines(enumerate(raw_lines(piece), first_line), path)
            part = records_from(objects, EVENT_FIELDS)
            rejects += bad
        parts.append(part)
        first_line += piece.count(b"\n")
    return Records.combined(parts, EVENT_FIELDS), rejects


def _fast_events(piece: bytes, path: str, first_line: int) -> Records | None:
    """Arrow's multi-threaded JSON reader (several times faster than line by line), where its
    reading is exactly the line-by-line one: valid UTF-8 without a byte-order mark, NUL, lone
    surrogates, CR, NaN or Infinity (Arrow accepts those, JSON does not), one object on each
    line and no blank line, every value of its field's type. None otherwise."""
    lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
    if (
        any(b in piece for b in UNLIKE_JSON)
        or b"\\ud" in piece.lower()
        or not piece.startswith(b"{")
        or piece.count(b"\n{") != lines - 1
    ):
        return None  # also: a line not starting with "{", such as a blank one (Arrow skips it)
    try:
        piece.decode("utf-8")
        table = pyarrow.json.read_json(io.BytesIO(piece), parse_options=ARROW_OPTIONS)
    except (UnicodeDecodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != lines:
        return None  # a line holding two objects
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    frame.insert(0, "raw", None)
    frame.insert(0, "line", range(first_line, first_line + len(frame)))
    frame.insert(0, "path", path)
    return Records(frame.astype(_dtypes(EVENT_FIELDS)), pd.DataFrame(index=frame.index))
