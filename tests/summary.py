"""etl.py's summary read back into numbers and names (see report.Report.lines), so that a test
compares counts rather than whole sentences. Every line must be one the summary is known to print:
a line this module cannot read fails the test."""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import report
import sql_queries
from extract import KINDS
from report import FILE_STATES


class Counts(NamedTuple):
    """Records of a file (load_manifest) or of a kind (the summary): every record read is
    loaded, skipped by design, a duplicate or rejected. Songs are never skipped or duplicates:
    their line in the summary leaves those out."""

    records: int
    loaded: int
    skipped: int = 0
    duplicates: int = 0
    rejected: int = 0


CHECKS_PASSED = dict.fromkeys(sql_queries.CHECKS, 0)
ALL_SET_ASIDE = list(sql_queries.BULK_SET_ASIDE)


class Rejected(NamedTuple):
    records: int
    files: int  # whole files: unreadable, empty, refused
    run_id: int


@dataclasses.dataclass
class Summary:
    """What one summary says; parse_summary makes it."""

    run_id: int
    nothing_new: bool = False
    files: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # kind: {state: n}
    records: dict[str, Counts] = dataclasses.field(default_factory=dict)
    reconciled: dict[str, bool] = dataclasses.field(default_factory=dict)
    rows: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # (added, now)
    resolved: tuple[int, int, int] | None = None  # (resolved plays, plays, resolved this run)
    set_aside: bool = False  # this run set songplays' keys aside for a bulk load
    added_back: list[str] = dataclasses.field(default_factory=list)
    not_added_back: dict[str, str] = dataclasses.field(default_factory=dict)  # key: why
    rejected: Rejected | None = None
    examples: list[str] = dataclasses.field(default_factory=list)  # "path:line: reason"
    ignored: int = 0  # entries that are not data files
    ignored_examples: list[str] = dataclasses.field(default_factory=list)  # their paths
    checks: dict[str, int] | None = None  # check: offending rows; None: not run
    checked: dict[str, str] = dataclasses.field(default_factory=dict)  # check: how it ran

    @property
    def keys_left_alone(self) -> bool:
        """Nothing was set aside, added back or missing."""
        return not (self.set_aside or self.added_back or self.not_added_back)


SUMMARY_HEAD = re.compile(r"Loaded .+ into .+ in \d+\.\d s \(run (?P<run>\d+)\)")
SUMMARY_KIND = re.compile(
    r"  (?P<kind>\w+) files: (?P<total>\d+) \((?P<states>[^)]*)\); "
    r"records: (?P<records>\d+) = (?P<loaded>\d+) loaded"
    r"(?: \+ (?P<skipped>\d+) skipped \(not NextSong\) \+ (?P<duplicates>\d+) duplicates)?"
    r" \+ (?P<rejected>\d+) rejected \[(?P<verdict>reconciled|MISMATCH)\]"
)
SUMMARY_LINES = {
    "nothing new": re.compile(r"  nothing new: every file is unchanged since it was loaded"),
    "rows": re.compile(r"  rows written: (?P<rows>.+)"),
    "resolved": re.compile(
        r"  plays resolved to a song: (?P<total>\d+) of (?P<plays>\d+) \((?P<run>\d+) this run\)"
    ),
    "set aside": re.compile(
        r"  bulk load: set (?P<keys>.+) aside while loading; back now, "
        r"checked over every row"
    ),
    "found missing": re.compile(
        r"  added back (?P<keys>.+), found missing \(as an interrupted bulk load "
        r"leaves them\); checked over every row"
    ),
    "not added back": re.compile(
        r"  NOT added back, the next run tries again: (?P<key>\w+): (?P<why>.+)"
    ),
    "rejected": re.compile(
        r"  rejected: (?P<records>\d+) records and (?P<files>\d+) whole files, kept in table "
        r"load_rejects \(run_id = (?P<run>\d+)\):"
    ),
    "ignored": re.compile(
        r"  ignored: (?P<n>\d+) entries that are not data files \(only \*\.json, \*\.ndjson "
        r"and \*\.jsonl files, gzipped or not, are read\):"
    ),
    "checks not run": re.compile(r"  checks: not run, nothing changed since the last run"),
    "checks": re.compile(r"  checks: (?P<passed>\d+) passed, (?P<failed>\d+) failed"),
    "check": re.compile(
        r"    \[(?P<verdict>pass|FAIL)\] (?P<name>.+?)(?: \((?P<bad>\d+) rows\))?"
        r"(?:: (?P<scope>by its constraints|over this run's log files|over every row))?"
    ),
    "example": re.compile(r"    (?P<example>\S.*)"),
}


def _keys(named: str) -> list[str]:
    """Set-aside keys as the summary names them: all of them (on one server or on Citus), or a
    list."""
    whole = {name: list(keys) for keys, name in report.SET_ASIDE_NAMES.items()}
    return whole.get(named, named.split(", ") if named else [])


def parse_summary(text: str) -> Summary:
    head, *rest = text.splitlines()
    match = SUMMARY_HEAD.fullmatch(head)
    assert match, f"not etl.py's summary:\n{text}"
    summary, section, told = Summary(int(match["run"])), None, None
    for row in rest:
        if m := SUMMARY_KIND.fullmatch(row):
            _read_kind(summary, m)
            continue
        name, m = _match(row)
        if name == "nothing new":
            summary.nothing_new = True
        elif name == "rows":
            for part in m["rows"].split(", "):
                table, added, now = re.fullmatch(r"(\w+) ([+-]\d+) \(= (\d+)\)", part).groups()
                summary.rows[table] = (int(added), int(now))
        elif name == "resolved":
            summary.resolved = (int(m["total"]), int(m["plays"]), int(m["run"]))
        elif name in ("set aside", "found missing"):
            summary.set_aside = name == "set aside"
            summary.added_back += _keys(m["keys"])
        elif name == "not added back":
            summary.not_added_back[m["key"]] = m["why"]
        elif name == "rejected":
            summary.rejected = Rejected(int(m["records"]), int(m["files"]), int(m["run"]))
            section = name
        elif name == "ignored":
            summary.ignored, section = int(m["n"]), name
        elif name == "checks not run":
            section = name
        elif name == "checks":
            summary.checks, told, section = {}, (int(m["passed"]), int(m["failed"])), name
        elif name == "check" and section == "checks":
            assert (m["verdict"] == "FAIL") == bool(m["bad"] and int(m["bad"])), row
            summary.checks[m["name"]] = int(m["bad"] or 0)
            if m["scope"]:
                summary.checked[m["name"]] = m["scope"]
        elif name in ("check", "example") and section == "rejected":
            summary.examples.append(row.strip())
        elif name in ("check", "example") and section == "ignored":
            summary.ignored_examples.append(row.strip())
        else:
            raise AssertionError(f"a line the summary is not known to print: {row!r}\n{text}")
    assert set(summary.records) == set(KINDS), text
    assert list(summary.rows) == sql_queries.STAR_TABLES and summary.resolved, text
    assert section in ("checks", "checks not run"), f"no checks line last:\n{text}"
    assert len(summary.ignored_examples) == min(summary.ignored, report.IGNORED_EXAMPLES), text
    if told:
        failed = sum(1 for bad in summary.checks.values() if bad)
        assert told == (len(summary.checks) - failed, failed), text
    return summary


def _match(row: str) -> tuple[str | None, re.Match | None]:
    """Which kind of line row is, and its fields."""
    for name, pattern in SUMMARY_LINES.items():
        if m := pattern.fullmatch(row):
            return name, m
    return None, None


def _read_kind(summary: Summary, m: re.Match) -> None:
    """A kind's line: its files by state, and its records."""
    kind = m["kind"]
    states = {}
    if m["states"] != "none":
        for part in m["states"].split(", "):
            n, state = part.split(" ")
            states[state] = int(n)
    assert set(states) <= set(FILE_STATES) and sum(states.values()) == int(m["total"]), m[0]
    summary.files[kind] = states
    summary.records[kind] = Counts(**{f: int(m[f]) for f in Counts._fields if m[f] is not None})
    summary.reconciled[kind] = m["verdict"] == "reconciled"
