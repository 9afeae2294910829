"""bench/run.py end to end on tiny data sets: it runs, and prints every row of its reports.
No timing is asserted (the numbers of a tiny run mean nothing). The dlt peer rows are skipped
(--no-peers): they install dlt from PyPI, which a test must not depend on."""

import re

from conftest import run_script

import sql_queries
from bench.run import ROWS, TARGETS


def row(label: str) -> str:
    return r"^\| " + re.escape(label) + r" +\|"


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
        "--no-peers",
        "--workdir",
        str(tmp_path),
        timeout=120,
    )
    out = done.stdout
    for label in [*ROWS.values(), *TARGETS]:
        assert re.search(row(label), out, re.MULTILINE), label
    for name in sql_queries.STAR_TABLES:
        assert re.search(r"^\| " + name + r" +\| +[\d,]+ \|", out, re.MULTILINE), name
    assert "classic measured on 500 events" in out.lower()
    assert "extrapolated linearly" in out
    for items in ("arrow", "dicts"):
        assert re.search(row(ROWS[f"dlt_{items}"]) + r"(?: +\|)* +skipped \|", out, re.MULTILINE)
        assert f"The dlt row from {items} was skipped: --no-peers." in out
    assert "Machine:" in out and "PostgreSQL" in out
    assert "WARNING" not in out  # the loaded rows match the generator's truth.json
    # The report is also saved in the work folder.
    assert "## Sparkify ETL benchmark" in (tmp_path / "report.md").read_text()
    # Generated data is removed without --keep; the folder holds nothing big afterwards.
    assert not list(tmp_path.glob("data-*"))
    assert not (tmp_path / "dlt-venv").exists()


def test_growth_at_two_tiny_sizes(tmp_path):
    done = run_script(
        "bench/run.py",
        "--growth",
        "--growth-sizes",
        "2000,4000",
        "--songs",
        "100",
        "--no-peers",
        "--workdir",
        str(tmp_path),
        timeout=120,
    )
    out = done.stdout
    assert "## How the full load grows: 2,000, 4,000 events" in out
    for events in ("2,000", "4,000"):
        assert re.search(row(events) + r" +[\d.,]+ \|", out, re.MULTILINE), events
    assert "From 2,000 to 4,000 events (2.0x): wall" in out
    assert "WARNING" not in out
    report = (tmp_path / "growth.md").read_text()
    assert "![How the full load grows](growth.png)" in report
    assert (tmp_path / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("data-*"))
