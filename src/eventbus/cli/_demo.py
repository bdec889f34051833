"""``eventbus demo``: an offline agent session, with its progress and a summary.

``eventbus demo [--workspace DIR] [--tasks N]`` runs the session of
:mod:`eventbus.coordinator._demo_agents` with the JSONL log and the artifact store as
sinks, prints a line per phase and per finished (or retried) task, then a
summary and where the files are: ``DIR/{session_id}/events.jsonl``,
``DIR/{session_id}/artifacts/`` and the project the agents wrote in
``DIR/{session_id}/project/``. Exit status: 0 the session completed, 1 it
failed, 2 a user error, 130 interrupted, 141 stdout was closed (``| head``):
the session is then aborted, as with Ctrl-C.

With ``--nats URL`` or ``--otel URL`` the events are also exported. The NATS
server is checked before the session starts (not reachable: one line, exit
2, nothing written). An export that fails during the session (the receiver
is down, the server stopped) does not stop it: the summary is printed, then
one line per failed export on stderr (what was not exported, why, what to
do), and the exit status is 1. The exporters' own log lines stay off the
terminal.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from sinks.artifacts import ARTIFACTS_DIR, ArtifactSink
from sinks.jsonl import LOG_FILE_NAME, JsonlSink

from .._bus import EventBus
from .._errors import EventsLostError, SinkFailedError
from .._event import Event, EventType
from .._names import validate_session_id
from .._query import EventQuery
from .._sink import MemorySink, Sink
from ..coordinator._demo_agents import IDEA, build_demo_coordinator
from ..coordinator._session import Session
from ._common import (
    CommandError,
    Subparsers,
    captured_logs,
    import_extra,
    interruptible,
    port,
    positive,
    seconds,
    table,
)

if TYPE_CHECKING:
    from sinks.nats import JetStreamSink
    from sinks.otel import OtelSink

__all__ = [
    "DESCRIPTION",
    "LIST_LIMIT",
    "RETRY_NOTE",
    "DemoRun",
    "ProgressPrinter",
    "add_parser",
    "print_summary",
    "run_demo",
]

#: What the demo shows, as ``eventbus demo --help`` says it (and the README).
#: What the demo shows, as ``eventbus demo --help`` says it (and the README).
DESCRIPTION = (
    "Run an offline agent session: a planner plans a small Python package; coders, "
    "testers and reviewers write and check it through unified diffs and real commands; "
    "every step is an event in WORKSPACE/{session_id}/events.jsonl, with the artifacts "
    "beside it. With 3 tasks or more, one task fails its first attempt (a syntax error "
    "that its compile check catches: an error event) and is retried (task_retrying, then "
    "task_completed on attempt 2); task_failed is logged only when a task fails for good."
)
#: The line under the demo's first line (with 3 tasks or more): the failure it shows.
RETRY_NOTE = (
    "one task fails its first attempt and is retried; task_failed only if it fails for good"
)
#: How many names of a list the summary shows, one per line, before counting the rest.
LIST_LIMIT = 10

_PROGRESS = EventQuery(
    event_type=[
        EventType.SESSION_STARTED,
        EventType.PHASE_TRANSITION,
        EventType.TASK_COMPLETED,
        EventType.TASK_FAILED,
        EventType.TASK_RETRYING,
        EventType.TASK_SKIPPED,
    ]
)
_SESSION_ENDS = (EventType.SESSION_COMPLETED, EventType.SESSION_FAILED, EventType.SESSION_ABORTED)
_LABELS = {
    EventType.TASK_COMPLETED: "ok",
    EventType.TASK_FAILED: "FAILED",
    EventType.TASK_RETRYING: "retry",
    EventType.TASK_SKIPPED: "skipped",
}


def _clip(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


class ProgressPrinter:
    """A sink printing a line per phase change and per finished (or retried) task.

    When ``out`` is closed by its reader (a broken pipe), the printer stops
    printing, sets :attr:`closed` and calls ``on_closed`` (once) instead of failing.
    """

    name = "progress"

    def __init__(
        self, out: TextIO, total: int, on_closed: Callable[[], object] | None = None
    ) -> None:
        self.out = out
        self.total = total
        self.finished = 0
        self.closed = False
        self._on_closed = on_closed

    async def write(self, events: Sequence[Event]) -> None:
        """Print the batch's lines."""
        if self.closed:
            return
        try:
            for event in events:
                line = self._line(event)
                if line:
                    print(line, file=self.out, flush=True)
        except BrokenPipeError:
            self.closed = True
            if self._on_closed is not None:
                self._on_closed()

    async def aclose(self) -> None:
        """Nothing to release."""

    def _line(self, event: Event) -> str:
        if event.event_type is EventType.SESSION_STARTED:
            return f"-- {event.phase}  (session {event.session_id})"
        if event.event_type is EventType.PHASE_TRANSITION:
            return f"-- {event.metadata.get('new_phase', event.phase)}"
        label = _LABELS[event.event_type]
        metadata = event.metadata
        if event.event_type is EventType.TASK_RETRYING:
            detail = f"attempt {metadata.get('attempt')} failed: {metadata.get('error', '')}"
            counter = " " * (2 * len(str(self.total)) + 3)
        else:
            self.finished += 1
            counter = f"[{self.finished:>{len(str(self.total))}}/{self.total}]"
            if event.event_type is EventType.TASK_COMPLETED:
                detail = f"{metadata.get('duration_s', 0):.3f}s  {metadata.get('summary', '')}"
            elif event.event_type is EventType.TASK_FAILED:
                detail = str(metadata.get("error", ""))
            else:
                detail = str(metadata.get("reason", ""))
        task = f"{event.task_id or '':<20} {event.agent_role or '':<9}"
        detail = detail.replace(sys.executable, "python")
        return f"  {counter} {label:<7} {task} {_clip(detail, 64)}"


@dataclass
class DemoRun:
    """What :func:`run_demo` returns: the session, its events and where its files are.

    ``failed`` says which sinks failed (an export whose receiver was down):
    the session ran on without them.
    """

    session: Session
    events: list[Event]
    events_path: Path
    artifacts_path: Path
    failed: SinkFailedError | None = None


async def run_demo(
    workspace_root: Path,
    *,
    tasks: int = 8,
    max_concurrency: int = 4,
    session_id: str | None = None,
    out: TextIO | None = None,
    sinks: Sequence[Sink] = (),
    attach: Callable[[EventBus], AbstractAsyncContextManager[object]] | None = None,
    after: Callable[[DemoRun], Awaitable[None]] | None = None,
    model_latency: float = 0.0,
) -> DemoRun:
    """Run the demo session under ``workspace_root``; print progress to ``out``.

    A sink that fails does not stop the session: it is named in
    :attr:`DemoRun.failed`.

    :param sinks: more sinks to subscribe (a JetStream or OpenTelemetry export).
    :param attach: an async context manager made from the bus, entered before the
        session starts and left after ``after`` (a dashboard served live).
    :param after: awaited with the finished run while the bus is still open
        (print the summary, then serve on until Ctrl-C).
    :param model_latency: seconds each offline model call takes.
    :raises BrokenPipeError: ``out`` was closed by its reader; the session was
        aborted (its log says so).
    """
    index = MemorySink("summary")
    jsonl = JsonlSink(workspace_root)
    failed: SinkFailedError | None = None
    result: DemoRun | None = None
    with anyio.CancelScope() as scope:
        printer = None if out is None else ProgressPrinter(out, tasks, on_closed=scope.cancel)
        try:
            async with EventBus() as bus:
                bus.subscribe(jsonl)
                bus.subscribe(ArtifactSink(workspace_root))
                bus.subscribe(index)
                if printer is not None:
                    bus.subscribe(printer, query=_PROGRESS)
                for sink in sinks:
                    bus.subscribe(sink)
                async with attach(bus) if attach is not None else nullcontext():
                    coordinator = build_demo_coordinator(
                        bus,
                        workspace_root,
                        tasks=tasks,
                        max_concurrency=max_concurrency,
                        model_latency=model_latency,
                    )
                    session = await coordinator.run(IDEA, session_id=session_id)
                    try:
                        await bus.flush()
                    except SinkFailedError as error:  # the others have every event
                        failed = error
                    result = DemoRun(
                        session=session,
                        events=list(index.events),
                        events_path=jsonl.path_for(session.session_id),
                        artifacts_path=session.directory / ARTIFACTS_DIR,
                        failed=failed,
                    )
                    if after is not None:
                        await after(result)
        except SinkFailedError as error:  # on closing: e.g. the export of the last spans
            if result is None:
                raise
            result.failed = error  # names every failed sink, those flush named too
    if printer is not None and printer.closed:
        raise BrokenPipeError(errno.EPIPE, "the demo's output was closed by its reader")
    assert result is not None  # the scope is cancelled only when the printer is closed
    return result


def _task_rows(events: Sequence[Event]) -> list[list[Any]]:
    rows: dict[str, list[Any]] = {}
    for event in events:
        if event.event_type is EventType.TASK_SCHEDULED and event.task_id:
            rows[event.task_id] = [event.task_id, event.agent_role or "", "scheduled", "", ""]
        elif event.task_id in rows and event.event_type in _LABELS:
            row = rows[event.task_id]
            if event.event_type is EventType.TASK_RETRYING:
                continue
            row[2] = event.event_type.value.removeprefix("task_")
            row[3] = event.metadata.get("attempts", "")
            duration = event.metadata.get("duration_s")
            row[4] = f"{duration:.3f}s" if isinstance(duration, int | float) else ""
    return list(rows.values())


def _usage_rows(events: Sequence[Event]) -> list[list[Any]]:
    usage: dict[str, list[float]] = {}
    for event in events:
        if event.event_type is EventType.LLM_RESPONSE_RECEIVED:
            totals = usage.setdefault(event.model or "?", [0, 0, 0, 0, 0, 0.0])
            metadata = event.metadata
            totals[0] += 1
            for i, key in enumerate(
                ("prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens"), 1
            ):
                totals[i] += metadata.get(key) or 0
            totals[5] += metadata.get("cost_usd") or 0.0
    rows: list[list[Any]] = [
        [model, *(int(value) for value in totals[:5]), f"${totals[5]:.6f}"]
        for model, totals in sorted(usage.items())
    ]
    if len(rows) > 1:
        sums = [sum(totals[i] for totals in usage.values()) for i in range(6)]
        rows.append(["total", *(int(value) for value in sums[:5]), f"${sums[5]:.6f}"])
    return rows


def print_summary(run: DemoRun, out: TextIO) -> None:
    """Print the tables (tasks, events by type, tokens and cost by model) and the paths."""
    session = run.session
    summary = session.summary()
    print(file=out)
    print(f"Session {session.session_id}: {session.phase.value}", file=out)
    if session.error:
        print(f"  error: {session.error}", file=out)
    print("\nTasks", file=out)
    print(
        table(["task", "role", "status", "attempts", "duration"], _task_rows(run.events), "lllrr"),
        file=out,
    )
    counts = Counter(event.event_type.value for event in run.events)
    print(f"\nEvents by type ({len(run.events)} events)", file=out)
    print(table(["event type", "count"], counts.most_common(), "lr"), file=out)
    print("\nTokens and cost by model", file=out)
    headers = ["model", "calls", "prompt", "cached", "completion", "total", "cost"]
    print(table(headers, _usage_rows(run.events), "lrrrrrr"), file=out)
    duration = summary["duration_s"]
    for event in reversed(run.events):  # the session's own, not the time the exports took
        ended = event.metadata.get("duration_s")
        if event.event_type in _SESSION_ENDS and isinstance(ended, int | float):
            duration = ended
            break
    print(f"\nDuration: {duration:.2f}s", file=out)
    files = sorted(
        path.relative_to(session.workspace).as_posix()
        for path in session.workspace.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    artifacts = sorted(path.stem for path in run.artifacts_path.glob("*.json"))
    print("\nFiles", file=out)
    print(f"  events:     {run.events_path}", file=out)
    print(f"  artifacts:  {run.artifacts_path}/  ({_count(artifacts, 'artifact')})", file=out)
    _print_list(artifacts, out)
    print(f"  project:    {session.workspace}/  ({_count(files, 'file')})", file=out)
    _print_list(files, out)


def _count(names: Sequence[str], noun: str) -> str:
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'}"


def _print_list(names: Sequence[str], out: TextIO) -> None:
    """Print ``names`` one per line, at most :data:`LIST_LIMIT`, then how many more."""
    shown = names if len(names) <= LIST_LIMIT else names[: LIST_LIMIT - 1]
    for name in shown:
        print(f"              {name}", file=out)
    if len(shown) < len(names):
        print(f"              ... and {len(names) - len(shown)} more", file=out)


def add_parser(subparsers: Subparsers) -> None:
    """Add ``eventbus demo`` to ``subparsers``."""
    demo = subparsers.add_parser(
        "demo",
        help="run an offline agent session and show its events",
        description=DESCRIPTION,
    )
    demo.add_argument(
        "--workspace",
        type=Path,
        default=Path("workspaces"),
        help="the workspace root, created if missing (default: ./workspaces)",
    )
    demo.add_argument("--tasks", type=positive, default=8, help="tasks in the plan (default: 8)")
    demo.add_argument(
        "--concurrency", type=positive, default=4, help="tasks run at once (default: 4)"
    )
    demo.add_argument(
        "--session-id",
        default=None,
        help="the session id, which must be new in the workspace (default: time-based)",
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the anyio backend (default: asyncio; trio needs the trio extra)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="serve the dashboard live over the demo's workspace (http://127.0.0.1:PORT/), "
        "and keep serving after the session ends until Ctrl-C (needs the web extra)",
    )
    demo.add_argument(
        "--port", type=port, default=8000, help="the dashboard's port with --serve (default: 8000)"
    )
    demo.add_argument(
        "--nats",
        metavar="URL",
        default=None,
        help="also publish every event to NATS JetStream (stream EVENTS, subjects "
        "events.{session}.{type}); the server is checked before the session starts; "
        "needs the nats extra and the asyncio backend",
    )
    demo.add_argument(
        "--otel",
        metavar="URL",
        default=None,
        help="also export the session live as an OpenTelemetry trace over OTLP/HTTP, e.g. "
        "http://localhost:6006 for Phoenix; needs the otel extra",
    )
    # Seconds each offline model call takes: slows the session down (for tests).
    demo.add_argument("--model-latency", type=seconds, default=0.0, help=argparse.SUPPRESS)
    demo.set_defaults(
        run=run, interrupted="the session was aborted (its events.jsonl ends with session_aborted)"
    )


def check_workspace(root: Path, session_id: str | None) -> None:
    """Refuse, before anything is written, a workspace or session id the demo cannot use.

    Creates ``root`` if it is missing.

    :raises InvalidNameError: ``session_id`` cannot name a session directory.
    :raises CommandError: ``root`` is not a writable directory, or ``session_id``
        names a session that already exists there.
    """
    if session_id is not None:
        validate_session_id(session_id)
    if root.exists() and not root.is_dir():
        raise CommandError(
            f"workspace {root} is not a directory: pass --workspace a directory "
            "(it is created if missing)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as error:
        raise CommandError(
            f"cannot write in workspace {root}: {error.strerror or error}; "
            "pass --workspace a directory you can write to"
        ) from None
    if session_id is None:
        return
    directory = root / session_id
    if directory.is_symlink() or directory.exists():
        log = directory / LOG_FILE_NAME
        holds = f"its log {log} exists" if log.exists() else f"{directory} exists"
        raise CommandError(
            f"session {session_id!r} already exists in workspace {root} ({holds}); "
            "choose a new --session-id, or leave it out for a time-based one"
        )


def run(args: argparse.Namespace) -> int:
    """Run ``eventbus demo``; return 0 if the session completed, 1 if it failed."""
    if args.backend == "trio":
        import_extra("trio", extra="trio", command="--backend trio")
    if args.serve:
        import_extra("uvicorn", extra="web", command="eventbus demo --serve")
        from ._serve import bind

        args.socket = bind("127.0.0.1", args.port)  # a port in use: refused before the session
    if args.nats:
        if args.backend != "asyncio":
            raise CommandError("--nats runs on asyncio only (nats-py): drop --backend trio")
        import_extra("nats", extra="nats", command="eventbus demo --nats")
    if args.otel:
        import_extra("opentelemetry.sdk", extra="otel", command="eventbus demo --otel")
    status: int = anyio.run(_demo, args, sys.stdout, backend=args.backend)
    return status


async def _connect_nats(url: str) -> JetStreamSink:
    """A JetStream sink already connected to ``url``, or a one-line error (exit 2)."""
    from sinks.nats import JetStreamSink, NatsUnavailableError

    sink = JetStreamSink(url)
    try:
        await sink.connect()
    except NatsUnavailableError as error:
        raise CommandError(
            f"cannot connect to NATS at {url}: {error.reason}; start nats-server with "
            "JetStream (nats-server -js) or fix the --nats URL (no session was started)"
        ) from None
    return sink


def _otel_sink(url: str) -> OtelSink:
    from sinks.otel import OtelSink

    try:
        return OtelSink(url)
    except ValueError as error:
        raise CommandError(f"--otel: {error}") from None


class _NoSinkLines(logging.Filter):
    """Keeps the bus's log lines about its sinks (retries, failures) off stderr.

    The demo reports a failed sink itself, after the summary, in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "sink %r" not in str(record.msg)


@contextmanager
def _quiet_exports() -> Iterator[list[str]]:
    """Keep the exporters' and the bus's log lines about sinks off stderr; yield the
    OpenTelemetry SDK's messages (they say why an export failed)."""
    bus_logger = logging.getLogger("eventbus")
    quiet = _NoSinkLines()
    bus_logger.addFilter(quiet)
    try:
        with captured_logs("nats"), captured_logs("opentelemetry") as messages:
            yield messages
    finally:
        bus_logger.removeFilter(quiet)


def _otel_reason(messages: Sequence[str], error: BaseException) -> str:
    """Why an OTLP export failed, in a few words, from the SDK's log lines."""
    for message in messages:
        if found := re.search(r"\[Errno -?\d+\] ([^'\"()\]]+)", message):
            return found[1].strip()
        if found := re.search(r"code: (\d+), reason: ([^,]+)", message):
            return f"HTTP {found[1]} {found[2].strip()}"
    if any("timeout" in message for message in messages):
        return "no answer in time"
    return error.reason if isinstance(error, EventsLostError) else str(error)


def _failure_lines(
    run: DemoRun,
    args: argparse.Namespace,
    nats_sink: JetStreamSink | None,
    otel_sink: OtelSink | None,
    otel_messages: Sequence[str],
) -> list[str]:
    """One line per sink that failed: what it did not export, why, and what to do."""
    if run.failed is None:
        return []
    total = len(run.events)
    session_id = run.session.session_id
    lines = []
    for name, error in run.failed.failures:
        reason = " ".join(str(error).split())
        if nats_sink is not None and name == nats_sink.name:
            reason = str(getattr(error, "reason", reason))  # PublishNotAcknowledgedError's
            missing = max(0, total - nats_sink.acknowledged)
            lines.append(
                f"publishing to NATS at {args.nats} failed ({reason}): {missing} of the "
                f"session's {total} events are not in JetStream stream {nats_sink.stream!r}; "
                f"all are in {run.events_path}; check that nats-server is running"
            )
        elif otel_sink is not None and name == otel_sink.name:
            missing = max(0, total - otel_sink.exported)
            lines.append(
                f"the OpenTelemetry export to {args.otel} failed "
                f"({_otel_reason(otel_messages, error)}): {missing} of the session's {total} "
                "events were not exported; once the receiver is up, send them with: "
                f"eventbus export-otel {args.workspace} --session {session_id} "
                f"--endpoint {args.otel}"
            )
        else:
            lines.append(f"sink {name!r} failed and stopped receiving events: {reason}")
    for name, failed_session, error in run.failed.sessions:
        reason = " ".join(str(error).split())
        lines.append(f"sink {name!r} could not write session {failed_session!r}: {reason}")
    return lines


def _header(args: argparse.Namespace, out: TextIO) -> None:
    print(
        f"eventbus demo: {args.tasks} tasks, up to {args.concurrency} at once, "
        f"workspace {args.workspace}",
        file=out,
    )
    if args.tasks >= 3:
        print(f"  {RETRY_NOTE}", file=out)
    print(end="", file=out, flush=True)  # out may be None: stdout closed at start


async def _demo(args: argparse.Namespace, out: TextIO) -> int:
    # Before anything is written: no session starts without its NATS server.
    nats_sink = await _connect_nats(args.nats) if args.nats else None
    try:
        otel_sink = _otel_sink(args.otel) if args.otel else None
        check_workspace(args.workspace, args.session_id)
    except BaseException:
        if nats_sink is not None:
            await nats_sink.aclose()
        raise
    attach: Callable[[EventBus], AbstractAsyncContextManager[object]] | None = None
    after: Callable[[DemoRun], Awaitable[None]] | None = None
    if args.serve:  # the dashboard's URL comes first, then the session
        from ._serve import dashboard

        @asynccontextmanager
        async def attach(bus: EventBus) -> AsyncIterator[None]:
            async with dashboard(args.workspace, sock=args.socket, out=out):
                _header(args, out)
                yield

        async def after(finished: DemoRun) -> None:
            print_summary(finished, out)
            print("\nThe session has ended; serving the dashboard until Ctrl-C.", file=out)
            print(end="", file=out, flush=True)
            args.interrupted = "stopped serving the dashboard (the session had ended)"
            await anyio.sleep_forever()

    else:
        _header(args, out)
    sinks: list[Sink] = [sink for sink in (nats_sink, otel_sink) if sink is not None]
    with _quiet_exports() as otel_messages:
        async with interruptible():
            result = await run_demo(
                args.workspace,
                tasks=args.tasks,
                max_concurrency=args.concurrency,
                session_id=args.session_id,
                out=out,
                sinks=sinks,
                attach=attach,
                after=after,
                model_latency=args.model_latency,
            )
    print_summary(result, out)
    failures = _failure_lines(result, args, nats_sink, otel_sink, otel_messages)
    if failures:
        print(end="", file=out, flush=True)  # the summary first
        for line in failures:
            print(f"eventbus demo: {line}", file=sys.stderr)
        return 1
    return 0 if result.session.phase.value == "COMPLETE" else 1
