"""``eventbus prune``: remove whole ended sessions from a workspace, oldest end first.

::

    eventbus prune DIR [--older-than DAYS] [--max-bytes SIZE] [--stale DAYS] [--dry-run] [--json]

A session is ended when its log holds ``session_completed``,
``session_failed`` or ``session_aborted``, or when its log has not changed
for ``--stale`` days (7 by default); a running session is never removed (see
:func:`sinks.workspace.prune`). ``--older-than``: remove the sessions that
ended more than DAYS ago; ``--max-bytes``: remove the oldest until the
workspace holds at most SIZE (``500M``, ``2G``, ``1.5T``, or bytes; K, M, G,
T are powers of 1024); both: the older ones, then more until under SIZE;
neither: every ended session. Prints one line per session removed, then what
was freed; ``--dry-run`` prints what would be removed and removes nothing;
``--json`` prints the report as one JSON object. Exit status: 0 done, 1 some
sessions could not be removed (one line each on stderr), 2 bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path

import msgspec

from sinks.workspace import PrunedSession, PruneReport, prune

from ._common import CommandError, Subparsers

__all__ = ["add_parser", "human_size", "parse_size", "run"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """A size in bytes: ``500M``, ``2G``, ``1.5T``, ``4096``; K, M, G, T are powers of 1024."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 500M, 2G or a number of bytes, got {text!r}"
        )
    number, unit = match.groups()
    return int(float(number) * 1024 ** _POWERS[unit.lower()])


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more days, got {text!r}")
    return value


def add_parser(subparsers: Subparsers) -> None:
    """Add ``eventbus prune`` to ``subparsers``."""
    command = subparsers.add_parser(
        "prune",
        help="remove whole ended sessions, oldest end first",
        description="Remove whole ended sessions from a workspace, oldest end first. A "
        "session is ended when its log holds session_completed, session_failed or "
        "session_aborted, or has not changed for --stale days; a running session is never "
        "removed. With neither --older-than nor --max-bytes, every ended session is removed. "
        "Exit status: 0 done, 1 some sessions could not be removed, 2 bad input.",
    )
    command.add_argument("dir", metavar="DIR", type=Path, help="the workspace directory")
    command.add_argument(
        "--older-than",
        metavar="DAYS",
        type=_days,
        help="remove ended sessions whose end is older than DAYS days",
    )
    command.add_argument(
        "--max-bytes",
        metavar="SIZE",
        type=parse_size,
        help="remove ended sessions, oldest end first, until the workspace holds at most "
        "SIZE (500M, 2G, or bytes; K, M, G, T are powers of 1024)",
    )
    command.add_argument(
        "--stale",
        metavar="DAYS",
        type=_days,
        default=7.0,
        help="a session whose log has no terminal event is ended when the log has not "
        "changed for DAYS days (default: 7)",
    )
    command.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; remove nothing"
    )
    command.add_argument("--json", action="store_true", help="print the report as JSON")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prune the workspace; print what was removed and freed."""
    root: Path = args.dir
    if root.exists() and not root.is_dir():
        raise CommandError(f"{root} is not a directory: give the workspace's root")
    report = prune(
        root,
        older_than=None if args.older_than is None else timedelta(days=args.older_than),
        max_bytes=args.max_bytes,
        stale=timedelta(days=args.stale),
        dry_run=args.dry_run,
    )
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        _print(report)
    for session_id, problem in report.errors.items():
        print(f"eventbus prune: cannot remove {session_id}: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def _print(report: PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    for session in report.removed:
        print(f"{verb} {_describe(session)}")
    count = len(report.removed)
    if not count:
        print(f"nothing to remove; the workspace holds {human_size(report.before)}")
        return
    sessions = "session" if count == 1 else "sessions"
    freed = "freeing" if report.dry_run else "freed"
    print(
        f"{verb} {count} {sessions}, {freed} {human_size(report.freed)}; the workspace "
        f"{'would hold' if report.dry_run else 'holds'} {human_size(report.after)}"
    )


def _describe(session: PrunedSession) -> str:
    ended = session.ended_at.isoformat(timespec="seconds")
    return f"{session.session_id} ({session.status}, ended {ended}, {human_size(session.bytes)})"


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; under 1 KiB in bytes."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
