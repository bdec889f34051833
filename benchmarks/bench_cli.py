"""Benchmark reading a workspace: the ``query`` path over 1M events, and ``tail -f`` latency.

Run: ``python benchmarks/bench_cli.py [--events N] [--sessions S] [--tail-events M]``

1. A workspace of N events (default 1,000,000) in S sessions (default 10)
   whose events interleave in time. The baseline is loading the same events
   with ``EventLog(path)`` (every session's log, one after the other: what
   "one EventLog load" of N events costs). Against it: a selective query and
   ``usage`` with ``Workspace(index=False)`` (what the CLI does: read the
   logs once), the first query of an indexed ``Workspace`` (it builds the
   low-memory index of every log: what the web API pays once), its next
   queries, and ``eventbus query DIR --type ... --limit 20`` end to end in a
   new process (interpreter start included).
   Ratios to the baseline are printed.
2. ``eventbus tail DIR -f --json`` in another process while M events are
   appended one at a time (each after the previous one was printed):
   write-to-print latency p50 and p99.

Numbers are printed, never asserted. Data goes to a temporary directory that
is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from operator import contains
from pathlib import Path
from typing import Any

from eventbus import Event, EventQuery, EventType, encode_jsonl
from sinks.jsonl import EventLog
from sinks.workspace import Workspace

CLI = [sys.executable, "-m", "eventbus"]
_TYPES = [
    EventType.TASK_STARTED,
    EventType.LLM_REQUEST_SENT,
    EventType.LLM_RESPONSE_RECEIVED,
    EventType.INFO,
    EventType.GATE_EVALUATED,
]
_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_events(session: str, start: int, count: int, sessions: int, offset: int) -> list[Event]:
    """Events of one session; session k's i-th event is at second i * sessions + k."""
    return [
        Event(
            event_type=_TYPES[i % len(_TYPES)],
            session_id=session,
            message=f"Executing task task_{i % 97}: step {i}",
            timestamp=_T0 + timedelta(milliseconds=i * sessions + offset),
            phase="EXECUTION",
            task_id=f"task_{i % 97}",
            agent_role="coder",
            model=f"model-{i % 3}",
            metadata={"prompt_tokens": 150 + i % 50, "completion_tokens": 300, "cost_usd": 0.001},
        )
        for i in range(start, start + count)
    ]


def write_workspace(root: Path, total: int, sessions: int) -> None:
    per_session = total // sessions
    for k in range(sessions):
        path = root / f"session-{k:03d}" / "events.jsonl"
        path.parent.mkdir(parents=True)
        with path.open("wb") as file:
            for start in range(0, per_session, 10_000):
                count = min(10_000, per_session - start)
                file.write(encode_jsonl(make_events(path.parent.name, start, count, sessions, k)))


def timed(function: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """The best wall time of ``repeat`` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def eventlog_load(root: Path) -> int:
    return sum(len(EventLog(path)) for path in sorted(root.glob("*/events.jsonl")))


def query_run(root: Path) -> None:
    subprocess.run(
        [*CLI, "query", str(root), "--type", "task_started", "--task", "task_5", "--limit", "20"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_query(root: Path, total: int) -> None:
    print(f"\n1. Querying a workspace of {total:,} events")
    base, loaded = timed(lambda: eventlog_load(root), repeat=2)
    print(f"   EventLog(path) load of every log (baseline): {base:7.2f} s  ({loaded:,} events)")
    selective = EventQuery(event_type=EventType.LLM_RESPONSE_RECEIVED, task_id="task_7")
    scanning = Workspace(root, index=False)
    scan, (page, _) = timed(lambda: scanning.events(selective, limit=100), repeat=2)
    print(f"   Workspace(index=False).events, selective (the CLI's path): {scan:7.2f} s  "
          f"ratio {scan / base:.2f}x the baseline ({len(page)} events)")  # fmt: skip
    scan_usage, _ = timed(lambda: scanning.usage("model"), repeat=2)
    print(f"   Workspace(index=False).usage('model'):                    {scan_usage:7.2f} s  "
          f"ratio {scan_usage / base:.2f}x")  # fmt: skip
    workspace = Workspace(root)
    cold, _ = timed(lambda: workspace.events(selective, limit=100))
    print(f"   Workspace().events, first query (builds the index):       {cold:7.2f} s  "
          f"ratio {cold / base:.2f}x the baseline")  # fmt: skip
    warm, _ = timed(lambda: workspace.events(selective, limit=100), repeat=5)
    print(f"   Workspace().events, next queries:                     {warm * 1000:7.2f} ms")
    usage_time, _ = timed(lambda: workspace.usage("model"), repeat=3)
    print(f"   Workspace().usage('model'):                            {usage_time * 1000:7.2f} ms")
    everything, _ = timed(lambda: workspace.events(limit=1000), repeat=3)
    print(f"   Workspace().events(limit=1000), every event:          {everything * 1000:7.2f} ms")
    cli, _ = timed(lambda: query_run(root))
    print(f"   eventbus query DIR --type --task --limit 20 (new process): {cli:7.2f} s  "
          f"ratio {cli / base:.2f}x the baseline")  # fmt: skip
    workspace.close()


def bench_tail(root: Path, count: int) -> None:
    print(f"\n2. eventbus tail -f: {count} events appended one at a time")
    with EventLog(root / "live" / "events.jsonl") as log:
        log.append(Event(event_type=EventType.INFO, session_id="live", message="stored"))
    with subprocess.Popen(
        [*CLI, "tail", str(root), "-f", "--json", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as tail:
        printed: dict[str, float] = {}
        arrived = threading.Condition()

        def read() -> None:
            assert tail.stdout is not None
            for line in tail.stdout:
                with arrived:
                    printed[json.loads(line)["id"]] = time.perf_counter()
                    arrived.notify_all()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        latencies: list[float] = []
        try:
            with EventLog(root / "live" / "events.jsonl") as log:
                with arrived:  # the stored event, printed once tail runs
                    if not arrived.wait_for(lambda: len(printed) == 1, timeout=30):
                        raise RuntimeError("tail printed nothing within 30 s")
                for i in range(count + 1):  # the first one: a warm-up, not measured
                    event = Event(event_type=EventType.INFO, session_id="live", message=f"n{i}")
                    written = time.perf_counter()
                    log.append(event)
                    with arrived:
                        if not arrived.wait_for(partial(contains, printed, event.id), timeout=10):
                            raise RuntimeError(f"event {i} was not printed within 10 s")
                    if i:
                        latencies.append((printed[event.id] - written) * 1000)
        finally:
            tail.terminate()
            tail.wait(timeout=10)
            reader.join(timeout=10)
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"   write-to-print latency: p50 {statistics.median(latencies):.1f} ms, "
          f"p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--tail-events", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "ws"
        started = time.perf_counter()
        write_workspace(root, args.events, args.sessions)
        print(f"wrote {args.events:,} events in {args.sessions} sessions "
              f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
        bench_query(root, args.events)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "ws"
        root.mkdir()
        bench_tail(root, args.tail_events)


if __name__ == "__main__":
    main()
