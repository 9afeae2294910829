"""make's setup of the venv on a laptop's Pythons: one too old is named in one line before
anything is made, and a venv another Python made is made anew (venv run over it would keep its
interpreter). Run in a copy of the Makefile with a requirements.txt naming nothing, so that no
package is installed."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT


@functools.cache
def interpreters() -> dict[tuple[int, int], str]:
    """Pythons this machine has beside the tests' own, by version: on PATH, or pyenv's (asked
    for by the tests that need one, not as every test run collects this file)."""
    found = {}
    names = [f"python3.{minor}" for minor in range(8, 16)]
    paths = [shutil.which(name) for name in names]
    paths += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python3")))
    for path in filter(None, paths):
        ran = subprocess.run(
            [path, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if ran.returncode == 0:
            major, minor = map(int, ran.stdout.split())
            found.setdefault((major, minor), path)
    found.pop(sys.version_info[:2], None)
    return found


def a_python(older: bool) -> str:
    """A Python of this machine's older than 3.11, or else one 3.11 or newer; the test is
    skipped where there is none."""
    found = [path for version, path in interpreters().items() if (version < (3, 11)) == older]
    if not found:
        pytest.skip(
            "no Python older than 3.11 on this machine"
            if older
            else "no Python 3.11+ on this machine beside the tests' own"
        )
    return found[0]


def make_venv(folder: Path, python: str) -> subprocess.CompletedProcess:
    shutil.copy(PROJECT / "Makefile", folder)
    (folder / "requirements.txt").write_text("# nothing to install\n")
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    return subprocess.run(
        ["make", "venv", f"PYTHON={python}"],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def version_of(python: str) -> str:
    ran = subprocess.run([python, "--version"], capture_output=True, text=True, check=True)
    return ran.stdout.strip()


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_a_python_older_than_3_11_is_named_in_one_line_and_no_venv_made(tmp_path):
    python = a_python(older=True)
    done = make_venv(tmp_path, python)
    version = version_of(python).removeprefix("Python ")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        f"make: the project needs Python 3.11 or newer, and {python} is {version}: name a newer "
        "one, e.g. make PYTHON=python3.12"
    )
    assert not (tmp_path / ".venv").exists()


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_a_venv_another_python_made_is_made_anew_with_the_python_named(tmp_path):
    subprocess.run([a_python(older=False), "-m", "venv", tmp_path / ".venv"], check=True)
    done = make_venv(tmp_path, sys.executable)
    assert done.returncode == 0, done.stderr
    assert version_of(str(tmp_path / ".venv/bin/python")) == version_of(sys.executable)
    assert (tmp_path / ".venv/.requirements-installed").exists()
