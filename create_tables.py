"""Drop and recreate the Sparkify tables: the star schema and the load bookkeeping.

On a Citus coordinator (the database has the citus extension) the star is distributed: songplays
and users on user_id, in the same shards, with songplay_copies and the plays' staging table;
songs, artists and time as reference tables.

Only this project's tables are touched. Sessions that hold locks on them (an open notebook
transaction, a pg_dump) are ended first, those this role may end, and named; if others remain,
they are named, and nothing is dropped. A running etl.py is never interrupted: we refuse instead.
"""

from __future__ import annotations

import argparse

import psycopg2.errors

import cli
import db
import sql_queries as sql


def ensure_database(settings: db.Settings) -> None:
    """The embedded server starts empty: create sparkifydb there. Elsewhere the URL's database
    must exist already (we only create it on the embedded server)."""
    if not settings.embedded:
        return
    conn = db.connect(settings, dbname="postgres")
    try:
        conn.autocommit = True
        db.create_database_if_missing(conn, db.DATABASE)
    finally:
        conn.close()


def create_tables(settings: db.Settings, lock_wait: int = db.LOCK_WAIT) -> int:
    ensure_database(settings)
    conn = db.connect(settings)
    try:
        db.as_a_batch_job(conn)
        with db.load_lock(conn, lock_wait):
            try:
                schema, citus, ended = recreate(conn)
            except psycopg2.errors.LockNotAvailable:
                raise db.DatabaseError(still_locked(conn)) from None
    finally:
        conn.close()
    made = f"created tables {', '.join(sql.TABLES)} in schema {schema} of {settings.describe()}"
    if ended:
        sessions = cli.many(len(ended), "session", "sessions")
        made += f"\n  ended {sessions} that held them: {'; '.join(ended)}"
    if citus:
        made += (
            "\n  on Citus: songplays, users and songplay_copies distributed on user_id"
            " (co-located); songs, artists, time reference tables; load_* local on the coordinator"
        )
    cli.write_out(made, "the tables are made")
    return 0


def recreate(conn) -> tuple[str, bool, list[str]]:
    """Drop and create the tables in one transaction, in one schema; that schema, whether the
    server is Citus, and the sessions ended because they held the tables."""
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.search_path_create_schema)
        schema, path, _ = cur.fetchone()
        if schema is None:
            raise db.DatabaseError(
                f"the search_path ({path}) names no schema that exists and that the role may "
                "use: create the schema, or put one that exists first (nothing was dropped)"
            )
        cur.execute(sql.create_schema_temporary)
        if cur.fetchone()[0]:
            raise db.DatabaseError(
                "search_path puts the session's temporary schema (pg_temp) first: the tables "
                "would vanish with the session; put a schema of yours first (nothing was dropped)"
            )
        db.require_no_citus_worker(cur)
        cur.execute(sql.tables_of_others, {"tables": sql.TABLES + sql.COUNTING})
        others = [row[0] for row in cur.fetchall()]
        if others:
            raise db.DatabaseError(
                f"table(s) {', '.join(others)} in schema {schema} are not Sparkify's (no "
                "load_runs beside them), and create_tables.py drops only its own: rename or move "
                "them, or make the tables in another schema (options=-csearch_path%3Dsparkify in "
                "the URL, the schema created first) (nothing was dropped)"
            )
        cur.execute(sql.terminate_lock_holders, {"tables": sql.TABLES, "modes": None})
        ended = [db.session_text(*row) for row in cur.fetchall()]
        cur.execute(sql.tables_lock_timeout)
        try:
            cur.execute(sql.drop_tables)
        except psycopg2.errors.DependentObjectsStillExist as exc:
            raise db.DatabaseError(
                f"cannot drop the tables: {cli.one_line(exc.diag.message_detail or '')}; drop "
                "or change that first (nothing was dropped)"
            ) from None
        for query in sql.create_table_queries:
            cur.execute(query)
        cur.execute(sql.citus_present)
        citus = cur.fetchone()[0]
        if citus:
            for query in sql.citus_distribute_queries:
                cur.execute(query)
        else:
            for query in sql.row_counts_create:
                cur.execute(query)
            cur.execute(sql.row_counts_seed, {"tables": sql.STAR_TABLES})
        for query in sql.bulk_keys_create:
            cur.execute(query)
        cur.execute(sql.schema_stamp_write, {"stamp": db.schema_stamp()})
    return schema, citus, ended


def still_locked(conn) -> str:
    """Why DROP gave up waiting: the sessions that hold a lock on the tables, which this role may
    not end (a superuser's, another role's, or an autovacuum that does not let go)."""
    holding = db.sessions_holding(conn, sql.TABLES)
    if not holding.sessions:
        return (
            f"cannot drop the tables: locked by {db.unseen_holder(conn)}; run create_tables.py "
            "again once it lets go (nothing was dropped)"
        )
    # a member of pg_signal_backend may end any session but a superuser's
    who = "a superuser" if holding.superuser else "a superuser or a member of pg_signal_backend"
    return (
        f"cannot drop the tables: locked by sessions role {holding.role} may not end: "
        f"{'; '.join(holding.sessions)}; end them (pg_terminate_backend), or run "
        f"create_tables.py as {who} (nothing was dropped)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        description="Drop and recreate the Sparkify tables: the star (songplays, users, songs, "
        "artists, time), songplay_copies, the load's books (load_manifest, load_runs, "
        "load_rejects) and row_counts.",
        epilog="example (the embedded server, or the one --database-url names):\n"
        "  python create_tables.py\n\n"
        "exit codes: 0 done; 2 bad arguments; 3 database problem, or standard output that cannot "
        "take the result (the tables made); 4 a load was still running "
        "after --wait; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): nothing dropped, "
        "unless the stop came as the change committed (the tables then new and empty)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    db.add_database_url_option(parser)
    db.add_wait_option(parser, "a running load on the same database to finish")
    args = parser.parse_args(argv)
    settings = db.Settings.from_env(args.database_url)
    return db.run_command(settings, lambda: create_tables(settings, args.wait))


if __name__ == "__main__":
    cli.finish(main)
