"""Load: stage a part's rows with COPY and merge them into the star with set-based SQL.

Everything here talks to PostgreSQL; every statement comes from sql_queries.py, and data travels
only as COPY payloads or query parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from typing import Literal, NamedTuple

import psycopg2
import psycopg2.errors
import psycopg2.extras

import cli
import db
import sql_queries as sql
from contract import KINDS, Batch, HandOver, Kind, Known, Loaded, Part
from report import Earlier, Example

# ================================================================ a run's bookkeeping


@dataclasses.dataclass(frozen=True)
class RunStart:
    run_id: int
    before: dict[str, int]
    resolved_before: int  # plays resolved to a song
    known: dict[Kind, dict[str, Known]]  # the manifest's files, by path
    server: Server  # plain PostgreSQL, or Citus
    # the runs since the last that made its report: their checks may not have run, and what
    # they rejected is reported by this one
    unreported: list[int]
    checks_owed: bool  # the last run that made its report failed: this one checks every row
    lock_timeout: str  # the session's (--wait), which each part's transaction sets on Citus


def server_of(conn) -> Server:
    """Plain PostgreSQL, or Citus where songplays is distributed (as create_tables.py makes it
    on a Citus coordinator): chosen once per run."""
    with db.managed_cursor(conn) as cur:
        return CITUS if db.distributed(cur) else PLAIN


def start_run(conn, server: Server, data_dir: str, full_refresh: bool) -> RunStart:
    """Mark an earlier run that never finished as interrupted, record this one, empty the star
    for a full refresh, create the session's staging tables, and read the manifest. A full
    refresh waits a few seconds for sessions holding the tables, then names them."""
    try:
        return _start_run(conn, server, data_dir, full_refresh)
    except psycopg2.errors.LockNotAvailable:
        if not full_refresh:
            raise
        holders = db.sessions_holding(conn, sql.TABLES).sessions
        held_by = "; ".join(holders) or db.unseen_holder(conn)
        raise db.DatabaseError(
            f"cannot empty the tables for --full-refresh: locked by {held_by}; commit or end "
            "those sessions and run again (nothing was emptied)"
        ) from None
    except psycopg2.errors.FeatureNotSupported as exc:  # TRUNCATE, with a foreign key of yours
        if not full_refresh:
            raise
        detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
        raise db.DatabaseError(
            f"cannot empty the tables for --full-refresh: {exc.diag.message_primary}{detail}; "
            "drop that foreign key, or empty that table too with TRUNCATE ... CASCADE, and run "
            "again (nothing was emptied)"
        ) from None


@contextlib.contextmanager
def failure_recorded(conn, start: RunStart):
    """The run recorded as failed when the block stops on an error (it makes no report: the
    next run reports what it rejected), the keys a bulk load dropped built back first (an
    object store that stops answering, say: the next run may not get that far). Ctrl-C, like a
    kill, leaves both to the next run, which records it as interrupted; so does a connection
    lost. Whatever stops the block is marked with the run (cli.stopping)."""
    try:
        try:
            yield
        except Exception as exc:
            if (stop := db.as_a_stop(exc)) is not exc:
                raise stop from None  # a stop: left to the next run, as Ctrl-C is
            try:  # each on its own: a full disk may refuse the keys and not the record
                conn.rollback()
                with db.managed_cursor(conn) as cur:
                    cur.execute(sql.run_stopped, {"run_id": start.run_id})
            except psycopg2.Error:
                pass  # the connection is gone: the error that ended the run says so
            try:
                built = build_keys(conn, start.server, keys_missing(conn))
            except psycopg2.Error:
                pass
            else:
                for key, why in built.failed.items():
                    exc.add_note(
                        f"the keys of songplays and time stay missing ({key}: {why}): the next "
                        "run builds them first"
                    )
            raise
    except BaseException as exc:  # that error, or Ctrl-C or SIGTERM, even as it is recorded
        cli.stopping(exc, start.run_id)
        raise


def _start_run(conn, server: Server, data_dir: str, full_refresh: bool) -> RunStart:
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.runs_unreported)
        unreported = [row[0] for row in cur.fetchall()]
        cur.execute(sql.last_report_failed)
        checks_owed = cur.fetchone()[0]
        cur.execute(sql.lock_timeout_show)
        lock_timeout = cur.fetchone()[0]
        cur.execute(sql.run_start, {"data_dir": data_dir})
        run_id = cur.fetchone()[0]
        if full_refresh:
            cur.execute(sql.tables_lock_timeout)
            cur.execute(sql.full_refresh)
        for query in server.run_setup:
            cur.execute(query)
        _create_staging(cur)
        before = server.star_counts(cur)
        known = {}
        for kind in KINDS:
            cur.execute(sql.manifest_known, {"kind": kind})
            known[kind] = {
                path: Known((size, mtime_ns, etag), sha256, damaged, usable, run_id)
                for path, size, mtime_ns, etag, sha256, damaged, usable, run_id in cur.fetchall()
            }
    return RunStart(
        run_id, before.rows, before.resolved, known, server, unreported, checks_owed, lock_timeout
    )


def _create_staging(cur) -> None:
    """The session's staging tables (TEMP), unless this session has them already."""
    for query in sql.stage_table_queries:
        cur.execute(query)


class Counted(NamedTuple):
    rows: dict[str, int]  # per star table
    resolved: int  # plays resolved to a song


def _counts_kept(cur) -> Counted:
    """The star's rows and resolved plays, exact, as row_counts has them (triggers keep it)."""
    cur.execute(sql.row_counts_read)
    counts = {table: (n, resolved) for table, n, resolved in cur.fetchall()}
    return Counted({table: counts[table][0] for table in sql.STAR_TABLES}, counts["songplays"][1])


def _counts_counted(cur) -> Counted:
    """The star's rows and resolved plays, counted: on Citus, which keeps no row_counts."""
    rows = {}
    for table in sql.STAR_TABLES:
        cur.execute(sql.row_count[table])
        rows[table] = cur.fetchone()[0]
    cur.execute(sql.resolved_plays_counted)
    return Counted(rows, cur.fetchone()[0])


def folders_loaded_from(conn, folders: list[str]) -> list[str]:
    """Those of the folders (paths under the data folder) that files loaded before lie in."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.folders_loaded_from, {"folders": folders})
        return [row[0] for row in cur.fetchall()]


def rejects_and_earlier(
    cur, start: RunStart, songs: list[str], limit: int
) -> tuple[list[Example], Earlier]:
    """The run's first rejects (song files' first: their paths start with songs), up to limit;
    and what the runs it completes (killed, cut off, stopped by an error before their report)
    loaded and rejected, with their first rejects."""
    cur.execute(sql.run_rejects, {"run_id": start.run_id, "songs": songs, "limit": limit})
    examples = cur.fetchall()
    earlier = {"runs": start.unreported, "songs": songs, "limit": limit}
    cur.execute(sql.earlier_rejects_count, earlier)
    records, files = cur.fetchone()
    cur.execute(sql.earlier_rejects, earlier)
    earlier_examples = cur.fetchall()
    cur.execute(sql.earlier_loads, earlier)
    loaded = {kind: (n, loaded) for kind, n, loaded in cur.fetchall()}
    return examples, Earlier(start.unreported, records, files, earlier_examples, loaded)


def record_outcome(cur, run_id: int, status: str) -> None:
    """The run's row in load_runs: how it ended, and when."""
    cur.execute(sql.run_finish, {"run_id": run_id, "status": status})


CheckScope = Literal["by its constraints", "over this run's log files", "over every row"]


class Checked(NamedTuple):
    found: dict[str, tuple[int, CheckScope]]  # offending rows per check, and how it ran
    plays_miscounted: tuple[int, int] = (0, 0)  # plays, resolved: counted less what was kept


def post_load_checks(cur, run_id: int, every_row: bool) -> Checked:
    """Offending rows per check, in the spirit of dbt's tests, and how each was checked: a check
    its constraints guarantee (in place and validated) is answered by them, and what they leave
    runs over this run's log files, or over every row when every_row (the run may have changed
    other files' plays) or when the other files differ in total from what is kept of them. A
    check whose constraint is missing runs over every row. Where every file matches but the
    kept count of plays did not, that count is made right, and how far off it was returned."""
    names = [name for check in sql.CHECKS.values() for name in check["constraints"]]
    cur.execute(sql.constraints_in_force, {"names": names, "tables": sql.STAR_TABLES})
    in_force = {row[0] for row in cur.fetchall()}
    results, miscounted = {}, (0, 0)
    for name, check in sql.CHECKS.items():
        scoped = "this_run" in check
        differ = scoped and not every_row and _others_differ(cur, check, run_id)
        if not set(check["constraints"]) <= in_force or (scoped and (every_row or differ)):
            query, scope = check["every_row"], "over every row"
        elif scoped:
            query, scope = check["this_run"], "over this run's log files"
        else:
            results[name] = (0, "by its constraints")
            continue
        cur.execute(query, {"run_id": run_id})
        results[name] = (cur.fetchone()[0], scope)
        if differ and not results[name][0]:  # every file matches: the kept count was wrong
            cur.execute(sql.row_counts_recount_plays)
            miscounted = cur.fetchone()
    return Checked(results, miscounted)


def _others_differ(cur, check: dict, run_id: int) -> bool:
    """Whether the files this run did not load differ in total from what is kept of them (the
    check's others_differ): a check over this run's files cannot then answer for them."""
    if "others_differ" not in check:
        return False
    cur.execute(check["others_differ"], {"run_id": run_id})
    return cur.fetchone()[0]


# ================================================================ one part


def load_part(cur, start: RunStart, part: Part) -> Loaded:
    """Stage the part and merge it, inside the batch's transaction (the caller's cursor), with
    the statements of the run's server. In a bulk load the part's plays and instants go
    straight into songplays and time (written, resolved by the parse worker), duplicates and
    all, settled before the keys are built back."""
    server, written = start.server, part.appended is not None
    if part.index:
        cur.execute(sql.stage_truncate)  # the batch's earlier parts are merged already
    cur.execute(sql.staging_time_zone)
    for query in server.part_setup:
        cur.execute(query, {"lock_timeout": start.lock_timeout})
    if part.kind == "log":
        for query in server.log_part_setup:
            cur.execute(query)
    staged = 0
    for table, payload in part.copies.items():
        if not payload or table in sql.BULK_COPIES:
            continue
        cur.copy_expert(
            server.stage_plays_copy if table == "stage_plays" else sql.copy_into[table],
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
    inserted, settled, taken_over = {}, False, 0
    if part.kind == "song":
        _write_manifest(cur, params)
        _merge_songs(cur)
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
        _write_manifest(cur, params)
        cur.execute(server.users_update)
        cur.execute(sql.users_insert)
        merged, moved = {}, []
        if written:
            for table, copy in sql.BULK_COPIES.items():
                cur.copy_expert(copy, io.BytesIO(part.copies[table]))
            merged = part.appended
        elif "stage_plays" in part.copies:  # not a file the database refused, with no plays
            cur.execute(server.time_insert)
            if staged:
                merged, moved = server.merge_plays(cur, part, staged)
        loading = [f for f in part.files if f.to_load]
        merged_here = Loaded(merged)
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
        paths = {f.path for f in loading}
        inserted = dict(merged)
        for move in moved:
            if move.path in paths:
                inserted[move.path] = inserted.get(move.path, 0) + move.plays
        taken_over = sum(move.taken for move in moved if move.path not in paths)
        if reloading or moved:
            for query in server.after_plays_gone:
                cur.execute(query)
        settled = settled or any(move.plays for move in moved)
    cur.execute(sql.rejects_insert, params)
    return Loaded(inserted, settled, taken_over)


def _write_manifest(cur, params: dict) -> None:
    """The part's files in the manifest: a file's first part writes its row, a later one adds."""
    cur.execute(sql.manifest_upsert, params)
    cur.execute(sql.manifest_upsert_numbered, params)
    cur.execute(sql.manifest_add_part)


Merged = dict[str, int]  # per path: plays inserted


class Moved(NamedTuple):
    """A file of whose plays settling moved some into songplays (plays > 0) or out of it (< 0),
    from or to songplay_copies; or none (0), where every copy it had in the contest stayed where
    it was (a file sent again loses each play to the stored copies). taken: of its plays moved
    out, those not promoted from a copy earlier in the batch (as when a changed file gives up a
    play that this file holds too, and takes it back)."""

    path: str
    run_id: int
    plays: int
    taken: int


def _merge_plays(cur, part: Part, staged: int) -> tuple[Merged, list[Moved]]:
    """The staged plays into songplays; when the merge skipped some (their key is stored), the
    copies of those keys are settled."""
    cur.execute(sql.songplays_insert)
    merged = dict(cur.fetchall())
    if sum(merged.values()) == staged:
        return merged, []
    cur.execute(sql.contest_staged)
    cur.execute(sql.contest_staged_songs)
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
    merged = dict(cur.fetchall())
    moved = []
    if sum(merged.values()) < staged:
        cur.execute(sql.contest_staged_citus, files)
        cur.execute(sql.staged_keys)
        moved = _settle(cur)
    cur.execute(sql.stage_plays_done_citus)
    return merged, moved


@dataclasses.dataclass(frozen=True)
class Server:
    """What differs between plain PostgreSQL and Citus, chosen once per run (server_of). On
    Citus plays are staged in a table sharded like songplays and merged on the workers, every
    load keeps the keys in place, and no trigger keeps the star's row counts (docs/citus.md)."""

    run_setup: tuple[str, ...]  # at the run's start
    part_setup: tuple[str, ...]  # at each part's start (with the run's lock_timeout)
    log_part_setup: tuple[str, ...]  # at each log part's start
    keys_setup: tuple[str, ...]  # before the keys are built, and their tables analyzed
    stage_plays_copy: str
    time_insert: str
    users_update: str
    after_plays_gone: list[str]  # once plays were taken out (stage_gone)
    merge_plays: Callable[..., tuple[Merged, list[Moved]]]  # (cur, part, staged)
    star_counts: Callable[..., Counted]  # (cur)
    bulk_loads: bool  # a first load of the logs may drop the keys and write the plays in
    checks_per_file: bool  # a check can join the plays to the manifest file by file


PLAIN = Server(
    run_setup=tuple(sql.row_counts_restore),
    part_setup=(),
    log_part_setup=(),
    keys_setup=(),
    stage_plays_copy=sql.copy_into["stage_plays"],
    time_insert=sql.time_insert,
    users_update=sql.users_update,
    after_plays_gone=sql.after_plays_gone,
    merge_plays=_merge_plays,
    star_counts=_counts_kept,
    bulk_loads=True,
    checks_per_file=True,
)
CITUS = Server(
    run_setup=(
        sql.citus_recover_prepared,
        sql.stage_plays_done_citus,
    ),
    part_setup=(sql.lock_timeout_local,),
    log_part_setup=(sql.citus_sequential,),  # reference tables are written after the shards
    keys_setup=(sql.citus_sequential,),  # songplays' shards, then the reference tables
    stage_plays_copy=sql.stage_plays_copy_citus,
    time_insert=sql.time_insert_citus,
    users_update=sql.users_update_citus,
    after_plays_gone=sql.after_plays_gone_citus,
    merge_plays=_merge_plays_citus,
    star_counts=_counts_counted,
    bulk_loads=False,
    checks_per_file=False,
)


def _merge_songs(cur) -> None:
    """The staged songs into songs and artists; the plays follow their songs. An artist a song
    moved away from takes its values from its songs left, or goes with its last song."""
    cur.execute(sql.artists_losing_songs)
    losing = [row[0] for row in cur.fetchall()]
    cur.execute(sql.song_keys_changing)
    cur.execute(sql.artists_upsert)
    cur.execute(sql.songs_upsert)
    cur.execute(sql.songplays_resolve_songs)
    if losing:
        cur.execute(sql.artists_from_songs_left, {"artists": losing})
        cur.execute(sql.artists_delete_songless, {"artists": losing})


def _settle(cur) -> list[Moved]:
    """For each play of stage_keys (and the staged copies in stage_contest): songplays keeps the
    copy of the file first in path order, songplay_copies every other file's; the manifest's
    counts follow. Returns, for every file that had a copy in the contest, what moved."""
    for query in sql.settle_queries:
        cur.execute(query)
    cur.execute(sql.settle_manifest)
    moved = [Moved(*row) for row in cur.fetchall()]
    cur.execute(sql.settle_promoted)
    cur.execute(sql.settle_done)
    return moved


# ================================================================ bulk loads


class BulkStart(NamedTuple):
    """What begin_bulk_load did: handed, what the parse workers need for a bulk load (None: the
    plays are merged with the keys in place); kept_because, why a first load is not a bulk load
    (None: it is one, or the load is no first load)."""

    handed: HandOver
    kept_because: str | None = None


def begin_bulk_load(conn, start: RunStart, logs: list[Batch]) -> BulkStart:
    """Make the run's logs a bulk load if they are a first load: on plain PostgreSQL, into an
    empty songplays, every log file new, the song catalogue small enough to send to the parse
    workers (sql.SONG_KEYS_IN_MEMORY keys). The keys (sql.BULK_KEYS) are dropped, and what the
    workers need to write the plays straight in is handed: the song keys and the ids the log
    files will have in the manifest, taken now, in order. Otherwise the plays are merged with
    the keys in place, as in every other load; a first load says why (a catalogue too big,
    another session holding the tables, a role that may write the tables but not alter them:
    it does not own them, a view or foreign key of the user's that depends on a key)."""
    new = [t.path for b in logs for t in b.tasks if t.known_sha256 is None]
    if not start.server.bulk_loads or not new or len(new) < sum(len(b.tasks) for b in logs):
        return BulkStart(None)
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.songplays_empty)
        if not cur.fetchone()[0]:
            return BulkStart(None)
        song_keys = FirstBytes(sql.SONG_KEY_BYTES_IN_MEMORY)
        cur.copy_expert(sql.song_keys_copy, song_keys)
        if cur.rowcount > sql.SONG_KEYS_IN_MEMORY or song_keys.size > song_keys.most:
            return BulkStart(None, KEPT_FOR_A_BIG_CATALOGUE)
    try:
        with db.managed_cursor(conn) as cur:
            cur.execute(sql.keys_lock_timeout)
            for drop in sql.bulk_keys_drop:
                cur.execute(drop)
            cur.execute(sql.file_ids_take, {"files": len(new)})
            ids = dict(zip(new, (row[0] for row in cur.fetchall())))
            return BulkStart((song_keys.getvalue(), ids))
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected):
        return BulkStart(None, KEPT_FOR_ANOTHER_SESSION)
    except psycopg2.errors.InsufficientPrivilege:
        return BulkStart(None, KEPT_FOR_THE_ROLE)
    except psycopg2.errors.DependentObjectsStillExist as exc:  # a view, a foreign key of yours
        named = (exc.diag.message_detail or exc.diag.message_primary or "").partition("\n")[0]
        return BulkStart(None, f"{KEPT_FOR_YOURS}: {named}")


class FirstBytes:
    """What a COPY writes, its first `most` bytes kept, the rest only counted: a catalogue too
    big to send is found without being held."""

    def __init__(self, most: int):
        self.most, self.size, self.kept = most, 0, []

    def write(self, data: bytes) -> int:
        if self.size + len(data) <= self.most:
            self.kept.append(data)
        self.size += len(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.kept)


# Why a first load merges its plays with the keys in place, as the summary says it.
KEPT_FOR_A_BIG_CATALOGUE = (
    f"the song catalogue's keys (title, artist name, duration) are more than the parse workers "
    f"are sent ({sql.SONG_KEYS_IN_MEMORY:,} keys, {sql.SONG_KEY_BYTES_IN_MEMORY >> 20} MB of text)"
)
KEPT_FOR_ANOTHER_SESSION = (
    "another session held songplays or time (a pg_dump, a query, an open transaction) when "
    "their keys were to be dropped"
)
KEPT_FOR_THE_ROLE = "the role may write the tables but not alter them (it does not own them)"
KEPT_FOR_YOURS = "an object that is not the project's depends on a key a bulk load drops"


def keys_missing(conn) -> list[str]:
    """The keys (sql.BULK_KEYS) that are absent: a bulk load's, or those of one that was
    interrupted or could not build them back."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.bulk_keys_present, {"names": list(sql.BULK_KEYS)})
        present = {row[0] for row in cur.fetchall()}
    return [name for name in sql.BULK_KEYS if name not in present]


@dataclasses.dataclass(frozen=True)
class Built:
    """What build_keys did: the keys built, or the one that could not be (and why), and the
    plays of the run's files that lost to another copy as the duplicates were settled."""

    built: list[str]
    failed: dict[str, str]  # key: why it could not be built (then none of them was)
    duplicates: int = 0
    locked: bool = False  # whether why is a lock another session kept, which it names


KEYS_LOCKED = "another session kept a conflicting lock on its tables"


def build_keys(
    conn,
    server: Server,
    missing: list[str],
    run_id: int | None = None,
    counted: Callable[[int, int], None] | None = None,
) -> Built:
    """Build back the missing keys (of sql.BULK_KEYS, as keys_missing found them), in one
    transaction, each in one pass over its table (a foreign key checked over every row). Where a
    bulk load wrote an instant or a play twice, time's key or songplays' unique key cannot be
    built: one row of each instant is kept, or the plays are settled (songplays keeps the copy
    of the file first in path order, as the key in place does; run_id's plays that lost are
    counted), and the key is built then. If one key cannot be built, none is, and they stay
    missing for the next run to build. Either way the tables are analyzed: the checks that
    follow are planned on their statistics. counted(done, of) is told as each is built (a
    progress bar's)."""
    counted = counted or (lambda done, of: None)
    if not missing:
        return Built([], {})
    name, moved, locked = missing[0], [], False
    try:
        with db.managed_cursor(conn) as cur:
            _keys_setup(cur, server)
            _create_staging(cur)
            counted(0, len(missing))
            for done, name in enumerate(missing, 1):
                moved += _build_key(cur, name)
                counted(done, len(missing))
    except psycopg2.errors.LockNotAvailable:
        held_by = db.sessions_holding(conn, sql.TABLES).sessions
        failure = KEYS_LOCKED + (f": {'; '.join(held_by)}" if held_by else "")
        locked = True
    except psycopg2.errors.DeadlockDetected:
        failure = "it deadlocked with another session's writes"
    except (psycopg2.IntegrityError, *db.SHORT_OF_RESOURCES) as exc:
        failure = cli.first_line(exc)
    else:
        failure = None
    _analyze(conn, server)
    if failure:
        return Built([], {name: failure}, locked=locked)
    ours = [move for move in moved if move.run_id == run_id]
    return Built(missing, {}, -sum(move.plays for move in ours))


def _analyze(conn, server: Server) -> None:
    """Statistics for the tables the keys' build filled, in a transaction of its own: on Citus,
    once time's key is built on the coordinator's copy of the reference table, analyzing every
    copy of it is refused in the same transaction. A session holding the tables past the lock
    timeout, or a server short of room (a full disk), leaves them to autovacuum: the keys are
    built all the same."""
    try:
        with db.managed_cursor(conn) as cur:
            _keys_setup(cur, server)
            cur.execute(sql.analyze_after_bulk_load)
    except (psycopg2.errors.LockNotAvailable, *db.SHORT_OF_RESOURCES):
        return


def _keys_setup(cur, server: Server) -> None:
    """A transaction that builds keys or analyzes their tables: how long it waits for a lock,
    and what the server needs first."""
    cur.execute(sql.keys_lock_timeout)
    for query in server.keys_setup:
        cur.execute(query)


def _build_key(cur, name: str) -> list[Moved]:
    """Build key name as the rows stand, or, if what a bulk load wrote twice breaks it, once
    that is settled; returns what the settling moved. Trying first spares a pass over time and
    one over songplays in the usual load, which writes nothing twice (bench/README.md)."""
    settle = _DUPLICATES_SETTLED_BY.get(name)
    if settle is None:
        cur.execute(sql.BULK_KEYS[name][0])
        return []
    cur.execute(sql.key_attempt)
    try:
        cur.execute(sql.BULK_KEYS[name][0])
        return []
    except psycopg2.errors.UniqueViolation:
        cur.execute(sql.key_attempt_undo)
    cur.execute(sql.settling_without_nested_loops)  # for the rest of the keys' transaction
    moved = settle(cur)
    cur.execute(sql.BULK_KEYS[name][0])
    return moved


def _instants_settled(cur) -> list[Moved]:
    """One row of each instant stays: they are the same row wherever they come from."""
    cur.execute(sql.time_duplicates_remove)
    return []


def _plays_settled(cur) -> list[Moved]:
    """The plays written twice settled, and the users and instants they leave follow."""
    cur.execute(sql.plays_duplicated_keys)
    moved = _settle(cur)
    for query in sql.after_plays_gone:  # bulk loads: one server only
        cur.execute(query)
    return moved


_DUPLICATES_SETTLED_BY = {
    "time_pkey": _instants_settled,
    "songplays_user_id_session_id_item_in_session_key": _plays_settled,
}
