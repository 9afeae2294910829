"""etl.ipynb and test.ipynb run top to bottom, without an error, on a freshly loaded database.

They run in memory: the committed notebooks and their outputs are left as they are. The kernel
inherits this process's environment, so it uses the tests' private server (SPARKIFY_PGDATA or
DATABASE_URL, see conftest.py), its libpq asking for sessions in India's time (PGTZ): the
notebooks' engine shows instants in UTC all the same, as the embedded server where the committed
outputs come from does.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sys
import tempfile
import time

import jupyter_client.manager as manager
import nbclient
import nbformat
import pytest
from conftest import PROJECT, drop_tables, environment, query, run_script
from traitlets.config import Config

import db
import sql_queries

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it


CELL_TIMEOUT = 300  # seconds
COMMITTED_FROM = "the embedded server in .pgdata"  # where docs/development.md runs them
NOTEBOOKS = ("etl.ipynb", "test.ipynb")


@pytest.fixture(scope="module")
def loaded():
    run_script("create_tables.py")
    run_script("etl.py", "--data", "data", "--no-progress")


def execute(name: str, allow_errors: bool = False):
    """Run every cell of the notebook in a fresh python3 kernel, in the project folder, its
    sessions in UTC; the notebook as executed (with allow_errors, every cell, each error an
    output)."""
    notebook = nbformat.read(PROJECT / name, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nb-") as sockets:
        client = nbclient.NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=CELL_TIMEOUT,
            startup_timeout=120,
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(PROJECT)}},
            # Unix sockets in a private folder rather than TCP on localhost: nothing else on
            # the machine can listen in, and nothing is left in the project folder.
            config=Config(
                {"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}}
            ),
        )
        started = time.monotonic()
        # east of UTC, as a laptop in India is: the notebooks' engine shows instants in UTC
        with environment({"PGTZ": "Asia/Kolkata"}):  # the kernel's libpq reads it
            client.execute()  # raises CellExecutionError, with the cell and its traceback
        print(f"{name} ran in {time.monotonic() - started:.1f} s")
        return notebook


def printed(notebook, where: str) -> list[tuple[int, str]]:
    """The text each code cell shows, by cell: what it printed, as one text however the kernel
    cut it into pieces (a busy machine cuts it otherwise), then its results as text; without
    what varies from run to run: the seconds a load took, and where (the database's
    description)."""
    shown = []
    for number, cell in enumerate(notebook.cells):
        outputs = cell.get("outputs", [])
        streamed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
        results = [o.get("data", {}).get("text/plain") for o in outputs if "data" in o]
        for text in filter(None, [streamed, *results]):
            text = re.sub(r" in [\d.]+ s \(run ", " (run ", text.replace(where, "DATABASE"))
            shown.append((number, text))
    return shown


def charts(notebook) -> list[int]:
    """The code cells that show a chart, by number."""
    return [
        number
        for number, cell in enumerate(notebook.cells)
        if any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))
    ]


def assert_committed_outputs_current(name: str, executed) -> None:
    """The committed notebook shows what it shows when run now, on the sample: it was refreshed
    after the last change to what it prints (its SQL, its tables, its summaries) or charts.
    Compared where text sorts by its bytes, as in the embedded server the outputs come from."""
    committed = nbformat.read(PROJECT / name, as_version=4)
    assert charts(committed) == charts(executed), f"{name}: its committed charts are out of date"
    [(sorts_by_bytes,)] = query("SELECT 'B' < 'a'")
    if not sorts_by_bytes:
        pytest.skip(
            f"{name} ran without an error, but its outputs are not compared: this server's text "
            "order is a language's, which ranks ties otherwise than the embedded server's"
        )
    here = db.Settings.from_env(None).describe()
    assert printed(committed, COMMITTED_FROM) == printed(executed, here), (
        f"{name}: its committed outputs are out of date; refresh them as docs/development.md says"
    )


def test_the_kernel_is_this_python():
    """The python3 kernel must be the interpreter running the tests (the project's venv), not
    some other Python that happens to be registered."""
    command = manager.KernelManager(kernel_name="python3").format_kernel_cmd()
    assert command[0] == sys.executable, (
        f"the python3 kernel runs {command[0]}, not {sys.executable}: "
        "`jupyter kernelspec list` shows which kernelspec wins"
    )


def test_etl_notebook_runs_and_shows_what_its_committed_outputs_show(loaded):
    """Walks one song file and one log file, then reloads the whole database."""
    assert_committed_outputs_current("etl.ipynb", execute("etl.ipynb"))


def test_test_notebook_runs_its_checks_pass_and_it_shows_what_its_committed_outputs_show(loaded):
    """Its last check cell asserts that every data-quality check passed."""
    assert_committed_outputs_current("test.ipynb", execute("test.ipynb"))


def test_committed_notebooks_carry_outputs_and_no_errors():
    """They are read on GitHub: executed, in order, without error outputs."""
    for name in NOTEBOOKS:
        notebook = nbformat.read(PROJECT / name, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        assert all(counts) and counts == sorted(counts), f"{name}: not executed top to bottom"
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: committed with an error output"
    shown = [len(charts(nbformat.read(PROJECT / n, as_version=4))) for n in NOTEBOOKS]
    assert shown == [0, 6], "the charts are missing from the committed outputs"


RECOUNT = "NextSong events in each file = its plays + duplicates + rejected plays"


def test_test_notebook_recounts_each_log_file_as_loaded_whatever_its_form_or_others_gone(tmp_path):
    """Log files compressed, named .jsonl, or deleted after their load: the recount reads each
    file still there as etl.py does, so a good load passes; a file's count that disagrees with
    the recount fails it, whichever form the file has. (Runs last: it loads its own data.)"""
    data = tmp_path / "data"
    shutil.copytree(PROJECT / "data", data, ignore=shutil.ignore_patterns("truth.json"))
    logs = sorted((data / "log_data").rglob("*.json"))
    packed = logs[0].with_name(logs[0].name + ".gz")
    packed.write_bytes(gzip.compress(logs[0].read_bytes()))
    logs[0].unlink()
    lines = logs[1].rename(logs[1].with_suffix(".jsonl"))
    run_script("create_tables.py")
    run_script("etl.py", "--data", str(data), "--no-progress")
    logs[2].unlink()
    run_script("etl.py", "--data", str(data), "--no-progress")
    execute("test.ipynb")  # its last check cell raises when a check fails
    for loaded in (packed, lines):
        path = loaded.relative_to(data).as_posix()
        miscount = "UPDATE load_manifest SET duplicates = duplicates + %s WHERE path = %s"
        query(miscount, (1, path))
        with pytest.raises(nbclient.exceptions.CellExecutionError) as failed:
            execute("test.ipynb")
        query(miscount, (-1, path))
        assert f"data-quality checks failed: [{RECOUNT!r}]" in str(failed.value)


def test_test_notebook_run_on_after_a_refused_url_never_shows_its_password():
    """A DATABASE_URL the first cell refuses (its '@host' left out), and every cell run all the
    same: none shows a piece of the password (%sql, given no engine, would connect to
    DATABASE_URL itself and quote it)."""
    password = "Kq7vZt4mPw8xRn2j"  # no 4 characters of it in any English word
    with environment({"DATABASE_URL": f"postgresql://sparkify:{password}/sparkifydb"}):
        notebook = execute("test.ipynb", allow_errors=True)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    [refusal] = [o for o in code[0].outputs if o.output_type == "error"]
    assert refusal.ename == "DatabaseError"
    shown = "\n".join(
        str(text)
        for cell in code
        for output in cell.outputs
        for text in (
            output.get("text", ""),
            output.get("evalue", ""),
            *output.get("traceback", []),
            # not the charts: their bytes may hold any 4 characters
            *(v for kind, v in output.get("data", {}).items() if not kind.startswith("image/")),
        )
    )
    pieces = {password[i : i + db.MASKED_FROM] for i in range(len(password) - db.MASKED_FROM + 1)}
    assert not {piece for piece in pieces if piece in shown}


def test_test_notebook_on_a_database_not_loaded_says_what_to_run_first():
    """No tables: create_tables.py's line; tables but no load: etl.py's. (Runs last: it drops
    the tables.)"""
    run_script("create_tables.py")  # the database, whichever test ran before
    drop_tables()
    missing = ", ".join(sql_queries.TABLES)
    for said in (
        f"table(s) {missing} missing: run `python create_tables.py` first",
        "nothing is loaded in this database yet: run `python etl.py` first",
    ):
        notebook = execute("test.ipynb", allow_errors=True)
        [error] = [o for o in notebook.cells[1].outputs if o.output_type == "error"]
        assert (error.ename, error.evalue) == ("DatabaseError", said)
        run_script("create_tables.py")


def cell_text(notebook, number: int) -> str:
    return "".join(o.get("text", "") for o in notebook.cells[number].outputs)


def test_test_notebook_runs_on_a_load_that_holds_no_plays(tmp_path):
    """A feed whose logs hold no NextSong event yet loads no play: every check and chart cell
    runs all the same (empty axes), the levels' pie saying there is nothing to draw. (Runs
    last: it loads its own data.)"""
    data = tmp_path / "data"
    song = next((PROJECT / "data" / "song_data").rglob("*.json"))
    (data / "song_data").mkdir(parents=True)
    shutil.copy(song, data / "song_data" / song.name)
    day = PROJECT / "data" / "log_data" / "2018" / "11" / "2018-11-01-events.json"
    other_pages = [line for line in day.read_text().splitlines(True) if '"NextSong"' not in line]
    (data / "log_data").mkdir()
    (data / "log_data" / day.name).write_text("".join(other_pages))
    run_script("create_tables.py")
    run_script("etl.py", "--data", str(data), "--no-progress")
    notebook = execute("test.ipynb")
    [levels] = [
        n for n, cell in enumerate(notebook.cells) if "ax.pie(" in "".join(cell.get("source", ""))
    ]
    assert cell_text(notebook, levels) == "no plays loaded: no levels to chart\n"
    committed = nbformat.read(PROJECT / "test.ipynb", as_version=4)
    assert charts(notebook) == [n for n in charts(committed) if n != levels]  # empty axes


def test_test_notebook_checks_what_a_load_that_did_not_finish_committed():
    """A load killed, interrupted or failed keeps what it committed: the notebook checks it,
    noting the run is unfinished, rather than saying nothing is loaded. (Runs last: it loads its
    own data.)"""
    run_script("create_tables.py")
    run_script("etl.py", "--data", "data", "--no-progress")
    [(run_id,)] = query("UPDATE load_runs SET status = 'interrupted' RETURNING run_id")
    try:
        notebook = execute("test.ipynb")  # its last check cell raises when a check fails
    finally:
        query("UPDATE load_runs SET status = 'succeeded'")
    assert cell_text(notebook, 1) == (
        f"note: the latest load (run {run_id}) has not finished (interrupted): what it committed "
        "is here; once it has ended, `python etl.py` finishes it\n"
    )
