"""Load Sparkify's song and log JSON into the star schema.

A record's way from file to table:
  1. ``plan``            lists the files under song_data/ and log_data/ that the manifest has not
                         seen as they are now, and cuts them into batches;
  2. ``prepare_batch``   (in a worker process) reads each file, parses it (``parse_song_file``,
                         ``parse_log_file``), checks each record (``valid_songs``,
                         ``valid_events``), transforms (``song_rows``, ``play_rows``,
                         ``time_table``, ``users_table``) and renders staging tables as CSV;
  3. ``load_batch``      COPYs that CSV into temporary staging tables and merges it into the star
                         with set-based SQL from sql_queries.py, with the batch's manifest and
                         rejects, in one transaction;
  4. ``post_load_checks`` verifies keys, references and counts; ``print_summary`` reports.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib.util
import io
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import ftfy
import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extras
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
from tqdm import tqdm

import db
import sql_queries as sql


def lazy_import(name: str):
    """The module, executed on first use."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Run as a command, etl.py imports pandas when a batch first needs it: a re-run with nothing new
# never pays that half second, a third of such a run. Imported as a module (notebooks, tests,
# the parse worker) it imports pandas as usual: before Python 3.12.3 a lazily loaded module is not
# safe to touch from several threads while it loads.
if __name__ == "__main__":
    pd = lazy_import("pandas")
else:
    import pandas as pd

SONG_BATCH_FILES = 10_000
LOG_BATCH_BYTES = 32 * 1024 * 1024
PARSE_PIECE_BYTES = 4 * 1024 * 1024
RAW_TEXT_LIMIT = 1000
REJECT_EXAMPLES = 5
INT32 = (-(2**31), 2**31 - 1)
TS_RANGE = (0, 253_402_300_799_999)  # epoch ms up to the end of year 9999

EXIT_OK, EXIT_FAILED = 0, 1

# The log's song and artist text is UTF-8 decoded as Latin-1 and encoded again; repair only that,
# leaving quotes, ligatures and Unicode normalisation exactly as recorded.
MOJIBAKE_ONLY = ftfy.TextFixerConfig(
    unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False,
    fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
    remove_control_chars=False, normalization=None, explain=False)

SONG_FIELDS = {  # field: (kind, required)
    "song_id": ("text", True), "title": ("text", True), "artist_id": ("text", True),
    "artist_name": ("text", True), "duration": ("number", True), "year": ("int", False),
    "artist_location": ("text", False), "artist_latitude": ("number", False),
    "artist_longitude": ("number", False),
}
EVENT_FIELDS = {  # field: (kind, required on every event, required on a play)
    "ts": ("int", True, True), "page": ("text", True, True), "userId": ("text", False, True),
    "sessionId": ("int", False, True), "itemInSession": ("int", False, True),
    "level": ("text", False, True), "song": ("text", False, True), "artist": ("text", False, False),
    "length": ("number", False, False), "firstName": ("text", False, False),
    "lastName": ("text", False, False), "gender": ("text", False, False),
    "location": ("text", False, False), "userAgent": ("text", False, False),
}
ARROW_TYPES = {"text": pa.string(), "int": pa.int64(), "number": pa.float64()}
EVENT_SCHEMA = pa.schema([(name, ARROW_TYPES[spec[0]]) for name, spec in EVENT_FIELDS.items()])

STAGE_COLUMNS = {
    "stage_songs": ["path", "line", "song_id", "title", "artist_id", "year", "duration",
                    "artist_name", "artist_location", "artist_latitude", "artist_longitude"],
    "stage_plays": ["path", "start_time", "user_id", "level", "song_title", "artist_name",
                    "song_length", "session_id", "item_in_session", "location", "user_agent"],
    "stage_users": ["user_id", "first_name", "last_name", "gender", "level", "start_time",
                    "session_id", "item_in_session"],
    "stage_time": ["start_time", "hour", "day", "week", "month", "year", "weekday"],
    "stage_manifest": ["path", "kind", "size_bytes", "mtime_ns", "sha256", "records", "loaded",
                       "skipped", "duplicates", "rejected"],
    "stage_rejects": ["path", "line", "reason", "raw"],
}


class UsageError(db.UserError):
    """A problem with what the user asked for, such as a data folder that is not there."""


# ================================================================ pure transforms

REJECT_COLUMNS = ["path", "line", "reason", "raw"]


def reject_frame(rows: Iterable[tuple]) -> pd.DataFrame:
    """Rejects as rows of stage_rejects; line is None for a problem with a whole file."""
    frame = pd.DataFrame(list(rows), columns=REJECT_COLUMNS)
    frame["line"] = frame["line"].astype("Int64")
    frame["raw"] = frame["raw"].astype("object").map(storable)
    return frame


def storable(raw) -> str | None:
    """Raw text cut to a sane length; PostgreSQL text holds neither NUL nor invalid UTF-8."""
    if raw is None or raw is pd.NA:
        return None
    if isinstance(raw, bytes):
        raw = raw[:RAW_TEXT_LIMIT * 4].decode("utf-8", errors="replace")
    return raw[:RAW_TEXT_LIMIT].replace("\x00", "\\u0000")


_TYPE_NAMES = {"text": "a string", "int": "an integer", "number": "a number"}


def _checked(column: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """(values of the right type, mask of values present but of a wrong type).

    Columns straight from Arrow are typed already; columns built from mixed JSON (the slow path
    for a damaged file) hold Python objects, checked one by one."""
    present = column.notna()
    if kind == "text" and column.dtype != object:
        return column.astype("str"), present & False
    if kind != "text" and pd.api.types.is_numeric_dtype(column.dtype):
        return column.astype("Int64" if kind == "int" else "float64"), present & False
    if kind == "text":
        good = column.map(lambda v: isinstance(v, str))
    elif kind == "int":
        good = column.map(lambda v: isinstance(v, int) and not isinstance(v, bool))
    else:
        good = column.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    wrong = present & ~good.astype(bool)
    kept = column.where(~wrong)
    if kind == "text":
        return kept.astype("str"), wrong
    return pd.to_numeric(kept).astype("Int64" if kind == "int" else "float64"), wrong


def _typed(records: pd.DataFrame, fields: dict) -> tuple[pd.DataFrame, list, list]:
    """Typed columns, and per field the rules every typed value obeys: present values of the
    right type, text without NUL (which PostgreSQL cannot store)."""
    frame = records[["path", "line"]].copy()
    missing, problems = {}, []
    for field, spec in fields.items():
        raw = records[field] if field in records else pd.Series(None, index=records.index,
                                                                dtype="object")
        frame[field], wrong = _checked(raw, spec[0])
        missing[field] = frame[field].isna() & ~wrong
        if spec[0] == "text":
            missing[field] |= frame[field] == ""
        problems.append((field, f"{field} is not {_TYPE_NAMES[spec[0]]}", wrong))
        if spec[0] == "text" and raw.dtype == object:
            nul = frame[field].str.contains("\x00", regex=False).fillna(False)
            problems.append((field, f"{field} contains a NUL character", nul))
    return frame, missing, problems


def _first_failure(index: pd.Index, rules: list[tuple[str, pd.Series]]) -> pd.Series:
    """The first failing rule's reason per row ('' where all pass)."""
    reason = pd.Series("", index=index, dtype="object")
    undecided = pd.Series(True, index=index)
    for text, failed in rules:
        hit = undecided & failed.fillna(False).astype(bool)
        if hit.any():
            reason[hit] = text
            undecided &= ~hit
    return reason


def _split(frame, records, reason) -> tuple[pd.DataFrame, pd.DataFrame]:
    bad = reason != ""
    rejects = pd.DataFrame({"path": records.loc[bad, "path"], "line": records.loc[bad, "line"],
                            "reason": reason[bad], "raw": records.loc[bad, "raw"]})
    return frame[~bad], reject_frame(rejects.itertuples(index=False))


def valid_songs(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed song records that satisfy the schema, and rejects for the rest."""
    frame, missing, problems = _typed(records, SONG_FIELDS)
    rules = [(f"{field} missing", missing[field])
             for field, (_, required) in SONG_FIELDS.items() if required]
    rules += [(reason, failed) for _, reason, failed in problems]
    rules += [("duration is negative", frame["duration"] < 0),
              ("year is negative", frame["year"] < 0),
              ("year out of range", ~frame["year"].between(*INT32).fillna(True))]
    good, rejects = _split(frame, records, _first_failure(frame.index, rules))
    return good.reset_index(drop=True), rejects


def song_rows(songs: pd.DataFrame) -> pd.DataFrame:
    """Rows of stage_songs: year 0 means unknown, an empty location is no location."""
    out = songs.copy()
    out["year"] = out["year"].mask(out["year"] == 0)
    out["artist_location"] = out["artist_location"].mask(out["artist_location"] == "")
    return out[STAGE_COLUMNS["stage_songs"]]


def valid_events(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(typed plays, rejects, per path the events skipped by design: pages other than NextSong)."""
    frame, missing, problems = _typed(records, EVENT_FIELDS)
    every = [(f"{f} missing", missing[f]) for f, spec in EVENT_FIELDS.items() if spec[1]]
    play = [(f"{f} missing on a play", missing[f])
            for f, spec in EVENT_FIELDS.items() if spec[2] and not spec[1]]
    for field, reason, failed in problems:
        (every if EVENT_FIELDS[field][1] else play).append((reason, failed))
    every.append(("ts out of range", ~frame["ts"].between(*TS_RANGE).fillna(True)))
    play += [
        ("userId is not numeric", ~frame["userId"].str.fullmatch(r"\d{1,9}").fillna(True)),
        ("sessionId out of range", ~frame["sessionId"].between(*INT32).fillna(True)),
        ("itemInSession out of range", ~frame["itemInSession"].between(*INT32).fillna(True)),
        ("level is not 'free' or 'paid'",
         ~frame["level"].isin(["free", "paid"]) & ~missing["level"] & frame["level"].notna()),
    ]
    is_play = (frame["page"] == "NextSong").fillna(False).astype(bool)
    reason = _first_failure(frame.index, every)
    reason = reason.mask((reason == "") & is_play, _first_failure(frame.index, play))
    good, rejects = _split(frame, records, reason)
    plays = good[is_play[good.index]].reset_index(drop=True)
    skipped = good.loc[~is_play[good.index], "path"].value_counts()
    return plays, rejects, skipped


@functools.lru_cache(maxsize=100_000)
def repair_mojibake(text: str) -> str:
    """Peel off every layer of UTF-8-read-as-Latin-1 (exact, so it goes first; ftfy calls a
    lone 'Ã¥' plausible and stops a layer short), then let ftfy mend what else is broken
    (Windows-1252 mix-ups and the like)."""
    while True:
        try:
            peeled = text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            break
        if peeled == text:
            break
        text = peeled
    return ftfy.fix_text(text, MOJIBAKE_ONLY)


def repair_text(values: pd.Series) -> pd.Series:
    """Repair the log's text; only non-ASCII values pay for it, each distinct one once (titles
    recur from batch to batch, hence the cache on repair_mojibake)."""
    suspect = values.notna() & ~values.str.isascii().fillna(True).astype(bool)
    if not suspect.any():
        return values
    repaired = values.copy()
    repaired[suspect] = values[suspect].map(repair_mojibake)
    return repaired


def unquoted(values: pd.Series) -> pd.Series:
    """The log wraps user agents in double quotes: drop one pair where it wraps the value."""
    quoted = (values.str.startswith('"') & values.str.endswith('"') & (values.str.len() > 1))
    quoted = quoted.fillna(False).astype(bool)
    return values.mask(quoted, values.str.slice(1, -1))


def _blank_to_null(values: pd.Series) -> pd.Series:
    return values.mask(values == "")


def play_rows(plays: pd.DataFrame) -> pd.DataFrame:
    """Rows of stage_plays (plus user names): UTC instants, integer ids, repaired song and artist
    text, user agents without their wrapping quotes."""
    return pd.DataFrame({
        "path": plays["path"],
        "start_time": pd.to_datetime(plays["ts"].astype("int64"), unit="ms", utc=True),
        "user_id": plays["userId"].astype("int64"),
        "level": plays["level"],
        "song_title": repair_text(plays["song"]),
        "artist_name": _blank_to_null(repair_text(plays["artist"])),
        "song_length": plays["length"],
        "session_id": plays["sessionId"].astype("int64"),
        "item_in_session": plays["itemInSession"].astype("int64"),
        "location": _blank_to_null(plays["location"]),
        "user_agent": _blank_to_null(unquoted(plays["userAgent"])),
        "first_name": _blank_to_null(plays["firstName"]),
        "last_name": _blank_to_null(plays["lastName"]),
        "gender": _blank_to_null(plays["gender"]),
    })


def time_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct play instant, parts in UTC; week is ISO 8601, weekday 1 = Monday."""
    start = pd.Series(rows["start_time"].unique()).sort_values(ignore_index=True)
    iso = start.dt.isocalendar()
    return pd.DataFrame({
        "start_time": start, "hour": start.dt.hour, "day": start.dt.day,
        "week": iso["week"].astype("int64"), "month": start.dt.month, "year": start.dt.year,
        "weekday": iso["day"].astype("int64"),
    })


PLAY_ORDER = ["start_time", "session_id", "item_in_session"]
PLAY_KEY = ["user_id", "session_id", "item_in_session"]


def users_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Each user as of their latest play (by time, then session, then item), with that play's
    position so the database can tell whether an already-loaded play is later still."""
    latest = rows.sort_values(PLAY_ORDER, kind="stable").drop_duplicates("user_id", keep="last")
    return latest[STAGE_COLUMNS["stage_users"]].sort_values("user_id", ignore_index=True)


def dedupe_plays(rows: pd.DataFrame) -> pd.DataFrame:
    """A play is (user, session, item): the first file in path order keeps it."""
    return rows[~rows.duplicated(PLAY_KEY, keep="first")]


# ================================================================ parsing files (bytes in)


def raw_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


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


def records_frame(records: list[dict], fields: Iterable[str]) -> pd.DataFrame:
    """Object columns, so that values of a wrong type survive to be reported."""
    names = [*fields, "path", "line", "raw"]
    return pd.DataFrame({f: pd.Series([r.get(f) for r in records], dtype="object")
                         for f in names})


def parse_song_file(data: bytes, path: str) -> tuple[list[dict], list[tuple]]:
    """A song file holds one object; an array of objects, or one object per line, is read too."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        records, rejects = _decode_lines(enumerate(raw_lines(data), 1), path)
    else:
        items = value if isinstance(value, list) else [value]
        records, rejects = _decode_lines(
            ((1, data if len(items) == 1 else orjson.dumps(item)) for item in items), path)
    if not records and not rejects:
        rejects = [(path, None, "empty file", None)]
    return records, rejects


def _fast_events(data: bytes, path: str) -> pd.DataFrame | None:
    """Arrow's multi-threaded JSON reader, when the file is clean enough for it to be exact."""
    if b"\\u0000" in data or b"\x00" in data or b"\\ud" in data.lower() or b"\r" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    options = pyarrow.json.ParseOptions(explicit_schema=EVENT_SCHEMA,
                                        unexpected_field_behavior="ignore")
    frames = []
    for piece in line_aligned_pieces(data, PARSE_PIECE_BYTES):
        try:
            table = pyarrow.json.read_json(io.BytesIO(piece), parse_options=options)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        if table.num_rows != piece.count(b"\n") + (not piece.endswith(b"\n")):
            return None
        frames.append(table.to_pandas())
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame["path"], frame["line"], frame["raw"] = path, range(1, len(frame) + 1), None
    return frame


def line_aligned_pieces(data: bytes, size: int) -> Iterator[bytes]:
    """data cut after a newline every size bytes or so: a big file is parsed piece by piece,
    so that its parse costs what a batch of small files costs."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + size - 1) + 1 or len(data)
        yield data[start:end]
        start = end


def parse_log_file(data: bytes, path: str) -> tuple[pd.DataFrame, list[tuple]]:
    """JSON lines of events; a file with any problem is re-read line by line to report each."""
    frame = _fast_events(data, path) if data.strip() else None
    if frame is not None:
        return frame, []
    records, rejects = _decode_lines(enumerate(raw_lines(data), 1), path)
    if not records and not rejects:
        rejects = [(path, None, "empty file", None)]
    return records_frame(records, EVENT_FIELDS), rejects


# ================================================================ batches (worker side)


@dataclasses.dataclass
class FileTask:
    path: str          # relative to the data folder, with forward slashes
    location: str      # where to read it
    size: int
    mtime_ns: int
    known_sha256: str | None


@dataclasses.dataclass
class FileResult:
    path: str
    kind: str
    size: int
    mtime_ns: int
    sha256: str | None = None
    records: int = 0
    accepted: int = 0
    skipped: int = 0
    duplicates: int = 0
    rejected: int = 0
    status: str = "new"  # new, changed, unchanged, unreadable

    @property
    def to_load(self) -> bool:
        """Whether this file's content goes to the database (it is new or has changed)."""
        return self.status in ("new", "changed")


@dataclasses.dataclass
class Batch:
    kind: str
    tasks: list[FileTask]
    files: list[FileResult]
    copies: dict[str, bytes]
    file_problems: int


def render_csv(frame: pd.DataFrame | None, columns: list[str]) -> bytes:
    """COPY ... (FORMAT csv) input: NULL unquoted, empty string quoted, floats round-trip."""
    if frame is None or frame.empty:
        return b""
    frame = frame[columns].copy()
    for name in frame.columns:
        # Instants go as naive UTC, read back as UTC (see load_batch): Arrow writes those ten
        # times faster than zoned ones.
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            frame[name] = frame[name].dt.tz_convert("UTC").dt.tz_localize(None)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    out = io.BytesIO()
    pyarrow.csv.write_csv(table, out, pyarrow.csv.WriteOptions(include_header=False))
    return out.getvalue()


def read_file(task: FileTask, kind: str) -> tuple[FileResult, bytes | None]:
    """The file's bytes, unless it cannot be read or its content is what the manifest has."""
    result = FileResult(task.path, kind, task.size, task.mtime_ns,
                        status="new" if task.known_sha256 is None else "changed")
    try:
        with open(task.location, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        result.status = f"unreadable: {exc.strerror}"
        return result, None
    result.sha256 = hashlib.sha256(data).hexdigest()
    result.size = len(data)
    if result.sha256 == task.known_sha256:
        result.status = "unchanged"
        return result, None
    return result, data


def _fill_raw(rejects: pd.DataFrame, sources: dict[str, bytes]) -> pd.DataFrame:
    """Rejects found in files read the fast way get their raw line from the file's bytes."""
    need = rejects["raw"].isna() & rejects["line"].notna()
    if need.any():
        lines = {p: raw_lines(sources[p]) for p in rejects.loc[need, "path"].unique()}
        rejects.loc[need, "raw"] = [storable(lines[p][n - 1]) for p, n in
                                    rejects.loc[need, ["path", "line"]].itertuples(index=False)]
    return rejects


def prepare_batch(kind: str, tasks: list[FileTask]) -> Batch:
    """Everything between the files and the database for one batch; runs in a worker."""
    results, sources, parsed, problems = [], {}, [], []
    for task in tasks:
        result, data = read_file(task, kind)
        results.append(result)
        if result.status.startswith("unreadable"):
            problems.append((task.path, None, f"cannot read file: {result.status[12:]}", None))
            result.status = "unreadable"
        if data is None:
            continue
        sources[task.path] = data
        records, rejects = (parse_song_file if kind == "song" else parse_log_file)(data, task.path)
        parsed.append(records)
        problems += rejects
    if kind == "song":
        records = records_frame([r for file in parsed for r in file], SONG_FIELDS)
        good, invalid = valid_songs(records)
        skipped = pd.Series(dtype="int64")
        rows = song_rows(good)
        copies = {"stage_songs": render_csv(rows, STAGE_COLUMNS["stage_songs"])}
    else:
        records = pd.concat(parsed, ignore_index=True) if parsed else \
            records_frame([], EVENT_FIELDS)
        good, invalid, skipped = valid_events(records)
        rows = dedupe_plays(play_rows(good))
        copies = {"stage_plays": render_csv(rows, STAGE_COLUMNS["stage_plays"]),
                  "stage_users": render_csv(users_table(rows), STAGE_COLUMNS["stage_users"]),
                  "stage_time": render_csv(time_table(rows), STAGE_COLUMNS["stage_time"])}
    rejects = _fill_raw(pd.concat([reject_frame(problems), invalid], ignore_index=True), sources)
    # Counts per file, each counted once per batch and read from a dict: a value_counts() or a
    # Series lookup per file made a 10,000-file song batch cost seconds.
    line_rejects = rejects[rejects["line"].notna()]["path"].value_counts().to_dict()
    records_per_file = records["path"].value_counts().to_dict()
    accepted = good["path"].value_counts().to_dict()
    invalid_per_file = invalid["path"].value_counts().to_dict()
    skipped = skipped.to_dict()
    loaded = [r for r in results if r.to_load]
    for r in loaded:
        r.rejected = int(line_rejects.get(r.path, 0))
        r.skipped = int(skipped.get(r.path, 0))
        r.accepted = int(accepted.get(r.path, 0))
        r.records = int(records_per_file.get(r.path, 0)) + r.rejected - int(
            invalid_per_file.get(r.path, 0))
    copies["stage_manifest"] = manifest_csv(kind, loaded)
    copies["stage_rejects"] = render_csv(rejects, REJECT_COLUMNS)
    return Batch(kind, tasks, results, copies, int(rejects["line"].isna().sum()))


def manifest_csv(kind: str, files: list[FileResult]) -> bytes:
    manifest = pd.DataFrame([{
        "path": r.path, "kind": kind, "size_bytes": r.size, "mtime_ns": r.mtime_ns,
        "sha256": r.sha256, "records": r.records, "loaded": r.accepted if kind == "song" else 0,
        "skipped": r.skipped, "duplicates": 0, "rejected": r.rejected,
    } for r in files], columns=STAGE_COLUMNS["stage_manifest"])
    return render_csv(manifest, STAGE_COLUMNS["stage_manifest"])


def refused_batch(batch: Batch, error: str) -> Batch:
    """A one-file batch the database refused: every record of the file is recorded as rejected,
    so that one file never stops a run and the manifest does not retry it until it changes."""
    loaded = [r for r in batch.files if r.to_load]
    problems = []
    for r in loaded:
        r.rejected, r.accepted, r.skipped = r.records, 0, 0
        problems.append((r.path, None, f"the database refused this file: {error}", None))
    copies = {"stage_manifest": manifest_csv(batch.kind, loaded),
              "stage_rejects": render_csv(reject_frame(problems), REJECT_COLUMNS)}
    return Batch(batch.kind, batch.tasks, batch.files, copies, len(problems))


def _prepare(args: tuple[str, list[FileTask]]) -> Batch:
    return prepare_batch(*args)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a SIGKILLed etl.py leaves no orphan parsing on."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def prepared(batches: list[tuple[str, list[FileTask]]], jobs: int) -> Iterator[Batch]:
    """Batches in order; with jobs > 0 the next ones are parsed in worker processes while the
    current one loads, never more than jobs + 1 ahead (memory stays bounded)."""
    if jobs <= 0:
        yield from map(_prepare, batches)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                                initializer=_exit_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        pending = []
        for item in batches:
            pending.append(pool.submit(_prepare, item))
            if len(pending) > jobs:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


# ================================================================ planning (files in)


FOLDERS = {"song": "song_data", "log": "log_data"}


def walk(data_dir: Path, kind: str) -> list[Path]:
    """The JSON files of one kind, recursively, in sorted order."""
    folder = data_dir / FOLDERS[kind]
    return [Path(p) for p in _scan(str(folder))] if folder.is_dir() else []


def has_files(data_dir: Path, kind: str) -> bool:
    """Whether walk() would find anything, without listing (and sorting) the whole tree."""
    folder = data_dir / FOLDERS[kind]
    return folder.is_dir() and next(folder.rglob("*.json"), None) is not None


def _scan(folder: str) -> list[str]:
    """walk()'s files as strings, in the same order (by path components; symlinked folders are
    not followed, as Path.rglob does not), without a Path object per file."""
    found, stack = [], [folder]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                if entry.name.endswith(".json"):  # a folder named *.json too, as rglob finds it
                    found.append(entry.path)
    return sorted(found, key=lambda p: p.split(os.sep))


def plan(data_dir: Path, kind: str, known: dict[str, tuple[int, int, str]]):
    """(batches of files to read, files unchanged since their manifest entry by size and mtime)."""
    tasks, unchanged = [], 0
    name = FOLDERS[kind]
    folder = str(data_dir / name)
    for location in _scan(folder) if os.path.isdir(folder) else []:
        rel = name + "/" + location[len(folder) + 1:].replace(os.sep, "/")
        try:
            st = os.stat(location)
        except OSError:
            st = None
        seen = known.get(rel)
        if st and seen and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
            unchanged += 1
            continue
        tasks.append(FileTask(rel, str(location), st.st_size if st else 0,
                              st.st_mtime_ns if st else 0, seen[2] if seen else None))
    # A log batch stays under LOG_BATCH_BYTES (unless one file alone is bigger): memory then
    # depends on that bound, not on how big the files happen to be.
    batches, current, size = [], [], 0
    for task in tasks:
        if current and ((kind == "song" and len(current) >= SONG_BATCH_FILES) or
                        (kind == "log" and size + task.size > LOG_BATCH_BYTES)):
            batches.append((kind, current))
            current, size = [], 0
        current.append(task)
        size += task.size
    if current:
        batches.append((kind, current))
    return batches, unchanged


# ================================================================ loading (database side)


def copy_stage(cur, table: str, payload: bytes) -> None:
    if payload:
        cur.copy_expert(sql.copy_into.format(table=table), io.BytesIO(payload))


def load_batch(conn, run_id: int, batch: Batch) -> int:
    """One transaction: staging, merge, manifest and rejects commit together or not at all.
    Returns how many plays it resolved to a song."""
    touched = [r for r in batch.files if r.status == "unchanged"]
    loaded = {r.path: r for r in batch.files if r.to_load}
    resolved_plays = 0
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.staging_time_zone)
        distributed = db.distributed(cur)
        if distributed and batch.kind == "log":
            cur.execute(sql.citus_sequential)  # reference table writes follow shard writes
        for table, payload in batch.copies.items():
            if distributed and table == "stage_plays":
                if payload:
                    cur.copy_expert(sql.stage_plays_copy_citus, io.BytesIO(payload))
            else:
                copy_stage(cur, table, payload)
        if touched:
            psycopg2.extras.execute_batch(cur, sql.manifest_touch, [
                {"path": r.path, "size_bytes": r.size, "mtime_ns": r.mtime_ns} for r in touched])
        params = {"run_id": run_id}
        if batch.kind == "song":
            cur.execute(sql.manifest_upsert, params)
            cur.execute(sql.artists_upsert)
            cur.execute(sql.songs_upsert)
            cur.execute(sql.songplays_resolve_new_songs)
            resolved_plays = cur.rowcount
        else:
            # Only a changed file can have plays loaded already; new files have none to take back.
            reloading = any(r.status == "changed" for r in batch.files)
            if reloading:
                cur.execute(sql.songplays_delete_reloaded)
            cur.execute(sql.manifest_upsert, params)
            time_insert = sql.time_insert_citus if distributed else sql.time_insert
            cur.execute(time_insert)
            users_update = sql.users_update_citus if distributed else sql.users_update
            cur.execute(users_update)
            cur.execute(sql.users_insert)
            inserted = {}
            if batch.copies.get("stage_plays"):
                if distributed:
                    inserted = merge_plays_citus(cur, list(loaded))
                else:
                    cur.execute(sql.songplays_insert)
                    inserted = {path: (n, resolved) for path, n, resolved in cur.fetchall()}
            updates = []
            for path, result in loaded.items():
                n, resolved = inserted.get(path, (0, 0))
                result.duplicates = result.accepted - n
                resolved_plays += resolved
                updates.append({"path": path, "loaded": n, "duplicates": result.duplicates})
            psycopg2.extras.execute_batch(cur, sql.manifest_set_loaded, updates)
            if reloading:
                cur.execute(sql.users_relevel)
                cur.execute(sql.users_delete_orphans)
                cur.execute(sql.time_delete_orphans)
        cur.execute(sql.rejects_insert, params)
    return resolved_plays


def merge_plays_citus(cur, paths: list[str]) -> dict[str, tuple[int, int]]:
    """songplays_insert on Citus, run on the shards from stage_plays_citus: (plays inserted, of
    them resolved to a song) per path. The staged plays go with the batch's transaction."""
    cur.execute(sql.manifest_file_ids, {"paths": paths})
    paths, file_ids = zip(*cur.fetchall())
    cur.execute(sql.songplays_insert_citus, {"paths": list(paths), "file_ids": list(file_ids)})
    cur.execute(sql.songplays_inserted_citus)
    inserted = {path: (n, resolved) for path, n, resolved in cur.fetchall()}
    cur.execute(sql.stage_plays_done_citus)
    return inserted


def load_or_split(conn, run_id: int, batch: Batch) -> Iterator[tuple[Batch, int]]:
    """Load a batch; one the database refuses (a value no check foresaw) is loaded again file by
    file, and a single file it refuses is recorded as rejected whole."""
    try:
        yield batch, load_batch(conn, run_id, batch)
    except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
        if len(batch.tasks) > 1:
            for task in batch.tasks:
                yield from load_or_split(conn, run_id, prepare_batch(batch.kind, [task]))
        else:
            refused = refused_batch(batch, db.first_line(exc))
            yield refused, load_batch(conn, run_id, refused)


def set_aside_for_bulk_load(conn, new_log_bytes: int) -> bool:
    """Drop songplays' foreign keys and file index when this run's new log files are at least as
    big as the table: checking each row as it goes in would cost as much as the insert. False
    when they stay: a small load, or other sessions holding the tables (never interrupted)."""
    with db.managed_cursor(conn) as cur:
        distributed = db.distributed(cur)
        size = sql.songplays_size_citus if distributed else sql.songplays_size
        cur.execute(size)
        if new_log_bytes == 0 or new_log_bytes < cur.fetchone()[0]:
            return False
    try:
        with db.managed_cursor(conn) as cur:
            cur.execute(sql.set_aside_lock_timeout)
            if distributed:
                cur.execute(sql.citus_sequential)
            for _, drop in sql.SONGPLAYS_SET_ASIDE.values():
                cur.execute(drop)
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected):
        return False
    return True


def restore_set_aside(conn) -> tuple[list[str], list[str]]:
    """Add back what a bulk load set aside, this run's or an interrupted run's, each in its own
    transaction: every foreign key is checked over the whole table in one join. Returns (added
    back, problems); what could not come back stays missing for the next run to try again."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.set_aside_present, {"names": list(sql.SONGPLAYS_SET_ASIDE)})
        present = {row[0] for row in cur.fetchall()}
        distributed = db.distributed(cur)
    restored, problems = [], []
    for name, (create, _) in sql.SONGPLAYS_SET_ASIDE.items():
        if name in present:
            continue
        try:
            with db.managed_cursor(conn) as cur:
                cur.execute(sql.restore_lock_timeout)
                cur.execute(create)
        except psycopg2.errors.LockNotAvailable:
            problems.append(f"{name}: another session kept a conflicting lock on its tables")
        except psycopg2.errors.DeadlockDetected:
            problems.append(f"{name}: it deadlocked with another session's writes")
        except psycopg2.IntegrityError as exc:
            problems.append(f"{name}: {db.first_line(exc)}")
        else:
            restored.append(name)
    if restored:
        try:
            with db.managed_cursor(conn) as cur:
                cur.execute(sql.restore_lock_timeout)
                if distributed:
                    cur.execute(sql.citus_sequential)  # songplays' shards, then time's
                cur.execute(sql.analyze_after_bulk_load)
        except psycopg2.errors.LockNotAvailable:
            pass  # statistics only: autovacuum will gather them
    return restored, problems


# ================================================================ the run


COUNTS = ("records", "loaded", "skipped", "duplicates", "rejected")


@dataclasses.dataclass
class Summary:
    """What a run read and did, per kind of file ('song', 'log')."""

    files: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {"song": {}, "log": {}})
    counts: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {k: dict.fromkeys(COUNTS, 0) for k in ("song", "log")})
    file_problems: int = 0
    resolved_plays: int = 0
    set_aside: bool = False
    restored: list[str] = dataclasses.field(default_factory=list)
    not_restored: list[str] = dataclasses.field(default_factory=list)

    def add(self, batch: Batch, resolved_plays: int) -> None:
        files, counts = self.files[batch.kind], self.counts[batch.kind]
        for r in batch.files:
            files[r.status] = files.get(r.status, 0) + 1
            if r.to_load:
                counts["records"] += r.records
                counts["loaded"] += r.accepted - r.duplicates
                counts["skipped"] += r.skipped
                counts["duplicates"] += r.duplicates
                counts["rejected"] += r.rejected
        self.file_problems += batch.file_problems
        self.resolved_plays += resolved_plays

    def reconciles(self, kind: str) -> bool:
        """Records read = loaded + skipped by design + duplicates + rejected."""
        c = self.counts[kind]
        return c["records"] == c["loaded"] + c["skipped"] + c["duplicates"] + c["rejected"]

    @property
    def rejected(self) -> int:
        return sum(c["rejected"] for c in self.counts.values()) + self.file_problems

    @property
    def anything_loaded(self) -> bool:
        return any(n for f in self.files.values() for s, n in f.items() if s != "unchanged")


def table_counts(cur) -> dict[str, int]:
    counts = {}
    for table in sql.STAR_TABLES:
        cur.execute(sql.row_count.format(table=table))
        counts[table] = cur.fetchone()[0]
    return counts


def post_load_checks(cur) -> dict[str, int]:
    """Offending rows per check, in the spirit of dbt's tests."""
    results = {}
    for name, query in sql.CHECKS.items():
        cur.execute(query)
        results[name] = cur.fetchone()[0]
    return results


def require_tables(conn) -> None:
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.missing_tables, {"tables": sql.TABLES})
        missing = [row[0] for row in cur.fetchall()]
    if missing:
        raise db.DatabaseError(f"table(s) {', '.join(missing)} missing: "
                               "run `python create_tables.py` first")


def default_jobs(batches: list) -> int:
    """A worker process costs about a second to start: it pays from a few batches on."""
    return 1 if len(batches) >= 3 and (os.cpu_count() or 1) > 1 else 0


def run(settings: db.Settings, data_dir: Path, *, full_refresh: bool = False, strict: bool = False,
        jobs: int | None = None, progress: bool | None = None, out=sys.stdout) -> int:
    started = time.monotonic()
    if not data_dir.is_dir():
        raise UsageError(f"data folder {data_dir} not found (choose one with --data)")
    if not has_files(data_dir, "song") and not has_files(data_dir, "log"):
        raise UsageError(f"no song_data/**/*.json or log_data/**/*.json under {data_dir}")
    conn = db.connect(settings)
    try:
        require_tables(conn)
        db.acquire_lock(conn)
        with db.managed_cursor(conn) as cur:
            cur.execute(sql.run_interrupted)
            cur.execute(sql.run_start, {"data_dir": str(data_dir.resolve())})
            run_id = cur.fetchone()[0]
            if full_refresh:
                cur.execute(sql.full_refresh)
            if db.distributed(cur):
                cur.execute(sql.stage_plays_clear_citus)
            for query in sql.stage_table_queries:
                cur.execute(query)
            before = table_counts(cur)
            known = {}
            for kind in ("song", "log"):
                cur.execute(sql.manifest_known, {"kind": kind})
                known[kind] = {p: (size, mtime, sha) for p, size, mtime, sha in cur.fetchall()}
        summary = Summary()
        work = []
        for kind in ("song", "log"):
            batches, unchanged = plan(data_dir, kind, known[kind])
            summary.files.setdefault(kind, {})["unchanged"] = unchanged
            work.append((kind, batches))
        all_batches = [b for _, batches in work for b in batches]
        bars = {kind: tqdm(total=sum(len(t) for _, t in batches), desc=f"{kind} files",
                           unit="file", disable=not progress if progress is not None else None,
                           file=sys.stderr, leave=False)
                for kind, batches in work}
        workers = default_jobs(all_batches) if jobs is None else jobs
        new_log_bytes = sum(t.size for kind, tasks in all_batches if kind == "log"
                            for t in tasks if t.known_sha256 is None)
        summary.set_aside = set_aside_for_bulk_load(conn, new_log_bytes)
        for batch in prepared(all_batches, workers):
            for part, resolved in load_or_split(conn, run_id, batch):
                summary.add(part, resolved)
            bars[batch.kind].update(len(batch.files))
        for bar in bars.values():
            bar.close()
        summary.restored, summary.not_restored = restore_set_aside(conn)
        with db.managed_cursor(conn) as cur:
            after = table_counts(cur) if summary.anything_loaded else before
            checks = post_load_checks(cur) if summary.anything_loaded else None
            cur.execute(sql.resolved_plays)
            resolved_total = cur.fetchone()[0]
            cur.execute(sql.run_rejects, {"run_id": run_id, "limit": REJECT_EXAMPLES})
            examples = cur.fetchall()
            failed = not (summary.reconciles("song") and summary.reconciles("log")) \
                or bool(checks and any(checks.values())) or bool(summary.not_restored)
            cur.execute(sql.run_finish, {"run_id": run_id,
                                         "status": "failed" if failed else "succeeded"})
    finally:
        conn.close()
    print_summary(out, settings, data_dir, run_id, summary, before, after, resolved_total,
                  checks, examples, time.monotonic() - started)
    return EXIT_FAILED if failed or (strict and summary.rejected) else EXIT_OK


def print_summary(out, settings, data_dir, run_id, summary: Summary, before, after,
                  resolved_total, checks, examples, seconds) -> None:
    def p(text: str) -> None:
        print(text, file=out)

    p(f"Loaded {data_dir} into {settings.describe()} in {seconds:.1f} s (run {run_id})")
    if not summary.anything_loaded:
        p("  nothing new: every file is unchanged since it was loaded")
    for kind in ("song", "log"):
        f, c = summary.files[kind], summary.counts[kind]
        states = ", ".join(f"{n} {s}" for s, n in f.items() if n) or "none"
        skipped = f" + {c['skipped']} skipped (not NextSong) + {c['duplicates']} duplicates" \
            if kind == "log" else ""
        p(f"  {kind} files: {sum(f.values())} ({states}); records: {c['records']} = "
          f"{c['loaded']} loaded{skipped} + {c['rejected']} rejected "
          f"[{'reconciled' if summary.reconciles(kind) else 'MISMATCH'}]")
    p("  rows written: " + ", ".join(f"{t} +{after[t] - before[t]} (= {after[t]})"
                                     for t in sql.STAR_TABLES))
    p(f"  plays resolved to a song: {resolved_total} of {after['songplays']}"
      f" ({summary.resolved_plays} this run)")
    if summary.restored:
        what = "foreign keys and file_id index" if len(summary.restored) == len(
            sql.SONGPLAYS_SET_ASIDE) else ", ".join(summary.restored)
        if summary.set_aside:
            p(f"  bulk load: set songplays' {what} aside while loading; back now, checked over "
              "every row")
        else:
            p(f"  added back songplays' {what}, found missing (as an interrupted bulk load leaves "
              "them); checked over every row")
    for problem in summary.not_restored:
        p(f"  NOT added back, the next run tries again: songplays' {problem}")
    if summary.rejected:
        p(f"  rejected: {summary.rejected - summary.file_problems} records and "
          f"{summary.file_problems} whole files, kept in table load_rejects (run_id = {run_id}):")
        for path, line, reason in examples:
            p(f"    {Path(data_dir, path)}:{line if line is not None else '-'}: {reason}")
    if checks is None:
        p("  checks: not run, nothing changed since the last run")
    else:
        failed = [name for name, bad in checks.items() if bad]
        p(f"  checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
        for name, bad in checks.items():
            p(f"    [{'FAIL' if bad else 'pass'}] {name}" + (f" ({bad} rows)" if bad else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load song_data/ and log_data/ JSON into the Sparkify star schema.",
        epilog="exit codes: 0 loaded (rejects are reported, not fatal); 1 a check or the "
               "reconciliation failed, a foreign key set aside for a bulk load could not be "
               "added back, or --strict and records were rejected; 2 bad arguments; "
               "3 database or data folder problem; 4 another load is running")
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="folder holding song_data/ and log_data/ (default: data)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL, then "
                                               "PG* variables, then the embedded server)")
    parser.add_argument("--full-refresh", action="store_true",
                        help="empty the star and the manifest first, then load every file")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any record or file was rejected")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes that parse while the database loads "
                             "(default: 1 when there is more than one batch, else 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    settings = db.Settings.from_env(args.database_url)
    return db.run_command(lambda: run(
        settings, args.data, full_refresh=args.full_refresh, strict=args.strict, jobs=args.jobs,
        progress=False if args.no_progress else None))


if __name__ == "__main__":
    sys.exit(main())
