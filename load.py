"""Load: stage a part's rows with COPY and merge them into the star with set-based SQL.

Everything here talks to PostgreSQL; every statement comes from sql_queries.py, and data travels
only as COPY payloads or query parameters.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable
from typing import Literal, NamedTuple

import psycopg2
import psycopg2.errors
import psycopg2.extras

import db
import sql_queries as sql
from contract import Batch, Kind, Loaded, Part, SongKeys

# ================================================================ a run's bookkeeping


@dataclasses.dataclass(frozen=True)
class RunStart:
    run_id: int
    before: dict[str, int]
    known: dict[Kind, dict[str, tuple[int, int, str | None, str]]]  # size, mtime, etag, sha
    distributed: bool  # songplays is a Citus distributed table: plays merge on the workers
    missing: frozenset[str] = frozenset()  # set-aside keys and indexes absent while it loads


def require_tables(conn) -> None:
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.missing_tables, {"tables": sql.TABLES + sql.COUNTING})
        missing = [row[0] for row in cur.fetchall()]
    if missing:
        raise db.DatabaseError(
            f"table(s) {', '.join(missing)} missing: run `python create_tables.py` first"
        )


def start_run(conn, data_dir: str, full_refresh: bool) -> RunStart:
    """Mark an earlier run that never finished as interrupted, record this one, empty the star
    for a full refresh, create the session's staging tables, and read the manifest."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.run_interrupted)
        cur.execute(sql.run_start, {"data_dir": data_dir})
        run_id = cur.fetchone()[0]
        distributed = db.distributed(cur)
        if full_refresh:
            cur.execute(sql.full_refresh)
        if distributed:
            cur.execute(sql.stage_plays_clear_citus)
        _create_staging(cur)
        before = star_counts(cur, distributed).rows
        known = {}
        for kind in ("song", "log"):
            cur.execute(sql.manifest_known, {"kind": kind})
            known[kind] = {p: tuple(version) for p, *version in cur.fetchall()}
    return RunStart(run_id, before, known, distributed)


def _create_staging(cur) -> None:
    """The session's staging tables (TEMP), unless this session has them already."""
    for query in sql.stage_table_queries:
        cur.execute(query)


class Counted(NamedTuple):
    rows: dict[str, int]  # per star table
    resolved: int  # plays resolved to a song


def star_counts(cur, distributed: bool) -> Counted:
    """The star's rows and resolved plays, exact: read from row_counts, which triggers keep; on
    Citus (distributed), where there are none, counted."""
    if distributed:
        rows = {}
        for table in sql.STAR_TABLES:
            cur.execute(sql.row_count.format(table=table))
            rows[table] = cur.fetchone()[0]
        cur.execute(sql.resolved_plays_citus)
        return Counted(rows, cur.fetchone()[0])
    cur.execute(sql.row_counts_read)
    counts = {table: (n, resolved) for table, n, resolved in cur.fetchall()}
    return Counted({table: counts[table][0] for table in sql.STAR_TABLES}, counts["songplays"][1])


CheckScope = Literal["by its constraints", "over this run's log files", "over every row"]


def post_load_checks(cur, run_id: int, every_row: bool) -> dict[str, tuple[int, CheckScope]]:
    """Offending rows per check, in the spirit of dbt's tests, and how each was checked: a check
    its constraints guarantee (in place and validated) is answered by them, and what they leave
    runs over this run's log files, or over every row when every_row (the run may have changed
    other files' plays). A check whose constraint is missing runs over every row."""
    names = [name for check in sql.CHECKS.values() for name in check["constraints"]]
    cur.execute(sql.constraints_in_force, {"names": names, "tables": sql.STAR_TABLES})
    in_force = {row[0] for row in cur.fetchall()}
    results = {}
    for name, check in sql.CHECKS.items():
        scoped = check.get("this_run")
        if not set(check["constraints"]) <= in_force or (scoped and every_row):
            query, scope = check["every_row"], "over every row"
        elif scoped:
            query, scope = scoped, "over this run's log files"
        else:
            results[name] = (0, "by its constraints")
            continue
        cur.execute(query, {"run_id": run_id})
        results[name] = (cur.fetchone()[0], scope)
    return results


# ================================================================ one part


def load_part(cur, start: RunStart, part: Part) -> Loaded:
    """Stage the part and merge it, inside the batch's transaction (the caller's cursor). On
    Citus (distributed) plays are staged in a table sharded like songplays and merged on the
    workers, and the statements that Citus runs otherwise take their Citus form. Where a key is
    set aside, its table is appended to, duplicates and all, until the key comes back: straight
    from the part (written, its plays resolved by the parse worker), or from the staging tables."""
    distributed, written = start.distributed, part.appended is not None
    if part.index:
        cur.execute(sql.stage_truncate)  # the batch's earlier parts are merged already
    cur.execute(sql.staging_time_zone)
    if distributed and part.kind == "log":
        cur.execute(sql.citus_sequential)  # reference tables are written after the shards
    staged = 0
    for table, payload in part.copies.items():
        if not payload or table in sql.DIRECT_COPIES:
            continue
        cur.copy_expert(
            sql.stage_plays_copy_citus
            if distributed and table == "stage_plays"
            else sql.copy_into.format(table=table),
            io.BytesIO(payload),
        )
        if table == "stage_plays":
            staged = cur.rowcount
    touched = [f for f in part.files if f.read.status == "unchanged"]
    if touched:
        psycopg2.extras.execute_batch(
            cur,
            sql.manifest_touch,
            [
                {
                    "path": f.path,
                    "size_bytes": f.read.size,
                    "mtime_ns": f.mtime_ns,
                    "etag": f.read.etag,
                }
                for f in touched
            ],
        )
    params = {"run_id": start.run_id}
    inserted, resolved, settled = {}, 0, False
    if part.kind == "song":
        cur.execute(sql.manifest_upsert, params)
        cur.execute(sql.manifest_add_part)
        cur.execute(sql.artists_upsert)
        cur.execute(sql.songs_upsert)
        cur.execute(sql.songplays_resolve_songs)
        resolved = sum(change for (change,) in cur.fetchall())
    else:
        # Only a changed file can have plays loaded already; new files have none to take back.
        # Where another file holds a copy of a play taken back, the best copy takes its place.
        reloading = any(f.read.status == "changed" and f.first for f in part.files)
        if reloading:
            cur.execute(sql.songplays_delete_reloaded)
            cur.execute(sql.copies_delete_reloaded)
            cur.execute(sql.reloaded_keys)
            if cur.rowcount:
                _settle(cur)  # the copies promoted are other files': in the manifest only
                settled = True
        cur.execute(sql.manifest_upsert, params)
        cur.execute(sql.manifest_add_part)
        if written:
            _copy(cur, "time", part.copies["time"])
        else:
            cur.execute(
                sql.time_insert_citus
                if distributed
                else sql.time_append
                if sql.TIME_KEY in start.missing
                else sql.time_insert
            )
        cur.execute(sql.users_update_citus if distributed else sql.users_update)
        cur.execute(sql.users_insert)
        merged, moved = {}, []
        if written:
            _copy(cur, "songplays", part.copies["songplays"])
            merged = part.appended
        elif staged:
            merged, moved = (
                _merge_plays_citus(cur, part, staged)
                if distributed
                else _merge_plays(cur, sql.PLAYS_KEY not in start.missing, staged)
            )
        inserted = {path: n for path, (n, _) in merged.items()}
        resolved = sum(matched for _, matched in merged.values())
        loading = [f for f in part.files if f.to_load]
        merged_here = Loaded(inserted, resolved)
        outcomes = {f.path: merged_here.outcome(part.kind, f) for f in loading}
        psycopg2.extras.execute_batch(
            cur,
            sql.manifest_add_loaded,
            [
                {"path": path, "loaded": loaded, "duplicates": duplicates}
                for path, (loaded, duplicates) in outcomes.items()
            ],
        )
        # What settling moved in or out of songplays: in the manifest already (settle_manifest),
        # in this part's counts now.
        for move in moved:
            if move.path in {f.path for f in loading}:
                inserted[move.path] = inserted.get(move.path, 0) + move.plays
                resolved += move.resolved
        if reloading or moved:
            cur.execute(sql.users_refresh)
            cur.execute(sql.users_delete_orphans)
            cur.execute(sql.time_delete_orphans)
        settled = settled or bool(moved)
    cur.execute(sql.rejects_insert, params)
    return Loaded(inserted, resolved, settled)


def _copy(cur, table: str, payload: bytes) -> None:
    """A payload straight into a star table (a bulk load's, its keys set aside)."""
    if payload:
        cur.copy_expert(sql.DIRECT_COPIES[table], io.BytesIO(payload))


Merged = dict[str, tuple[int, int]]  # per path: plays inserted, of them resolved to a song


class Moved(NamedTuple):
    """A file of whose plays settling moved some into songplays (plays > 0) or out of it (< 0),
    from or to songplay_copies."""

    path: str
    run_id: int
    plays: int
    resolved: int  # of those plays, the ones resolved to a song


def _merge_plays(cur, keyed: bool, staged: int) -> tuple[Merged, list[Moved]]:
    """The staged plays into songplays; when the merge skipped some (their key is stored), the
    copies of those keys are settled."""
    cur.execute(sql.songplays_insert if keyed else sql.songplays_append)
    merged = {path: (n, matched) for path, n, matched in cur.fetchall()}
    if sum(n for n, _ in merged.values()) == staged:
        return merged, []
    cur.execute(sql.contest_staged)
    cur.execute(sql.staged_keys)
    return merged, _settle(cur)


def _merge_plays_citus(cur, part: Part, staged: int) -> tuple[Merged, list[Moved]]:
    """_merge_plays on Citus: the merge runs on each shard, with the part's file ids as
    parameters (a pushed-down merge cannot join the coordinator's manifest)."""
    cur.execute(sql.manifest_file_ids, {"paths": [f.path for f in part.files if f.to_load]})
    paths, file_ids = zip(*cur.fetchall())
    files = {"paths": list(paths), "file_ids": list(file_ids)}
    cur.execute(sql.songplays_insert_citus, files)
    cur.execute(sql.songplays_inserted_citus)
    merged = {path: (n, matched) for path, n, matched in cur.fetchall()}
    moved = []
    if sum(n for n, _ in merged.values()) < staged:
        cur.execute(sql.contest_staged_citus, files)
        cur.execute(sql.staged_keys)
        moved = _settle(cur)
    cur.execute(sql.stage_plays_done_citus)
    return merged, moved


def _settle(cur) -> list[Moved]:
    """For each play of stage_keys (and the staged copies in stage_contest): songplays keeps the
    copy of the file first in path order, songplay_copies every other file's; the manifest's
    counts follow. Returns, for every file that had a copy in the contest, what moved."""
    for query in sql.settle_queries:
        cur.execute(query)
    cur.execute(sql.settle_manifest)
    moved = [Moved(*row) for row in cur.fetchall()]
    cur.execute(sql.settle_done)
    return moved


# ================================================================ bulk loads


def song_keys(conn) -> SongKeys | None:
    """The song keys, for the parse worker to resolve a bulk load's plays; None when the
    catalogue has more than sql.SONG_KEYS_IN_MEMORY of them (the database resolves them)."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.song_keys_read, {"limit": sql.SONG_KEYS_IN_MEMORY + 1})
        keys = cur.fetchall()
    return None if len(keys) > sql.SONG_KEYS_IN_MEMORY else keys


def new_file_ids(conn, batches: list[Batch]) -> dict[str, int]:
    """The ids the new files of the batches will have in the manifest, taken now, in order."""
    new = [t.path for b in batches for t in b.tasks if t.known_sha256 is None]
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.file_ids_take, {"files": len(new)})
        return dict(zip(new, (row[0] for row in cur.fetchall())))


def set_aside_for_bulk_load(
    conn, new_log_bytes: int, distributed: bool = False, reloading: bool = False
) -> bool:
    """Drop songplays' keys, foreign keys and file index, and time's key, when this run's new log
    files are at least as big as the table: maintaining them row by row would cost more than
    the insert. The keys stay on Citus, and when changed log files are to be loaded again (their
    plays are taken back and merged with the keys in place). False when nothing is set aside: a
    small load, or other sessions holding the tables (never interrupted)."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.songplays_size_citus if distributed else sql.songplays_size)
        if new_log_bytes == 0 or new_log_bytes < cur.fetchone()[0]:
            return False
    what = "foreign keys" if distributed or reloading else "everything"
    try:
        with db.managed_cursor(conn) as cur:
            cur.execute(sql.set_aside_lock_timeout)
            if distributed:
                cur.execute(sql.citus_sequential)
            for drop in sql.SET_ASIDE_DROPS[what]:
                cur.execute(drop)
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected):
        return False
    return True


def set_aside_missing(conn) -> frozenset[str]:
    """The keys and indexes a bulk load sets aside that are absent now: this run's, or what an
    interrupted run or a failed restore left out."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.set_aside_present, {"names": list(sql.BULK_SET_ASIDE)})
        present = {row[0] for row in cur.fetchall()}
    return frozenset(sql.BULK_SET_ASIDE) - present


@dataclasses.dataclass(frozen=True)
class Restored:
    """What restore_set_aside did: what came back, what could not (and why), and this run's
    plays that lost to another copy before songplays' key came back (of them resolved to a
    song)."""

    added: list[str]
    problems: list[str]
    duplicates: int = 0
    duplicates_resolved: int = 0


def restore_set_aside(
    conn, names: Iterable[str], run_id: int | None = None, distributed: bool = False
) -> Restored:
    """Add back those of names (of sql.BULK_SET_ASIDE) that are missing, this run's or an
    interrupted run's, each in its own transaction: every key is built and every foreign key
    checked over the whole table in one pass. A key that duplicates keep from coming back has
    them settled first, in the same transaction (the copy of the file first in path order stays,
    as with the key in place; the plays of run_id's files that lost are counted). What could not
    come back stays missing for the next run to try again."""
    missing = set_aside_missing(conn) & set(names)
    added, problems, removed = [], [], (0, 0)
    for name, (create, _) in sql.BULK_SET_ASIDE.items():
        if name not in missing:
            continue
        needed = sql.SET_ASIDE_NEEDS.get(name)
        if needed in missing and needed not in added:
            problems.append(f"{name}: it needs {needed}, which is not back")
            continue
        try:
            with db.managed_cursor(conn) as cur:
                cur.execute(sql.restore_lock_timeout)
                cur.execute(sql.restore_savepoint)
                try:
                    cur.execute(create)
                    removed_here = (0, 0)
                except psycopg2.errors.UniqueViolation:
                    if name not in (sql.PLAYS_KEY, sql.TIME_KEY):
                        raise
                    cur.execute(sql.restore_rollback_to_savepoint)
                    removed_here = _remove_duplicates(cur, name, run_id)
                    cur.execute(create)
        except psycopg2.errors.LockNotAvailable:
            problems.append(f"{name}: another session kept a conflicting lock on its tables")
        except psycopg2.errors.DeadlockDetected:
            problems.append(f"{name}: it deadlocked with another session's writes")
        except psycopg2.IntegrityError as exc:
            problems.append(f"{name}: {db.first_line(exc)}")
        else:
            added.append(name)
            if name == sql.PLAYS_KEY:
                removed = removed_here
    if added:
        try:
            with db.managed_cursor(conn) as cur:
                cur.execute(sql.restore_lock_timeout)
                if distributed:
                    cur.execute(sql.citus_sequential)  # songplays' shards, then time's
                cur.execute(sql.analyze_after_bulk_load)
        except psycopg2.errors.LockNotAvailable:
            pass  # statistics only: autovacuum will gather them
    return Restored(added, problems, *removed)


def _remove_duplicates(cur, key: str, run_id: int | None) -> tuple[int, int]:
    """What keeps the key from coming back: plays or instants loaded twice. Returns the plays of
    run_id's files that lost to another copy, and of them those resolved to a song ((0, 0) for
    time)."""
    if key == sql.TIME_KEY:
        cur.execute(sql.time_duplicates_remove)
        return (0, 0)
    _create_staging(cur)  # at a run's start, before start_run
    cur.execute(sql.plays_duplicated_keys)
    moved = _settle(cur)
    cur.execute(sql.users_refresh)
    cur.execute(sql.users_delete_orphans)
    cur.execute(sql.time_delete_orphans)
    ours = [move for move in moved if move.run_id == run_id]
    return (-sum(move.plays for move in ours), -sum(move.resolved for move in ours))
