"""A peer of the Sparkify ETL for bench/run.py: dlt lands the same JSON files, raw, in two tables
of a dataset (schema) of its own: song_data (one row per song file) and log_data (one row per
event). No star schema, no deduplication, no song lookup: what a data engineer would write first
to get the files into PostgreSQL with dlt.

It runs in a virtualenv of its own, never the project's (dlt is not a requirement of the
project): bench/run.py installs dlt[postgres,parquet] (the parquet extra brings pyarrow) in
WORKDIR/dlt-venv and runs this file with that venv's python. It uses what dlt's documentation
gives for speed:
  * the ``csv`` loader file format, which dlt's postgres destination loads with COPY (its default,
    ``insert_values``, sends INSERT statements);
  * resources that yield pages of data, not one record at a time. Two kinds (--items):
      arrow  Arrow tables: pyarrow.json.read_json per log file, and pages of 10,000 song files
             parsed with orjson; dlt writes them to csv with pyarrow and skips its row-by-row
             normalizer (its postgres documentation calls this several times faster);
      dicts  lists of 10,000 dicts, each a song file or a log line parsed with orjson: the usual
             way, each row going through dlt's normalizer.
Everything else is dlt's default (one normalize worker, 20 load threads, compressed load files,
append; for Arrow tables, no _dlt_load_id or _dlt_id column).

    python bench/dlt_peer.py --data DIR --pipelines-dir DIR [--items arrow|dicts]
                             [--dataset bench_dlt] [--json]

The database is given by URL: --database-url, else SPARKIFY_DLT_URL (the benchmark uses the
variable, which unlike the command line other local users cannot read). dlt insists on a user, a
password and a host: a URL without them gets the PGUSER/PGPASSWORD values or the login name, an
empty password, and "localhost" (a socket folder given as ?host=... still wins, as in libpq).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # no network here: never phone home

import dlt  # noqa: E402
import orjson  # noqa: E402

PAGE = 10_000
TABLES = ("song_data", "log_data")
URL_VARIABLE = "SPARKIFY_DLT_URL"
ITEMS = ("arrow", "dicts")

# The files' fields and their types, for the Arrow tables: the same types whatever a file or a
# page happens to hold (a page whose latitudes are all null is still a float column).
SONG_FIELDS = [
    ("num_songs", "int64"),
    ("artist_id", "string"),
    ("artist_latitude", "float64"),
    ("artist_longitude", "float64"),
    ("artist_location", "string"),
    ("artist_name", "string"),
    ("song_id", "string"),
    ("title", "string"),
    ("duration", "float64"),
    ("year", "int64"),
]
LOG_FIELDS = [
    ("artist", "string"),
    ("auth", "string"),
    ("firstName", "string"),
    ("gender", "string"),
    ("itemInSession", "int64"),
    ("lastName", "string"),
    ("length", "float64"),
    ("level", "string"),
    ("location", "string"),
    ("method", "string"),
    ("page", "string"),
    ("registration", "float64"),
    ("sessionId", "int64"),
    ("song", "string"),
    ("status", "int64"),
    ("ts", "int64"),
    ("userAgent", "string"),
    ("userId", "string"),
]


def song_pages(song_data: Path):
    """Each song file holds one JSON object: one row each, in pages of PAGE."""
    page = []
    for path in sorted(song_data.rglob("*.json")):
        with open(path, "rb") as handle:
            page.append(orjson.loads(handle.read()))
        if len(page) == PAGE:
            yield page
            page = []
    if page:
        yield page


def log_pages(log_data: Path):
    """Each log file holds one JSON object a line: one row each, in pages of PAGE."""
    for path in sorted(log_data.rglob("*.json")):
        with open(path, "rb") as handle:
            lines = [line for line in handle.read().splitlines() if line.strip()]
        for start in range(0, len(lines), PAGE):
            yield [orjson.loads(line) for line in lines[start : start + PAGE]]


def song_tables(song_data: Path):
    """The song files as Arrow tables of PAGE rows."""
    import pyarrow as pa

    schema = pa.schema([(name, kind) for name, kind in SONG_FIELDS])
    for page in song_pages(song_data):
        yield pa.Table.from_pylist(page, schema=schema)


def log_tables(log_data: Path):
    """Each log file as one Arrow table (pyarrow.json.read_json, multi-threaded)."""
    import pyarrow as pa
    import pyarrow.json

    options = pyarrow.json.ParseOptions(
        explicit_schema=pa.schema([(name, kind) for name, kind in LOG_FIELDS])
    )
    for path in sorted(log_data.rglob("*.json")):
        yield pyarrow.json.read_json(path, parse_options=options)


def complete_url(url: str) -> str:
    """The URL with the user, password and host that dlt requires (see the module's doc)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not user:
        user = quote(query.get("user") or os.environ.get("PGUSER") or getpass.getuser(), safe="")
    if not colon:
        password = quote(query.get("password") or os.environ.get("PGPASSWORD") or "", safe="")
    path = parts.path
    if path in ("", "/"):
        path = "/" + quote(query.get("dbname") or os.environ.get("PGDATABASE") or user, safe="")
    return urlunsplit(
        parts._replace(netloc=f"{user}:{password}@{hostport or 'localhost'}", path=path)
    )


def run(data: Path, url: str, dataset: str, pipelines_dir: Path, items: str = "arrow") -> dict:
    read_songs, read_logs = (
        (song_tables, log_tables) if items == "arrow" else (song_pages, log_pages)
    )
    songs = dlt.resource(read_songs(data / "song_data"), name=TABLES[0], write_disposition="append")
    logs = dlt.resource(read_logs(data / "log_data"), name=TABLES[1], write_disposition="append")
    pipeline = dlt.pipeline(
        pipeline_name="sparkify_bench",
        pipelines_dir=str(pipelines_dir),
        destination=dlt.destinations.postgres(credentials=complete_url(url)),
        dataset_name=dataset,
    )
    started = time.perf_counter()
    pipeline.run([songs, logs], loader_file_format="csv")
    seconds = time.perf_counter() - started
    trace = pipeline.last_trace
    steps = {
        step.step: (step.finished_at - step.started_at).total_seconds()
        for step in trace.steps
        if step.step != "run" and step.started_at and step.finished_at
    }
    return {
        "dlt": dlt.__version__,
        "items": items,
        "loader_file_format": "csv",
        "dataset": dataset,
        "tables": list(TABLES),
        "run_s": seconds,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="dlt loads the song files and log events of a Sparkify data folder, raw, "
        "into two tables (song_data, log_data) of its own dataset, with the csv "
        "loader file format (COPY): the peer rows of bench/run.py."
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder holding song_data/ and log_data/"
    )
    parser.add_argument(
        "--items",
        choices=ITEMS,
        default="arrow",
        help="what the resources yield: Arrow tables (dlt's fast path) or "
        "lists of dicts (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset",
        default="bench_dlt",
        help="dataset (PostgreSQL schema) to load into (default: %(default)s)",
    )
    parser.add_argument(
        "--pipelines-dir",
        type=Path,
        required=True,
        help="dlt's working folder for this pipeline (its state and load files)",
    )
    parser.add_argument("--database-url", help=f"PostgreSQL URL (default: ${URL_VARIABLE})")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args(argv)
    url = args.database_url or os.environ.get(URL_VARIABLE)
    if not url:
        parser.error(f"give --database-url or set {URL_VARIABLE}")
    result = run(args.data, url, args.dataset, args.pipelines_dir, args.items)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"dlt {result['dlt']} ({args.items}): loaded {', '.join(TABLES)} into "
            f"{args.dataset} in "
            f"{result['run_s']:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in result["steps"].items())
            + ")"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
