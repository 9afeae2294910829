"""Bulk loads: a first load into an empty songplays drops its keys, foreign keys and file index
and builds them back as created, with the plays written twice settled as the keys would have
skipped them; a load backs off (keys in place) rather than wait on other sessions or deadlock
with them; keys that cannot be built back fail the run naming the key, and the next run builds
them before it loads anything, or stops, naming it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import random
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import psycopg2
import pytest
from builders import (
    BASE,
    SMALL_BATCHES,
    SUPERUSER,
    T0,
    USER,
    Watcher,
    crafted_items,
    etl,
    event,
    expect,
    last_run_status,
    lines,
    manifest,
    one_error_line,
    other_page,
    play_among_few_keys,
    requires,
    start_load,
    write,
)
from conftest import PROJECT, counts, query, run_script, schema_objects, table_contents
from psycopg2 import sql as pgsql
from summary import ALL_SET_ASIDE, CHECKS_PASSED, Counts, parse_summary

import db
import load
import sql_queries
from cli import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_LOCKED, EXIT_OK

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it


def test_first_load_drops_songplays_keys_and_builds_them_back_as_created(data):
    created = schema_objects()
    summary = parse_summary(etl(data).stdout)
    assert summary.set_aside and summary.added_back == ALL_SET_ASIDE
    assert not summary.not_added_back
    assert schema_objects() == created
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        query(
            "INSERT INTO songplays (start_time, user_id, level, session_id, item_in_session, "
            "song_title, file_id) VALUES (now(), 1, 'free', 1, 1, 'x', 1)"
        )


# Skipped events, over 1 MB: a file holding them is a batch of its own in --batch-mb 1.
PADDING = [other_page(0, "Home")] * 3500


def plays_with_repeats(rng: random.Random, n: int) -> list[dict]:
    """Plays of three users whose keys (user, session, item: 6 items) and instants (8) repeat
    often: resent plays, and keys reused at another instant."""
    return [play_among_few_keys(rng, 6, 8) for _ in range(n)]


def load_outcome(done: subprocess.CompletedProcess) -> tuple:
    summary = parse_summary(done.stdout)
    kept = query("SELECT songplay_id, user_id, session_id, item_in_session FROM songplays")
    return summary.records, summary.resolved, sorted(kept), table_contents(), manifest()


def with_a_session_holding(statement: str, action):
    """action() while another session's open transaction has run statement, and holds what it
    locked."""
    holder = db.connect(db.Settings.from_env())
    try:
        with holder.cursor() as cur:
            cur.execute(statement)  # the transaction stays open
        return action()
    finally:
        holder.close()


def with_songplays_held(action):
    """action() while another session holds songplays: a load cannot set its keys aside."""
    return with_a_session_holding("SELECT count(*) FROM songplays", action)


@pytest.mark.parametrize("seed", range(3))
def test_bulk_load_keeps_what_the_keys_would_have_kept(data, seed):
    """Generated files full of repeated plays and instants, within and across files: a bulk
    load (keys dropped, plays written twice settled before they are built back) leaves the same
    star, the same songplay_ids, manifest and summary counts as a load with every key in
    place."""
    rng = random.Random(seed)
    created = schema_objects()
    written, keys = 0, set()
    for name in ("a", "b", "c"):
        plays = plays_with_repeats(rng, 30)
        written += len(plays)
        keys |= {(p["userId"], p["sessionId"], p["itemInSession"]) for p in plays}
        write(data, f"log_data/2018/12/{name}.json", lines(*plays, *PADDING))
    bulk = etl(data, *SMALL_BATCHES)
    assert parse_summary(bulk.stdout).added_back == ALL_SET_ASIDE
    # plays repeated across files reached songplays too, and were settled as the key was built:
    # every play but the first of each key is a duplicate
    assert parse_summary(bulk.stdout).records["log"].duplicates == written - len(keys)
    assert query("SELECT count(*) - count(DISTINCT start_time) FROM time") == [(0,)]
    outcome = load_outcome(bulk)

    run_script("create_tables.py")
    keyed = with_songplays_held(lambda: etl(data, *SMALL_BATCHES))
    assert parse_summary(keyed.stdout).keys_left_alone
    assert load_outcome(keyed) == outcome
    assert schema_objects() == created


def test_keys_found_missing_are_built_before_the_run_loads(data):
    """Keys left out (as by an interrupted bulk load) are built before a small run loads: its
    play loaded before is skipped as with every key in place."""
    created = schema_objects()
    write(data, "log_data/2018/12/a.json", lines(event(1), event(2)))
    etl(data)
    query(
        "ALTER TABLE songplays DROP CONSTRAINT songplays_start_time_fkey;"
        "ALTER TABLE songplays DROP CONSTRAINT songplays_user_id_session_id_item_in_session_key;"
        "SELECT 1"
    )
    write(data, "log_data/2018/12/b.json", lines(event(2), event(3), event(2, ts=T0 + 9000)))
    summary = parse_summary(etl(data).stdout)
    assert not summary.set_aside and not summary.restored
    assert summary.found_missing == {
        "songplays_start_time_fkey",
        "songplays_user_id_session_id_item_in_session_key",
    }
    assert summary.records["log"] == Counts(3, 1, duplicates=2)
    assert summary.resolved[2] == 1  # event(3): the two removed resolved too
    assert summary.rows["songplays"] == (1, BASE["songplays"] + 3)
    assert summary.rows["time"] == (1, BASE["time"] + 3)
    assert manifest()["log_data/2018/12/b.json"] == Counts(3, 1, 0, 2, 0)
    assert crafted_items() == [1, 2, 3]
    assert schema_objects() == created


def test_a_bulk_load_killed_after_appending_duplicates_resumes_to_the_same_star(data):
    """A bulk load killed after committing batches that repeat earlier batches' plays and
    instants leaves the keys out and the duplicates in; the next run removes them as the keys
    come back (counted in their files' manifest rows) and ends where an uninterrupted load
    ends."""
    plays = [event(item) for item in range(8)]
    write(data, "log_data/2018/12/a.json", lines(*plays[:5], *PADDING))
    write(data, "log_data/2018/12/b.json", lines(*plays[3:], *PADDING))  # items 3, 4 again
    write(data, "log_data/2018/12/c.json", lines(event(20), *PADDING * 6))
    etl(data, *SMALL_BATCHES)
    uninterrupted = table_contents(), manifest()

    run_script("create_tables.py")
    load = start_load(data)
    watch = Watcher()
    try:
        watch.wait("SELECT count(*) FROM load_manifest WHERE path LIKE '%/b.json'", bool, load)
        load.kill()
        load.communicate(timeout=30)
        repeated = watch.value(
            "SELECT count(*) - count(DISTINCT (user_id, session_id, item_in_session)) "
            "FROM songplays"
        )
        watch.lock_free()
    finally:
        watch.close()
    assert repeated == 2

    summary = parse_summary(etl(data, *SMALL_BATCHES).stdout)
    assert summary.found_missing == ALL_SET_ASIDE and not summary.restored
    assert (table_contents(), manifest()) == uninterrupted
    assert manifest()["log_data/2018/12/b.json"] == Counts(3505, 3, 3500, 2, 0)


def test_plays_a_bulk_load_appended_twice_keep_a_copy_for_when_the_first_file_shrinks(data):
    """Two files sharing plays, with other values, in one bulk load: as the keys come back, the
    copies of the file first in path order are the plays and the other file's are kept; when
    that file shrinks, the other file's copies become the plays, with the user's row, as a fresh
    load of the folder has them."""
    write(data, "log_data/2018/12/a.json", lines(*(event(i) for i in range(4)), *PADDING))
    b = [event(i, level="free", firstName="Bo", location="Oslo") for i in range(2, 6)]
    write(data, "log_data/2018/12/b.json", lines(*b, *PADDING))
    summary = parse_summary(etl(data, *SMALL_BATCHES).stdout)
    assert summary.added_back == ALL_SET_ASIDE
    assert summary.records["log"].duplicates == 2
    assert manifest()["log_data/2018/12/b.json"] == Counts(3504, 2, 3500, 2, 0)
    assert query("SELECT item_in_session, location FROM songplay_copies ORDER BY 1") == [
        (2, "Oslo"),
        (3, "Oslo"),
    ]
    plays = "SELECT item_in_session, location FROM songplays WHERE user_id = %s ORDER BY 1"
    assert [row[1] for row in query(plays, (USER,))] == ["London"] * 4 + ["Oslo"] * 2

    write(data, "log_data/2018/12/a.json", lines(event(0), event(1), *PADDING))
    summary = parse_summary(etl(data, *SMALL_BATCHES).stdout)
    assert summary.checks == CHECKS_PASSED
    assert [row[1] for row in query(plays, (USER,))] == ["London"] * 2 + ["Oslo"] * 4
    assert manifest()["log_data/2018/12/b.json"] == Counts(3504, 4, 3500, 0, 0)
    assert query("SELECT first_name, level FROM users WHERE user_id = %s", (USER,)) == [
        ("Bo", "free")
    ]
    assert query("SELECT count(*) FROM songplay_copies") == [(0,)]
    incremental = table_contents()
    run_script("create_tables.py")
    etl(data)
    assert table_contents() == incremental


def test_a_load_that_reloads_a_changed_file_next_to_a_big_new_one_keeps_the_keys(data):
    """Plays are loaded already (not a first load), so however big the new file, the keys stay.
    The play the new file repeats is the new file's, which sorts first, as a fresh load of the
    folder has it; the changed file keeps a copy."""
    write(data, "log_data/2018/12/b.json", lines(event(1), event(2)))
    etl(data)
    write(data, "log_data/2018/12/b.json", lines(event(1), event(2), event(3)))
    write(data, "log_data/2018/12/a.json", lines(event(2, level="free"), *PADDING))
    summary = parse_summary(etl(data, *SMALL_BATCHES).stdout)
    assert summary.keys_left_alone
    assert manifest()["log_data/2018/12/a.json"] == Counts(3501, 1, 3500, 0, 0)
    assert manifest()["log_data/2018/12/b.json"] == Counts(3, 2, 0, 1, 0)
    assert query(
        "SELECT item_in_session, level FROM songplays WHERE user_id = %s ORDER BY 1", (USER,)
    ) == [(1, "paid"), (2, "free"), (3, "paid")]
    assert query("SELECT item_in_session, level FROM songplay_copies") == [(2, "paid")]
    incremental = table_contents()
    run_script("create_tables.py")
    etl(data)
    assert table_contents() == incremental


def test_load_goes_on_with_keys_in_place_while_a_session_holds_songplays(data):
    done = with_songplays_held(lambda: etl(data))
    summary = parse_summary(done.stdout)
    assert summary.keys_left_alone
    assert summary.kept_because == load.KEPT_FOR_ANOTHER_SESSION
    assert counts() == BASE


YOURS = {  # an object of an analyst's that depends on a key a bulk load drops, and what it says
    "a view grouping by time's key": (
        "CREATE VIEW plays_an_hour AS SELECT t.start_time, t.hour, count(p.songplay_id) AS plays"
        " FROM time t LEFT JOIN songplays p USING (start_time) GROUP BY t.start_time",
        "DROP VIEW plays_an_hour",
        'view plays_an_hour depends on constraint time_pkey on table "time"',
    ),
    "a foreign key to time": (
        "CREATE TABLE moments (start_time timestamptz REFERENCES time)",
        "DROP TABLE moments",
        "constraint moments_start_time_fkey on table moments depends on index time_pkey",
    ),
}


@pytest.mark.parametrize("yours", list(YOURS))
def test_a_first_load_keeps_the_keys_an_object_of_yours_depends_on_and_names_it(data, yours):
    """Dropping the key would need the object dropped: the load merges with the keys in place,
    a full refresh too (it empties the star first: failing then would leave it empty)."""
    create, drop, named = YOURS[yours]
    query(create)
    try:
        summary = parse_summary(etl(data).stdout)
        assert summary.keys_left_alone
        assert summary.kept_because == f"{load.KEPT_FOR_YOURS}: {named}"
        assert counts() == BASE
        if yours == "a view grouping by time's key":  # a foreign key stops TRUNCATE (test_db)
            summary = parse_summary(etl(data, "--full-refresh").stdout)
            assert summary.kept_because == f"{load.KEPT_FOR_YOURS}: {named}"
            assert counts() == BASE
    finally:
        query(drop)


@pytest.mark.parametrize(
    "limit", [("SONG_KEYS_IN_MEMORY", 5), ("SONG_KEY_BYTES_IN_MEMORY", 500)], ids=["keys", "bytes"]
)
def test_a_first_load_with_a_catalogue_too_big_to_send_merges_and_says_why(
    data, monkeypatch, limit
):
    monkeypatch.setattr(sql_queries, *limit)  # the data holds 11 songs, over 500 bytes of keys
    summary = parse_summary(etl(data).stdout)
    assert summary.keys_left_alone
    assert summary.kept_because == load.KEPT_FOR_A_BIG_CATALOGUE
    assert counts() == BASE


def load_into_a_deadlock(data: Path, first: str, then: str) -> subprocess.CompletedProcess:
    """etl.py, while another session that ran `first` runs `then` as soon as the load waits for
    a lock on time. If that closes a cycle, the load is the one to notice the deadlock: the
    session only looks for one after 60 s."""
    requires(SUPERUSER, "setting deadlock_timeout")
    session = db.connect(db.Settings.from_env())
    watch = Watcher()
    try:
        with session.cursor() as cur:
            cur.execute("SET deadlock_timeout = '60s'")
            cur.execute(first)
            load = start_load(data)
            watch.wait(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'time'::regclass",
                bool,
                load,
            )
            cur.execute(then)
        session.rollback()
        out, err = load.communicate(timeout=60)
    finally:
        session.close()
        watch.close()
    return subprocess.CompletedProcess(load.args, load.returncode, out, err)


def test_load_goes_on_with_keys_in_place_when_setting_them_aside_would_deadlock(data):
    """A session that read time reads songplays while the load, holding songplays, waits for
    time to set the keys aside: the load backs off and loads with the keys in place."""
    done = load_into_a_deadlock(data, "SELECT count(*) FROM time", "SELECT count(*) FROM songplays")
    summary = parse_summary(expect(done, EXIT_OK).stdout)
    assert summary.keys_left_alone
    assert summary.kept_because == load.KEPT_FOR_ANOTHER_SESSION
    assert counts() == BASE


def test_keys_another_session_keeps_from_being_built_stop_the_run_before_it_loads(data):
    """A session whose open transaction wrote time keeps a missing foreign key to time from
    being built: after its lock timeout the load stops before loading anything, naming the key,
    and the next run builds it."""
    created = schema_objects()
    etl(data)
    before = table_contents()
    query("ALTER TABLE songplays DROP CONSTRAINT songplays_start_time_fkey; SELECT 1")
    write(data, "log_data/2018/12/a.json", lines(event(1)))
    done = with_a_session_holding(
        "INSERT INTO time SELECT * FROM time LIMIT 0", lambda: etl(data, exit_code=EXIT_LOCKED)
    )
    assert re.fullmatch(
        r"error: the keys of songplays and time are missing \(as an interrupted bulk load leaves "
        r"them\) and cannot be built back: songplays_start_time_fkey: another session kept a "
        r'conflicting lock on its tables: \d+ \(role \w+, [^)]*\) on "time"; nothing was loaded\n',
        done.stderr,
    ), done.stderr
    assert table_contents() == before

    summary = parse_summary(etl(data).stdout)
    assert summary.found_missing == {"songplays_start_time_fkey"} and not summary.restored
    assert summary.records["log"] == Counts(1, 1)
    assert schema_objects() == created


def test_keys_a_bulk_load_cannot_build_back_fail_it_naming_the_key_and_wait_for_the_data(data):
    """A play of an unknown user slips into a bulk load (a trigger behind the ETL's back): the
    run fails naming the foreign key it breaks, with every key left out; the next run stops
    before loading, naming it; once the user is there, the run after builds every key."""
    created = schema_objects()
    query(
        "CREATE OR REPLACE FUNCTION test_stranger() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.user_id := 424242; RETURN NEW; END $$; "
        "CREATE TRIGGER test_stranger BEFORE INSERT ON songplays FOR EACH ROW "
        "WHEN (NEW.item_in_session = 0 AND NEW.session_id = 1) EXECUTE FUNCTION test_stranger();"
        "SELECT 1"
    )
    write(data, "log_data/2018/12/a.json", lines(event(0, sessionId=1)))
    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert summary.set_aside and not summary.restored
    assert summary.not_added_back == {
        "songplays_user_id_fkey": 'insert or update on table "songplays" violates foreign key '
        'constraint "songplays_user_id_fkey"'
    }
    assert last_run_status() == "failed"
    assert {name for _, name, _ in created} - {name for _, name, _ in schema_objects()} == (
        ALL_SET_ASIDE
    )

    done = etl(data, exit_code=EXIT_ENVIRONMENT)
    assert "cannot be built back: songplays_user_id_fkey: insert or update" in done.stderr

    query(
        "DROP TRIGGER test_stranger ON songplays; DROP FUNCTION test_stranger(); "
        "INSERT INTO users (user_id, level) VALUES (424242, 'free') RETURNING 1"
    )
    summary = parse_summary(etl(data).stdout)
    assert summary.found_missing == ALL_SET_ASIDE
    assert summary.checks == CHECKS_PASSED
    assert schema_objects() == created


def test_a_disk_full_while_the_keys_are_built_leaves_them_for_the_next_run_naming_why(data):
    """The disk fills while a bulk load builds its keys back (here an event trigger says so as
    the server would): the plays stay committed, the run fails naming the key and why, the next
    run stops before loading, saying the same; once there is room, the run after builds them."""
    requires(SUPERUSER, "an event trigger")
    created = schema_objects()
    query(
        "CREATE OR REPLACE FUNCTION test_disk_full() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$ BEGIN "
        "IF current_query() LIKE '%ADD CONSTRAINT songplays_pkey%' THEN RAISE EXCEPTION "
        "'could not extend file: No space left on device' USING ERRCODE = '53100'; END IF; "
        "END $$; CREATE EVENT TRIGGER test_disk_full ON ddl_command_end "
        "EXECUTE FUNCTION test_disk_full(); SELECT 1"
    )
    try:
        summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
        assert summary.set_aside and not summary.restored
        assert summary.not_added_back == {
            "songplays_pkey": "could not extend file: No space left on device"
        }
        done = etl(data, exit_code=EXIT_ENVIRONMENT)
        assert one_error_line(done) == (
            "error: the keys of songplays and time are missing (as an interrupted bulk load "
            "leaves them) and cannot be built back: songplays_pkey: could not extend file: No "
            "space left on device; nothing was loaded"
        )
    finally:
        query("DROP EVENT TRIGGER test_disk_full; DROP FUNCTION test_disk_full(); SELECT 1")
    summary = parse_summary(etl(data).stdout)
    assert summary.found_missing == ALL_SET_ASIDE
    assert summary.checks == CHECKS_PASSED
    assert schema_objects() == created


DISK_FULL = pgsql.SQL(
    "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'"
)


def test_a_disk_full_mid_load_fails_the_run_as_failed_naming_the_keys_it_left_missing(data):
    """The disk fills while a bulk load writes its plays, and stays full while the failed run
    builds the keys back and analyzes (triggers and an index say so as the server would): the
    run is recorded failed, its one line says the keys stay missing and why, and once there is
    room the next run builds them and loads."""
    requires(SUPERUSER, "an event trigger")
    created = schema_objects()
    query(
        pgsql.SQL(
            "CREATE OR REPLACE FUNCTION test_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "{disk_full}; END $$; CREATE TRIGGER test_full BEFORE INSERT ON songplays "
            "FOR EACH STATEMENT EXECUTE FUNCTION test_full(); "
            "CREATE OR REPLACE FUNCTION test_full_analyze(integer) RETURNS integer "
            "LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN IF current_query() ~ '^[[:space:]]*ANALYZE' "
            "THEN {disk_full}; END IF; RETURN $1; END $$; "
            "CREATE INDEX test_full_analyze ON users (test_full_analyze(user_id)); "
            "INSERT INTO users (user_id, level) VALUES (424242, 'free') RETURNING 1"  # to sample
        ).format(disk_full=DISK_FULL)
    )
    query(  # last: its test reads the whole text of each statement after it
        pgsql.SQL(
            "CREATE OR REPLACE FUNCTION test_full_keys() RETURNS event_trigger LANGUAGE plpgsql "
            "AS $$ BEGIN IF current_query() LIKE '%ADD CONSTRAINT songplays_pkey%' "
            "THEN {disk_full}; END IF; END $$; "
            "CREATE EVENT TRIGGER test_full_keys ON ddl_command_end "
            "EXECUTE FUNCTION test_full_keys(); SELECT 1"
        ).format(disk_full=DISK_FULL)
    )
    try:
        done = etl(data, exit_code=EXIT_ENVIRONMENT)
        assert one_error_line(done) == (
            "error: the database refused: could not extend file: No space left on device; the "
            "keys of songplays and time stay missing (songplays_pkey: could not extend file: No "
            "space left on device): the next run builds them first"
        )
        assert query("SELECT status FROM load_runs ORDER BY run_id DESC LIMIT 1") == [("failed",)]
    finally:
        query(
            "DROP TRIGGER test_full ON songplays; DROP EVENT TRIGGER test_full_keys; "
            "DROP INDEX test_full_analyze; DELETE FROM users WHERE user_id = 424242; "
            "DROP FUNCTION test_full(), test_full_keys(), test_full_analyze(integer); SELECT 1"
        )
    summary = parse_summary(etl(data).stdout)
    assert summary.found_missing == ALL_SET_ASIDE
    assert counts() == BASE
    assert summary.checks == CHECKS_PASSED
    assert schema_objects() == created


def test_a_session_holding_users_past_the_lock_timeout_leaves_their_statistics_not_the_keys(data):
    """A session that keeps users from being analyzed (its open transaction holds a lock ANALYZE
    waits for) does not stop the keys found missing from being built: after the lock timeout the
    statistics are left to autovacuum, and the run loads as usual."""
    etl(data)
    created = schema_objects()
    query("DROP INDEX songplays_file; SELECT 1")
    write(data, "log_data/2018/12/a.json", lines(event(1)))
    done = with_a_session_holding("LOCK users IN SHARE UPDATE EXCLUSIVE MODE", lambda: etl(data))
    summary = parse_summary(done.stdout)
    assert summary.found_missing == {"songplays_file"} and not summary.restored
    assert summary.records["log"] == Counts(1, 1)
    assert summary.checks == CHECKS_PASSED
    assert schema_objects() == created


def instants_written_while_an_autovacuum_analyzed_them() -> None:
    """time's key and the foreign key on it missing, as a bulk load leaves them, and 200,000
    instants (one of them twice) written by a transaction that an ANALYZE from another session,
    as an autovacuum runs it, saw none of: the statistics say 0 rows."""
    query(
        "ALTER TABLE songplays DROP CONSTRAINT songplays_start_time_fkey;"
        "ALTER TABLE time DROP CONSTRAINT time_pkey; SELECT 1"
    )
    writing = db.connect(db.Settings.from_env())
    with writing.cursor() as cur:  # the load's transaction, still open
        cur.execute(
            "INSERT INTO time (start_time, hour, day, week, month, year, weekday) "
            "SELECT t, 0, 1, 1, 1, 2018, 1 FROM generate_series(1, 200000) AS n, "
            "LATERAL (SELECT timestamptz '2018-11-01' + n * interval '1 ms' AS t) i "
            "UNION ALL SELECT timestamptz '2018-11-01' + interval '1 ms', 0, 1, 1, 1, 2018, 1"
        )
        query("ANALYZE time; SELECT 1")
        writing.commit()
    writing.close()
    assert query("SELECT reltuples FROM pg_class WHERE relname = 'time'") == [(0.0,)]


def build_keys_within(seconds: int) -> load.Built:
    conn = db.connect(db.Settings.from_env())
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (f"{seconds}s",))
        conn.commit()
        return load.build_keys(conn, load.server_of(conn), load.keys_missing(conn))
    finally:
        conn.close()


def test_keys_are_built_back_whatever_statistics_an_autovacuum_took_while_the_rows_were_written(
    fresh_tables,
):
    """Settling the instants written twice, planned on statistics of 0 rows, must not take time
    quadratic in the rows (a nested loop over 200,000 rows would run for hours)."""
    instants_written_while_an_autovacuum_analyzed_them()

    built = build_keys_within(60)

    assert built.built == ["time_pkey", "songplays_start_time_fkey"] and built.failed == {}
    assert query("SELECT count(*), count(DISTINCT start_time) FROM time") == [(200000, 200000)]


def test_keys_that_cannot_be_built_still_leave_statistics_for_the_checks_after_them(
    fresh_tables,
):
    """A session reading time keeps its key from being built; the checks that follow the load
    are planned on time's statistics, which must then say what it holds, not 0 rows."""
    instants_written_while_an_autovacuum_analyzed_them()

    built = with_a_session_holding("SELECT count(*) FROM time", lambda: build_keys_within(60))

    assert list(built.failed) == ["time_pkey"]
    assert re.fullmatch(
        r'another session kept a conflicting lock on its tables: \d+ \(role \w+, [^)]*\) on "time"',
        built.failed["time_pkey"],
    ), built.failed
    assert query("SELECT reltuples FROM pg_class WHERE relname = 'time'") == [(200001.0,)]


def bars_on_a_terminal(*args: str) -> set[str]:
    """The progress bars etl.py shows on a terminal (standard error a 120-column pty), by their
    names: the text before ':' of each line it draws."""
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen(
        [sys.executable, "etl.py", *args],
        cwd=PROJECT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
    ) as process:
        os.close(child)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO: the terminal's other end closed
            while piece := os.read(parent, 65536):
                drawn += piece
        os.close(parent)
    assert process.returncode == EXIT_OK
    lines = drawn.decode().replace("\r", "\n").splitlines()
    return {line.partition(":")[0].strip() for line in lines if ":" in line}


def test_a_bulk_load_shows_its_keys_built_back_on_a_terminal_and_a_daily_load_does_not(tmp_path):
    """Building the keys back is minutes of a big first load: a bar says so where the file
    bars end."""
    run_script("create_tables.py")
    assert bars_on_a_terminal("--data", "data") == {"song files", "log files", "keys built back"}
    day = PROJECT / "data" / "log_data" / "2018" / "11" / "2018-11-30-events.json"
    (tmp_path / "log_data").mkdir()
    shutil.copy(day, tmp_path / "log_data" / "day.json")
    assert bars_on_a_terminal("--data", str(tmp_path)) == {"log files"}
