"""Where the database is: connection settings, URLs without secrets, connections, the load lock.

Precedence: ``--database-url`` > ``DATABASE_URL`` > libpq's ``PGHOST``/``PGHOSTADDR``/``PGSERVICE``
> the embedded server (embedded.py), started when a connection to it is first needed.

    python db.py start|stop|status|psql|url
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import psycopg2
import psycopg2.errors
from psycopg2 import sql as pgsql
from psycopg2.extensions import connection, make_dsn, parse_dsn

import cli
import embedded
import sql_queries as sql
from cli import EXIT_ENVIRONMENT, EXIT_LOCKED, MASK, UserError, first_line

PROJECT_DIR = Path(__file__).resolve().parent
DATABASE = "sparkifydb"


class DatabaseError(UserError):
    """The database cannot be reached or is not ready for us."""


class LockedError(UserError):
    """Another load holds the load lock on this database, or another session a lock on the
    tables, longer than the run would wait."""

    exit_code = EXIT_LOCKED


SECRET_OPTIONS = ("password", "sslpassword")
URL_SCHEMES = ("postgresql://", "postgres://")
# Shorter secrets are not masked inside other text: masking a one-letter password would garble
# every message, and no message is built from a password anyway (describe, connect).
MASKED_FROM = 4
HIDDEN = "its text is not shown, as it may hold a password"
NO_PASSWORD = "fe_sendauth: no password supplied"  # libpq's words
# libpq's reasons for a connection string it cannot read quote the text around the problem,
# which may be the password: we say what kind of problem it is in our own words.
UNREADABLE = {
    'missing "=" after': "a word without '=' (a URL starts with postgresql://; in key=value "
    "form a value holding spaces goes in single quotes)",
    "unterminated quoted string": "a quoted value that is not closed",
    "invalid connection option": "an option name libpq does not know",
    "invalid percent-encoded token": "a '%' not followed by two hex digits (write '%' itself "
    "as %25)",
    "forbidden value %00": "%00 in a value",
    "URI query parameter": "a parameter libpq does not know (such as sslmode, options or "
    "connect_timeout), or a value holding '&' or '=' (write them as %26 and %3D)",
    "IPv6 host address": "an unclosed or empty [IPv6] host",
    "unexpected character": "an unexpected character after the host name",
}
NOT_UTF8 = "a %-escape that makes a value no UTF-8 text (write '%' itself as %25)"
PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]+")
MISSING = re.compile(r'\b(role|database) "(.*)" does not exist')
# Seconds libpq waits for a server to answer a connection before it gives up (a host that
# accepts and never answers would hang a run), unless the URL or PGCONNECT_TIMEOUT says.
CONNECT_TIMEOUT = "10"
CANCEL_CONNECT_TIMEOUT = "5"  # a stop's own connection (cancel_statements): it waits for no one
# A network that drops silently (a host gone, a cable cut) leaves a connection waiting on a
# statement until TCP gives up: two hours with the system's keepalive defaults. Probed after 30 s
# of silence, every 10 s, three times, it is found lost in about a minute; a busy server's system
# answers the probes all the same. Data sent and not acknowledged for a minute (TCP's
# retransmissions took 15 minutes) likewise. The URL's own settings win; libpq ignores them on a
# socket. The session asks the server to probe the client the same way (sql.batch_job_settings).
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}
# The server short of disk, memory or a configured limit (temp_file_limit, max_locks_per_...):
# a statement that fails so can succeed once there is room.
SHORT_OF_RESOURCES = (
    psycopg2.errors.DiskFull,
    psycopg2.errors.OutOfMemory,
    psycopg2.errors.InsufficientResources,
    psycopg2.errors.ConfigurationLimitExceeded,
)
# Seconds a run waits for the load lock (--wait) before it exits 4: long enough for the server to
# end a killed run's session, or for a run that is finishing to let go.
LOCK_WAIT = 10
LOCK_RETRY_SECONDS = 0.2  # how often a waiting run tries the lock again
LOCK_WAIT_MOST = 365 * 24 * 3600
# SQLSTATEs after which the server has closed the session (class 08: connection exception;
# 57P01-57P05: terminated by an administrator, a crash, a restart, a dropped database, an idle
# session timeout; 25P03: idle in transaction too long).
SESSION_ENDED = ("08", "57P0", "25P03")
SESSION_ENDING = ("FATAL", "PANIC")  # the severities after which the server closes the session


@dataclasses.dataclass(frozen=True)
class Settings:
    """Connection settings read once from the environment (and the command line)."""

    url: str | None = dataclasses.field(repr=False)  # as given: it may hold a password
    libpq_env: bool
    pgdata: Path
    source: str = "--database-url"  # where url came from, for messages
    pgpassword: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_env(cls, url: str | None = None) -> Settings:
        env = os.environ
        return cls(  # read from a file (a container's secret), it may end in a newline
            url=(url or env.get("DATABASE_URL") or "").strip() or None,
            libpq_env=any(env.get(k) for k in ("PGHOST", "PGHOSTADDR", "PGSERVICE")),
            pgdata=Path(env.get("SPARKIFY_PGDATA") or PROJECT_DIR / ".pgdata").resolve(),
            source="--database-url" if url else "DATABASE_URL",
            pgpassword=env.get("PGPASSWORD"),
        )

    @property
    def embedded(self) -> bool:
        return not (self.url or self.libpq_env)

    @functools.cached_property
    def url_options(self) -> dict[str, str]:
        """libpq's reading of url, or a DatabaseError that does not show it."""
        return read_connection_string(self.url, self.source)

    @property
    def secrets(self) -> frozenset[str]:
        """Every text a message must not show: each password as libpq reads it (from url or
        PGPASSWORD) and percent-encoded, as written in url, and url whole when libpq cannot read
        it (any part of it may be the password); those shorter than MASKED_FROM left out."""
        read, written = [self.pgpassword], []
        if self.url:
            try:
                read += [self.url_options.get(option) for option in SECRET_OPTIONS]
            except DatabaseError:
                written.append(self.url)
            written += written_passwords(self.url)
        encoded = (quote(text, safe="", errors="surrogateescape") for text in read if text)
        texts = [*written, *read, *encoded]
        return frozenset(text for text in texts if text and len(text) >= MASKED_FROM)

    @property
    def public(self) -> frozenset[str]:
        """What messages show of the settings anyway: where they connect (describe), and each
        option's value but a password's, as libpq reads it (in which cli.masked leaves a password
        be: masking it there would tell what it is)."""
        try:
            shown = [v for k, v in destination(self).items() if k not in SECRET_OPTIONS]
        except (DatabaseError, embedded.ServerError):  # the action says it, in its one line
            shown = []
        return frozenset([self.describe(), *shown])

    def describe(self) -> str:
        """Where we connect, for messages: built from what libpq reads, never from url's text,
        so no password shows, whatever its characters."""
        if self.url:
            try:
                return redacted_url(self.url_options)
            except DatabaseError:
                return f"the server {self.source} names"
        if self.libpq_env:
            try:
                return f"{redacted_url(destination(self))} (from the PG* environment variables)"
            except DatabaseError:  # a variable that is no UTF-8 text: the action says so
                return "the server named by the PG* environment variables"
        where = (
            self.pgdata.relative_to(PROJECT_DIR)
            if self.pgdata.is_relative_to(PROJECT_DIR)
            else self.pgdata
        )
        return f"the embedded server in {where}"


def read_connection_string(text: str, source: str) -> dict[str, str]:
    """The options libpq reads in a postgresql:// URL or a key=value string. Refused, without
    showing the text: what libpq cannot read, and a URL with an '@' libpq would not take for
    the end of the password (it takes the first '@', or none after a '/'), which would put the
    rest of the password in the host name, where messages show it; a port that is not a number
    (a URL's user:password with its '@host' left out), which libpq's refusal would quote; and
    another program's string (in quotes, SQLAlchemy's), named as such."""
    if another_programs := _another_programs(text):
        raise DatabaseError(
            f"{source} is not a connection string libpq can read: {another_programs}; {HIDDEN}"
        )
    if text.startswith(URL_SCHEMES):
        before, at, after = text.split("://", 1)[1].partition("@")
        if at and ("@" in after or "/" in before):
            raise DatabaseError(
                f"{source} has an '@' that libpq would not read as the end of the password "
                "(another '@' or a '/' comes before it): in a URL write '@' as %40 and '/' as "
                f"%2F in the user name, the password and parameter values; {HIDDEN}"
            )
    try:
        read = parse_dsn(text)
    except UnicodeDecodeError:  # libpq read it, but a %-escape made a value that is not UTF-8
        reason = NOT_UTF8
    except UnicodeEncodeError:  # bytes that are not UTF-8 (os.environ keeps them as surrogates)
        reason = "bytes that are not UTF-8 text (write the text in UTF-8)"
    except psycopg2.ProgrammingError as exc:
        reason = next((ours for theirs, ours in UNREADABLE.items() if theirs in str(exc)), None)
    else:
        if not all(map(_a_port, read.get("port", "").split(","))):
            raise DatabaseError(  # libpq's refusal would quote it
                f"{source} has a port that is none (a whole number from 1 to 65535: a URL whose "
                f"'@host' is left out reads its user:password as host:port); {HIDDEN}"
            )
        return read
    what = (
        f"it has {reason}"
        if reason
        else "write it as postgresql://user:password@host:port/database or as key=value pairs"
    )
    raise DatabaseError(f"{source} is not a connection string libpq can read: {what}; {HIDDEN}")


def _a_port(text: str) -> bool:
    """Whether libpq takes text for a port (or for none: empty), as it reads one: a whole
    number from 1 to 65535, blank space and a sign around it allowed. Any other, it would quote."""
    number = re.fullmatch(r"\s*[+-]?([0-9]+)\s*", text, re.ASCII)
    return not text or (number is not None and 1 <= int(text) <= 65535)


def _another_programs(text: str) -> str | None:
    """Why text is another program's connection string (not libpq's), or None."""
    if len(text) > 1 and text[0] in "'\"" and text[-1] == text[0]:
        return "it is wrapped in quotes (as a .env file writes a value): drop them"
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*(?=://)", text)
    if scheme is None or text.startswith(URL_SCHEMES):
        return None
    if scheme[0].partition("+")[0].lower() in ("postgresql", "postgres") and "+" in scheme[0]:
        return "it is SQLAlchemy's form (postgresql+driver://): libpq reads postgresql://"
    return (
        "it starts with a scheme libpq does not read (postgresql:// or postgres://, in lower case)"
    )


def written_passwords(url: str) -> list[str]:
    """The passwords of a postgresql:// URL as written (percent-encoded or not): after the ':'
    of its user part, and as password= parameters."""
    if not url.startswith(URL_SCHEMES):
        return []
    rest = url.split("://", 1)[1]
    user_part = re.match(r"[^@/]*(?=@)", rest)
    found = re.findall(r"[?&](?:ssl)?password=([^&]*)", rest)
    if user_part and ":" in user_part[0]:
        found.append(user_part[0].split(":", 1)[1])
    return found


def as_url(options: dict[str, str], scheme: str = "postgresql") -> str:
    """The options as a URL that libpq and SQLAlchemy read back the same: user and password in
    its user part, one plain host name and its port in its host part, the database as its path,
    every other option (a socket folder, a list of hosts...) as a parameter."""
    rest = dict(options)
    user, password = rest.pop("user", ""), rest.pop("password", None)
    user_part = quote(user, safe="") + ("" if password is None else f":{quote(password, safe='*')}")
    netloc = f"{user_part}@" if user_part else ""
    if PLAIN_HOST.fullmatch(rest.get("host", "")) and rest.get("port", "0").isdigit():
        netloc += rest.pop("host") + (f":{rest.pop('port')}" if "port" in rest else "")
    path = f"/{quote(rest.pop('dbname'), safe='')}" if "dbname" in rest else ""
    query = "&".join(f"{key}={quote(value, safe='/,:*')}" for key, value in rest.items())
    return f"{scheme}://{netloc}{path}{f'?{query}' if query else ''}"


def redacted_url(options: dict[str, str]) -> str:
    """as_url with every secret shown as ***."""
    return as_url({k: MASK if k in SECRET_OPTIONS else v for k, v in options.items()})


def options(settings: Settings, dbname: str | None = None) -> dict[str, str]:
    """The libpq options to connect with (nothing is started: see connect); a DatabaseError when
    the URL cannot be read, or a PG* variable libpq would read is not UTF-8 text."""
    if settings.url:
        require_utf8_env(set(settings.url_options))
        return {**settings.url_options, **({"dbname": dbname} if dbname else {})}
    if settings.libpq_env:  # the database: a service's or PGDATABASE's (libpq decides), else ours
        require_utf8_env(set())
        if dbname or not (os.environ.get("PGDATABASE") or os.environ.get("PGSERVICE")):
            return {"dbname": dbname or DATABASE}
        return {}
    return {
        "host": cli.utf8_name(str(embedded.socket_of(settings.pgdata))),
        "port": str(embedded.PORT),
        "user": embedded.SUPERUSER,
        "dbname": dbname or DATABASE,
    }


# libpq's environment variables and the options they stand for, as `db.py url` shows them.
LIBPQ_ENV = {
    "PGSERVICE": "service",
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGDATABASE": "dbname",
    "PGSSLMODE": "sslmode",
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGOPTIONS": "options",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
    "PGAPPNAME": "application_name",
}


def require_utf8_env(given: set[str]) -> None:
    """A DatabaseError naming the first PG* variable libpq would read (one for an option not
    given) that is not UTF-8 text: libpq would send its bytes, and its messages quoting them
    could not be read."""
    for name, option in LIBPQ_ENV.items():
        value = os.environ.get(name)
        if option not in given and value and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise DatabaseError(
                    f"{name} holds bytes that are not UTF-8 text: write it in UTF-8"
                ) from None


def destination(settings: Settings) -> dict[str, str]:
    """Where the scripts connect, as `db.py url` shows it: the options, with those the PG*
    variables give where they name the server."""
    return {**(from_libpq_env() if settings.libpq_env else {}), **options(settings)}


def from_libpq_env() -> dict[str, str]:
    """The options libpq's environment variables give, where PG* variables name the server."""
    return {option: os.environ[name] for name, option in LIBPQ_ENV.items() if os.environ.get(name)}


def sqlalchemy_url(settings: Settings) -> str:
    """The same database as a SQLAlchemy URL, speaking UTF-8 as the scripts do; its sessions
    are named as the notebooks' where the user names them not (create_tables.py, ending one,
    says whose it was)."""
    named = {"client_encoding": "UTF8", "fallback_application_name": NOTEBOOK}
    return as_url({**options(settings), **named}, "postgresql+psycopg2")


NOTEBOOK = "sparkify notebook"


def sqlalchemy_engine(settings: Settings):
    """A SQLAlchemy engine on the database, for pandas and jupysql's %sql in the notebooks: its
    sessions show instants in UTC, as the time table's parts are, whatever the client's PGTZ
    or the database's timezone (east of UTC, a play at 9999-12-31 23:00 UTC would be read as
    a year 10000, which Python's datetime cannot hold)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(sqlalchemy_url(settings))

    @sqlalchemy.event.listens_for(engine, "connect")
    def in_utc(connection, _) -> None:
        with connection.cursor() as cur:
            cur.execute(sql.session_time_zone)
        connection.commit()

    return engine


def start_embedded(settings: Settings) -> None:
    """Start the embedded server when it is the one to use (and is not running yet)."""
    if settings.embedded:
        embedded.start(settings.pgdata)


# The data's text is Unicode: the connection speaks UTF-8 whatever PGCLIENTENCODING says (in
# LATIN1 every accent would be stored garbled), and a database must store it as it is: UTF-8, or
# SQL_ASCII, which keeps the bytes.
TEXT_ENCODINGS = ("UTF8", "SQL_ASCII")


def _server_encoding(conn) -> str:
    """The database's encoding, asked for (a connection pooler may not report it)."""
    with conn.cursor() as cur:
        cur.execute(sql.server_encoding)
        encoding = cur.fetchone()[0]
    conn.rollback()
    return encoding


def connect(settings: Settings, dbname: str | None = None):
    """A psycopg2 connection (starting the embedded server when it is the one to use), or a
    DatabaseError whose message names the server without secrets. libpq gets the options, never
    the text of the URL, so its messages cannot quote that either."""
    start_embedded(settings)
    target = {**KEEPALIVES, **options(settings, dbname)}
    if "connect_timeout" not in target and not os.environ.get("PGCONNECT_TIMEOUT"):
        target["connect_timeout"] = CONNECT_TIMEOUT
    try:
        conn = _interruptible_connect(
            {
                **target,
                "fallback_application_name": Path(sys.argv[0]).name,  # the user's name wins
                "client_encoding": "UTF8",
            }
        )
    except psycopg2.OperationalError as exc:
        raise connect_error(exc, settings) from None
    try:
        encoding = conn.info.parameter_status("server_encoding") or _server_encoding(conn)
    except BaseException:
        conn.close()
        raise
    if encoding not in TEXT_ENCODINGS:
        conn.close()
        raise DatabaseError(
            f"the database on {settings.describe()} stores text as {encoding}, which cannot "
            "hold every title and name: use a database created with ENCODING 'UTF8'"
        )
    if conn.server_version < OLDEST_SERVER:
        version = conn.info.parameter_status("server_version")
        conn.close()
        raise DatabaseError(
            f"{settings.describe()} runs PostgreSQL {version}: the project needs PostgreSQL 11 or "
            "newer (its tables use what 11 brought)"
        )
    _OPEN[:] = [*(held for held in _OPEN if not held[0].closed), (conn, conn.info.backend_pid)]
    return conn


# The oldest server_version_num the tables can be made on (CREATE TRIGGER ... EXECUTE FUNCTION,
# among others, came with PostgreSQL 11); the project's loads are the same on 11 to 18.
OLDEST_SERVER = 110000

# The connections connect made that are still open, with their server processes, whose
# statements a stop cancels.
_OPEN: list[tuple[connection, int]] = []


def cancel_statements(settings: Settings) -> None:
    """Each open connection's statement under way cancelled on the server (a lock waited for up
    to --wait, a COMMIT waiting for a synchronous standby that is down, for good): its thread
    gets an error back at once, where a stop's handler can run (cli._stop_relay, whose thread
    calls this). Through a connection of its own (pg_cancel_backend): psycopg2's cancel request
    holds every thread of the process until the server answers it, for good where nothing does
    (a proxy); a connection's attempt and statement let the others run. Where the server turns
    that connection away (FATAL: no connection slot left, say), it is there, and answers a cancel
    request, which needs no slot: psycopg2's is sent then."""
    held = [(conn, pid) for conn, pid in list(_OPEN) if not conn.closed]
    if not held:
        return
    target = {**KEEPALIVES, **options(settings), "connect_timeout": CANCEL_CONNECT_TIMEOUT}
    try:
        canceller = psycopg2.connect(**target, fallback_application_name="sparkify stop")
    except psycopg2.OperationalError as exc:
        if "FATAL" in str(exc):  # the server's own refusal: it is there
            for conn, _ in held:
                with contextlib.suppress(psycopg2.Error):
                    conn.cancel()
        return
    try:
        with canceller.cursor() as cur:
            cur.execute(sql.cancel_backends, {"pids": [pid for _, pid in held]})
    finally:
        canceller.close()


def _interruptible_connect(options: dict[str, str]):
    """psycopg2.connect(**options) in a thread this one waits for. libpq's connect holds the
    thread that calls it until the server answers or connect_timeout passes, and Python's Ctrl-C
    waits for it; a wait for a thread ends at once. An attempt given up so closes the connection
    it gets, if it gets one (a notebook keeps the interrupted frame, and would keep it open)."""
    lock, outcome, given_up = threading.Lock(), [], []

    def attempt() -> None:
        try:
            result = psycopg2.connect(**options)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            result = exc
        with lock:
            outcome.append(result)
            if given_up:
                close_connections()

    def close_connections() -> None:
        for result in outcome:
            if isinstance(result, connection):
                result.close()

    thread = threading.Thread(target=attempt, name="connect", daemon=True)
    try:  # the attempt may be under way before start returns, the stop raised there
        thread.start()
        thread.join()
    except BaseException:
        with lock:
            given_up.append(True)
            close_connections()
        raise
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def connect_error(exc: psycopg2.OperationalError, settings: Settings) -> DatabaseError:
    """What a failed connection attempt tells the user: a missing database or role by name (the
    server reports either as FATAL ... does not exist), anything else as libpq says it: of a URL
    of several servers, each one's failure (libpq tries them in turn, a line each, its hints
    indented)."""
    first = first_line(exc)
    missing = MISSING.search(first)
    if missing is None:
        each = [line for line in str(exc).splitlines() if line and not line[0].isspace()]
        said = "; ".join(each) or first
        if NO_PASSWORD in said:  # the server asks for one
            said += (
                " (the server asks for a password and none was given: put it in the URL, in "
                "PGPASSWORD or in ~/.pgpass)"
            )
        return DatabaseError(f"cannot connect to {settings.describe()}: {said}")
    if missing[1] == "role":
        todo = "connect as a role that exists there, or create this one (e.g. `createuser`)"
    elif settings.embedded and missing[2] == "postgres":  # initdb makes it: never made whole
        todo = (
            f"its data folder is not whole (a first setup cut off by an older version): run "
            f"`python db.py stop`, remove {settings.pgdata} and run again"
        )
    elif settings.embedded:
        todo = "run `python create_tables.py` first"
    else:
        todo = "create it first (e.g. `createdb`): only the embedded server's is made for you"
    return DatabaseError(f"{missing[0]} on {settings.describe()}: {todo}")


def run_command(
    settings: Settings,
    action: Callable[[], int],
    as_json: bool = False,
    more_secrets: Collection[str] = (),
    more_public: Collection[str] = (),
) -> int:
    """cli.run_command for a script that works on the database of settings: a database error
    says what happened on which server, and no message shows a secret of the settings, nor one
    of more_secrets (those shorter than MASKED_FROM left out), but inside the settings' public
    texts and more_public (texts the user gave, which messages show anyway: see cli.masked)."""

    def on_the_database() -> int:
        with cli.printed_exceptions_dropped() as dropped:
            try:
                return action()
            except psycopg2.Error as exc:
                stopped = as_a_stop(exc)
                error = database_error(exc, settings, dropped) if stopped is exc else stopped
                raise cli.noted(error, exc) from None

    shown_never = settings.secrets | {text for text in more_secrets if len(text) >= MASKED_FROM}
    return cli.run_command(
        on_the_database,
        shown_never,
        as_json,
        settings.public | set(more_public),
        on_stop=functools.partial(cancel_statements, settings),
    )


def as_a_stop(exc: BaseException) -> BaseException:
    """exc, or, where it is the cancel a stop asked for (cancel_statements), that stop."""
    stop = cli.stop_received()
    return stop if stop is not None and isinstance(exc, psycopg2.errors.QueryCanceled) else exc


def database_error(
    exc: psycopg2.Error, settings: Settings, dropped: Collection[BaseException] = ()
) -> DatabaseError:
    """A database error after connecting: a lost connection says so (a rolled-back transaction
    loses nothing committed: the next run resumes), with the server's last words where psycopg2
    printed them instead of raising them (dropped: the server stopped on a full disk, say);
    anything else is a refusal."""
    if not lost_connection(exc):
        detail = exc.diag.message_detail
        why = f" ({cli.one_line(detail)})" if detail else ""
        if (node := another_nodes_loss(exc)) is not None:  # not this session's
            on = f", {node}" if node and node not in first_line(exc) else ""
            why += (
                f" (said of a connection the server made to another node{on}: a Citus "
                f"worker's; {COMMITTED_STAYS}: once the node is back, run the command again to "
                "resume)"
            )
        hint = exc.diag.message_hint  # a full disk's: "Check free disk space."
        if isinstance(exc, SHORT_OF_RESOURCES) and hint:
            why += f" ({cli.one_line(hint)})"
        if isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction):
            why += (
                " (the server takes no writes here: a standby in recovery, where the primary "
                "is the one to load into; or default_transaction_read_only is on: for the role "
                "or the database, which ALTER ROLE or ALTER DATABASE … RESET "
                "default_transaction_read_only undoes, in the server's configuration, or in the "
                "connection's options, the URL's or PGOPTIONS)"
            )
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            why += " (the role lacks a privilege: docs/database.md says what each script needs)"
        return DatabaseError(f"the database refused: {first_line(exc)}{why}")
    said = [error for error in map(first_cause, dropped) if isinstance(error, psycopg2.Error)]
    reason = first_line(said[0] if said else first_cause(exc))
    return DatabaseError(
        f"the connection to {settings.describe()} was lost ({reason}): {COMMITTED_STAYS}; run "
        "the command again to resume"
    )


COMMITTED_STAYS = (
    "what was committed stays (a load commits each batch whole), the rest was rolled back"
)
# Where a Citus coordinator says which node a connection of its own failed on.
ON_A_NODE = re.compile(r"while executing command on (\S+)")


def another_nodes_loss(exc: psycopg2.Error) -> str | None:
    """Where the server lost a connection of its own to another node (a Citus worker), reported
    at ERROR: the node, as its context names it ("" where it names none); None for any other
    error. Said with a connection error's SQLSTATE, or with libpq's words for a lost connection
    (LIBPQ_LOST) as an internal error, where it lost the node at COMMIT."""
    found = ON_A_NODE.search(exc.diag.context or "")
    if (exc.pgcode or "").startswith(SESSION_ENDED) or (
        found and first_line(exc).startswith(LIBPQ_LOST)
    ):
        return found[1] if found else ""
    return None


def first_cause(exc: BaseException) -> BaseException:
    """The earliest database error in exc's chain: what happened, rather than the rollback that
    then found the connection closed (or than psycopg2's SystemError around it)."""
    found = exc
    while (exc := exc.__cause__ or exc.__context__) is not None:
        if isinstance(exc, psycopg2.Error):
            found = exc
    return found


# libpq's words for a connection it lost, which psycopg2 raises as a bare DatabaseError where a
# COPY ends (the server gone as its last rows were sent: no SQLSTATE, the server said nothing).
LIBPQ_LOST = (
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "SSL SYSCALL error",
    "SSL connection has been closed unexpectedly",
    "no connection to the server",
)


def lost_connection(exc: psycopg2.Error) -> bool:
    """Whether the session is gone: psycopg2 found the connection closed, libpq lost it (an
    error without SQLSTATE), or the server ended it (a FATAL error; a server that does not say
    how severe an error is: by its SQLSTATE). A connection error the server reports at ERROR
    is another connection's: a Citus worker node's, which the coordinator could not reach."""
    if isinstance(exc, psycopg2.InterfaceError):
        return first_line(exc) == "connection already closed"
    if not isinstance(exc, psycopg2.OperationalError):
        return exc.pgcode is None and first_line(exc).startswith(LIBPQ_LOST)
    if exc.pgcode is None:
        return True
    severity = exc.diag.severity_nonlocalized
    return severity in SESSION_ENDING if severity else exc.pgcode.startswith(SESSION_ENDED)


def create_database_if_missing(conn, name: str) -> None:
    """CREATE DATABASE name unless it exists (conn: in autocommit, on another database), or
    another session creates it meanwhile (two first runs at once)."""
    with conn.cursor() as cur:
        cur.execute(sql.database_exists, {"name": name})
        if cur.fetchone() is not None:
            return
        try:
            cur.execute(pgsql.SQL(sql.create_database).format(name=pgsql.Identifier(name)))
        except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
            pass


def require_tables(conn, tables: list[str]) -> None:
    """The session uses the schema that holds the project's tables, and no other
    (sql.tables_schema_use); a one-line error when some are missing there: that another version
    made them when load_runs, which marks the project's set, is there without all the others;
    else that the role may not use the schema holding them, where they are when another schema
    holds them, or what to run."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.tables_schema_use)
        cur.execute(sql.missing_tables, {"tables": tables})
        missing = [row[0] for row in cur.fetchall()]
        if "load_runs" in missing:
            require_no_citus_worker(cur)
            cur.execute(sql.tables_elsewhere)
            usable = dict(cur.fetchall())  # schema: whether the role may use it
            cur.execute(sql.search_path_show)
            path = cur.fetchone()[0]
    if not missing:
        return
    if "load_runs" not in missing:
        raise another_version(f"{', '.join(missing)} missing beside the others")
    if usable and not any(usable.values()):
        raise DatabaseError(
            f"the role may not use {_schemas(list(usable))} the tables are in (it lacks USAGE "
            "there): an owner of the schema grants it (GRANT USAGE ON SCHEMA …), with what "
            "docs/database.md says each script needs"
        )
    if elsewhere := [schema for schema, may in usable.items() if may]:
        where = f"{_schemas(elsewhere)} {'holds' if len(elsewhere) == 1 else 'hold'}"
        raise DatabaseError(
            f"the tables are not on this session's search_path ({path}): {where} them; put it "
            "on the search_path (docs/database.md) rather than running create_tables.py, which "
            "would make another, empty set"
        )
    raise DatabaseError(
        f"table(s) {', '.join(missing)} missing: run `python create_tables.py` first"
    )


def _schemas(names: list[str]) -> str:
    return f"schema {names[0]}" if len(names) == 1 else f"schemas {', '.join(names)}"


def require_no_citus_worker(cur) -> None:
    """A one-line error on a Citus worker node, which holds the distributed tables but not the
    load's books: the scripts work on the coordinator."""
    cur.execute(sql.on_a_citus_worker)
    if cur.fetchone()[0]:
        raise DatabaseError(
            "this is a Citus worker node (songplays is distributed here, the load's books are "
            "not): connect to the coordinator (nothing was changed)"
        )


def another_version(why: str) -> DatabaseError:
    return DatabaseError(
        f"the tables were made by another version of create_tables.py ({why}): nothing was "
        "changed; run `python create_tables.py`, then `python etl.py`: the tables are emptied "
        "and the data folder's files loaded again, so what came from files no longer there is "
        "lost (docs/database.md)"
    )


def schema_stamp() -> str:
    """What create_tables.py writes on the tables: a digest of the statements that make them, as
    the server reads them (their comments and layout left out)."""
    made_by = [
        *sql.create_table_queries,
        *sql.row_counts_create,
        *sql.bulk_keys_create,
        *sql.citus_distribute_queries,
    ]
    read = " ".join(re.sub(r"--[^\n]*", "", query) for query in made_by).split()
    return f"sparkify tables {hashlib.sha256(' '.join(read).encode()).hexdigest()[:16]}"


def require_this_schema(conn) -> None:
    """A one-line error when the tables were made by another version of create_tables.py (their
    columns, keys or triggers differ from what this one's statements use)."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.schema_stamp_read)
        stamp = cur.fetchone()[0]
    if stamp != schema_stamp():
        raise another_version("their stamp, the comment on load_runs, is another's")


def as_a_batch_job(conn) -> None:
    """This session runs as a load needs: no time limits, no session ended by an expected error,
    doubles read back exactly, no statement compiled (sql.batch_job_settings), and its triggers
    firing (sql.replication_role_origin). The settings are made outside a transaction, where a
    limit on its idle time or its length cannot end the session before they apply."""
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.batch_job_settings)
    finally:
        conn.autocommit = autocommit
    try:
        with managed_cursor(conn) as cur:
            cur.execute(sql.replication_role_origin)
    except psycopg2.errors.InsufficientPrivilege:
        raise DatabaseError(
            "session_replication_role is 'replica' for this session (a setting of the role's or "
            "the database's), so no trigger fires: the star's row counts and foreign keys rely "
            "on them; connect as a role whose sessions have it at 'origin' (nothing was changed)"
        ) from None


def wait_seconds(text: str) -> int:
    """argparse type of --wait: a whole number of seconds, up to a year."""
    return cli.natural_at_most(text, LOCK_WAIT_MOST, "a year")


CONNECTS_TO = "$DATABASE_URL, then PG* variables, then the embedded server"


def add_database_url_option(parser: argparse.ArgumentParser) -> None:
    """The --database-url option of every script that connects."""
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help=f"PostgreSQL URL (default: {CONNECTS_TO}); a password typed here shows in `ps` "
        "to other users of this machine: DATABASE_URL or ~/.pgpass keep it out of sight",
    )


def add_wait_option(parser: argparse.ArgumentParser, holder: str) -> None:
    """The --wait option of a script that takes the load lock: holder says what it waits for."""
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        default=LOCK_WAIT,
        metavar="SECONDS",
        help=f"how many seconds (0 to a year) to wait for {holder} before exiting 4; "
        "a killed run's session ends within a second or two on PostgreSQL 14 and later "
        "(default: %(default)s)",
    )


def acquire_lock(conn, wait: int = LOCK_WAIT) -> bool:
    """One load (or schema rebuild) at a time per database: take the load lock, trying again
    for up to wait seconds while another run holds it (a Ctrl-C meanwhile ends the wait at
    once), in a server session no other client uses (sql.session_mark). The lock dies with the
    session, so a killed run never leaves it behind: its server process notices the client gone
    within a second, even in the middle of a statement (PostgreSQL 14 and later), and a run
    started meanwhile waits for that. Returns whether it waited for another run."""
    mark = secrets.token_hex(8)
    with managed_cursor(conn) as cur:
        cur.execute(sql.session_mark, {"mark": mark})
        if cur.fetchone()[0]:
            raise DatabaseError(SESSION_SHARED)
    deadline = time.monotonic() + wait
    with managed_cursor(conn) as cur:
        cur.execute(sql.session_mark_read)
        if cur.fetchone()[0] != mark:
            raise DatabaseError(SESSION_SHARED)
        if conn.server_version >= sql.CLIENT_CHECK_SINCE:
            cur.execute(sql.client_check)
        for attempt in itertools.count():
            cur.execute(sql.try_lock, {"key": sql.LOCK_KEY})
            if cur.fetchone()[0]:
                return attempt > 0
            if time.monotonic() >= deadline:
                break
            time.sleep(LOCK_RETRY_SECONDS)
    raise LockedError(_lock_held_message(conn, wait))


@contextlib.contextmanager
def load_lock(conn, wait: int = LOCK_WAIT):
    """The load lock held (acquire_lock) while the block runs, given whether it waited for
    another run; then let go of, with the session's mark, so that the next client of a session
    a pooler keeps can take them (a session that ends lets go of both anyway)."""
    waited = acquire_lock(conn, wait)
    try:
        yield waited
    finally:
        try:
            conn.rollback()
            with managed_cursor(conn) as cur:
                cur.execute(sql.session_let_go, {"key": sql.LOCK_KEY})
        except psycopg2.Error:  # a connection lost: its session, lock and mark are gone
            pass


SESSION_SHARED = (
    "this connection's server session serves other clients too: a connection pooler in "
    "transaction mode (PgBouncer's pool_mode = transaction, a hosted database's transaction "
    "pooler) hands it to another client between two transactions, where a run needs a session "
    "of its own (its lock, its temporary tables); connect to PostgreSQL directly, or through a "
    "pool in session mode (no table was changed)"
)


# PostgreSQL keeps lock_timeout in milliseconds, in an int: 24.8 days at most.
LOCK_TIMEOUT_MOST = (2**31 - 1) // 1000


def _lock_timeout(wait: int) -> int:
    """The seconds a statement waits for a lock, for a --wait of wait seconds: one at least (an
    autovacuum lets go of what it locks within a second), and as long as lock_timeout holds."""
    return min(max(wait, 1), LOCK_TIMEOUT_MOST)


def wait_for_locks(conn, wait: int) -> None:
    """From now on, a statement waits up to wait seconds (_lock_timeout) for a lock another
    session holds on a table, then stops (LockNotAvailable, which kept_waiting explains): a load
    does not wait, silently, as long as an open transaction in someone's psql does."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.load_lock_timeout, {"timeout": f"{_lock_timeout(wait)}s"})


# Who kept a load waiting, most likely first: the sessions whose locks keep writes off a table;
# else those writing to one (one of them holds a row the load writes); else any holding one. Only
# locks held count: a session waiting for one is waiting too.
IN_THE_WAY = [
    (sql.WRITES_KEPT_OFF, "the load waited for a lock on its tables held by {}"),
    (
        sql.WRITING,
        "the load waited for a row of its tables that an open transaction holds; sessions "
        "writing to them: {}",
    ),
    (sql.ANY_LOCK, "the load waited for a lock on its tables; sessions holding one: {}"),
]


def kept_waiting(conn, wait: int, tables: list[str]) -> str:
    """Why a statement stopped waiting for a lock on tables: the sessions in the way."""
    for modes, found in IN_THE_WAY:
        holders = sessions_holding(conn, tables, modes).sessions
        if holders:
            who = found.format("; ".join(holders))
            break
    else:
        who = (
            "the load waited for a lock on its tables that no session holds now: one has let go "
            "since, or a prepared transaction holds it (pg_prepared_xacts)"
        )
    return (
        f"{who}; gave up after {_lock_timeout(wait)} s (--wait); what finished batches committed "
        "stays: run again once that transaction ends"
    )


def _lock_held_message(conn, wait: int) -> str:
    """The refusal, naming the session that holds the lock."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.lock_holder, {"key": sql.LOCK_KEY})
        holder = cur.fetchone()
    if holder is None:
        who = "another session"
    else:  # when it connected, by this machine's clock (a role may not see it: pg_read_all_stats)
        when = f", connected at {holder[2].astimezone():%H:%M:%S %Z}" if holder[2] else ""
        who = f"{holder[1] or 'a client'} (server pid {holder[0]}{when})"
    waited = f"; waited {wait} s for it (--wait)" if wait else ""
    return (
        f"another load is running on this database: {who}{waited}; wait for it to finish and "
        "run again"
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


class Holding(NamedTuple):
    role: str  # this session's
    sessions: list[str]  # the others, each as 'pid (role, application) on its tables'
    superuser: bool  # whether one of them is a superuser's


def sessions_holding(conn, tables: list[str], modes: list[str] | None = None) -> Holding:
    """This session's role, and the other sessions holding a lock on one of tables (of one of
    modes, if given)."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.lock_holders_left, {"tables": tables, "modes": modes})
        rows = cur.fetchall()
        cur.execute(sql.role_name)
        return Holding(
            cur.fetchone()[0],
            [session_text(*row[:4]) for row in rows],
            any(superuser for *_, superuser in rows),
        )


def unseen_holder(conn) -> str:
    """Who held a lock on the tables that no session holds now: on Citus, perhaps a session
    connected to a worker node itself, which the coordinator does not see."""
    with managed_cursor(conn) as cur:
        cur.execute(sql.citus_present)
        on_citus = cur.fetchone()[0]
    if on_citus:
        return "a session on a worker node (connected to it, not to the coordinator) or one gone"
    return "a session that has let go since"


def session_text(pid: int, who: str, application: str, locked: str) -> str:
    """A session as messages name it: 'pid (role, application) on its tables'."""
    return f"{pid} ({', '.join(filter(None, [who, application]))}) on {locked}"


# psql's options, as its getopt reads them: the short ones that take a value, and the long ones
# (whether each takes a value). Those that say where to connect (and psql's other arguments, a
# database and a user name) are refused: db.py psql takes where from its settings.
PSQL_SHORT_WITH_VALUE = "cdfFhLopPRTUv"
PSQL_LONG = {
    **dict.fromkeys(["command", "dbname", "file", "field-separator", "host", "log-file"], True),
    **dict.fromkeys(["output", "port", "pset", "record-separator", "set", "table-attr"], True),
    **dict.fromkeys(["username", "variable"], True),
    **dict.fromkeys(["echo-all", "echo-errors", "echo-queries", "echo-hidden", "list"], False),
    **dict.fromkeys(["no-psqlrc", "single-transaction", "help", "no-readline", "quiet"], False),
    **dict.fromkeys(["single-step", "single-line", "no-align", "csv", "html", "version"], False),
    **dict.fromkeys(["tuples-only", "expanded", "field-separator-zero"], False),
    **dict.fromkeys(["record-separator-zero", "no-password", "password"], False),
}
PSQL_WHERE = {"-d", "-h", "-p", "-U", "--dbname", "--host", "--port", "--username"}


def psql_where(options: list[str]) -> str | None:
    """The first of psql's options that says where to connect (as psql reads them: -Xd, --db=x
    and an argument that is no option's value all do), or None."""
    words = iter(options)
    for word in words:
        if word.startswith("--") and word != "--":
            name, equals, _ = word[2:].partition("=")
            known = [name] if name in PSQL_LONG else [o for o in PSQL_LONG if o.startswith(name)]
            option = f"--{known[0]}" if len(known) == 1 else word
            if option in PSQL_WHERE:
                return option
            if len(known) == 1 and PSQL_LONG[known[0]] and not equals:
                next(words, None)
        elif word.startswith("-") and word not in ("-", "--"):
            for at, letter in enumerate(word[1:], start=2):
                if f"-{letter}" in PSQL_WHERE:
                    return f"-{letter}"
                if letter in PSQL_SHORT_WITH_VALUE:
                    if at == len(word):
                        next(words, None)
                    break
        else:
            return "database or user name argument"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        description="Manage the embedded PostgreSQL server, or open psql on the database.",
        epilog="examples:\n"
        "  python db.py status      # is the embedded server running?\n"
        "  python db.py url         # where the scripts connect, the password as ***\n"
        "  python db.py psql        # psql on the database\n"
        "  python db.py psql -c 'SELECT count(*) FROM songplays'   # psql's options follow\n\n"
        "exit codes: 0 done; 2 bad arguments; 3 database problem (status: not running); psql: "
        "psql's own exit code",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status", "psql", "url"],
        help="start/stop/status: the embedded server; psql: open psql on the "
        "database, with psql's own options after it (-c SQL, -f FILE, -A, -t, ...; the server "
        "and database come from --database-url: -h, -p, -U and -d are refused); url: print the "
        "connection string (the password as ***)",
    )
    add_database_url_option(parser)
    arguments = sys.argv[1:] if argv is None else argv
    # -h after psql is psql's host, not this script's --help: refused rather than read as either
    if "psql" in arguments and "-h" in arguments[arguments.index("psql") :]:
        where = "-h"
    else:
        args, psql_options = parser.parse_known_args(arguments)
        if psql_options and args.command != "psql":
            parser.error(f"unrecognized arguments: {' '.join(psql_options)}")
        where = psql_where(psql_options)
    if where:
        parser.error(
            f"psql's {where} is not taken: the server and database come from --database-url "
            f"(default: {CONNECTS_TO})"
        )
    settings = Settings.from_env(args.database_url)
    return run_command(settings, lambda: _command(args.command, settings, psql_options))


def psql_program(settings: Settings, encrypted: bool) -> str:
    """The psql to open: the embedded server's own for it; for another server the first psql on
    PATH, else the embedded server's, which is built without SSL: refused where the connection
    is encrypted, rather than opened unencrypted (or not at all, where the server wants SSL)."""
    bundled = embedded.pg_bin("psql")
    if settings.embedded:
        return bundled
    found = shutil.which("psql")
    if found:
        return found
    if encrypted:
        raise DatabaseError(
            f"the connection to {settings.describe()} is encrypted (SSL), and the only psql found "
            "is the embedded server's, which has no SSL: install psql (Debian/Ubuntu: apt "
            "install postgresql-client; macOS: brew install libpq) and put it on PATH"
        )
    return bundled


def _command(command: str, settings: Settings, psql_options: list[str]) -> int:
    if command in ("start", "stop", "status") and not settings.embedded:
        return _said(f"not using the embedded server: connecting to {settings.describe()}")
    if command == "start":
        socket = embedded.start(settings.pgdata)
        return _said(f"embedded PostgreSQL running, socket in {socket}", "the server is running")
    if command == "stop":
        stopped = embedded.stop(settings.pgdata)
        return _said("stopped" if stopped else "not running", "the server is not running")
    if command == "status":
        running, moved = embedded.running(settings.pgdata), embedded.moved_server(settings.pgdata)
        if running:
            return _said(f"running (pid {running[0]}, socket in {running[1]})")
        if moved:
            return _said(
                f"not running here: the server started in {moved.data} (pid {moved.pid}) before "
                "its folder moved still runs (`python db.py stop` ends it, or says how)",
                exit_code=EXIT_ENVIRONMENT,
            )
        return _said("not running", exit_code=EXIT_ENVIRONMENT)
    if command == "url":
        return _said(redacted_url(destination(settings)))
    with contextlib.closing(connect(settings)) as conn:  # a clear one-line error, not psql's
        psql = psql_program(settings, encrypted=conn.info.ssl_in_use)
    target, env = options(settings), dict(os.environ)
    if "password" in target:  # argv is readable by every local user: the environment is not
        env["PGPASSWORD"] = target["password"]
    shown = {k: v for k, v in target.items() if k not in SECRET_OPTIONS}
    if settings.embedded:  # its socket has no SSL, nor its psql: PGSSLMODE=require is for others
        shown |= {"sslmode": "disable", "sslnegotiation": "postgres"}
    where = [make_dsn(**shown)] if shown else []
    os.execve(psql, [psql, *where, *psql_options], env)


def _said(text: str, done: str = "nothing was changed", exit_code: int = 0) -> int:
    """A command's answer on standard output, and its exit code."""
    cli.write_out(text, done, exit_code=exit_code)
    return exit_code


if __name__ == "__main__":
    cli.finish(main)
