"""Prepare: a batch's files in, COPY payloads out, in parts of bounded size: for the staging
tables, or, in a bulk load, straight for songplays and time.

This is what workers.Preparer runs (in the main process for song batches, in the parse worker for
log batches): extract reads the files, parse parses them, transform judges and shapes the
records; each part carries its files' counts for the manifest and the report.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Generator, Iterator

import pyarrow as pa
import pyarrow.compute as pc

import extract
import sql_queries as sql
import transform
from contract import Batch, FilePart, HandOver, Limits, Part, Reject, Unusable
from parse import Piece, Records, newline_count, parse_pieces

# Arrow's buffers from the C library's allocator rather than the mimalloc Arrow bundles, which
# hands freed pages back to the kernel and takes them again zeroed, batch after batch: the
# worker's 1M events 7.0-7.2 -> 6.0-6.1 CPU s, the full load 11.03 -> 10.15 s, and a lower peak
# (bench/README.md). Arrow's own variable still chooses, when it is set.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A file's content, or one part of a big file, as read: where it starts and what it holds
    (parsed with the part's other chunks, in shape), and the rejects reading it found."""

    file: FilePart
    first_line: int
    data: bytes
    rejects: list[Reject]


KEPT = "what it loaded before stays (as a deleted file's does)"  # a loaded file now emptied
CUT_MID_LINE = "cut short mid-line"  # text a failed transfer cut (FileTask.cut_short)


@dataclasses.dataclass(frozen=True)
class Direct:
    """What writing a bulk load's plays straight into songplays takes: the song keys, and the ids
    the manifest gives the run's new log files."""

    song_keys: pa.Table
    file_ids: dict[str, int]


DirectSource = Callable[[], "Direct | None"]


def direct_once(fetch: Callable[[], HandOver]) -> DirectSource:
    """What the run hands over once its song files are loaded (from the database, or through a
    pipe from the run), fetched and converted on first use, then kept; None: no bulk load, and
    plays are staged and merged."""

    @functools.cache
    def direct() -> Direct | None:
        handed = fetch()
        if handed is None:
            return None
        song_keys, file_ids = handed
        return Direct(transform.song_key_table(song_keys), file_ids)

    return direct


def prepare(
    batch: Batch,
    limits: Limits,
    direct: DirectSource | None = None,
    unusable: Unusable | None = None,
) -> Generator[Part, None, None]:
    """The batch's parts: a batch of small files is one part; a file bigger than
    limits.log_batch_bytes is read, parsed and shaped one part at a time (a song file only
    where it holds one song a line: extract.read_batch). With direct (a bulk
    load), a log batch's plays go straight to songplays once what that takes is handed over.
    A changed file unusable names (its records all rejected, as loading the batch found) is
    emptied: its lines are still judged and rejected, and it keeps what it loaded. So does a
    damaged version of a file the manifest has whole (FileTask.keeps_over): it is read through
    only to say after which line its damage comes."""
    part_bytes, piece_bytes = limits.log_batch_bytes, limits.parse_piece_bytes
    chunks, problems, size, lines, index = [], [], 0, 0, 0
    for task, read, contents in extract.read_batch(batch, part_bytes):
        if read.status == "unreadable":
            why = f"{read.error}: {KEPT}" if task.known_usable else read.error
            problems.append(Reject(task.path, None, why))
        if task.keeps_over(read):
            first_line, damage = 1, extract.DamagedFile(CUT_MID_LINE)  # text: no exception
            try:
                for data in contents:
                    first_line += newline_count(data)
            except extract.DamagedFile as exc:
                damage = exc
            problems.append(Reject(task.path, None, f"{damaged_at(damage, first_line)}: {KEPT}"))
            chunks.append(Chunk(FilePart(task.path, task.mtime_ns, read.emptied()), 1, b"", []))
            continue
        garbled = read.status == "changed" and (unusable or {}).get(task.path) == read.sha256
        if garbled:
            read = read.emptied()
        first_line, first, damage = 1, True, None
        try:
            for data, count in counted(batch.kind, contents, limits.part_lines):
                file = FilePart(task.path, task.mtime_ns, read, first)
                chunk = read_chunk(batch.kind, file, data, first_line)
                first_line += count
                if chunk is None:
                    continue  # blank lines, a byte-order mark, []: nothing to load or to reject
                chunks.append(chunk)
                size, lines = size + len(data), lines + count
                first = False
                if size >= part_bytes or lines >= limits.part_lines:
                    yield shape(batch.kind, index, False, chunks, problems, direct, piece_bytes)
                    chunks, problems, size, lines, index = [], [], 0, 0, index + 1
        except extract.DamagedFile as exc:
            damage = damaged_at(exc, first_line)
        if garbled:  # one reject of the whole file, its damage named in it
            reason = f"every record rejected: {KEPT}"
            problems.append(Reject(task.path, None, f"{damage}: {reason}" if damage else reason))
        elif first and task.keeps(read):  # no record at all now
            read = read.emptied()
            problems.append(Reject(task.path, None, f"{damage or 'empty file'}: {KEPT}"))
        elif damage or (first and read.status in ("new", "changed")):
            problems.append(Reject(task.path, None, damage or "empty file"))
        if first:  # nothing read: the file still counts, once
            chunks.append(Chunk(FilePart(task.path, task.mtime_ns, read), 1, b"", []))
    yield shape(batch.kind, index, True, chunks, problems, direct, piece_bytes)


def damaged_at(exc: extract.DamagedFile, first_line: int) -> str:
    """The damage that ends a file, and where: its content's next line is first_line."""
    where = f"after line {first_line - 1}" if first_line > 1 else "before its first line"
    return f"{exc} {where}"


def counted(kind: str, contents: Iterator[bytes], most: int) -> Iterator[tuple[bytes, int]]:
    """Each block of a file's content with the newlines it holds; a log's block of more than
    most lines cut after every most-th (a song file's may be an array written over many lines:
    it is not cut)."""
    for data in contents:
        count = newline_count(data)
        if count <= most or kind == "song" or isinstance(data, extract.Overlong):
            yield data, count
            continue
        for block in _lines(most).finditer(data):
            yield block[0], block[0].count(b"\n")


@functools.cache
def _lines(most: int) -> re.Pattern[bytes]:
    """Up to most lines, or the last line where it has no newline."""
    return re.compile(rb"(?:[^\n]*\n){1,%d}|[^\n]+" % most)


def read_chunk(kind: str, file: FilePart, data: bytes, first_line: int) -> Chunk | None:
    """The content read as a chunk, or None when it holds nothing to load or to reject: its
    lines all blank (every other line is a record or a reject), or a song file holding an empty
    array."""
    if isinstance(data, extract.Overlong):
        reason = f"a line longer than a part ({data.limit:,} bytes, --batch-mb): not read"
        return Chunk(file, first_line, b"", [Reject(file.path, first_line, reason, data[:-1])])
    if not data or data.isspace() or (kind == "song" and empty_array(data)):
        return None
    return Chunk(file, first_line, data, [])


# A JSON array of nothing, in JSON's blank space (a song file can hold an array of songs).
EMPTY_ARRAY = re.compile(rb"[ \t\n\r]*\[[ \t\n\r]*\][ \t\n\r]*")


def empty_array(data: bytes) -> bool:
    return EMPTY_ARRAY.fullmatch(data) is not None


def shape(
    kind: str,
    index: int,
    last: bool,
    chunks: list[Chunk],
    problems: list[Reject],
    direct: DirectSource | None = None,
    piece_bytes: int = Limits.parse_piece_bytes,
) -> Part:
    """Parse the chunks (a part's small files together), judge their records, shape the good
    ones into rows (of the staging tables, or of songplays and time when direct gives what that
    takes), count per file."""
    records, chunks = parsed(kind, chunks, piece_bytes)
    appended, written = None, None
    if kind == "song":
        good, invalid = transform.valid_songs(records)
        skipped = {}
        copies = {"stage_songs": stage_csv("stage_songs", transform.song_rows(good))}
    else:
        good, invalid, skipped = transform.valid_events(records)
        rows = transform.dedupe_plays(transform.play_rows(good))
        written = direct() if direct else None
        copies, appended = play_copies(rows, written)
    parse_rejects = [r for c in chunks for r in c.rejects]
    rejects = with_raw(
        pa.concat_tables([transform.reject_table(problems + parse_rejects), invalid]), chunks
    )
    line_rejects = transform.per_path(rejects.filter(pc.is_valid(rejects["line"])))
    read = transform.per_path(records.values)
    accepted, invalid_per_file = transform.per_path(good), transform.per_path(invalid)
    # A file's counts go once per part, on its first chunk here: a file that gives the part
    # several chunks is one row of the manifest, not one per chunk.
    files_here = {}
    for c in chunks:
        files_here.setdefault(c.file.path, c.file)
    files = tuple(
        dataclasses.replace(
            file,
            rejected=line_rejects.get(path, 0),
            skipped=skipped.get(path, 0),
            accepted=accepted.get(path, 0),
            records=read.get(path, 0) + line_rejects.get(path, 0) - invalid_per_file.get(path, 0),
            file_id=written.file_ids.get(path) if written else None,
        )
        for path, file in files_here.items()
    )
    copies["stage_manifest"] = manifest_csv(kind, files)
    copies["stage_rejects"] = stage_csv("stage_rejects", rejects)
    return Part(kind, index, last, files, copies, rejects["line"].null_count, appended)


def parsed(kind: str, chunks: list[Chunk], piece_bytes: int) -> tuple[Records, list[Chunk]]:
    """The chunks' records, and the chunks with the rejects parsing found."""
    reading = [(n, c) for n, c in enumerate(chunks) if c.data]
    pieces = [Piece(c.data, c.file.path, c.first_line, c.file.read.encoding) for _, c in reading]
    records, rejects = parse_pieces(kind, pieces, piece_bytes)
    found = {n: bad for (n, _), bad in zip(reading, rejects)}
    return records, [
        dataclasses.replace(c, rejects=c.rejects + found[n]) if found.get(n) else c
        for n, c in enumerate(chunks)
    ]


def play_copies(
    rows: pa.Table, direct: Direct | None
) -> tuple[dict[str, bytes], dict[str, int] | None]:
    """The COPY payloads of a part's plays, their users and their instants: the plays and
    instants straight into songplays and time in a bulk load (direct; with the plays per
    file), else into the staging tables (None)."""
    copies = {"stage_users": stage_csv("stage_users", transform.users_table(rows))}
    instants = transform.time_table(rows)
    if direct is None:
        copies["stage_plays"] = stage_csv("stage_plays", rows)
        copies["stage_time"] = stage_csv("stage_time", instants)
        return copies, None
    songplays = transform.songplay_rows(rows, direct.song_keys, direct.file_ids)
    copies["songplays"] = transform.render_csv(songplays, sql.SONGPLAYS_COPY_COLUMNS)
    copies["time"] = transform.render_csv(instants, sql.TIME_COPY_COLUMNS)
    return copies, transform.per_path(songplays)


def with_raw(rejects: pa.Table, chunks: list[Chunk]) -> pa.Table:
    """Rejects found in pieces read the fast way get their raw line from the bytes of the chunk
    holding the line (a chunk's lines split once)."""
    need = pc.and_(pc.is_null(rejects["raw"]), pc.is_valid(rejects["line"]))
    if not pc.any(need).as_py():
        return rejects
    raw, lines = rejects["raw"].to_pylist(), {}
    for row in pc.indices_nonzero(need).to_pylist():
        path, line = rejects["path"][row].as_py(), rejects["line"][row].as_py()
        chunk = max(
            (c for c in chunks if c.file.path == path and c.first_line <= line),
            key=lambda c: c.first_line,
        )
        if (path, chunk.first_line) not in lines:
            lines[path, chunk.first_line] = extract.raw_lines(chunk.data)
        raw[row] = transform.storable(lines[path, chunk.first_line][line - chunk.first_line])
    return rejects.set_column(
        rejects.schema.get_field_index("raw"), "raw", pa.array(raw, pa.string())
    )


def stage_csv(table: str, rows: pa.Table) -> bytes:
    return transform.render_csv(rows, sql.STAGE_COLUMNS[table])


MANIFEST_SCHEMA = pa.schema(
    [
        ("file_id", pa.int64()),
        ("path", pa.string()),
        ("kind", pa.string()),
        ("first", pa.bool_()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha256", pa.string()),
        *[(name, pa.int64()) for name in ("records", "loaded", "skipped", "rejected")],
        ("etag", pa.string()),
    ]
)


def manifest_csv(kind: str, files: tuple[FilePart, ...]) -> bytes:
    rows = [f for f in files if f.to_load]
    columns = {
        "file_id": [f.file_id for f in rows],
        "path": [f.path for f in rows],
        "kind": [kind] * len(rows),
        "first": [f.first for f in rows],
        "size_bytes": [f.read.size for f in rows],
        "mtime_ns": [f.mtime_ns for f in rows],
        "sha256": [f.read.sha256 for f in rows],
        "records": [f.records for f in rows],
        "loaded": [f.accepted if kind == "song" else 0 for f in rows],
        "skipped": [f.skipped for f in rows],
        "rejected": [f.rejected for f in rows],
        "etag": [f.read.etag for f in rows],
    }
    return stage_csv("stage_manifest", pa.table(columns, schema=MANIFEST_SCHEMA))


def refused(batch: Batch, error: str, limits: Limits) -> Part:
    """A one-file batch the database refused: every record of the file is recorded as rejected,
    so that one file never stops a run; the manifest loads it again once its content changes
    (hashed at each run, as a damaged file is). A changed file whose version in the manifest
    holds a record not rejected keeps what it loaded, as a file whose every record is rejected
    does."""
    files = [f for part in prepare(batch, limits) for f in part.files]
    records = sum(f.records for f in files)
    file = dataclasses.replace(files[0], records=records, accepted=0, skipped=0, rejected=records)
    reason = f"the database refused this file: {error}"
    if batch.tasks[0].keeps(file.read):
        file = dataclasses.replace(file, read=file.read.emptied())
        reason = f"{reason}: {KEPT}"
    problems = [Reject(file.path, None, reason)]
    return Part(
        batch.kind,
        0,
        True,
        (file,),
        {
            "stage_manifest": manifest_csv(batch.kind, (file,)),
            "stage_rejects": stage_csv("stage_rejects", transform.reject_table(problems)),
        },
        file_problems=1,
    )
