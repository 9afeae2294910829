"""The run report: what a run read and did, whether it all reconciles, and its summary text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import sql_queries as sql
from extract import DATA_FILES, KINDS, path_text
from load import Loaded, Part

COUNTS = ("records", "loaded", "skipped", "duplicates", "rejected")
IGNORED_EXAMPLES = 5
FILE_STATES = ("unchanged", "new", "changed", "unreadable")
EXIT_OK, EXIT_FAILED = 0, 1
# What a bulk load sets aside, named whole: on one server, and on Citus (where the keys stay).
SET_ASIDE_NAMES = {
    tuple(sql.BULK_SET_ASIDE): "the keys of songplays and time, songplays' foreign keys and "
    "file_id index",
    tuple(sql.SONGPLAYS_SET_ASIDE): "songplays' foreign keys and file_id index",
}


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
    resolved_plays: int = 0
    settled: bool = False  # copies of a play were settled: other files' plays may have moved

    def add(self, part: Part, loaded: Loaded) -> None:
        files, counts = self.files[part.kind], self.counts[part.kind]
        for f in part.files:
            if f.first:
                files[f.read.status] = files.get(f.read.status, 0) + 1
            if f.to_load:
                duplicates = (
                    f.accepted - loaded.inserted.get(f.path, 0) if part.kind == "log" else 0
                )
                counts["records"] += f.records
                counts["loaded"] += f.accepted - duplicates
                counts["skipped"] += f.skipped
                counts["duplicates"] += duplicates
                counts["rejected"] += f.rejected
        self.file_problems += part.file_problems
        self.resolved_plays += loaded.resolved
        self.settled = self.settled or loaded.settled

    def add_removed_duplicates(self, plays: int, resolved: int) -> None:
        """Plays loaded while songplays' key was set aside, removed as duplicates before it came
        back: they count as duplicates, not loaded."""
        self.counts["log"]["loaded"] -= plays
        self.counts["log"]["duplicates"] += plays
        self.resolved_plays -= resolved

    def add_unchanged(self, kind: str, n: int) -> None:
        self.files[kind]["unchanged"] = self.files[kind].get("unchanged", 0) + n

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
    data_dir: Path
    run_id: int
    seconds: float
    tally: Tally
    before: dict[str, int]
    after: dict[str, int]
    resolved_total: int
    checks: dict[str, int] | None  # None: nothing changed, so nothing was checked
    examples: list[tuple]  # (path, line, reason) of the first rejects
    set_aside: bool  # songplays' keys were set aside for this bulk load
    found_missing: list[str]  # keys an interrupted bulk load left out, added back first
    restored: list[str]  # set-aside keys added back at the end of this run
    not_restored: list[str]  # those that could not come back, and why
    ignored: list[str] = dataclasses.field(default_factory=list)  # entries not data files
    checked: dict[str, str] = dataclasses.field(default_factory=dict)  # check: how it ran

    @property
    def failed(self) -> bool:
        return (
            not all(self.tally.reconciles(kind) for kind in KINDS)
            or bool(self.checks and any(self.checks.values()))
            or bool(self.not_restored)
        )

    def exit_code(self, strict: bool) -> int:
        return EXIT_FAILED if self.failed or (strict and self.tally.rejected) else EXIT_OK

    def lines(self) -> list[str]:
        t = self.tally
        data_dir = path_text(str(self.data_dir))
        out = [f"Loaded {data_dir} into {self.target} in {self.seconds:.1f} s (run {self.run_id})"]
        if not t.anything_loaded:
            out.append("  nothing new: every file is unchanged since it was loaded")
        for kind in KINDS:
            f, c = t.files[kind], t.counts[kind]
            states = ", ".join(f"{f[s]} {s}" for s in FILE_STATES if f.get(s)) or "none"
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
        out.append(
            f"  plays resolved to a song: {self.resolved_total} of "
            f"{self.after['songplays']} ({t.resolved_plays} this run)"
        )
        out += self._set_aside_lines()
        if t.rejected:
            out.append(
                f"  rejected: {t.rejected - t.file_problems} records and "
                f"{t.file_problems} whole files, kept in table load_rejects "
                f"(run_id = {self.run_id}):"
            )
            out += [
                f"    {data_dir}/{path}:{line if line is not None else '-'}: {reason}"
                for path, line, reason in self.examples
            ]
        if self.ignored:
            out.append(
                f"  ignored: {len(self.ignored)} entries that are not data files "
                f"(only {DATA_FILES}, are read):"
            )
            out += [f"    {path}" for path in self.ignored[:IGNORED_EXAMPLES]]
        if self.checks is None:
            out.append("  checks: not run, nothing changed since the last run")
        else:
            failed = [name for name, bad in self.checks.items() if bad]
            out.append(f"  checks: {len(self.checks) - len(failed)} passed, {len(failed)} failed")
            out += [
                f"    [{'FAIL' if bad else 'pass'}] {name}"
                + (f" ({bad} rows)" if bad else "")
                + (f": {self.checked[name]}" if name in self.checked else "")
                for name, bad in self.checks.items()
            ]
        return out

    def _set_aside_lines(self) -> list[str]:
        out = []
        found = [self.found_missing] + ([] if self.set_aside else [self.restored])
        for names in filter(None, found):
            out.append(
                f"  added back {_named(names)}, found missing (as an interrupted "
                "bulk load leaves them); checked over every row"
            )
        if self.set_aside and self.restored:
            out.append(
                f"  bulk load: set {_named(self.restored)} aside while loading; back now, "
                "checked over every row"
            )
        out += [
            f"  NOT added back, the next run tries again: {problem}"
            for problem in self.not_restored
        ]
        return out


def _named(names: list[str]) -> str:
    return SET_ASIDE_NAMES.get(tuple(names), ", ".join(names))
