"""Secrets: no output, message or table ever shows a password, whatever its characters and however
the URL or key=value string around it is written, well or badly; a connection string libpq cannot
read is refused in our words, without quoting it.

Passwords are generated from every printable character and put through every form of connection
string: in-process through the functions every script ends in (Settings.describe, connect and the
exit point, each script's main), many examples; then a seeded handful through the real scripts,
as a user runs them. A password shorter than 4 characters is not masked inside other text (a
message would lose every 'e'), so for those the property is that the message is exactly the one
any password gets: nothing is built from it."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import string
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from builders import (
    BASE,
    Watcher,
    connection_error,
    embedded_url,
    etl,
    one_error_line,
)
from conftest import PROJECT, PROPERTY, counts, only_pg_variables, query, run_script
from hypothesis import assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg2 import sql as pgsql
from psycopg2.extensions import parse_dsn
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import make_url
from summary import parse_summary

import cli
import create_tables
import db
import embedded
import etl as etl_script
import sql_queries
from cli import EXIT_ENVIRONMENT, EXIT_OK, EXIT_USAGE, MASK

MASKED_FROM = 4
PRINTABLE = string.printable
NO_WHITESPACE = "".join(c for c in string.printable if c not in string.whitespace)
REFUSED = 'connection to server at "127.0.0.1", port 1 failed: Connection refused'
NO_SOCKET = (
    'connection to server on socket "/nonexistent/.s.PGSQL.1" failed: No such file or directory'
)
SERVER_CLOSED = "server closed the connection unexpectedly"
HIDDEN = "its text is not shown, as it may hold a password"
UNREADABLE = (
    f"error: --database-url is not a connection string libpq can read: it has {{}}; {HIDDEN}"
)
MISREAD_AT = (
    "error: --database-url has an '@' that libpq would not read as the end of the password "
    "(another '@' or a '/' comes before it): in a URL write '@' as %40 and '/' as %2F in the "
    f"user name, the password and parameter values; {HIDDEN}"
)
WORD_WITHOUT_EQUALS = (
    "a word without '=' (a URL starts with postgresql://; in key=value form a value holding "
    "spaces goes in single quotes)"
)
UNKNOWN_PARAMETER = (
    "a parameter libpq does not know (such as sslmode, options or connect_timeout), or a value "
    "holding '&' or '=' (write them as %26 and %3D)"
)
PORT_NOT_A_NUMBER = (
    "error: --database-url has a port that is none (a whole number from 1 to 65535: a URL whose "
    f"'@host' is left out reads its user:password as host:port); {HIDDEN}"
)
NOT_LIBPQS = "error: --database-url is not a connection string libpq can read: {}; " + HIDDEN
SQLALCHEMYS = "it is SQLAlchemy's form (postgresql+driver://): libpq reads postgresql://"
IN_QUOTES = "it is wrapped in quotes (as a .env file writes a value): drop them"
OTHER_SCHEME = (
    "it starts with a scheme libpq does not read (postgresql:// or postgres://, in lower case)"
)
# Every refusal of a connection string, word for word: no part of the string is in any of them.
REFUSALS = {
    MISREAD_AT,
    PORT_NOT_A_NUMBER,
    *(NOT_LIBPQS.format(reason) for reason in (SQLALCHEMYS, IN_QUOTES, OTHER_SCHEME)),
    *(
        UNREADABLE.format(reason)
        for reason in (
            WORD_WITHOUT_EQUALS,
            "a quoted value that is not closed",
            "an option name libpq does not know",
            "a '%' not followed by two hex digits (write '%' itself as %25)",
            "%00 in a value",
            UNKNOWN_PARAMETER,
            "an unclosed or empty [IPv6] host",
            "an unexpected character after the host name",
            "a %-escape that makes a value no UTF-8 text (write '%' itself as %25)",
        )
    ),
    f"error: --database-url is not a connection string libpq can read: write it as "
    f"postgresql://user:password@host:port/database or as key=value pairs; {HIDDEN}",
}


def encoded(password: str) -> str:
    return quote(password, safe="")


def quoted(password: str) -> str:
    """A key=value value in single quotes, its quotes and backslashes escaped."""
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def escaped(password: str) -> str:
    """A key=value value without quotes: every character escaped with a backslash."""
    return "".join("\\" + c for c in password)


def forms_of(password: str) -> set[str]:
    """The password as a message might show it: as is and percent-encoded."""
    return {password, encoded(password)}


def shows(text: str, password: str) -> bool:
    """Whether text shows the password (a masked-length form of it, or the whole of a short one
    where the rest of the text could not hold it by chance)."""
    return any(len(form) >= MASKED_FROM and form in text for form in forms_of(password))


@dataclass(frozen=True)
class Form:
    """A way to write a connection string around a password, and where it points."""

    name: str
    template: str  # {} is the password, as the form writes it
    write: Callable[[str], str]  # how the form writes the password
    shown: str | None = None  # the target as messages show it (well-formed forms)
    refused: str = REFUSED  # libpq's line when connecting there (one per server tried)

    def url(self, password: str) -> str:
        return self.template.format(self.write(password))


UNREACHABLE_URL = "postgresql://u:***@127.0.0.1:1/d"
WELL_FORMED = [
    Form("userinfo", "postgresql://u:{}@127.0.0.1:1/d", encoded, UNREACHABLE_URL),
    Form("postgres scheme", "postgres://u:{}@127.0.0.1:1/d", encoded, UNREACHABLE_URL),
    Form(
        "password parameter", "postgresql://u@127.0.0.1:1/d?password={}", encoded, UNREACHABLE_URL
    ),
    Form(
        "two hosts",
        "postgresql://u:{}@127.0.0.1:1,127.0.0.1:2/d",
        encoded,
        "postgresql://u:***@/d?host=127.0.0.1,127.0.0.1&port=1,2",
        f'{REFUSED}; connection to server at "127.0.0.1", port 2 failed: Connection refused',
    ),
    Form(
        "socket folder",
        "postgresql://u:{}@/d?host=/nonexistent&port=1",
        encoded,
        "postgresql://u:***@/d?host=/nonexistent&port=1",
        NO_SOCKET,
    ),
    Form(
        "key=value quoted",
        "host=127.0.0.1 port=1 user=u password={} dbname=d",
        quoted,
        UNREACHABLE_URL,
    ),
    Form(
        "key=value spaced",
        "host=127.0.0.1 port = 1 user=u password = {} dbname=d",
        quoted,
        UNREACHABLE_URL,
    ),
    Form(
        "key=value escaped",
        "host=127.0.0.1 port=1 user=u password={} dbname=d",
        escaped,
        UNREACHABLE_URL,
    ),
]
ILL_FORMED = [  # the password as typed, nothing encoded or quoted
    Form("raw userinfo", "postgresql://u:{}@127.0.0.1:1/d", str),
    Form("raw parameter", "postgresql://u@127.0.0.1:1/d?password={}", str),
    Form("no ':' after the scheme", "postgresql//u:{}@127.0.0.1:1/d", str),
    Form("no '//' after the scheme", "postgresql:u:{}@127.0.0.1:1/d", str),
    Form("key=value unquoted", "host=127.0.0.1 port=1 user=u password={} dbname=d", str),
    Form("key=value spaced unquoted", "host=127.0.0.1 port=1 password = {} dbname=d", str),
    Form("key=value unterminated", "host=127.0.0.1 port=1 password='{} dbname=d", str),
]


def settings_of(url: str) -> db.Settings:
    return db.Settings(url=url, libpq_env=False, pgdata=Path("."))


def in_process(main, *argv: str) -> tuple[int, str, str]:
    """A script's main with these arguments: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def every_script(url: str) -> list[tuple[int, str, str]]:
    """etl.py, create_tables.py and `db.py url`, in-process, with --database-url url."""
    return [
        in_process(
            etl_script.main, "--data", str(PROJECT / "data"), "--no-progress", "--database-url", url
        ),
        in_process(create_tables.main, "--database-url", url),
        in_process(db.main, "url", "--database-url", url),
    ]


# ================================================================ generated passwords, in-process


@hypothesis_settings(PROPERTY, max_examples=400)
@given(password=st.text(PRINTABLE, min_size=1), form=st.sampled_from(WELL_FORMED))
def test_a_well_formed_string_shows_its_target_the_same_whatever_the_password(password, form):
    """The target is rebuilt from what libpq reads, so it is the same text for every password,
    and every message is the one any password gets (masking aside, where the password happens to
    be part of that text); the URL shown and the notebooks' SQLAlchemy URL read back the same."""
    url = form.url(password)
    settings = settings_of(url)
    assert settings.describe() == form.shown
    assert repr(settings) == repr(settings_of(form.url("")))  # the same whatever the password
    reading = psycopg2.extensions.parse_dsn(url)
    assert psycopg2.extensions.parse_dsn(db.as_url(reading)) == reading
    _, connect_args = PGDialect_psycopg2().create_connect_args(
        make_url(db.sqlalchemy_url(settings))
    )
    # the port comes as a number; the notebooks speak UTF-8 as the scripts do, named as theirs
    assert {k: str(v) for k, v in connect_args.items()} == reading | {
        "client_encoding": "UTF8",
        "fallback_application_name": "sparkify notebook",
    }
    message = f"error: cannot connect to {form.shown}: {form.refused}\n"
    outputs = every_script(url)
    assert [code for code, _, _ in outputs] == [EXIT_ENVIRONMENT, EXIT_ENVIRONMENT, 0]
    url_printed = outputs[2][1]
    assert url_printed == f"{form.shown}\n"
    for _, out, err in outputs[:2]:
        assert out == ""
        assert not shows(outside(err, settings.public), password)
        if not shows(message, password):
            assert err == message


def outside(text: str, public: frozenset[str]) -> str:
    """The text without the names it shows of the settings (where a password that is part of
    one is left be)."""
    for name in sorted(public, key=len, reverse=True):
        text = text.replace(name, "")
    return text


# Passwords of words no output holds by chance (W1234z) between the characters that give a
# connection string its structure: a string that splits the password leaks a word, which shows.
WORD = st.integers(1000, 99999).map("W{}z".format)
PUNCTUATION = st.text(string.punctuation + " ", min_size=1, max_size=2)
WORDY = st.lists(st.one_of(WORD, PUNCTUATION), min_size=1, max_size=6).map("".join)


def printed_anyway(password: str, form: Form) -> bool:
    """Whether the password is a piece of what the scripts print whatever the password is (the
    form's own text, our refusals, libpq's message): there, shown or not cannot be told apart."""
    fixed = "\n".join([form.template, form.refused or "", *REFUSALS])
    return any(len(f) >= MASKED_FROM and f in fixed for f in forms_of(password))


def words_of(password: str) -> list[str]:
    return re.findall(r"W\d+z", password)


@hypothesis_settings(PROPERTY, max_examples=600)
@given(
    password=st.one_of(st.text(PRINTABLE, min_size=1), WORDY),
    form=st.sampled_from(ILL_FORMED),
)
def test_an_ill_formed_string_is_refused_or_read_as_libpq_reads_it_never_shown(password, form):
    """Typed raw, the password may break the string: it is then refused in words of ours (one of
    REFUSALS, none quoting it), or read as libpq reads it, the password whole; either way no
    output shows it, nor any piece of it."""
    assume(not printed_anyway(password, form))
    url = form.url(password)
    assert repr(settings_of(url)) == repr(settings_of(form.url("")))  # whatever the password
    for code, out, err in every_script(url):
        assert not shows(out + err, password)
        assert not [word for word in words_of(password) if word in out + err]
        if code == 0:  # db.py url of a string libpq reads
            assert out.startswith("postgresql://") and err == ""
            continue
        assert code == EXIT_ENVIRONMENT and out == ""
        line = err.removesuffix("\n")
        assert "\n" not in line
        assert line in REFUSALS or line.startswith("error: cannot connect to "), line


@hypothesis_settings(PROPERTY, max_examples=200)
@given(password=st.text(PRINTABLE, min_size=MASKED_FROM), words=st.text(PRINTABLE))
def test_the_exit_point_masks_every_secret_in_errors_and_in_a_bugs_traceback(password, words):
    """Belt and braces: whatever a message holds, what leaves run_command has no secret."""

    def refuse() -> int:
        raise cli.UserError(f"{words}{password} or {encoded(password)}{words}")

    def crash() -> int:
        raise RuntimeError(f"{words}{password}{words}")

    for action, code in ((refuse, EXIT_ENVIRONMENT), (crash, cli.EXIT_FAILED)):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert cli.run_command(action, forms_of(password)) == code
        assert not shows(err.getvalue(), password)


@hypothesis_settings(PROPERTY, max_examples=200)
@given(
    scheme=st.sampled_from(["postgresql", "postgres", "s3", "S3", "gs"]),
    user=st.text(string.ascii_letters + string.digits + "._-@%", max_size=8),
    password=st.text(
        PRINTABLE.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    ),
    words=st.sampled_from(["", " failed: no route", ": unrecognized"]),
    glued=st.sampled_from(["", "-", "--data=", ".", "1", "x_", "'"]),  # typed just before it
    slashes=st.sampled_from(["://", ":/", ":", "//", "/"]),  # as typed, or mistyped
)
def test_any_urls_password_is_masked_whatever_secrets_the_script_knows(
    scheme, user, password, words, glued, slashes
):
    """A URL a script was never told is a secret (one typed in the wrong place, or mistyped,
    which makes it a folder's name): its password, written raw or encoded, whatever it holds,
    spaces and '@' included."""
    for written in (password, encoded(password)):
        text = f"error: {glued}{scheme}{slashes}{user}:{written}@db.example.com:5432/d{words}"
        assert cli.masked(text) == (
            f"error: {glued}{scheme}{slashes}{user}:***@db.example.com:5432/d{words}"
        )


def test_a_later_at_sign_on_the_line_masks_more_never_less():
    """Where a password ends cannot be told from a message: at the last '@' that follows."""
    message = "postgresql://db.example.com:5432/d failed; write to dba@example.com"
    assert cli.masked(message) == "postgresql://db.example.com:***@example.com"
    assert cli.masked("use PGPASSWORD=s3cret or password = 's3 cret' or password=\"a b\"") == (
        "use PGPASSWORD=*** or password = *** or password=***"
    )


def test_a_signed_urls_signature_and_token_are_masked_wherever_they_show():
    """A store library's error naming a presigned URL or a SAS token's query."""
    assert cli.masked(
        "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAX%2F2026&X-Amz-Signature=9f3a"
        "&X-Amz-Security-Token=IQoJb3JpZ2lu&x-id=GetObject failed; "
        "https://a.blob.core.windows.net/c?sv=2022-11-02&sig=S1g%2B&se=2026 refused; "
        "gs://b/p?access_token=ya29.Tok; https://storage.googleapis.com/b/o?X-Goog-Signature=ab12"
        "&X-Goog-Credential=sa%40p; https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAX"
        "&Signature=Zm9v%2B&Expires=1"
    ) == (
        "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"
        "&X-Amz-Security-Token=***&x-id=GetObject failed; "
        "https://a.blob.core.windows.net/c?sv=2022-11-02&sig=***&se=2026 refused; "
        "gs://b/p?access_token=***; https://storage.googleapis.com/b/o?X-Goog-Signature=***"
        "&X-Goog-Credential=***; https://b.s3.amazonaws.com/k?AWSAccessKeyId=***"
        "&Signature=***&Expires=1"
    )


def test_what_only_looks_like_a_credential_is_shown_as_it_is():
    """A key's folder named like a query's name, a quoted value, a URL and an '@' on different
    lines of one message."""
    for text in [
        "cannot read s3://bucket/logs/sig=abc/2018/x.json: gone",
        "a setting 'sig=1' is not read",
        "error: cannot reach http://localhost:9000/b\nnote: user app@example.com",
    ]:
        assert cli.masked(text) == text


def test_secrets_hold_the_password_as_written_as_read_and_encoded_and_an_unreadable_string_whole():
    assert settings_of("postgresql://u:Tk9%23Qz?w@h/d").secrets == {
        "Tk9#Qz?w",
        "Tk9%23Qz%3Fw",
        "Tk9%23Qz?w",
    }
    assert settings_of("host=h password='it\\'s' sslpassword=k3y!").secrets == {
        "it's",
        "it%27s",
        "k3y!",
        "k3y%21",
    }
    unreadable = "host=x password=my secret"
    assert settings_of(unreadable).secrets == {unreadable}
    env = db.Settings(url=None, libpq_env=True, pgdata=Path("."), pgpassword="fr0m env")
    assert env.secrets == {"fr0m env", "fr0m%20env"}


# ================================================================ each kind of string, exactly


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:Pa@ssW0rd@127.0.0.1:1/db", MISREAD_AT),  # libpq: host "ssW0rd@127.0.0.1"
        ("postgresql://u:4321/Slash9@127.0.0.1/db", MISREAD_AT),  # libpq: host u, port 4321
        ("postgresql://h/db?user=me@corp", MISREAD_AT),
        ("postgresql//u:Zs3cr3t@127.0.0.1:1/db", UNREADABLE.format(WORD_WITHOUT_EQUALS)),
        ("postgresql:u:Ms3cr3t@h/db", UNREADABLE.format(WORD_WITHOUT_EQUALS)),
        ("host=127.0.0.1 password=my Ksecret dbname=d", UNREADABLE.format(WORD_WITHOUT_EQUALS)),
        (
            "host=h password='Unterm1nated dbname=x",
            UNREADABLE.format("a quoted value that is not closed"),
        ),
        ("host=h password=ab Kc=def", UNREADABLE.format("an option name libpq does not know")),
        (
            "postgresql://u:Pw%zz9@127.0.0.1:1/db",
            UNREADABLE.format("a '%' not followed by two hex digits (write '%' itself as %25)"),
        ),
        ("postgresql://u:Pw%009@h/db", UNREADABLE.format("%00 in a value")),
        (
            "postgresql://u:Pw%809@h/db",
            UNREADABLE.format(
                "a %-escape that makes a value no UTF-8 text (write '%' itself as %25)"
            ),
        ),
        (
            "postgresql://u@h/db?password=Qa&b",
            UNREADABLE.format(UNKNOWN_PARAMETER),
        ),
        ("postgresql://u:Qb@h/db?schema=sparkify", UNREADABLE.format(UNKNOWN_PARAMETER)),
        ("postgresql://app:S3cretPw/sparkify", PORT_NOT_A_NUMBER),  # '@host' left out
        ("postgresql://app:S3cretPw", PORT_NOT_A_NUMBER),
        ("postgresql://app:1234567/db", PORT_NOT_A_NUMBER),  # digits, but no port
        ("host=h port=0", PORT_NOT_A_NUMBER),
        ("postgresql://app:my S3cret/db", PORT_NOT_A_NUMBER),
        ("host=h port=Pw9secret", PORT_NOT_A_NUMBER),
        ("postgresql+psycopg2://u:Pw9x@h/db", NOT_LIBPQS.format(SQLALCHEMYS)),
        ("postgres+asyncpg://u:Pw9x@h/db", NOT_LIBPQS.format(SQLALCHEMYS)),
        ('"postgresql://u:Pw9x@h/db"', NOT_LIBPQS.format(IN_QUOTES)),
        ("'host=h password=Pw9x'", NOT_LIBPQS.format(IN_QUOTES)),
        ("POSTGRESQL://u:Pw9x@h/db", NOT_LIBPQS.format(OTHER_SCHEME)),
        ("postgressql://u:Pw9x@h/db", NOT_LIBPQS.format(OTHER_SCHEME)),
        ("postgresql://u:Pv6x@[::1/db", UNREADABLE.format("an unclosed or empty [IPv6] host")),
        (
            "postgresql://u:Pv6x@[::1]x/db",
            UNREADABLE.format("an unexpected character after the host name"),
        ),
    ],
)
def test_a_string_libpq_would_misread_or_cannot_read_is_refused_without_quoting_it(url, message):
    for code, out, err in every_script(url):
        assert (code, out, err) == (EXIT_ENVIRONMENT, "", f"{message}\n")


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://h:5432,5433/d",
        "postgresql://h1,h2:,5433/d",
        "postgresql://[::1]:5432/d",
        "postgresql://h:/d",
        "host=h port=' 5432'",
        "host=h port=+5432",
        "host=h,h2 port=65535,1",
    ],
)
def test_every_port_libpq_takes_is_taken(text):
    assert db.read_connection_string(text, "--database-url") == parse_dsn(text)


def test_a_refusal_names_database_url_when_the_string_came_from_there(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql//u:Zs3cr3t@127.0.0.1:1/db")
    code, out, err = in_process(db.main, "url")
    assert (code, out) == (EXIT_ENVIRONMENT, "")
    assert (
        err
        == f"{UNREADABLE.format(WORD_WITHOUT_EQUALS).replace('--database-url', 'DATABASE_URL')}\n"
    )


# ================================================================ the scripts, seeded passwords

RANDOM = random.Random(20240607)
# Every 4 characters in a row of these are too rare to show by chance: one showing is a piece of
# the password leaking.
DISTINCTIVE = [
    "Kq7v@Zt4m-Pw8x",  # raw in a URL, libpq would take Zt4m-Pw8x@127.0.0.1 for the host
    "Rn2j/Ls5h?Vb6c#Hd3f:",  # ... and u for the host, Rn2j for the port
    *("".join(RANDOM.choices(NO_WHITESPACE, k=RANDOM.randint(12, 16))) for _ in range(2)),
]
SEEDED = ["Tk9#Qz?w", "p/a@s:s%w?o#r&d=x", 'it\'s "q" \\ back', *DISTINCTIVE]


def pieces(password: str) -> set[str]:
    """The password, percent-encoded too, and for a distinctive one every 4 characters in a row
    of it."""
    runs = range(len(password) - MASKED_FROM + 1) if password in DISTINCTIVE else ()
    return forms_of(password) | {password[i : i + MASKED_FROM] for i in runs}


def assert_hidden(done: subprocess.CompletedProcess, password: str, given: str = "") -> None:
    """No piece of the password in what the run printed, once the path it was given to show
    (the data folder: a temporary folder's name may hold any 4 characters) is taken out."""
    text = (done.stdout + done.stderr).replace(given, "")
    shown = {piece for piece in pieces(password) if piece in text}
    assert not shown, (shown, text)


def local_url(password: str, database: str = db.DATABASE) -> str:
    """The test server, with a password: trust authentication lets any password in."""
    return embedded_url(database=database, password=encoded(password))


def local_shown(database: str = db.DATABASE) -> str:
    return embedded_url(database=database, password="***")


def every_table_as_text() -> str:
    return "\n".join(
        str(query(pgsql.SQL("SELECT t::text FROM {} t").format(pgsql.Identifier(table))))
        for table in sql_queries.TABLES
    )


@pytest.mark.parametrize("password", SEEDED)
def test_scripts_that_connect_with_a_password_show_only_stars_and_store_none(data, password):
    url = local_url(password)
    created = run_script("create_tables.py", "--database-url", url)
    assert created.stdout == (
        f"created tables {', '.join(sql_queries.TABLES)} in schema public of {local_shown()}\n"
    )
    loaded = etl(data, env={"DATABASE_URL": url}, process=True)
    assert json.loads(loaded.stdout)["target"] == local_shown()
    assert parse_summary(loaded.stdout).rows["songplays"] == (BASE["songplays"], BASE["songplays"])
    printed = run_script("db.py", "url", env={"DATABASE_URL": url})
    assert printed.stdout == f"{local_shown()}\n"
    for done in (created, loaded, printed):
        assert_hidden(done, password, given=str(data))
    tables = every_table_as_text().replace(str(data), "")
    assert not [piece for piece in pieces(password) if piece in tables]


@pytest.mark.parametrize("password", ["Tk9#Qz?w", *DISTINCTIVE[:3]])
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://u:{encoded}@127.0.0.1:1/d",
        "postgresql//u:{encoded}@127.0.0.1:1/d",
        "postgresql://u:{raw}@127.0.0.1:1/d",
        "host=127.0.0.1 port=1 user=u password={raw} dbname=d",
    ],
    ids=["unreachable", "no ':'", "raw", "key=value raw"],
)
def test_every_script_failing_on_a_string_keeps_its_password_hidden(password, template):
    url = template.format(encoded=encoded(password), raw=password)
    runs = [
        run_script("etl.py", "--no-progress", "--database-url", url, check=False, timeout=60),
        run_script("create_tables.py", env={"DATABASE_URL": url}, check=False, timeout=60),
        run_script("db.py", "psql", "--database-url", url, check=False, timeout=60),
    ]
    for done in runs:
        assert done.returncode == EXIT_ENVIRONMENT, done
        one_error_line(done)
        assert_hidden(done, password)


DATABASE_AS_DATA = (
    "error: --data names a database (a postgresql:// URL): the data goes in --data, the "
    "database in --database-url or DATABASE_URL; its text is not shown, as it may hold a "
    "password\n"
)
# A cloud database's access token (an IAM or Entra ID token), used as a password: 1 to 4 KB.
TOKEN = "".join(random.Random(7).choices(string.ascii_letters + string.digits + "-_.", k=2900))


@pytest.mark.parametrize("password", [*SEEDED, "Nl9\nx7Kq-Zt", TOKEN], ids=range(len(SEEDED) + 2))
def test_a_url_given_in_the_wrong_place_keeps_its_password_hidden(password):
    """A misspelt option, a URL with no option or in another's place: argparse quotes the
    arguments it refuses, and --data names what it cannot read."""
    url = f"postgresql://u:{encoded(password)}@127.0.0.1:1/d"
    raw = f"postgresql://u:{password}@127.0.0.1:1/d"
    mistakes = [
        (["etl.py", "--database_url", url], EXIT_USAGE),
        (["etl.py", raw], EXIT_USAGE),
        (["etl.py", "--jobs", url], EXIT_USAGE),
        (["etl.py", "--wait", f"host=h password={quoted(password)}"], EXIT_USAGE),
        (["etl.py", "--batch-mb", f"postgresql://u@h/d?password={password}"], EXIT_USAGE),
        (["create_tables.py", raw], EXIT_USAGE),
        (["db.py", url], EXIT_USAGE),
        (["erd.py", "--out", "/tmp/erd", raw], EXIT_USAGE),
        (["-m", "tools.citus_cluster", raw], EXIT_USAGE),
        (["-m", "tools.generate_data", raw], EXIT_USAGE),
        (["etl.py", f"PGPASSWORD={encoded(password)}"], EXIT_USAGE),
        (["etl.py", "--no-progress", "--data", raw], EXIT_ENVIRONMENT),
        *(
            (
                ["etl.py", "--no-progress", "--data", f"s3{slashes}AKIAX:{password}@bucket/p"],
                EXIT_ENVIRONMENT,
            )
            for slashes in ["://", ":/", ":", "//"]
        ),
    ]
    for args, code in mistakes:
        done = run_script(*args, check=False, timeout=60)
        assert done.returncode == code, done
        assert "***" in done.stderr or done.stderr == DATABASE_AS_DATA
        assert_hidden(done, password)
    done = run_script("etl.py", "--data", raw, check=False, timeout=60)
    assert (done.returncode, done.stderr) == (EXIT_ENVIRONMENT, DATABASE_AS_DATA)


@pytest.mark.parametrize("where", ["last", "before another option"])
def test_a_passphrase_typed_unquoted_in_a_string_given_as_data_is_hidden_whole(where):
    """libpq ends an unquoted value at a space; a user types a passphrase so all the same."""
    words = ["W1001z", "W2002z", "W3003z", "W4004z"]
    text = f"host=h port=1 password={' '.join(words)}" + (" dbname=d" if where != "last" else "")
    done = run_script("etl.py", "--no-progress", "--data", text, check=False, timeout=60)
    assert done.returncode == EXIT_ENVIRONMENT
    assert "password=***" in done.stderr
    assert [word for word in words if word in done.stdout + done.stderr] == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3://AKIAX:s3cr3t@bucket/p", "s3://AKIAX:***@bucket/p"),
        # a secret typed alone, without its key: the user part is all there is to hide
        ("s3://wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY@bucket/p", "s3://***@bucket/p"),
        ("S3://s3cr3t@bucket", "S3://***@bucket"),
    ],
)
def test_an_object_store_url_with_credentials_is_refused_in_one_line(url, shown):
    done = run_script("etl.py", "--data", url, check=False, timeout=60)
    assert done.returncode == EXIT_ENVIRONMENT
    assert one_error_line(done) == (
        f"error: {shown}: a user, password or port in the URL is not read: it "
        "starts with the bucket (s3://bucket/prefix), and credentials and endpoints come from "
        "the store's library (environment variables, a credentials file: "
        "docs/object-storage.md)"
    )


SIGNED = (
    "the query string (?name=value) is not read: an object store is read with its library's "
    "credentials (docs/object-storage.md), not a signed URL's or a SAS token's; its text is not "
    "shown, as it may hold a secret"
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "s3://bucket/p?X-Amz-Security-Token=Tok3nS3cret&X-Amz-Signature=S1gnatur3",
            "s3://bucket/p",
        ),
        ("az://container/p?sv=2022-11-02&sig=S1gnatur3%2B", "az://container/p"),
        ("gs://bucket/p/?access_token=Tok3nS3cret", "gs://bucket/p/"),
    ],
)
def test_a_signed_urls_query_in_data_is_refused_unsent_and_unshown(url, shown):
    """A presigned URL or a SAS token pasted as --data: the store would take the query for part
    of the prefix, send it in its requests and name it in its errors."""
    done = run_script("etl.py", "--data", url, check=False, timeout=60)
    assert (done.returncode, done.stderr) == (EXIT_ENVIRONMENT, f"error: {shown}?…: {SIGNED}\n")


def test_a_url_this_does_not_read_is_named_without_its_query():
    url = "https://acct.blob.core.windows.net/c/p?sv=2022-11-02&sig=S1gnatur3"
    done = run_script("etl.py", "--data", url, check=False, timeout=60)
    assert (done.returncode, done.stderr) == (
        EXIT_ENVIRONMENT,
        "error: https://acct.blob.core.windows.net/c/p?…: not a folder, nor a URL this reads "
        "(s3://, gs:// or az://, or a folder)\n",
    )


@pytest.mark.parametrize("endpoint", ["minio:{}@127.0.0.1:1", "http://minio:{}@127.0.0.1:1"])
@pytest.mark.parametrize("password", [quote(SEEDED[-1], safe=""), SEEDED[1]], ids=["quoted", "raw"])
def test_an_object_stores_secrets_in_the_environment_never_show(endpoint, password):
    """An endpoint URL's password, with or without the URL's scheme, percent-encoded or written
    as it is (a raw `/` or `@` in it is where a URL's host would seem to end), and the store's
    secret keys. Such an endpoint is refused up front: botocore's HTTP client refuses it anyway,
    with a message that hides why (and quotes an endpoint without its scheme whole)."""
    secret = SEEDED[-2]
    env = {
        "AWS_ENDPOINT_URL": endpoint.format(password),
        "AWS_ACCESS_KEY_ID": "AKIASPARKIFYPROBE01",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_SESSION_TOKEN": secret + "token",
        "AWS_MAX_ATTEMPTS": "1",
    }
    for extra in ((), ("--json",)):
        done = run_script("etl.py", "--data", "s3://bucket/feed", *extra, env=env, check=False)
        assert done.returncode == EXIT_ENVIRONMENT, done
        assert one_error_line(done) == (
            "error: AWS_ENDPOINT_URL holds a user and password (user:password@), which S3's "
            "signed requests cannot carry: take them out of it; the credentials go in "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (docs/object-storage.md)"
        )
        for text in (password, quote(password, safe=""), secret):
            assert_hidden(done, text)


def test_pgpassword_never_shows():
    password = SEEDED[-1]
    env = only_pg_variables(PGHOST="127.0.0.1", PGPORT="1", PGPASSWORD=password)
    for script in (["etl.py", "--no-progress"], ["create_tables.py"], ["db.py", "psql"]):
        done = run_script(*script, env=env, check=False, timeout=60)
        assert one_error_line(done) == (
            f"error: cannot connect to postgresql://:***@127.0.0.1:1/{db.DATABASE} (from the PG* "
            'environment variables): connection to server at "127.0.0.1", port 1 failed: '
            "Connection refused"
        )
        assert_hidden(done, password)


def test_db_url_under_pg_variables_shows_where_they_point_with_the_password_masked():
    env = only_pg_variables(PGHOST="127.0.0.1", PGPORT="1", PGUSER="bob", PGPASSWORD=SEEDED[-1])
    done = run_script("db.py", "url", env=env)
    assert done.stdout == f"postgresql://bob:***@127.0.0.1:1/{db.DATABASE}\n"
    done = run_script("db.py", "url", env={**env, "PGDATABASE": "analytics"})
    assert done.stdout == "postgresql://bob:***@127.0.0.1:1/analytics\n"


# ================================================================ errors that say what happened


def test_a_server_asking_for_a_password_none_was_given_for_says_where_one_goes():
    refused = psycopg2.OperationalError(
        'connection to server at "db.example.com" (192.0.2.1), port 5432 failed: '
        "fe_sendauth: no password supplied\n"
    )
    settings = settings_of("postgresql://app@db.example.com/d")
    assert str(db.connect_error(refused, settings)) == (
        "cannot connect to postgresql://app@db.example.com/d: connection to server at "
        '"db.example.com" (192.0.2.1), port 5432 failed: fe_sendauth: no password supplied (the '
        "server asks for a password and none was given: put it in the URL, in PGPASSWORD or in "
        "~/.pgpass)"
    )


def test_a_missing_role_is_named_with_the_server_not_sent_to_createdb(tmp_path):
    url = embedded_url(role="no_such_role")
    assert connection_error(url, tmp_path) == (
        f'error: role "no_such_role" does not exist on {url}: connect as a role that exists '
        "there, or create this one (e.g. `createuser`)"
    )


@pytest.mark.slow  # it waits out the bulk load's lock timeout (3 s)
def test_a_connection_lost_mid_run_says_so_and_the_next_run_resumes(data):
    """The load's backend is ended while the logs' batch waits to write users, which the test
    holds locked (the bulk load's set-aside gives up on it first, after its lock timeout): the
    song batch, committed before, stays; the logs' batch rolls back whole; the next run loads
    it."""
    watcher = Watcher()
    holder = db.connect(db.Settings.from_env())
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE users IN SHARE MODE")  # reads go on, writes wait
        proc = subprocess.Popen(
            [sys.executable, "etl.py", "--data", str(data), "--no-progress"],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pid = watcher.wait(
            "SELECT max(pid) FROM pg_stat_activity WHERE application_name = 'etl.py' "
            "AND wait_event_type = 'Lock' AND query LIKE '%UPDATE users%'",
            lambda pid: pid is not None,
            proc,
        )
        query("SELECT pg_terminate_backend(%s)", (pid,))
        out, err = proc.communicate(timeout=60)
    finally:
        holder.rollback()
        holder.close()
        watcher.close()
    assert (proc.returncode, out) == (EXIT_ENVIRONMENT, "")
    # libpq says either, as it reads the server's goodbye before the socket closes or not
    assert err in [
        f"error: the connection to {db.Settings.from_env().describe()} was lost ({reason}): "
        "what was committed stays (a load commits each batch whole), the rest was rolled back; "
        "run the command again to resume\n"
        for reason in ("terminating connection due to administrator command", SERVER_CLOSED)
    ]
    assert counts() == {
        **dict.fromkeys(BASE, 0),
        "songs": BASE["songs"],
        "artists": BASE["artists"],
    }
    resumed = parse_summary(etl(data, exit_code=EXIT_OK).stdout)
    assert counts() == BASE
    assert resumed.rows["songs"] == (0, BASE["songs"])


def test_a_session_ended_in_the_middle_of_a_copy_is_named_by_what_the_server_said(
    fresh_tables, capsys
):
    """Ended while a COPY sends its rows (as a server out of disk ends it), psycopg2 prints the
    server's error through sys.excepthook instead of raising it, and raises "invalid socket":
    the message gives the server's words."""
    settings = db.Settings.from_env()
    copying, ender = db.connect(settings), db.connect(settings)
    ender.autocommit = True

    class Rows:
        """COPY's rows, a block a call; the session is ended as the second is asked for."""

        calls = 0

        def read(self, size: int = -1) -> str:
            self.calls += 1
            if self.calls == 2:
                with ender.cursor() as cur:
                    pid = copying.info.backend_pid
                    cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:  # until it has ended
                        cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
                        if not cur.fetchall():
                            break
                        time.sleep(0.01)
            return "1\n" * 1000 if self.calls < 50 else ""

    def copy() -> int:
        with copying.cursor() as cur:
            cur.execute("CREATE TEMP TABLE copied (n int)")
            cur.copy_expert("COPY copied FROM STDIN", Rows(), size=4000)
        return 0

    try:
        assert db.run_command(settings, copy) == EXIT_ENVIRONMENT
    finally:
        copying.close()
        ender.close()
    assert capsys.readouterr().err == (
        f"error: the connection to {settings.describe()} was lost (terminating connection due "
        "to administrator command): what was committed stays (a load commits each batch "
        "whole), the rest was rolled back; run the command again to resume\n"
    )


# ================================================================ passwords that other names hold


def test_a_password_that_the_role_or_database_name_holds_leaves_those_names_whole(tmp_path):
    """Masking a password inside a name every message shows anyway would only tell what the
    password is (`***ql://` for a password `postgres`): the host, role and database show whole,
    the password itself as ***."""
    for database, password in (("analytics_staging", "analytics"), ("nodb", embedded.SUPERUSER)):
        url = embedded_url(database=database, password=password)
        assert connection_error(url, tmp_path) == (
            f'error: database "{database}" does not exist on '
            f"{embedded_url(database=database, password=MASK)}: create it first (e.g. "
            "`createdb`): only the embedded server's is made for you"
        )


NO_BAR = PRINTABLE.replace("|", "")


@hypothesis_settings(PROPERTY, max_examples=200)
@given(
    name=st.text(NO_BAR, min_size=MASKED_FROM),
    start=st.integers(0, 100),
    size=st.integers(MASKED_FROM, 100),
    words=st.text(NO_BAR),
)
def test_a_password_is_masked_wherever_it_shows_outside_the_public_names(name, start, size, words):
    """Whatever part of a public name (a host, role, database) the password is: the name shows
    whole, the password standing on its own as ***."""
    password = name[start : start + size]
    assume(len(password) >= MASKED_FROM and password != name)
    assume(password not in words and name not in words)
    text = f"{words}|{name}|{words}|{password}|{words}"
    assert cli.masked(text, {password}, {name}) == f"{words}|{name}|{words}|{MASK}|{words}"


# ================================================================ settings that are not UTF-8

NOT_UTF8 = "\udce9"  # the byte 0xe9 (é in Latin-1) as Python reads it from the environment


def test_a_url_holding_bytes_that_are_not_utf8_is_refused_in_one_line_without_its_text():
    password = f"S3cr{NOT_UTF8}tPw9"
    env = {"DATABASE_URL": f"postgresql://u:{password}@127.0.0.1:1/d"}
    done = run_script("etl.py", "--json", "--no-progress", env=env, check=False)
    assert done.returncode == EXIT_ENVIRONMENT
    error = (
        "DATABASE_URL is not a connection string libpq can read: it has bytes that are not "
        f"UTF-8 text (write the text in UTF-8); {HIDDEN}"
    )
    assert one_error_line(done) == f"error: {error}"
    assert json.loads(done.stdout) == {
        "run_id": None,
        "status": "failed",
        "exit_code": EXIT_ENVIRONMENT,
        "error": error,
    }


def test_a_pg_variable_holding_bytes_that_are_not_utf8_is_named_in_one_line():
    """Before any connection is tried (nothing listens on port 1)."""
    env = only_pg_variables(PGHOST="127.0.0.1", PGPORT="1", PGUSER=f"b{NOT_UTF8}b")
    for script in (["etl.py", "--no-progress"], ["create_tables.py"], ["db.py", "url"]):
        done = run_script(*script, env=env, check=False)
        assert done.returncode == EXIT_ENVIRONMENT, done
        assert one_error_line(done) == (
            "error: PGUSER holds bytes that are not UTF-8 text: write it in UTF-8"
        )


def test_an_unused_pgpassword_holding_bytes_that_are_not_utf8_changes_nothing():
    """The embedded server takes no password: PGPASSWORD is not read, whatever it holds."""
    env = {"PGPASSWORD": f"Pw{NOT_UTF8}x9Zq"}
    assert run_script("db.py", "status", env=env).stderr == ""
