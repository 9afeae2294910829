"""Any sequence of deliveries loads to the star a fresh load of the same files gives.

What the star is a function of: the latest version of every file ever delivered. A file deleted
from the folder keeps what it loaded (log rotation deletes delivered files), so it counts with
its last loaded version; so does a file emptied since it loaded records (a failed transfer),
or garbled: every record it holds now rejected (an error page saved in its place), or sent
again cut short where it loaded whole (gzip data a failed transfer cut; or text cut mid-line,
smaller than the version loaded: text that grows is a file still being written, and is read).
Where
several log files hold a play (user, session, item), the copy of the file first in path order
is the play, whatever order the files came in; users and instants follow the plays.

Seeded generators build sequences of operations on overlapping files: log files added new, as
whole copies of others in other folders, or repeating part of another (with other values for
some of its plays); log files shrunk, grown, edited, emptied, garbled, sent again cut short
and deleted (and delivered again), one folder's in UTF-16; song files added, changed, emptied,
garbled and deleted.
After each operation etl.py loads the folder into one database; a second database gets a fresh
load (create_tables, then etl) of the model folder: the current files, and the deleted, emptied,
garbled and cut files' versions that count. Their stars, manifests and kept copies must be the
same, the run must reconcile and pass its checks.
Batches and parse pieces are drawn at random for each load, so a fresh load is cut otherwise
than the loads it is compared with.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gzip
import io
import json
import os
import random
from pathlib import Path
from typing import NamedTuple

import pytest
from builders import (
    CREATEDB,
    T0,
    gzip_cut_holds,
    in_utf16,
    lines,
    load_lock_free,
    log_file,
    other_page,
    play_among_few_keys,
    requires,
    song,
)
from conftest import query, table_contents, using_database
from psycopg2 import sql as pgsql

import create_tables
import db
import etl
from cli import EXIT_OK
from contract import Limits

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

MODEL_DATABASE = "sparkify_model"

# Folders whose path-component order differs from their string order ('-' < '.' < '/').
LOG_PATHS = [
    "log_data/2018/11/a.json",
    "log_data/2018/11/b.json",
    "log_data/2018/11-b/a.json",
    "log_data/2018/11.b/a.json",
    "log_data/2018/11/late/a.json",
    "log_data/resent/a.json",
    "log_data/0-resent/b.json",
    "log_data/Z/b.json",
]
# The folder one producer writes UTF-16 text into (with a byte-order mark), whole or cut short.
UTF16_FOLDER = "log_data/Z/"
TITLES = [("Tune 0", "Band A", 100.5), ("Tune 1", "Band B", 200.25), ("Tune 2", "Band A", 300.0)]
ARTISTS = {"ARSEQ00000000001": "Band A", "ARSEQ00000000002": "Band B"}


# ================================================================ generating operations


def play(rng: random.Random) -> dict:
    """A play among few keys (3 users, 2 sessions, 8 items, 12 instants), so that files share
    plays, with values that differ from copy to copy (its gender drawn last, as it always was:
    a seed's files stay the same)."""
    title, artist, length = rng.choice(TITLES)
    record = play_among_few_keys(rng, 8, 12, song=title, artist=artist, length=length)
    return {**record, "gender": rng.choice(["F", "M"])}


def records(rng: random.Random, n: int) -> list[dict]:
    """n events: plays, and now and then a page other than NextSong."""
    return [
        other_page(rng.randrange(8), "Home", ts=T0 + rng.randrange(12) * 1000)
        if rng.random() < 0.15
        else play(rng)
        for _ in range(n)
    ]


def edited(rng: random.Random, record: dict) -> dict:
    """The record with one value changed: what a play says, when, or which play it is."""
    if record["page"] != "NextSong":
        return record
    field, choices = rng.choice(
        [
            ("level", ["free", "paid"]),
            ("firstName", ["Ada", "Grace", "Hedy"]),
            ("ts", [T0 + k * 1000 for k in range(12)]),
            ("itemInSession", list(range(8))),
            ("song", [t for t, _, _ in TITLES]),
        ]
    )
    return {**record, field: rng.choice(choices)}


def song_record(rng: random.Random, n: int) -> dict:
    """Song n of one of two artists, titled and timed like some plays (two songs may share a
    title, artist and duration: the smallest song_id is the one plays resolve to)."""
    title, _, duration = rng.choice(TITLES)
    artist_id = rng.choice(list(ARTISTS))
    return song(
        n,
        song_id=f"SOSEQ{n:013d}",
        artist_id=artist_id,
        artist_name=ARTISTS[artist_id],
        title=title,
        duration=duration,
        artist_location=rng.choice(["", "Berlin", "Lagos"]),
    )


SONG_CHANGES = {
    "title": ["Tune 0", "Tune 1", "Renamed"],
    "duration": [100.5, 200.25, 1.5],
    "year": [1999, 2001, 0],
    "artist_name": ["Band A", "Band B", "Band C"],
    "artist_location": ["", "Paris"],
    "artist_id": [*ARTISTS, "ARSEQ00000000003"],  # the song moves to another artist, or stays
}


def changed_song(rng: random.Random, record: dict) -> dict:
    """The song with one value changed (its song_id stays)."""
    field = rng.choice(list(SONG_CHANGES))
    return {**record, field: rng.choice(SONG_CHANGES[field])}


class Cut(NamedTuple):
    """A version cut short by a failed transfer: its text, or its gzip data, after at bytes;
    zipped: its text cut, then compressed whole (intact gzip data of text that ends mid-line)."""

    text: bool
    at: int
    zipped: bool = False


Version = tuple[list[dict], Cut | None]  # a file's records, and where its bytes are cut


@dataclasses.dataclass
class Folder:
    """The files as delivered, each as its records: log files, and song files (a song, or
    what replaced it); deleted files with their last version, and each file's last version
    loaded. A log file sent cut short is its records as gzip data or text cut after so many
    bytes (cut: a Cut, and loaded_cut for the version loaded)."""

    logs: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    songs: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    deleted: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    newline_at_end: dict[str, bool] = dataclasses.field(default_factory=dict)
    loaded: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    cut: dict[str, Cut] = dataclasses.field(default_factory=dict)
    loaded_cut: dict[str, Cut] = dataclasses.field(default_factory=dict)

    def file_bytes(self, path: str, model: bool) -> bytes:
        """The file as delivered; in the model, as the star holds it once the folder is loaded
        (kept). A song file holding its song is that song's JSON object."""
        return self.version_bytes(path, *(self.kept(path) if model else self.delivered(path)))

    def version_bytes(self, path: str, content: list[dict], cut: Cut | None) -> bytes:
        text = self.text(path, content)
        if cut is None:
            return written(path, text)
        if cut.text:
            delivered = written(path, text[: cut.at])
            return gzip.compress(delivered, mtime=0) if cut.zipped else delivered
        return gzip.compress(written(path, text), mtime=0)[: cut.at]

    def text(self, path: str, content: list[dict]) -> bytes:
        if path in self.newline_at_end:
            return (lines if self.newline_at_end[path] else log_file)(*content)
        return json.dumps(content[0]).encode() if usable(content) else log_file(*content)

    def delivered(self, path: str) -> tuple[list[dict], Cut | None]:
        return {**self.logs, **self.songs}[path], self.cut.get(path)

    def readable(self, path: str, content: list[dict], cut: Cut | None) -> list[dict]:
        """The records a version holds whole: those of the lines before the cut, if it is cut
        (the last one too where the cut leaves all of it)."""
        if cut is None:
            return content
        text = self.text(path, content)
        delivered = self.version_bytes(path, content, cut)
        have = text[: cut.at] if cut.text else text_of(path, gzip_cut_holds(delivered))
        *whole, last = have.split(b"\n")
        return content[: len(whole) + (last != b"" and last == text.split(b"\n")[len(whole)])]

    def usable(self, path: str, content: list[dict], cut: Cut | None) -> bool:
        return usable(self.readable(path, content, cut))

    def kept(self, path: str) -> tuple[list[dict], Cut | None]:
        """The version of a file the manifest and the star hold once the folder is loaded: the
        file as it is; a deleted file's, or an emptied one's, as last loaded; a garbled one's as
        last loaded if that version held a record not rejected; and a cut one's (cut_over) as
        last loaded if that version held one."""
        content = self.logs.get(path, self.songs.get(path))
        before, before_cut = self.loaded.get(path), self.loaded_cut.get(path)
        if content is None:
            return (self.deleted[path], None) if before is None else (before, before_cut)
        cut = self.cut.get(path)
        if before is not None and self.usable(path, before, before_cut):
            if self.cut_over(path, (content, cut), (before, before_cut)):
                return before, before_cut
            if not self.usable(path, content, cut):
                return before, before_cut
        return content, cut

    def cut_over(self, path: str, now: Version, then: Version) -> bool:
        """Whether the version now is cut short over the version loaded then, which was not
        damaged (no gzip cut): gzip data cut, or text that ends mid-line (no newline after its
        last line, which no brace closes; compressed or not) and is a smaller file than the
        version loaded."""
        cut, before_cut = now[1], then[1]
        if cut is None or (before_cut is not None and not before_cut.text):
            return False
        if not cut.text:
            return True
        delivered, loaded = self.version_bytes(path, *now), self.version_bytes(path, *then)
        mid_line = not self.text(path, now[0])[: cut.at].endswith((b"\n", b"}"))
        return mid_line and len(delivered) < len(loaded)

    def version_kept(self, path: str) -> list[dict]:
        return self.kept(path)[0]

    def was_loaded(self) -> None:
        kept = {path: self.kept(path) for path in [*self.logs, *self.songs]}
        self.loaded |= {path: list(content) for path, (content, _) in kept.items()}
        self.loaded_cut = {
            path: cut
            for path, cut in {**self.loaded_cut, **{p: c for p, (_, c) in kept.items()}}.items()
            if cut is not None
        }


def written(path: str, text: bytes) -> bytes:
    """A file's text as its producer writes it: UTF-8, or UTF-16 in UTF16_FOLDER."""
    return in_utf16(text) if path.startswith(UTF16_FOLDER) else text


def text_of(path: str, data: bytes) -> bytes:
    """The UTF-8 text of the first bytes of a file as its producer writes it (written), a last
    code unit cut short left out."""
    if not path.startswith(UTF16_FOLDER):
        return data
    units = data[len(codecs.BOM_UTF16_LE) :]
    return units[: len(units) // 2 * 2].decode("utf-16-le").encode()


def artist_of_songs(folder: Folder) -> dict[str, str]:
    """Each song_id's artist_id in the star once the folder is loaded."""
    return {
        record["song_id"]: record["artist_id"]
        for path in [*folder.songs, *folder.deleted]
        if path.startswith("song_data/")
        for record in folder.version_kept(path)
        if usable([record])
    }


def artist_moves(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """What each song that moved to another artist_id was to the artist it left."""
    moves = set()
    for song_id, artist_id in before.items():
        if after.get(song_id, artist_id) != artist_id:
            left = [s for s, a in after.items() if a == artist_id]
            smallest = song_id == min(s for s, a in before.items() if a == artist_id)
            moves.add("its last song" if not left else f"{'' if smallest else 'not '}its smallest")
    return moves


def garbage(n: int) -> dict:
    """A record etl.py rejects (an event without its instant), whatever edited does to it."""
    return {"page": "NextSong", "garbled": n}


def usable(content: list[dict]) -> bool:
    """Whether a file's content holds a record that is not rejected."""
    return any("garbled" not in record for record in content)


OPERATIONS = [
    "add new",
    "add copy",
    "add part",
    "shrink",
    "grow",
    "edit",
    "empty",
    "garble",
    "cut",
    "delete",
    "add song",
    "change song",
    "empty song",
    "garble song",
    "delete song",
]


def operate(rng: random.Random, folder: Folder) -> tuple[str, str]:
    """Apply one random operation to the folder: (which, what it did)."""
    logs, free = sorted(folder.logs), [p for p in LOG_PATHS if p not in folder.logs]
    songs = sorted(folder.songs)
    possible = {
        "add new": bool(free),
        "add copy": bool(logs and free),
        "add part": bool(logs and free),
        "shrink": bool(logs),
        "grow": bool(logs),
        "edit": bool(logs),
        "empty": bool(logs),
        "garble": bool(logs),
        "cut": bool(logs or free),
        "delete": bool(logs),
        "add song": True,
        "change song": bool(songs),
        "empty song": bool(songs),
        "garble song": bool(songs),
        "delete song": bool(songs),
    }
    which = rng.choice([op for op in OPERATIONS if possible[op]])
    if which == "add song":
        n = len(folder.songs) + sum(p.startswith("song_data/") for p in folder.deleted) + 1
        folder.songs[f"song_data/A/S/{n:04d}.json"] = [song_record(rng, n)]
        return which, f"add song {n}"
    if which.endswith(" song"):
        return which, operate_on_song(rng, folder, which, rng.choice(songs))
    if which.startswith("add "):
        path = rng.choice(free)  # it may be a deleted file's: delivered again
        folder.deleted.pop(path, None)
        folder.cut.pop(path, None)
        folder.newline_at_end[path] = rng.random() < 0.7
        if which == "add new":
            folder.logs[path] = records(rng, rng.randint(3, 10))
            return which, f"add {path}: new plays"
        source = rng.choice(logs)
        if which == "add copy":
            folder.logs[path] = list(folder.logs[source])
            return which, f"add {path}: a copy of {source}"
        part = [r for r in folder.logs[source] if rng.random() < 0.6]
        folder.logs[path] = [edited(rng, r) if rng.random() < 0.3 else r for r in part]
        return which, f"add {path}: part of {source}, some values changed"
    if which == "cut":
        return which, cut_short(rng, folder, logs, free)
    path = rng.choice(logs)
    content = folder.logs[path]
    folder.cut.pop(path, None)  # what comes next is whole
    if which == "delete":
        folder.deleted[path] = folder.logs.pop(path)
        return which, f"delete {path}"
    if which == "empty":  # a failed transfer
        folder.logs[path] = []
        return which, f"empty {path}"
    if which == "garble":  # an error page saved in its place, say
        folder.logs[path] = [garbage(n) for n in range(rng.randint(1, 3))]
        return which, f"garble {path}"
    if which == "shrink":
        if rng.random() < 0.5:
            folder.logs[path] = content[: rng.randrange(len(content) + 1)]
        else:
            folder.logs[path] = [r for r in content if rng.random() < 0.6]
        return which, f"shrink {path} to {len(folder.logs[path])} events"
    if which == "grow":
        donor = folder.logs[rng.choice(logs)]
        extra = records(rng, rng.randint(1, 4)) + rng.sample(donor, min(len(donor), 2))
        folder.logs[path] = content + extra
        return which, f"grow {path} by {len(extra)} events"
    folder.logs[path] = [edited(rng, r) if rng.random() < 0.4 else r for r in content]
    return which, f"edit {path}"


def cut_short(rng: random.Random, folder: Folder, logs: list[str], free: list[str]) -> str:
    """A log file sent again, perhaps changed, or a new one, whose gzip data or text a failed
    transfer cut short."""
    if free and (not logs or rng.random() < 0.3):
        path = rng.choice(free)  # it may be a deleted file's: delivered again
        folder.deleted.pop(path, None)
        folder.newline_at_end[path] = rng.random() < 0.7
        folder.logs[path] = records(rng, rng.randint(3, 10))
    else:
        path = rng.choice(logs)
        folder.logs[path] = [edited(rng, r) if rng.random() < 0.4 else r for r in folder.logs[path]]
    folder.cut.pop(path, None)
    plain = folder.text(path, folder.logs[path])
    text = rng.random() < 0.5 and len(plain) > 1  # an empty file's text cannot be cut
    zipped = text and rng.random() < 0.5
    whole = plain if text else gzip.compress(written(path, plain), mtime=0)
    folder.cut[path] = Cut(text, rng.randrange(1, len(whole)), zipped)
    what = "text, then gzipped whole" if zipped else "text" if text else "gzip data"
    return f"cut {path} after {folder.cut[path].at} bytes of its {what}"


def operate_on_song(rng: random.Random, folder: Folder, which: str, path: str) -> str:
    """A song file changed (from the song it last loaded: each song file's first version is a
    song, loaded at once), emptied, garbled or deleted."""
    if which == "change song":
        folder.songs[path] = [changed_song(rng, folder.version_kept(path)[0])]
        return f"change {path}: {folder.songs[path][0]}"
    if which == "delete song":
        folder.deleted[path] = folder.songs.pop(path)
    else:
        folder.songs[path] = [] if which == "empty song" else [garbage(0)]
    return f"{which.removesuffix(' song')} {path}"


def write_folder(root: Path, folder: Folder, deleted_too: bool, mtime_ns: int) -> None:
    """The folder on disk as delivered (deleted files absent), or as the model (deleted files
    present with their last version). Every file written gets a new mtime: a rewrite of the same
    size is always seen as changed."""
    files = [*folder.logs, *folder.songs, *(folder.deleted if deleted_too else ())]
    wanted = {p: folder.file_bytes(p, model=deleted_too) for p in files}
    for existing in root.rglob("*.json"):
        if existing.relative_to(root).as_posix() not in wanted:
            existing.unlink()
    for rel, content in wanted.items():
        target = root / rel
        if target.exists() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.utime(target, ns=(mtime_ns, mtime_ns))


# ================================================================ two databases


@pytest.fixture(scope="module")
def model_settings() -> db.Settings:
    """A second database on the tests' server, for the fresh loads."""
    base = db.Settings.from_env()
    create_tables.ensure_database(base)
    conn = db.connect(base)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (MODEL_DATABASE,))
            if cur.fetchone() is None:
                requires(CREATEDB, "a second database")
                cur.execute(
                    pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(MODEL_DATABASE))
                )
    finally:
        conn.close()
    return dataclasses.replace(
        base, url=db.as_url(db.options(base, MODEL_DATABASE)), libpq_env=False
    )


def random_limits(rng: random.Random) -> Limits:
    """Batches of a file or two (files read in parts) up to everything in one batch."""
    return Limits(
        song_batch_files=rng.choice([1, 3, 10_000]),
        log_batch_bytes=rng.choice([1500, 4000, 32 << 20]),
        parse_piece_bytes=rng.choice([700, 4 << 20]),
    )


def fresh_tables_in(settings: db.Settings) -> None:
    create_tables.ensure_database(settings)
    load_lock_free(settings.url)
    with contextlib.redirect_stdout(io.StringIO()):
        create_tables.create_tables(settings)


def load(settings: db.Settings, data: Path, limits: Limits) -> str:
    """etl.run on the data, which loads, reconciles and passes its checks (exit 0); its summary,
    to show where a later assertion fails."""
    load_lock_free(settings.url)
    report = etl.run(settings, data, jobs=0, progress=False, out=None, limits=limits)
    summary = "\n".join(report.lines())
    assert report.exit_code(strict=False) == EXIT_OK, summary
    return summary


def outcome(settings: db.Settings) -> dict:
    """The star, each file's manifest counts, and the copies kept of plays other files hold."""
    with using_database(settings.url):
        return {
            **table_contents(),
            "manifest": query(
                "SELECT path, records, loaded, skipped, duplicates, rejected FROM load_manifest "
                "ORDER BY path"
            ),
            "copies": query(
                "SELECT m.path, c.user_id, c.session_id, c.item_in_session, c.start_time, "
                "c.level, c.first_name, c.gender, c.song_title, c.artist_name, c.song_length "
                "FROM songplay_copies c JOIN load_manifest m USING (file_id) ORDER BY 1, 2, 3, 4"
            ),
        }


def differences(incremental: dict, fresh: dict) -> str:
    out = []
    for name in fresh:
        a, b = set(incremental[name]), set(fresh[name])
        if a != b:
            out.append(f"{name}: only incremental {sorted(a - b)}; only fresh {sorted(b - a)}")
    return "\n".join(out)


# ================================================================ the property

# The first 16 seeds, and after them (test_the_generated_sequences_hold_every_kind_of_operation):
# 73, the first to cut the gzip data of a file that loaded cut, a record not rejected among what
# it loaded; 75, the first to garble and to empty a file whose loaded version holds no such
# record; 94, the first to move an artist's smallest song of several; 117 and 295, the first to
# cut UTF-16 text so that it is kept and so that it is read; 539, the first to read text cut
# then gzipped whole; 1998, the first to cut a loaded file's text so that it is kept, with two
# song moves the others lack.
SEEDS, STEPS = [*range(16), 73, 75, 94, 117, 295, 539, 1998], 10


def sequence(seed: int) -> tuple[random.Random, Folder, list]:
    """The operations' generator (its own: the loads' batch sizes draw from another)."""
    return random.Random(seed), Folder(), []


@pytest.mark.parametrize("seed", SEEDS)
def test_any_sequence_of_deliveries_loads_to_what_a_fresh_load_of_its_files_gives(
    fresh_tables, model_settings, seed, tmp_path
):
    operations, folder, history = sequence(seed)
    cuts = random.Random(-seed - 1)
    settings = db.Settings.from_env()
    data, model = tmp_path / "data", tmp_path / "model"
    for step in range(STEPS):
        history.append(operate(operations, folder)[1])
        mtime = 1_600_000_000_000_000_000 + step * 1_000_000_000
        write_folder(data, folder, deleted_too=False, mtime_ns=mtime)
        write_folder(model, folder, deleted_too=True, mtime_ns=mtime)
        if not any(data.rglob("*.json")):
            continue
        summary = load(settings, data, random_limits(cuts))
        folder.was_loaded()
        fresh_tables_in(model_settings)
        load(model_settings, model, random_limits(cuts))
        incremental, fresh = outcome(settings), outcome(model_settings)
        assert incremental == fresh, (
            f"seed {seed}, after:\n  "
            + "\n  ".join(history)
            + f"\n{differences(incremental, fresh)}\n{summary}"
        )


def test_the_generated_sequences_hold_every_kind_of_operation():
    """The seeds above, together, add, copy, repeat part of, shrink, grow, edit, empty, garble,
    cut and delete log files, and add, change, empty, garble and delete song files; they garble
    and empty a log file whose loaded version holds a record not rejected, and one whose loaded
    version holds none; they cut the gzip data of a log file whose loaded version holds such a
    record and was whole, and of one whose loaded version holds one and was cut; they cut such
    a file's text, sent plain or gzipped whole, both so that it is kept and so that it is read;
    in the UTF-16 folder they cut text sent plain so that it is kept and so that it is read,
    text gzipped whole so that it is kept, and gzip data; they move a song to another
    artist that was its artist's last song, its smallest of several, and neither (a change of
    SEEDS or STEPS must keep it so)."""
    done, unusable_of, cut_over, moves = set(), set(), set(), set()
    for seed in SEEDS:
        operations, folder, _ = sequence(seed)
        for _ in range(STEPS):
            artists_before = artist_of_songs(folder)
            which, what = operate(operations, folder)
            done.add(which)
            path = what.split()[1]
            if which in ("garble", "empty"):
                unusable_of.add((which, usable(folder.loaded[path])))
            before, before_cut = folder.loaded.get(path), folder.loaded_cut.get(path)
            if which == "cut" and before and folder.usable(path, before, before_cut):
                now = folder.delivered(path)
                kept = folder.cut_over(path, now, (before, before_cut))
                utf16 = ", UTF-16" if path.startswith(UTF16_FOLDER) else ""
                form = ("text, gzipped" if now[1].zipped else "text") + utf16
                cut_over.add(
                    (form, "kept" if kept else "read")
                    if now[1].text
                    else ("gzip" + utf16, "over whole" if before_cut is None else "over cut")
                )
            folder.was_loaded()
            moves |= artist_moves(artists_before, artist_of_songs(folder))
    assert done == set(OPERATIONS)
    assert unusable_of == {("garble", True), ("garble", False), ("empty", True), ("empty", False)}
    assert cut_over == {
        ("gzip", "over whole"),
        ("gzip", "over cut"),
        ("text", "kept"),
        ("text", "read"),
        ("text, gzipped", "kept"),
        ("text, gzipped", "read"),
        ("text, UTF-16", "kept"),
        ("text, UTF-16", "read"),
        ("text, gzipped, UTF-16", "kept"),
        ("gzip, UTF-16", "over whole"),
    }
    assert moves == {"its last song", "its smallest", "not its smallest"}
