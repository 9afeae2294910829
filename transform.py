"""Transform: judge each record, and shape the good ones into the rows of the staging tables.

Pure functions on DataFrames: no files, no database. ``etl.prepare`` calls them in this order:
valid_songs → song_rows, or valid_events → play_rows → dedupe_plays → time_table, users_table;
then render_csv makes each table's COPY payload.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable

import ftfy
import pandas as pd
import pyarrow as pa
import pyarrow.csv

import sql_queries as sql
from records import EVENT_FIELDS, SONG_FIELDS, Records

RAW_TEXT_LIMIT = 1000
INT32 = (-(2**31), 2**31 - 1)
TS_RANGE = (0, 253_402_300_799_999)  # epoch ms up to the end of year 9999

# The log's song and artist text is UTF-8 decoded as Latin-1 and encoded again; repair only that,
# leaving quotes, ligatures and Unicode normalisation exactly as recorded.
MOJIBAKE_ONLY = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)

# ================================================================ judging records


def _rules(records: Records, fields: dict) -> tuple[dict[str, pd.Series], dict[str, tuple]]:
    """Per field: whether it is missing (absent, null or empty text, but not flawed), and the
    rule its flaws make (reasons, mask)."""
    missing, flawed = {}, {}
    for field, (kind, *_) in fields.items():
        values, flaw = records.values[field], records.flaw(field)
        missing[field] = values.isna() if flaw is None else values.isna() & flaw.isna()
        if kind == "text":
            missing[field] |= (values == "").fillna(False)
        if flaw is not None:
            flawed[field] = (flaw, flaw.notna())
    return missing, flawed


def _first_failure(index: pd.Index, rules: list[tuple[str | pd.Series, pd.Series]]) -> pd.Series:
    """The first failing rule's reason per row ('' where all pass); a rule's reason is a text,
    or a text per row."""
    reason = pd.Series("", index=index, dtype="object")
    undecided = pd.Series(True, index=index)
    for text, failed in rules:
        hit = undecided & failed.fillna(False).astype(bool)
        if hit.any():
            reason[hit] = text if isinstance(text, str) else text[hit]
            undecided &= ~hit
    return reason


def _split(frame: pd.DataFrame, reason: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    bad = reason != ""
    rejects = pd.DataFrame(
        {
            "path": frame.loc[bad, "path"],
            "line": frame.loc[bad, "line"],
            "reason": reason[bad],
            "raw": frame.loc[bad, "raw"],
        }
    )
    return frame[~bad].drop(columns="raw"), reject_frame(rejects.itertuples(index=False))


def valid_songs(records: Records) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Song records that satisfy the schema, and rejects for the rest."""
    frame = records.values
    missing, flawed = _rules(records, SONG_FIELDS)
    rules = [
        (f"{field} missing", missing[field])
        for field, (_, required) in SONG_FIELDS.items()
        if required
    ]
    rules += list(flawed.values())
    rules += [
        ("duration is negative", frame["duration"] < 0),
        ("year is negative", frame["year"] < 0),
        ("year out of range", ~frame["year"].between(*INT32).fillna(True)),
    ]
    good, rejects = _split(frame, _first_failure(frame.index, rules))
    return good.reset_index(drop=True), rejects


def song_rows(songs: pd.DataFrame) -> pd.DataFrame:
    """Rows of stage_songs: year 0 means unknown, an empty location is no location."""
    out = songs.copy()
    out["year"] = out["year"].mask(out["year"] == 0)
    out["artist_location"] = out["artist_location"].mask(out["artist_location"] == "")
    return out[sql.STAGE_COLUMNS["stage_songs"]]


def valid_events(records: Records) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(plays, rejects, per path the events skipped by design: pages other than NextSong)."""
    frame = records.values
    missing, flawed = _rules(records, EVENT_FIELDS)
    every = [(f"{f} missing", missing[f]) for f, spec in EVENT_FIELDS.items() if spec[1]]
    play = [
        (f"{f} missing on a play", missing[f])
        for f, spec in EVENT_FIELDS.items()
        if spec[2] and not spec[1]
    ]
    for field, rule in flawed.items():
        (every if EVENT_FIELDS[field][1] else play).append(rule)
    every.append(("ts out of range", ~frame["ts"].between(*TS_RANGE).fillna(True)))
    play += [
        ("userId is not numeric", ~frame["userId"].str.fullmatch(r"[0-9]{1,9}").fillna(True)),
        ("sessionId out of range", ~frame["sessionId"].between(*INT32).fillna(True)),
        ("itemInSession out of range", ~frame["itemInSession"].between(*INT32).fillna(True)),
        (
            "level is not 'free' or 'paid'",
            ~frame["level"].isin(["free", "paid"]) & ~missing["level"] & frame["level"].notna(),
        ),
    ]
    is_play = (frame["page"] == "NextSong").fillna(False).astype(bool)
    reason = _first_failure(frame.index, every)
    reason = reason.mask((reason == "") & is_play, _first_failure(frame.index, play))
    good, rejects = _split(frame, reason)
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
    quoted = values.str.startswith('"') & values.str.endswith('"') & (values.str.len() > 1)
    quoted = quoted.fillna(False).astype(bool)
    return values.mask(quoted, values.str.slice(1, -1))


def _blank_to_null(values: pd.Series) -> pd.Series:
    return values.mask(values == "")


def play_rows(plays: pd.DataFrame) -> pd.DataFrame:
    """Rows of stage_plays (plus user names): UTC instants, integer ids, repaired song and artist
    text, user agents without their wrapping quotes."""
    return pd.DataFrame(
        {
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
        }
    )


def time_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct play instant, parts in UTC; week is ISO 8601, weekday 1 = Monday."""
    start = pd.Series(rows["start_time"].unique()).sort_values(ignore_index=True)
    iso = start.dt.isocalendar()
    return pd.DataFrame(
        {
            "start_time": start,
            "hour": start.dt.hour,
            "day": start.dt.day,
            "week": iso["week"].astype("int64"),
            "month": start.dt.month,
            "year": start.dt.year,
            "weekday": iso["day"].astype("int64"),
        }
    )


PLAY_ORDER = ["start_time", "session_id", "item_in_session"]
PLAY_KEY = ["user_id", "session_id", "item_in_session"]


def users_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Each user as of their latest play (by time, then session, then item), with that play's
    position so the database can tell whether an already-loaded play is later still."""
    latest = rows.sort_values(PLAY_ORDER, kind="stable").drop_duplicates("user_id", keep="last")
    return latest[sql.STAGE_COLUMNS["stage_users"]].sort_values("user_id", ignore_index=True)


def dedupe_plays(rows: pd.DataFrame) -> pd.DataFrame:
    """A play is (user, session, item): a file's first line of it stands for the file. Between
    files the database decides, as it does for files of other batches (sql_queries'
    settle_queries), and keeps every file's copy."""
    return rows[~rows.duplicated(["path", *PLAY_KEY], keep="first")]


# ================================================================ rendering


def reject_frame(rows: Iterable[tuple]) -> pd.DataFrame:
    """Rejects as rows of stage_rejects; line is None for a problem with a whole file."""
    frame = pd.DataFrame(list(rows), columns=sql.STAGE_COLUMNS["stage_rejects"])
    frame["line"] = frame["line"].astype("Int64")
    frame["raw"] = frame["raw"].astype("object").map(storable)
    return frame


def storable(raw) -> str | None:
    """Raw text cut to a sane length; PostgreSQL text holds neither NUL nor invalid UTF-8."""
    if raw is None or raw is pd.NA:
        return None
    if isinstance(raw, bytes):
        raw = raw[: RAW_TEXT_LIMIT * 4].decode("utf-8", errors="replace")
    return raw[:RAW_TEXT_LIMIT].replace("\x00", "\\u0000")


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
