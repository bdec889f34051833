"""The ``eventbus`` command line: the parser, the dispatch, and how it fails.

Each command lives in its own module of this package (named in
:data:`COMMANDS`), which exposes ``add_parser(subparsers)``; see
:mod:`eventbus.cli._common`. Exit statuses: 0 success, 1 the command ran
and reports a failure (e.g. the demo session failed), 2 a user error (one
line on stderr, never a traceback), 3 ``eventbus control``: a command no
coordinator applied in time, 130 interrupted (Ctrl-C, one line on
stderr), 141 stdout closed by its reader (``| head``: quietly, nothing on
stderr). A command may set ``interrupted`` (a hint for the Ctrl-C line) with
``set_defaults``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import cast

from .._errors import EventBusError, SinkFailedError
from ._common import Subparsers

__all__ = ["BROKEN_PIPE", "COMMANDS", "main", "parser"]

#: The exit status when stdout is closed by its reader: 128 + SIGPIPE, as the shell
#: reports a tool killed by SIGPIPE (``set -o pipefail`` sees the same as with ``yes``).
BROKEN_PIPE = 141

#: The command modules, in the order ``--help`` lists them: add one line per command.
COMMANDS: tuple[str, ...] = (
    "eventbus.cli._demo",
    "eventbus.cli._read",
    "eventbus.cli._serve",
    "eventbus.cli._relay",
    "eventbus.cli._otel",
    "eventbus.cli._control",
    "eventbus.cli._prune",
)


def _version() -> str:
    try:
        return version("eventbus")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    """The ``eventbus`` parser with every command of :data:`COMMANDS`."""
    result = argparse.ArgumentParser(
        prog="eventbus", description="An async event bus with pluggable sinks."
    )
    result.add_argument("--version", action="version", version=f"eventbus {_version()}")
    subparsers: Subparsers = result.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        add_parser = cast(Callable[[Subparsers], None], importlib.import_module(name).add_parser)
        add_parser(subparsers)
    return result


def _one_line(error: BaseException) -> str:
    if isinstance(error, SinkFailedError):  # its message speaks of the Python API
        parts = [f"sink {name!r} failed: {_one_line(exc)}" for name, exc in error.failures]
        parts += [
            f"sink {name!r} could not write session {session_id!r}: {_one_line(exc)}"
            for name, session_id, exc in error.sessions
        ]
        return "; ".join(parts)
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror}"
    return text or type(error).__name__


def _only(error: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, else ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _user_error(error: BaseException) -> BaseException | None:
    """The error to show in one line, if ``error`` (or every error of a group) is the user's.

    User errors are :class:`~eventbus.EventBusError` (bad input, a missing extra,
    a failed sink) and :class:`OSError` (a file or directory that cannot be used).
    """
    if isinstance(error, EventBusError | OSError):
        return error
    if isinstance(error, BaseExceptionGroup):
        leaves = [_user_error(inner) for inner in error.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return leaves[0]
    return None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no file descriptor (e.g. captured)
        pass


def _hold_standard_fds() -> None:
    """Open /dev/null on a closed stdin, stdout or stderr (``eventbus demo >&-``).

    Otherwise the next file opened would get that descriptor, and the output of
    commands run by the session would land in it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eventbus`` command line and return its exit status.

    :param argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    _hold_standard_fds()
    args = parser().parse_args(argv)
    run = cast(Callable[[argparse.Namespace], int], args.run)
    prefix = f"eventbus {args.command}:"
    try:
        status = run(args)
        if sys.stdout is not None:
            sys.stdout.flush()
    except BaseException as raised:
        error = _only(raised)
        if isinstance(error, KeyboardInterrupt):
            hint = getattr(args, "interrupted", "")
            print(f"{prefix} interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
            return 130
        if isinstance(error, BrokenPipeError):  # e.g. piped into `head`: stop quietly
            _quiet_stdout()
            return BROKEN_PIPE
        shown = _user_error(error)
        if shown is None:
            raise
        print(f"{prefix} {_one_line(shown)}", file=sys.stderr)
        return 2
    return status
