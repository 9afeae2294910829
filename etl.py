"""Load Sparkify's song and log JSON into the star schema.

    python etl.py [--data DIR|URL] [--database-url URL] [--full-refresh] [--strict] ...

The data is a folder, or a prefix in an object store (s3://bucket/prefix; docs/object-storage.md).
The pipeline, top to bottom (each stage is a module named for it):
  1. extract.plan     lists the files the manifest has not seen as they are now, in batches;
  2. workers.Preparer has prepare.prepare read each batch (extract), parse it (parse), judge
                      and shape its records (transform) and render its COPY payloads (for
                      the staging tables, and in a bulk load the plays straight for
                      songplays and time), in parts of bounded size; song batches in a thread, log
                      batches in a worker process when there is more than a little to do;
  3. load_batches     hands each part to load.load_part, one transaction per batch: the
                      songs, then load.begin_bulk_load (a first load of the logs drops
                      the keys of songplays and time), then the logs; load.build_keys
                      builds them back;
  4. finish           runs the post-load checks and writes the run's Report (report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import os
import stat
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Literal, TextIO

import psycopg2
import psycopg2.errors
from tqdm import tqdm

import cli
import db
import extract
import load
import sql_queries as sql
import workers
from contract import KINDS, Batch, Kind, Limits, Loaded, Part, Unusable
from extract import Listing, Source
from report import REJECT_EXAMPLES, Report, Tally

JOBS_PER_CPU = 4
MAX_JOBS = JOBS_PER_CPU * (os.cpu_count() or 1)


class DataFolderError(cli.UserError):
    """The data folder cannot be loaded as asked: not there, unreadable, empty of data files,
    or, for --full-refresh, missing what was loaded from it."""


# ================================ the run, stage by stage; 1. plan: the files to load, in batches


def run(
    settings: db.Settings,
    data_dir: Path | str,
    *,
    anonymous: bool = False,
    full_refresh: bool = False,
    jobs: int | None = None,
    progress: bool | None = None,
    limits: Limits = Limits(),
    lock_wait: int = db.LOCK_WAIT,
    strict: bool = False,
    out: TextIO | Literal["stdout"] | None = "stdout",
) -> Report:
    """Load data_dir (a folder, or an object store's URL, read anonymously if asked) into the
    database, waiting up to lock_wait seconds for another load to finish (and for each lock
    another session holds on the tables), print the summary to out (standard output as it is
    then; None: print nothing), and return the report. strict: whether rejects fail the run,
    for the exit code of a summary that cannot be printed."""
    started = time.monotonic()
    data = extract.source(data_dir, anonymous)
    listed = check_data(data)
    conn = db.connect(settings)
    try:
        db.as_a_batch_job(conn)
        db.require_tables(conn, sql.TABLES + sql.COUNTING)
        with db.load_lock(conn, lock_wait) as waited:
            if waited:  # files delivered, moved or rotated while the run before loaded
                listed = check_data(data)
            db.require_this_schema(conn)
            db.wait_for_locks(conn, lock_wait)
            # The keys an interrupted bulk load left out are built first (its duplicates settled):
            # a load merges with them in place, unless it is a bulk load itself.
            server = load.server_of(conn)
            found_missing = keys_built_back(conn, server, None, progress)
            if found_missing.failed:
                key, why = next(iter(found_missing.failed.items()))
                raise (db.LockedError if found_missing.locked else db.DatabaseError)(
                    "the keys of songplays and time are missing (as an interrupted bulk load "
                    f"leaves them) and cannot be built back: {key}: {why}; nothing was loaded"
                )
            if full_refresh:
                refuse_a_refresh_that_loses(conn, data, listed)
            start = load.start_run(conn, server, described(data), full_refresh)
            with load.failure_recorded(conn, start):
                plans = {
                    kind: extract.plan(data, listed[kind], kind, start.known[kind], limits)
                    for kind in KINDS
                }
                batches = [batch for kind in KINDS for batch in plans[kind].batches]
                jobs = workers.default_jobs(batches, limits) if jobs is None else jobs
                preparer = workers.Preparer(batches, limits, jobs)
                try:
                    songs = load_batches(conn, start, preparer, "song", progress)
                    # Songs first; then a first load of the logs is a bulk load: the keys
                    # dropped, its plays resolved by the parse workers and written straight in
                    # with its instants.
                    bulk = load.begin_bulk_load(conn, start, plans["log"].batches)
                    preparer.hand_over(bulk.handed)
                    logs = load_batches(conn, start, preparer, "log", progress)
                finally:
                    preparer.close()
                built = keys_built_back(conn, server, start.run_id, progress)
                unchanged = {kind: plans[kind].unchanged for kind in KINDS}
                tally = Tally.total([songs, logs], unchanged, built.duplicates)
                report = finish(
                    conn,
                    start,
                    tally,
                    settings,
                    data,
                    started,
                    bulk,
                    found_missing,
                    built,
                    [path for kind in KINDS for path in plans[kind].ignored],
                    [path for kind in KINDS for path in plans[kind].gone],
                )
    except psycopg2.errors.LockNotAvailable as exc:
        held = sql.TABLES + sql.COUNTING + sql.CITUS_STAGING
        raise cli.noted(db.LockedError(db.kept_waiting(conn, lock_wait, held)), exc) from None
    finally:
        conn.close()
    if out is not None:
        show(report, "\n".join(report.lines(strict)), strict, None if out == "stdout" else out)
    return report


def check_data(data: Source) -> dict[str, Listing]:
    """What is under the data folder (or prefix), per kind, once it is known to hold data files."""
    shown = shown_root(data)
    if data.store is None:
        check_data_dir(Path(data.root), shown)
    listed = {kind: extract.listing(data, kind) for kind in KINDS}
    if not any(folder.files or folder.unlisted for folder in listed.values()):
        raise DataFolderError(
            f"no data files under {shown}: song_data/ and log_data/ hold no {extract.DATA_FILES}"
        )
    return listed


def refuse_a_refresh_that_loses(conn, data: Source, listed: dict[str, Listing]) -> None:
    """A full refresh stops, emptying nothing, where a folder it cannot list (or a link it
    cannot follow, or a file that took a folder's place) holds files loaded before: they could
    not be loaded again."""
    in_place = f"cannot read folder: {os.strerror(errno.ENOTDIR)}"
    unlisted = {
        extract.relative(data, kind, path): reason
        for kind in KINDS
        for path, reason in [
            *listed[kind].unlisted,
            # in a store, a key may name an object and a "folder" of others at once
            *((p, in_place) for p, note in listed[kind].ignored if not note and not data.store),
        ]
    }
    if not unlisted:
        return
    lost = load.folders_loaded_from(conn, list(unlisted))
    if lost:
        others = len(lost) - 1
        also = f" (and {cli.many(others, 'more folder', 'more folders')})" if others else ""
        raise DataFolderError(
            f"not refreshing from {shown_root(data)}: what was loaded "
            f"from {lost[0]}{also} cannot be loaded again, as it cannot be listed "
            f"({unlisted[lost[0]]}); nothing was emptied: mend it, or run without --full-refresh"
        )


def shown_root(data: Source) -> str:
    """The data folder or URL as messages show it: its credentials masked (before its \\ are
    doubled), one line."""
    return extract.path_text(cli.masked(data.root, a_value=True))


def described(data: Source) -> str:
    """The data as load_runs records it: a folder's absolute path, written as the manifest
    writes paths (whatever the locale's encoding), or the URL."""
    return data.root if data.store else extract.path_text(str(Path(data.root).resolve()))


def _looked_in(data_dir: Path) -> str:
    """Where a relative data folder was looked for, for its message."""
    if data_dir.is_absolute():
        return ""
    try:
        return f" in {extract.path_text(os.getcwd())}"
    except FileNotFoundError:
        return " in the working folder, which was deleted"


def check_data_dir(data_dir: Path, shown: str) -> None:
    try:
        found = data_dir.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise DataFolderError(
            f"data folder {shown} not found{_looked_in(data_dir)} (choose one with --data)"
        ) from None
    except OSError as exc:  # a name too long, a loop of links
        raise DataFolderError(f"cannot read data folder {shown}: {exc.strerror}") from None
    if not stat.S_ISDIR(found.st_mode):
        raise DataFolderError(
            f"data folder {shown} is not a folder: choose the folder that holds song_data/ "
            "and log_data/ with --data"
        )
    try:
        os.scandir(data_dir).close()
    except OSError as exc:  # a folder of another user's, say
        raise DataFolderError(f"cannot read data folder {shown}: {exc.strerror}") from None
    if not any((data_dir / extract.FOLDERS[kind]).is_dir() for kind in KINDS):
        raise DataFolderError(
            f"data folder {shown} holds neither song_data/ nor log_data/: choose the folder "
            "that holds them with --data"
        )


# ============ 2. prepare (workers.Preparer, beside the load); 3. load: one transaction per batch


def load_batches(
    conn, start: load.RunStart, preparer: workers.Preparer, kind: Kind, progress: bool | None
) -> Tally:
    """The kind's batches loaded, tallied part by part. The parts are not kept: what they say
    of each file would take memory in proportion to the files (half a kilobyte a file)."""
    batches = preparer.batches
    numbers = [n for n, batch in enumerate(batches) if batch.kind == kind]
    tally = Tally()
    files = sum(len(batches[n].tasks) for n in numbers)
    with progress_bar(f"{kind} files", "file", progress if numbers else False, files) as bar:
        for number in numbers:
            parts = preparer.parts(number)
            for part, loaded in load_or_split(conn, start, preparer, batches[number], parts):
                tally = Tally.total([tally, Tally.of(part, loaded)])
            bar.update(len(batches[number].tasks))
    return tally


def progress_bar(what: str, unit: str, progress: bool | None, total: int | None = None) -> tqdm:
    """A bar on standard error, gone once done; progress None: on a terminal only. None where
    standard error was closed at start (2>&-)."""
    return tqdm(
        total=total,
        desc=what,
        unit=unit,
        leave=False,
        file=sys.stderr,
        disable=True if sys.stderr is None else None if progress is None else not progress,
    )


def keys_built_back(
    conn, server: load.Server, run_id: int | None, progress: bool | None
) -> load.Built:
    """load.build_keys, with a bar where a bulk load left keys to build (minutes at 10M plays)."""
    missing = load.keys_missing(conn)
    shown = progress if missing else False
    with progress_bar("keys built back", "key", shown, len(missing)) as bar:
        counted = functools.partial(counted_on, bar)
        return load.build_keys(conn, server, missing, run_id, counted)


def counted_on(bar: tqdm, done: int, of: int) -> None:
    bar.total, bar.n = of, done
    bar.refresh()


class FoundUnusable(Exception):
    """Loading a batch found changed files none of whose records is usable: its transaction is
    rolled back, and the batch loaded again with them emptied."""

    def __init__(self, unusable: Unusable):
        super().__init__(", ".join(unusable))
        self.unusable = unusable


# What the database says of data it refuses: a value no check foresaw breaks a constraint, or a
# limit (a key too long for its index is a program limit).
REFUSED_DATA = (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.errors.ProgramLimitExceeded)

# Times a batch is loaded again for files found unusable. Each time, a file found before is
# emptied as long as its content is the same; one that changed again meanwhile to content as
# unusable (a writer still at work) is found again, and after the last time loads as it stands.
UNUSABLE_RETRIES = 2


def load_or_split(
    conn,
    start: load.RunStart,
    preparer: workers.Preparer,
    batch: Batch,
    parts: Generator[Part, None, None],
    unusable: Unusable | None = None,
) -> list[tuple[Part, Loaded]]:
    """Load a batch from its parts in one transaction; one the database refuses (a value no
    check foresaw) is loaded again file by file, and a single file it refuses is recorded as
    rejected whole. A changed file every record of which is rejected (an error page saved in
    its place, say) would take what it loaded with it: the batch is loaded again with the file
    emptied, keeping what it loaded (known only once all its parts are judged, in a big file)."""
    unusable = unusable or {}
    for retry in range(UNUSABLE_RETRIES + 1):
        try:
            with db.managed_cursor(conn) as cur:
                done = [
                    (dataclasses.replace(part, copies={}), load.load_part(cur, start, part))
                    for part in parts
                ]
                found = unusable_files(batch, [part for part, _ in done])
                if found and retry < UNUSABLE_RETRIES:
                    raise FoundUnusable(found)  # rolls the batch's transaction back
                return done
        except FoundUnusable as exc:
            unusable = unusable | exc.unusable
            parts = preparer.here(batch, unusable)
        except REFUSED_DATA as exc:
            parts.close()  # no more of them: a worker's still on their way are received
            return split_or_refused(conn, start, preparer, batch, unusable, cli.first_line(exc))


def split_or_refused(
    conn,
    start: load.RunStart,
    preparer: workers.Preparer,
    batch: Batch,
    unusable: Unusable,
    error: str,
) -> list[tuple[Part, Loaded]]:
    """A batch the database refused, loaded again file by file; a single file it refuses is
    recorded as rejected whole."""
    if len(batch.tasks) > 1:
        return [
            done
            for task in batch.tasks
            for alone in [Batch(batch.kind, (task,), batch.store)]
            for done in load_or_split(
                conn, start, preparer, alone, preparer.here(alone, unusable), unusable
            )
        ]
    part = workers.prepare_module().refused(batch, error, preparer.limits)
    with db.managed_cursor(conn) as cur:
        return [(part, load.load_part(cur, start, part))]


def unusable_files(batch: Batch, parts: list[Part]) -> Unusable:
    """The batch's changed files none of whose records was accepted or skipped (each rejected)
    where the version the manifest has holds one, with the SHA-256 of their content. A file
    with no record at all is emptied already."""
    usable, changed = {}, {}
    tasks = {task.path: task for task in batch.tasks}
    for part in parts:
        for f in part.files:
            usable[f.path] = usable.get(f.path, 0) + f.accepted + f.skipped
            if tasks[f.path].keeps(f.read):
                changed[f.path] = f.read.sha256
    return {path: sha256 for path, sha256 in changed.items() if not usable[path]}


# ======================================================== 4. finish: the checks and the report


def finish(
    conn,
    start: load.RunStart,
    tally: Tally,
    settings: db.Settings,
    data: extract.Source,
    started: float,
    bulk: load.BulkStart,
    found_missing: load.Built,
    built: load.Built,
    ignored: list[str],
    gone: list[str],
) -> Report:
    """Count, check and record the run's outcome."""
    changed = tally.anything_loaded or bool(built.built)
    # Over every row when this run may have changed plays of files it did not load, or built
    # keys (their duplicates settled); after a run that stopped unfinished (cut off after its
    # last commit, its checks may not have run) or whose report failed (until a run passes);
    # on Citus, where a check cannot join the shards to the manifest per file.
    owed = bool(found_missing.built or start.unreported) or start.checks_owed
    every_row = (
        not start.server.checks_per_file or tally.other_plays_touched or bool(built.built) or owed
    )
    with db.managed_cursor(conn) as cur:
        counted = start.server.star_counts(cur)
        after = counted.rows if changed else start.before
        checked = load.post_load_checks(cur, start.run_id, every_row) if changed or owed else None
        # A kept count of plays the checks found wrong, and counted again, was wrong before the
        # run too: both totals are moved by what it was off by, and the run's change stays.
        off, resolved_off = checked.plays_miscounted if checked else (0, 0)
        songs = extract.paths_under(data, "song")
        examples, earlier = load.rejects_and_earlier(cur, start, songs, REJECT_EXAMPLES + 1)
        report = Report(
            target=settings.describe(),
            data_dir=data.root,
            run_id=start.run_id,
            seconds=time.monotonic() - started,
            tally=tally,
            before=start.before | {"songplays": start.before["songplays"] + off},
            after=after | {"songplays": after["songplays"] + off},
            resolved_total=counted.resolved + resolved_off,
            resolved_before=start.resolved_before + resolved_off,
            checks=checked and {name: bad for name, (bad, _) in checked.found.items()},
            checked={
                name: scope for name, (_, scope) in (checked.found if checked else {}).items()
            },
            examples=examples,
            set_aside=bulk.handed is not None,
            kept_because=bulk.kept_because,
            found_missing=found_missing.built,
            restored=built.built,
            not_restored=built.failed,
            ignored=ignored,
            gone=gone,
            earlier=earlier,
        )
        load.record_outcome(cur, start.run_id, report.status)
    return report


# ================================================================ the command line


def data_place(text: str) -> str:
    """argparse type of --data: a folder or a URL, never empty (an unset variable in
    --data "$FEED", say, which would read the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("empty: name the folder, or the object store's URL")
    return text


def job_count(text: str) -> int:
    """argparse type of --jobs: a whole number from 0 to MAX_JOBS. Each worker holds a part in
    memory; more workers than that would only take memory."""
    return cli.natural_at_most(text, MAX_JOBS, f"{JOBS_PER_CPU} per CPU of this machine")


def show(report: Report, text: str, strict: bool, stream: TextIO | None = None) -> None:
    """The report's text on standard output (or stream); where it cannot be written, the run
    keeps its exit code."""
    cli.write_out(text, report.done, stream, report.exit_code(strict))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        description="Load song_data/ and log_data/ JSON into the Sparkify star schema.",
        epilog="examples:\n"
        "  python etl.py                                  # data/ into the embedded server\n"
        "  python etl.py --data data --strict --no-progress\n"
        "  python etl.py --json                           # the report as data (JSON)\n\n"
        "exit codes: 0 loaded (rejects are reported, not fatal); 1 a check or the "
        "reconciliation failed, a key a bulk load dropped could not be built "
        "back, or --strict and records were rejected; 2 bad arguments; "
        "3 database or data folder problem (an object store's included, or the keys of "
        "songplays and time missing and impossible to build), a parse worker killed or "
        "memory run out, or standard output that cannot take the summary (the run itself done); "
        "4 another load was still "
        "running after --wait, or another session kept a lock on the tables that long; 130 "
        "interrupted (Ctrl-C); 143 terminated (SIGTERM); 129 hung up (SIGHUP: its terminal "
        "closed); a failed run keeps 1 whatever becomes "
        "of its summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default="data",
        type=data_place,
        help="folder holding song_data/ and log_data/, or an object store's URL of the prefix "
        "holding them: s3://bucket/prefix (also gs://, az://; docs/object-storage.md) "
        "(default: data, in the current directory)",
    )
    parser.add_argument(
        "--anonymous",
        action="store_true",
        help="read an object store without credentials, as a public bucket allows",
    )
    db.add_database_url_option(parser)
    parser.add_argument(
        "--full-refresh",
        action="store_true",
        help="empty the star and the manifest first, then load every file (refused while a "
        "folder under the data folder cannot be listed)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any record or file was rejected, by this run or by the runs it "
        "completes (killed, or stopped by an error, before their report)",
    )
    parser.add_argument(
        "--jobs",
        type=job_count,
        default=None,
        help=f"worker processes that parse log files while the database loads: 0 to {MAX_JOBS} "
        f"({JOBS_PER_CPU} per CPU), and never more than there are log batches (etl.py parses "
        "song files itself) "
        "(default: 1 when there are three parts or more and more than "
        "one CPU, else 0)",
    )
    parser.add_argument(
        "--batch-mb",
        type=cli.positive,
        default=Limits.log_batch_bytes >> 20,
        help="megabytes of log files per batch, and per part of a bigger file (a song file's "
        "too); memory follows it (default: %(default)s)",
    )
    db.add_wait_option(
        parser,
        "another load (or create_tables.py) on the same database to finish, and for a lock "
        "another session holds on the tables (that wait: one second at least, 24 days at "
        "most, PostgreSQL's limit)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the run's report as one JSON object instead of the summary: every count "
        "it states (files per state, records per kind, rows per table), the rejects, the "
        "keys, the checks, the status and the exit code; a run that stops before its report: "
        "its run id (null before its load started), status, exit code and error "
        "(docs/reliability.md#the-report-as-data)",
    )
    args = parser.parse_args(argv)
    settings = db.Settings.from_env(args.database_url)
    limits = Limits(log_batch_bytes=args.batch_mb << 20)

    def load_and_report() -> int:
        try:
            report = run(
                settings,
                args.data,
                anonymous=args.anonymous,
                full_refresh=args.full_refresh,
                jobs=args.jobs,
                limits=limits,
                lock_wait=args.wait,
                progress=False if args.no_progress else None,
                strict=args.strict,
                out=None if args.json else "stdout",
            )
        except Exception as exc:
            if not workers.short_of_memory(exc):
                raise
            raise cli.noted(workers.out_of_memory(exc, "loading the files"), exc) from None
        if args.json:
            show(report, json.dumps(report.as_dict(args.strict), indent=2), args.strict)
        return report.exit_code(args.strict)

    # The data folder, or the object store's URL, as given: a store's secret may be a word a
    # bucket's name holds (moto's "testing", MinIO's "minioadmin"), which *** would only tell.
    given = [args.data, extract.root_of(args.data)]
    return db.run_command(settings, load_and_report, args.json, extract.store_secrets(), given)


if __name__ == "__main__":
    workers.without_pandas()
    cli.finish(main)
