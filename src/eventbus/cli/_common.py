"""What every ``eventbus`` command shares: the subparsers type, user errors, output helpers.

A command module exposes ``add_parser(subparsers: Subparsers) -> None``, which
adds its parser and calls ``parser.set_defaults(run=<function(args) -> int>)``.
``run`` returns the exit status; a user error (bad input, a missing extra, a
workspace that cannot be used) is raised as an :class:`~eventbus.EventBusError`
(for instance :class:`CommandError`), which ``main`` prints as one line on
stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import anyio
from anyio.abc import TaskStatus

from .._errors import EventBusError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "CommandError",
    "MissingExtraError",
    "Subparsers",
    "captured_logs",
    "console",
    "count",
    "import_extra",
    "interruptible",
    "port",
    "positive",
    "seconds",
    "table",
]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(EventBusError):
    """A command cannot do what was asked; ``main`` prints the message and exits with 2.

    :param message: one line saying what happened and what to do.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class MissingExtraError(EventBusError, ImportError):
    """A command needs an optional dependency that is not installed."""

    def __init__(self, module: str, extra: str, command: str) -> None:
        self.module = module
        self.extra = extra
        self.command = command
        super().__init__(
            f"{command} needs {module}, which is not installed: pip install 'eventbus[{extra}]'"
        )


def import_extra(module: str, *, extra: str, command: str) -> ModuleType:
    """Import ``module`` from an extra, or raise :class:`MissingExtraError` naming the extra.

    :param module: the module to import, e.g. ``"rich.console"``.
    :param extra: the extra that installs it, e.g. ``"web"``.
    :param command: what needs it, for the message, e.g. ``"eventbus tail"``.
    :raises MissingExtraError: the module (or a module it needs) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:  # ModuleNotFoundError, or None in sys.modules
        raise MissingExtraError(module.partition(".")[0], extra, command) from error


def console(file: IO[str], *, command: str) -> Console:
    """A ``rich`` console on ``file``: colour only on a terminal and without ``NO_COLOR``.

    ``rich`` detects a pipe (plain output) and honours ``NO_COLOR`` itself;
    this also treats an empty ``NO_COLOR`` as unset, as https://no-color.org says.

    :raises MissingExtraError: ``rich`` is not installed (the ``web`` extra).
    """
    rich_console = import_extra("rich.console", extra="web", command=command)
    no_color = bool(os.environ.get("NO_COLOR"))
    result: Console = rich_console.Console(file=file, no_color=no_color, highlight=False)
    return result


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> str:
    """A plain-text table, two spaces indented, with a rule under the headers.

    :param headers: the column titles.
    :param rows: the cells (anything ``str()`` shows); each row as long as ``headers``.
    :param align: one letter per column: ``l`` (left) or ``r`` (right).
    """
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [
            cell.rjust(width) if side == "r" else cell.ljust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


class _Remember(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def captured_logs(*names: str) -> Iterator[list[str]]:
    """Keep the log lines (WARNING and up) of the loggers ``names`` off stderr.

    For libraries whose own logging would print several lines, or a
    traceback, where the command reports the failure in one line (the
    OpenTelemetry SDK's exporter, nats-py). Yields the messages, one line
    each, for that line to say why.
    """
    messages: list[str] = []
    handler = _Remember(messages)
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield messages
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate


@asynccontextmanager
async def interruptible() -> AsyncIterator[None]:
    """Run the body so that Ctrl-C cancels it cleanly, then raise :exc:`KeyboardInterrupt`.

    On trio a SIGINT otherwise raises wherever code happens to run (inside a
    sink, say); here the first SIGINT cancels the body on either backend, so
    its cleanup (e.g. a session's ``session_aborted``) runs, and a second
    SIGINT during that cleanup interrupts at once.

    :raises KeyboardInterrupt: after the body was cancelled by SIGINT.
    """
    interrupted = False

    async def watch(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        nonlocal interrupted
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                interrupted = True
                group.cancel_scope.cancel()
                return

    error: Exception | None = None
    async with anyio.create_task_group() as group:
        await group.start(watch)
        try:
            yield
        except Exception as exc:  # raised as itself below, not in an exception group
            error = exc
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        raise error
    if interrupted:
        raise KeyboardInterrupt


# --- argument types (argparse ``type=``): a bad value is argparse's usage error ----------


def count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    """A whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A number of seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {value}")
    return value
