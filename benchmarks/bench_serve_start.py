"""How soon ``eventbus serve`` answers on a large workspace, and how slowly while it indexes.

Run: ``python benchmarks/bench_serve_start.py [--events N] [--sessions S] [--scans]``
(default 1,000,000 events in 10 sessions).

Writes a workspace of S interleaved sessions (with each one's
``run_summary``, as the coordinator's ArtifactSink keeps it; ``--no-summaries``:
none, so session rows are tallied from the logs), then starts ``eventbus serve`` on it as a
subprocess (``python -m eventbus serve DIR --port 0``) and prints:

1. the time from starting the process to the first 200 on ``/api/sessions``,
   then on a page of a session's events (``/api/sessions/{id}/events?limit=100``);
2. while the index is being built (until twice the time a Workspace in this
   process takes to build it, measured first), requests in a loop (sessions, a
   page of events, the next page, usage by model): per route, how many, the
   median and the worst time;
3. the same requests once the index is built, for comparison.

With ``--scans``, first the index-free answers a server gives while it builds
(``Workspace(root, index=False)``): usage, and the events of one type, each
against a scan for a rare task id (every line read, a few decoded) in the
same run.

Numbers are printed, never asserted. The workspace is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from eventbus import Event, EventQuery, EventType, encode_jsonl
from sinks.artifacts import ArtifactSink
from sinks.workspace import Workspace

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TYPES = [
    EventType.TASK_STARTED,
    EventType.LLM_REQUEST_SENT,
    EventType.LLM_RESPONSE_RECEIVED,
    EventType.INFO,
    EventType.TASK_COMPLETED,
]


def write_workspace(root: Path, count: int, sessions: int, *, summaries: bool = True) -> None:
    """``count`` events of ``sessions`` sessions, interleaved in time, 1024 at a time.

    With ``summaries``, each session's ``run_summary`` too, as an
    :class:`~sinks.artifacts.ArtifactSink` on the bus keeps it.
    """
    artifacts = ArtifactSink(root, durable=False) if summaries else None
    files = []
    for s in range(sessions):
        (root / f"s{s}").mkdir()
        files.append(open(root / f"s{s}" / "events.jsonl", "wb"))  # noqa: SIM115
    try:
        for start in range(0, count, 1024 * sessions):
            stop = min(count, start + 1024 * sessions)
            for s, file in enumerate(files):
                events = []
                for i in range(start + s, stop, sessions):
                    kind = TYPES[(i // sessions) % len(TYPES)]
                    metadata = {}
                    if kind is EventType.LLM_RESPONSE_RECEIVED:
                        metadata = {
                            "prompt_tokens": 100,
                            "completion_tokens": 20,
                            "cost_usd": 0.001,
                        }
                    events.append(
                        Event(
                            event_type=kind,
                            session_id=f"s{s}",
                            message=f"event {i}",
                            timestamp=T0 + timedelta(microseconds=100 * i),
                            task_id=f"t{i // (sessions * 50)}",
                            model="m1" if kind is EventType.LLM_RESPONSE_RECEIVED else None,
                            metadata=metadata,
                            parent_id=None,
                        )
                    )
                file.write(encode_jsonl(events))
                if artifacts is not None:
                    anyio.run(artifacts.write, events)
    finally:
        for file in files:
            file.close()


def get(port: int, path: str) -> tuple[int, float, bytes]:
    """(status, seconds, body) of one GET."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return response.status, time.perf_counter() - start, body


def first_200(port: int, path: str, started: float) -> float:
    while True:
        try:
            status, _, _ = get(port, path)
        except OSError:
            status = 0
        if status == 200:
            return time.perf_counter() - started
        time.sleep(0.005)


def requests(port: int, sessions: int, round_: int) -> list[tuple[str, float]]:
    """One round of the requests a dashboard makes: (path, seconds) each."""
    session = f"s{round_ % sessions}"
    timings = []
    status, took, _ = get(port, "/api/sessions")
    timings.append(("/api/sessions", took))
    page = f"/api/sessions/{session}/events?limit=100"
    status, took, body = get(port, page)
    timings.append((page, took))
    next_id = json.loads(body).get("next") if status == 200 else None
    if next_id:
        path = f"{page}&after={next_id}"
        status, took, _ = get(port, path)
        timings.append((f"{page}&after=...", took))
    status, took, _ = get(port, "/api/usage?by=model")
    timings.append(("/api/usage?by=model", took))
    return timings


def route(path: str) -> str:
    """``path`` with its session named ``{id}``."""
    return re.sub(r"/sessions/[^/]+/", "/sessions/{id}/", path)


def show(timings: dict[str, list[float]]) -> None:
    """Per route: how many requests, the median and the worst time."""
    for path, took in timings.items():
        took.sort()
        print(
            f"   {path:50} {len(took):4} requests, median {took[len(took) // 2] * 1e3:7.1f} ms,"
            f" worst {took[-1] * 1e3:7.1f} ms"
        )


def best_of(call: Callable[[], object], times: int = 3) -> float:
    """The best time of ``times`` calls, in seconds."""
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def scans(root: Path) -> None:
    """The index-free answers, each against a scan that decodes few lines."""
    workspace = Workspace(root, index=False)
    baseline = best_of(lambda: workspace.events(EventQuery(task_id="t0")))
    print(f"\n0. without an index: a scan for one task id {baseline:.2f} s (the baseline)")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("usage()", workspace.usage),
        (
            "events(event_type=llm_response_received)",
            lambda: workspace.events(EventQuery(event_type=EventType.LLM_RESPONSE_RECEIVED)),
        ),
        (
            "events(event_type=task_started)",
            lambda: workspace.events(EventQuery(event_type=EventType.TASK_STARTED)),
        ),
    ]
    for name, call in calls:
        took = best_of(call, 1)  # once: usage is kept while no log changes
        print(f"   {name:42} {took:6.2f} s  ({took / baseline:.2f}x the baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--no-summaries", action="store_true", help="no run_summary artifacts")
    parser.add_argument("--scans", action="store_true", help="time index-free answers first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"writing {args.events:,} events in {args.sessions} sessions ...")
        write_workspace(root, args.events, args.sessions, summaries=not args.no_summaries)
        if args.scans:
            scans(root)
        start = time.perf_counter()
        Workspace(root).events(limit=1)
        build = time.perf_counter() - start
        print(f"  a Workspace builds its index in {build:.1f} s (in this process)")

        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "eventbus", "serve", os.fspath(root), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            listening = time.perf_counter() - started
            match = re.search(r":(\d+)/", line)
            assert match is not None, line
            port = int(match.group(1))
            sessions_at = first_200(port, "/api/sessions", started)
            page_at = first_200(port, "/api/sessions/s0/events?limit=100", started)
            print(f"\n1. serving (its URL printed):        {listening:6.2f} s after the start")
            print(f"   first 200 on /api/sessions:       {sessions_at:6.2f} s after the start")
            print(f"   first 200 on a page of events:     {page_at:6.2f} s after the start")
            window = 2 * build  # the server's build shares the CPU with the requests
            during: dict[str, list[float]] = {}
            round_ = 0
            while time.perf_counter() - started < window:
                for path, took in requests(port, args.sessions, round_):
                    during.setdefault(route(path), []).append(took)
                round_ += 1
            count = sum(map(len, during.values()))
            print(f"\n2. while indexing (the first {window:.1f} s): {count} requests")
            show(during)
            time.sleep(max(0.0, started + 3 * build - time.perf_counter()))
            after: dict[str, list[float]] = {}
            for round_ in range(5):
                for path, took in requests(port, args.sessions, round_):
                    after.setdefault(route(path), []).append(took)
            print("\n3. once indexed:")
            show(after)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
