"""etl.py's report read as data (etl.py --json, report.Report.as_dict) into the Summary the
tests compare: counts and names, never sentences."""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

import sql_queries


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
ALL_SET_ASIDE = set(sql_queries.BULK_KEYS)


class Rejected(NamedTuple):
    records: int
    files: int  # whole files: unreadable, empty, refused
    run_id: int


@dataclasses.dataclass
class Summary:
    """What one run's report says; parse_summary makes it."""

    run_id: int
    nothing_new: bool = False
    files: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # kind: {state: n}
    records: dict[str, Counts] = dataclasses.field(default_factory=dict)
    reconciled: dict[str, bool] = dataclasses.field(default_factory=dict)
    rows: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # (added, now)
    resolved: tuple[int, int, int] | None = None  # (resolved plays, plays, resolved this run)
    taken_over: int = 0  # plays loaded whose copies in other files were stored before
    set_aside: bool = False  # this run set songplays' keys aside for a bulk load
    kept_because: str | None = None  # why a first load kept them in place
    found_missing: set[str] = dataclasses.field(default_factory=set)  # added back at the start
    restored: set[str] = dataclasses.field(default_factory=set)  # added back at the end
    not_added_back: dict[str, str] = dataclasses.field(default_factory=dict)  # key: why
    rejected: Rejected | None = None
    examples: list[str] = dataclasses.field(default_factory=list)  # "path:line: reason"
    ignored: int = 0  # entries that are not data files
    ignored_examples: list[str] = dataclasses.field(default_factory=list)  # their paths
    gone: int = 0  # files the manifest has that are no longer there
    gone_examples: list[str] = dataclasses.field(default_factory=list)  # their paths
    checks: dict[str, int] | None = None  # check: offending rows; None: not run
    checked: dict[str, str] = dataclasses.field(default_factory=dict)  # check: how it ran
    failures: list[str] = dataclasses.field(default_factory=list)  # why the run failed

    @property
    def added_back(self) -> set[str]:
        return self.found_missing | self.restored

    @property
    def keys_left_alone(self) -> bool:
        """Nothing was set aside, added back or missing."""
        return not (self.set_aside or self.added_back or self.not_added_back)


def parse_summary(text: str) -> Summary:
    """etl.py --json's report as a Summary."""
    return summary_of(json.loads(text))


def summary_of(report: dict) -> Summary:
    """A report's data (report.Report.as_dict) as the Summary the tests compare."""
    keys, rejected, ignored = report["keys"], report["rejected"], report["ignored"]
    return Summary(
        run_id=report["run_id"],
        nothing_new=report["nothing_new"],
        files=report["files"],
        records={
            kind: Counts(*(c[f] for f in Counts._fields)) for kind, c in report["records"].items()
        },
        reconciled={kind: c["reconciled"] for kind, c in report["records"].items()},
        rows={t: (n["after"] - n["before"], n["after"]) for t, n in report["tables"].items()},
        resolved=tuple(report["plays_resolved"][k] for k in ("total", "plays", "this_run")),
        taken_over=report["plays_taken_over"],
        set_aside=keys["set_aside"],
        kept_because=keys["kept_because"],
        found_missing=set(keys["found_missing"]),
        restored=set(keys["restored"]),
        not_added_back=keys["not_restored"],
        rejected=Rejected(rejected["records"], rejected["files"], report["run_id"])
        if rejected["records"] or rejected["files"]
        else None,
        examples=[
            f"{e['where']}:{'-' if e['line'] is None else e['line']}: {e['reason']}"
            for e in rejected["examples"]
        ],
        ignored=ignored["entries"],
        ignored_examples=ignored["examples"],
        gone=report["gone"]["files"],
        gone_examples=report["gone"]["examples"],
        checks=report["checks"],
        checked=report["checked"],
        failures=report["failures"],
    )
