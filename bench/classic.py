"""bench/run.py's baseline: the classic Sparkify ETL as the public Udacity-style solutions write
it (pd.read_json per file, an INSERT per row, a SELECT per play for its song, a commit per file),
on the first song files and events of a data folder, in tables of its own (bench_classic_songs,
...) beside the project's, dropped at the end. Its lookups must search the whole catalogue: after
its timed song stage the rest is copied in, untimed, from the project's loaded songs and artists.
Prints its timings as one JSON line; bench/README.md says more.
"""

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2.extensions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402
import db  # noqa: E402
import sql_queries  # noqa: E402

# Its tables are the public solutions' under names of their own, beside the project's, in the
# schema that holds them (sql_queries.tables_schema_use): no schema of its own, which would need
# CREATE on the database, a privilege create_tables.py and etl.py do without.
drop_tables = """DROP TABLE IF EXISTS bench_classic_songplays, bench_classic_users,
    bench_classic_songs, bench_classic_artists, bench_classic_time"""
create_tables = f"""{drop_tables};
CREATE TABLE bench_classic_songplays (songplay_id SERIAL PRIMARY KEY,
    start_time timestamp NOT NULL, user_id int NOT NULL, level varchar, song_id varchar,
    artist_id varchar, session_id int, location varchar, user_agent varchar);
CREATE TABLE bench_classic_users (user_id int PRIMARY KEY, first_name varchar, last_name varchar,
    gender varchar, level varchar);
CREATE TABLE bench_classic_songs (song_id varchar PRIMARY KEY, title varchar NOT NULL,
    artist_id varchar NOT NULL, year int, duration float NOT NULL);
CREATE TABLE bench_classic_artists (artist_id varchar PRIMARY KEY, name varchar NOT NULL,
    location varchar, latitude float, longitude float);
CREATE TABLE bench_classic_time (start_time timestamp PRIMARY KEY, hour int, day int, week int,
    month int, year int, weekday int)"""
songplay_table_insert = """INSERT INTO bench_classic_songplays (start_time, user_id, level,
    song_id, artist_id, session_id, location, user_agent)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"""
user_table_insert = """INSERT INTO bench_classic_users (user_id, first_name, last_name, gender,
    level) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_id) DO UPDATE SET level = EXCLUDED.level"""
song_table_insert = """INSERT INTO bench_classic_songs (song_id, title, artist_id, year, duration)
    VALUES (%s, %s, %s, %s, %s) ON CONFLICT (song_id) DO NOTHING"""
artist_table_insert = """INSERT INTO bench_classic_artists (artist_id, name, location, latitude,
    longitude) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (artist_id) DO NOTHING"""
time_table_insert = """INSERT INTO bench_classic_time (start_time, hour, day, week, month, year,
    weekday) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (start_time) DO NOTHING"""
song_select = """SELECT songs.song_id, artists.artist_id
    FROM bench_classic_songs songs JOIN bench_classic_artists artists
    ON songs.artist_id = artists.artist_id
    WHERE songs.title = %s AND artists.name = %s AND songs.duration = %s"""
copy_catalogue = """INSERT INTO bench_classic_songs SELECT song_id, title, artist_id, year,
duration FROM songs ON CONFLICT (song_id) DO NOTHING;
INSERT INTO bench_classic_artists SELECT artist_id, name, location, latitude, longitude
FROM artists ON CONFLICT (artist_id) DO NOTHING"""


def process_song_file(cur, filepath, nrows):  # one record a file: no nrows to cut
    df = pd.read_json(filepath, lines=True)
    song_data = df[["song_id", "title", "artist_id", "year", "duration"]].values[0].tolist()
    cur.execute(song_table_insert, song_data)
    artist_columns = ["artist_id", "artist_name", "artist_location", "artist_latitude"]
    artist_data = df[[*artist_columns, "artist_longitude"]].values[0].tolist()
    cur.execute(artist_table_insert, artist_data)
    return 1


def process_log_file(cur, filepath, nrows):
    df = pd.read_json(filepath, lines=True, nrows=nrows)
    events = len(df)
    df = df[df["page"] == "NextSong"]
    t = pd.to_datetime(df["ts"], unit="ms")
    time_data = (t, t.dt.hour, t.dt.day, t.dt.isocalendar().week, t.dt.month, t.dt.year,
                 t.dt.day_of_week)  # fmt: skip
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
        songid, artistid = results if results else (None, None)
        songplay_data = (pd.to_datetime(row.ts, unit="ms"), row.userId, row.level, songid,
                         artistid, row.sessionId, row.location, row.userAgent)  # fmt: skip
        cur.execute(songplay_table_insert, songplay_data)
    return events


def process_data(cur, conn, filepath, func, limit):
    """The first `limit` records of the files under filepath: (files, records, seconds)."""
    started, files, records = time.perf_counter(), 0, 0
    for root, dirs, _ in os.walk(filepath):
        dirs.sort()
        for datafile in sorted(glob.glob(os.path.join(root, "*.json"))):
            if records < limit:
                records += func(cur, datafile, nrows=limit - records)
                conn.commit()
                files += 1
    return files, records, time.perf_counter() - started


def main(data: str, song_files: int, events: int) -> None:
    for kind in (np.int16, np.int32, np.int64, np.uint32, np.float32, np.float64):
        psycopg2.extensions.register_adapter(kind, lambda v: psycopg2.extensions.adapt(v.item()))
    conn = db.connect(db.Settings.from_env())
    cur = conn.cursor()
    cur.execute(sql_queries.tables_schema_use)
    cur.execute(create_tables)
    songs = process_data(cur, conn, Path(data, "song_data"), process_song_file, song_files)
    cur.execute(copy_catalogue)
    cur.execute("SELECT count(*) FROM bench_classic_songs")
    songs_at_lookup = cur.fetchone()[0]
    conn.commit()
    logs = process_data(cur, conn, Path(data, "log_data"), process_log_file, events)
    cur.execute(drop_tables)
    conn.commit()
    names = ["song_files", "songs", "songs_s", "log_files", "events", "logs_s"]
    print(json.dumps(dict(zip(names, songs + logs)) | {"songs_at_lookup": songs_at_lookup}))


if __name__ == "__main__":
    parser = cli.ArgumentParser(
        description=__doc__,
        epilog="example (bench/run.py runs it; the sample's first 100 song files and 2,000 events, "
        "into the tables create_tables.py made):\n  python bench/classic.py data 100 2000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", help="the data folder (song_data/ and log_data/)")
    parser.add_argument("song_files", type=cli.positive, help="song files to load, the first")
    parser.add_argument("events", type=cli.positive, help="log events to load, the first")
    args = parser.parse_args()
    main(args.data, args.song_files, args.events)
