"""``eventbus control``: act on a running session from another process.

::

    eventbus control DIR SESSION pending [--json]
    eventbus control DIR SESSION pause|resume [--reason TEXT]
    eventbus control DIR SESSION abort [--reason TEXT]
    eventbus control DIR SESSION answer QUESTION_ID TEXT
    eventbus control DIR SESSION approve|reject REQUEST_ID [--reason TEXT]
      each also takes --id COMMAND_ID, --wait SECONDS (default 10; 0: do not wait), --json

A command is appended to the session's inbox (``DIR/SESSION/control.jsonl``,
see :func:`~eventbus.coordinator.submit_command`); the coordinator running
the session applies it and logs the outcome, which this command waits for.
Exit status: 0 applied (or queued, with ``--wait 0``); 2 rejected, bad
input, or a session that has ended or does not exist (one line on stderr
saying why); 3 not applied within ``--wait`` seconds (no coordinator took
it). A command id sent again (``--id``) that was already decided prints its
first outcome. ``pending`` lists what the session waits for from a person;
with ``--json`` one JSON object per line, ``{"kind", "id", "task_id",
"role", "text"}``; for a session that has ended it prints nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from sinks.workspace import UnknownCommandError, Workspace

from ..coordinator._commands import Command, submit_command
from ._common import CommandError, Subparsers, table

__all__ = ["DEFAULT_WAIT", "EXIT_NOT_APPLIED", "EXIT_REJECTED", "add_parser", "run"]

#: How long a command waits for its outcome by default, in seconds.
DEFAULT_WAIT = 10.0
#: The exit status of a rejected command (as for bad input).
EXIT_REJECTED = 2
#: The exit status of a command no coordinator applied within ``--wait``.
EXIT_NOT_APPLIED = 3

_POLL = 0.02  # seconds between two looks at the log while waiting
_ACTIONS = ("pending", "pause", "resume", "abort", "answer", "approve", "reject")


class _OneLineParser(argparse.ArgumentParser):
    """Bad input is one line on stderr and exit status 2, without the usage text."""

    def error(self, message: str) -> NoReturn:
        print(f"eventbus control: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _wait_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


def add_parser(subparsers: Subparsers) -> None:
    """Add ``eventbus control`` to ``subparsers``."""
    control = subparsers.add_parser(
        "control",
        help="act on a running session: pause, resume, abort, answer, approve, reject",
        description="Send a command to a running session through its inbox "
        "(DIR/SESSION/control.jsonl) and wait for the coordinator's outcome. Exit status: "
        "0 applied (or queued with --wait 0), 2 rejected or bad input or a session that has "
        "ended or does not exist, 3 not applied within --wait seconds.",
    )
    control.__class__ = _OneLineParser
    control.add_argument("dir", metavar="DIR", type=Path, help="the workspace directory")
    control.add_argument("session", metavar="SESSION", help="the session id")
    actions = control.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_OneLineParser
    )
    helps = {
        "pending": "list the questions and approvals waiting for a person",
        "pause": "let running model calls and commands finish, start nothing new",
        "resume": "resume a paused session",
        "abort": "stop now: cancel model calls, kill commands, end the session aborted",
        "answer": "answer a pending question",
        "approve": "approve a pending approval request",
        "reject": "reject a pending approval request (the gate blocks)",
    }
    for action in _ACTIONS:
        parser = actions.add_parser(action, help=helps[action], description=helps[action])
        if action == "answer":
            parser.add_argument("target", metavar="QUESTION_ID", help="the question's id")
            parser.add_argument("text", metavar="TEXT", help="the answer")
        elif action in ("approve", "reject"):
            parser.add_argument("target", metavar="REQUEST_ID", help="the request's id")
        if action in ("pause", "resume", "abort", "approve", "reject"):
            parser.add_argument(
                "--reason", default=None, metavar="TEXT", help="why (logged with the outcome)"
            )
        if action != "pending":
            parser.add_argument(
                "--id",
                dest="command_id",
                metavar="COMMAND_ID",
                default=None,
                help="the command's id (default: a new one); sending an id again "
                "applies it at most once and prints its outcome",
            )
            parser.add_argument(
                "--wait",
                type=_wait_time,
                default=DEFAULT_WAIT,
                metavar="SECONDS",
                help=f"how long to wait for the outcome (default: {DEFAULT_WAIT:g}; "
                "0: queue it and return)",
            )
        parser.add_argument("--json", action="store_true", help="print JSON")
    control.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``eventbus control``; return the exit status."""
    workspace = Workspace(args.dir, index=False)
    if args.action == "pending":
        return _pending(workspace, args)
    fields: dict[str, Any] = {"kind": args.action, "actor": "cli"}
    for name in ("target", "text", "reason", "command_id"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    command = Command(**fields)
    status = _status(workspace, args.session, command.command_id)
    if status is None:
        if workspace.session_ended(args.session):
            raise CommandError(
                f"session {args.session!r} has ended: it takes no more commands "
                f"({command.kind} was not sent)"
            )
        submit_command(args.dir, args.session, command)
        status = {
            "command_id": command.command_id,
            "kind": command.kind,
            "status": "queued",
            "reason": None,
        }
    deadline = time.monotonic() + args.wait
    while status["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(_POLL)
        status = _status(workspace, args.session, command.command_id) or status
    return _report(status, args)


def _status(workspace: Workspace, session_id: str, command_id: str) -> dict[str, Any] | None:
    try:
        return workspace.command_status(session_id, command_id)
    except UnknownCommandError:
        return None


def _report(status: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(status))
    what = f"{status['kind']} (command {status['command_id']})"
    if status["status"] == "applied":
        if not args.json:
            print(f"applied: {what}")
        return 0
    if status["status"] == "rejected":
        print(f"eventbus control: rejected: {what}: {status['reason']}", file=sys.stderr)
        return EXIT_REJECTED
    if args.wait == 0:
        if not args.json:
            print(f"queued: {what}")
        return 0
    print(
        f"eventbus control: not applied within {args.wait:g}s: {what} is queued in the "
        f"inbox of session {args.session!r}, but no coordinator took it (is the session "
        "running?)",
        file=sys.stderr,
    )
    return EXIT_NOT_APPLIED


def _pending(workspace: Workspace, args: argparse.Namespace) -> int:
    items = workspace.pending(args.session)
    if args.json:
        for item in items:
            print(json.dumps(item))
        return 0
    if not items:  # nothing, as for a session that has ended
        return 0
    rows = [
        [item["kind"], item["id"], item["task_id"] or "", item["role"] or "", item["text"]]
        for item in items
    ]
    print(table(["kind", "id", "task", "role", "text"], rows, "lllll"))
    return 0
