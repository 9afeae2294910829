"""bench/run.py end to end on a tiny data set: it runs, and prints every row of its report.
No timing is asserted (the numbers of a tiny run mean nothing)."""

import re

from conftest import run_script

from sql_queries import STAR_TABLES

LABELS = [
    "create_tables.py",
    "etl.py, full load (songs + logs)",
    "ETL total (create_tables + full load)",
    "etl.py re-run, nothing new",
    "song stage (etl.py on song_data only)",
    "log stage (etl.py, songs already loaded)",
    "limit: parse song files (orjson)",
    "limit: parse log files (pyarrow.json)",
    "limit: bare COPY of the final rows",
    "limit total (parse + bare COPY)",
    "classic pipeline (extrapolated)",
]
TARGETS = ["ETL / limit", "classic / ETL", "song stage files/s", "re-run / full load"]


def test_tiny_benchmark_prints_every_row(tmp_path):
    done = run_script(
        "bench/run.py",
        "--events",
        "3000",
        "--songs",
        "100",
        "--classic-events",
        "500",
        "--classic-songs",
        "50",
        "--workdir",
        str(tmp_path),
        timeout=120,
    )
    out = done.stdout
    for label in LABELS + TARGETS:
        assert re.search(r"^\| " + re.escape(label) + r" +\|", out, re.MULTILINE), label
    for name in STAR_TABLES:
        assert re.search(r"^\| " + name + r" +\| +[\d,]+ \|", out, re.MULTILINE), name
    assert "classic measured on 500 events" in out.lower()
    assert "extrapolated linearly" in out
    assert "Machine:" in out and "PostgreSQL" in out
    assert "WARNING" not in out  # the loaded rows match the generator's truth.json
    # Generated data is removed without --keep; the folder holds nothing big afterwards.
    assert not list(tmp_path.glob("data-*"))
