"""Extract: find the input files, cut them into batches, and read them in line-aligned parts.

Bytes out: records.py parses them. Nothing here needs pandas, so that a run with nothing new to
load never imports it.

Every entry under song_data/ and log_data/ ends one of three ways: a data file is read (and
loaded, or rejected with its reason), a folder that cannot be listed is rejected, and anything
else is ignored and named in the summary. A data file is read as UTF-8 text, gunzipped first
when its name ends in .gz; a byte-order mark says when it is UTF-16 or UTF-32 instead.
"""

from __future__ import annotations

import codecs
import dataclasses
import errno
import hashlib
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Kind = Literal["song", "log"]
KINDS: tuple[Kind, ...] = ("song", "log")
FOLDERS = {"song": "song_data", "log": "log_data"}

# A data file's name ends in one of these, in any case, gzipped or not ("x.JSON", "x.ndjson.gz").
DATA_SUFFIXES = (".json", ".ndjson", ".jsonl")
GZIP_SUFFIX = ".gz"
DATA_FILES = "*.json, *.ndjson and *.jsonl files, gzipped or not"

BLOCK = 1 << 20  # bytes read, or gunzipped, at a time


@dataclasses.dataclass(frozen=True)
class Limits:
    """How the work is cut: memory follows these bounds, not the size of the input."""

    song_batch_files: int = 10_000  # song files per batch (one transaction)
    log_batch_bytes: int = 32 * 1024 * 1024  # log bytes per batch, and per part of a bigger file
    parse_piece_bytes: int = 4 * 1024 * 1024  # Arrow's reader takes a log this much at a time


# ================================================================ paths as text


def path_text(path: str) -> str:
    """A path as the manifest, load_rejects and the summary write it: UTF-8 text on one line that
    reads as the path and maps back to it one to one. A backslash is doubled, and each byte of a
    character that does not print (a newline, a tab, a zero-width space) or of a name that is
    not UTF-8 (os functions give such bytes as surrogates) is written \\xHH."""
    if path.isprintable() and "\\" not in path:
        return path
    return "".join(
        "\\\\"
        if char == "\\"
        else char
        if char.isprintable()
        else "".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))
        for char in path
    )


def is_data_file(name: str) -> bool:
    return name.lower().removesuffix(GZIP_SUFFIX).endswith(DATA_SUFFIXES)


def is_gzipped(name: str) -> bool:
    return name.lower().endswith(GZIP_SUFFIX)


# ================================================================ finding and planning


@dataclasses.dataclass(frozen=True)
class FileTask:
    """A file to read: its path relative to the data folder (forward slashes, as path_text
    writes it), where it is, its size and mtime when listed, and the SHA-256 the manifest has for
    it (None when new). problem: why it cannot be read, known from the listing already (a folder
    that cannot be listed)."""

    path: str
    location: str
    size: int
    mtime_ns: int
    known_sha256: str | None
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class Batch:
    """Files loaded in one transaction: a kill leaves all of them loaded or none."""

    kind: Kind
    tasks: tuple[FileTask, ...]

    @property
    def new_bytes(self) -> int:
        return sum(t.size for t in self.tasks if t.known_sha256 is None)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What is under a kind's folder (symlinked folders not followed), each list sorted by path
    components: data files (a folder so named too: reported unreadable when read), folders that
    cannot be listed with the reason, and the entries ignored (with a note for a link to a
    folder)."""

    files: list[str]
    unlisted: list[tuple[str, str]]
    ignored: list[tuple[str, str]]


def find(data_dir: Path, kind: Kind) -> list[str]:
    """The data files under the kind's folder, sorted by path components."""
    return listing(data_dir, kind).files


def listing(data_dir: Path, kind: Kind) -> Listing:
    """Everything under the kind's folder (nothing when it does not exist)."""
    top = os.path.join(data_dir, FOLDERS[kind])
    files, unlisted, ignored = [], [], []
    stack = [top] if os.path.lexists(top) else []
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError as exc:
            unlisted.append((folder, f"cannot read folder: {exc.strerror}"))
            continue
        for entry in listed:
            is_folder = entry.is_dir(follow_symlinks=False)
            if is_folder:
                stack.append(entry.path)
            if is_data_file(entry.name):
                files.append(entry.path)
            elif not is_folder:
                ignored.append((entry.path, _ignored_note(entry)))
    return Listing(
        sorted(files, key=_path_order),
        sorted(unlisted, key=lambda u: _path_order(u[0])),
        sorted(ignored, key=lambda i: _path_order(i[0])),
    )


def _ignored_note(entry: os.DirEntry) -> str:
    try:
        linked_folder = entry.is_symlink() and entry.is_dir()
    except OSError:  # a link in a loop
        linked_folder = False
    return " (a link to a folder: not followed)" if linked_folder else ""


def _path_order(location: str) -> list[str]:
    return location.split(os.sep)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A kind's batches of files to read, how many files are unchanged since their manifest
    entry by size and mtime (not opened), and the entries ignored, as the summary names them."""

    batches: list[Batch]
    unchanged: int
    ignored: list[str]


def plan(
    data_dir: Path, kind: Kind, known: dict[str, tuple[int, int, str]], limits: Limits = Limits()
) -> Plan:
    """A log batch stays under limits.log_batch_bytes unless one file alone is bigger, which then
    makes a batch of its own, read in parts."""
    listed = listing(data_dir, kind)
    tasks, unchanged = [], 0
    for location in listed.files:
        rel = relative(data_dir, kind, location)
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
    tasks += [
        FileTask(relative(data_dir, kind, location), location, 0, 0, None, problem)
        for location, problem in listed.unlisted
    ]
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
    ignored = [relative(data_dir, kind, location) + note for location, note in listed.ignored]
    return Plan(batches, unchanged, ignored)


def relative(data_dir: Path, kind: Kind, location: str) -> str:
    """location's path under the data folder (found under the kind's folder), as path_text
    writes it."""
    folder = os.path.join(data_dir, FOLDERS[kind])
    inside = location[len(folder) + 1 :].replace(os.sep, "/")
    return path_text(f"{FOLDERS[kind]}/{inside}" if inside else FOLDERS[kind])


# ================================================================ reading


FileStatus = Literal["new", "changed", "unchanged", "unreadable"]


@dataclasses.dataclass(frozen=True)
class FileRead:
    """What opening a file found: its status, size and SHA-256 as read (of the bytes on disk,
    gzipped or not), the encoding of its text, or why it could not be read."""

    status: FileStatus
    size: int
    sha256: str | None = None
    error: str | None = None  # the reject's reason: "cannot read file: ..."
    encoding: str = "UTF-8"


class DamagedFile(Exception):
    """The rest of a file cannot be read (damaged gzip data, a failing disk); what came before
    it was read. intact: how many bytes of content before the damage can be trusted."""

    def __init__(self, reason: str, intact: int = 0):
        super().__init__(reason)
        self.intact = intact


def read_file(task: FileTask, part_bytes: int) -> tuple[FileRead, Iterator[bytes]]:
    """The file's content as UTF-8, in line-aligned parts of about part_bytes, unless it cannot
    be read or its content is what the manifest has. Only what the file held when it was opened
    is hashed and read: a file that grows meanwhile is read again by the next run. A file bigger
    than part_bytes is hashed in a first pass, so that its parts are read one at a time and
    never held together; gzip data is checked in that pass too, and gunzipped a block at a
    time, whatever its size. The parts raise DamagedFile where the rest of the file cannot be
    read."""
    if task.problem:
        return FileRead("unreadable", task.size, error=task.problem), iter(())
    try:
        handle = open_regular(task.location)
    except OSError as exc:
        return _unreadable(task, exc), iter(())
    gzipped = is_gzipped(task.location)
    try:
        seen = _first_pass(handle, part_bytes, gzipped)
    except OSError as exc:
        handle.close()
        return _unreadable(task, exc), iter(())
    whole = seen.size == len(seen.first)
    if whole or seen.sha256 == task.known_sha256:
        handle.close()
    if seen.sha256 == task.known_sha256:
        return FileRead("unchanged", seen.size, seen.sha256), iter(())
    blocks = iter([seen.first]) if whole else _blocks(handle, seen.size)
    head = seen.first
    if gzipped:
        blocks, head = _trusted(_gunzip(blocks), seen.damage), _gunzipped_head(seen.first)
    bom = byte_order_mark(head)
    return (
        FileRead(
            "new" if task.known_sha256 is None else "changed",
            seen.size,
            seen.sha256,
            encoding=BYTE_ORDER_MARKS.get(bom, "UTF-8"),
        ),
        _line_parts(_as_utf8(blocks, bom), part_bytes),
    )


def _unreadable(task: FileTask, exc: OSError) -> FileRead:
    return FileRead("unreadable", task.size, error=f"cannot read file: {exc.strerror}")


def open_regular(location: str):
    """The file opened for reading, if it is a regular file (or a link to one). Nothing else is
    opened: opening a FIFO waits for a writer, and opening a device can act on it. It is opened
    without waiting, and checked again once open, in case it was replaced in between."""
    kind = _not_regular(os.stat(location).st_mode)
    if kind is None:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        handle = os.fdopen(os.open(location, flags), "rb")
        kind = _not_regular(os.fstat(handle.fileno()).st_mode)
        if kind is None:
            return handle
        handle.close()
    if kind == "a folder":
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    raise OSError(errno.EINVAL, f"{kind}, not a regular file")


def _not_regular(mode: int) -> str | None:
    """What a file that is not a regular file is; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


@dataclasses.dataclass(frozen=True)
class FirstPass:
    """What reading a file through once found: the SHA-256 and size of what it held as it was
    opened (not what it grew to after), its first block (all of it when it is no bigger than
    part_bytes, read at once), and for gzip data the damage gunzipping it meets (None when it
    is intact)."""

    sha256: str
    size: int
    first: bytes
    damage: DamagedFile | None = None


def _first_pass(handle, part_bytes: int, gzipped: bool) -> FirstPass:
    size = os.fstat(handle.fileno()).st_size
    hashing = Hashing(handle, size, size if size <= part_bytes else BLOCK)
    blocks = iter(hashing)
    damage = _gzip_damage(blocks) if gzipped else None
    for _ in blocks:  # what gunzipping left unread is hashed too
        pass
    return FirstPass(hashing.digest.hexdigest(), hashing.read, hashing.first, damage)


class Hashing:
    """A file's first size bytes, block_size at a time, hashed as they are read: once read
    through, digest, read (bytes) and first (block) say what was read."""

    def __init__(self, handle, size: int, block_size: int):
        self.handle, self.size, self.block_size = handle, size, block_size
        self.digest, self.read, self.first = hashlib.sha256(), 0, b""

    def __iter__(self) -> Iterator[bytes]:
        while self.read < self.size:
            block = self.handle.read(min(self.block_size, self.size - self.read))
            if not block:
                return
            self.digest.update(block)
            self.first = self.first or block
            self.read += len(block)
            yield block


def _blocks(handle, size: int) -> Iterator[bytes]:
    """The file's first size bytes, a block at a time, from its start; the file is closed after."""
    with handle:
        handle.seek(0)
        while size > 0:
            try:
                block = handle.read(min(BLOCK, size))
            except OSError as exc:
                raise DamagedFile(f"cannot read the rest of the file: {exc.strerror}") from exc
            if not block:
                return
            size -= len(block)
            yield block


# ---------------------------------------------------------------- gzip

GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for the gzip format


def _gunzip(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """gzip data gunzipped a block at a time, however much it expands: one member or several (as
    `cat a.gz b.gz` makes them), with the zero bytes gzip skips between members. Damage, or an
    end cut short, raises DamagedFile after what came before it."""
    inflater, begun, after_member = zlib.decompressobj(GZIP), False, False
    total = intact = 0  # bytes out; up to the end of the last member, whose check passed

    def inflated(data: bytes) -> bytes:
        try:
            return inflater.decompress(data, BLOCK)
        except zlib.error as exc:
            raise DamagedFile(f"damaged gzip data ({exc})", intact) from exc

    for pending in blocks:
        while pending:
            if after_member and not begun:
                pending = pending.lstrip(b"\0")
                if not pending:
                    break
            out = inflated(pending)
            begun, total = True, total + len(out)
            if out:
                yield out
            if inflater.eof:
                pending, after_member, intact = inflater.unused_data, True, total
                inflater, begun = zlib.decompressobj(GZIP), False
            else:
                pending = inflater.unconsumed_tail
    while begun and not inflater.eof and (out := inflated(b"")):
        total += len(out)
        yield out  # what the last block gunzipped to beyond the last BLOCK returned
    if begun and not inflater.eof:
        raise DamagedFile("gzip data cut short", total)


def _gzip_damage(blocks: Iterator[bytes]) -> DamagedFile | None:
    """The damage gunzipping gzip data meets; None when it is intact."""
    try:
        for _ in _gunzip(blocks):
            pass
    except DamagedFile as damage:
        return damage
    return None


def _trusted(content: Iterator[bytes], damage: DamagedFile | None) -> Iterator[bytes]:
    """Gunzipped content as far as it can be trusted, then its damage. gzip checks a member's
    content only at its end: content of a damaged member may be wrong before the damage shows,
    and is not read; content before an end cut short is."""
    if damage is None:
        yield from content
        return
    left = damage.intact
    for block in content:
        if len(block) >= left:
            yield block[:left]
            break
        left -= len(block)
        yield block
    raise damage


def _gunzipped_head(data: bytes) -> bytes:
    """The first bytes that gzip data gunzips to (none where it is not gzip data)."""
    try:
        return zlib.decompressobj(GZIP).decompress(data, 4)
    except zlib.error:
        return b""


# ---------------------------------------------------------------- text encodings

# Longest first: UTF-32's little-endian mark starts with UTF-16's.
BYTE_ORDER_MARKS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF8: "UTF-8",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}
# Decoding UTF-16 or UTF-32, a code unit that is no character (half a surrogate pair, a last odd
# byte) becomes a lone surrogate, which written as UTF-8 makes its line invalid: that line alone
# is rejected ("not valid UTF-16").
NO_CHARACTER = "sparkify-no-character"
codecs.register_error(NO_CHARACTER, lambda exc: ("\ud800", exc.end))


def byte_order_mark(head: bytes) -> bytes:
    """The byte-order mark text starts with (b"" when none)."""
    return next((bom for bom in BYTE_ORDER_MARKS if head.startswith(bom)), b"")


def _as_utf8(blocks: Iterator[bytes], bom: bytes) -> Iterator[bytes]:
    """Text that starts with the byte-order mark bom, as UTF-8 without it, a block at a time.
    UTF-8 stays as it is (each line is checked when it is parsed)."""
    encoding = BYTE_ORDER_MARKS.get(bom, "UTF-8")
    if encoding == "UTF-8":
        skip = len(bom)
        for block in blocks:
            cut = min(skip, len(block))
            skip -= cut
            yield block[cut:]
        return
    decoder = codecs.getincrementaldecoder(encoding)(NO_CHARACTER)  # it reads the mark itself
    for block in blocks:
        yield decoder.decode(block).encode("utf-8", "surrogatepass")
    yield decoder.decode(b"", final=True).encode("utf-8", "surrogatepass")


def _line_parts(blocks: Iterator[bytes], part_bytes: int) -> Iterator[bytes]:
    """The blocks joined into parts, each ending after the first newline from its part_bytes-th
    byte on (the last where the text ends). Where the blocks raise DamagedFile, what came before
    is yielded first."""
    held, size = [], 0
    try:
        for block in blocks:
            while block:
                end = block.find(b"\n", max(part_bytes - size - 1, 0)) + 1
                if not end:
                    held.append(block)
                    size += len(block)
                    break
                yield b"".join([*held, block[:end]])
                held, size, block = [], 0, block[end:]
    except DamagedFile:
        if held:
            yield b"".join(held)
        raise
    if held:
        yield b"".join(held)


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
