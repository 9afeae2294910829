"""bench/run.py end to end on tiny data sets: it runs, and WORKDIR/results.json (or growth.json)
holds every figure. No timing is asserted beyond being positive (a tiny run's numbers mean
nothing). The dlt peer is skipped (--no-peers): it installs dlt from PyPI, which a test must not
depend on."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import PROJECT, run_script

import sql_queries

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

TIMED = ["create_tables", "full_load", "rerun", "damaged_load", "song_stage", "increment"]
TIMED += ["day_alone"]
LIMIT = ["parse_songs", "parse_logs", "bare_copy"]


def truth_counts(folder) -> dict[str, int]:
    """The rows the generator says a load of folder holds (its truth.json)."""
    truth = json.loads((folder / "truth.json").read_text())
    counts = {name: truth[name] for name in sql_queries.STAR_TABLES}
    return counts | {"resolved": truth["songplays_resolved"]}


def test_tiny_benchmark_saves_every_figure(tmp_path):
    args = ["--events", "3000", "--songs", "100", "--classic-events", "500"]
    args += ["--classic-songs", "50", "--no-peers", "--keep", "--workdir", str(tmp_path)]
    done = run_script("bench/run.py", *args, timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    runs, rows = results["runs"], results["rows"]

    for name in TIMED:  # the project's scripts: wall time and the peak RSS of their tree
        assert runs[name]["seconds"] > 0, name
        assert runs[name]["rss_max_mb"] > 0 and runs[name]["rss_sum_mb"] > 0, name
    for name in LIMIT:
        assert runs[name]["seconds"] > 0, name
    assert runs["etl_total"]["seconds"] == round(
        runs["create_tables"]["seconds"] + runs["full_load"]["seconds"], 4
    )
    assert runs["limit_total"]["seconds"] == round(sum(runs[n]["seconds"] for n in LIMIT), 4)
    assert runs["classic"]["measured"]["events"] == 500
    assert runs["classic"]["measured"]["song_files"] == 50
    assert runs["classic"]["measured"]["songs_at_lookup"] == 100  # the whole catalogue
    assert runs["classic"]["seconds"] > 0
    assert runs["dlt"] == {"skipped": "--no-peers"}

    # The loaded rows are the generator's truth, after the full load and after the increment.
    assert results["data"]["events"] == 3000 and results["data"]["song_files"] == 100
    assert results["data"]["log_files"] == 30
    assert rows["truth"] == truth_counts(tmp_path / "data-e3000-s100-seed42")
    assert rows["full_load"] == rows["truth"]
    assert rows["after_increment"] == rows["truth"]
    assert rows["bare_copy"] == {t: rows["truth"][t] for t in sql_queries.STAR_TABLES}
    # The last day alone: all the songs, and some of the plays.
    assert rows["day_alone"]["songs"] == rows["truth"]["songs"]
    assert 0 < rows["day_alone"]["songplays"] < rows["truth"]["songplays"]
    assert results["data"]["last_day"] == "2018-11-30-events.json"
    # The damaged load: one log line in 1,000 rejected, the plays among them lost, no more.
    logs = sorted((tmp_path / "data-e3000-s100-seed42" / "log_data").rglob("*.json"))
    lines = [line for path in logs for line in path.read_bytes().splitlines()]
    damaged_plays = sum(json.loads(line)["page"] == "NextSong" for line in lines[::1000])
    assert rows["truth"]["songplays"] - rows["damaged_load"]["songplays"] == damaged_plays
    assert rows["damaged_load"]["songs"] == rows["truth"]["songs"]

    ratios = results["ratios"]
    assert ratios["increment_over_alone"] == round(
        runs["increment"]["seconds"] / runs["day_alone"]["seconds"], 4
    )
    for name in (
        "etl_over_limit",
        "rerun_over_full_load",
        "classic_over_etl",
        "damaged_over_full_load",
    ):
        assert ratios[name] > 0, name
    assert "dlt_over_etl" not in ratios
    targets = results["targets"]
    assert targets["increment / last day alone"]["value"] == ratios["increment_over_alone"]
    assert targets["increment / last day alone"]["met"] == (ratios["increment_over_alone"] <= 1.5)
    assert all(isinstance(t["met"], bool) for t in targets.values())

    assert results["machine"]["cpus"] > 0 and results["machine"]["postgresql"]
    assert results["machine"]["commit"]
    assert results["params"]["rounds"] == 2
    # The report is printed and saved; the data is kept (--keep), the folders of links are not.
    assert "## Sparkify ETL benchmark" in done.stdout
    assert "WARNING" not in done.stdout
    assert (tmp_path / "report.md").read_text() in done.stdout
    assert [p.name for p in tmp_path.glob("data-*")] == ["data-e3000-s100-seed42"]
    assert not any((tmp_path / name).exists() for name in ("increment", "day-alone", "damaged"))


def test_growth_at_two_tiny_sizes(tmp_path):
    args = ["--growth", "--growth-sizes", "2000,4000", "--songs", "100", "--rounds", "1"]
    done = run_script("bench/run.py", *args, "--workdir", str(tmp_path), timeout=300)
    results = json.loads((tmp_path / "growth.json").read_text())
    assert [size["data"]["events"] for size in results["sizes"]] == [2000, 4000]
    for size in results["sizes"]:
        assert size["rows"]["full_load"] == size["rows"]["truth"]
        assert size["rows"]["truth"]["songs"] == 100
        assert size["runs"]["full_load"]["seconds"] > 0
        assert size["runs"]["full_load"]["rss_max_mb"] > 0
        assert size["ratios"]["etl_over_limit"] > 0
        assert size["rows"]["after_increment"] == size["rows"]["truth"]
        assert size["runs"]["increment"]["seconds"] > 0
        assert size["ratios"]["increment_over_alone"] > 0
        assert "targets" not in size
    assert "## How the full load grows" in done.stdout
    assert (tmp_path / "growth.md").read_text() in done.stdout
    assert not list(tmp_path.glob("data-*"))


def command_line(process: psutil.Process) -> str:
    """The process's command line ("" once it has ended)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_a_bench_stopped_alone_stops_the_script_it_times_and_its_server(tmp_path):
    """SIGTERM to the bench's process only (a supervisor's, a parent script's): the script it
    was timing ends with it, and no process of its own (nor its server) outlives it."""
    args = ["--events", "20000", "--songs", "200", "--classic-events", "0", "--no-peers"]
    bench = subprocess.Popen(
        [sys.executable, "bench/run.py", *args, "--workdir", str(tmp_path)],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    timed, deadline = [], time.monotonic() + 120
    while not timed and time.monotonic() < deadline:  # until it times etl.py
        with_children = psutil.Process(bench.pid).children(recursive=True)
        timed = [p for p in with_children if "etl.py" in command_line(p)]
        time.sleep(0.05)
    assert timed, "the bench never ran etl.py"
    descendants = psutil.Process(bench.pid).children(recursive=True)
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(timeout=60) == 143
    gone, alive = psutil.wait_procs(descendants, timeout=1)  # ended with it, not after
    assert [p.pid for p in alive] == []
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
