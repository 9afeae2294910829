"""Load Sparkify's song and log JSON into the star schema.

    python etl.py [--data DIR] [--database-url URL] [--full-refresh] [--strict] ...

The pipeline, top to bottom (each stage is a module named for it):
  1. extract.plan     lists the files the manifest has not seen as they are now, in batches;
  2. prepare          reads a batch (extract), judges and shapes its records (transform) and
                      renders the staging tables' COPY payloads, in parts of bounded size; in a
                      worker process when there is more than a little to do;
  3. load_batches     hands each part to load.load_part, one transaction per batch;
  4. finish           runs the post-load checks and writes the run's Report (report.py).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg2
from tqdm import tqdm

import cli
import db
import extract
import load
import sql_queries as sql
import transform
from extract import KINDS, Batch, Limits, Records
from load import FilePart, Loaded, Part
from report import Report, Tally

REJECT_EXAMPLES = 5


class UsageError(cli.UserError):
    """A problem with what the user asked for, such as a data folder that is not there."""


# ================================================================ 2. prepare: files in, COPY out


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A file's content, or one part of a big file, parsed: where it starts and what it holds."""

    file: FilePart
    first_line: int
    data: bytes
    records: Records | None  # a log's; a song file's records are made for its whole part
    rejects: list[tuple]
    objects: list[dict] = dataclasses.field(default_factory=list)  # a song file's


def prepare(batch: Batch, number: int, limits: Limits) -> Iterator[Part]:
    """The batch's parts: a batch of small files is one part; a file bigger than
    limits.log_batch_bytes is read, parsed and shaped one part at a time."""
    part_bytes = limits.log_batch_bytes if batch.kind == "log" else 1 << 62
    chunks, problems, size, index = [], [], 0, 0
    for task in batch.tasks:
        read, contents = extract.read_file(task, part_bytes)
        file = FilePart(task.path, task.mtime_ns, read)
        if read.status == "unreadable":
            problems.append((task.path, None, f"cannot read file: {read.error}", None))
        first_line, anything = 1, False
        for data in contents:
            chunk = parse(file, data, first_line, limits)
            anything = (
                anything
                or bool(chunk.objects or chunk.rejects)
                or (chunk.records is not None and not chunk.records.values.empty)
            )
            chunks.append(chunk)
            size += len(data)
            first_line += data.count(b"\n")
            file = dataclasses.replace(file, first=False)
            if size >= part_bytes:
                yield shape(batch.kind, number, index, False, chunks, problems)
                chunks, problems, size, index = [], [], 0, index + 1
        if read.status in ("new", "changed") and not anything:
            problems.append((task.path, None, "empty file", None))
        if file.first:  # nothing read: the file still counts, once
            chunks.append(Chunk(file, 1, b"", None, []))
    yield shape(batch.kind, number, index, True, chunks, problems)


def parse(file: FilePart, data: bytes, first_line: int, limits: Limits) -> Chunk:
    if file.path.startswith(extract.FOLDERS["song"] + "/"):
        objects, rejects = extract.decode_song_file(data, file.path)
        return Chunk(file, first_line, data, None, rejects, objects)
    records, rejects = extract.parse_log_file(data, file.path, limits.parse_piece_bytes, first_line)
    return Chunk(file, first_line, data, records, rejects)


def shape(
    kind: str, number: int, index: int, last: bool, chunks: list[Chunk], problems: list[tuple]
) -> Part:
    """Judge the chunks' records, shape the good ones into staging rows, count per file."""
    fields = extract.FIELDS[kind]
    objects = [o for c in chunks for o in c.objects]
    records = Records.combined(
        [c.records for c in chunks if c.records is not None]
        + [extract.records_from(objects, fields)],
        fields,
    )
    if kind == "song":
        good, invalid = transform.valid_songs(records)
        skipped = {}
        copies = {"stage_songs": stage_csv("stage_songs", transform.song_rows(good))}
    else:
        good, invalid, skipped_per_file = transform.valid_events(records)
        skipped = skipped_per_file.to_dict()
        rows = transform.dedupe_plays(transform.play_rows(good))
        copies = {
            "stage_plays": stage_csv("stage_plays", rows),
            "stage_users": stage_csv("stage_users", transform.users_table(rows)),
            "stage_time": stage_csv("stage_time", transform.time_table(rows)),
        }
    parse_rejects = [r for c in chunks for r in c.rejects]
    rejects = with_raw(
        pd.concat([transform.reject_frame(problems + parse_rejects), invalid], ignore_index=True),
        chunks,
    )
    # Per-file counts read from dicts, once per part: a lookup per file in a Series made a
    # 10,000-file song batch cost seconds.
    line_rejects = rejects[rejects["line"].notna()]["path"].value_counts().to_dict()
    parsed = records.values["path"].value_counts().to_dict()
    accepted = good["path"].value_counts().to_dict()
    invalid_per_file = invalid["path"].value_counts().to_dict()
    files = tuple(
        dataclasses.replace(
            c.file,
            rejected=line_rejects.get(c.file.path, 0),
            skipped=skipped.get(c.file.path, 0),
            accepted=accepted.get(c.file.path, 0),
            records=parsed.get(c.file.path, 0)
            + line_rejects.get(c.file.path, 0)
            - invalid_per_file.get(c.file.path, 0),
        )
        for c in chunks
    )
    copies["stage_manifest"] = manifest_csv(kind, files)
    copies["stage_rejects"] = stage_csv("stage_rejects", rejects)
    return Part(kind, number, index, last, files, copies, int(rejects["line"].isna().sum()))


def with_raw(rejects: pd.DataFrame, chunks: list[Chunk]) -> pd.DataFrame:
    """Rejects found in pieces read the fast way get their raw line from the chunk's bytes."""
    need = rejects["raw"].isna() & rejects["line"].notna()
    if not need.any():
        return rejects
    starts = {c.file.path: c for c in chunks}
    raw = [
        transform.storable(extract.raw_lines(starts[p].data)[n - starts[p].first_line])
        for p, n in rejects.loc[need, ["path", "line"]].itertuples(index=False)
    ]
    return rejects.assign(raw=rejects["raw"].mask(need, pd.Series(raw, index=need[need].index)))


def stage_csv(table: str, frame: pd.DataFrame) -> bytes:
    return transform.render_csv(frame, sql.STAGE_COLUMNS[table])


def manifest_csv(kind: str, files: tuple[FilePart, ...]) -> bytes:
    return stage_csv(
        "stage_manifest",
        pd.DataFrame(
            [
                {
                    "path": f.path,
                    "kind": kind,
                    "first": f.first,
                    "size_bytes": f.read.size,
                    "mtime_ns": f.mtime_ns,
                    "sha256": f.read.sha256,
                    "records": f.records,
                    "loaded": f.accepted if kind == "song" else 0,
                    "skipped": f.skipped,
                    "rejected": f.rejected,
                }
                for f in files
                if f.to_load
            ],
            columns=sql.STAGE_COLUMNS["stage_manifest"],
        ),
    )


def refused(batch: Batch, number: int, error: str, limits: Limits) -> Part:
    """A one-file batch the database refused: every record of the file is recorded as rejected,
    so that one file never stops a run and the manifest does not retry it until it changes."""
    files = [f for part in prepare(batch, number, limits) for f in part.files]
    records = sum(f.records for f in files)
    file = dataclasses.replace(files[0], records=records, accepted=0, skipped=0, rejected=records)
    problems = [(file.path, None, f"the database refused this file: {error}", None)]
    return Part(
        batch.kind,
        number,
        0,
        True,
        (file,),
        {
            "stage_manifest": manifest_csv(batch.kind, (file,)),
            "stage_rejects": stage_csv("stage_rejects", transform.reject_frame(problems)),
        },
        file_problems=1,
    )


# ================================================================ parsing while the database loads


def prepared(batches: list[Batch], limits: Limits, jobs: int) -> Iterator[Part]:
    """Every batch's parts, in order. With jobs > 0, worker processes prepare them while the
    database loads the current one; each worker keeps at most one part waiting, so memory stays
    bounded whatever the size of the input."""
    if jobs <= 0:
        for number, batch in enumerate(batches):
            yield from prepare(batch, number, limits)
        return
    context = multiprocessing.get_context("spawn")
    outboxes = [context.Queue(maxsize=1) for _ in range(jobs)]
    workers = [
        context.Process(
            target=_worker, daemon=True, args=(batches, k, jobs, limits, outboxes[k], os.getpid())
        )
        for k in range(jobs)
    ]
    for worker in workers:
        worker.start()
    try:
        for number in range(len(batches)):
            while True:
                part = _receive(outboxes[number % jobs], workers[number % jobs])
                yield part
                if part.last:
                    break
    finally:
        for worker in workers:
            worker.kill()
            worker.join()


def _worker(batches, k: int, jobs: int, limits: Limits, outbox, parent: int) -> None:
    _die_with(parent)
    try:
        for number in range(k, len(batches), jobs):
            for part in prepare(batches[number], number, limits):
                outbox.put(part)
    except BaseException:
        outbox.put(WorkerFailed(traceback.format_exc()))


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    traceback: str


def _receive(outbox, worker) -> Part:
    while True:
        try:
            item = outbox.get(timeout=1)
        except queue.Empty:
            if not worker.is_alive():
                raise RuntimeError(f"the parse worker died (exit code {worker.exitcode})") from None
            continue
        if isinstance(item, WorkerFailed):
            raise RuntimeError(f"the parse worker failed:\n{item.traceback}")
        return item


def _die_with(parent: int) -> None:
    """A worker dies with etl.py, even with a kill -9 (Linux's parent-death signal)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


# ======================================================== 3. load: one transaction per batch


def load_batches(
    conn,
    start: load.RunStart,
    batches: list[Batch],
    parts: Iterator[Part],
    limits: Limits,
    progress: bool | None,
) -> Tally:
    tally = Tally()
    bars = {}
    for number, batch_parts in itertools.groupby(parts, key=lambda p: p.batch):
        batch = batches[number]
        bar = bars.get(batch.kind) or bars.setdefault(
            batch.kind,
            tqdm(
                total=sum(len(b.tasks) for b in batches if b.kind == batch.kind),
                desc=f"{batch.kind} files",
                unit="file",
                leave=False,
                file=sys.stderr,
                disable=None if progress is None else not progress,
            ),
        )
        for part, loaded in load_or_split(conn, start, batch, number, batch_parts, limits):
            tally.add(part, loaded)
        bar.update(len(batch.tasks))
        if number + 1 == len(batches) or batches[number + 1].kind != batch.kind:
            bar.close()
    return tally


def load_or_split(
    conn, start: load.RunStart, batch: Batch, number: int, parts: Iterator[Part], limits: Limits
) -> list[tuple[Part, Loaded]]:
    """Load a batch in one transaction; one the database refuses (a value no check foresaw) is
    loaded again file by file, and a single file it refuses is recorded as rejected whole."""
    try:
        with db.managed_cursor(conn) as cur:
            return [
                (
                    dataclasses.replace(part, copies={}),
                    load.load_part(cur, start.run_id, part, start.distributed),
                )
                for part in parts
            ]
    except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
        if len(batch.tasks) > 1:
            return [
                done
                for task in batch.tasks
                for done in load_or_split(
                    conn,
                    start,
                    Batch(batch.kind, (task,)),
                    number,
                    prepare(Batch(batch.kind, (task,)), number, limits),
                    limits,
                )
            ]
        part = refused(batch, number, db.first_line(exc), limits)
        with db.managed_cursor(conn) as cur:
            return [(part, load.load_part(cur, start.run_id, part, start.distributed))]


def default_jobs(batches: list[Batch], limits: Limits) -> int:
    """A worker process costs about a second to start: it pays from a few parts on."""
    parts = sum(max(1, sum(t.size for t in b.tasks) // limits.log_batch_bytes) for b in batches)
    return 1 if parts >= 3 and (os.cpu_count() or 1) > 1 else 0


# ================================================================ the run


def run(
    settings: db.Settings,
    data_dir: Path,
    *,
    full_refresh: bool = False,
    jobs: int | None = None,
    progress: bool | None = None,
    limits: Limits = Limits(),
    out=sys.stdout,
) -> Report:
    """Load data_dir into the database, print the summary to out, and return the report."""
    started = time.monotonic()
    check_data_dir(data_dir)
    conn = db.connect(settings)
    try:
        load.require_tables(conn)
        db.acquire_lock(conn)
        start = load.start_run(conn, data_dir, full_refresh)
        plans = {kind: extract.plan(data_dir, kind, start.known[kind], limits) for kind in KINDS}
        batches = [batch for kind in KINDS for batch in plans[kind][0]]
        set_aside = load.set_aside_for_bulk_load(
            conn, sum(b.new_bytes for b in batches if b.kind == "log"), start.distributed
        )
        workers = default_jobs(batches, limits) if jobs is None else jobs
        tally = load_batches(
            conn, start, batches, prepared(batches, limits, workers), limits, progress
        )
        for kind in KINDS:
            tally.add_unchanged(kind, plans[kind][1])
        restored, not_restored = load.restore_set_aside(conn, start.distributed)
        report = finish(
            conn, start, tally, settings, data_dir, started, set_aside, restored, not_restored
        )
    finally:
        conn.close()
    print("\n".join(report.lines()), file=out)
    return report


def check_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise UsageError(f"data folder {data_dir} not found (choose one with --data)")
    if not any(extract.find(data_dir, kind) for kind in KINDS):
        raise UsageError(f"no song_data/**/*.json or log_data/**/*.json under {data_dir}")


def finish(
    conn,
    start: load.RunStart,
    tally: Tally,
    settings: db.Settings,
    data_dir: Path,
    started: float,
    set_aside: bool,
    restored: list[str],
    not_restored: list[str],
) -> Report:
    """Count, check and record the run's outcome."""
    with db.managed_cursor(conn) as cur:
        after = load.table_counts(cur) if tally.anything_loaded else start.before
        checks = load.post_load_checks(cur) if tally.anything_loaded else None
        cur.execute(sql.resolved_plays)
        resolved_total = cur.fetchone()[0]
        cur.execute(sql.run_rejects, {"run_id": start.run_id, "limit": REJECT_EXAMPLES})
        examples = cur.fetchall()
        report = Report(
            settings.describe(),
            data_dir,
            start.run_id,
            0.0,
            tally,
            start.before,
            after,
            resolved_total,
            checks,
            examples,
            set_aside,
            restored,
            not_restored,
        )
        cur.execute(
            sql.run_finish,
            {"run_id": start.run_id, "status": "failed" if report.failed else "succeeded"},
        )
    return dataclasses.replace(report, seconds=time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load song_data/ and log_data/ JSON into the Sparkify star schema.",
        epilog="exit codes: 0 loaded (rejects are reported, not fatal); 1 a check or the "
        "reconciliation failed, a foreign key set aside for a bulk load could not be "
        "added back, or --strict and records were rejected; 2 bad arguments; "
        "3 database or data folder problem; 4 another load is running",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data"),
        help="folder holding song_data/ and log_data/ (default: data)",
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: $DATABASE_URL, then "
        "PG* variables, then the embedded server)",
    )
    parser.add_argument(
        "--full-refresh",
        action="store_true",
        help="empty the star and the manifest first, then load every file",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when any record or file was rejected"
    )
    parser.add_argument(
        "--jobs",
        type=cli.natural,
        default=None,
        help="worker processes that parse while the database loads "
        "(default: 1 when there are three parts or more and more than "
        "one CPU, else 0)",
    )
    parser.add_argument(
        "--batch-mb",
        type=cli.positive,
        default=Limits.log_batch_bytes >> 20,
        help="megabytes of log files per batch, and per part of a bigger file; "
        "memory follows it (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    settings = db.Settings.from_env(args.database_url)
    limits = Limits(log_batch_bytes=args.batch_mb << 20)
    return cli.run_command(
        lambda: run(
            settings,
            args.data,
            full_refresh=args.full_refresh,
            jobs=args.jobs,
            limits=limits,
            progress=False if args.no_progress else None,
        ).exit_code(args.strict)
    )


if __name__ == "__main__":
    sys.exit(main())
