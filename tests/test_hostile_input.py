"""Hostile input: whatever song_data/ and log_data/ hold, every entry ends loaded, rejected with
its reason (in load_rejects, counted, --strict exits 1) or named in the summary as ignored; the
good files load as they would alone, and nothing hangs a run.

The property builds data folders of odd entries: names that are not UTF-8 or do not print, FIFOs,
sockets, devices, links that lead nowhere or round in a loop, folders named like data files,
files that are not data, folders that cannot be read; and data files compressed (gzip, bzip2,
xz) or not, in UTF-8 with or without a byte-order mark, UTF-16 or UTF-32, under any data
extension in any case. The examples after it pin each class: paths as text, unreadable folders
(as root too), compressed files, files that grow while they are read, encodings, the summary's
numbers and etl.py's arguments.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import pickle
import random
import re
import shutil
import socket
import string
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from builders import (
    APPLE_DOUBLE,
    BASE,
    BASE_LOG_RECORDS,
    BASE_SKIPPED,
    COMPRESS,
    HIDDEN,
    USER,
    crafted_items,
    dangling_link,
    etl,
    event,
    gzip_cut_holds,
    in_utf16,
    last_run,
    line,
    lines,
    link_in_a_loop,
    log_file,
    manifest,
    other_page,
    plus,
    refresh_refused,
    rejects,
    song,
    unprivileged,
    write,
    zipped,
)
from conftest import PROPERTY, counts, query, run_script, table_contents
from hypothesis import given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from summary import CHECKS_PASSED, Counts, Rejected, parse_summary

import etl as etl_module
import extract
import prepare
from cli import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from contract import Batch, FilePart, FileRead, FileTask, Limits
from extract import zstd

TIMEOUT = 120  # seconds: a run that takes longer hangs

# ================================================================ running etl.py


def run_etl(
    data: Path, *extra: str, exit_code: int = EXIT_OK, prefix: list[str] = ()
) -> subprocess.CompletedProcess:
    """etl.py on the data folder: under prefix (as another user) in a process of its own, else
    in this one; it must end with exit_code within TIMEOUT (a run that does not fails)."""
    return etl(data, *extra, exit_code=exit_code, timeout=TIMEOUT, prefix=prefix)


# ================================================================ paths as text


def unescaped(text: str) -> bytes:
    """A path as docs/data.md says the manifest writes it, back to the file's bytes: \\\\ is a
    backslash, \\xHH a byte, anything else UTF-8."""
    parts = re.split(r"(\\\\|\\x[0-9a-f]{2})", text)
    return b"".join(
        b"\\"
        if part == "\\\\"
        else bytes([int(part[2:], 16)])
        if part.startswith("\\x")
        else part.encode()
        for part in parts
    )


@hypothesis_settings(PROPERTY, max_examples=300)
@given(
    name=st.one_of(
        st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b),
        st.text(min_size=1, max_size=40)
        .filter(lambda t: "/" not in t and "\0" not in t)
        .map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
def test_a_path_is_written_as_one_line_of_utf8_text_that_maps_back_to_its_bytes(name):
    text = extract.path_text(os.fsdecode(name))
    assert text.isprintable(), text  # one line: no newline, tab or other control character
    text.encode("utf-8")  # storable: no lone surrogate
    assert unescaped(text) == name
    try:
        readable = name.decode("utf-8").isprintable() and b"\\" not in name
    except UnicodeDecodeError:
        readable = False
    if readable:  # a name that is printable UTF-8 is written as it is
        assert text == name.decode("utf-8")


# ================================================================ the property

# Names a data file may have (each gets a number and an extension): spaces, quotes, commas, a
# newline, a tab, backslashes, leading dashes, bytes that are not UTF-8, NFC and NFD forms of
# the same word, an invisible character, a very long name.
STEMS = [
    b"plain",
    b"with space",
    b'quote"d',
    b"it's",
    b"com,ma",
    b"new\nline",
    b"tab\there",
    b"back\\slash",
    b"\\x41 not an escape",
    b"-leading-dash",
    b"--",
    b"caf\xc3\xa9",  # café, NFC
    b"cafe\xcc\x81",  # café, NFD
    b"caf\xe9",  # Latin-1: not UTF-8
    b"\xff\xfe",
    b"zero\xe2\x80\x8bwidth",
    b"x" * 200,
]
# b"spark.json": a folder named like a data file (Spark writes its output so) is a folder.
FOLDER_NAMES = [b"", b"2018/11", b"d\xe9j\xe0", b"with space", b"new\nfolder", b"spark.json"]
DATA_EXTENSIONS = [b".json", b".JSON", b".Json", b".ndjson", b".jsonl"]
ENCODINGS = {
    "UTF-8": lambda text: text,
    "UTF-8 with a byte-order mark": lambda text: codecs.BOM_UTF8 + text,
    "UTF-16 little-endian": in_utf16,
    "UTF-16 big-endian": lambda text: codecs.BOM_UTF16_BE + text.decode().encode("utf-16-be"),
    "UTF-32": lambda text: text.decode().encode("utf-32"),
}


def _fifo(path: bytes) -> None:
    os.mkfifo(path)


def _socket(path: bytes) -> None:
    with contextlib.chdir(os.path.dirname(path)), socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.basename(path))


def _link_to(target: bytes) -> Callable[[bytes], None]:
    return lambda path: os.symlink(target, path)


def _loop(path: bytes) -> None:
    os.symlink(os.path.basename(path), path)


# A data file's name, but not a file that can be read: rejected whole, with the reason.
UNREADABLE = {
    "FIFO": (_fifo, "cannot read file: a FIFO (named pipe), not a regular file"),
    "socket": (_socket, "cannot read file: a socket, not a regular file"),
    "link to a device": (
        _link_to(b"/dev/null"),
        "cannot read file: a character device, not a regular file",
    ),
    "dangling link": (_link_to(b"nowhere.json"), "cannot read file: No such file or directory"),
    "link in a loop": (_loop, "cannot read file: Too many levels of symbolic links"),
}
# Not data files, or hidden: ignored, never opened (a FIFO so named would block a run opening it).
IGNORED = {
    b"README.md": lambda path: Path(os.fsdecode(path)).write_text("# notes\n"),
    b".DS_Store": lambda path: Path(os.fsdecode(path)).write_bytes(b"\0\0\0\1Bud1"),
    b"backup.json~": lambda path: Path(os.fsdecode(path)).write_text("{}"),
    b"events.json.lz4": lambda path: Path(os.fsdecode(path)).write_bytes(b"\x04\x22\x4d\x18"),
    b"pipe": _fifo,
    b"loop": _link_to(b"."),  # its own folder again: listed once
    b"._events.json": lambda path: Path(os.fsdecode(path)).write_bytes(APPLE_DOUBLE),
    b".Trashes": lambda path: _folder_holding(path, b"deleted.json", lines(event(30_000))),
}
NOTES = {
    b"loop": extract.LISTED_NOTE,
    b"._events.json": " (hidden: not read)",
    b".Trashes": " (a hidden folder: not read)",
}


def _folder_holding(path: bytes, name: bytes, content: bytes) -> None:
    os.mkdir(path)
    Path(os.fsdecode(os.path.join(path, name))).write_bytes(content)


@dataclasses.dataclass(frozen=True)
class Entry:
    """An entry of a generated data folder, and what must become of it: "loaded" (records: the
    JSON objects it holds), "empty", "unreadable" (its reason) or "ignored"."""

    path: bytes  # under the data folder
    fate: str
    make: Callable[[bytes], None]
    records: tuple[dict, ...] = ()
    reason: str = ""
    note: str = ""  # what the summary adds to an ignored entry's name

    @property
    def kind(self) -> str:
        return "song" if self.path.startswith(b"song_data/") else "log"

    def counts(self) -> Counts:
        if self.kind == "song":
            return Counts(len(self.records), len(self.records))
        plays = sum(1 for r in self.records if r["page"] == "NextSong")
        return Counts(len(self.records), plays, len(self.records) - plays)


def _written(content: bytes) -> Callable[[bytes], None]:
    return lambda path: Path(os.fsdecode(path)).write_bytes(content)


@st.composite
def data_folders(draw) -> list[Entry]:
    """Loaded files (each play its own item, so that no verdict depends on path order), empty
    ones, unreadable entries and ignored ones, under odd folder names."""
    entries, item, song_number = [], 0, 0
    for n in range(draw(st.integers(2, 6))):
        kind = "song" if n and draw(st.booleans()) else "log"
        if kind == "log":
            plays = draw(st.integers(1, 4))
            records = tuple(
                other_page(item + k, "Home") if draw(st.booleans()) and k else event(item + k)
                for k in range(plays)
            )
            item += plays
            text = lines(*records)
        else:
            song_number += 1
            records = (song(song_number),)
            text = json.dumps(records[0], indent=draw(st.sampled_from([None, 2]))).encode()
        content = ENCODINGS[draw(st.sampled_from(list(ENCODINGS)))](text)
        compression = draw(st.sampled_from([None, *COMPRESS]))
        named = b"" if compression is None else compression.encode()
        extension = draw(st.sampled_from(DATA_EXTENSIONS)) + draw(
            st.sampled_from([named, named.upper()])
        )
        folder = (
            b"song_data/A" if kind == "song" else b"log_data/" + draw(st.sampled_from(FOLDER_NAMES))
        )
        path = os.path.join(folder, draw(st.sampled_from(STEMS)) + b"-%d" % n + extension)
        data = content if compression is None else COMPRESS[compression](content)
        entries.append(Entry(path, "loaded", _written(data), records))
    for n in range(draw(st.integers(0, 2))):
        folder = draw(st.sampled_from([b"song_data/A", b"log_data/2018/11"]))
        named = draw(st.sampled_from(["", *COMPRESS])).encode()  # named for a compression too
        entries.append(Entry(b"%s/empty-%d.json%s" % (folder, n, named), "empty", _written(b"")))
    for n, name in enumerate(draw(st.lists(st.sampled_from(list(UNREADABLE)), max_size=3))):
        make, reason = UNREADABLE[name]
        folder = draw(st.sampled_from([b"song_data", b"log_data"]))
        entries.append(Entry(b"%s/bad-%d.json" % (folder, n), "unreadable", make, reason=reason))
    for name in draw(st.lists(st.sampled_from(list(IGNORED)), max_size=3, unique=True)):
        entries.append(
            Entry(b"log_data/2018/" + name, "ignored", IGNORED[name], note=NOTES.get(name, ""))
        )
    if draw(st.booleans()):
        entries.append(
            Entry(LOCKED, "unreadable", _locked, reason="cannot read folder: Permission denied")
        )
    if draw(st.booleans()):  # a day's folder linked in from outside: its file loads
        entries.append(Entry(b"log_data/2018/linked/linked.json", "loaded", _linked_in, LINKED))
    return entries


LINKED = (event(10_000),)  # the play of the file outside the data folder that a link leads to


def _linked_in(path: bytes) -> None:
    """The file's folder made a link to the folder outside the data folder that holds it."""
    folder = os.path.dirname(path)
    os.rmdir(folder)
    os.symlink(b"../../../outside", folder)


LOCKED = b"log_data/locked"


def _locked(path: bytes) -> None:
    """A folder no one may read, holding a data file that therefore is not read either."""
    os.mkdir(path)
    write(Path(os.fsdecode(path)), "hidden.json", lines(event(20_000)))
    os.chmod(path, 0)


def build(root: Path, entries: list[Entry]) -> Path:
    data = os.fsencode(root / "data")
    for entry in entries:
        path = os.path.join(data, entry.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entry.make(path)
    write(root / "outside", "linked.json", lines(*LINKED))  # what a linked folder leads to
    return root / "data"


def clean_twin(root: Path, entries: list[Entry]) -> Path:
    """The loaded files alone, plainly named and written: UTF-8 JSON, not gzipped."""
    for n, entry in enumerate(e for e in entries if e.fate == "loaded"):
        content = lines(*entry.records) if entry.kind == "log" else line(entry.records[0])
        write(root / "clean", f"{entry.kind}_data/clean/{n}.json", content)
    return root / "clean"


def total(each) -> Counts:
    return Counts(*(sum(column) for column in zip(*each, Counts(0, 0))))


def run_rejects(run_id: int) -> list[tuple[bytes, int | None, str]]:
    return sorted((unescaped(path), line_, reason) for path, line_, reason, _ in rejects(run_id))


@pytest.mark.slow
@hypothesis_settings(PROPERTY, max_examples=5)
@given(entries=data_folders())
def test_every_entry_is_loaded_rejected_or_ignored_and_the_good_files_load_as_alone(entries):
    locked = any(e.path == LOCKED for e in entries)
    prefix = unprivileged() if locked else []
    run_script("create_tables.py")
    with tempfile.TemporaryDirectory(prefix="spk-hostile-") as root:
        data = build(Path(root), entries)
        note("\n".join(f"{e.fate}: {e.path!r} {e.reason}" for e in entries))
        try:
            summary = parse_summary(run_etl(data, prefix=prefix).stdout)
            run_id = last_run()
            loaded = [e for e in entries if e.fate in ("loaded", "empty")]
            unreadable = [e for e in entries if e.fate == "unreadable"]
            ignored = [e for e in entries if e.fate == "ignored"]
            stored = {unescaped(path): n for path, n in manifest().items()}
            assert stored == {e.path: e.counts() for e in loaded}
            assert all(path.isprintable() for path in manifest())
            expected_rejects = sorted(
                [(e.path, None, "empty file") for e in entries if e.fate == "empty"]
                + [(e.path, None, e.reason) for e in unreadable]
            )
            assert run_rejects(run_id) == expected_rejects
            for kind in ("song", "log"):
                states = {
                    "new": sum(1 for e in loaded if e.kind == kind),
                    "unreadable": sum(1 for e in unreadable if e.kind == kind),
                }
                assert summary.files[kind] == {s: n for s, n in states.items() if n}
                assert summary.records[kind] == total(e.counts() for e in loaded if e.kind == kind)
            assert summary.rejected == (
                Rejected(0, len(expected_rejects), run_id) if expected_rejects else None
            )
            assert summary.ignored == len(ignored)
            assert sorted(summary.ignored_examples) == sorted(
                extract.path_text(os.fsdecode(e.path)) + e.note for e in ignored
            )
            assert summary.checks == CHECKS_PASSED
            tables = table_contents()

            again = parse_summary(
                run_etl(
                    data,
                    "--strict",
                    prefix=prefix,
                    exit_code=EXIT_FAILED if unreadable else EXIT_OK,
                ).stdout
            )
            for kind in ("song", "log"):
                assert again.files[kind].get("unchanged", 0) == sum(
                    1 for e in loaded if e.kind == kind
                )
            assert {table: added for table, (added, _) in again.rows.items()} == dict.fromkeys(
                again.rows, 0
            )
            assert run_rejects(last_run()) == sorted((e.path, None, e.reason) for e in unreadable)
        finally:
            if locked:
                os.chmod(os.path.join(os.fsencode(data), LOCKED), 0o700)
        run_etl(clean_twin(Path(root), entries), "--full-refresh")
        assert table_contents() == tables


# ================================================================ paths as text, by example


def write_named(root: Path, folder: str, name: bytes, content: bytes) -> bytes:
    """A file whose name is bytes (perhaps not UTF-8); its path under root, as bytes."""
    where = os.path.join(os.fsencode(root), os.fsencode(folder))
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, name), "wb") as file:
        file.write(content)
    return os.path.join(os.fsencode(folder), name)


def test_a_name_that_is_not_utf8_loads_under_its_escaped_path_and_reruns_as_unchanged(data):
    write_named(data, "log_data/2018/12", b"caf\xe9.json", lines(event(0), b'{"ts":', event(2)))
    write_named(data, "song_data/Z", b"s\xff.json", json.dumps(song(1)).encode())

    summary = parse_summary(run_etl(data).stdout)
    assert manifest()["log_data/2018/12/caf\\xe9.json"] == Counts(3, 2, rejected=1)
    assert manifest()["song_data/Z/s\\xff.json"] == Counts(1, 1)
    assert [r[:2] for r in rejects(last_run())] == [("log_data/2018/12/caf\\xe9.json", 2)]
    assert summary.examples[0].startswith(f"{data}/log_data/2018/12/caf\\xe9.json:2: malformed")
    assert crafted_items() == [0, 2]
    assert counts() == plus(songplays=2, users=1, time=2, songs=1, artists=1)
    assert query("SELECT status FROM load_runs") == [("succeeded",)]

    again = parse_summary(run_etl(data).stdout)
    assert again.nothing_new
    assert again.files == {"song": {"unchanged": 12}, "log": {"unchanged": 3}}


# A process whose locale's encoding is ASCII (LC_ALL=C, as Python leaves it when told not to
# make it UTF-8): its file names and output are not UTF-8.
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LANG": None}


def test_a_utf8_name_is_stored_as_the_same_text_whatever_the_locale_and_the_summary_prints(
    data,
):
    """A file named in UTF-8 is stored under the same path in a process whose locale is not
    UTF-8 (a cron job's, say) as in one whose is: the next run under either finds it unchanged.
    What the summary cannot print in the locale's encoding it prints escaped."""
    write_named(data, "log_data/2018/12", "café-Ω.json".encode(), lines(event(0), b'{"ts":'))

    done = run_script("etl.py", "--data", str(data), "--no-progress", env=ASCII_LOCALE)
    assert f"{data}/log_data/2018/12/caf\\u00e9-\\u03a9.json:2: malformed JSON" in done.stdout
    assert manifest()["log_data/2018/12/café-Ω.json"] == Counts(2, 1, rejected=1)
    assert parse_summary(run_etl(data).stdout).nothing_new
    again = run_script("etl.py", "--data", str(data), "--no-progress", "--json", env=ASCII_LOCALE)
    assert parse_summary(again.stdout).nothing_new


@pytest.mark.parametrize(
    ("name", "locale"),
    [(b"caf\xe9", {}), ("café".encode(), ASCII_LOCALE)],
    ids=["a Latin-1 name", "a UTF-8 name in an ASCII locale"],
)
def test_a_data_folder_of_any_name_loads_and_is_recorded_as_paths_are_written(
    data, tmp_path, name, locale
):
    """The run records the folder in load_runs as the manifest writes paths: UTF-8 text, a
    byte that is not UTF-8 as \\xHH (it once refused such a folder: rename it)."""
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/" + name))
    shutil.copytree(data, folder)
    done = run_script("etl.py", "--data", str(folder), "--no-progress", "--json", env=locale)
    assert done.returncode == EXIT_OK, done.stderr
    recorded = f"{tmp_path}/{name.decode('utf-8', 'backslashreplace')}"
    assert query("SELECT data_dir FROM load_runs") == [(recorded,)]
    assert counts() == BASE


# name: how the manifest writes it (under log_data/odd/)
ODD_NAMES = {
    b"new\nline.json": "new\\x0aline.json",
    b"tab\t.json": "tab\\x09.json",
    b"back\\slash.json": "back\\\\slash.json",
    b"\\x41.json": "\\\\x41.json",  # not the escape of "A"
    b"A.json": "A.json",
    b"caf\xc3\xa9.json": "caf\u00e9.json",  # NFC
    b"cafe\xcc\x81.json": "cafe\u0301.json",  # NFD: another name, kept as it is
    b"zero\xe2\x80\x8bwidth.json": "zero\\xe2\\x80\\x8bwidth.json",
    b"q\"uote'd, with a comma.json": "q\"uote'd, with a comma.json",
    b"-leading-dash.json": "-leading-dash.json",
    b"x" * 250 + b".json": "x" * 250 + ".json",
}


def test_odd_names_are_stored_as_readable_text_and_reruns_see_them_unchanged(data):
    for item, name in enumerate(ODD_NAMES):
        write_named(data, "log_data/odd", name, lines(event(item)))

    summary = parse_summary(run_etl(data).stdout)
    assert summary.files["log"] == {"new": 2 + len(ODD_NAMES)}
    assert {p for p in manifest() if p.startswith("log_data/odd/")} == {
        f"log_data/odd/{text}" for text in ODD_NAMES.values()
    }
    assert crafted_items() == list(range(len(ODD_NAMES)))
    assert summary.checks == CHECKS_PASSED
    assert parse_summary(run_etl(data).stdout).nothing_new


# ================================================================ folders that cannot be read


def _hidden_log(folder: Path) -> None:
    write(folder, "hidden.json", lines(event(0)))


@pytest.mark.parametrize("where", ["log_data/2018/locked", "log_data"])
def test_a_folder_without_permission_is_rejected_counted_and_fails_strict(data, where):
    prefix = unprivileged()
    folder = data / where
    _hidden_log(folder)
    folder.chmod(0)
    try:
        summary = parse_summary(run_etl(data, prefix=prefix).stdout)
        run_id = last_run()
        assert [r[:3] for r in rejects(run_id)] == [
            (where, None, "cannot read folder: Permission denied")
        ]
        assert summary.rejected == (0, 1, run_id)
        assert f"{data}/{where}:-: cannot read folder: Permission denied" in summary.examples
        base_logs = 0 if where == "log_data" else 2
        assert (
            summary.files["log"] == {"new": base_logs, "unreadable": 1}
            if base_logs
            else {"unreadable": 1}
        )
        assert crafted_items() == []
        run_etl(data, "--strict", prefix=prefix, exit_code=EXIT_FAILED)
    finally:
        folder.chmod(0o700)


def _file(path: Path) -> None:
    path.write_text("{}")


# log_data/ itself unreadable, whoever runs it (root too): (make it, reason)
NOT_A_FOLDER = {
    "a file": (_file, "cannot read folder: Not a directory"),
    "a dangling link": (dangling_link, "cannot read folder: No such file or directory"),
    "a link in a loop": (link_in_a_loop, "cannot read folder: Too many levels of symbolic links"),
}


@pytest.mark.parametrize("case", list(NOT_A_FOLDER))
def test_a_log_data_that_cannot_be_listed_is_rejected_and_the_songs_load(data, case):
    make, reason = NOT_A_FOLDER[case]
    shutil.rmtree(data / "log_data")
    make(data / "log_data")

    summary = parse_summary(run_etl(data).stdout)
    run_id = last_run()
    assert [r[:3] for r in rejects(run_id)] == [("log_data", None, reason)]
    assert summary.files == {"song": {"new": 11}, "log": {"unreadable": 1}}
    assert summary.rejected == (0, 1, run_id)
    assert counts() == {**dict.fromkeys(BASE, 0), "songs": 11, "artists": 11}
    run_etl(data, "--strict", exit_code=EXIT_FAILED)


# ================================================================ entries that are not files


def test_a_fifo_socket_or_device_named_as_data_is_rejected_unopened_and_others_are_ignored(data):
    odd = data / "log_data/odd"
    odd.mkdir()
    os.mkfifo(odd / "fifo.json")  # opened, it would wait for a writer forever
    _socket(os.fsencode(odd / "socket.json"))
    (odd / "zero.json").symlink_to("/dev/zero")  # read, it would never end
    os.mkfifo(odd / "pipe")  # not a data file's name: ignored, not opened either

    summary = parse_summary(run_etl(data).stdout)
    assert sorted(r[:3] for r in rejects(last_run())) == [
        (
            "log_data/odd/fifo.json",
            None,
            "cannot read file: a FIFO (named pipe), not a regular file",
        ),
        ("log_data/odd/socket.json", None, "cannot read file: a socket, not a regular file"),
        (
            "log_data/odd/zero.json",
            None,
            "cannot read file: a character device, not a regular file",
        ),
    ]
    assert summary.files["log"] == {"new": 2, "unreadable": 3}
    assert (summary.ignored, summary.ignored_examples) == (1, ["log_data/odd/pipe"])
    assert counts() == BASE
    run_etl(data, "--strict", exit_code=EXIT_FAILED)


def test_a_day_folder_linked_in_loads_under_the_links_path_and_each_folder_is_listed_once(
    data, tmp_path
):
    """A link to a folder is followed, as the data folder itself or log_data/ is: a day's folder
    kept elsewhere and linked in loads. A folder two ways lead to is listed by the first in path
    order, and the others are named as ignored, so its plays are not loaded twice."""
    write(tmp_path / "archive/12", "a.json", lines(event(0), event(1)))
    (data / "log_data/2018/12").symlink_to(tmp_path / "archive/12")
    (data / "log_data/2018/latest").symlink_to("12")

    summary = parse_summary(run_etl(data, "--strict").stdout)
    assert summary.files["log"] == {"new": 3}
    assert (summary.ignored, summary.ignored_examples) == (
        1,
        ["log_data/2018/latest (a folder listed already by another path: not listed again)"],
    )
    assert counts() == plus(songplays=2, users=1, time=2)
    assert manifest()["log_data/2018/12/a.json"] == Counts(2, 2)
    assert parse_summary(run_etl(data).stdout).nothing_new


def test_a_linked_folder_gone_out_of_reach_is_rejected_and_a_full_refresh_keeps_its_plays(
    data, tmp_path
):
    """The disk a day's folder is linked in from unmounted: the link is a folder that cannot be
    read, not an entry to ignore (--strict fails), its files are not gone, and a full refresh,
    which could not load them again, empties nothing. A link to a folder holding the data is
    not followed: it would read the data folder again, and what is around it."""
    write(tmp_path / "archive/12", "a.json", lines(event(0), event(1)))
    (data / "log_data/2018/12").symlink_to(tmp_path / "archive/12")
    (data / "log_data/up").symlink_to(data)
    first = parse_summary(run_etl(data, "--strict").stdout)
    assert first.ignored_examples == [
        "log_data/up (a link to a folder holding this kind's folder: not followed)"
    ]
    loaded = counts()
    assert loaded == plus(songplays=2, users=1, time=2)

    (tmp_path / "archive/12").rename(tmp_path / "archive/unmounted")
    again = parse_summary(run_etl(data, "--strict", exit_code=EXIT_FAILED).stdout)
    assert again.examples == [
        f"{data}/log_data/2018/12:-: cannot follow the link: No such file or directory"
    ]
    assert (again.files["log"], again.gone) == ({"unchanged": 2, "unreadable": 1}, 0)
    refused = run_etl(data, "--full-refresh", exit_code=EXIT_ENVIRONMENT)
    assert refused.stderr == refresh_refused(
        data, "log_data/2018/12", "cannot follow the link: No such file or directory"
    )
    assert counts() == loaded


def test_a_full_refresh_is_refused_where_a_file_took_a_loaded_folders_place(data):
    """A loaded day's folder replaced by a file of its name (a copy gone wrong): a run without
    --full-refresh keeps its plays (its files are gone); a full refresh, which could not load
    them again, empties nothing."""
    run_etl(data)
    loaded = counts()
    shutil.rmtree(data / "log_data/2018/11")
    write(data, "log_data/2018/11", b"not a folder\n")

    kept = parse_summary(run_etl(data).stdout)
    assert (kept.gone, kept.ignored_examples) == (2, ["log_data/2018/11"])
    refused = run_etl(data, "--full-refresh", exit_code=EXIT_ENVIRONMENT)
    assert refused.stderr == refresh_refused(
        data, "log_data/2018/11", "cannot read folder: Not a directory"
    )
    assert counts() == loaded


def test_entries_that_are_not_data_files_are_named_in_the_summary_not_rejected(data):
    write(data, "song_data/A/.DS_Store", b"\0\0\0\1Bud1")
    write(data, "log_data/README.md", b"# logs\n")
    write(data, "log_data/notes.txt", b"notes\n")
    write(data, "log_data/events.json.lz4", b"\x04\x22\x4d\x18")
    write(data, "log_data/2018/x.json.bak", lines(event(0)))
    write(data, "log_data/2018/x.json~", lines(event(1)))
    (data / "log_data/linked").symlink_to(data / "log_data")  # a loop: not followed

    summary = parse_summary(run_etl(data, "--strict").stdout)
    assert summary.ignored == 7
    assert summary.ignored_examples == [
        "song_data/A/.DS_Store",
        "log_data/2018/x.json.bak",
        "log_data/2018/x.json~",
        "log_data/README.md",
        "log_data/events.json.lz4",
    ]
    assert summary.rejected is None
    assert summary.files == {"song": {"new": 11}, "log": {"new": 2}}
    assert counts() == BASE

    write(data, "log_data/linked.txt", b"")  # the last three of 8, the link among them
    listed = parse_summary(run_etl(data).stdout)
    assert listed.ignored == 8 and listed.nothing_new
    (data / "log_data/README.md").unlink()
    (data / "log_data/2018/x.json.bak").unlink()
    (data / "log_data/2018/x.json~").unlink()
    assert parse_summary(run_etl(data).stdout).ignored_examples == [
        "song_data/A/.DS_Store",
        "log_data/events.json.lz4",
        "log_data/linked (a link to a folder holding this kind's folder: not followed)",
        "log_data/linked.txt",
        "log_data/notes.txt",
    ]


def test_of_files_holding_a_play_the_first_etl_lists_wins_whatever_characters_they_hold(data):
    names = ["a\nb.json", "a b.json", "aZ.json", "a\tb.json", "a\\b.json", "a\u200bb.json"]
    for name in names:
        write(data, f"log_data/odd/{name}", lines(event(1, song=f"As {name!r} has it")))

    listed = [Path(path).name for path in extract.find(data, "log") if "/odd/" in path]
    assert sorted(listed) == sorted(names)
    etl(data)
    assert query("SELECT song_title FROM songplays WHERE user_id = %s", (USER,)) == [
        (f"As {listed[0]!r} has it",)
    ]


HIDDEN_IGNORED = [
    "song_data/A/._TRAAABASE000000001.json (hidden: not read)",
    "log_data/.Trashes (a hidden folder: not read)",
    "log_data/2018/.partial.json (hidden: not read)",
]


def test_hidden_files_and_folders_are_named_as_ignored_and_never_read(data):
    for path, content in HIDDEN.items():
        write(data, path, content)

    summary = parse_summary(run_etl(data, "--strict").stdout)
    assert (summary.ignored, summary.ignored_examples) == (3, HIDDEN_IGNORED)
    assert summary.rejected is None
    assert summary.files == {"song": {"new": 11}, "log": {"new": 2}}
    assert counts() == BASE


def test_a_data_file_whose_path_is_too_long_for_the_manifests_key_is_named_as_ignored(data):
    # The manifest keys a file by its path: a path past what a btree entry holds (2,704 bytes,
    # less when it does not compress) could be neither recorded nor rejected, and would stop
    # the whole run at every run.
    rng = random.Random(7)
    folders = ["".join(rng.choices(string.ascii_letters, k=250)) for _ in range(11)]
    deep = "log_data/" + "/".join(folders)
    write(data, f"{deep}/day.json", lines(event(1)))

    summary = parse_summary(run_etl(data, "--strict").stdout)

    assert (summary.ignored, summary.ignored_examples) == (
        1,
        [f"{deep}/day.json (a path longer than 2,500 bytes, which the manifest cannot key: "
         "not read)"],
    )  # fmt: skip
    assert summary.files == {"song": {"new": 11}, "log": {"new": 2}}
    assert counts() == BASE


def test_a_folder_past_path_max_is_named_as_ignored_not_rejected(data):
    # Its listing fails ("File name too long"), and a folder's reject, like a file's, is
    # indexed by its path: past 2,500 bytes, it is named among the ignored entries.
    rng = random.Random(7)
    top = os.open(data / "log_data", os.O_RDONLY)
    length, names = len(str(data / "log_data")), []
    while length < 4200:  # past PATH_MAX (4,096): only reached folder by folder
        names.append("".join(rng.choices(string.ascii_letters, k=250)))
        os.mkdir(names[-1], dir_fd=top)
        inner = os.open(names[-1], os.O_RDONLY, dir_fd=top)
        os.close(top)
        top, length = inner, length + 251
    os.close(top)

    summary = parse_summary(run_etl(data, "--strict").stdout)

    too_long = next(
        n for n in range(len(names)) if len(str(data / "log_data")) + 251 * (n + 1) > 4095
    )
    assert summary.ignored_examples == [
        "log_data/" + "/".join(names[: too_long + 1]) + " (a path longer than 2,500 bytes, which "
        "the manifest cannot key: not read)"
    ]
    assert summary.files == {"song": {"new": 11}, "log": {"new": 2}}
    assert counts() == BASE


# ================================================================ compressed files


def compressed_twin(plain: Path, twin: Path, suffix: str) -> Path:
    """Every file of plain, compressed, under its name + suffix."""
    for path in plain.rglob("*.json"):
        write(twin, f"{path.relative_to(plain)}{suffix}", COMPRESS[suffix](path.read_bytes()))
    return twin


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_compressed_files_load_like_their_plain_twins_and_the_manifest_has_their_bytes(
    data, tmp_path, suffix
):
    write(data, "log_data/2018/12/new.json", lines(*(event(i) for i in range(20))))
    run_etl(data)
    plain = table_contents()
    twin = compressed_twin(data, tmp_path / "compressed", suffix)

    summary = parse_summary(run_etl(twin, "--full-refresh").stdout)
    assert table_contents() == plain
    assert summary.records == {
        "song": Counts(11, 11),
        "log": Counts(BASE_LOG_RECORDS + 20, BASE["songplays"] + 20, BASE_SKIPPED),
    }
    on_disk = {
        str(path.relative_to(twin)): (
            path.stat().st_size,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in twin.rglob(f"*{suffix}")
    }
    assert {
        path: (size, sha)
        for path, size, sha in query("SELECT path, size_bytes, sha256 FROM load_manifest")
    } == on_disk
    assert parse_summary(run_etl(twin).stdout).nothing_new


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_big_compressed_log_is_read_in_parts_like_its_plain_twin(fresh_tables, tmp_path, suffix):
    content = lines(*(event(i) for i in range(8000)))  # 2.8 MB: three parts of 1 MB
    write(tmp_path / "plain", "log_data/big.json", content)
    write(tmp_path / "compressed", f"log_data/big.json{suffix}", COMPRESS[suffix](content))
    run_etl(tmp_path / "plain", "--batch-mb", "1")
    plain, plain_manifest = table_contents(), manifest()

    summary = parse_summary(
        run_etl(tmp_path / "compressed", "--batch-mb", "1", "--full-refresh").stdout
    )
    assert table_contents() == plain
    assert manifest() == {f"log_data/big.json{suffix}": plain_manifest["log_data/big.json"]}
    assert summary.records["log"] == Counts(8000, 8000)
    assert summary.checks == CHECKS_PASSED


def valid_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def test_damaged_gzip_is_rejected_naming_the_file_and_what_came_before_the_damage_loads(data):
    content = lines(*(event(i) for i in range(2000)))
    whole = gzip.compress(content, mtime=0)
    cut = whole[: len(whole) // 2]
    before = gzip_cut_holds(cut)
    complete, partial = before.count(b"\n"), before[before.rfind(b"\n") + 1 :]
    write(data, "log_data/z/cut.json.gz", cut)
    intact = gzip.compress(lines(*(event(3000 + i) for i in range(5))), mtime=0)
    damaged = bytearray(gzip.compress(lines(*(event(4000 + i) for i in range(5))), mtime=0))
    damaged[-8] ^= 0xFF  # its check (CRC-32) fails: the member's content is not trusted
    write(data, "log_data/z/crc.json.gz", intact + bytes(damaged))
    write(data, "log_data/z/plain.json.gz", lines(event(5000)))  # text, gunzipped on its way

    summary = parse_summary(run_etl(data).stdout)
    run_id = last_run()
    found = sorted((r[:3] for r in rejects(run_id)), key=lambda r: (r[0], r[1] or 0))
    assert [r for r in found if r[1] is None] == [
        (
            "log_data/z/crc.json.gz",
            None,
            "damaged gzip data (Error -3 while decompressing data: "
            "incorrect data check) after line 5",
        ),
        ("log_data/z/cut.json.gz", None, f"gzip data cut short after line {complete}"),
    ]
    last_loads = valid_json(partial)
    assert [r[:2] for r in found if r[1] is not None] == (
        [] if last_loads else [("log_data/z/cut.json.gz", complete + 1)]
    )
    loaded = complete + last_loads
    assert crafted_items() == [*range(loaded), *range(3000, 3005), 5000]
    assert manifest()["log_data/z/cut.json.gz"] == Counts(
        complete + bool(partial), loaded, rejected=bool(partial) and not last_loads
    )
    assert manifest()["log_data/z/crc.json.gz"] == Counts(5, 5)
    assert manifest()["log_data/z/plain.json.gz"] == Counts(1, 1)
    assert summary.files["log"] == {"new": 5}
    assert summary.rejected.files == 2
    assert summary.checks == CHECKS_PASSED
    run_etl(data, "--strict", "--full-refresh", exit_code=EXIT_FAILED)


def test_a_damaged_gzip_song_file_loads_its_songs_before_the_damage_as_a_log_file_does(data):
    """A song file of one song a line, gzipped: its trailer cut off, and a member after an
    intact one damaged. The songs before the damage load; the reject says after which line."""
    songs = [song(n) for n in range(3)]
    write(data, "song_data/z/cut.json.gz", gzip.compress(lines(*songs), mtime=0)[:-4])
    intact = gzip.compress(lines(*[song(10 + n) for n in range(3)]), mtime=0)
    damaged = bytearray(gzip.compress(lines(song(20)), mtime=0))
    damaged[-8] ^= 0xFF
    write(data, "song_data/z/crc.json.gz", intact + bytes(damaged))

    summary = parse_summary(run_etl(data).stdout)

    assert sorted(r[:3] for r in rejects(last_run())) == [
        (
            "song_data/z/crc.json.gz",
            None,
            "damaged gzip data (Error -3 while decompressing data: incorrect data check) after "
            "line 3",
        ),
        ("song_data/z/cut.json.gz", None, "gzip data cut short after line 3"),
    ]
    crafted = "SELECT song_id FROM songs WHERE song_id LIKE 'SOZZZZZ%' ORDER BY 1"
    assert query(crafted) == [(song(n)["song_id"],) for n in [0, 1, 2, 10, 11, 12]]
    assert manifest()["song_data/z/cut.json.gz"] == Counts(3, 3)
    assert manifest()["song_data/z/crc.json.gz"] == Counts(3, 3)
    assert summary.checks == CHECKS_PASSED


# The name of the compression a suffix is for, its stdlib decompressor, and what it says of
# damaged data.
STREAMS = {
    ".bz2": ("bzip2", bz2.BZ2Decompressor, "Invalid data stream"),
    ".xz": ("xz", lzma.LZMADecompressor, "Corrupt input data"),
    ".zst": (
        "zstd",
        zstd.ZstdDecompressor,
        ("Unable to decompress Zstandard data: Restored data doesn't match checksum"),
    ),
}


@pytest.mark.parametrize("suffix", list(STREAMS))
def test_damaged_bzip2_xz_and_zstd_are_rejected_naming_the_file_and_what_came_before_loads(
    data, suffix
):
    """As gzip is: a stream whose data is damaged is not read, the streams before it are; a
    file cut short is read up to where it ends."""
    name, decompressor, damage = STREAMS[suffix]
    compress = COMPRESS[suffix]
    intact = compress(lines(*(event(3000 + i) for i in range(5))))
    damaged = bytearray(compress(lines(*(event(4000 + i) for i in range(5)))))
    damaged[len(damaged) // 2] ^= 0xFF
    write(data, f"log_data/z/damaged.json{suffix}", intact + bytes(damaged))
    cut = compress(lines(*(event(i) for i in range(2000))))[:-40]
    write(data, f"log_data/z/cut.json{suffix}", cut)
    before = decompressor().decompress(cut)  # what the cut data holds
    complete, partial = before.count(b"\n"), before[before.rfind(b"\n") + 1 :]
    where = f"after line {complete}" if complete else "before its first line"

    summary = parse_summary(run_etl(data).stdout)
    assert sorted(r[:3] for r in rejects(last_run()) if r[1] is None) == [
        (f"log_data/z/cut.json{suffix}", None, f"{name} data cut short {where}"),
        (f"log_data/z/damaged.json{suffix}", None, f"damaged {name} data ({damage}) after line 5"),
    ]
    loaded = complete + valid_json(partial)
    assert crafted_items() == [*range(loaded), *range(3000, 3005)]
    assert summary.rejected.files == 2
    assert summary.checks == CHECKS_PASSED


def test_data_compressed_twice_or_in_a_way_not_read_is_named_not_read_as_noise(data):
    long_window = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 31})
    write(data, "log_data/z/twice.json.gz", COMPRESS[".gz"](COMPRESS[".xz"](lines(event(0)))))
    write(data, "log_data/z/lz4.json.bz2", COMPRESS[".bz2"](b"\x04\x22\x4d\x18" + bytes(256)))
    long = long_window.compress(lines(event(1))) + long_window.flush()  # its size not said first
    write(data, "log_data/z/long.json", long)
    # xz's legacy header asking for a dictionary of 4 GiB, which the decoder would reserve
    big_dictionary = b"\x5d" + (2**32 - 1).to_bytes(4, "little") + b"\xff" * 8 + bytes(64)
    write(data, "log_data/z/big-dictionary.json.xz", big_dictionary)

    summary = parse_summary(run_etl(data).stdout)
    assert sorted(r[:4] for r in rejects(last_run())) == [
        (
            "log_data/z/big-dictionary.json.xz",
            None,
            "xz data needing more than 256 MiB of memory (a dictionary above xz -9's), which is "
            "not read (Memory usage limit exceeded) before its first line",
            None,
        ),
        (
            "log_data/z/long.json",
            None,
            "zstd data needing a window above 128 MiB (zstd --long), which is not read (Unable "
            "to decompress Zstandard data: Frame requires too much memory for decoding) before "
            "its first line",
            None,
        ),
        (
            "log_data/z/lz4.json.bz2",
            None,
            "lz4 data, which is not read (gzip, bzip2, xz, zstd and zip are) before its first line",
            None,
        ),
        (
            "log_data/z/twice.json.gz",
            None,
            "xz data inside gzip data (compressed twice), which is not read before its first line",
            None,
        ),
    ]
    assert crafted_items() == []
    assert summary.rejected.files == 4


def streamed_zip(*files: tuple[str, bytes], how: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive written where it cannot seek back (zip to a pipe): each file's CRC-32 and
    sizes in a descriptor after its data; an empty file stored, as zip -r - stores it."""

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.written = io.BytesIO()

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            return self.written.write(data)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", how) as archive:
        for name, content in files:
            archive.writestr(name, content, compress_type=how if content else zipfile.ZIP_STORED)
    return pipe.written.getvalue()


def test_a_zip_archive_is_read_as_its_files_one_after_the_other(data):
    """Every file of an archive, in the order stored, each starting a line (the Udacity logs'
    last lines end in no newline), each one's byte-order mark dropped; folders and macOS's
    __MACOSX/._ copies give nothing, names through ./ and ../ are read. As zip writes to a
    file, to a pipe (descriptors; empty files stored) and with zip64's sizes, split (zip -s)
    into one part; an archive named .zip, or under a plain name; of UTF-16 files too."""
    days = [log_file(*(event(10 * day + i) for i in range(3))) for day in range(5)]
    write(
        data,
        "log_data/z/month.json.zip",
        zipped(
            ("2018/", b""),
            ("2018/day-0.json", days[0]),
            ("__MACOSX/2018/._day-0.json", b"\x00\x05\x16\x07 a resource fork"),
            ("./2018/day-1.json", codecs.BOM_UTF8 + days[1]),
            ("2018/.day-1.json.swp", b"an editor's"),
            ("../late/day-2.json", codecs.BOM_UTF8 + days[2]),
        ),
    )
    piped = streamed_zip(("logs/", b""), ("logs/.keep", b""), ("-", days[3]), ("e.json", b""))
    write(data, "log_data/z/piped.json", piped)
    zip64 = io.BytesIO()
    with zipfile.ZipFile(zip64, "w", zipfile.ZIP_STORED) as archive:
        with archive.open("big.json", "w", force_zip64=True) as file:
            file.write(lines(event(40)))
    write(data, "log_data/z/zip64.json.zip", b"PK\x07\x08" + zip64.getvalue())
    utf16 = ENCODINGS["UTF-16 little-endian"]
    halves = utf16(log_file(event(50))), utf16(log_file(event(51)))
    write(data, "log_data/z/utf16.json.zip", zipped(("a.json", halves[0]), ("b.json", halves[1])))

    summary = parse_summary(run_etl(data).stdout)
    assert rejects(last_run()) == []
    assert crafted_items() == [
        *range(3),
        *range(10, 13),
        *range(20, 23),
        *range(30, 33),
        40,
        50,
        51,
    ]
    assert manifest()["log_data/z/month.json.zip"] == Counts(9, 9)
    assert summary.checks == CHECKS_PASSED


def test_zip_data_damaged_cut_short_or_needing_more_is_named_and_what_came_before_loads(data):
    """A file whose CRC-32 fails is not read, the files before it are; an archive cut short is
    read up to the end of its last whole file (a file's sizes may be what is damaged, its check
    never reached), and one whose directory never comes is cut short; a file of compressed data
    is named (compressed twice); a damaged name length that hides a file is found by the
    directory's count of its files; an encrypted file, one compressed otherwise than deflated,
    and one stored with its size after its data (Python's zipfile to a pipe) are named, not
    read."""
    first, second = lines(event(0), event(1)), lines(event(2))
    damaged = bytearray(zipped(("a.json", first), ("b.json", second), how=zipfile.ZIP_STORED))
    damaged[damaged.rfind(second[:20]) + 5] ^= 0x01
    write(data, "log_data/z/damaged.json.zip", damaged)
    whole = zipped(("c.json", lines(*(event(100 + i) for i in range(3)))), ("d.json", first))
    write(data, "log_data/z/cut.json.zip", whole[: whole.find(b"PK\x01\x02") - 10])
    offset = zipfile.ZipFile(io.BytesIO(whole)).infolist()[1].header_offset
    write(data, "log_data/z/unfinished.json.zip", whole[:offset])  # a writer killed
    twice = zipped(("j.json", lines(event(600))), ("k.json.gz", COMPRESS[".gz"](b"{}")))
    write(data, "log_data/z/twice.json.zip", twice)
    write(data, "log_data/z/bzip2.json.zip", zipped(("d.json", b"{}"), how=zipfile.ZIP_BZIP2))
    encrypted = bytearray(zipped(("e.json", lines(event(300)))))
    encrypted[6] |= 0x01  # the flag zip -e sets
    write(data, "log_data/z/encrypted.json.zip", encrypted)
    stored = streamed_zip(("f.json", b"{}"), how=zipfile.ZIP_STORED)
    write(data, "log_data/z/stored.json.zip", stored)
    hidden, after = lines(event(500)), lines(event(501))
    files = ("g.json", b""), ("h.json", hidden), ("i.json", after)
    hiding = bytearray(zipped(*files, how=zipfile.ZIP_STORED))
    third = zipfile.ZipFile(io.BytesIO(hiding)).infolist()[2].header_offset
    hiding[26:28] = (third - 30).to_bytes(2, "little")  # g.json's name runs up to i.json
    write(data, "log_data/z/hiding.json.zip", hiding)
    unsized = bytearray(zipped(*files[1:], how=zipfile.ZIP_STORED))
    second = zipfile.ZipFile(io.BytesIO(unsized)).infolist()[1].header_offset
    unsized[second + 18 : second + 26] = b"\xff" * 8  # zip64's sizes, with no zip64 field
    write(data, "log_data/z/unsized.json.zip", unsized)

    summary = parse_summary(run_etl(data).stdout)
    whole_file = sorted((r[0], r[2]) for r in rejects(last_run()) if r[1] is None)
    not_read = "which is not read"
    assert whole_file == [
        (
            "log_data/z/bzip2.json.zip",
            f"zip data needing a compression other than deflate, {not_read} (d.json is "
            "compressed with bzip2) before its first line",
        ),
        ("log_data/z/cut.json.zip", "zip data cut short after line 3"),
        (
            "log_data/z/damaged.json.zip",
            "damaged zip data (b.json: its CRC-32 does not match) after line 2",
        ),
        (
            "log_data/z/encrypted.json.zip",
            f"zip data needing a password, {not_read} (e.json is encrypted) before its first line",
        ),
        (
            "log_data/z/hiding.json.zip",
            "damaged zip data (its directory lists 3 files, not 2) after line 1",
        ),
        (
            "log_data/z/stored.json.zip",
            f"zip data needing the size of a file stored ahead of its data, {not_read} (f.json "
            "is stored with its size after its data) before its first line",
        ),
        (
            "log_data/z/twice.json.zip",
            f"zip data needing files that are not compressed again, {not_read} (k.json.gz holds "
            "data compressed twice) after line 1",
        ),
        ("log_data/z/unfinished.json.zip", "zip data cut short after line 3"),
        (
            "log_data/z/unsized.json.zip",
            "damaged zip data (i.json: its size is marked as zip64's but no zip64 field holds "
            "it) after line 1",
        ),
    ]
    assert crafted_items() == [0, 1, 100, 101, 102, 500, 501, 600]
    assert summary.rejected.files == 9


SKIPPABLE_FRAME = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"pzst"  # as pzstd writes


def test_compressed_files_as_the_tools_write_them_are_read_whatever_their_first_stream(data):
    """pzstd starts with a skippable frame (under a plain name too), a gzip file may start with
    an empty member; the text after them is read, in its own encoding. xz's legacy format is
    read where the file is named .xz."""
    utf16 = ENCODINGS["UTF-16 little-endian"]
    write(data, "log_data/z/pzstd.json", SKIPPABLE_FRAME + COMPRESS[".zst"](utf16(lines(event(0)))))
    write(
        data,
        "log_data/z/empty-first.json.gz",
        COMPRESS[".gz"](b"") + COMPRESS[".gz"](utf16(lines(event(1)))),
    )
    write(data, "log_data/z/legacy.json.xz", lzma.compress(lines(event(2)), lzma.FORMAT_ALONE))

    summary = parse_summary(run_etl(data).stdout)
    assert rejects(last_run()) == []
    assert crafted_items() == [0, 1, 2]
    assert summary.files["log"] == {"new": 5}


@pytest.mark.parametrize("flip", [-8, "middle"], ids=["check", "data"])
def test_a_damaged_file_repaired_keeping_its_size_and_mtime_is_loaded_by_the_next_run(data, flip):
    """A transfer flips a byte; the file is sent again as cp -p or rsync -t send it: same size,
    same mtime. The manifest's version alone would call it unchanged for ever."""
    good = gzip.compress(lines(*(event(i) for i in range(300))), mtime=0)
    damaged = bytearray(good)
    damaged[len(good) // 2 if flip == "middle" else flip] ^= 0xFF
    path = write(data, "log_data/z/day.json.gz", bytes(damaged))
    os.utime(path, ns=(1_541_030_400 * 10**9, 1_541_030_400 * 10**9))
    run_etl(data)
    damage = "damaged gzip data (Error -3 while decompressing data: incorrect data check)"
    assert [r[:3] for r in rejects(last_run())] == [
        ("log_data/z/day.json.gz", None, f"{damage} before its first line")
    ]
    assert crafted_items() == []
    still = parse_summary(run_etl(data).stdout)  # read again, found as it was
    assert still.files["log"] == {"unchanged": 3} and rejects(last_run()) == []

    path.write_bytes(good)
    os.utime(path, ns=(1_541_030_400 * 10**9, 1_541_030_400 * 10**9))
    repaired = parse_summary(run_etl(data).stdout)

    assert crafted_items() == list(range(300))
    assert repaired.files["log"] == {"unchanged": 2, "changed": 1}
    assert rejects(last_run()) == []
    assert manifest()["log_data/z/day.json.gz"] == Counts(300, 300)
    assert parse_summary(run_etl(data).stdout).files["log"] == {"unchanged": 3}


# ================================================================ files that grow while read


def test_a_file_in_many_chunks_of_one_part_is_counted_once_and_its_rejects_keep_their_lines():
    read = FileRead("new", 1000, "0" * 64)
    chunks = [
        prepare.read_chunk(
            "log",
            FilePart("log_data/big.json", 0, read, first=item == 0),
            lines(event(item, userId="abc" if item == 3 else "900")),
            item + 1,
        )
        for item in range(10)
    ]
    part = prepare.shape("log", 0, True, chunks, [])
    assert [(f.path, f.first, f.records, f.accepted, f.rejected) for f in part.files] == [
        ("log_data/big.json", True, 10, 9, 1)
    ]
    [reject] = list(csv.reader(io.StringIO(part.copies["stage_rejects"].decode())))
    assert reject == [
        "log_data/big.json",
        "4",
        "userId is not numeric",
        line(event(3, userId="abc")).decode(),
    ]


def test_a_file_appended_to_after_it_was_hashed_is_read_as_it_was_then(tmp_path):
    before = lines(*(event(i) for i in range(3000)))  # about 1 MB: parts of 100 kB
    path = write(tmp_path, "log_data/big.json", before)
    task = FileTask("log_data/big.json", str(path), len(before), 0, None)
    parts = prepare.prepare(Batch("log", (task,)), Limits(log_batch_bytes=100_000))

    first = next(parts)  # the file is hashed, its first part read
    with path.open("ab") as file:
        file.write(lines(*(event(i) for i in range(3000, 4000))))
    files = [f for part in [first, *parts] for f in part.files]
    assert sum(f.records for f in files) == sum(f.accepted for f in files) == 3000
    assert [f.first for f in files] == [True] + [False] * (len(files) - 1)
    assert {(f.read.size, f.read.sha256) for f in files} == {
        (len(before), hashlib.sha256(before).hexdigest())
    }


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("change", ["cut in half", "rewritten, same size"])
def test_a_file_changed_in_place_after_it_was_hashed_stops_the_run_naming_it(
    tmp_path, suffix, change
):
    """cp over a file, or a truncate, while a run reads it in parts: the bytes read are not the
    version hashed, whose hash the manifest would keep (a version put back would then look
    loaded). The run stops there, as for an object replaced while it was read."""
    noise = random.Random(7)  # text gzip cannot shrink below a few blocks (extract.BLOCK)
    text = lines(*(event(i, location=noise.randbytes(300).hex()) for i in range(6000)))
    before = gzip.compress(text, mtime=0) if suffix else text
    assert len(before) > 2 * extract.BLOCK
    path = write(tmp_path, f"log_data/big.json{suffix}", before)
    task = FileTask(f"log_data/big.json{suffix}", str(path), len(before), 0, None)
    parts = prepare.prepare(Batch("log", (task,)), Limits(log_batch_bytes=100_000))

    next(parts)  # the file is hashed, its first part read
    after = before[: len(before) // 2] if change == "cut in half" else before.replace(b"1", b"2")
    with path.open("r+b") as file:  # in place, as cp does
        file.truncate(0)
        file.write(after)
    with pytest.raises(extract.ChangedWhileRead) as raised:
        list(parts)
    said = (
        f"cannot read {path}: it changed while it was read (written over in place); run again "
        "to read it as it is now"
    )
    assert str(raised.value) == said
    assert str(pickle.loads(pickle.dumps(raised.value))) == said  # as the parse worker sends it


def test_a_log_growing_while_etl_reads_it_in_parts_is_counted_once_and_reloaded_next_run(data):
    path = write(data, "log_data/2018/12/growing.json", lines(*(event(i) for i in range(6000))))
    stop = threading.Event()

    def append() -> None:  # until etl.py has ended: lines always come after it opened the file
        item = 6000
        with path.open("ab", buffering=0) as file:
            while not stop.is_set():
                file.write(lines(*(event(i) for i in range(item, item + 10))))
                item += 10
                time.sleep(0.01)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        summary = parse_summary(run_etl(data, "--batch-mb", "1").stdout)
    finally:
        stop.set()
        writer.join()
    read = manifest()["log_data/2018/12/growing.json"]
    final = path.read_bytes().count(b"\n")
    assert 6000 <= read.records < final
    # what it held when opened, a last line perhaps cut short by a write under way
    assert read.records == read.loaded + read.rejected and read.rejected <= 1
    assert summary.records["log"] == Counts(
        BASE_LOG_RECORDS + read.records,
        BASE["songplays"] + read.loaded,
        BASE_SKIPPED,
        rejected=read.rejected,
    )
    assert summary.reconciled["log"]
    assert summary.checks == CHECKS_PASSED  # songplays per file match the manifest among them

    again = parse_summary(run_etl(data, "--batch-mb", "1").stdout)
    assert again.files["log"] == {"unchanged": 2, "changed": 1}
    assert manifest()["log_data/2018/12/growing.json"] == Counts(final, final)
    assert crafted_items() == list(range(final))
    assert again.checks == CHECKS_PASSED


# ================================================================ reading, by parts


def test_a_big_file_is_read_in_line_aligned_parts_whatever_its_encoding_or_compression(tmp_path):
    text = lines(*(event(i, location="Łódź ☃") for i in range(6000)))  # 2.3 MB
    longest = max(len(raw) + 1 for raw in text.splitlines())
    part_bytes = 1 << 20
    for name, encode in ENCODINGS.items():
        for suffix in ["", *COMPRESS]:
            content = encode(text)
            on_disk = COMPRESS[suffix](content) if suffix else content
            path = write(tmp_path, f"{name}{suffix}", on_disk)
            task = FileTask(path.name, str(path), len(on_disk), 0, None)
            read, contents = extract.read_file(task, part_bytes)
            parts = list(contents)
            assert b"".join(parts) == text, (name, suffix)
            assert all(p.endswith(b"\n") and len(p) < part_bytes + longest for p in parts)
            assert len(parts) == 3, (name, suffix)
            assert (read.size, read.sha256) == (len(on_disk), hashlib.sha256(on_disk).hexdigest())
            assert read.encoding == name.split()[0]


def test_a_compressed_files_encoding_is_found_behind_a_first_stream_bigger_than_a_block(tmp_path):
    """A skippable frame of 2 MiB first: the byte-order mark comes after the first block read."""
    text = lines(*(event(i) for i in range(200)))
    skippable = b"\x50\x2a\x4d\x18" + (2 << 20).to_bytes(4, "little") + bytes(2 << 20)
    on_disk = skippable + COMPRESS[".zst"](ENCODINGS["UTF-16 little-endian"](text))
    path = write(tmp_path, "x.json.zst", on_disk)
    for part_bytes in (4096, 8 << 20):  # read in parts, or whole
        read, contents = extract.read_file(
            FileTask("x", str(path), len(on_disk), 0, None), part_bytes
        )
        assert (read.encoding, b"".join(contents)) == ("UTF-16", text), part_bytes


def before_its_last_line(part: bytes) -> int:
    """How many bytes of a part come before its last line."""
    return part.removesuffix(b"\n").rfind(b"\n") + 1


@hypothesis_settings(PROPERTY, max_examples=60)
@given(
    n=st.integers(0, 40),
    part_bytes=st.integers(1, 3000),
    encoding=st.sampled_from(list(ENCODINGS)),
    suffix=st.sampled_from(["", *COMPRESS]),
    newline_at_the_end=st.booleans(),
)
def test_a_file_is_read_as_its_utf8_text_in_line_aligned_parts(
    n, part_bytes, encoding, suffix, newline_at_the_end
):
    text = lines(*(event(i, location="Zürich") for i in range(n)))
    text = text if newline_at_the_end else text.removesuffix(b"\n")
    content = ENCODINGS[encoding](text)
    on_disk = COMPRESS[suffix](content) if suffix else content
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), f"x.json{suffix}", on_disk)
        read, contents = extract.read_file(FileTask("x", str(path), 0, 0, None), part_bytes)
        parts = list(contents)
    assert b"".join(parts) == text
    assert all(p.endswith(b"\n") for p in parts[:-1])
    assert all(before_its_last_line(p) < part_bytes for p in parts)  # it ends at the first chance
    assert read.status == "new" and read.sha256 == hashlib.sha256(on_disk).hexdigest()


def lines_read(parts: list[bytes]) -> list[tuple[str, bytes]]:
    """Each line of the parts, and each overlong line's head, in order."""
    return [
        found
        for part in parts
        for found in (
            [("overlong", part.removesuffix(b"\n"))]
            if isinstance(part, extract.Overlong)
            else [("line", line) for line in extract.raw_lines(part)]
        )
    ]


@hypothesis_settings(PROPERTY, max_examples=200)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=30),
    part_bytes=st.integers(20, 100),
    block=st.integers(1, 64),
    newline_at_the_end=st.booleans(),
)
def test_a_line_longer_than_a_part_comes_as_its_head_and_memory_follows_the_part_size(
    sizes, part_bytes, block, newline_at_the_end
):
    written = [bytes([97 + n % 26]) * size for n, size in enumerate(sizes)]
    text = b"\n".join(written) + (b"\n" if newline_at_the_end and written else b"")
    blocks = [text[start : start + block] for start in range(0, len(text), block)]

    parts = list(extract._line_parts(iter(blocks), part_bytes, longest=part_bytes))

    found = lines_read(parts)
    unended_blank = bool(written) and not newline_at_the_end and not written[-1]  # no line
    assert len(found) == len(written) - unended_blank
    for text_line, (kind, value) in zip(written, found):
        assert (kind == "overlong") == (len(text_line) > part_bytes)
        if kind == "line":
            assert value == text_line
        else:  # its first bytes: as many as a part holds, up to OVERLONG_HEAD
            assert len(text_line) > part_bytes and value == text_line[: len(value)]
            assert min(part_bytes, extract.OVERLONG_HEAD) <= len(value) <= extract.OVERLONG_HEAD
    assert all(len(part) <= 2 * (part_bytes + block) for part in parts)


@hypothesis_settings(PROPERTY, max_examples=20)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(1, 4000),
    part_bytes=st.sampled_from([3000, 64 * 1024, 1 << 20]),
    gzipped=st.booleans(),
    small_files=st.integers(0, 3),
)
def test_a_part_of_short_lines_holds_its_share_of_lines_and_judges_each_by_number(
    tmp_path_factory, seed, count, part_bytes, gzipped, small_files
):
    """Junk a character a line, or a pretty-printed array: a part holds fewer than two lines
    for each 128 bytes of its size (what a record costs in memory follows its lines: a part ends
    once it has one for each), and every line is still judged by its own number: the junk
    rejected, the plays among it kept."""
    rng, root = random.Random(seed), tmp_path_factory.mktemp("short")
    limits = Limits(log_batch_bytes=part_bytes)
    plays = {n for n in range(1, count + 1) if rng.random() < 0.01}
    junk = [b"x", b"[", b"  {", b'  "a": 1,', b"}", b""]
    content = b"".join(
        (line(event(n)) if n in plays else rng.choice(junk)) + b"\n" for n in range(1, count + 1)
    )
    write(root, "log_data/short.json", gzip.compress(content) if gzipped else content)
    for n in range(small_files):  # beside it in the batch: files of a line or two
        write(root, f"log_data/small{n}.json", lines(*([b"x"] * (1 + n % 2))))
    tasks = tuple(
        FileTask(str(path.relative_to(root)), str(path), path.stat().st_size, 0, None)
        for path in sorted((root / "log_data").iterdir())
    )

    parts = list(prepare.prepare(Batch("log", tasks), limits))

    lines_read = [sum(f.records for f in part.files) for part in parts]
    assert max(lines_read) < 2 * limits.part_lines
    rejected = [
        (row[0], int(row[1]))
        for part in parts
        for row in csv.reader(io.StringIO(part.copies["stage_rejects"].decode()))
    ]
    blank = {n for n in range(1, count + 1) if content.split(b"\n")[n - 1] == b""}
    assert sorted(rejected) == sorted(
        [("log_data/short.json", n) for n in range(1, count + 1) if n not in plays | blank]
        + [(f"log_data/small{n}.json", k) for n in range(small_files) for k in (1, 2)[: 1 + n % 2]]
    )
    accepted = sum(f.accepted for part in parts for f in part.files)
    assert accepted == len(plays)


def test_a_line_longer_than_a_part_is_rejected_by_its_number_and_the_rest_loads(data):
    huge = b'{"junk": "' + b"x" * (3 << 20) + b'"}'
    content = lines(event(0), event(1)) + huge + b"\n" + lines(event(2))
    write(data, "log_data/z/huge.json.gz", gzip.compress(content, mtime=0))

    summary = parse_summary(run_etl(data, "--batch-mb", "1").stdout)

    reason = "a line longer than a part (1,048,576 bytes, --batch-mb): not read"
    assert [r[:4] for r in rejects(last_run())] == [
        ("log_data/z/huge.json.gz", 3, reason, '{"junk": "' + "x" * 990)
    ]
    assert crafted_items() == [0, 1, 2]
    assert manifest()["log_data/z/huge.json.gz"] == Counts(4, 3, rejected=1)
    assert summary.checks == CHECKS_PASSED


# ================================================================ encodings


def test_a_byte_order_mark_costs_no_record_and_utf16_or_utf32_loads_like_utf8(data):
    for n, (name, encode) in enumerate(ENCODINGS.items()):
        plays = lines(event(2 * n), event(2 * n + 1, location="Zürich"))
        write(data, f"log_data/2018/12/{name}.json", encode(plays))
        write(data, f"song_data/Z/{name}.json", encode(json.dumps(song(n), indent=2).encode()))

    summary = parse_summary(run_etl(data).stdout)
    assert summary.rejected is None
    assert crafted_items() == list(range(2 * len(ENCODINGS)))
    assert query(
        "SELECT item_in_session, location FROM songplays WHERE user_id = %s AND location <> %s "
        "ORDER BY 1",
        (USER, "London"),
    ) == [(2 * n + 1, "Zürich") for n in range(len(ENCODINGS))]
    n = len(ENCODINGS)
    assert counts() == plus(songplays=2 * n, users=1, time=2 * n, songs=n, artists=1)


def test_a_line_that_is_not_valid_utf16_is_rejected_alone(data):
    def utf16(text: str) -> bytes:
        return text.encode("utf-16-le", "surrogatepass")

    content = (
        codecs.BOM_UTF16_LE
        + utf16(lines(event(0)).decode())
        + utf16('{"ts": "\ud800"}\n')  # half a surrogate pair
        + utf16(lines(event(2)).decode())
        + b"{"  # a last odd byte: no UTF-16 character
    )
    write(data, "log_data/2018/12/u16.json", content)

    parse_summary(run_etl(data).stdout)
    assert [r[:3] for r in rejects(last_run())] == [
        ("log_data/2018/12/u16.json", 2, "not valid UTF-16"),
        ("log_data/2018/12/u16.json", 4, "not valid UTF-16"),
    ]
    assert crafted_items() == [0, 2]


# ================================================================ the summary, the arguments


def test_rows_a_run_takes_away_are_a_negative_number_in_the_summary(data):
    path = write(data, "log_data/2018/12/s.json", lines(*(event(i) for i in range(5))))
    run_etl(data)
    path.write_bytes(lines(event(0), event(1)))

    done = run_etl(data)
    summary = parse_summary(done.stdout)
    assert summary.rows["songplays"] == (-3, BASE["songplays"] + 2)
    assert summary.rows["time"] == (-3, BASE["time"] + 2)


def test_data_naming_a_file_says_it_is_not_a_folder(tmp_path):
    path = write(tmp_path, "events.json", lines(event(0)))
    done = etl(path, exit_code=EXIT_ENVIRONMENT, process=True, timeout=TIMEOUT)
    assert done.stderr == (
        f"error: data folder {path} is not a folder: choose the folder that holds song_data/ "
        "and log_data/ with --data\n"
    )


def test_data_naming_a_folder_this_user_may_not_read_says_so(tmp_path):
    prefix = unprivileged()
    folder = tmp_path / "data"
    write(folder, "log_data/2018/11/a.json", lines(event(0)))
    folder.chmod(0)
    try:
        done = etl(folder, exit_code=EXIT_ENVIRONMENT, process=True, timeout=TIMEOUT, prefix=prefix)
    finally:
        folder.chmod(0o700)
    assert done.stderr == f"error: cannot read data folder {folder}: Permission denied\n"


def test_a_wait_beyond_a_year_is_refused_as_a_bad_argument(tmp_path):
    done = etl(tmp_path, "--wait", str(10**400), exit_code=EXIT_USAGE, process=True)
    assert done.stderr.splitlines()[-1].endswith("is more than 31536000 (a year)")


@pytest.mark.parametrize("option", ["--jobs", "--wait", "--batch-mb"])
@pytest.mark.parametrize("number", ["²", "٣", "+1", " 2"])
def test_a_number_option_takes_ascii_digits_only(tmp_path, option, number):
    """A superscript or another script's digit is no whole number here (int() reads "٣" as 3)."""
    done = etl(tmp_path, option, number, exit_code=EXIT_USAGE, process=True)
    kind = "positive whole number" if option == "--batch-mb" else "whole number from 0 up"
    assert done.stderr.splitlines()[-1] == (
        f"etl.py: error: argument {option}: {number!r} is not a {kind}"
    )


def test_an_empty_data_option_is_refused_not_read_as_the_current_folder():
    """--data "$FEED" with FEED unset."""
    done = run_script("etl.py", "--data", "", check=False)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        EXIT_USAGE,
        "etl.py: error: argument --data: empty: name the folder, or the object store's URL",
    )


@pytest.mark.parametrize(("script", "prefix"), [("etl.py", "--f"), ("create_tables.py", "--w")])
def test_an_option_is_named_whole_never_by_its_first_letters(script, prefix):
    """--f is not --full-refresh, which empties the tables: an unknown argument, nothing done."""
    done = run_script(script, prefix, "1", check=False)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        EXIT_USAGE,
        f"{script}: error: unrecognized arguments: {prefix} 1",
    )


def test_jobs_beyond_four_per_cpu_are_refused_and_help_says_so(tmp_path):
    bound = etl_module.MAX_JOBS
    done = etl(tmp_path, "--jobs", str(bound + 1), exit_code=EXIT_USAGE, process=True)
    assert f"argument --jobs: {bound + 1} is more than {bound} (4 per CPU of this machine)" in (
        done.stderr
    )
    help_text = " ".join(run_script("etl.py", "--help").stdout.split())
    assert f"0 to {bound} (4 per CPU), and never more than there are log batches" in help_text
