"""What every command shares: a problem the user can fix is one line on stderr and an exit code,
never a traceback or a password."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import functools
import io
import json
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Generator
from typing import NoReturn, TextIO, TypeVar

E = TypeVar("E", bound=BaseException)

# Every exit code of the project's commands, in one place; each script's --help says which it uses.
EXIT_OK = 0  # done: rejected records are reported, not fatal
EXIT_FAILED = 1  # a check or the reconciliation failed, --strict and rejects; or a bug
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_ENVIRONMENT = 3  # the database, the data folder or the store: one line on stderr
EXIT_LOCKED = 4  # another load holds the load lock, or a session a table's lock, past --wait
EXIT_HUNG_UP = 129  # SIGHUP (the terminal or ssh session closed): 128 + its number
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + its number, as shells report it
EXIT_TERMINATED = 143  # SIGTERM (timeout, systemd, Kubernetes, Airflow): 128 + its number
STOPPED = (
    "what each finished step committed stays, the step under way was rolled back; run the "
    "command again to go on"
)
INTERRUPTED = f"interrupted: {STOPPED}"
TERMINATED = f"terminated (SIGTERM): {STOPPED}"
HUNG_UP = f"hung up (SIGHUP: its terminal closed): {STOPPED}"
MASK = "***"
# What no message shows, whatever secrets a script knows of: a URL's password (user:password@,
# any scheme; up to the last '@' of the line's next 8,192 characters, for a password written raw
# may hold '@' and spaces, and a cloud database's access token used as a password runs to 4 KB: a
# later '@' masks more than need be, never less), also in a URL typed without its '://' (s3:/,
# s3:, s3//: a folder's name then, which a message may quote) of a scheme a user gives these
# scripts (PostgreSQL's, extract.STORES', which imports this module, and their kin s3a, abfss
# and http(s)), the value of libpq's password options and of PGPASSWORD= (quoted or not), and a
# signed URL's or SAS token's credentials in its query. The bounds, and a scheme tried only from
# the start of a run of the characters a scheme holds (or from one of those), keep the search
# linear in the message's length. In a value the user gave (an argument, --data), a password may
# hold newlines too: CREDENTIALS_IN_A_VALUE reads past them, and an unquoted password option's
# value runs on over spaces to the next word like key= (a passphrase typed unquoted).
KNOWN_SCHEMES = r"(?:postgres(?:ql)?|s3a?|gs|gcs|az|abfss?|https?)"
SIGNED_QUERY_NAMES = (
    r"x-amz-(?:credential|signature|security-token)|x-goog-(?:credential|signature)"
    r"|signature|awsaccesskeyid|sig|access_token"
)


def _credentials(unquoted: str) -> str:
    """CREDENTIALS' pattern, an unquoted password option's value matched by unquoted."""
    return (
        r"(?P<url>(?:(?<![A-Za-z0-9+.-])[A-Za-z0-9+.-]+://"
        rf"|{KNOWN_SCHEMES}(?::/{{0,2}}|/{{1,2}}))[^\s/?#:]{{0,256}}):.{{0,8192}}@"
        r"|(?P<option>(?:pg)?(?:ssl)?password\s*=\s*)"
        rf"(?:'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|{unquoted})"
        rf"|(?P<query>(?<=[?&])(?:{SIGNED_QUERY_NAMES})=)[^&\s#;'\"]*"
    )


CREDENTIALS = re.compile(_credentials(r"\S+"), re.IGNORECASE)
CREDENTIALS_IN_A_VALUE = re.compile(
    _credentials(r"\S+(?:\s+(?!\w+\s*=)\S+)*"), re.IGNORECASE | re.DOTALL
)


def _code_points(exc: UnicodeEncodeError) -> tuple[str, int]:
    """Characters an output's encoding cannot take, each as its code point: \\u00e9 for é, never
    \\xe9, which a path writes for a byte that is not UTF-8 (extract.path_text)."""
    shown = [
        f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
        for char in exc.object[exc.start : exc.end]
    ]
    return "".join(shown), exc.end


CODE_POINT_ESCAPE = "sparkify-code-points"
codecs.register_error(CODE_POINT_ESCAPE, _code_points)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, and so ended alike."""


class HungUp(Terminated):
    """SIGHUP (a terminal or ssh session closed under a run), ended as SIGTERM is."""


# The stops (signal numbers) the running command received, latest last, and what each raises.
_STOPS: list[int] = []
STOP_EXCEPTIONS = {
    signal.SIGINT: KeyboardInterrupt,
    signal.SIGTERM: Terminated,
    signal.SIGHUP: HungUp,
}


# The sections under way that a stop does not end at once, innermost last: each stops_held's
# list of the stops it holds back, or None where the command's outcome is known (_outcome_known).
_HELD: list[list[int] | None] = []


def _stopped(signal_number: int, frame) -> None:
    """Ctrl-C's and SIGTERM's handler: the stop recorded (stop_received), then raised, unless
    a section under way holds it back."""
    _STOPS.append(signal_number)
    if not _HELD:
        raise STOP_EXCEPTIONS[signal_number]
    if _HELD[-1] is not None:
        _HELD[-1].append(signal_number)


@contextlib.contextmanager
def stops_held() -> Generator[None, None, None]:
    """A section a stop (Ctrl-C, SIGTERM) does not cut in two, such as the start or the killing
    of processes that must not outlive the command: a stop that comes during it is raised as it
    ends, in place of any error it ends with. In the main thread, where stops are raised (a
    section elsewhere has nothing to hold)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    _HELD.append(held)
    try:
        yield
    finally:
        _HELD.pop()
        if held:
            raise STOP_EXCEPTIONS[held[-1]]


@contextlib.contextmanager
def _outcome_known() -> Generator[None, None, None]:
    """A section that writes the command's outcome, known: a stop that comes during it changes
    nothing (it is recorded only), where it would cut the report in two. The signals are
    blocked in this thread meanwhile, so that none cuts a write short either."""
    _HELD.append(None)
    try:
        with stops_blocked():
            yield
    finally:
        _HELD.pop()


@contextlib.contextmanager
def stops_blocked() -> Generator[None, None, None]:
    """Ctrl-C and SIGTERM blocked in this thread meanwhile, and in the threads and processes it
    starts, which keep the mask: the kernel hands them to a thread that does not block them, or
    keeps them until the mask is restored."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_EXCEPTIONS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def finish(main: Callable[[], int]) -> NoReturn:
    """A script's main() run, and the script ended with its exit code. Ctrl-C and SIGTERM are
    ignored from then on: the outcome is written, and a stop during Python's shutdown would print
    a traceback there, or end the process by the signal, against the exit code said."""
    try:
        code = main()
    finally:
        for stop in STOP_EXCEPTIONS:
            signal.signal(stop, signal.SIG_IGN)
    sys.exit(code)


class UserError(Exception):
    """A problem the user must fix outside this program; its message is safe to print. Its exit
    code is its class's, unless given."""

    exit_code = EXIT_ENVIRONMENT

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class OutputGone(Exception):
    """Standard output's reader has gone (output piped into `head`, say): nothing more is said,
    and the script exits with what it knew of its outcome."""

    def __init__(self, exit_code: int):
        super().__init__("standard output's reader has gone")
        self.exit_code = exit_code


def write_out(text: str, done: str, stream: TextIO | None = None, exit_code: int = EXIT_OK) -> None:
    """A script's result on standard output (or stream), flushed. exit_code is the script's own
    (a failed run's, 1), which stays whatever becomes of the output: standard output that
    cannot take it (its disk full, or closed when the script started) is a UserError saying
    what is done all the same, exit 3 unless the script's own says more; a pipe whose reader
    has gone (output piped into `head`) is left to run_command, carrying exit_code."""
    stream = stream or sys.stdout
    try:
        if stream is None:  # started with standard output closed (>&-)
            raise OSError(errno.EBADF, "it is closed")
        with _outcome_known():
            print(text, file=stream)
            stream.flush()
    except BrokenPipeError:
        discarded(stream)
        raise OutputGone(exit_code) from None
    except OSError as exc:
        discarded(stream)
        said = f"cannot write to standard output ({exc.strerror or exc}): {done}"
        raise UserError(said, exit_code or EXIT_ENVIRONMENT) from None


def discarded(stream: TextIO | None) -> None:
    """What the stream still holds, and anything written to it later, goes to os.devnull: it
    could not be written where it was going. Python flushes standard output and error as it
    exits, and a flush that fails there makes the exit code 120, whatever the script's own."""
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no file descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def one_line(text: str) -> str:
    """A message's lines joined, for the one line an error gets (a line ending in ':' runs on
    into the next)."""
    joined = ""
    for line in filter(None, map(str.strip, text.splitlines())):
        joined += ((" " if joined.endswith(":") else "; ") + line) if joined else line
    return joined


def noted(error: E, cause: BaseException) -> E:
    """error, with the notes added to the exception it stands for (what the run did about it),
    and the run it stopped."""
    for note in getattr(cause, "__notes__", ()):
        error.add_note(note)
    return stopping(error, run_of(cause))


def stopping(error: E, run_id: int | None) -> E:
    """error, as what stopped the run run_id (its row in load_runs; None: no run started), for
    the JSON object of a run that stops."""
    if run_id is not None:
        error.run_id = run_id
    return error


def run_of(error: BaseException) -> int | None:
    """The run error stopped (see stopping)."""
    return getattr(error, "run_id", None)


def many(n: int, one: str, several: str) -> str:
    """n and what it counts, in the singular for one."""
    return f"{n} {one if n == 1 else several}"


def utf8_name(path: str) -> str:
    """A path as os functions give it (its bytes decoded in the locale's encoding), as its bytes
    read as UTF-8 (bytes that are not UTF-8 as surrogates): what libpq and the manifest take,
    whatever the locale's encoding."""
    if sys.getfilesystemencoding() == "utf-8":
        return path
    try:
        return os.fsencode(path).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # text that was never a name on disk
        return path


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def masked(
    text: str,
    secrets: Collection[str] = (),
    public: Collection[str] = (),
    a_value: bool = False,
) -> str:
    """The text with every occurrence of each secret replaced by ***, the longest first (so a
    secret holding another is masked whole), but one lying inside an occurrence of a public text
    (a host, role or database name that messages show anyway, where *** would only tell what the
    password is), and every credential (CREDENTIALS) too; a_value: the text is one value the
    user gave, its credentials read across lines (CREDENTIALS_IN_A_VALUE)."""
    if secrets := [secret for secret in secrets if secret]:
        inside = [
            (found.start(), found.start() + len(name))
            for name in filter(None, public)
            for found in re.finditer(f"(?={re.escape(name)})", text)
        ]
        text = re.sub(
            "|".join(map(re.escape, sorted(secrets, key=len, reverse=True))),
            lambda m: m[0] if any(a <= m.start() and m.end() <= b for a, b in inside) else MASK,
            text,
        )
    return (CREDENTIALS_IN_A_VALUE if a_value else CREDENTIALS).sub(
        lambda m: f"{m['url']}:{MASK}@" if m["url"] else f"{m['option'] or m['query']}{MASK}",
        text,
    )


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (which quote the arguments) show no credential: a URL
    or a key=value string typed after a misspelt option, say. An argument holding one is masked
    whole, as typed and as argparse quotes it (a password's quotes, spaces or newlines would
    end a credential's mask early). An option is named whole: `--f` is no --full-refresh."""

    given: tuple[str, ...] = ()

    def __init__(self, *args, **options):
        super().__init__(*args, allow_abbrev=False, **options)

    def parse_known_args(self, args=None, namespace=None):
        self.given = tuple(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        values = {arg.partition("=")[2] if arg.startswith("--") else arg for arg in self.given}
        holding = [value for value in values if CREDENTIALS_IN_A_VALUE.search(value)]
        super().error(masked(message, [*holding, *(repr(value)[1:-1] for value in holding)]))


@contextlib.contextmanager
def printed_exceptions_dropped():
    """An exception a library prints instead of raising (through sys.excepthook) is not shown:
    psycopg2 prints one when a connection is lost in the middle of a COPY (a second error while
    the first is pending, with the row it was at), and raises the error that ends the run. The
    exceptions dropped are yielded, a list, for that error to say what happened first (the
    server's words: a full disk, say)."""
    shown = sys.excepthook
    dropped: list[BaseException] = []
    sys.excepthook = lambda kind, value, traceback: dropped.append(value)
    try:
        yield dropped
    finally:
        sys.excepthook = shown


# What the stop relay runs when Ctrl-C or SIGTERM arrives: the running command's on_stop.
_ON_STOP: list[Callable[[], None]] = []


@functools.cache
def _stop_relay() -> None:
    """Python runs a signal's handler in the main thread, between two of its instructions: a
    main thread waiting in a C library (libpq, for its statement's result) hears of Ctrl-C or
    SIGTERM only once that returns. Each signal is also written to a pipe (set_wakeup_fd), which
    a thread of its own reads, running _ON_STOP at once: it may end that wait (a statement
    cancelled on the server), and the handler then stops the command. Set up once, from the
    main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def relay() -> None:
        while received := os.read(read_end, 512):
            if stops := [number for number in received if number in STOP_EXCEPTIONS]:
                _STOPS.extend(stops)
                for on_stop in list(_ON_STOP):
                    with contextlib.suppress(Exception):  # a help, not a step: the stop goes on
                        on_stop()

    # The thread starts with both signals blocked, and keeps them so: the kernel hands them to
    # a thread that does not block them, and one blocking them as it starts the parse workers
    # (workers.Preparer) must get them after.
    with stops_blocked():
        threading.Thread(target=relay, name="stop relay", daemon=True).start()


def stop_received() -> BaseException | None:
    """The last stop (Ctrl-C, SIGTERM) the running command received (its handler records it,
    and so does the relay, which may read it first), as the handler raises it
    (KeyboardInterrupt, Terminated); None if none. The error of a statement its on_stop cancelled
    stands for it, and so does a COPY's ended by the stop: the handler's exception, raised in
    the COPY's read of its data, psycopg2 replaces with the server's error."""
    return STOP_EXCEPTIONS[_STOPS[-1]]() if _STOPS else None


def run_command(
    action: Callable[[], int],
    secrets: Collection[str] = (),
    as_json: bool = False,
    public: Collection[str] = (),
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Run a script's work and return its exit code. Every message it ends with goes out here,
    with the secrets masked (but inside the public texts: see masked): a UserError, Ctrl-C or
    SIGTERM as one line, anything else (a bug) as its traceback. With as_json (a script whose
    report is JSON), stdout gets one JSON object for a run that ends so too: its status, exit
    code and error (the message's first line). on_stop runs as soon as Ctrl-C or SIGTERM
    arrives, in another thread (_stop_relay): what ends a wait outside Python."""
    for stream in (sys.stdout, sys.stderr):  # a character the locale cannot show, escaped
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=CODE_POINT_ESCAPE)
    if threading.current_thread() is threading.main_thread():  # where Python runs handlers
        signal.signal(signal.SIGTERM, _stopped)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored
            signal.signal(signal.SIGINT, _stopped)
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # not ignored (nohup)
            signal.signal(signal.SIGHUP, _stopped)
        _stop_relay()
    _ON_STOP[:] = [on_stop] if on_stop else []
    _STOPS.clear()
    _HELD.clear()
    try:
        with printed_exceptions_dropped():
            return action()
    except UserError as exc:  # and what was done about it (its notes)
        message = "; ".join([f"error: {exc}", *getattr(exc, "__notes__", ())])
        code, stopped = exc.exit_code, exc
    except HungUp as exc:
        message, code, stopped = f"error: {HUNG_UP}", EXIT_HUNG_UP, exc
    except Terminated as exc:
        message, code, stopped = f"error: {TERMINATED}", EXIT_TERMINATED, exc
    except KeyboardInterrupt as exc:
        message, code, stopped = f"error: {INTERRUPTED}", EXIT_INTERRUPTED, exc
    except OutputGone as exc:
        sys.stderr.close()  # nothing left to say
        return exc.exit_code  # what write_out knew of the outcome
    except BrokenPipeError:  # a reader gone before the command ended: it did not finish
        sys.stderr.close()
        return EXIT_FAILED
    except Exception as exc:
        message, code, stopped = traceback.format_exc(), EXIT_FAILED, exc
    finally:
        _ON_STOP.clear()
    try:
        with _outcome_known():
            shown = masked(message, secrets, public).rstrip("\n")  # masked whole, then trimmed
            if sys.stderr is not None:  # None: started with it closed (print would use stdout)
                print(shown, file=sys.stderr)
            if as_json:
                error = (
                    shown.removeprefix("error: ") if code != EXIT_FAILED else shown.splitlines()[-1]
                )
                ended = {"run_id": run_of(stopped), "status": "failed", "exit_code": code}
                print(json.dumps({**ended, "error": error}, indent=2))
                if sys.stdout is not None:  # None: started with it closed
                    sys.stdout.flush()
    except OSError:  # unwritable output: the exit code says it
        discarded(sys.stderr)
        discarded(sys.stdout)
    return code


def positive(text: str) -> int:
    """argparse type: a whole number from 1 up."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def natural_at_most(text: str, most: int, why: str) -> int:
    """argparse type's body: a whole number from 0 to most (why: what sets that bound)."""
    value = natural(text)
    if value > most:
        raise argparse.ArgumentTypeError(f"{value} is more than {most} ({why})")
    return value


def natural(text: str) -> int:
    """argparse type: a whole number from 0 up."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 up")
    return int(text)
