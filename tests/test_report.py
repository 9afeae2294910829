"""report.py on exact inputs, no database: the report as data (etl.py --json) holds every number
of the run, the summary states them, and the run fails when its counts do not reconcile, a check
fails or a key could not come back."""

import itertools
from pathlib import Path

from summary import Counts, summary_of

import sql_queries
from cli import EXIT_FAILED, EXIT_OK
from report import Earlier, Report, Tally

TALLY = {  # the songs do not reconcile: 8 read, 5 + 2 accounted for
    "song": Counts(records=8, loaded=5, rejected=2),
    "log": Counts(records=40, loaded=20, skipped=9, duplicates=3, rejected=8),
}


def tally(songs_read: int = TALLY["song"].records) -> Tally:
    counts = {kind: c._asdict() for kind, c in TALLY.items()}
    counts["song"]["records"] = songs_read
    return Tally(
        files={
            "song": {"new": 4},
            "log": {"unchanged": 1, "changed": 2, "emptied": 1, "unreadable": 1},
        },
        counts=counts,
        file_problems=1,
    )


def report(**changes) -> Report:
    fields = {
        "target": "the test server",
        "data_dir": Path("/data"),
        "run_id": 12,
        "seconds": 1.5,
        "tally": tally(),
        "before": {t: n for n, t in enumerate(sql_queries.STAR_TABLES)},
        "after": {t: 100 + n for n, t in enumerate(sql_queries.STAR_TABLES)},
        "resolved_total": 11,
        "resolved_before": 5,
        "checks": {name: n for n, name in enumerate(sql_queries.CHECKS)},
        "examples": [("log_data/a.json", 3, "ts missing"), ("log_data/b.json", None, "empty file")],
        "set_aside": False,
        "kept_because": "a reason it was no bulk load",
        "found_missing": ["time_pkey"],
        "restored": ["songplays_file"],
        "not_restored": {"songplays_user_id_fkey": "a reason"},
    }
    return Report(**{**fields, **changes})


def test_the_report_as_data_holds_every_number_of_the_run():
    data = report().as_dict(strict=False)
    assert (data["status"], data["exit_code"], data["seconds"]) == ("failed", EXIT_FAILED, 1.5)
    summary = summary_of(data)
    assert summary.run_id == 12
    assert summary.files == {
        "song": {"new": 4},
        "log": {"unchanged": 1, "changed": 2, "emptied": 1, "unreadable": 1},
    }
    assert summary.records == TALLY
    assert summary.reconciled == {"song": False, "log": True}
    assert summary.rows == {t: (100, 100 + n) for n, t in enumerate(sql_queries.STAR_TABLES)}
    assert summary.resolved == (11, 100, 6)
    assert (summary.set_aside, summary.added_back) == (False, {"time_pkey", "songplays_file"})
    assert summary.kept_because == "a reason it was no bulk load"
    assert summary.not_added_back == {"songplays_user_id_fkey": "a reason"}
    assert summary.rejected == (10, 1, 12)
    assert summary.examples == [
        "/data/log_data/a.json:3: ts missing",
        "/data/log_data/b.json:-: empty file",
    ]
    assert summary.checks == {name: n for n, name in enumerate(sql_queries.CHECKS)}
    assert summary.failures == [
        "records do not reconcile",
        "a check failed",
        "keys not built back",
    ]


def test_a_run_fails_on_a_mismatch_a_failed_check_or_a_key_that_did_not_come_back():
    good = {
        "tally": tally(songs_read=7),
        "checks": dict.fromkeys(sql_queries.CHECKS, 0),
        "not_restored": {},
    }
    assert report(**good).exit_code(strict=False) == EXIT_OK
    assert report(**good).exit_code(strict=True) == EXIT_FAILED  # records were rejected
    assert report(**{**good, "tally": tally()}).exit_code(strict=False) == EXIT_FAILED
    assert report(**{**good, "checks": None}).exit_code(strict=False) == EXIT_OK  # not run
    assert report(**{**good, "checks": report().checks}).exit_code(strict=False) == EXIT_FAILED
    assert report(**{**good, "not_restored": {"k": "why"}}).exit_code(strict=False) == EXIT_FAILED


def test_the_summary_states_the_reports_numbers_and_a_negative_delta_as_such():
    before = dict.fromkeys(sql_queries.STAR_TABLES, 10)
    after = {**before, "songplays": 7}
    lines = report(before=before, after=after).lines()
    assert lines[0] == "Loaded /data into the test server in 1.5 s (run 12)"
    assert lines[1:3] == [
        "  song files: 4 (4 new); records: 8 = 5 loaded + 2 rejected [MISMATCH]",
        # emptied: now empty, garbled or cut short, the file keeps what it loaded
        "  log files: 5 (1 unchanged, 2 changed, 1 keeping what it loaded, 1 unreadable); "
        "records: 40 = 20 loaded + 9 skipped (not NextSong) + 3 duplicates + 8 rejected "
        "[reconciled]",
    ]
    assert lines[3] == (
        "  rows written: songplays -3 (= 7), users +0 (= 10), songs +0 (= 10), "
        "artists +0 (= 10), time +0 (= 10)"
    )


def test_the_summary_counts_one_of_a_thing_in_the_singular():
    counts = {"song": Counts(0, 0)._asdict(), "log": Counts(1, 0, rejected=1)._asdict()}
    one = {
        "tally": Tally(files={"song": {}, "log": {"new": 1}}, counts=counts, file_problems=1),
        "checks": {name: int(n == 1) for n, name in enumerate(sql_queries.CHECKS)},
        "examples": [],
        "ignored": ["/data/log_data/notes.txt"],
        "gone": ["log_data/old.json"],
        "earlier": Earlier(runs=[7], records=1, files=0, examples=[], loaded={"log": (1, 1)}),
    }
    lines = report(**one).lines()
    check = list(sql_queries.CHECKS)[1]
    assert [line for line in lines if line.startswith("  loaded by")] == [
        "  loaded by earlier runs that stopped before their report (run_id 7): 1 log file "
        "(1 record loaded), in the rows before this run"
    ]
    assert [line for line in lines if line.startswith(("  rejected", "  ignored", "  gone"))] == [
        "  rejected: 1 record and 1 whole file, kept in table load_rejects (run_id = 12):",
        "  rejected by earlier runs that stopped before their report (run_id 7): 1 record and "
        "0 whole files, kept in table load_rejects:",
        "  ignored: 1 entry that is not a data file (only *.json, *.ndjson and *.jsonl files, "
        "compressed (.gz, .bz2, .xz, .zst, .zip) or not, are read):",
        "  gone: 1 file loaded before is no longer there; what it loaded stays:",
    ]
    assert f"    [FAIL] {check} (1 row)" in [line.split(":")[0] for line in lines]


def test_the_summary_names_the_first_five_of_a_list_and_says_there_are_more():
    six = [(f"log_data/{n}.json", n, "ts missing") for n in range(6)]  # read: one more than shown
    listed = {
        "examples": six,
        "ignored": [f"/data/log_data/{n}.txt" for n in range(7)],
        "gone": [f"log_data/{n}.json" for n in range(5)],
        "earlier": Earlier(runs=[7], records=3, files=0, examples=six[:1]),
    }
    lines = report(**listed).lines()

    def under(heading: str) -> list[str]:
        start = next(n for n, line in enumerate(lines) if line.startswith(heading)) + 1
        return list(itertools.takewhile(lambda line: line.startswith("    "), lines[start:]))

    assert under("  rejected:") == [
        *(f"    /data/log_data/{n}.json:{n}: ts missing" for n in range(5)),
        "    ... and more, in table load_rejects",
    ]
    assert under("  rejected by earlier") == ["    /data/log_data/0.json:0: ts missing"]
    assert under("  ignored:") == [
        *(f"    /data/log_data/{n}.txt" for n in range(5)),
        "    ... and 2 more",
    ]
    assert under("  gone:") == [f"    log_data/{n}.json" for n in range(5)]
    assert len(report(**listed).as_dict(strict=False)["rejected"]["examples"]) == 5


def test_a_strict_run_that_rejected_a_record_says_so_among_the_failures_of_its_data():
    """A monitor reading failures learns why --strict made the run exit 1; the load itself
    succeeded, as load_runs records it."""
    good = {"tally": tally(songs_read=7), "checks": dict.fromkeys(sql_queries.CHECKS, 0)}
    good["not_restored"] = {}
    strict, lenient = report(**good).as_dict(strict=True), report(**good).as_dict(strict=False)
    assert (strict["status"], strict["failures"], strict["exit_code"]) == (
        "succeeded",
        ["records rejected (--strict)"],
        EXIT_FAILED,
    )
    assert (lenient["failures"], lenient["exit_code"]) == ([], EXIT_OK)
    assert report(**good).lines(strict=True)[-1] == "  FAILED (records rejected (--strict)): exit 1"
    assert not report(**good).lines(strict=False)[-1].startswith("  FAILED")
