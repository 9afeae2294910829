"""Errors and security: a problem the user can fix is one clear line on stderr with its exit
code, never a traceback or a password; every command documents its options and exit codes; SQL
text is never built from values; the embedded server is reached through a private socket."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import base_sample, etl, one_error_line
from conftest import PROJECT, drop_tables, run_script

import db
import embedded
import sql_queries
from cli import EXIT_ENVIRONMENT, EXIT_LOCKED
from report import EXIT_FAILED, EXIT_OK

UNREACHABLE = "postgresql://u:s3cret@127.0.0.1:1/x"


def test_every_script_has_help():
    for script in ("etl.py", "create_tables.py", "db.py", "generate_data.py"):
        assert "usage:" in run_script(script, "--help").stdout


def test_exit_codes_keep_the_numbers_the_help_documents():
    assert (EXIT_OK, EXIT_FAILED, EXIT_ENVIRONMENT, EXIT_LOCKED) == (0, 1, 3, 4)
    documented = " ".join(run_script("etl.py", "--help").stdout.split())
    for code, cause in [
        (EXIT_OK, "loaded"),
        (EXIT_FAILED, "a check or the reconciliation failed"),
        (EXIT_ENVIRONMENT, "database or data folder problem"),
        (EXIT_LOCKED, "another load is running"),
    ]:
        assert f"{code} {cause}" in documented, (code, documented)


@pytest.mark.parametrize(
    "command",
    [["etl.py", "--data", "{data}"], ["create_tables.py"], ["db.py", "psql"]],
    ids=" ".join,
)
def test_unreachable_server_is_one_clear_error_line_without_the_password(tmp_path, command):
    data = base_sample(tmp_path / "data")
    done = run_script(
        *[a.format(data=data) for a in command],
        env={"DATABASE_URL": UNREACHABLE},
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_ENVIRONMENT, done
    assert "127.0.0.1" in one_error_line(done)
    assert "s3cret" not in done.stdout + done.stderr


def test_db_url_prints_the_url_without_the_password():
    done = run_script("db.py", "url", env={"DATABASE_URL": UNREACHABLE}, timeout=60)
    assert done.stdout == "postgresql://u:***@127.0.0.1:1/x\n"
    assert "s3cret" not in done.stdout + done.stderr


def embedded_socket_dir() -> Path:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the tests use DATABASE_URL, not an embedded server")
    running = embedded.running(Path(os.environ["SPARKIFY_PGDATA"]))
    assert running, "the test server is not running"
    return running[1]


def test_psql_gets_no_password_on_its_command_line(fresh_tables):
    """Any local user can read another process's command line (ps)."""
    url = (
        f"postgresql://{embedded.SUPERUSER}:s3cret@/{db.DATABASE}"
        f"?host={embedded_socket_dir()}&port={embedded.PORT}"
    )
    proc = subprocess.Popen(
        [sys.executable, "db.py", "psql"],
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name == "psql" or proc.poll() is not None:
                break
            assert time.monotonic() < deadline, "db.py psql did not start psql"
            time.sleep(0.02)
        out, err = proc.communicate(b"SELECT 'connected';\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"connected" in out, (out, err)
    assert b"s3cret" not in b" ".join(argv), argv


def test_missing_tables_are_one_error_naming_them_and_create_tables(data):
    drop_tables()
    try:
        message = one_error_line(etl(data, exit_code=EXIT_ENVIRONMENT))
        assert "create_tables.py" in message
        assert all(t in message for t in sql_queries.TABLES), message
    finally:
        run_script("create_tables.py")


def test_missing_database_on_a_named_server_is_one_error_saying_to_create_it(tmp_path):
    data = base_sample(tmp_path / "data")
    url = (
        f"postgresql://{embedded.SUPERUSER}@/no_such_db"
        f"?host={embedded_socket_dir()}&port={embedded.PORT}"
    )
    message = one_error_line(etl(data, env={"DATABASE_URL": url}, exit_code=EXIT_ENVIRONMENT))
    assert 'database "no_such_db" does not exist' in message
    assert message.endswith(
        "create it first (e.g. `createdb`): only the embedded server's is made for you"
    )


def test_missing_or_empty_data_folder_is_one_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    message = one_error_line(etl(missing, exit_code=EXIT_ENVIRONMENT))
    assert message == f"error: data folder {missing} not found (choose one with --data)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in one_error_line(etl(empty, exit_code=EXIT_ENVIRONMENT))


# ---------------------------------------------------------------- SQL is never built from values

EXECUTORS = {"execute", "executemany", "copy_expert", "mogrify"}  # the statement comes first
BATCH_EXECUTORS = {"execute_batch", "execute_values"}  # (cursor, statement, ...)
TABLE_TEMPLATES = {"copy_into", "row_count"}  # the only templates: a {table} placeholder


def statement(call: ast.Call) -> ast.expr | None:
    """The statement argument of a call that runs SQL; None for any other call."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name in EXECUTORS and call.args:
        return call.args[0]
    if name in BATCH_EXECUTORS and len(call.args) > 1:
        return call.args[1]
    return None


def parse_module(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=path.name)


def sql_running_modules() -> list[str]:
    """The project's modules that run SQL, found by their calls."""
    return sorted(
        path.name
        for path in PROJECT.glob("*.py")
        if any(
            isinstance(node, ast.Call) and statement(node) is not None
            for node in ast.walk(parse_module(path))
        )
    )


def aliases(tree: ast.Module, module: str) -> set[str]:
    """The names the module is imported as (import m as x; from package import m as x)."""
    package, _, name = module.rpartition(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.asname or a.name for a in node.names if a.name == module}
        elif isinstance(node, ast.ImportFrom) and node.module == package:
            found |= {a.asname or a.name for a in node.names if a.name == name}
    return found


def root_name(node: ast.expr) -> str | None:
    """x for x.a.b(...)[...]: the name an expression starts from."""
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def binds(node: ast.AST, name: str) -> bool:
    """Whether the node gives the name a value (a loop, an assignment, an argument...)."""
    if isinstance(node, ast.arg):
        return node.arg == name
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.withitem):
        targets = [node.optional_vars] if node.optional_vars else []
    elif isinstance(
        node, (ast.For, ast.comprehension, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)
    ):
        targets = [node.target]
    else:
        return False
    return any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t))


class StatementCheck:
    """Whether a module's statement argument is fixed text, whatever the data."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.sql = aliases(tree, "sql_queries")
        self.pgsql = aliases(tree, "psycopg2.sql")
        self.parents = {
            child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
        }

    def constant_of_sql_queries(self, node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.sql
            and isinstance(getattr(sql_queries, node.attr, None), str)
        )

    def pgsql_call(self, node: ast.expr, name: str) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == name
            and root_name(node.func) in self.pgsql
        )

    def function_of(self, node: ast.AST) -> ast.AST | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return node
        return None

    def name_is_fixed(self, node: ast.Name) -> bool:
        """Every binding of the name in its function is a loop over sql_queries' data; a name
        its function does not bind is a module constant, assigned literal text only."""
        function = self.function_of(node)
        bindings = [n for n in ast.walk(function) if binds(n, node.id)] if function else []
        if bindings:
            return all(
                isinstance(b, (ast.For, ast.comprehension)) and root_name(b.iter) in self.sql
                for b in bindings
            )
        module_level = [n for n in self.tree.body if binds(n, node.id)]
        return bool(module_level) and all(
            isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
            for n in module_level
        )

    def fixed(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.Name):
            return self.name_is_fixed(node)
        if self.constant_of_sql_queries(node):
            return True
        if isinstance(node, ast.IfExp):  # a choice between fixed statements
            return self.fixed(node.body) and self.fixed(node.orelse)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            return False  # an f-string, a % or + of strings, a variable's attribute...
        template, method = node.func.value, node.func.attr
        if method == "format" and self.pgsql_call(template, "SQL"):
            # psycopg2.sql: fixed text, and only Identifier()s in it
            return all(self.fixed(a) for a in template.args) and all(
                self.pgsql_call(a, "Identifier")
                for a in [*node.args, *(k.value for k in node.keywords)]
            )
        return (
            method == "format"
            and self.constant_of_sql_queries(template)
            and template.attr in TABLE_TEMPLATES
            and not node.args
            and [k.arg for k in node.keywords] == ["table"]
        )


@pytest.mark.parametrize("module", sql_running_modules())
def test_sql_text_is_never_built_from_values(module):
    """Every statement run is a sql_queries constant, literal text, a loop over sql_queries'
    statements, psycopg2.sql with Identifier()s, or one of the two {table} templates filled
    with a table name: never an f-string, a % or a concatenation."""
    tree = parse_module(PROJECT / module)
    check = StatementCheck(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and statement(n) is not None]
    unsafe = [ast.unparse(statement(c)) for c in calls if not check.fixed(statement(c))]
    assert not unsafe, f"{module}: statements that may hold values: {unsafe}"


CHECKED_EXAMPLE = """
import sql_queries as sql
from psycopg2 import sql as pgsql
QUERY = "SELECT 1"
def fixed(cur, name):
    cur.execute(sql.drop_tables)
    cur.execute("SELECT 1")
    cur.execute(QUERY)
    for query in sql.create_table_queries:
        cur.execute(query)
    cur.execute(sql.row_count.format(table=name))
    cur.execute(pgsql.SQL(sql.create_database).format(name=pgsql.Identifier(name)))
    cur.execute(sql.time_insert if name else sql.time_insert_citus)
def built_from_values(cur, name, query):
    cur.execute(f"SELECT {name}")
    cur.execute("SELECT %s" % name)
    cur.execute("SELECT " + name)
    cur.execute(query)
    cur.execute(sql.create_database.format(name=name))
    cur.execute(pgsql.SQL("SELECT {}").format(pgsql.Literal(name)))
    psycopg2.extras.execute_batch(cur, "SELECT " + name, [])
    cur.execute(sql.time_insert if name else "SELECT " + name)
"""


def test_the_sql_check_tells_fixed_text_from_text_built_from_values():
    tree = ast.parse(CHECKED_EXAMPLE)
    check = StatementCheck(tree)
    verdicts = {
        function.name: [
            check.fixed(statement(c))
            for c in ast.walk(function)
            if isinstance(c, ast.Call) and statement(c) is not None
        ]
        for function in tree.body
        if isinstance(function, ast.FunctionDef)
    }
    assert verdicts == {"fixed": [True] * 7, "built_from_values": [False] * 8}


def test_sql_queries_is_fixed_text_built_from_its_own_constants_only():
    """Nothing reaches sql_queries' text at run time: it defines no function and imports
    nothing, so every statement is fixed when the module loads; the only placeholders are the
    table-name templates and psycopg2.sql's identifier template."""
    tree = parse_module(Path(sql_queries.__file__))
    assert not [
        n
        for n in ast.walk(tree)
        if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Import, ast.ImportFrom)
        )
    ]
    assert not [
        n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod)
    ], "a % format"
    templates = {
        name: re.findall(r"\{(\w+)\}", value)
        for name, value in vars(sql_queries).items()
        if isinstance(value, str) and re.search(r"\{\w+\}", value)
    }
    assert templates == {**{t: ["table"] for t in TABLE_TEMPLATES}, "create_database": ["name"]}


def test_embedded_server_data_and_socket_directories_are_private():
    socket_dir = embedded_socket_dir()
    pgdata = Path(os.environ["SPARKIFY_PGDATA"])
    assert pgdata.stat().st_mode & 0o777 == 0o700
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    socket = socket_dir / f".s.PGSQL.{embedded.PORT}"
    assert socket.is_socket()
    assert socket.stat().st_mode & 0o777 == 0o700
