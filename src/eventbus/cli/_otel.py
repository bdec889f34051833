"""``eventbus export-otel``: send past sessions to an OpenTelemetry backend from their logs.

``eventbus export-otel DIR [--session ID]... [--endpoint URL] [--project NAME]
[--timeout SECONDS]``
reads ``DIR/{session_id}/events.jsonl`` and exports each session as one trace
with :class:`sinks.otel.OtelSink` (OTLP/HTTP). The trace and span ids derive
from the session and event ids, so running it twice, or after a live export,
sends the same spans again and the backend keeps one of each.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio
import anyio.to_thread

from .._errors import EventsLostError
from .._event import Event
from .._names import validate_session_id
from ._common import (
    CommandError,
    Subparsers,
    captured_logs,
    import_extra,
    interruptible,
    seconds,
)

if TYPE_CHECKING:
    from sinks.otel import OtelSink

__all__ = ["add_parser", "export_logs", "run"]

_COMMAND = "eventbus export-otel"
_CHUNK = 2048  # events read from a log at a time


def add_parser(subparsers: Subparsers) -> None:
    """Add ``eventbus export-otel`` to ``subparsers``."""
    export = subparsers.add_parser(
        "export-otel",
        help="send past sessions from their logs to an OpenTelemetry backend (OTLP/HTTP)",
        description=(
            "Export each session of DIR (DIR/{session_id}/events.jsonl) as one "
            "OpenTelemetry trace over OTLP/HTTP, with GenAI and OpenInference attributes. "
            "Ids derive from the session and event ids, so exporting again sends the same "
            "spans. Needs the otel extra: pip install 'eventbus[otel]'."
        ),
    )
    export.add_argument("workspace", type=Path, metavar="DIR", help="the workspace root")
    export.add_argument(
        "--session",
        action="append",
        default=None,
        metavar="ID",
        help="export only this session (repeat for more; default: every session of DIR)",
    )
    export.add_argument(
        "--endpoint",
        default=None,
        metavar="URL",
        help="the OTLP/HTTP receiver, e.g. http://localhost:6006 for Phoenix "
        "(/v1/traces is added to a URL without a path; default: OTEL_EXPORTER_OTLP_ENDPOINT, "
        "else http://localhost:4318)",
    )
    export.add_argument(
        "--project",
        default=None,
        metavar="NAME",
        help="the Phoenix project (resource attribute openinference.project.name)",
    )
    export.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="how long one export may take, retries included (default: "
        "OTEL_EXPORTER_OTLP_TIMEOUT, else 4)",
    )
    export.set_defaults(run=run, interrupted="the sessions exported so far were sent")


def run(args: argparse.Namespace) -> int:
    """Run ``eventbus export-otel``; return 0 once every session was sent."""
    import_extra("opentelemetry.sdk", extra="otel", command=_COMMAND)
    import_extra("opentelemetry.exporter.otlp.proto.http", extra="otel", command=_COMMAND)
    from sinks.otel import OtelSink

    root: Path = args.workspace
    if not root.is_dir():
        raise CommandError(f"workspace {root} is not a directory: pass the directory of the logs")
    sessions = _sessions(root, args.session)
    try:
        sink = OtelSink(args.endpoint, project=args.project, timeout=args.timeout)
    except ValueError as error:
        raise CommandError(f"--endpoint: {error}") from None
    with captured_logs("opentelemetry") as errors:
        try:
            anyio.run(_export, root, sessions, sink, sys.stdout)
        except EventsLostError as error:
            detail = f" ({_clip(errors[0])})" if errors else ""
            raise CommandError(
                f"could not export to {sink.where}: {error.lost} events were not sent"
                f"{detail}; check that an OTLP/HTTP receiver listens there (--endpoint) "
                "and run again (exporting again is harmless)"
            ) from None
    return 0


def _sessions(root: Path, chosen: Sequence[str] | None) -> list[str]:
    from sinks.jsonl import LOG_FILE_NAME
    from sinks.workspace import SessionNotFoundError, Workspace

    if chosen:
        for session_id in chosen:
            validate_session_id(session_id)
            if not (root / session_id / LOG_FILE_NAME).is_file():
                raise SessionNotFoundError(session_id, os.fspath(root))
        return list(dict.fromkeys(chosen))
    found = [sid for sid in Workspace(root).session_ids() if (root / sid / LOG_FILE_NAME).is_file()]
    if not found:
        raise CommandError(f"workspace {root} holds no session log (*/{LOG_FILE_NAME})")
    return found


async def export_logs(root: Path, sessions: Sequence[str], sink: OtelSink) -> dict[str, int]:
    """Feed each session's log under ``root`` to ``sink``; return the events read per session.

    The sink is not closed: its spans are exported when it is (``aclose``).
    """
    from sinks.jsonl import LOG_FILE_NAME, iter_log

    counts: dict[str, int] = {}
    for session_id in sessions:
        lines = iter_log(root / session_id / LOG_FILE_NAME)

        def chunk(lines: Iterator[tuple[Event, int, int]] = lines) -> list[Event]:
            return [event for event, _, _ in itertools.islice(lines, _CHUNK)]

        count = 0
        while events := await anyio.to_thread.run_sync(chunk):
            count += await sink.export(events)
        counts[session_id] = count
    return counts


async def _export(root: Path, sessions: Sequence[str], sink: OtelSink, out: TextIO) -> None:
    from sinks.otel import trace_id_for

    async with interruptible():
        try:
            counts = await export_logs(root, sessions, sink)
        finally:
            with anyio.CancelScope(shield=True):
                await sink.aclose()
    for session_id, count in counts.items():
        print(f"{session_id}: {count} events, trace {trace_id_for(session_id):032x}", file=out)
    noun = "session" if len(counts) == 1 else "sessions"
    print(f"exported {len(counts)} {noun} to {sink.where}", file=out)


def _clip(text: str, width: int = 300) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
