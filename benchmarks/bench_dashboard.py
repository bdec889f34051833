"""The dashboard on long sessions: time to a usable page and the browser's memory, and
``/api/usage?by=day`` over a million events.

Run: ``python benchmarks/bench_dashboard.py [--events N] [--usage-events M]``
(needs the ``web`` extra, Playwright and Chromium at /usr/bin/chromium).

- ``page``: a session of N events (default 100,000: 400 tasks, each with model
  calls, commands and gates) on disk, served by ``eventbus serve`` in a child
  process. Chromium (1400x900) opens the session's page; the figure is the time
  from navigation to the page being usable (the trace, the task grid, the
  timeline, the per-model table and the first page of the feed drawn:
  ``#session-view[data-state=loaded]``), the first time (the server builds its
  index of the workspace) and again (warm), beside the same for the demo-size
  session (140 events) as the baseline; then the page's JS heap
  (CDP ``Performance.getMetrics`` ``JSHeapUsedSize``) and the DOM's node count.
- ``usage``: M events (default 1,000,000, a quarter of them LLM responses, over
  10 sessions and 30 days) in a workspace; ``Workspace.usage("day")`` with the
  server's index (built first, then warm) and without (the CLI's scan), beside
  ``usage("model")``; and ``GET /api/usage?by=day`` through the app, twice (the
  second answer is kept from the first while no log changes).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from eventbus import Event, EventType, encode_jsonl
from eventbus.web import create_app
from sinks.workspace import Workspace

CHROMIUM = "/usr/bin/chromium"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-latest", "sim-large")


def session_events(session_id: str, count: int, *, tasks: int = 400, days: int = 1) -> list[Event]:
    """A session of about ``count`` events: per task, lifecycle events around rounds of
    an agent's model call (request, response), a command and two gates."""
    per_task = max((count - 2) // tasks, 6)
    rounds = max((per_task - 4) // 6, 1)
    step = timedelta(days=days) / count
    events: list[Event] = []
    moment = T0

    def add(**fields: object) -> Event:
        nonlocal moment
        moment += step
        event = Event(session_id=session_id, timestamp=moment, **fields)  # type: ignore[arg-type]
        events.append(event)
        return event

    add(event_type=EventType.SESSION_STARTED, message="started", phase="EXECUTION")
    for t in range(tasks):
        task = f"task-{t:04d}"
        role = ("coder", "tester", "reviewer")[t % 3]
        common = {"task_id": task, "agent_role": role, "phase": "EXECUTION"}
        add(event_type=EventType.TASK_SCHEDULED, message=f"scheduled {task}", **common)
        started = add(event_type=EventType.TASK_STARTED, message=f"started {task}", **common)
        add(
            event_type=EventType.AGENT_INVOKED,
            message=f"agent {role}",
            parent_id=started.id,
            metadata={"attempt": 1},
            **common,
        )
        for r in range(rounds):
            model = MODELS[(t + r) % len(MODELS)]
            request = add(
                event_type=EventType.LLM_REQUEST_SENT,
                message="request",
                model=model,
                parent_id=started.id,
                metadata={"prompt_tokens": 300},
                **common,
            )
            add(
                event_type=EventType.LLM_RESPONSE_RECEIVED,
                message="response",
                model=model,
                parent_id=request.id,
                metadata={
                    "prompt_tokens": 300,
                    "completion_tokens": 120,
                    "total_tokens": 420,
                    "cached_tokens": 100,
                    "duration_s": 0.8,
                },
                **common,
            )
            add(
                event_type=EventType.COMMAND_EXECUTED,
                message="Command exited 0: pytest",
                parent_id=started.id,
                metadata={
                    "command": "pytest -q",
                    "exit_code": 0,
                    "duration_s": 0.2,
                    "output": "1 passed",
                },
                **common,
            )
            for gate in ("scope", "diff-size"):
                add(
                    event_type=EventType.GATE_EVALUATED,
                    message=f"Gate {gate}: pass",
                    parent_id=started.id,
                    metadata={"gate": gate, "decision": "pass", "reason": "ok"},
                    **common,
                )
            add(event_type=EventType.INFO, message=f"round {r} of {task}", **common)
        add(
            event_type=EventType.TASK_COMPLETED,
            message=f"completed {task}",
            parent_id=started.id,
            metadata={"duration_s": 1.0},
            **common,
        )
    add(event_type=EventType.SESSION_COMPLETED, message="completed", phase="COMPLETE")
    return events


def write_session(root: Path, events: list[Event]) -> None:
    directory = root / events[0].session_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "events.jsonl").write_bytes(encode_jsonl(events))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(root: Path) -> Iterator[str]:
    """``eventbus serve ROOT`` in a child process; yields its URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "serve", str(root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/openapi.json", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def heap(cdp: Any) -> dict[str, float]:
    """The page's metrics (``JSHeapUsedSize``, ...) from CDP ``Performance.getMetrics``."""
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def page_figures(events: int) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        small = session_events("small", 140, tasks=8)
        large = session_events("large", events)
        write_session(root, small)
        write_session(root, large)
        size = (root / "large" / "events.jsonl").stat().st_size
        print(
            f"page: a session of {len(large):,} events ({size / 2**20:.0f} MiB), "
            f"baseline {len(small)} events"
        )
        with server(root) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            figures: dict[str, float] = {}
            for label, session in (
                ("large, cold", "large"),
                ("small", "small"),
                ("large, warm", "large"),
            ):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                started = time.perf_counter()
                page.goto(f"{url}/#/sessions/{session}")
                page.wait_for_selector('#session-view[data-state="loaded"]', timeout=60_000)
                figures[label] = time.perf_counter() - started
                if label == "large, warm":
                    cdp = page.context.new_cdp_session(page)
                    cdp.send("Performance.enable")
                    metrics = {
                        m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]
                    }
                    nodes = page.evaluate("document.getElementsByTagName('*').length")
                    height = page.evaluate("document.documentElement.scrollHeight")
                    print(
                        f"  JS heap used {metrics['JSHeapUsedSize'] / 2**20:.1f} MiB "
                        f"(total {metrics['JSHeapTotalSize'] / 2**20:.1f} MiB), "
                        f"{nodes:,} DOM nodes, page {height} px tall"
                    )
                    page.wait_for_selector('#session-view[data-responses="read"]', timeout=60_000)
                    t = time.perf_counter() - started
                    metrics = {
                        m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]
                    }
                    print(
                        f"  with every response read for the charts ({t:.1f} s after navigation):"
                        f" JS heap used {metrics['JSHeapUsedSize'] / 2**20:.1f} MiB"
                    )
                    # Scrolling the feed reads its next pages: 10 more pages.
                    t = time.perf_counter()
                    for _ in range(10):
                        before = page.locator('[data-testid="event-row"]').count()
                        page.evaluate(
                            "f => { f.scrollTop = f.scrollHeight; }",
                            page.get_by_test_id("feed").element_handle(),
                        )
                        rows_now = "document.querySelectorAll('[data-testid=event-row]').length"
                        page.wait_for_function(f"{rows_now} > {before}")
                    rows = page.locator('[data-testid="event-row"]').count()
                    print(f"  feed scrolled to {rows:,} rows in {time.perf_counter() - t:.2f} s")
                page.close()
            browser.close()
        base = figures["small"]
        for label, seconds in figures.items():
            print(
                f"  navigation to usable, {label:12s} {seconds * 1000:7.0f} ms"
                f"  ({seconds / base:.1f}x the {len(small)}-event session)"
            )


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def usage_figures(count: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        sessions = 10
        made = time.perf_counter()
        for s in range(sessions):
            events = session_events(f"s{s:02d}", count // sessions, tasks=400, days=30)
            write_session(root, events)
        total = sum(
            sum(1 for _ in open(path, "rb"))  # noqa: SIM115
            for path in root.glob("*/events.jsonl")
        )
        print(
            f"usage: {total:,} events in {sessions} sessions over 30 days "
            f"(written in {time.perf_counter() - made:.1f} s)"
        )
        with Workspace(root) as workspace:
            build = timed(lambda: workspace.events(limit=1))
            by_day = timed(lambda: workspace.usage("day"))
            by_model = timed(lambda: workspace.usage("model"))
            rows = len(workspace.usage("day")["rows"])
        print(f"  index built in {build:.2f} s (the server's first query)")
        print(
            f"  usage by day, indexed:   {by_day:.2f} s ({rows} rows); by model {by_model:.2f} s "
            f"(day/model {by_day / by_model:.2f}x)"
        )
        with Workspace(root, index=False) as scanning:
            scan = timed(lambda: scanning.usage("day"))
        print(f"  usage by day, scanning (the CLI): {scan:.2f} s")
        with TestClient(create_app(root), base_url="http://127.0.0.1") as client:
            client.get("/api/sessions/s00/events", params={"limit": 1})
            t = time.perf_counter()
            response = client.get("/api/usage", params={"by": "day"})
            first = time.perf_counter() - t
            t = time.perf_counter()
            client.get("/api/usage", params={"by": "day"})
            again = time.perf_counter() - t
            source = response.json()["total"]["cost_source"]
            print(
                f"  GET /api/usage?by=day: {first:.2f} s, {response.status_code}, total "
                f"cost_source {source}; again with the logs unchanged: {again * 1000:.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--usage-events", type=int, default=1_000_000)
    parser.add_argument("--skip-page", action="store_true")
    parser.add_argument("--skip-usage", action="store_true")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    if not args.skip_page:
        page_figures(args.events)
    if not args.skip_usage:
        usage_figures(args.usage_events)


if __name__ == "__main__":
    main()
