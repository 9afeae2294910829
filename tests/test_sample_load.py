"""The shipped sample (data/): it is what tools/generate_data.py writes, and `python etl.py` loads
it to exactly the numbers of its truth.json, then changes nothing on a second run."""

import contextlib

import pytest
from conftest import SAMPLE, counts, query, run_main, run_script, scalar, table_contents
from summary import CHECKS_PASSED, parse_summary

import audit
import db
from sql_queries import STAR_TABLES


@pytest.fixture(scope="module")
def sample_load():
    """The summary of `python etl.py` (data/ by default) into fresh tables."""
    run_main("create_tables.py")
    return parse_summary(run_main("etl.py", "--no-progress", "--json").stdout)


def test_sample_load_matches_the_generators_truth(sample_load, truth):
    assert counts() == {table: truth[table] for table in STAR_TABLES}
    assert (
        scalar("SELECT count(*) FROM songplays WHERE song_id IS NOT NULL")
        == truth["songplays_resolved"]
    )
    assert dict(query("SELECT user_id::text, level FROM users")) == truth["levels"]
    assert sample_load.checks == CHECKS_PASSED


def test_sample_load_resolves_a_non_ascii_play_to_its_song(sample_load, truth):
    play = truth["example_resolved_play"]
    assert query(
        "SELECT song_id, artist_id, song_title, artist_name FROM songplays "
        "WHERE user_id = %s AND session_id = %s AND item_in_session = %s",
        (play["user_id"], play["session_id"], play["item_in_session"]),
    ) == [(play["song_id"], play["artist_id"], play["title"], play["artist"])]


def test_second_load_of_the_sample_changes_nothing_and_says_so(sample_load):
    before = table_contents()
    assert parse_summary(run_main("etl.py", "--no-progress", "--json").stdout).nothing_new
    assert table_contents() == before


def test_the_audit_recounts_every_log_file_and_names_the_one_its_books_miscount(
    sample_load, settings
):
    """audit.recount_plays (test.ipynb's recount) agrees with a good load, file by file, and
    finds a manifest entry that says two plays more than its file holds."""
    first = "log_data/2018/11/2018-11-01-events.json"
    with contextlib.closing(db.connect(settings)) as conn:
        conn.autocommit = True
        data, _, status = audit.last_run(conn)
        assert (data, status) == (str(SAMPLE.resolve()), "succeeded")
        assert audit.recount_plays(conn, data) == audit.Recount(30, {}, {})
        miscount = "UPDATE load_manifest SET duplicates = duplicates + %s WHERE path = %s"
        with conn.cursor() as cur:
            cur.execute(miscount, (2, first))
        try:
            assert audit.recount_plays(conn, data) == audit.Recount(30, {first: -2}, {})
        finally:
            with conn.cursor() as cur:
                cur.execute(miscount, (-2, first))


def test_sample_data_is_the_generators_output(tmp_path):
    from tools import generate_data

    generate_data.main(["--out", str(tmp_path)])
    for path in sorted(SAMPLE.rglob("*.json")):
        assert (tmp_path / path.relative_to(SAMPLE)).read_bytes() == path.read_bytes(), path


def test_etl_as_a_command_and_its_parse_worker_load_the_sample_without_importing_pandas(
    fresh_tables, truth
):
    """pyarrow would import pandas, unused, in each process (workers.WithoutPandas): every module
    either imports is listed by -X importtime, which the worker inherits."""
    done = run_script("-X", "importtime", "etl.py", "--no-progress", "--jobs", "1")
    imported = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines()]
    assert imported.count("prepare") == 2  # etl.py's song batches, the worker's log batch
    assert "pyarrow" in imported
    # pyarrow's attempt, refused, is listed as "pandas" alone; pandas imported lists its modules
    assert [name for name in imported if name.startswith("pandas.")] == []
    assert counts() == {table: truth[table] for table in STAR_TABLES}
