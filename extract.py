"""Extract: find the input files, cut them into batches, and read them in line-aligned parts.

Bytes out: records.py parses them. Nothing here needs pandas, so that a run with nothing new to
load never imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Kind = Literal["song", "log"]
KINDS: tuple[Kind, ...] = ("song", "log")
FOLDERS = {"song": "song_data", "log": "log_data"}


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
