"""The classic Sparkify ETL, as the public Udacity-style solutions write it: the baseline of the
benchmark (bench/run.py), never used to load anything real.

Faithful to those solutions on every point that costs time:
  * files found with os.walk + glob, each read with ``pd.read_json(path, lines=True)``;
  * one INSERT per row, from ``.values[0].tolist()`` for songs and artists and ``iterrows`` for
    time, users and songplays (``ON CONFLICT DO NOTHING`` for songs, artists and time,
    ``ON CONFLICT (user_id) DO UPDATE SET level`` for users);
  * one SELECT per play to find song_id/artist_id by (title, artist name, duration), on tables
    whose only indexes are the primary keys (no index on title), duration a ``float``;
  * a commit per file.
Two deviations, neither of which changes the cost: ``t.dt.week`` no longer exists in pandas
(``t.dt.isocalendar().week`` replaces it), and numpy scalars are adapted for psycopg2.

Its tables live in their own schema (``classic`` by default) of the configured database, so
the project's tables are never touched; the schema is dropped and recreated at the start.

The per-play SELECT scans the whole songs table, so its cost grows with the catalogue. When the
benchmark runs the (slow) song stage on a slice only, ``--fill-songs-from`` bulk-inserts the rest
of the catalogue, untimed, before the logs, so that the lookups are timed at full size.

    python bench/classic.py --data DIR [--schema classic] [--fill-songs-from SONG_DATA]
                            [--drop-after] [--database-url URL] [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql as pgsql

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import db  # noqa: E402

# ---------------------------------------------------------------- the classic sql_queries.py

songplay_table_create = """
CREATE TABLE IF NOT EXISTS songplays (songplay_id SERIAL PRIMARY KEY, start_time timestamp NOT NULL,
    user_id int NOT NULL, level varchar, song_id varchar, artist_id varchar, session_id int,
    location varchar, user_agent varchar)"""
user_table_create = """
CREATE TABLE IF NOT EXISTS users (user_id int PRIMARY KEY, first_name varchar, last_name varchar,
    gender varchar, level varchar)"""
song_table_create = """
CREATE TABLE IF NOT EXISTS songs (song_id varchar PRIMARY KEY, title varchar NOT NULL,
    artist_id varchar NOT NULL, year int, duration float NOT NULL)"""
artist_table_create = """
CREATE TABLE IF NOT EXISTS artists (artist_id varchar PRIMARY KEY, name varchar NOT NULL,
    location varchar, latitude float, longitude float)"""
time_table_create = """
CREATE TABLE IF NOT EXISTS time (start_time timestamp PRIMARY KEY, hour int, day int, week int,
    month int, year int, weekday int)"""

songplay_table_insert = """
INSERT INTO songplays (start_time, user_id, level, song_id, artist_id, session_id, location,
    user_agent) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"""
user_table_insert = """
INSERT INTO users (user_id, first_name, last_name, gender, level) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (user_id) DO UPDATE SET level = EXCLUDED.level"""
song_table_insert = """
INSERT INTO songs (song_id, title, artist_id, year, duration) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (song_id) DO NOTHING"""
artist_table_insert = """
INSERT INTO artists (artist_id, name, location, latitude, longitude) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (artist_id) DO NOTHING"""
time_table_insert = """
INSERT INTO time (start_time, hour, day, week, month, year, weekday)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (start_time) DO NOTHING"""

song_select = """
SELECT songs.song_id, artists.artist_id
FROM songs JOIN artists ON songs.artist_id = artists.artist_id
WHERE songs.title = %s AND artists.name = %s AND songs.duration = %s"""

create_table_queries = [
    songplay_table_create,
    user_table_create,
    song_table_create,
    artist_table_create,
    time_table_create,
]
TABLES = ["songplays", "users", "songs", "artists", "time"]


def _adapt_numpy() -> None:
    """psycopg2 knows no numpy scalars; the public solutions relied on older pandas handing out
    Python ones. Each is adapted as the Python number it holds, as psycopg2 would."""
    adapt = psycopg2.extensions.adapt
    for kind in (np.int64, np.int32, np.int16, np.uint32):
        psycopg2.extensions.register_adapter(kind, lambda v: adapt(int(v)))
    for kind in (np.float64, np.float32):
        psycopg2.extensions.register_adapter(kind, lambda v: adapt(float(v)))


# ---------------------------------------------------------------- the classic etl.py


def process_song_file(cur, filepath):
    df = pd.read_json(filepath, lines=True)
    song_data = df[["song_id", "title", "artist_id", "year", "duration"]].values[0].tolist()
    cur.execute(song_table_insert, song_data)
    artist_data = (
        df[["artist_id", "artist_name", "artist_location", "artist_latitude", "artist_longitude"]]
        .values[0]
        .tolist()
    )
    cur.execute(artist_table_insert, artist_data)
    return 1


def process_log_file(cur, filepath):
    df = pd.read_json(filepath, lines=True)
    events = len(df)
    df = df[df["page"] == "NextSong"]
    t = pd.to_datetime(df["ts"], unit="ms")
    time_data = (
        t,
        t.dt.hour,
        t.dt.day,
        t.dt.isocalendar().week,
        t.dt.month,
        t.dt.year,
        t.dt.day_of_week,
    )
    column_labels = ("start_time", "hour", "day", "week", "month", "year", "weekday")
    time_df = pd.DataFrame(dict(zip(column_labels, time_data)))
    for i, row in time_df.iterrows():
        cur.execute(time_table_insert, list(row))
    user_df = df[["userId", "firstName", "lastName", "gender", "level"]]
    for i, row in user_df.iterrows():
        cur.execute(user_table_insert, list(row))
    for index, row in df.iterrows():
        cur.execute(song_select, (row.song, row.artist, row.length))
        results = cur.fetchone()
        if results:
            songid, artistid = results
        else:
            songid, artistid = None, None
        songplay_data = (
            pd.to_datetime(row.ts, unit="ms"),
            row.userId,
            row.level,
            songid,
            artistid,
            row.sessionId,
            row.location,
            row.userAgent,
        )
        cur.execute(songplay_table_insert, songplay_data)
    return events


def get_files(filepath):
    all_files = []
    for root, dirs, files in os.walk(filepath):
        files = glob.glob(os.path.join(root, "*.json"))
        for f in files:
            all_files.append(os.path.abspath(f))
    return all_files


def process_data(cur, conn, filepath, func):
    """Returns (files, records, seconds)."""
    started = time.perf_counter()
    all_files = get_files(filepath)
    records = 0
    for datafile in all_files:
        records += func(cur, datafile)
        conn.commit()
    return len(all_files), records, time.perf_counter() - started


def create_schema(conn, schema: str) -> float:
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema)))
        cur.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(schema)))
        cur.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(schema)))
        for query in create_table_queries:
            cur.execute(query)
    conn.commit()
    return time.perf_counter() - started


def fill_songs(cur, conn, song_data: Path) -> tuple[int, float]:
    """Not part of the classic pipeline, and not timed as part of it: bulk-insert the songs and
    artists of every file under song_data, so that the per-play SELECTs of a benchmark that ran
    the classic song stage on a slice only still search a songs table of the full size.
    Returns (song files read, seconds)."""
    started = time.perf_counter()
    songs, artists = [], []
    paths = sorted(song_data.rglob("*.json"))
    for path in paths:
        record = json.loads(path.read_bytes())
        songs.append(
            (
                record["song_id"],
                record["title"],
                record["artist_id"],
                record["year"],
                record["duration"],
            )
        )
        artists.append(
            (
                record["artist_id"],
                record["artist_name"],
                record["artist_location"],
                record["artist_latitude"],
                record["artist_longitude"],
            )
        )
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO songs (song_id, title, artist_id, year, duration) VALUES %s "
        "ON CONFLICT (song_id) DO NOTHING",
        songs,
        page_size=5000,
    )
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO artists (artist_id, name, location, latitude, longitude) VALUES %s "
        "ON CONFLICT (artist_id) DO NOTHING",
        artists,
        page_size=5000,
    )
    conn.commit()
    return len(paths), time.perf_counter() - started


def run(
    settings: db.Settings,
    data: Path,
    schema: str = "classic",
    drop_after: bool = False,
    fill_from: Path | None = None,
) -> dict:
    _adapt_numpy()
    conn = db.connect(settings)
    try:
        schema_s = create_schema(conn, schema)
        cur = conn.cursor()
        song_files, song_records, songs_s = process_data(
            cur, conn, str(data / "song_data"), process_song_file
        )
        filled_files, fill_s = fill_songs(cur, conn, fill_from) if fill_from else (0, 0.0)
        cur.execute("SELECT count(*) FROM songs")
        songs_at_lookup = cur.fetchone()[0]
        log_files, log_records, logs_s = process_data(
            cur, conn, str(data / "log_data"), process_log_file
        )
        rows = {}
        for table in TABLES:
            cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(table)))
            rows[table] = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM songplays WHERE song_id IS NOT NULL")
        resolved = cur.fetchone()[0]
        conn.commit()
        if drop_after:
            cur.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(schema)))
            conn.commit()
    finally:
        conn.close()
    return {
        "schema_s": schema_s,
        "song_files": song_files,
        "song_records": song_records,
        "songs_s": songs_s,
        "log_files": log_files,
        "log_records": log_records,
        "logs_s": logs_s,
        "rows": rows,
        "resolved_plays": resolved,
        "filled_song_files": filled_files,
        "fill_s": fill_s,
        "songs_at_lookup": songs_at_lookup,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The classic row-at-a-time Sparkify ETL (pd.read_json, iterrows, one INSERT "
        "and one song SELECT per row, a commit per file), in its own schema: the "
        "baseline of bench/run.py."
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder holding song_data/ and log_data/"
    )
    parser.add_argument(
        "--schema",
        default="classic",
        help="schema for its tables, dropped and recreated (default: classic)",
    )
    parser.add_argument("--drop-after", action="store_true", help="drop the schema at the end")
    parser.add_argument(
        "--fill-songs-from",
        type=Path,
        metavar="SONG_DATA",
        help="after the (timed) song stage, bulk-insert, untimed, the songs of "
        "every file under this folder, so that the play lookups search a "
        "songs table of full size when the song stage ran on a slice",
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (default: as db.py chooses)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args(argv)
    settings = db.Settings.from_env(args.database_url)
    try:
        result = run(settings, args.data, args.schema, args.drop_after, args.fill_songs_from)
    except db.DatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"classic: {result['song_files']} song files in {result['songs_s']:.1f} s, "
            f"{result['log_records']} events in {result['log_files']} log files in "
            f"{result['logs_s']:.1f} s (songs table: {result['songs_at_lookup']} rows); "
            f"rows {result['rows']}, "
            f"{result['resolved_plays']} plays resolved"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
