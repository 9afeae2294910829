"""Bulk loads: songplays' foreign keys and file index are set aside for a big load and come back
as created; a load backs off (keys in place) rather than wait on other sessions or deadlock with
them, and a key that cannot come back fails the run naming it, for the next run to add back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg2
import pytest
from builders import BASE, Watcher, etl, expect, last_run_status, start_load
from conftest import counts, query, schema_objects
from summary import ALL_SET_ASIDE, parse_summary

import db
from report import EXIT_FAILED, EXIT_OK


def test_first_load_sets_foreign_keys_aside_and_restores_them_as_created(data):
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


def test_load_goes_on_with_keys_in_place_while_a_session_holds_songplays(data):
    holder = db.connect(db.Settings.from_env())
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM songplays")  # a transaction stays open
        done = etl(data)
        assert holder.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    finally:
        holder.close()
    assert parse_summary(done.stdout).keys_left_alone
    assert counts() == BASE


def load_into_a_deadlock(data: Path, first: str, then: str) -> subprocess.CompletedProcess:
    """etl.py, while another session that ran `first` runs `then` as soon as the load waits for
    a lock on time. If that closes a cycle, the load is the one to notice the deadlock: the
    session only looks for one after 60 s."""
    session = db.connect(db.Settings.from_env())
    watch = Watcher()
    try:
        with session.cursor() as cur:
            try:
                cur.execute("SET deadlock_timeout = '60s'")
            except psycopg2.errors.InsufficientPrivilege:
                pytest.skip("setting deadlock_timeout needs a superuser (DATABASE_URL's is not)")
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
    assert parse_summary(expect(done, EXIT_OK).stdout).keys_left_alone
    assert counts() == BASE


def test_foreign_key_that_would_deadlock_coming_back_is_left_for_the_next_run(data):
    """A writer that touched time then writes songplays, while the load holds songplays and
    waits for time to add a key back: the load names the key and fails with its summary, and
    the next run adds the key back."""
    created = schema_objects()
    etl(data)
    query("ALTER TABLE songplays DROP CONSTRAINT songplays_start_time_fkey; SELECT 1")
    done = load_into_a_deadlock(
        data, "INSERT INTO time SELECT * FROM time LIMIT 0", "LOCK songplays IN ROW EXCLUSIVE MODE"
    )
    summary = parse_summary(expect(done, EXIT_FAILED).stdout)
    assert summary.not_added_back == {
        "songplays_start_time_fkey": "it deadlocked with another session's writes"
    }
    assert summary.added_back == []
    assert last_run_status() == "failed"

    summary = parse_summary(etl(data).stdout)
    assert not summary.set_aside and summary.added_back == ["songplays_start_time_fkey"]
    assert schema_objects() == created


def test_foreign_key_that_cannot_come_back_fails_the_run_naming_it_and_the_rest_come_back(data):
    """Someone removed two foreign keys and wrote a play of an unknown user: the next run adds
    back the key the data allows, fails naming the other, and once the play is gone the run
    after it adds that one back too."""
    created = schema_objects()
    etl(data)
    query(
        "ALTER TABLE songplays DROP CONSTRAINT songplays_user_id_fkey, "
        "DROP CONSTRAINT songplays_start_time_fkey; "
        "INSERT INTO songplays (start_time, user_id, level, session_id, item_in_session, "
        "song_title, file_id) SELECT start_time, 424242, 'free', 1, 1, 'x', 1 FROM time LIMIT 1"
        " RETURNING 1"
    )
    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert not summary.set_aside and summary.added_back == ["songplays_start_time_fkey"]
    assert summary.not_added_back == {
        "songplays_user_id_fkey": 'insert or update on table "songplays" violates foreign key '
        'constraint "songplays_user_id_fkey"'
    }
    assert last_run_status() == "failed"
    assert len(schema_objects()) == len(created) - 1

    query("DELETE FROM songplays WHERE user_id = 424242 RETURNING 1")
    summary = parse_summary(etl(data).stdout)
    assert not summary.set_aside and summary.added_back == ["songplays_user_id_fkey"]
    assert schema_objects() == created
