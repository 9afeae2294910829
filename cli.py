"""What every command shares: a problem the user can fix is one line on stderr and an exit code,
never a traceback or a password."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import psycopg2

EXIT_ENVIRONMENT, EXIT_LOCKED = 3, 4


class UserError(Exception):
    """A problem the user must fix outside this program; its message is safe to print."""

    exit_code = EXIT_ENVIRONMENT


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_command(action: Callable[[], int]) -> int:
    """Run a script's work and return its exit code."""
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


def positive(text: str) -> int:
    """argparse type: a whole number from 1 up."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def natural(text: str) -> int:
    """argparse type: a whole number from 0 up."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 up")
    return int(text)
