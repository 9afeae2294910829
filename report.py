"""The run report: what a run read and did, whether it all reconciles, and its summary text."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import sql_queries as sql
from cli import EXIT_FAILED, EXIT_OK, many
from contract import KINDS, FileStatus, Loaded, Part
from extract import DATA_FILES, path_text

COUNTS = ("records", "loaded", "skipped", "duplicates", "rejected")
IGNORED_EXAMPLES = 5
REJECT_EXAMPLES = 5  # shown; one more is read, to say whether there are more
GONE_EXAMPLES = 5
FILE_STATES = typing.get_args(FileStatus)
# A state as the summary says it: "emptied" also names a file now garbled or cut short.
STATE_SAID = {"emptied": "keeping what it loaded"}
# What a bulk load drops and builds back, named whole.
KEYS_NAMED = {
    tuple(
        sql.BULK_KEYS
    ): "the keys of songplays and time, songplays' foreign keys and file_id and start_time indexes"
}


Example = tuple[str, int | None, str]  # a reject: path, line (None: the whole file), reason


@dataclasses.dataclass(frozen=True)
class Earlier:
    """What the runs since the last report (killed, cut off, stopped by an error: none made its
    own) loaded and rejected in the files whose loaded version is still theirs: per kind, the
    files and the records they loaded; the records and whole files rejected, and the first
    rejects."""

    runs: list[int] = dataclasses.field(default_factory=list)
    records: int = 0
    files: int = 0
    examples: list[Example] = dataclasses.field(default_factory=list)
    # per kind: (files, records loaded)
    loaded: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Tally:
    """Files and records per kind ('song', 'log'), added up part by part as the run loads."""

    files: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    counts: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {kind: dict.fromkeys(COUNTS, 0) for kind in KINDS}
    )
    file_problems: int = 0
    settled: bool = False  # copies of a play were settled: other files' plays may have moved
    taken_over: int = 0  # plays of other files that this run's files' copies took over

    @classmethod
    def total(
        cls, stages: list[Tally], unchanged: dict[str, int] | None = None, removed_duplicates=0
    ) -> Tally:
        """The run's tally: its stages' tallies added up, with the files found unchanged per kind,
        and the plays a bulk load wrote that lost to another copy as its keys were built back:
        duplicates, not loaded."""
        tally = cls()
        for stage in stages:
            for kind in KINDS:
                for state, n in stage.files[kind].items():
                    tally.files[kind][state] = tally.files[kind].get(state, 0) + n
                for name, n in stage.counts[kind].items():
                    tally.counts[kind][name] += n
            tally.file_problems += stage.file_problems
            tally.settled = tally.settled or stage.settled
            tally.taken_over += stage.taken_over
        for kind, n in (unchanged or {}).items():
            tally.files[kind]["unchanged"] = tally.files[kind].get("unchanged", 0) + n
        tally.counts["log"]["loaded"] -= removed_duplicates
        tally.counts["log"]["duplicates"] += removed_duplicates
        return tally

    @classmethod
    def of(cls, part: Part, loaded: Loaded) -> Tally:
        """One loaded part's files and records."""
        tally = cls(
            file_problems=part.file_problems, settled=loaded.settled, taken_over=loaded.taken_over
        )
        files, counts = tally.files[part.kind], tally.counts[part.kind]
        for f in part.files:
            if f.first:
                files[f.read.status] = files.get(f.read.status, 0) + 1
            counts["records"] += f.records  # an emptied file's rejected lines count too
            counts["skipped"] += f.skipped
            counts["rejected"] += f.rejected
            if f.to_load:
                loaded_here, duplicates = loaded.outcome(part.kind, f)
                counts["loaded"] += loaded_here
                counts["duplicates"] += duplicates
        return tally

    def reconciles(self, kind: str) -> bool:
        """Records read = loaded + skipped by design + duplicates + rejected."""
        c = self.counts[kind]
        return c["records"] == c["loaded"] + c["skipped"] + c["duplicates"] + c["rejected"]

    @property
    def rejected(self) -> int:
        return sum(c["rejected"] for c in self.counts.values()) + self.file_problems

    @property
    def other_plays_touched(self) -> bool:
        """Whether plays of files this run did not load may have changed: song files were loaded
        (plays are resolved again) or copies of a play settled."""
        songs = self.files["song"]
        return self.settled or bool(songs.get("new") or songs.get("changed"))

    @property
    def anything_loaded(self) -> bool:
        return any(n for f in self.files.values() for s, n in f.items() if s != "unchanged")


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the summary says about one run."""

    target: str  # where it loaded, without a password
    data_dir: str  # the folder, or the object store's URL, as given
    run_id: int
    seconds: float
    tally: Tally
    before: dict[str, int]
    after: dict[str, int]
    resolved_total: int
    resolved_before: int
    checks: dict[str, int] | None  # None: nothing changed, so nothing was checked
    examples: list[Example]  # the first rejects, and one more if there are more
    set_aside: bool  # a bulk load: the keys of songplays and time were dropped while it loaded
    kept_because: str | None  # why a first load was no bulk load (None: it was one, or no first)
    found_missing: list[str]  # keys an interrupted bulk load left out, built first
    restored: list[str]  # keys built back at the end of this run
    not_restored: dict[str, str]  # key: why it could not be built back (then none was)
    ignored: list[str] = dataclasses.field(default_factory=list)  # entries not data files
    gone: list[str] = dataclasses.field(default_factory=list)  # loaded before, not there now
    checked: dict[str, str] = dataclasses.field(default_factory=dict)  # check: how it ran
    # rejected by runs that stopped before their report
    earlier: Earlier = dataclasses.field(default_factory=Earlier)

    @property
    def resolved_this_run(self) -> int:
        """The change in the plays resolved to a song, as the rows' is after - before."""
        return self.resolved_total - self.resolved_before

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    @property
    def status(self) -> Literal["failed", "succeeded"]:
        """As load_runs records it."""
        return "failed" if self.failed else "succeeded"

    @property
    def done(self) -> str:
        """What stays done when the report cannot be shown."""
        return f"run {self.run_id} is done, {self.status}"

    def exit_code(self, strict: bool) -> int:
        return EXIT_FAILED if self.failures_under(strict) else EXIT_OK

    def failures_under(self, strict: bool) -> list[str]:
        """Why the run exits 1: its failures, and under --strict what it (or a run it
        completes) rejected, which does not fail the load itself (load_runs' status)."""
        rejected = self.tally.rejected + self.earlier.records + self.earlier.files
        return self.failures + (["records rejected (--strict)"] if strict and rejected else [])

    def as_dict(self, strict: bool) -> dict:
        """The report as data (etl.py --json): every number lines() states, by name."""
        t = self.tally
        return {
            "run_id": self.run_id,
            "data": path_text(str(self.data_dir)),
            "target": self.target,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "failures": self.failures_under(strict),
            "exit_code": self.exit_code(strict),
            "nothing_new": not t.anything_loaded,
            "files": {
                kind: {s: n for s in FILE_STATES if (n := t.files[kind].get(s))} for kind in KINDS
            },
            "records": {
                kind: {**t.counts[kind], "reconciled": t.reconciles(kind)} for kind in KINDS
            },
            "tables": {
                table: {"before": self.before[table], "after": self.after[table]}
                for table in sql.STAR_TABLES
            },
            "loaded_by_earlier_runs": {
                "runs": self.earlier.runs,
                "files": {kind: self.earlier.loaded.get(kind, (0, 0))[0] for kind in KINDS},
                "records": {kind: self.earlier.loaded.get(kind, (0, 0))[1] for kind in KINDS},
            },
            "plays_taken_over": t.taken_over,
            "plays_resolved": {
                "total": self.resolved_total,
                "plays": self.after["songplays"],
                "this_run": self.resolved_this_run,
            },
            "keys": {
                "set_aside": self.set_aside,
                "kept_because": self.kept_because,
                "found_missing": self.found_missing,
                "restored": self.restored,
                "not_restored": self.not_restored,
            },
            "rejected": {
                "records": t.rejected - t.file_problems,
                "files": t.file_problems,
                "examples": self._examples_as_dicts(self.examples),
                "by_earlier_runs": {
                    "runs": self.earlier.runs,
                    "records": self.earlier.records,
                    "files": self.earlier.files,
                    "examples": self._examples_as_dicts(self.earlier.examples),
                },
            },
            "ignored": {"entries": len(self.ignored), "examples": self.ignored[:IGNORED_EXAMPLES]},
            "gone": {"files": len(self.gone), "examples": self.gone[:GONE_EXAMPLES]},
            "checks": self.checks,
            "checked": self.checked,
        }

    def _examples_as_dicts(self, examples: list[Example]) -> list[dict]:
        data_dir = path_text(str(self.data_dir))
        return [
            {"path": path, "where": _where(data_dir, path), "line": line, "reason": reason}
            for path, line, reason in examples[:REJECT_EXAMPLES]
        ]

    def lines(self, strict: bool = False) -> list[str]:
        """The summary; for a run that failed (or, under --strict, rejected something), a last
        line saying why."""
        t = self.tally
        data_dir = path_text(str(self.data_dir))
        out = [f"Loaded {data_dir} into {self.target} in {self.seconds:.1f} s (run {self.run_id})"]
        if not t.anything_loaded:
            out.append("  nothing new: every file is unchanged since it was loaded")
        for kind in KINDS:
            f, c = t.files[kind], t.counts[kind]
            states = (
                ", ".join(f"{f[s]} {STATE_SAID.get(s, s)}" for s in FILE_STATES if f.get(s))
                or "none"
            )
            skipped = (
                f" + {c['skipped']} skipped (not NextSong) + {c['duplicates']} duplicates"
                if kind == "log"
                else ""
            )
            out.append(
                f"  {kind} files: {sum(f.values())} ({states}); records: {c['records']} = "
                f"{c['loaded']} loaded{skipped} + {c['rejected']} rejected "
                f"[{'reconciled' if t.reconciles(kind) else 'MISMATCH'}]"
            )
        out.append(
            "  rows written: "
            + ", ".join(
                f"{table} {self.after[table] - self.before[table]:+d} (= {self.after[table]})"
                for table in sql.STAR_TABLES
            )
        )
        if self.earlier.loaded:
            runs = ", ".join(map(str, self.earlier.runs))
            loaded = ", ".join(
                f"{many(files, f'{kind} file', f'{kind} files')} "
                f"({many(records, 'record', 'records')} loaded)"
                for kind, (files, records) in sorted(
                    self.earlier.loaded.items(), key=lambda item: KINDS.index(item[0])
                )
            )
            out.append(
                f"  loaded by earlier runs that stopped before their report (run_id {runs}): "
                f"{loaded}, in the rows before this run"
            )
        if t.taken_over:
            out.append(
                f"  plays taken over: {t.taken_over} of those loaded were other files' plays, "
                "whose copies in this run's files come first in path order; those files count "
                "them as duplicates now"
            )
        out.append(
            f"  plays resolved to a song: {self.resolved_total} of "
            f"{self.after['songplays']} ({self.resolved_this_run} this run)"
        )
        out += self._set_aside_lines()
        if t.rejected:
            out.append(
                f"  rejected: {_records_and_files(t.rejected - t.file_problems, t.file_problems)}, "
                f"kept in table load_rejects (run_id = {self.run_id}):"
            )
            out += _example_lines(data_dir, self.examples)
        if self.earlier.records or self.earlier.files:
            runs = ", ".join(map(str, self.earlier.runs))
            out.append(
                f"  rejected by earlier runs that stopped before their report (run_id {runs}): "
                f"{_records_and_files(self.earlier.records, self.earlier.files)}, kept in table "
                "load_rejects:"
            )
            out += _example_lines(data_dir, self.earlier.examples)
        if self.ignored:
            entries = many(
                len(self.ignored),
                "entry that is not a data file",
                "entries that are not data files",
            )
            out.append(f"  ignored: {entries} (only {DATA_FILES}, are read):")
            out += _first(self.ignored, IGNORED_EXAMPLES)
        if self.gone:
            out.append(
                "  gone: "
                + many(
                    len(self.gone),
                    "file loaded before is no longer there; what it loaded stays:",
                    "files loaded before are no longer there; what they loaded stays:",
                )
            )
            out += _first(self.gone, GONE_EXAMPLES)
        if self.checks is None:
            out.append("  checks: not run, nothing changed since the last run")
        else:
            failed = [name for name, bad in self.checks.items() if bad]
            out.append(f"  checks: {len(self.checks) - len(failed)} passed, {len(failed)} failed")
            out += [
                f"    [{'FAIL' if bad else 'pass'}] {name}"
                + (f" ({many(bad, 'row', 'rows')})" if bad else "")
                + (f": {self.checked[name]}" if name in self.checked else "")
                for name, bad in self.checks.items()
            ]
        if failures := self.failures_under(strict):
            out.append(f"  FAILED ({'; '.join(failures)}): exit 1")
        return out

    @property
    def failures(self) -> list[str]:
        """Why the run failed, as failed finds it."""
        return [
            why
            for why, failed in [
                ("records do not reconcile", not all(self.tally.reconciles(k) for k in KINDS)),
                ("a check failed", bool(self.checks and any(self.checks.values()))),
                ("keys not built back", bool(self.not_restored)),
            ]
            if failed
        ]

    def _set_aside_lines(self) -> list[str]:
        out = []
        found = [self.found_missing] + ([] if self.set_aside else [self.restored])
        for names in filter(None, found):
            out.append(
                f"  built {_named(names)}, found missing (as a bulk load interrupted or stopped "
                "by an error leaves them); checked over every row"
            )
        if self.kept_because:
            out.append(f"  no bulk load, the keys kept in place: {self.kept_because}")
        if self.set_aside and self.restored:
            out.append(
                f"  bulk load: dropped {_named(self.restored)} while loading; built back, "
                "checked over every row"
            )
        out += [
            f"  NOT built back, the next run builds them first: {name}: {why}"
            for name, why in self.not_restored.items()
        ]
        return out


def _example_lines(data_dir: str, examples: list[Example]) -> list[str]:
    """The first rejects, and whether load_rejects holds more (a file the database refused
    whole is one row there, for all its records: their count says nothing of the rows)."""
    more = ["    ... and more, in table load_rejects"] if len(examples) > REJECT_EXAMPLES else []
    return [
        f"    {_where(data_dir, path)}:{line if line is not None else '-'}: {reason}"
        for path, line, reason in examples[:REJECT_EXAMPLES]
    ] + more


def _first(paths: list[str], shown: int) -> list[str]:
    """The first paths, and how many are not shown."""
    return [f"    {path}" for path in paths[:shown]] + _more(len(paths) - shown)


def _more(n: int) -> list[str]:
    return [f"    ... and {n} more"] if n > 0 else []


def _where(data_dir: str, path: str) -> str:
    """A file's manifest path as the summary shows it: under the data folder, or an object's
    URL as it is."""
    return path if "://" in path else f"{data_dir}/{path}"


def _records_and_files(records: int, files: int) -> str:
    return f"{many(records, 'record', 'records')} and {many(files, 'whole file', 'whole files')}"


def _named(names: list[str]) -> str:
    return KEYS_NAMED.get(tuple(names), ", ".join(names))
