"""The Udacity dataset, where it exists: the exact numbers a correct load gives."""

import pytest
from builders import etl
from conftest import counts, query, run_script, scalar, table_contents
from summary import CHECKS_PASSED, parse_summary

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

EXPECTED = {"songs": 71, "artists": 69, "users": 96, "time": 6813, "songplays": 6820}


def test_real_dataset_loads_exact_counts_and_stays_the_same_on_a_second_run(real_data):
    run_script("create_tables.py")
    assert parse_summary(etl(real_data).stdout).checks == CHECKS_PASSED
    assert counts() == EXPECTED
    assert query("SELECT level, count(*) FROM users GROUP BY level ORDER BY level") == [
        ("free", 74),
        ("paid", 22),
    ]
    assert query(
        "SELECT song_title, artist_name, song_id, artist_id FROM songplays "
        "WHERE song_id IS NOT NULL"
    ) == [("Setanta matins", "Elena", "SOZCTXZ12AB0182364", "AR5KOSW1187FB35FF4")]
    before = table_contents()

    assert parse_summary(etl(real_data).stdout).nothing_new
    assert table_contents() == before

    refreshed = parse_summary(etl(real_data, "--full-refresh").stdout)
    assert refreshed.records["log"][:3] == (8056, 6820, 1236)  # records, loaded, skipped
    assert table_contents() == before


def test_real_dataset_double_encoded_titles_are_repaired(real_data):
    run_script("create_tables.py")
    etl(real_data)
    assert (
        scalar(
            "SELECT count(*) FROM songplays WHERE song_title = %s AND artist_name = %s",
            ("No Hay Nadie Como Tú", "Calle 13 Featuring Café Tacuba"),
        )
        == 1  # its one play, 2018-11-02
    )
    assert (
        scalar(
            "SELECT count(*) FROM songplays WHERE song_title LIKE %s OR artist_name LIKE %s",
            ("%Ã%", "%Ã%"),
        )
        == 0
    )
    assert scalar("SELECT count(*) FROM songplays WHERE user_agent LIKE '\"%%'") == 0
