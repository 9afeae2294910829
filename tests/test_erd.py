"""erd.py: the committed diagram matches the schema create_tables.py makes."""

from __future__ import annotations

import difflib
import resource
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from builders import one_error_line
from conftest import PROJECT, drop_tables, query, run_script

import sql_queries
from cli import EXIT_ENVIRONMENT

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    run_script("create_tables.py")
    out = tmp_path_factory.mktemp("erd")
    run_script("erd.py", "--out", str(out))
    return out


def stale(name: str, fresh: str, committed: str) -> str:
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            f"ERD/{name} (committed)",
            f"{name} (from the schema)",
            n=1,
        )
    )
    return f"ERD/{name} is stale: run `python erd.py`\n{diff[:3000]}"


def test_committed_mermaid_source_is_up_to_date(generated):
    fresh = (generated / "schema.mmd").read_bytes()
    committed = (PROJECT / "ERD" / "schema.mmd").read_bytes()
    assert fresh == committed, stale("schema.mmd", fresh.decode(), committed.decode())


def test_committed_svg_is_up_to_date(generated):
    fresh = (generated / "schema.svg").read_bytes()
    committed = (PROJECT / "ERD" / "schema.svg").read_bytes()
    assert fresh == committed, stale("schema.svg", fresh.decode(), committed.decode())


def test_mermaid_names_every_table_column_and_foreign_key(generated):
    text = (generated / "schema.mmd").read_text()
    assert text.splitlines()[2] == "erDiagram"
    for table in sql_queries.TABLES:
        assert f"    {table} {{" in text
    assert "        bigint songplay_id PK" in text
    assert '    users ||--o{ songplays : "user_id"' in text
    assert '    songs |o--o{ songplays : "song_id"' in text  # nullable: zero or one song
    assert '    load_runs ||--o{ load_manifest : "run_id"' in text


def test_svg_is_well_formed_and_draws_every_table(generated):
    for path in (generated / "schema.svg", PROJECT / "ERD" / "schema.svg"):
        root = ET.parse(path).getroot()
        assert root.tag == f"{SVG}svg"
        groups = {g.get("id") for g in root.iter(f"{SVG}g")}
        texts = {t.text for t in root.iter(f"{SVG}text")}
        for table in sql_queries.TABLES:
            assert f"table-{table}" in groups, f"{path.name}: no box for {table}"
            assert table in texts, f"{path.name}: {table} not named"


def test_missing_tables_are_reported_and_nothing_is_written(tmp_path):
    drop_tables()
    try:
        done = run_script("erd.py", "--out", str(tmp_path), check=False)
        assert done.returncode == EXIT_ENVIRONMENT
        assert "run `python create_tables.py` first" in one_error_line(done)
        assert not list(tmp_path.iterdir())
    finally:
        run_script("create_tables.py")


def test_tables_another_version_made_are_refused_and_nothing_is_written(tmp_path):
    """Their diagram is not this version's: drawn, it would replace the committed one."""
    run_script("create_tables.py")
    query("ALTER TABLE songs DROP COLUMN artist_location; COMMENT ON TABLE load_runs IS NULL")
    try:
        done = run_script("erd.py", "--out", str(tmp_path), check=False)
        assert done.returncode == EXIT_ENVIRONMENT
        assert one_error_line(done).startswith(
            "error: the tables were made by another version of create_tables.py (their stamp, "
        )
        assert not list(tmp_path.iterdir())
    finally:
        run_script("create_tables.py")


def test_a_diagram_that_cannot_be_written_whole_leaves_the_one_before_as_it_was(tmp_path):
    """Out of room while writing (here a file-size limit, as a full disk stops it): the files
    there before stay whole, and no piece of the new ones is left."""
    run_script("create_tables.py")
    before = {"schema.mmd": "the diagram before\n", "schema.svg": "<svg/>\n"}
    for name, text in before.items():
        (tmp_path / name).write_text(text)

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    done = subprocess.run(
        [sys.executable, "erd.py", "--out", str(tmp_path)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (
        EXIT_ENVIRONMENT,
        f"error: cannot write to {tmp_path}: File too large\n",
    )
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
