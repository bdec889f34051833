"""The ``eventbus`` console script.

``eventbus demo [--workspace DIR] [--tasks N]`` runs an offline session
(:mod:`eventbus._demo`) with the JSONL log and the artifact store as sinks,
prints a line per finished task, then a summary and where the files are:
``DIR/{session_id}/events.jsonl``, ``DIR/{session_id}/artifacts/`` and the
project the agents wrote in ``DIR/{session_id}/project/``.

This is an entry point: it may import :mod:`sinks` (the core never does).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio

from sinks.artifacts import ArtifactSink
from sinks.jsonl import JsonlSink

from ._bus import EventBus
from ._demo import IDEA, build_demo_coordinator
from ._event import Event, EventType
from ._query import EventQuery
from ._session import Session
from ._sink import MemorySink

__all__ = ["DemoRun", "main", "run_demo"]

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
    """A sink printing a line per phase change and per finished (or retried) task."""

    name = "progress"

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.finished = 0

    async def write(self, events: Sequence[Event]) -> None:
        """Print the batch's lines."""
        for event in events:
            line = self._line(event)
            if line:
                print(line, file=self.out, flush=True)

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
    """What :func:`run_demo` returns: the session, its events and where its files are."""

    session: Session
    events: list[Event]
    events_path: Path
    artifacts_path: Path


async def run_demo(
    workspace_root: Path,
    *,
    tasks: int = 8,
    max_concurrency: int = 4,
    session_id: str | None = None,
    out: TextIO | None = None,
) -> DemoRun:
    """Run the demo session under ``workspace_root``; print progress to ``out``."""
    index = MemorySink("summary")
    jsonl = JsonlSink(workspace_root)
    async with EventBus() as bus:
        bus.subscribe(jsonl)
        bus.subscribe(ArtifactSink(workspace_root))
        bus.subscribe(index)
        if out is not None:
            bus.subscribe(ProgressPrinter(out, tasks), query=_PROGRESS)
        coordinator = build_demo_coordinator(
            bus, workspace_root, tasks=tasks, max_concurrency=max_concurrency
        )
        session = await coordinator.run(IDEA, session_id=session_id)
        await bus.flush()
    return DemoRun(
        session=session,
        events=list(index.events),
        events_path=jsonl.path_for(session.session_id),
        artifacts_path=session.directory / "artifacts",
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> str:
    """A plain-text table; ``align`` has an ``l`` or ``r`` per column."""
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
        _table(["task", "role", "status", "attempts", "duration"], _task_rows(run.events), "lllrr"),
        file=out,
    )
    counts = Counter(event.event_type.value for event in run.events)
    print(f"\nEvents by type ({len(run.events)} events)", file=out)
    print(_table(["event type", "count"], counts.most_common(), "lr"), file=out)
    print("\nTokens and cost by model", file=out)
    headers = ["model", "calls", "prompt", "cached", "completion", "total", "cost"]
    print(_table(headers, _usage_rows(run.events), "lrrrrrr"), file=out)
    print(f"\nDuration: {summary['duration_s']:.2f}s", file=out)
    files = sorted(
        path.relative_to(session.workspace).as_posix()
        for path in session.workspace.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    artifacts = sorted(path.stem for path in run.artifacts_path.glob("*.json"))
    print("\nFiles", file=out)
    print(f"  events:    {run.events_path}", file=out)
    print(f"  artifacts: {run.artifacts_path}{'/'}  ({', '.join(artifacts)})", file=out)
    print(
        f"  project:   {session.workspace}{'/'}  ({len(files)} files: {', '.join(files)})", file=out
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventbus", description="An async event bus with pluggable sinks."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run an offline agent session and show its events",
        description="Run an offline agent session (planner, coder, tester, reviewer) that "
        "writes a small package through unified diffs, with its events in "
        "WORKSPACE/{session_id}/events.jsonl and its artifacts beside them.",
    )
    demo.add_argument(
        "--workspace",
        type=Path,
        default=Path("workspaces"),
        help="the workspace root (default: ./workspaces)",
    )
    demo.add_argument("--tasks", type=_positive, default=8, help="tasks in the plan (default: 8)")
    demo.add_argument(
        "--concurrency", type=_positive, default=4, help="tasks run at once (default: 4)"
    )
    demo.add_argument("--session-id", default=None, help="the session id (default: time-based)")
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the anyio backend (default: asyncio)",
    )
    return parser


async def _demo(args: argparse.Namespace, out: TextIO) -> int:
    print(
        f"eventbus demo: {args.tasks} tasks, up to {args.concurrency} at once, "
        f"workspace {args.workspace}",
        file=out,
    )
    run = await run_demo(
        args.workspace,
        tasks=args.tasks,
        max_concurrency=args.concurrency,
        session_id=args.session_id,
        out=out,
    )
    print_summary(run, out)
    return 0 if run.session.phase.value == "COMPLETE" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eventbus`` command line; return the exit status."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        status: int = anyio.run(_demo, args, out, backend=args.backend)
    except KeyboardInterrupt:
        print("\ninterrupted: the session was aborted (see its events.jsonl)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
