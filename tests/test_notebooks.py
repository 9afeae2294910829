"""etl.ipynb and test.ipynb run top to bottom, without an error, on a freshly loaded database.

They run in memory: the committed notebooks and their outputs are left as they are. The kernel
inherits this process's environment, so it uses the tests' private server (SPARKIFY_PGDATA or
DATABASE_URL, see conftest.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import pytest
from conftest import PROJECT, run_script

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

nbformat = pytest.importorskip("nbformat", reason="notebook packages missing: run `make venv`")
nbclient = pytest.importorskip("nbclient", reason="notebook packages missing: run `make venv`")
manager = pytest.importorskip("jupyter_client.manager")
Config = pytest.importorskip("traitlets.config").Config

CELL_TIMEOUT = 300  # seconds


@pytest.fixture(scope="module")
def loaded():
    run_script("create_tables.py")
    run_script("etl.py", "--data", "data", "--no-progress")


def execute(name: str) -> float:
    """Run every cell of the notebook in a fresh python3 kernel, in the project folder."""
    notebook = nbformat.read(PROJECT / name, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nb-") as sockets:
        client = nbclient.NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=CELL_TIMEOUT,
            startup_timeout=120,
            allow_errors=False,
            resources={"metadata": {"path": str(PROJECT)}},
            # Unix sockets in a private folder rather than TCP on localhost: nothing else on
            # the machine can listen in, and nothing is left in the project folder.
            config=Config(
                {"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}}
            ),
        )
        started = time.monotonic()
        client.execute()  # raises CellExecutionError, with the cell and its traceback
        return time.monotonic() - started


def test_the_kernel_is_this_python():
    """The python3 kernel must be the interpreter running the tests (the project's venv), not
    some other Python that happens to be registered."""
    command = manager.KernelManager(kernel_name="python3").format_kernel_cmd()
    assert command[0] == sys.executable, (
        f"the python3 kernel runs {command[0]}, not {sys.executable}: "
        "`jupyter kernelspec list` shows which kernelspec wins"
    )


def test_etl_notebook_runs(loaded):
    """Walks one song file and one log file, then reloads the whole database."""
    seconds = execute("etl.ipynb")
    print(f"etl.ipynb ran in {seconds:.1f} s")


def test_test_notebook_runs_and_its_checks_pass(loaded):
    """Its last check cell asserts that every data-quality check passed."""
    seconds = execute("test.ipynb")
    print(f"test.ipynb ran in {seconds:.1f} s")


def test_committed_notebooks_carry_outputs_and_no_errors():
    """They are read on GitHub: executed, in order, without error outputs."""
    for name in ("etl.ipynb", "test.ipynb"):
        notebook = nbformat.read(PROJECT / name, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        assert all(counts) and counts == sorted(counts), f"{name}: not executed top to bottom"
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: committed with an error output"
    charts = sum(
        "image/png" in o.get("data", {})
        for c in nbformat.read(PROJECT / "test.ipynb", as_version=4).cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert charts >= 5, "test.ipynb: the charts are missing from the committed outputs"
