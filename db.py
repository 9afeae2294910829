"""Where the database is: connection settings, URLs without secrets, connections, the load lock.

Precedence: ``--database-url`` > ``DATABASE_URL`` > libpq's ``PGHOST``/``PGHOSTADDR``/``PGSERVICE``
> the embedded server (embedded.py), started when a connection to it is first needed.

    python db.py start|stop|status|psql|url
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg2

import embedded
import sql_queries as sql
from cli import EXIT_ENVIRONMENT, EXIT_LOCKED, UserError, first_line, run_command

PROJECT_DIR = Path(__file__).resolve().parent
DATABASE = "sparkifydb"


class DatabaseError(UserError):
    """The database cannot be reached or is not ready for us."""


class LockedError(UserError):
    """Another load holds the load lock on this database."""

    exit_code = EXIT_LOCKED


@dataclasses.dataclass(frozen=True)
class Settings:
    """Connection settings read once from the environment (and the command line)."""

    url: str | None
    libpq_env: bool
    pgdata: Path

    @classmethod
    def from_env(cls, url: str | None = None) -> Settings:
        env = os.environ
        return cls(
            url=url or env.get("DATABASE_URL") or None,
            libpq_env=any(env.get(k) for k in ("PGHOST", "PGHOSTADDR", "PGSERVICE")),
            pgdata=Path(env.get("SPARKIFY_PGDATA") or PROJECT_DIR / ".pgdata").resolve(),
        )

    @property
    def embedded(self) -> bool:
        return not (self.url or self.libpq_env)

    def describe(self) -> str:
        """Where we connect, for messages: never includes a password."""
        if self.url:
            return redact(self.url)
        if self.libpq_env:
            return "the server named by the PG* environment variables"
        where = (
            self.pgdata.relative_to(PROJECT_DIR)
            if self.pgdata.is_relative_to(PROJECT_DIR)
            else self.pgdata
        )
        return f"the embedded server in {where}"


def redact(url: str) -> str:
    """Hide the password of a connection URL (in its user part or its query), or of a libpq
    key=value connection string."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    parts = urlsplit(url)
    parts = parts._replace(query=re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query))
    if parts.password is not None:
        user = (parts.username or "") + ":***"
        parts = parts._replace(netloc=f"{user}@{parts.netloc.rsplit('@', 1)[-1]}")
    return urlunsplit(parts)


def dsn(settings: Settings, dbname: str | None = None) -> str:
    """A libpq connection string (nothing is started: see connect)."""
    if settings.url:
        if dbname is None:
            return settings.url
        return urlunsplit(urlsplit(settings.url)._replace(path=f"/{dbname}"))
    if settings.libpq_env:
        if dbname or not os.environ.get("PGDATABASE"):
            return f"dbname={dbname or DATABASE}"
        return ""
    return (
        f"host={embedded.socket_of(settings.pgdata)} port={embedded.PORT} "
        f"user={embedded.SUPERUSER} dbname={dbname or DATABASE}"
    )


def sqlalchemy_url(settings: Settings) -> str:
    """The same database as a SQLAlchemy URL, for jupysql's %sql in the notebooks."""
    if settings.url:
        return "postgresql+psycopg2://" + settings.url.split("://", 1)[1]
    if settings.libpq_env:
        return "postgresql+psycopg2://"
    return (
        f"postgresql+psycopg2://{embedded.SUPERUSER}@/{DATABASE}"
        f"?host={embedded.socket_of(settings.pgdata)}&port={embedded.PORT}"
    )


def start_embedded(settings: Settings) -> None:
    """Start the embedded server when it is the one to use (and is not running yet)."""
    if settings.embedded:
        embedded.start(settings.pgdata)


def connect(settings: Settings, dbname: str | None = None, **kwargs):
    """A psycopg2 connection (starting the embedded server when it is the one to use), or a
    DatabaseError whose message names the server without secrets."""
    start_embedded(settings)
    try:
        return psycopg2.connect(
            dsn(settings, dbname), application_name=Path(sys.argv[0]).name, **kwargs
        )
    except psycopg2.OperationalError as exc:
        first = first_line(exc)
        if getattr(exc, "pgcode", None) == "3D000" or "does not exist" in first:
            todo = (
                "run `python create_tables.py` first"
                if settings.embedded
                else "create it first (e.g. `createdb`): only the embedded server's is made for you"
            )
            raise DatabaseError(f"{first} on {settings.describe()}: {todo}") from None
        raise DatabaseError(f"cannot connect to {settings.describe()}: {first}") from None


def acquire_lock(conn) -> None:
    """One load (or schema rebuild) at a time per database; the lock dies with the session, so
    a killed run never leaves it behind."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.try_lock, {"key": sql.LOCK_KEY})
        if cur.fetchone()[0]:
            return
        cur.execute(sql.lock_holder, {"key": sql.LOCK_KEY})
        holder = cur.fetchone()
    who = (
        f"{holder[1] or 'a client'} (server pid {holder[0]}, since {holder[2]:%H:%M:%S})"
        if holder
        else "another session"
    )
    raise LockedError(
        f"another load is running on this database: {who}; wait for it to finish and run again"
    )


def distributed(cur) -> bool:
    """Whether songplays is a Citus distributed table, as create_tables.py makes it where the
    database has the citus extension: etl.py then stages and merges plays the Citus way."""
    cur.execute(sql.citus_present)
    if not cur.fetchone()[0]:
        return False
    cur.execute(sql.songplays_distributed)
    return cur.fetchone()[0]


@contextlib.contextmanager
def managed_cursor(conn):
    """A cursor whose work commits on success and rolls back on any error."""
    with conn:
        with conn.cursor() as cur:
            yield cur


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Manage the embedded PostgreSQL server, or open psql on the database."
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status", "psql", "url"],
        help="start/stop/status: the embedded server; psql: open psql on the "
        "database; url: print the connection string (no password)",
    )
    parser.add_argument(
        "--database-url",
        help="use this server instead (default: $DATABASE_URL, "
        "then PG* variables, then the embedded server)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.database_url)
    return run_command(lambda: _command(args.command, settings))


def _command(command: str, settings: Settings) -> int:
    if command in ("start", "stop", "status") and not settings.embedded:
        print(f"not using the embedded server: connecting to {settings.describe()}")
        return 0
    if command == "start":
        print(f"embedded PostgreSQL running, socket in {embedded.start(settings.pgdata)}")
    elif command == "stop":
        print("stopped" if embedded.stop(settings.pgdata) else "not running")
    elif command == "status":
        running = embedded.running(settings.pgdata)
        print(f"running (pid {running[0]}, socket in {running[1]})" if running else "not running")
        return 0 if running else EXIT_ENVIRONMENT
    elif command == "url":
        print(redact(dsn(settings)) if settings.url else dsn(settings))
    else:
        connect(settings).close()  # a clear one-line error rather than psql's
        target, env = dsn(settings), dict(os.environ)
        parts = urlsplit(target) if settings.url else None
        if parts and parts.password is not None:  # argv is readable by every local user
            env["PGPASSWORD"] = unquote(parts.password)
            user, host = parts.netloc.rsplit("@", 1)
            target = urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}"))
        psql = embedded.pg_bin("psql")
        os.execve(psql, [psql, target] if target else [psql], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
