"""The post-load checks of a daily load: what a constraint in place guarantees is answered by it,
what no constraint says is checked over the log files this run loaded, and every row is read
only when the run may have changed other plays or a constraint is missing. Each scoped check
still fails when a play of this run's file is corrupted behind the ETL's back, and the summary's
row counts stay exact when rows change behind its back."""

from __future__ import annotations

from builders import BASE, USER, etl, event, lines, write
from conftest import scalar
from psycopg2 import sql as pgsql
from summary import CHECKS_PASSED, Counts, parse_summary

import db
from report import EXIT_FAILED

PER_FILE = "songplays per file match the manifest"
RESOLVABLE = "song_id and artist_id both null or both resolvable"
LEVEL = "level in {free, paid}"
SCOPED = [  # what the constraints leave to check
    "songplays.songplay_id unique and not null",
    RESOLVABLE,
    PER_FILE,
]


def execute(statement: str | pgsql.Composable) -> None:
    """A change made behind the ETL's back, in a session of its own."""
    conn = db.connect(db.Settings.from_env())
    try:
        with db.managed_cursor(conn) as cur:
            cur.execute(statement)
    finally:
        conn.close()


def checked(scoped: str) -> dict[str, str]:
    """How each check runs when the scoped ones run as scoped says."""
    return {name: scoped if name in SCOPED else "by its constraints" for name in CHECKS_PASSED}


def add_day(data) -> None:
    """A new daily log file: three plays of the crafted user, each resolved to a song."""
    write(data, "log_data/2018/12/new.json", lines(event(0), event(1), event(2)))


def test_a_play_of_this_runs_file_lost_behind_the_etls_back_fails_the_per_file_check(data):
    first = parse_summary(etl(data).stdout)
    assert first.checks == CHECKS_PASSED
    assert first.checked == checked("over every row")  # song files loaded: any play may change
    add_day(data)
    execute(  # a function's body takes no parameters: the user as a literal in it
        pgsql.SQL(
            "CREATE OR REPLACE FUNCTION test_lose_a_play() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN DELETE FROM songplays WHERE user_id = {} AND item_in_session = 1; "
            "RETURN NULL; END $$"
        ).format(pgsql.Literal(USER))
    )
    execute(
        "CREATE TRIGGER test_lose_a_play AFTER INSERT ON songplays "
        "FOR EACH STATEMENT EXECUTE FUNCTION test_lose_a_play()"
    )

    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert summary.checks == CHECKS_PASSED | {PER_FILE: 1}
    assert summary.checked == checked("over this run's log files")
    # counted exactly: three plays inserted, one deleted by someone else; "this run" is the
    # change in the resolved plays, as the rows are
    assert summary.rows["songplays"] == (2, BASE["songplays"] + 2)
    assert summary.resolved == (2, BASE["songplays"] + 2, 2)
    assert scalar("SELECT count(*) FROM songplays") == BASE["songplays"] + 2


def test_a_play_of_this_runs_file_changed_behind_the_etls_back_fails_the_song_check(data):
    etl(data)
    add_day(data)
    execute(
        "CREATE OR REPLACE FUNCTION test_forget_artist() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.artist_id := NULL; RETURN NEW; END $$"
    )
    execute(  # nor does a trigger's condition
        pgsql.SQL(
            "CREATE TRIGGER test_forget_artist BEFORE INSERT ON songplays "
            "FOR EACH ROW WHEN (NEW.user_id = {}) EXECUTE FUNCTION test_forget_artist()"
        ).format(pgsql.Literal(USER))
    )

    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert summary.checks == CHECKS_PASSED | {RESOLVABLE: 3}
    assert summary.checked == checked("over this run's log files")


def test_a_resent_day_that_loses_every_play_to_the_stored_copies_keeps_the_checks_scoped(data):
    """A day sent again (at-least-once delivery) under a path after the first's: each of its
    plays is a duplicate of one stored, nothing moves between files, and the checks stay on this
    run's files. Sent again under a path before the first's, its copies take the plays over:
    the first file's plays and counts move, and the checks read every row."""
    etl(data)
    add_day(data)
    etl(data)
    day = (data / "log_data/2018/12/new.json").read_bytes()

    write(data, "log_data/2018/12/resent/new.json", day)
    after = parse_summary(etl(data).stdout)
    assert after.records["log"] == Counts(records=3, loaded=0, duplicates=3)
    assert (after.taken_over, after.rows["songplays"]) == (0, (0, BASE["songplays"] + 3))
    assert after.checked == checked("over this run's log files")

    write(data, "log_data/2018/12/early/new.json", day)
    before = parse_summary(etl(data).stdout)
    assert before.records["log"] == Counts(records=3, loaded=3)
    assert (before.taken_over, before.rows["songplays"]) == (3, (0, BASE["songplays"] + 3))
    assert before.checked == checked("over every row")
    assert scalar("SELECT count(*) FROM songplays") == BASE["songplays"] + 3


def test_a_check_whose_constraint_is_dropped_runs_over_every_row(data):
    etl(data)
    execute("ALTER TABLE songplays DROP CONSTRAINT songplays_level_check")
    execute(
        "UPDATE songplays SET level = 'gold' "
        "WHERE songplay_id = (SELECT min(songplay_id) FROM songplays)"
    )
    add_day(data)

    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert summary.checks == CHECKS_PASSED | {LEVEL: 1}
    assert summary.checked == checked("over this run's log files") | {LEVEL: "over every row"}
    assert summary.rows["users"] == (1, BASE["users"] + 1)


def test_a_run_after_one_that_stopped_unfinished_checks_every_row_even_with_nothing_new(data):
    """A run cut off after its last commit (its connection lost as it analyzed, say) stays
    'running' with its checks never run: the next run checks every row, nothing new or not."""
    etl(data)
    execute("DELETE FROM songplays WHERE songplay_id = (SELECT min(songplay_id) FROM songplays)")
    execute(
        "UPDATE load_runs SET status = 'running' WHERE run_id = (SELECT max(run_id) FROM load_runs)"
    )

    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert summary.nothing_new
    assert summary.checks == CHECKS_PASSED | {PER_FILE: 1}
    assert summary.checked == checked("over every row")
    assert scalar("SELECT count(*) FROM load_runs WHERE status = 'interrupted'") == 1
    # that run finished, and failed: the next checks every row again, and marks none interrupted
    again = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert again.checked == checked("over every row")
    assert scalar("SELECT count(*) FROM load_runs WHERE status = 'interrupted'") == 1


def test_a_play_of_an_earlier_file_lost_behind_the_etls_back_fails_the_next_loads_file_check(
    data,
):
    """The per-file check reads this run's files one by one, and the others in total against
    the kept row count: a play deleted by hand from a file loaded before sends it over every
    file, which finds that file, whatever files the load brings."""
    etl(data)
    execute("DELETE FROM songplays WHERE songplay_id = (SELECT min(songplay_id) FROM songplays)")
    add_day(data)

    summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
    assert summary.checks == CHECKS_PASSED | {PER_FILE: 1}
    assert summary.checked == checked("over this run's log files") | {PER_FILE: "over every row"}
    assert summary.rows["songplays"] == (3, BASE["songplays"] + 2)
    assert summary.failures == ["a check failed"]


def test_a_kept_play_count_gone_wrong_is_counted_again_and_fails_no_check(data):
    """The kept count of plays wrong (its triggers off while someone wrote, a restore with
    --disable-triggers): the other files' total differs from it, the check runs over every file,
    finds them all whole and passes, and the count is made right for the next load, whose check
    is scoped again. The run's summary gives the counts as they are, and this run's change."""
    etl(data)
    resolved = scalar("SELECT count(song_id) FROM songplays")
    execute(
        "UPDATE row_counts SET row_count = row_count + 5, resolved = resolved - 2"
        " WHERE table_name = 'songplays'"
    )
    add_day(data)

    summary = parse_summary(etl(data).stdout)
    assert summary.checks == CHECKS_PASSED
    assert summary.checked == checked("over this run's log files") | {PER_FILE: "over every row"}
    assert summary.rows["songplays"] == (3, BASE["songplays"] + 3)
    assert summary.resolved == (resolved + 3, BASE["songplays"] + 3, 3)
    assert scalar("SELECT row_count FROM row_counts WHERE table_name = 'songplays'") == (
        BASE["songplays"] + 3
    )
    write(data, "log_data/2018/12/later.json", lines(event(3)))
    assert parse_summary(etl(data).stdout).checked == checked("over this run's log files")


def test_a_run_after_one_whose_checks_failed_checks_every_row_again_even_with_nothing_new(data):
    """A failed check is not forgotten by the next run (a cron job alerting on the exit code
    would see one failure, then success): while the last run that made its report failed, each
    run checks every row, nothing new or not."""
    etl(data)
    execute("DELETE FROM songplays WHERE songplay_id = (SELECT min(songplay_id) FROM songplays)")
    add_day(data)
    etl(data, exit_code=EXIT_FAILED)
    for _ in range(2):
        summary = parse_summary(etl(data, exit_code=EXIT_FAILED).stdout)
        assert summary.nothing_new
        assert summary.checks == CHECKS_PASSED | {PER_FILE: 1}
        assert summary.checked == checked("over every row")

    # the deletion kept (docs/database.md): the manifest made to count what is there
    execute(
        "UPDATE load_manifest m SET loaded = "
        "(SELECT count(*) FROM songplays p WHERE p.file_id = m.file_id) WHERE m.kind = 'log'"
    )
    assert parse_summary(etl(data).stdout).checks == CHECKS_PASSED
    assert parse_summary(etl(data).stdout).checks is None  # the last run passed: none owed
    assert scalar("SELECT count(*) FROM songplays") == BASE["songplays"] + 2
