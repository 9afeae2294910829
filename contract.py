"""The data contract: the types that travel between the pipeline's stages (a plan's batches of
files to read, how each file was read, the parts the parse worker hands to the load, and what the
load did with them). Plain data: nothing here touches the files, the parsers or the database, so
every stage imports it without bringing in another stage.

    extract.plan -> Plan(batches: [Batch(tasks: [FileTask])])
    prepare.prepare(Batch) -> Part(files: [FilePart(read: FileRead)], copies)
    load.load_part(Part) -> Loaded
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from extract import Store

Kind = Literal["song", "log"]
KINDS: tuple[Kind, ...] = ("song", "log")


@dataclasses.dataclass(frozen=True)
class Limits:
    """How the work is cut: memory follows these bounds, not the size of the input."""

    # Song files per batch (one transaction): the next batch is read while the database loads
    # one, so the first and the last, waited for alone, are better small; 20,000 song files load
    # in 1.02 s in batches of 4,000, 1.12 s in batches of 10,000 (bench/README.md).
    song_batch_files: int = 4_000
    # and song bytes per batch: files holding arrays of songs take 20 times their size in memory
    song_batch_bytes: int = 4 * 1024 * 1024
    # log bytes per batch, and per part of a bigger file (a song file's too)
    log_batch_bytes: int = 32 * 1024 * 1024
    # Arrow's reader takes a log, or a batch's small files, this much at a time
    parse_piece_bytes: int = 4 * 1024 * 1024

    @property
    def part_lines(self) -> int:
        """Lines a part holds at most, as bytes: what a record costs in memory (a reject's
        row above all: about 1 KB) follows its lines, and lines far shorter than a record
        (junk, a pretty-printed array) would make a part of log_batch_bytes hold millions."""
        return max(1, self.log_batch_bytes // LINE_BYTES_LEAST)


# A part of a log holds at most one line for each LINE_BYTES_LEAST bytes of its size (real log
# lines are 250 to 470 bytes): 16 MB of one-character lines, 8 million rejects, took a run to
# 5.8 GB; with --batch-mb 1, 650 MB.
LINE_BYTES_LEAST = 128


# A btree index entry holds 2,704 bytes, less its header: a text longer than KEY_BYTES (a file's
# path, which the manifest and the rejects are keyed by; a song's or an artist's id) could not
# be keyed.
KEY_BYTES = 2_500


# A rejected record's raw text (load_rejects.raw) is kept up to RAW_TEXT_LIMIT characters, which
# take at most RAW_TEXT_BYTES bytes of UTF-8.
RAW_TEXT_LIMIT = 1000
RAW_TEXT_BYTES = RAW_TEXT_LIMIT * 4

# What says a data file changed without reading it: its size, mtime in ns (0 for an object) and
# ETag (None for a file on disk).
Version = tuple[int, int, str | None]


class Known(NamedTuple):
    """What the manifest knows of a file: its version and SHA-256 when it was last loaded,
    whether that load found the file itself damaged (read again at each run, whatever its
    version says), whether what it loaded holds a record not rejected (a version holding none
    then leaves it in place), and the run that loaded it."""

    version: Version
    sha256: str
    damaged: bool = False
    usable: bool = False
    run_id: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class FileTask:
    """A file to read: its path as the manifest names it (under the data folder, forward
    slashes, as path_text writes it; an object's full URL), where it is (a path, or a URL), its
    size, mtime and ETag when listed, and the SHA-256 the manifest has for it (None when new).
    problem: why it cannot be read, known from the listing already (a folder that cannot be
    listed). known_usable: the version the manifest has holds a record not rejected;
    known_damaged: that version's data was damaged or cut short (what came before loaded);
    known_size: that version's size (0 when new)."""

    path: str
    location: str
    size: int
    mtime_ns: int
    known_sha256: str | None
    problem: str | None = None
    etag: str | None = None
    known_usable: bool = False
    known_damaged: bool = False
    known_size: int = 0

    def keeps(self, read: FileRead) -> bool:
        """Whether the file, read as read, keeps what it loaded where it now holds no record
        that is not rejected: it changed, and the version the manifest has holds one."""
        return read.status == "changed" and self.known_usable

    def keeps_over(self, read: FileRead) -> bool:
        """Whether the file keeps what it loaded instead of reading this version at all: the
        version is damaged (a resend cut short, say) or cut short (cut_short), and the one the
        manifest has was read whole and holds a record not rejected. A damaged version of a
        file that loaded damaged too replaces it, as any changed file's does."""
        return (
            (read.damaged or self.cut_short(read)) and self.keeps(read) and not self.known_damaged
        )

    def cut_short(self, read: FileRead) -> bool:
        """Whether this version is text a failed transfer cut: it ends mid-line, and it is smaller
        than the version the manifest has (a file read while its writer is at work ends mid-line
        too, but it grows)."""
        return read.ends_mid_line and read.size < self.known_size


@dataclasses.dataclass(frozen=True)
class Batch:
    """Files loaded in one transaction: a kill leaves all of them loaded or none. store: the
    object store their URLs are in (None: files on disk)."""

    kind: Kind
    tasks: tuple[FileTask, ...]
    store: Store | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """A kind's batches of files to read, how many files are unchanged since their manifest
    entry by their version (not opened), the entries ignored, as the summary names them, and
    the files the manifest has under this folder that are no longer there."""

    batches: list[Batch]
    unchanged: int
    ignored: list[str]
    gone: list[str] = dataclasses.field(default_factory=list)


# "emptied": a file loaded before that now holds no record at all (a failed transfer left it
# empty, blank or cut short before its first line), or none that is not rejected (an error page
# saved in its place, text in another encoding): like a deleted file it keeps what it loaded,
# and its entry stays. In the order the report lists them.
FileStatus = Literal["unchanged", "new", "changed", "emptied", "unreadable"]


class Reject(NamedTuple):
    """A record, or a whole file, that is not loaded (a row of load_rejects)."""

    path: str
    line: int | None  # None: the whole file
    reason: str
    raw: str | bytes | None = None  # the line as read, where there is one


@dataclasses.dataclass(frozen=True)
class FileRead:
    """What opening a file found: its status, size and SHA-256 as read (of the bytes stored,
    compressed or not), the encoding of its text, or why it could not be read; and an object's
    ETag, of the version read (None for a file on disk), which the manifest keeps."""

    status: FileStatus
    size: int
    sha256: str | None = None
    error: str | None = None  # the reject's reason: "cannot read file: ..."
    encoding: str = "UTF-8"
    etag: str | None = None
    damaged: bool = False  # its content ends in DamagedFile: compressed data damaged, cut short
    ends_mid_line: bool = False  # its text (decompressed) ends in a line neither ended nor closed

    def emptied(self) -> FileRead:
        """This read, of a loaded file that now holds no record it can load, or is damaged where
        it loaded whole: it keeps what it loaded."""
        return dataclasses.replace(self, status="emptied")


@dataclasses.dataclass(frozen=True)
class FilePart:
    """One file's share of a part: how the file was read, and what became of its records here."""

    path: str
    mtime_ns: int
    read: FileRead
    first: bool = True  # the file's first part: its status counts once
    records: int = 0
    accepted: int = 0  # passed validation (plays, or songs); a play may still be a duplicate
    skipped: int = 0
    rejected: int = 0
    file_id: int | None = None  # taken before it is loaded (a bulk load's new log file)

    @property
    def to_load(self) -> bool:
        """Whether this file's content goes to the database (it is new or has changed)."""
        return self.read.status in ("new", "changed")


@dataclasses.dataclass(frozen=True)
class Part:
    """What one transaction receives at a time: COPY payloads per table, and the files they come
    from. A batch is one part, or several when one big file is read in parts; the batch's
    transaction commits after its last part. The payloads go to staging tables (stage_*), and
    in a bulk load the plays straight into songplays: then appended holds how many plays were
    written from each file."""

    kind: Kind
    index: int  # the part's place in its batch, from 0
    last: bool
    files: tuple[FilePart, ...]
    copies: dict[str, bytes]
    file_problems: int  # files rejected whole (unreadable, empty, refused)
    appended: dict[str, int] | None = None  # path: plays


# A play's song, where the song catalogue is small enough to send to the parse worker: rows of
# (title, artist name, duration, song_id, artist_id), one per (title, artist name, duration), as
# the CSV text PostgreSQL's COPY writes (a NULL an empty field, an empty text a quoted one).
SongKeys = bytes
# What a bulk load hands the parse worker once its song files are loaded, for its plays to go
# straight into songplays: the song keys and the ids taken for the new log files, by path. Any
# other load hands over None: its plays are staged and merged.
HandOver = tuple[SongKeys, dict[str, int]] | None
# Changed files found to hold no record that is not rejected, where the version the manifest has
# holds one, by path: the SHA-256 of that content. Prepared again, such a file, as long as it
# holds that content, is emptied.
Unusable = dict[str, str]


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What the database did with a part: plays inserted per file, whether copies of a play
    were settled (which moves plays and counts of other files), and how many plays of other
    files its files' copies took over (those files count them as duplicates now)."""

    inserted: dict[str, int]
    settled: bool = False
    taken_over: int = 0

    def outcome(self, kind: Kind, file: FilePart) -> tuple[int, int]:
        """A file's accepted records as (loaded, duplicates): a song is loaded (an upsert), a play
        the merge did not insert is a duplicate of a play another file or line holds."""
        if kind == "song":
            return file.accepted, 0
        loaded = self.inserted.get(file.path, 0)
        return loaded, file.accepted - loaded
