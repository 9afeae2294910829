"""The documentation names what exists: every `module.name` that the README, docs/ or
bench/README.md mentions is a real attribute of that project module, and every `file.py` it
mentions is a real file."""

from __future__ import annotations

import functools
import importlib
import re

import pytest
from conftest import MODULE_FILES, PROJECT, import_name

# A project module is a Python file of the project outside the tests, named by its file's stem (a
# tool's too: `generate_data.generate` and `tools.generate_data.generate` name the same thing).
MODULES = {path.stem: path for path in MODULE_FILES}
MENTION = re.compile(r"\b(" + "|".join(sorted(MODULES)) + r")((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
FILE_SUFFIXES = {"py", "ipynb", "md", "json", "svg", "mmd", "png", "txt", "toml", "ini", "csv"}
ADDRESS = re.compile(r"\S*(?:://|@)\S*")  # URLs and user@host: host names are not modules
FILE_MENTION = re.compile(r"`([A-Za-z_][A-Za-z0-9_/]*\.py)\b")
DOCS = [PROJECT / "README.md", *sorted(PROJECT.glob("docs/*.md")), PROJECT / "bench/README.md"]


@functools.cache
def prose() -> dict[str, str]:
    """Each document's text, read once."""
    return {str(doc.relative_to(PROJECT)): doc.read_text() for doc in DOCS if doc.exists()}


def resolves(module: str, chain: str) -> bool:
    """Whether module.a.b... exists; a file name (etl.py, etl.ipynb) is checked elsewhere."""
    names = chain.strip(".").split(".")
    if names[0] in FILE_SUFFIXES:
        return True
    value = importlib.import_module(import_name(MODULES[module]))
    for name in names:
        if not hasattr(value, name):
            return False
        value = getattr(value, name)
    return True


@pytest.mark.parametrize("where", sorted(prose()))
def test_every_module_name_mentioned_exists(where):
    text = ADDRESS.sub(" ", prose()[where])
    missing = sorted(
        {m + chain for m, chain in MENTION.findall(text) if m != "bench" and not resolves(m, chain)}
    )
    assert missing == []


@pytest.mark.parametrize("doc", [d for d in DOCS if d.exists()], ids=lambda d: d.name)
def test_every_python_file_mentioned_exists(doc):
    named = set(FILE_MENTION.findall(doc.read_text()))
    known = {str(p.relative_to(PROJECT)) for p in PROJECT.rglob("*.py") if ".venv" not in p.parts}
    missing = sorted(n for n in named if not any(k == n or k.endswith("/" + n) for k in known))
    assert missing == []
