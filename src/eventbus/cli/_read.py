"""``eventbus tail``, ``query``, ``sessions`` and ``usage``: reading a workspace.

Every command takes the workspace root ``DIR`` (``DIR/{session_id}/events.jsonl``;
default ``./workspaces``, where ``eventbus demo`` writes) and reads it through
:class:`sinks.workspace.Workspace`, never writing. A missing ``./workspaces``
has no sessions (empty answers); a missing ``DIR`` given is an error, except
to ``tail -f``, which waits for it to appear, as for a ``--session`` that has
not started yet. ``--type`` refuses a type that neither this version nor the
workspace's logs know (a typo would otherwise answer nothing). With
``--json`` the output is what the HTTP API returns: ``tail`` and ``query``
print each event's line exactly as its log stores it, ``sessions`` prints
``{"sessions": [...]}`` and ``usage`` the usage object. Without it, events
are one readable line each (time in UTC, session, phase, task, role, type,
message, tokens and cost when present) and summaries are tables (``rich`` on
a terminal; plain text when piped or with ``NO_COLOR`` uncoloured).

``tail`` prints the last ``-n`` events (default 20, as ``tail`` does; ``-n
0`` none); ``-f`` then follows every session, including new ones, printing
each event as it is written. Times (``--since``, ``--until``) are ISO 8601
(no offset means UTC) or a time ago (``30s``, ``10m``, ``2h``, ``3d``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anyio
import msgspec

from sinks.index import UnknownEventIdError
from sinks.workspace import (
    USAGE_ALIASES,
    USAGE_KEYS,
    UnknownEventTypeError,
    Workspace,
    parse_time,
)

from .._event import Event
from .._names import validate_session_id
from .._query import EventQuery
from ._common import CommandError, Subparsers, console, count, import_extra, positive, table

__all__ = ["DEFAULT_DIR", "add_parser", "event_line", "format_duration"]

#: The workspace root when DIR is not given: where ``eventbus demo`` writes.
DEFAULT_DIR = "workspaces"

_encode = msgspec.json.Encoder().encode


def add_parser(subparsers: Subparsers) -> None:
    """Add ``tail``, ``query``, ``sessions`` and ``usage``."""
    tail = subparsers.add_parser(
        "tail",
        help="print the latest events of a workspace; -f follows new ones",
        description="Print the last N events of every session (or one), oldest first; "
        "with -f, keep printing new events as they are written, in every session, "
        "including sessions that start later.",
    )
    _root(tail)
    _session(tail)
    _types(tail)
    tail.add_argument(
        "-n",
        "--lines",
        type=count,
        default=20,
        metavar="N",
        help="print the last N events (default 20; 0: none)",
    )
    tail.add_argument("-f", "--follow", action="store_true", help="print new events as they come")
    _json(tail, "print each event's JSON line exactly as stored")
    tail.set_defaults(run=run_tail, interrupted="stopped following")

    query = subparsers.add_parser(
        "query",
        help="print the events matching filters, in time order",
        description="Print the events matching every filter given, in time order.",
    )
    _root(query)
    _session(query)
    _types(query)
    query.add_argument("--phase", help="only events of this phase")
    query.add_argument("--task", metavar="ID", help="only events of this task")
    query.add_argument("--role", help="only events of this agent role")
    query.add_argument("--model", help="only events of this model")
    _times(query, "events")
    query.add_argument("--limit", type=positive, metavar="N", help="print at most N events")
    query.add_argument(
        "--after", metavar="ID", help="only events after the event with this id (the next page)"
    )
    _json(query, "print each event's JSON line exactly as stored")
    query.set_defaults(run=run_query)

    sessions = subparsers.add_parser(
        "sessions",
        help="list the sessions of a workspace, newest first",
        description="One row per session, newest first: status, phase, tasks done and "
        "failed, tokens, cost, start (UTC) and duration.",
    )
    _root(sessions)
    _times(sessions, "sessions started")
    _json(sessions, 'print {"sessions": [summary, ...]} as the API does')
    sessions.set_defaults(run=run_sessions)

    usage = subparsers.add_parser(
        "usage",
        help="LLM calls, tokens and cost, by model, role, task, session or phase",
        description="A table of LLM calls, tokens and cost (llm_response_received events "
        "only), one row per value of --by, most expensive first, and the total.",
    )
    _root(usage)
    _session(usage)
    usage.add_argument(
        "--by",
        choices=[*USAGE_KEYS, *USAGE_ALIASES],
        default="model",
        metavar="FIELD",
        help=f"group by this field: {', '.join(USAGE_KEYS)}, or role, task, session for "
        "short (default: model)",
    )
    _json(usage, "print the usage object the API returns")
    usage.set_defaults(run=run_usage)


# --- arguments -------------------------------------------------------------------------


def _root(parser: argparse.ArgumentParser) -> None:
    # The default is set by _dir, so that `--type a b DIR` works.
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        help=f"the workspace root (DIR/{{session_id}}/...; default: ./{DEFAULT_DIR}, "
        "where 'eventbus demo' writes)",
    )


def _session(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", metavar="ID", help="only this session")


def _types(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type",
        dest="types",
        action="append",
        nargs="+",
        type=_type_list,
        metavar="T",
        help="only events of these types (several after one --type, repeated, or "
        "separated by commas)",
    )


def _times(parser: argparse.ArgumentParser, what: str) -> None:
    help_ = "ISO 8601 (no offset: UTC) or a time ago: 30s, 10m, 2h, 3d"
    parser.add_argument("--since", metavar="T", help=f"only {what} at or after T ({help_})")
    parser.add_argument("--until", metavar="T", help=f"only {what} at or before T")


def _json(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--json", action="store_true", help=help_)


def _type_list(text: str) -> list[str]:
    types = [part.strip() for part in text.split(",") if part.strip()]
    if not types:
        raise argparse.ArgumentTypeError(f"expected an event type, got {text!r}")
    return types


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


def _dir(args: argparse.Namespace) -> str:
    """The workspace root; after ``--type a b`` argparse hands it over as the last type.

    Without DIR, :data:`DEFAULT_DIR` (``args.default_dir`` is then true).
    """
    if args.dir is None:
        groups = getattr(args, "types", None)
        if groups and len(groups[-1]) > 1 and os.path.isdir(groups[-1][-1][-1]):
            args.dir = groups[-1].pop()[-1]
        else:
            args.dir = DEFAULT_DIR
            args.default_dir = True
    directory: str = args.dir
    return directory


def _flat_types(args: argparse.Namespace) -> list[str] | None:
    groups: list[list[list[str]]] | None = args.types
    if not groups:
        return None
    return [kind for values in groups for value in values for kind in value]


def _workspace(args: argparse.Namespace, *, missing_ok: bool = False) -> Workspace:
    """The workspace of DIR; a missing DIR is an error unless it is the default (or
    ``missing_ok``): it then has no sessions."""
    _dir(args)
    if not (missing_ok or getattr(args, "default_dir", False) or os.path.isdir(args.dir)):
        raise CommandError(
            f"no workspace directory at {args.dir!r}: give the directory that holds "
            "one directory per session ({session_id}/events.jsonl)"
        )
    return Workspace(args.dir, index=False)  # one query: read the logs once, keep nothing


def _check_types(workspace: Workspace, args: argparse.Namespace, seen: Iterable[str]) -> None:
    """Refuse a --type neither this version nor the logs know (``seen``: types found)."""
    try:
        workspace.check_types(_flat_types(args), seen=seen)
    except UnknownEventTypeError as error:
        raise CommandError(
            f"--type {','.join(error.types)}: no such event type in this version or in "
            f"the workspace's logs; known types: {', '.join(error.known)}"
        ) from error


def _types_of(found: Iterable[tuple[Event, bytes]]) -> set[str]:
    return {event.event_type.value for event, _ in found}


def _unknown_after(after: str) -> CommandError:
    return CommandError(
        f"--after {after}: no event with that id in the workspace; take an id from "
        "`eventbus query --json` (or the --after that the previous page printed)"
    )


def _note(args: argparse.Namespace, text: str) -> None:
    print(f"eventbus {args.command}: {text}", file=sys.stderr, flush=True)


def _query(args: argparse.Namespace) -> EventQuery:
    _dir(args)  # takes DIR back from the types if argparse gave it to them
    return EventQuery(
        event_type=_flat_types(args),
        phase=getattr(args, "phase", None),
        task_id=getattr(args, "task", None),
        agent_role=getattr(args, "role", None),
        model=getattr(args, "model", None),
        start_time=_time(getattr(args, "since", None)),
        end_time=_time(getattr(args, "until", None)),
    )


# --- events ----------------------------------------------------------------------------


def _cell(value: str | None) -> str:
    return "-" if value is None else value


def event_line(event: Event) -> str:
    """One readable line: UTC time, session, phase, task, role, type, message, tokens, cost."""
    parts = [
        event.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        event.session_id,
        _cell(event.phase),
        _cell(event.task_id),
        _cell(event.agent_role),
        event.event_type.value,
        " ".join(event.message.split()) or '""',
    ]
    metadata = event.metadata
    prompt, completion = metadata.get("prompt_tokens"), metadata.get("completion_tokens")
    if isinstance(prompt, int) or isinstance(completion, int):
        total = metadata.get("total_tokens")
        if not isinstance(total, int):
            total = (prompt if isinstance(prompt, int) else 0) + (
                completion if isinstance(completion, int) else 0
            )
        parts.append(f"tokens={total}")
    cost = metadata.get("cost_usd")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        parts.append(f"cost=${cost:.4f}")
    return "  ".join(parts)


class _Printer:
    """Prints events to stdout, readable or as stored; flushes after each (for ``-f``)."""

    def __init__(self, as_json: bool, *, flush: bool) -> None:
        self.as_json = as_json
        self.flush = flush
        self.text: IO[str] = sys.stdout
        self.binary: IO[bytes] | None = getattr(sys.stdout, "buffer", None) if as_json else None

    def pairs(self, found: Sequence[tuple[Event, bytes]]) -> None:
        if self.as_json:
            self.lines([line for _, line in found])
        else:
            self.text.write("".join(event_line(event) + "\n" for event, _ in found))
            self._flush()

    def pair(self, event: Event, line: bytes) -> None:
        if self.as_json:
            self.lines([line])
        else:
            self.text.write(event_line(event) + "\n")
            self._flush()

    def lines(self, lines: Sequence[bytes]) -> None:
        if self.binary is None:  # a text-only stdout: the lines are UTF-8 JSON
            self.text.write("".join(line.decode() + "\n" for line in lines))
        else:
            self.text.flush()
            self.binary.write(b"".join(line + b"\n" for line in lines))
        self._flush()

    def _flush(self) -> None:
        if self.flush:
            self.text.flush()
            if self.binary is not None:
                self.binary.flush()


def run_tail(args: argparse.Namespace) -> int:
    """``eventbus tail``: the last ``-n`` events, then (``-f``) new ones as they come."""
    workspace = _workspace(args, missing_ok=args.follow)
    query = _query(args)
    printer = _Printer(args.json, flush=args.follow)
    if not args.follow:
        found = workspace.latest_lines(args.lines, query, session_id=args.session)
        _check_types(workspace, args, _types_of(found))
        printer.pairs(found)
        return 0
    anyio.run(_follow, args, workspace, query, printer)
    return 0


async def _follow(
    args: argparse.Namespace, workspace: Workspace, query: EventQuery, printer: _Printer
) -> None:
    """``tail -f``: wait for DIR and the session if they do not exist yet, then follow."""
    if not workspace.root.is_dir():
        _note(args, f"waiting for the workspace directory {str(workspace.root)!r} to appear")
        await _wait_for_directory(workspace.root)
    session: str | None = args.session
    if session is not None:
        validate_session_id(session)
    started = session is None or session in workspace.session_ids()
    if not started:
        _note(args, f"waiting for the session {session!r} to start")
    # Follow from just before the last n: the follow replays them, then goes live,
    # with nothing missed or printed twice in between. Every event of a session
    # that had not started is new.
    n: int = args.lines
    before = workspace.latest(n + 1, query, session_id=session) if n and started else []
    _check_types(workspace, args, {event.event_type.value for event in before})
    after = before[0].id if len(before) == n + 1 else None
    lines = workspace.follow_lines(
        query,
        session_id=session,
        after=after,
        from_start=n > 0 or not started,
        wait_for_session=True,
    )
    async with aclosing(lines):
        async for event, line in lines:
            printer.pair(event, line)


async def _wait_for_directory(path: Path) -> None:
    """Return once ``path`` is a directory (watching its parent for its creation)."""
    watchfiles = import_extra("watchfiles", extra="web", command="eventbus tail -f")
    target = await anyio.Path(path).absolute()
    if not await target.parent.is_dir():
        raise CommandError(
            f"no workspace directory at {str(path)!r}, nor its parent {str(target.parent)!r}"
        )
    watcher = watchfiles.awatch(
        target.parent,
        watch_filter=lambda _change, changed: changed == str(target),
        recursive=False,
        rust_timeout=1000,  # and look again every second: made before the watcher started?
        yield_on_timeout=True,
    )
    async with aclosing(watcher):
        if await target.is_dir():
            return
        async for _ in watcher:
            if await target.is_dir():
                return


def run_query(args: argparse.Namespace) -> int:
    """``eventbus query``: the matching events in time order."""
    workspace = _workspace(args)
    try:
        found, next_id = workspace.event_lines(
            _query(args), session_id=args.session, after=args.after, limit=args.limit
        )
    except UnknownEventIdError as error:
        raise _unknown_after(error.event_id) from error
    _check_types(workspace, args, _types_of(found))
    _Printer(args.json, flush=False).pairs(found)
    if next_id is not None:
        print(
            f"eventbus query: showing the first {len(found)} events; more match "
            f"(next page: --after {next_id})",
            file=sys.stderr,
        )
    return 0


# --- tables ----------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``12.3s``, ``4m 05s``, ``2h 03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _started(text: str | None) -> str:
    if text is None:
        return "-"
    try:
        return parse_time(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def _print_table(
    title: str, headers: list[str], rows: list[list[Any]], align: str, command: str
) -> None:
    out = console(sys.stdout, command=command)
    if not out.is_terminal:
        print(table(headers, rows, align))
        return
    from rich.table import Table  # rich is there: console() imported it

    grid = Table(title=title, title_justify="left")
    for header, side in zip(headers, align, strict=True):
        grid.add_column(header, justify="right" if side == "r" else "left")
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    out.print(grid)


def _dump(value: Any) -> None:
    sys.stdout.write(_encode(value).decode() + "\n")


def run_sessions(args: argparse.Namespace) -> int:
    """``eventbus sessions``: one row per session, newest first."""
    workspace = _workspace(args)
    sessions = workspace.sessions(since=_time(args.since), until=_time(args.until))
    if args.json:
        _dump({"sessions": sessions})
        return 0
    errors = any(s["error"] for s in sessions)
    rows = [
        [
            s["session_id"],
            s["status"] or "-",
            s["phase"] or "-",
            f"{s['tasks_completed']}/{s['tasks_failed']}",
            s["total_tokens"],
            f"${s['cost_usd']:.4f}",
            _started(s["started_at"]),
            format_duration(s["duration_s"]),
            *([s["error"] or ""] if errors else []),
        ]
        for s in sessions
    ]
    headers = ["session", "status", "phase", "tasks ok/failed", "tokens", "cost"]
    headers += ["started (UTC)", "duration", *(["error"] if errors else [])]
    align = "lllrrrlr" + ("l" if errors else "")
    _print_table(f"{len(sessions)} sessions", headers, rows, align, "eventbus sessions")
    return 0


def run_usage(args: argparse.Namespace) -> int:
    """``eventbus usage``: LLM calls, tokens and cost per value of ``--by``."""
    workspace = _workspace(args)
    usage = workspace.usage(args.by, session_id=args.session)
    if args.json:
        _dump(usage)
        return 0
    total = usage["total"]
    by: str = usage["by"]  # the field's name, for --by role too

    def cells(key: str, values: dict[str, Any]) -> list[Any]:
        return [
            key,
            values["calls"],
            values["prompt_tokens"],
            values["cached_tokens"],
            values["completion_tokens"],
            values["total_tokens"],
            f"${values['cost_usd']:.4f}",
        ]

    rows = [cells(_cell(row["key"]), row) for row in usage["rows"]]
    rows.append(cells("total", total))
    headers = [by, "calls", "prompt", "cached", "completion", "total tokens", "cost"]
    _print_table(f"LLM usage by {by}", headers, rows, "lrrrrrr", "eventbus usage")
    return 0
