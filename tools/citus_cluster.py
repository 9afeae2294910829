"""A local Citus cluster for trying and testing the ETL on distributed PostgreSQL.

A coordinator and N workers (default 2), each a PostgreSQL 15 data directory under one folder,
listening on 127.0.0.1 only (default ports 9700, 9701, 9702), trust authentication on loopback,
database sparkifydb with the citus extension on every node, the workers added to the coordinator.
As root the servers run as the ``postgres`` system user; otherwise as the caller.

    python -m tools.citus_cluster start [--dir DIR] [--port 9700] [--workers 2]   # prints the URL
    DATABASE_URL=$(python -m tools.citus_cluster url) python create_tables.py
    python -m tools.citus_cluster stop

From Python (the tests): ``cluster = start(folder, ports)``, ``cluster.url``, ``cluster.stop()``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2

import cli
import db
import embedded
import sql_queries as sql

PG_BIN = Path(os.environ.get("CITUS_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE, SUPERUSER, HOST = "sparkifydb", "postgres", "127.0.0.1"
DEFAULT_PORT, DEFAULT_WORKERS = 9700, 2
STATE = "cluster.json"
LAST = Path(tempfile.gettempdir()) / f"sparkify-citus-{os.geteuid()}.last"
SETTINGS = {  # beside initdb's defaults; the embedded server's sizes, per node
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "shared_preload_libraries": "citus",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "log_min_messages": "warning",
}
HBA = f"# trust on loopback only: this is a local test cluster\nhost all all {HOST}/32 trust\n"
NODE_CONF = "sparkify.conf"  # SETTINGS and the node's port, in each node's data directory


class ClusterError(cli.UserError):
    """A problem the user must fix; its message is one line and safe to print."""


def check_installed() -> None:
    if not (PG_BIN / "postgres").exists():
        raise ClusterError(
            f"PostgreSQL 15 not found in {PG_BIN}: install it "
            "(apt-get install postgresql-15) or set CITUS_PG_BIN"
        )
    libdir = subprocess.run(
        [str(PG_BIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True
    ).stdout.strip()
    if not (Path(libdir) / "citus.so").exists():
        raise ClusterError(
            f"the citus extension is not installed in PostgreSQL 15 ({libdir}): "
            "install Citus's packages for PostgreSQL 15 (docs/citus.md), or, where the "
            "project sits beside shared/citus, run `sh ../shared/citus/install.sh` as root"
        )


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: root runs it as the postgres system user."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", SUPERUSER, "--", *cmd]
    return ["setpriv", f"--reuid={SUPERUSER}", f"--regid={SUPERUSER}", "--init-groups", *cmd]


def give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SUPERUSER, SUPERUSER)


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    log.touch()
    give_to_server_user(log)  # pg_ctl, running as the server's user, appends to it too
    with open(log, "a") as out:
        done = subprocess.run(
            _as_server_user(cmd),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ClusterError(f"`{Path(cmd[0]).name} {cmd[1]}` failed (see {log}): {tail[0]}")


def _running(data: Path) -> bool:
    return (data / "postmaster.pid").exists() and subprocess.run(
        _as_server_user([str(PG_BIN / "pg_ctl"), "status", "-D", str(data)]),
        cwd=data.parent,
        capture_output=True,
    ).returncode == 0


def _port_free(port: int) -> bool:
    """Whether a node may listen on port: nothing listens there (a connection of a node stopped
    a moment ago may still linger in TIME_WAIT, which PostgreSQL's own SO_REUSEADDR allows)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclasses.dataclass
class Cluster:
    dir: Path
    ports: list[int]  # the coordinator's first
    temporary: bool = False  # a folder start() made: stop() removes it

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.ports[0]}/{DATABASE}"

    def nodes(self) -> list[tuple[str, int, Path]]:
        names = ["coordinator"] + [f"worker{i}" for i in range(1, len(self.ports))]
        return [(n, p, self.dir / n) for n, p in zip(names, self.ports)]

    def running(self) -> dict[str, bool]:
        return {name: _running(data) for name, _, data in self.nodes()}

    def stop(self, remove: bool | None = None) -> None:
        """Fast shutdown of every node; the folder goes too if start() made it (or remove)."""
        self.stop_nodes([name for name, _, _ in self.nodes()])
        if remove if remove is not None else self.temporary:
            shutil.rmtree(self.dir, ignore_errors=True)
            if _last_dir() == self.dir:
                LAST.unlink(missing_ok=True)

    def stop_nodes(self, names: list[str]) -> None:
        """Fast shutdown of the nodes named (start() starts them again)."""
        _each(
            lambda node: stop_node(node[2], self.dir / f"{node[0]}.log"),
            [node for node in self.nodes() if node[0] in names],
        )


def start_node(data: Path, settings: dict[str, str], hba: str, log: Path) -> None:
    """A PostgreSQL 15 server in data, started (its output in log): made the first time (in a
    folder beside it, moved into place once whole: initdb cut off leaves no node that is not
    one). Each start writes settings (in sparkify.conf, which postgresql.conf includes last) and
    hba as its pg_hba.conf anew. A throwaway server: initdb's files are not synced to disk."""
    if not (data / "PG_VERSION").exists():
        making = data.with_name(f"{data.name}.making")
        for unfinished in (making, data):
            shutil.rmtree(unfinished, ignore_errors=True)
        _run([*embedded.initdb(str(PG_BIN / "initdb"), making), "--no-sync"], data.parent, log)
        making.rename(data)
    include = f"include = '{NODE_CONF}'\n"  # last: it wins over what the file says before it
    if include not in (data / "postgresql.conf").read_text():
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(include)
    (data / NODE_CONF).write_text("".join(f"{k} = '{v}'\n" for k, v in settings.items()))
    give_to_server_user(data / NODE_CONF)  # whatever root's umask made of it
    (data / "pg_hba.conf").write_text(hba)
    _run(
        [str(PG_BIN / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-l", str(log)],
        data.parent,
        log,
    )


def stop_node(data: Path, log: Path) -> None:
    """Fast shutdown of the server in data, if it runs."""
    if (data / "postmaster.pid").exists():
        _run(
            [str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60"],
            data.parent,
            log,
        )


def _each(action, items: list) -> None:
    """action on every item at once (the nodes start, set up and stop side by side). Stopped
    midway, it waits until each is done (an initdb, a node starting: a node that started after
    the clean-up would run on), then the stop goes on."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(items))) as pool:
        under_way = [pool.submit(action, item) for item in items]
        try:
            for each in under_way:
                each.result()
        except BaseException:
            with cli.stops_held():
                concurrent.futures.wait(under_way)
            raise


def connect(port: int, dbname: str):
    return psycopg2.connect(
        host=HOST,
        port=port,
        user=SUPERUSER,
        dbname=dbname,
        connect_timeout=10,
        application_name="citus_cluster.py",
    )


def _create_database(port: int) -> None:
    conn = connect(port, "postgres")
    try:
        conn.autocommit = True
        db.create_database_if_missing(conn, DATABASE)
    finally:
        conn.close()


def _create_extension(port: int) -> None:
    conn = connect(port, DATABASE)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.cluster_create_extension)
    finally:
        conn.close()


def _add_nodes(ports: list[int]) -> None:
    """Register the coordinator and each worker on the coordinator (ports[0])."""
    conn = connect(ports[0], DATABASE)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.cluster_set_coordinator, {"host": HOST, "port": ports[0]})
            for port in ports[1:]:
                cur.execute(sql.cluster_add_worker, {"host": HOST, "port": port})
            if not ports[1:]:  # no worker: the coordinator holds the shards
                cur.execute(sql.cluster_coordinator_holds_shards, {"host": HOST, "port": ports[0]})
    finally:
        conn.close()


def start(folder: Path | str | None = None, ports: list[int] | None = None) -> Cluster:
    """Start (creating them the first time) the nodes under folder; a new temporary folder
    when None. Returns the running cluster."""
    check_installed()
    ports = list(ports or range(DEFAULT_PORT, DEFAULT_PORT + DEFAULT_WORKERS + 1))
    if folder is None:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="sparkify-citus-")), ports, True)
    else:
        folder = Path(folder).resolve()
        saved = json.loads((folder / STATE).read_text()) if (folder / STATE).exists() else None
        cluster = Cluster(folder, saved["ports"] if saved else ports)
        folder.mkdir(parents=True, exist_ok=True)
    (cluster.dir / STATE).write_text(json.dumps(dataclasses.asdict(cluster), default=str) + "\n")
    give_to_server_user(cluster.dir)
    os.chmod(cluster.dir, 0o700)
    if subprocess.run(_as_server_user(["test", "-w", str(cluster.dir)])).returncode != 0:
        raise ClusterError(
            f"the {SUPERUSER} user cannot write to {cluster.dir}: choose a --dir "
            "it can reach (under /tmp, say)"
        )

    started = []  # by this call: what a failure stops again (nodes running before stay)

    def start_cluster_node(node: tuple[str, int, Path]) -> None:
        name, port, data = node
        if _running(data):
            return
        if not _port_free(port):
            raise ClusterError(f"port {port} on {HOST} is in use: choose others with --port")
        started.append(name)
        start_node(data, {**SETTINGS, "port": str(port)}, HBA, cluster.dir / f"{name}.log")

    def set_up(port: int) -> None:  # each step is a no-op when done already
        _create_database(port)
        _create_extension(port)

    try:
        _each(start_cluster_node, cluster.nodes())
        _each(set_up, cluster.ports)
        _add_nodes(cluster.ports)
    except BaseException:
        # the error that stopped the start is the one to see, once what it started is stopped
        with cli.stops_held(), contextlib.suppress(Exception):
            if cluster.temporary:
                cluster.stop()  # and its folder removed
            else:
                cluster.stop_nodes(started)
        raise
    return cluster


def _last_dir() -> Path | None:
    try:
        return Path(LAST.read_text().strip())
    except OSError:
        return None


def find(folder: Path | str | None = None) -> Cluster:
    """The cluster in folder, or the one started last."""
    where = Path(folder).resolve() if folder else _last_dir()
    if where is None or not (where / STATE).exists():
        raise ClusterError(
            f"no cluster in {where}"
            if where
            else "no cluster started: run `python -m tools.citus_cluster start` (or --dir)"
        )
    saved = json.loads((where / STATE).read_text())
    return Cluster(where, saved["ports"], saved["temporary"])


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m tools.citus_cluster",
        description="Start, stop or inspect a local Citus cluster (PostgreSQL 15 + citus): a "
        "coordinator and workers on 127.0.0.1, database sparkifydb.",
        epilog="example (a coordinator and two workers, the ETL on them, then stop):\n"
        "  python -m tools.citus_cluster start --dir /tmp/citus\n"
        "  DATABASE_URL=$(python -m tools.citus_cluster url) python create_tables.py\n"
        "  DATABASE_URL=$(python -m tools.citus_cluster url) python etl.py\n"
        "  python -m tools.citus_cluster stop\n\n"
        "exit codes: 0 done (status: all nodes running); 3 a problem, said in one line; 130 "
        "interrupted (Ctrl-C), 143 terminated (SIGTERM): what a stopped start started is "
        "stopped",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status", "url"],
        help="start: create/start the nodes and print the coordinator's URL; "
        "stop: stop them (a temporary folder is removed); status: each "
        "node's state; url: print the coordinator's URL",
    )
    parser.add_argument(
        "--dir",
        help="folder holding the nodes' data directories (start: "
        "default a new temporary folder, and a folder that holds "
        "a cluster starts it again on its ports; others: default "
        "the cluster started last)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"start: the coordinator's port; workers take the next ones (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"start: number of workers (default {DEFAULT_WORKERS}; 0: the "
        "coordinator holds the shards itself)",
    )
    parser.add_argument(
        "--remove",
        action="store_true",
        help="stop: also delete the folder (a temporary one always is)",
    )
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    return cli.run_command(lambda: command(args))


def command(args: argparse.Namespace) -> int:
    """The command the arguments name, done; its exit code."""
    try:
        if args.command == "start":
            cluster = start(args.dir, list(range(args.port, args.port + args.workers + 1)))
            LAST.write_text(str(cluster.dir) + "\n")  # for stop, status and url without --dir
            print(
                f"nodes in {cluster.dir}; stop with: python -m tools.citus_cluster stop"
                + (f" --dir {cluster.dir}" if args.dir else ""),
                file=sys.stderr,
            )
            cli.write_out(cluster.url, f"the cluster runs in {cluster.dir}")
            return 0
        cluster = find(args.dir)
        if args.command == "stop":
            cluster.stop(remove=True if args.remove else None)
            cli.write_out(f"stopped the cluster in {cluster.dir}", "the cluster is stopped")
        elif args.command == "url":
            cli.write_out(cluster.url, "nothing was changed")
        else:
            states = cluster.running()
            code = 0 if all(states.values()) else cli.EXIT_ENVIRONMENT
            cli.write_out(
                "\n".join(
                    f"{name}: {'running' if states[name] else 'stopped'} on {HOST}:{port}"
                    for name, port, _ in cluster.nodes()
                ),
                "nothing was changed",
                exit_code=code,
            )
            return code
        return 0
    except psycopg2.Error as exc:
        raise ClusterError(cli.first_line(exc)) from None


if __name__ == "__main__":
    cli.finish(main)
