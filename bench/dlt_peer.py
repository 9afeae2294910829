"""bench/run.py's peer, run in a virtualenv of its own: dlt lands a Sparkify data folder raw in
two tables of a schema of its own (song_data: a row per song file; log_data: a row per event),
with dlt's documented ways to be fast: the csv loader file format (COPY), and resources yielding
typed Arrow tables, which skip its row-by-row normalizer. The database URL comes from
SPARKIFY_DLT_URL (other local users cannot read it). Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.json

PAGE = 10_000
SONG_FIELDS = {
    "num_songs": "int64", "artist_id": "string", "artist_latitude": "float64",
    "artist_longitude": "float64", "artist_location": "string", "artist_name": "string",
    "song_id": "string", "title": "string", "duration": "float64", "year": "int64",
}  # fmt: skip
LOG_FIELDS = {
    "artist": "string", "auth": "string", "firstName": "string", "gender": "string",
    "itemInSession": "int64", "lastName": "string", "length": "float64", "level": "string",
    "location": "string", "method": "string", "page": "string", "registration": "float64",
    "sessionId": "int64", "song": "string", "status": "int64", "ts": "int64",
    "userAgent": "string", "userId": "string",
}  # fmt: skip


def song_tables(folder: Path):
    """Typed, so that a page whose latitudes are all null still has float columns."""
    paths, schema = sorted(folder.rglob("*.json")), pa.schema(list(SONG_FIELDS.items()))
    for start in range(0, len(paths), PAGE):
        page = [orjson.loads(path.read_bytes()) for path in paths[start : start + PAGE]]
        yield pa.Table.from_pylist(page, schema=schema)


def log_tables(folder: Path):
    options = pyarrow.json.ParseOptions(explicit_schema=pa.schema(list(LOG_FIELDS.items())))
    for path in sorted(folder.rglob("*.json")):
        yield pyarrow.json.read_json(path, parse_options=options)


def main(data: str, schema: str, pipelines_dir: str) -> None:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # never phone home
    try:
        import dlt  # in the virtualenv bench/run.py makes for it: not a project dependency
    except ImportError:
        sys.exit(
            "error: dlt is not installed for this Python: run this with the virtualenv "
            "bench/run.py makes for it (bench/out/dlt-venv/bin/python, after a make bench)"
        )

    pipeline = dlt.pipeline(
        pipeline_name="sparkify_bench",
        pipelines_dir=pipelines_dir,
        destination=dlt.destinations.postgres(credentials=os.environ["SPARKIFY_DLT_URL"]),
        dataset_name=schema,
    )
    started = time.perf_counter()
    songs = dlt.resource(song_tables(Path(data, "song_data")), name="song_data")
    logs = dlt.resource(log_tables(Path(data, "log_data")), name="log_data")
    pipeline.run([songs, logs], loader_file_format="csv")
    steps = {
        step.step: (step.finished_at - step.started_at).total_seconds()
        for step in pipeline.last_trace.steps
        if step.step != "run" and step.started_at and step.finished_at
    }
    seconds = time.perf_counter() - started
    print(json.dumps({"dlt": dlt.__version__, "run_s": seconds, "steps": steps}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="example, after make etl and a make bench that made bench/out/dlt-venv (the "
        "embedded server trusts its user, but dlt wants a password in the URL; it lands the "
        "data in schema dlt_raw):\n"
        '  SPARKIFY_DLT_URL="postgresql://postgres:any@localhost/sparkifydb?host=$PWD/.pgdata" '
        "bench/out/dlt-venv/bin/python bench/dlt_peer.py data dlt_raw /tmp/dlt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", help="the data folder (song_data/ and log_data/)")
    parser.add_argument("schema", help="the schema dlt lands the two tables in")
    parser.add_argument("pipelines_dir", help="where dlt keeps its pipeline's state")
    args = parser.parse_args()
    main(args.data, args.schema, args.pipelines_dir)
