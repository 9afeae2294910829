"""Extract: find the input files, cut them into batches, and read them in line-aligned parts.

Bytes out: parse.py parses them. Nothing here needs pyarrow, so that a run with nothing new to
load never imports it.

The data is a folder on disk or a prefix in an object store (s3://bucket/prefix, and gs:// or
az:// when their fsspec packages are installed). Both are listed as entries with a version (what
says a file changed without reading it: a file's size and mtime, an object's size and ETag) and
read through the same passes; only listing and opening differ.

Every entry under song_data/ and log_data/ ends one of three ways: a data file is read (and
loaded, or rejected with its reason), a folder that cannot be listed is rejected, and anything
else is ignored and named in the summary. A data file is read as UTF-8 text, decompressed first
when it is gzip, bzip2, xz or zstd data, or a zip archive (its files' text one after another);
a byte-order mark says when it is UTF-16 or UTF-32 instead.
"""

from __future__ import annotations

import asyncio
import bz2
import codecs
import dataclasses
import errno
import hashlib
import importlib.util
import io
import itertools
import lzma
import os
import re
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import orjson

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd  # compression.zstd, for Pythons before it

import cli
from contract import (
    KEY_BYTES,
    RAW_TEXT_BYTES,
    Batch,
    FileRead,
    FileTask,
    Kind,
    Known,
    Limits,
    Plan,
    Version,
)

FOLDERS = {"song": "song_data", "log": "log_data"}

# A data file's name ends in one of these, in any case, compressed or not ("x.JSON",
# "x.ndjson.gz", "x.json.XZ": COMPRESSIONS).
DATA_SUFFIXES = (".json", ".ndjson", ".jsonl")
DATA_FILES = "*.json, *.ndjson and *.jsonl files, compressed (.gz, .bz2, .xz, .zst, .zip) or not"

BLOCK = 1 << 20  # bytes read, or decompressed, at a time
OBJECT_BLOCK = 8 << 20  # bytes of a big object asked for in one request
FETCHES_AT_ONCE = 64  # small objects fetched concurrently


# ================================================================ where the data is

# URL scheme: the fsspec package that reads it, and its options for anonymous access.
# Schemes whose URL starts with the bucket: a user, password or port before it is a mistake
# (Azure's abfs://container@account... holds an '@' of its own).
BUCKET_FIRST = ("s3", "gs", "gcs")
STORES = {
    "s3": ("s3fs", {"anon": True}),
    "gs": ("gcsfs", {"token": "anon"}),
    "gcs": ("gcsfs", {"token": "anon"}),
    "az": ("adlfs", {"anon": True}),
    "abfs": ("adlfs", {"anon": True}),
}


class StoreError(cli.UserError):
    """The object store cannot be reached, or refuses (a missing bucket, bad credentials, a
    connection that drops): the run stops there, and what it committed stays. The message names
    the URL and the store's reason, never a credential."""


@dataclasses.dataclass(frozen=True)
class Store:
    """An object store, reached through fsspec: its URL scheme and whether it is read
    anonymously. Small and picklable: the parse worker gets it with its batches and opens the
    store itself, its credentials coming from its own environment (the standard chain: the
    AWS_* variables, ~/.aws profiles, an instance role), never passed."""

    scheme: str
    anonymous: bool = False

    def filesystem(self):
        import fsspec  # imported only when the data is in an object store

        anonymous = STORES[self.scheme][1]
        options = anonymous if self.anonymous else {}
        # No listings cache: each run, and each check of a run, sees the store as it is now.
        return fsspec.filesystem(self.scheme, use_listings_cache=False, **options)

    def url(self, name: str) -> str:
        """An object's URL from the name fsspec gives it (bucket/key)."""
        return f"{self.scheme}://{name}"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the data is: a folder on disk (store None), or a prefix in an object store (root
    is its URL, without a trailing slash)."""

    root: str
    store: Store | None = None

    def top(self, kind: Kind) -> str:
        """Where the kind's files are: its folder's path, or its prefix's URL."""
        if self.store is None:
            return os.path.join(self.root, FOLDERS[kind])
        return f"{self.root}/{FOLDERS[kind]}"


def source(data: str | Path, anonymous: bool = False) -> Source:
    """The data named by --data: a URL of a known scheme (in any case), or else a folder's path.
    A store whose package is not installed says which to install; credentials are the store
    library's to find, never read from the URL."""
    scheme, sep, rest = str(data).partition("://")
    if not sep:
        return Source(str(data))
    # As messages show it: a password masked first (it may hold a '?'), then any query left
    # out (a signature or a token there).
    before, query, _ = cli.masked(str(data), a_value=True).partition("?")
    shown = before + ("?…" if query else "")
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres"):
        raise StoreError(
            "--data names a database (a postgresql:// URL): the data goes in --data, the "
            "database in --database-url or DATABASE_URL; its text is not shown, as it may hold "
            "a password"
        )
    if scheme not in STORES:
        raise StoreError(
            f"{shown}: not a folder, nor a URL this reads (s3://, gs:// or az://, or a folder)"
        )
    if re.search(rf"[?&](?:{cli.SIGNED_QUERY_NAMES})=", rest, re.IGNORECASE):  # sent, and shown
        raise StoreError(
            f"{shown}: the query string (?name=value) is not read: an object store is read "
            "with its library's credentials (docs/object-storage.md), not a signed URL's or a "
            "SAS token's; its text is not shown, as it may hold a secret"
        )
    bucket = rest.partition("/")[0]
    if not bucket:  # an unset variable in s3://$BUCKET/prefix, say
        raise StoreError(f"{shown}: the URL names no bucket ({scheme}://bucket/prefix)")
    if scheme in BUCKET_FIRST and any(mark in bucket for mark in "@:"):
        user = bucket.rpartition("@")[0]
        if user and ":" not in user:  # a secret typed alone, with no key before it
            shown = shown.replace(f"{user}@", f"{cli.MASK}@", 1)
        raise StoreError(
            f"{shown}: a user, password or port in the URL is not read: it starts with the "
            "bucket (s3://bucket/prefix), and credentials and endpoints come from the store's "
            "library (environment variables, a credentials file: docs/object-storage.md)"
        )
    endpoint = scheme == "s3" and endpoint_with_user()
    if endpoint:
        raise StoreError(
            f"{endpoint} holds a user and password (user:password@), which S3's signed "
            "requests cannot carry: take them out of it; the credentials go in "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (docs/object-storage.md)"
        )
    package = STORES[scheme][0]
    if importlib.util.find_spec(package) is None:
        raise StoreError(
            f"{shown}: reading {scheme}:// needs the {package} package: pip install {package} "
            "(into the Python that runs etl.py)"
        )
    return Source(root_of(str(data)), Store(scheme, anonymous))


def root_of(data: str) -> str:
    """--data as a Source's root holds it: a URL with its scheme in lower case and no trailing
    slash; a folder's path as given."""
    scheme, sep, rest = data.partition("://")
    return f"{scheme.lower()}://{rest}".rstrip("/") if sep else data


# What a store's library reads from the environment that no message may show: these variables'
# values, and the password of an endpoint URL's user part, whether or not the URL is written
# with its scheme (cli.CREDENTIALS masks a password only in a URL that has one).
STORE_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
)
STORE_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def endpoint_with_user() -> str | None:
    """The endpoint variable whose URL names a user (user:password@host), with its scheme or
    without: botocore's HTTP client refuses such a URL, whatever the endpoint. Any `@` counts:
    a password written as it is may hold a `/` before it, and no endpoint's path holds one."""
    for name in STORE_ENDPOINT_VARIABLES:
        if "@" in os.environ.get(name, ""):
            return name
    return None


def store_secrets() -> list[str]:
    """The texts of the store's settings in the environment that no message may show."""
    found = [os.environ.get(name, "") for name in STORE_SECRET_VARIABLES]
    for name in STORE_ENDPOINT_VARIABLES:
        user, at, _ = os.environ.get(name, "").rpartition("@")
        found.append(user.rpartition("://")[2].partition(":")[2] if at else "")
    return [text for text in found if text]


NO_SUCH_KEY = "The specified key does not exist."  # S3's reason for an object deleted


def store_failure(exc: Exception, url: str) -> Exception:
    """What a store's error becomes: an object not found (deleted since it was listed) or
    archived (S3's Glacier classes, read once restored) stays that object's problem, an OSError,
    as a file that vanished or cannot be read is; anything else (no connection, a refused
    request, bad credentials, an object replaced while it was streamed) stops the run."""
    if isinstance(exc, FileNotFoundError):
        # s3fs opening a big object names only its path: the reason is S3's, as a small one's
        return exc if exc.strerror else FileNotFoundError(errno.ENOENT, NO_SUCH_KEY)
    if _store_code(exc) == "InvalidObjectState":
        error = exc.__cause__.response["Error"]
        archived = error.get("StorageClass") or "archived"
        return PermissionError(
            errno.EACCES, f"{store_reason(exc)} ({archived}: restore it to load it)"
        )
    # s3fs's "... no longer exists" (its errno, EBUSY, is also a store's "slow down")
    if type(exc).__name__ == "FileExpired":
        return StoreError(
            f"cannot read {url}: it was replaced while it was read (its ETag changed); run "
            "again to read it as it is now"
        )
    return StoreError(f"cannot read {url}: {store_reason(exc)}")


ERRNO = re.compile(r"^\[Errno -?\d+\] ")


def store_reason(exc: Exception) -> str:
    """A store library's error on one line (its first line alone may say only "Parameter
    validation failed:"), without Python's "[Errno 13]" where it made an OSError of it."""
    return cli.one_line(ERRNO.sub("", str(exc), count=1)) or type(exc).__name__


# ================================================================ paths as text


def path_text(path: str) -> str:
    """A path as the manifest, load_rejects and the summary write it: UTF-8 text on one line that
    reads as the path and maps back to it one to one. A backslash is doubled, and each byte of a
    character that does not print (a newline, a tab, a zero-width space) or of a name that is
    not UTF-8 (os functions give such bytes as surrogates) is written \\xHH. A file's name is
    read as UTF-8 whatever the locale's encoding (a cron job's may be ASCII)."""
    path = path if "://" in path else cli.utf8_name(path)
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
    return _named(name)[0].endswith(DATA_SUFFIXES)


def named_for(name: str) -> Compression | None:
    """The compression whose suffix a file's name ends in, in any case (None: none)."""
    return _named(name)[1]


def _named(name: str) -> tuple[str, Compression | None]:
    """A file's name in lower case without a compression's suffix, and that compression."""
    lowered = name.lower()
    stem, dot, suffix = lowered.rpartition(".")
    compression = BY_SUFFIX.get(dot + suffix)
    return (stem, compression) if compression else (lowered, None)


def is_hidden(name: str) -> bool:
    """A name starting with a dot: macOS's ._x.json copies, .Trashes, an editor's or a transfer's
    files at work. Neither read nor looked into."""
    return name.startswith(".")


def hidden_note(name: str, folder: bool) -> str:
    """What the summary adds to a hidden entry's name, where it would have been read."""
    if folder:
        return " (a hidden folder: not read)"
    return " (hidden: not read)" if is_data_file(name) else ""


# Data compressed otherwise, by its first bytes: read as text, it would be lines of noise, each
# rejected, and a file loaded before would lose its plays to them. It is named and not read.
UNREAD_COMPRESSIONS = {b"\x04\x22\x4d\x18": "lz4"}


def unread_compression(head: bytes) -> str | None:
    """The compression, of those not read, that data starting with head is in (None: none)."""
    if not head.startswith(tuple(UNREAD_COMPRESSIONS)):  # one look, for every file read
        return None
    return next(name for magic, name in UNREAD_COMPRESSIONS.items() if head.startswith(magic))


def started_as(head: bytes) -> Compression | None:
    """The compression, of those read, whose data starts as head does (None: none)."""
    if not head.startswith(MAGICS):  # one look, for every file read
        return None
    return next(c for c in COMPRESSIONS if head.startswith(c.magics))


def not_read(head: bytes, outer: Compression | None) -> str | None:
    """Why data starting with head (what outer's data decompressed to, if any) is not read: it
    is in a compression that is not read, or compressed twice (None: it is read)."""
    if unread := unread_compression(head):
        return f"{unread} data, which is not read ({READ})"
    if outer is not None and (inner := started_as(head)):
        return f"{inner.name} data inside {outer.name} data (compressed twice), which is not read"
    return None


def compression_of(name: str, head: bytes) -> Compression | None:
    """The compression a file is read through (None: it is read as it is): the one whose data
    starts as the file does, whatever its name (a log sent again compressed under its own name);
    or the one it is named for, unless it starts as JSON text does (decompressed on its way by a
    client that kept its name) or as another compression's data does (named for what it is)."""
    if started := started_as(head):
        return started
    named = named_for(name)
    if named is None or starts_as_text(head) or unread_compression(head):
        return None
    return named


def utf8_end(tail: bytes, size: int, bom: bytes) -> bytes:
    """The last bytes of text of size bytes starting with the byte-order mark bom (b"": none),
    as UTF-8, without the mark: in UTF-16 or UTF-32, from the first code unit they hold whole
    (a last one cut short is a character that is none)."""
    encoding = BYTE_ORDER_MARKS.get(bom, "UTF-8")
    start = size - len(tail)
    unit = CODE_UNIT_BYTES[encoding]
    whole = max(len(bom) - start, -(start - len(bom)) % unit)  # bytes before the first whole one
    text = tail[whole:]
    if encoding == "UTF-8":
        return text
    return (bom + text).decode(encoding, "replace").encode("utf-8")  # the mark tells the order


def ends_mid_line(tail: bytes, whole: bool) -> bool:
    """Whether text ending in tail (whole: the whole text) stops in the middle of a line, as a
    transfer cut at any byte leaves it: no newline after its last line, and that line not closed
    by "}" or "]" (blank space aside), nor, where tail holds all of it, a JSON value (a file
    now holding `null` or `3` is not cut: it is read, and says what it holds)."""
    last = tail.rstrip()
    if not last or tail.endswith(b"\n") or last[-1:] in (b"}", b"]"):
        return False
    start = last.rfind(b"\n") + 1
    if not (start or whole):
        return True  # the last line starts before tail
    try:
        orjson.loads(last[start:])
    except orjson.JSONDecodeError:
        return True
    return False


def starts_as_text(head: bytes) -> bool:
    """Whether data starts as JSON text does: "{" or "[" after blank space, or a byte-order
    mark (looked for in the first bytes only)."""
    return head[:64].lstrip()[:1] in (b"{", b"[") or bool(byte_order_mark(head))


# ================================================================ finding and planning
@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    """A data file as listed: where it is, and its version (None: it could not be looked at,
    so it is read, and says why it cannot be)."""

    location: str
    version: Version | None


@dataclasses.dataclass(frozen=True)
class Listing:
    """What is under a kind's folder (links to folders followed, each folder listed once, but
    not a link to the kind's folder or one holding it), each list sorted by path components:
    data files, folders that cannot be listed (or links that cannot be followed) with the
    reason, and the entries ignored (with a note for a folder listed already by another path,
    a link not followed, a hidden folder and a hidden data file)."""

    files: list[Listed]
    unlisted: list[tuple[str, str]]
    ignored: list[tuple[str, str]]


def find(data: str | Path, kind: Kind) -> list[str]:
    """The data files under the kind's folder of a folder or URL, sorted by path components."""
    return [file.location for file in listing(source(data), kind).files]


def texts(data: str | Path, kind: Kind) -> Iterator[tuple[str, FileRead, Iterator[bytes]]]:
    """Every data file under the kind's folder of a folder or URL, read as etl.py reads it: its
    path as the manifest names it, what opening it found (its SHA-256 among it), and its text as
    UTF-8 in line-aligned parts, which raise DamagedFile where the rest cannot be read."""
    found = source(data)
    for batch in plan(found, listing(found, kind), kind, {}).batches:
        for task, read, parts in read_batch(batch, Limits().log_batch_bytes):
            yield task.path, read, parts


def listing(data: Source, kind: Kind) -> Listing:
    """Everything under the kind's folder (nothing when it does not exist)."""
    if data.store is not None:
        return _object_listing(data.store, data.top(kind))
    top = data.top(kind)
    files, unlisted, ignored = [], [], []
    read = set()  # the folders listed, as (device, inode): each once, whatever links lead to it
    around = os.path.realpath(top)  # a link to it, or to a folder holding it, is not followed
    stack = [top] if os.path.lexists(top) else []
    while stack:  # in path order: of two ways to a folder, the first names its files
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda entry: _path_order(entry.path), reverse=True)
                found = os.stat(folder)
        except OSError as exc:
            unlisted.append((folder, f"cannot read folder: {exc.strerror}"))
            continue
        if listed and not os.access(folder, os.X_OK):  # its names read, its entries not
            unlisted.append((folder, f"cannot read folder: {os.strerror(errno.EACCES)}"))
            continue
        if (found.st_dev, found.st_ino) in read:
            ignored.append((folder, LISTED_NOTE))
            continue
        read.add((found.st_dev, found.st_ino))
        for entry in listed:
            is_folder = _is_folder(entry)
            if is_hidden(entry.name):
                ignored.append((entry.path, hidden_note(entry.name, is_folder)))
            elif is_folder and entry.is_symlink() and _holds(os.path.realpath(entry.path), around):
                ignored.append((entry.path, HOLDING_NOTE))
            elif is_folder and entry.is_symlink() and _unkeyable(relative(data, kind, entry.path)):
                ignored.append((entry.path, UNKEYED_NOTE))  # another path may reach it
            elif is_folder:  # whatever its name: Spark writes a folder x.json of part files
                stack.append(entry.path)
            elif is_data_file(entry.name):
                files.append(Listed(entry.path, _file_version(entry.path)))
            elif reason := _unfollowed(entry):  # a folder, perhaps, out of reach
                unlisted.append((entry.path, reason))
            else:
                ignored.append((entry.path, ""))
    return Listing(
        sorted(files, key=lambda f: _path_order(f.location)),
        sorted(unlisted, key=lambda u: _path_order(u[0])),
        sorted(ignored, key=lambda i: _path_order(i[0])),
    )


def _file_version(location: str) -> Version | None:
    try:
        st = os.stat(location)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, None


# s3fs reads what follows this in a key as the version of the object the key's start names: such
# a key would read another object.
VERSION_MARK = "?versionId="
VERSION_NOTE = (
    f" (a key holding {VERSION_MARK}, which the store library reads as a version: not read)"
)
# A key's folder named . or .. is no folder a path can name: a path would name another one.
DOTS_NOTE = " (a key holding a folder named . or .., which a path reads as another: not read)"


def etag_of(info: dict) -> str:
    """An object's ETag as the store's library gives it (S3's ETag, a blob store's etag)."""
    return info.get("ETag") or info.get("etag") or ""


def _object_listing(store: Store, top: str) -> Listing:
    """The objects under the prefix top (its listing paged by the store), with the size and
    ETag it gives for each, also where the prefix starts with "/" (s3://bucket//feed, as
    `aws s3 cp f s3://bucket//feed/f` writes keys). Empty keys ending in / are folder markers,
    not entries."""
    bucket, _, key = top.partition("://")[2].partition("/")
    try:
        if key.startswith("/") and store.scheme == "s3":  # s3fs drops a path's leading "/"
            found = store.filesystem().find(bucket, detail=True, prefix=f"{key}/")
        else:
            found = store.filesystem().find(top, detail=True)
    except Exception as exc:
        raise StoreError(f"cannot list {top}: {store_reason(exc)}") from None
    files, ignored = [], []
    for name, info in found.items():
        url = store.url(name)
        if not url.startswith(top + "/") or (url.endswith("/") and not info["size"]):
            continue
        *folders, base = url.removeprefix(top + "/").split("/")
        if url.endswith("/"):
            ignored.append((url, " (a key ending in /, which stores read as a folder: not read)"))
        elif VERSION_MARK in url.removeprefix(top):
            ignored.append((url, VERSION_NOTE))
        elif {".", ".."}.intersection(folders):
            ignored.append((url, DOTS_NOTE))
        elif any(map(is_hidden, [*folders, base])):
            ignored.append((url, hidden_note(base, False)))
        elif is_data_file(base):
            files.append(Listed(url, (info["size"], 0, etag_of(info))))
        else:
            ignored.append((url, ""))
    return Listing(
        sorted(files, key=lambda f: _path_order(f.location)),
        [],
        sorted(ignored, key=lambda i: _path_order(i[0])),
    )


LISTED_NOTE = " (a folder listed already by another path: not listed again)"
HOLDING_NOTE = " (a link to a folder holding this kind's folder: not followed)"


def _holds(folder: str, path: str) -> bool:
    """Whether path is folder or inside it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _unfollowed(entry: os.DirEntry) -> str | None:
    """Why a link cannot be followed (it leads nowhere, round in a loop, or where this user may
    not look), or None: a link to a folder unmounted or locked away says so, not ignored."""
    if not entry.is_symlink():
        return None
    try:
        os.stat(entry.path)
    except OSError as exc:
        return f"cannot follow the link: {exc.strerror}"
    return None


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether the entry is a folder, or a link to one (a link leading round in a loop of links
    is not: it is named as a file, and rejected if named as a data file)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _path_order(location: str) -> str:
    """The order files are listed and loaded in: by the components of their paths as the
    manifest writes them (path_text), by code point, as sql_queries.FILE_ORDER ranks a play's
    copies, whatever characters the names hold. The separators become NUL, which sorts before
    any character a name holds: compared whole, the texts then compare component by component.
    Sorting 200,000 paths that way took 0.13 s against 0.87 to 1.04 s for lists of components,
    and a re-run over 200,000 song files 2.10 to 2.19 s against 2.32 to 2.49 s (in turn)."""
    return path_text(location).replace("/" if "://" in location else os.sep, "\0")


# The manifest keys a file by its path (and a file's or a folder's rejects are indexed by it): a
# longer path could be neither recorded nor rejected.
UNKEYED_NOTE = f" (a path longer than {KEY_BYTES:,} bytes, which the manifest cannot key: not read)"


def _unkeyable(path: str) -> bool:
    return len(path.encode()) > KEY_BYTES


def plan(
    data: Source,
    listed: Listing,
    kind: Kind,
    known: dict[str, Known],
    limits: Limits = Limits(),
) -> Plan:
    """The listing's files cut into batches: those the manifest knows at the same version, and
    not damaged, are left out. A log batch stays under limits.log_batch_bytes unless one file
    alone is bigger, which then makes a batch of its own, read in parts; a song batch under
    limits.song_batch_files and limits.song_batch_bytes (a bigger file: a batch of its own)."""
    tasks, unchanged, here, unkeyed = [], 0, set(), []
    for file in listed.files:
        rel = relative(data, kind, file.location)
        if _unkeyable(rel):
            unkeyed.append(rel + UNKEYED_NOTE)
            continue
        here.add(rel)
        seen = known.get(rel)
        if file.version and seen and seen.version == file.version and not seen.damaged:
            unchanged += 1
            continue
        size, mtime_ns, etag = file.version or (0, 0, None)
        tasks.append(
            FileTask(
                rel,
                file.location,
                size,
                mtime_ns,
                seen.sha256 if seen else None,
                etag=etag,
                known_usable=bool(seen and seen.usable),
                known_damaged=bool(seen and seen.damaged),
                known_size=seen.version[0] if seen else 0,
            )
        )
    for location, problem in listed.unlisted:  # a folder's problem is recorded by its path too
        rel = relative(data, kind, location)
        if _unkeyable(rel):
            unkeyed.append(rel + UNKEYED_NOTE)
        else:
            tasks.append(FileTask(rel, location, 0, 0, None, problem))
    most_bytes = limits.song_batch_bytes if kind == "song" else limits.log_batch_bytes
    most_files = limits.song_batch_files if kind == "song" else len(tasks)
    batches, current, size = [], [], 0
    for task in tasks:
        if current and (len(current) >= most_files or size + task.size > most_bytes):
            batches.append(Batch(kind, tuple(current), data.store))
            current, size = [], 0
        current.append(task)
        size += task.size
    if current:
        batches.append(Batch(kind, tuple(current), data.store))
    ignored = [relative(data, kind, location) + note for location, note in listed.ignored]
    ignored += unkeyed
    return Plan(batches, unchanged, ignored, _gone(data, listed, kind, known, here))


def _gone(data: Source, listed: Listing, kind: Kind, known, here: set[str]) -> list[str]:
    """The manifest's files under this folder (or prefix) that the listing no longer has (here:
    the paths it has), the most recently loaded first (a file deleted by mistake before those
    rotated away long ago), then in path order; those under a folder that cannot be listed are
    not known to be gone."""
    top = paths_under(data, kind)
    unlisted = [relative(data, kind, location) + "/" for location, _ in listed.unlisted]
    return sorted(
        (
            path
            for path in known
            if path.startswith(top)
            and path not in here
            and not any(path.startswith(folder) for folder in unlisted)
        ),
        key=lambda path: (-known[path].run_id, _path_order(path)),
    )


def paths_under(data: Source, kind: Kind) -> str:
    """How the manifest's paths of the kind's files start: its folder's path (URL), then /."""
    return relative(data, kind, data.top(kind)) + "/"


def relative(data: Source, kind: Kind, location: str) -> str:
    """The path the manifest names a file by, as path_text writes it: for a file, its path
    under the data folder (found under the kind's folder); for an object, its full URL."""
    if data.store is not None:
        return path_text(location)
    folder = data.top(kind)
    inside = location[len(folder) + 1 :].replace(os.sep, "/")
    return path_text(f"{FOLDERS[kind]}/{inside}" if inside else FOLDERS[kind])


# ================================================================ reading


class ChangedWhileRead(cli.UserError):
    """A file written over in place while it was read (cp over it, a truncate): the bytes read
    are not the version hashed, whose hash the manifest would keep. The run stops there, as for
    an object replaced while it was read, and what it committed stays."""


class DamagedFile(Exception):
    """The rest of a file cannot be read (damaged compressed data, a failing disk); what came before
    it was read. intact: how many bytes of content before the damage can be trusted."""

    def __init__(self, reason: str, intact: int = 0):
        super().__init__(reason)
        self.intact = intact


def read_batch(
    batch: Batch, part_bytes: int
) -> Iterator[tuple[FileTask, FileRead, Iterator[bytes]]]:
    """Each of the batch's files read (read_file; a song file is cut into parts only where it
    holds one song a line), in order. From an object store, the objects no bigger than
    part_bytes (a song batch's small ones, a log batch's: together no bigger than the batch)
    are fetched first, concurrently; a bigger one is streamed in blocks."""
    fetched = (
        {}
        if batch.store is None
        else _fetch(batch.store, [t for t in batch.tasks if not t.problem and t.size <= part_bytes])
    )
    songs = batch.kind == "song"
    for task in batch.tasks:
        if task.problem:  # found as it was listed
            yield task, FileRead("unreadable", task.size, error=task.problem), iter(())
        elif batch.store is None:
            yield task, *read_file(task, part_bytes, songs)
        else:
            fetch = fetched.get(task.location)
            yield task, *_read_object(batch.store, task, part_bytes, fetch, songs)


def read_file(
    task: FileTask, part_bytes: int, songs: bool = False
) -> tuple[FileRead, Iterator[bytes]]:
    """The file's content as UTF-8, in line-aligned parts of about part_bytes (a song file's:
    _text_parts), unless it cannot be read or its content is what the manifest has. Only what
    the file held when it was opened is hashed and read: a file that grows meanwhile is read
    again by the next run. A file bigger than part_bytes is hashed in a first pass, so that its
    parts are read one at a time and never held together; compressed data is checked in that
    pass too, and decompressed a block at a time, whatever its size. The parts raise
    DamagedFile where the rest of the file cannot be read."""
    try:
        handle, size = open_regular(task.location)
    except OSError as exc:
        return _unreadable(task, exc), iter(())
    return _read(task, handle, size, part_bytes, songs, task.etag)


def _read(
    task: FileTask, handle, size: int, part_bytes: int, songs: bool, etag: str | None
) -> tuple[FileRead, Iterator[bytes]]:
    """read_file's passes over an open file (or object) of size bytes; etag: the object's as
    it was read, which the manifest keeps with the bytes' hash."""
    try:
        seen = _first_pass(handle, task.location, size, part_bytes)
    except OSError as exc:
        handle.close()
        return _unreadable(task, exc), iter(())
    whole = seen.size == len(seen.first)
    if whole or seen.sha256 == task.known_sha256:
        handle.close()
    if seen.sha256 == task.known_sha256:
        return FileRead("unchanged", seen.size, seen.sha256, etag=etag), iter(())
    blocks = iter([seen.first]) if whole else _blocks(handle, seen, task.location)
    head = seen.content.head
    if seen.compression is not None:
        blocks = _trusted(_decompressed(blocks, seen.compression), seen.content.damage)
    damaged = seen.content.damage is not None
    if reason := not_read(head, seen.compression):
        handle.close()
        blocks, damaged = _trusted(iter(()), DamagedFile(reason)), True
    bom = byte_order_mark(head)
    encoding = BYTE_ORDER_MARKS.get(bom, "UTF-8")
    return (
        FileRead(
            "new" if task.known_sha256 is None else "changed",
            seen.size,
            seen.sha256,
            encoding=encoding,
            etag=etag,
            damaged=damaged,
            ends_mid_line=ends_mid_line(
                utf8_end(seen.content.tail, seen.content.size, bom),
                whole=seen.content.size <= len(seen.content.tail),
            ),
        ),
        _text_parts(_as_utf8(blocks, bom), part_bytes, songs),
    )


def _unreadable(task: FileTask, exc: OSError) -> FileRead:
    reason = exc.strerror or cli.first_line(exc)
    return FileRead("unreadable", task.size, error=f"cannot read file: {reason}")


# ---------------------------------------------------------------- objects


class Fetched(NamedTuple):
    """An object's bytes as fetched, and the ETag of the version they are (None where the store
    does not say: the ETag listed stands)."""

    content: bytes
    etag: str | None = None


def _fetch(store: Store, tasks: list[FileTask]) -> dict[str, Fetched | OSError | None]:
    """The objects' bytes, FETCHES_AT_ONCE requests at a time: each object whole, or, if it is
    now bigger than listed (replaced since: a store replaces an object whole, it never grows),
    one byte more than listed, for _read_object to stream it instead (None too: an S3 object
    emptied since); an object that is its own problem (store_failure: deleted since it was
    listed, archived) gives its OSError. The
    manifest keeps an object's ETag beside the hash of its bytes, so both must be of the same
    version: on S3 the ETag comes with the bytes (an object listed, replaced by one of the same
    size, read, then put back would otherwise look unchanged for good)."""
    from fsspec.asyn import sync

    fs = store.filesystem()

    async def fetch_one(task: FileTask, gate: asyncio.Semaphore) -> Fetched | OSError | None:
        if task.size == 0:
            return Fetched(b"")
        async with gate:
            try:
                if store.scheme == "s3":
                    return await _get_with_etag(fs, task.location, task.size + 1)
                return Fetched(await fs._cat_file(task.location, start=0, end=task.size + 1))
            except Exception as exc:
                failure = store_failure(exc, task.location)
                if isinstance(failure, OSError):
                    return failure
                raise failure from None

    async def fetch_all() -> list[Fetched | OSError | None]:
        gate = asyncio.Semaphore(FETCHES_AT_ONCE)
        return await asyncio.gather(*(fetch_one(task, gate) for task in tasks))

    return dict(zip((t.location for t in tasks), sync(fs.loop, fetch_all)))


async def _get_with_etag(fs, url: str, most: int) -> Fetched | None:
    """An S3 object's first `most` bytes and the ETag of the version they are, the request and
    the reading of its body tried again together as s3fs tries a request (its _cat_file keeps
    no ETag); None for an object emptied since it was listed (no range of it can be given),
    which _read_object then opens as it is."""
    from s3fs.core import _error_wrapper

    bucket, key, _ = fs.split_path(url)
    await fs.set_session()
    client = await fs.get_s3(bucket)
    asked = fs._get_s3_method_kwargs(
        client.get_object, Bucket=bucket, Key=key, Range=f"bytes=0-{most - 1}"
    )

    async def get_and_read() -> Fetched:
        response = await client.get_object(**asked)
        try:
            return Fetched(await response["Body"].read(), etag_of(response) or None)
        finally:
            response["Body"].close()

    try:
        return await _error_wrapper(get_and_read, retries=fs.retries)
    except OSError as exc:
        if _store_code(exc) == "InvalidRange":
            return None
        raise


def _store_code(exc: Exception) -> str | None:
    """The store's error code (S3's), where the store library kept its response."""
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code")


def _read_object(
    store: Store,
    task: FileTask,
    part_bytes: int,
    fetched: Fetched | OSError | None,
    songs: bool,
) -> tuple[FileRead, Iterator[bytes]]:
    """read_file for an object: fetched already, or else (big, or replaced by a bigger one since
    it was listed) opened and streamed, as it is when opened."""
    if isinstance(fetched, OSError):
        return _unreadable(task, fetched), iter(())
    if fetched is not None and len(fetched.content) <= task.size:
        content, etag = fetched.content, fetched.etag or task.etag
        return _read(task, io.BytesIO(content), len(content), part_bytes, songs, etag)
    try:
        handle = ObjectStream(store, task.location)
    except OSError as exc:  # store_failure's: the object's own problem
        return _unreadable(task, exc), iter(())
    return _read(task, handle, handle.size, part_bytes, songs, handle.etag)


class ObjectStream:
    """An object opened for reading in blocks of OBJECT_BLOCK bytes, as a file is read; the
    store's errors as store_failure makes them."""

    def __init__(self, store: Store, url: str):
        self.url = url
        try:
            self.handle = store.filesystem().open(url, "rb", block_size=OBJECT_BLOCK)
        except Exception as exc:
            raise store_failure(exc, url) from None
        self.size = self.handle.size
        # the version opened, which every block is read from (s3fs asks for it by its ETag)
        self.etag = etag_of(self.handle.details)

    def read(self, size: int) -> bytes:
        try:
            return self.handle.read(size)
        except Exception as exc:
            raise store_failure(exc, self.url) from None

    def seek(self, offset: int) -> None:
        self.handle.seek(offset)

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- files on disk


def open_regular(location: str) -> tuple[io.FileIO, int]:
    """The file opened for reading (unbuffered: it is read in large blocks, or at once), and its
    size, if it is a regular file (or a link to one). Nothing else is opened: opening a FIFO
    waits for a writer, and opening a device can act on it. It is opened without waiting, and
    checked again once open, in case it was replaced in between."""
    kind = _not_regular(os.stat(location).st_mode)
    if kind is None:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        handle = io.FileIO(os.open(location, flags), "rb")
        opened = os.fstat(handle.fileno())
        kind = _not_regular(opened.st_mode)
        if kind is None:
            return handle, opened.st_size
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


# ---------------------------------------------------------------- the passes over a file or object


class Content(NamedTuple):
    """A file's text as read through once (decompressed, where compressed): its first bytes, its
    last TAIL_BYTES, its size, and the damage met reading it (None when it is intact: else what
    came before it)."""

    head: bytes
    tail: bytes
    size: int
    damage: DamagedFile | None


@dataclasses.dataclass(frozen=True)
class FirstPass:
    """What reading a file through once found: the SHA-256 and size of what it held as it was
    opened (not what it grew to after), its first block (all of it when it is no bigger than
    part_bytes, read at once), the compression it is read through (compression_of), and its
    content: the file's own bytes, or what its compressed data decompresses to."""

    sha256: str
    size: int
    first: bytes
    compression: Compression | None
    content: Content


def _first_pass(handle, location: str, size: int, part_bytes: int) -> FirstPass:
    hashing = Hashing(handle, size, size if size <= part_bytes else BLOCK)
    blocks = iter(hashing)
    head = next(blocks, b"")
    compression = compression_of(location, head)
    blocks = itertools.chain([head], blocks)
    content = None if compression is None else _checked(blocks, compression)
    for _ in blocks:  # what decompressing left unread is hashed too
        pass
    if content is None:
        content = Content(hashing.first, hashing.tail, hashing.read, None)
    return FirstPass(hashing.digest.hexdigest(), hashing.read, hashing.first, compression, content)


TAIL_BYTES = 64  # enough to see how text ends, blank space and all (ends_mid_line)


def ending(tail: bytes, block: bytes) -> bytes:
    """The last TAIL_BYTES of what ended in tail, once block follows it."""
    return (tail + block[-TAIL_BYTES:])[-TAIL_BYTES:]


class Hashing:
    """A file's first size bytes, block_size at a time, hashed as they are read: once read
    through, digest, read (bytes), first (block) and tail (its last TAIL_BYTES) say what was
    read."""

    def __init__(self, handle, size: int, block_size: int):
        self.handle, self.size, self.block_size = handle, size, block_size
        self.digest, self.read, self.first, self.tail = hashlib.sha256(), 0, b"", b""

    def __iter__(self) -> Iterator[bytes]:
        while self.read < self.size:
            block = self.handle.read(min(self.block_size, self.size - self.read))
            if not block:
                return
            self.digest.update(block)
            self.first = self.first or block
            self.tail = ending(self.tail, block)
            self.read += len(block)
            yield block


def _blocks(handle, seen: FirstPass, location: str) -> Iterator[bytes]:
    """The bytes the first pass hashed, a block at a time, read again from the file's start;
    the file is closed after. Bytes other than those (fewer, or others) raise ChangedWhileRead
    once read."""
    hashing = Hashing(handle, seen.size, BLOCK)
    with handle:
        handle.seek(0)
        try:
            yield from hashing
        except OSError as exc:
            reason = exc.strerror or cli.first_line(exc)
            raise DamagedFile(f"cannot read the rest of the file: {reason}") from exc
    if hashing.read < seen.size or hashing.digest.hexdigest() != seen.sha256:
        raise ChangedWhileRead(
            f"cannot read {path_text(location)}: it changed while it was read (written over in "
            "place); run again to read it as it is now"
        )


# ---------------------------------------------------------------- compressed data


class Decompressor(Protocol):
    """What decompresses one stream (a gzip member, a bzip2 or xz stream, a zstd frame, a file
    of a zip archive or its directory): bz2's, lzma's and zstd's decompressors have this
    interface; _Gunzipper gives zlib's it, _Unzipper a zip archive's."""

    eof: bool
    unused_data: bytes
    needs_input: bool

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Compression:
    """A compression data files are read through: its name, what a file of it is named, the
    bytes its data starts with (any of magics, none of which JSON text starts with), what
    decompresses a stream of it, and what its decompressor says of data that is not damaged,
    but needs more than it is given here (its words, and what the data needs)."""

    name: str
    suffix: str
    magics: tuple[bytes, ...]
    decompressor: Callable[[], Decompressor]
    needs: tuple[tuple[str, str], ...] = ()
    # What decompresses the stream after one, and whether one must follow (None: as the first)
    following: Callable[[Decompressor], tuple[Decompressor, bool]] | None = None
    # Whether a stream cut short is read up to where it ends; False: only the streams before it,
    # checked whole (a zip archive's file: its sizes may be damaged rather than cut).
    reads_cut: bool = True

    def after(self, stream: Decompressor) -> tuple[Decompressor, bool]:
        """What decompresses the stream after this one, and whether one must follow (an
        archive's file: its directory is still to come)."""
        return (self.decompressor(), False) if self.following is None else self.following(stream)

    def failure(self, exc: Exception) -> str:
        """The reason a reject gives for data its decompressor could not decompress."""
        said = str(exc)
        need = next((need for words, need in self.needs if words in said), None)
        if need is None:
            return f"damaged {self.name} data ({said})"
        return f"{self.name} data needing {need}, which is not read ({said})"


GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for the gzip format
HEAD_BYTES = 16  # of content: enough for a byte-order mark, or another compression's magic


class _Gunzipper:
    """zlib's decompressor of a gzip member, with the interface bz2's and lzma's have: input it
    could not take yet is kept, and given to it first at the next call."""

    def __init__(self):
        self._inflater, self._tail = zlib.decompressobj(GZIP), b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._inflater.decompress(self._tail + data, max_length)
        self._tail = self._inflater.unconsumed_tail
        return out

    @property
    def eof(self) -> bool:
        return self._inflater.eof

    @property
    def unused_data(self) -> bytes:
        return self._inflater.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._tail


# A zip archive: its files, each a header, its data and its check (perhaps after its data: the
# descriptor), then its directory, ending in the end record (and a comment).
ZIP_FILE, ZIP_DESCRIPTOR, ZIP_END = b"PK\x03\x04", b"PK\x07\x08", b"PK\x05\x06"
ZIP_SPLIT = (ZIP_DESCRIPTOR, b"PK00")  # what zip -s starts an archive with
ZIP_LISTED = b"PK\x01\x02"  # a file's entry in the directory
# The directory's other records: their fixed size, and where the lengths that follow it are.
ZIP_DIRECTORY = {ZIP_LISTED: (46, (28, 30, 32)), b"PK\x06\x07": (20, ())}
ZIP64_END = b"PK\x06\x06"  # its size follows its signature
ZIP_STORED, ZIP_DEFLATED = 0, 8
ZIP_METHODS = {12: "bzip2", 14: "lzma", 93: "zstd", 9: "deflate64", 98: "PPMd", 99: "AES"}
ZIP_ENCRYPTED, ZIP_SIZES_AFTER, ZIP_UTF8 = 0x1, 0x8, 0x800  # a file header's flags
ZIP_INFLATED_AT_ONCE = 1 << 16  # bytes given zlib at a time: what it leaves over is copied
ZIP_NEEDS = (
    ("is encrypted", "a password"),
    ("is compressed with", "a compression other than deflate"),
    ("is stored with its size after", "the size of a file stored ahead of its data"),
    ("compressed twice", "files that are not compressed again"),
)
# A newline in each encoding a byte-order mark names (none: UTF-8), longest mark first.
NEWLINES = {
    codecs.BOM_UTF32_LE: b"\n\0\0\0",
    codecs.BOM_UTF32_BE: b"\0\0\0\n",
    codecs.BOM_UTF8: b"\n",
    codecs.BOM_UTF16_LE: b"\n\0",
    codecs.BOM_UTF16_BE: b"\0\n",
}


class ZipDataError(ValueError):
    """zip data that is not what a zip archive holds, or that is not read."""


class _ZipFile(NamedTuple):
    """What a zip file's header says: its name, flags and CRC-32 (0 where it comes after its
    data), whether its content is given (not a folder's, not a hidden file's), and whether it
    has zip64's sizes (8 bytes each in a descriptor)."""

    name: str
    flags: int
    crc: int
    given: bool
    zip64: bool


@dataclasses.dataclass(frozen=True)
class _Archive:
    """What an archive's files before a stream gave: how many were read, whether their text
    ends a line, and the byte-order mark of the first content (b"": none) and a newline in its
    encoding (None until content comes)."""

    files: int = 0
    line_open: bool = False
    mark: bytes = b""
    newline: bytes | None = None


class _Unzipper:
    """One file of a zip archive (its header, its data and its check), or the archive's
    directory: a stream of its own, as a gzip member is, so that an archive reads as its files'
    contents one after the other, and damage to one leaves those before it read. Each file's
    text starts a line where the one before does not end one, in the encoding of the first
    (whose byte-order mark the others' then drop). Folders and hidden files (macOS's __MACOSX/
    and ._ copies) give nothing. Input is held as a view, so that an archive of many files is
    never copied once a file."""

    def __init__(self, before: _Archive = _Archive()):
        self.eof, self.unused_data = False, b""
        self._input, self._stalled = memoryview(b""), True
        self._before = before
        self._file: _ZipFile | None = None
        self._directory, self._listed = False, 0  # the directory, and the files it lists
        self._inflater = None  # a deflated file's
        self._left = 0  # bytes of a stored file still to come
        self._crc, self._given = 0, False  # the file's CRC-32 so far, and whether it gave any
        self._line_open = before.line_open

    @staticmethod
    def following(stream: _Unzipper) -> tuple[_Unzipper, bool]:
        """The next file's stream, which must come (the directory is still to come), or after a
        directory the next archive's (cat a.zip b.zip), which need not."""
        if stream._directory:
            return _Unzipper(), False
        archive = dataclasses.replace(
            stream._before, files=stream._before.files + 1, line_open=stream._line_open
        )
        return _Unzipper(archive), True

    @property
    def needs_input(self) -> bool:
        return self._stalled

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:
            self._input = memoryview(bytes(self._input) + data if self._input else data)
        out, size = [], 0
        while not self.eof and size < max_length:
            step = self._step(max_length - size)
            if step is None:  # more input needed
                self._stalled = True
                break
            out.append(step)
            size += len(step)
        else:
            self._stalled = False
        return b"".join(out)

    def _step(self, room: int) -> bytes | None:
        if self._directory:
            return self._directory_record()
        if self._file is None:
            return self._header()
        if self._inflater.eof if self._inflater is not None else self._left == 0:
            return self._checked()
        return self._data(room)

    def _header(self) -> bytes | None:
        signature = bytes(self._input[:4])
        if len(signature) < 4:
            return None
        if signature in ZIP_SPLIT and not self._before.files:
            self._input = self._input[4:]
            return b""
        if signature in (ZIP_END, ZIP64_END, *ZIP_DIRECTORY):
            self._directory = True
            return b""
        if signature != ZIP_FILE:
            raise ZipDataError("no file header where one should be")
        if len(self._input) < 30:
            return None
        flags, method, crc, packed, size, name_bytes, extra_bytes = struct.unpack(
            "<2xHH4xIIIHH", self._input[4:30]
        )
        end = 30 + name_bytes + extra_bytes
        if len(self._input) < end:
            return None
        name = bytes(self._input[30 : 30 + name_bytes]).decode(
            "utf-8" if flags & ZIP_UTF8 else "cp437", "replace"
        )
        extra = dict(_zip_extra_fields(bytes(self._input[30 + name_bytes : end])))
        zip64 = 1 in extra
        if flags & ZIP_ENCRYPTED:
            raise ZipDataError(f"{name} is encrypted")
        if method == ZIP_STORED and flags & ZIP_SIZES_AFTER:
            # zip to a pipe writes an empty file (a folder too) so: its descriptor next
            descriptor = 24 if zip64 else 16
            if len(self._input) < end + descriptor:
                return None
            after = self._input[end : end + descriptor]
            if after[:4] != ZIP_DESCRIPTOR or any(after[4:]):
                raise ZipDataError(f"{name} is stored with its size after its data")
        elif method == ZIP_STORED:
            self._left = _zip64_packed(name, extra.get(1, b""), size, packed)
        elif method != ZIP_DEFLATED:
            raise ZipDataError(f"{name} is compressed with {ZIP_METHODS.get(method, method)}")
        self._input = self._input[end:]
        if method == ZIP_DEFLATED:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        parts = name.split("/")
        hidden = any(is_hidden(part) and part not in (".", "..") for part in parts)
        given = not name.endswith("/") and not hidden and "__MACOSX" not in parts
        self._file = _ZipFile(name, flags, crc, given, zip64)
        return b""

    def _data(self, room: int) -> bytes | None:
        """What the file's data gives next (the inflater may hold more than its input)."""
        if (inflater := self._inflater) is not None:
            given = self._input[:ZIP_INFLATED_AT_ONCE]
            out = inflater.decompress(given, room)
            # at its end, unconsumed_tail may hold unused_data too
            left = len(inflater.unused_data if inflater.eof else inflater.unconsumed_tail)
            self._input = self._input[len(given) - left :]
            if not out and not inflater.eof:
                return None if not self._input else b""
        else:
            out = bytes(self._input[: min(room, self._left)])
            self._input, self._left = self._input[len(out) :], self._left - len(out)
            if not out:
                return None
        self._crc = zlib.crc32(out, self._crc)
        if not out or not self._file.given:
            return b""
        return self._text(out)

    def _text(self, out: bytes) -> bytes:
        """The file's content as the archive's text: a line started, and the first's
        byte-order mark dropped, at its start."""
        start = b""
        if not self._given:
            self._given = True
            if self._before.newline is None:  # the archive's first content
                mark = byte_order_mark(out)
                self._before = dataclasses.replace(
                    self._before, mark=mark, newline=NEWLINES.get(mark, b"\n")
                )
            elif unread_compression(out) or started_as(out):
                raise ZipDataError(f"{self._file.name} holds data compressed twice")
            else:  # UTF-8 unless the first said otherwise
                out = out.removeprefix(self._before.mark or codecs.BOM_UTF8)
            start = self._before.newline if self._line_open else b""
        self._line_open = not out.endswith(self._before.newline)
        return start + out

    def _checked(self) -> bytes | None:
        """The file's end: its check, after its data where the header has none (a descriptor:
        perhaps a signature, the CRC-32, then its sizes, of 4 or 8 bytes each with zip64)."""
        name, flags, crc, _, zip64 = self._file
        if flags & ZIP_SIZES_AFTER:
            if len(self._input) < 4:
                return None
            start = 4 if self._input[:4] == ZIP_DESCRIPTOR else 0
            end = start + (20 if zip64 else 12)
            if len(self._input) < end:
                return None
            (crc,) = struct.unpack("<I", self._input[start : start + 4])
            self._input = self._input[end:]
        if crc != self._crc:
            raise ZipDataError(f"{name}: its CRC-32 does not match")
        self.eof, self.unused_data = True, self._input
        return b""

    def _directory_record(self) -> bytes | None:
        """One record of the directory read past; the end record ends the archive, which must
        have listed as many files as were read (a header's damaged name length can hide one)."""
        signature = bytes(self._input[:4])
        if signature == ZIP_END:
            comment = struct.unpack("<H", self._input[20:22])[0] if len(self._input) >= 22 else 0
            if len(self._input) < 22 + comment:
                return None
            if self._listed != self._before.files:
                raise ZipDataError(
                    f"its directory lists {self._listed} files, not {self._before.files}"
                )
            self.eof, self.unused_data = True, bytes(self._input[22 + comment :])
            return b""
        if signature == ZIP64_END:
            size = 12 + struct.unpack("<Q", self._input[4:12])[0] if len(self._input) >= 12 else 12
        elif signature in ZIP_DIRECTORY:
            fixed, lengths = ZIP_DIRECTORY[signature]
            if len(self._input) < fixed:
                return None
            size = fixed + sum(struct.unpack("<H", self._input[n : n + 2])[0] for n in lengths)
        elif len(signature) < 4:
            return None
        else:
            raise ZipDataError("no directory record where one should be")
        if len(self._input) < size:
            return None
        self._input, self._listed = self._input[size:], self._listed + (signature == ZIP_LISTED)
        return b""


def _zip_extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    """A zip header's extra fields: (tag, data)."""
    while len(extra) >= 4:
        tag, size = struct.unpack("<HH", extra[:4])
        yield tag, extra[4 : 4 + size]
        extra = extra[4 + size :]


def _zip64_packed(name: str, zip64: bytes, size: int, packed: int) -> int:
    """A stored file's size where zip64's extra field holds it (the header's says 0xFFFFFFFF)."""
    if packed != 0xFFFFFFFF:
        return packed
    values = [int.from_bytes(zip64[n : n + 8], "little") for n in range(0, len(zip64) - 7, 8)]
    if size == 0xFFFFFFFF:  # the field gives the size first, then the packed size
        values = values[1:]
    if not values:
        raise ZipDataError(f"{name}: its size is marked as zip64's but no zip64 field holds it")
    return values[0]


# xz's decoder takes what the data's dictionary asks for, up to 4 GiB: a file asking for more than
# this is named, not read (xz -9 asks for 65 MiB).
XZ_MEMORY = 256 << 20
XZ_NEEDS = (("Memory usage limit", "more than 256 MiB of memory (a dictionary above xz -9's)"),)

# A zstd file starts with a frame, or a skippable frame (as pzstd writes first): 16 magics.
ZSTD_MAGICS = (b"\x28\xb5\x2f\xfd", *(bytes([n, 0x2A, 0x4D, 0x18]) for n in range(0x50, 0x60)))
ZSTD_NEEDS = (
    # zstd --long=28 and above, writing to a pipe, asks for more than the zstd tool reads too
    ("too much memory", "a window above 128 MiB (zstd --long)"),
    ("Dictionary mismatch", "a dictionary (zstd -D)"),
)

COMPRESSIONS = (
    Compression("gzip", ".gz", (b"\x1f\x8b",), _Gunzipper),
    Compression("bzip2", ".bz2", (b"BZh",), bz2.BZ2Decompressor),
    # .xz, or the legacy .lzma format so named (known by its name alone)
    Compression(
        "xz", ".xz", (b"\xfd7zXZ\x00",), lambda: lzma.LZMADecompressor(memlimit=XZ_MEMORY), XZ_NEEDS
    ),
    Compression("zstd", ".zst", ZSTD_MAGICS, zstd.ZstdDecompressor, ZSTD_NEEDS),
    Compression(
        "zip", ".zip", (ZIP_FILE, ZIP_END), _Unzipper, ZIP_NEEDS, _Unzipper.following, False
    ),
)
BY_SUFFIX = {c.suffix: c for c in COMPRESSIONS}
MAGICS = tuple(magic for c in COMPRESSIONS for magic in c.magics)
READ = ", ".join(c.name for c in COMPRESSIONS[:-1]) + f" and {COMPRESSIONS[-1].name} are"
# What each decompressor raises on data it cannot read (bz2's: OSError).
DECOMPRESSION_ERRORS = (zlib.error, OSError, lzma.LZMAError, zstd.ZstdError, ZipDataError)


def _decompressed(blocks: Iterator[bytes], compression: Compression) -> Iterator[bytes]:
    """Compressed data decompressed a block at a time, however much it expands: one stream or
    several (as `cat a.gz b.gz` makes them), with zero bytes between them skipped (as gzip does,
    and xz pads streams). Damage, or an end cut short, raises DamagedFile after what came
    before it."""
    stream, begun, after_stream = compression.decompressor(), False, False
    total = intact = 0  # bytes out; up to the end of the last stream, whose check passed

    def decompressed(data: bytes) -> bytes:
        try:
            return stream.decompress(data, BLOCK)
        except DECOMPRESSION_ERRORS as exc:
            for _ in blocks:  # data changed since it was checked says so (_blocks) at its end
                pass
            raise DamagedFile(compression.failure(exc), intact) from exc

    for pending in blocks:
        while pending or not stream.needs_input:
            if after_stream and not begun:
                pending = pending.lstrip(b"\0")
                if not pending:
                    break
            out, pending = decompressed(pending), b""
            begun, total = True, total + len(out)
            if out:
                yield out
            if stream.eof:
                pending, after_stream, intact = stream.unused_data, True, total
                stream, begun = compression.after(stream)
    while begun and not stream.eof and (out := decompressed(b"")):
        total += len(out)
        yield out  # what the last block decompressed to beyond the last BLOCK returned
    if begun and not stream.eof:
        raise DamagedFile(
            f"{compression.name} data cut short", total if compression.reads_cut else intact
        )


def _checked(blocks: Iterator[bytes], compression: Compression) -> Content:
    """Compressed data decompressed through: its content's first HEAD_BYTES (from its first
    stream that holds any: an empty one may come first, pzstd's skippable frame, `gzip
    </dev/null`), and the damage it meets."""
    head, tail, size = b"", b"", 0
    try:
        for block in _decompressed(blocks, compression):
            if len(head) < HEAD_BYTES:
                head += block[: HEAD_BYTES - len(head)]
            tail = ending(tail, block)
            size += len(block)
    except DamagedFile as damage:
        return Content(head, tail, size, damage)
    return Content(head, tail, size, None)


def _trusted(content: Iterator[bytes], damage: DamagedFile | None) -> Iterator[bytes]:
    """Decompressed content as far as it can be trusted, then its damage. gzip checks a
    member's content only at its end (bzip2 and xz at the end of each of their blocks, zstd at
    a frame's end where its writer added a checksum, as the zstd tool does): content
    of a damaged stream may be wrong before the damage shows, and is not read; content before an
    end cut short is."""
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
CODE_UNIT_BYTES = {"UTF-8": 1, "UTF-16": 2, "UTF-32": 4}


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


class Overlong(bytes):
    """Where a part would hold a line longer than limit bytes: the line's first bytes
    (OVERLONG_HEAD) and a newline (one line), the rest of it never held. prepare.read_chunk rejects
    it."""

    limit: int


OVERLONG_HEAD = RAW_TEXT_BYTES  # bytes of an overlong line kept: what its reject's raw can show
# A line this long is read whatever the part size (--batch-mb's smallest is 1 MB): parts smaller
# than their lines cut the text as usual.
LONGEST_LINE_FLOOR = 1 << 20


def overlong(head: bytes, limit: int) -> Overlong:
    line = Overlong(head + b"\n")
    line.limit = limit
    return line


WHOLE = 1 << 62  # a part size no text reaches: the text comes in one part
JSON_SPACE = b" \t\n\r"  # JSON's blank space


def _text_parts(text: Iterator[bytes], part_bytes: int, songs: bool) -> Iterator[bytes]:
    """The text in line-aligned parts (_line_parts). A song file's text bigger than a part is
    cut only where it is one song a line (_one_object_a_line): an array of songs, or a song
    written over several lines, cannot be cut at lines, and comes whole, in memory in
    proportion to its size; and a song line of any length is read (a log line longer than a
    part is not)."""
    if songs:
        head, size, rest = [], 0, text  # the text's first blocks, up to more than a part
        try:
            for block in text:
                head.append(block)
                size += len(block)
                if size > part_bytes:
                    break
        except DamagedFile as exc:  # raised once the text before it is read, as in a log
            rest = _raising(exc)
        if size > part_bytes and not _one_object_a_line(b"".join(head)):
            part_bytes = WHOLE
        text = itertools.chain(head, rest)
    yield from _line_parts(text, part_bytes, WHOLE if songs else None)


def _raising(exc: Exception) -> Iterator[bytes]:
    """Blocks of text whose first is the damage exc names."""
    yield from ()
    raise exc


def _one_object_a_line(head: bytes) -> bool:
    """Whether text starting with head holds one JSON object a line, as its first line says."""
    first, newline, _ = head.lstrip(JSON_SPACE).partition(b"\n")
    try:
        return bool(newline) and isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return False


def _line_parts(
    blocks: Iterator[bytes], part_bytes: int, longest: int | None = None
) -> Iterator[bytes]:
    """The blocks joined into parts, each ending after the first newline from its part_bytes-th
    byte on (the last where the text ends). A line longer than longest (part_bytes, and at
    least LONGEST_LINE_FLOOR) comes as an Overlong instead, and memory stays within part_bytes
    and longest together, whatever the lines. Where the blocks raise DamagedFile, what came
    before is yielded first."""
    longest = longest or max(part_bytes, LONGEST_LINE_FLOOR)
    held, size, line_start, skipping = [], 0, 0, None
    try:
        for block in blocks:
            if skipping is not None:  # inside an overlong line: its bytes go, up to its end
                end = block.find(b"\n") + 1
                if not end:
                    continue
                yield overlong(skipping, longest)
                skipping, block = None, block[end:]
            while block:
                end = block.find(b"\n", max(part_bytes - size - 1, 0)) + 1
                if not end:
                    last = block.rfind(b"\n")
                    line_start = size + last + 1 if last >= 0 else line_start
                    held.append(block)
                    size += len(block)
                    break
                part = b"".join([*held, block[:end]])
                held, size, line_start, block = [], 0, 0, block[end:]  # let go before it is used
                yield from _with_overlong_last_line(part, longest)
            if size - line_start > longest:  # the line held so far is too long already
                text = b"".join(held)
                held, size = [], 0
                if line_start:
                    yield text[:line_start]
                skipping, line_start = text[line_start : line_start + OVERLONG_HEAD], 0
    except DamagedFile:
        yield from _left(held, skipping, longest)
        raise
    yield from _left(held, skipping, longest)


def _left(held: list[bytes], skipping: bytes | None, longest: int) -> Iterator[bytes]:
    """What _line_parts still holds where the text ends: its last line, or an overlong one."""
    if held:
        yield b"".join(held)
    if skipping is not None:
        yield overlong(skipping, longest)


def _with_overlong_last_line(part: bytes, longest: int) -> Iterator[bytes]:
    """A part ending in a newline; or, where its last line (the only one that can cross the
    part's size) is longer than longest, the lines before it and that line as an Overlong."""
    last = part.rfind(b"\n", 0, len(part) - 1) + 1
    if len(part) - 1 - last <= longest:
        yield part
        return
    if last:
        yield part[:last]
    yield overlong(part[last : min(last + OVERLONG_HEAD, len(part) - 1)], longest)


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
