"""Benchmark the OpenTelemetry export: its cost per event on the bus, and a log's export.

Run: ``python benchmarks/bench_otel.py [--events N] [--tasks T] [--endpoint URL]``

1. N events shaped like a session (tasks holding an agent, an LLM call, a
   command, a diff; default 120,000) published through an ``EventBus`` with
   one no-op sink (the baseline: a bus without the OTel sink), then with an
   ``OtelSink`` beside it: with an exporter that discards the spans (the
   conversion and the SDK's span work), and with the OTLP/HTTP exporter
   posting to a local receiver (protobuf encoding and HTTP too). Prints
   microseconds per event and the ratio to the baseline, same run.
2. The demo session with T tasks (default 50) is logged, then exported from
   its log (``eventbus export-otel``'s path: read, convert, export, close),
   to the discarding exporter and to the local receiver (and to ``--endpoint``,
   e.g. a running Phoenix, if given).

The local receiver is a thread of this process that reads each request and
answers 200: it competes for the GIL, so the OTLP figures are an upper bound.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from eventbus import Event, EventBus, EventType
from eventbus.cli._otel import export_logs
from eventbus.coordinator._demo_agents import IDEA, build_demo_coordinator
from sinks.jsonl import JsonlSink
from sinks.otel import OtelSink

SESSION = "bench-otel"


class Discard(SpanExporter):
    """Counts the spans and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class NoOpSink:
    """The baseline's only sink: receives every batch, does nothing."""

    name = "noop"

    async def write(self, events: Sequence[Event]) -> None:
        pass

    async def aclose(self) -> None:
        pass


@contextmanager
def local_receiver() -> Iterator[str]:
    """An OTLP/HTTP endpoint in a thread that accepts every request; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def session_events(count: int) -> list[Event]:
    """About ``count`` events: a session of tasks, each with an agent, an LLM call and more."""
    started = Event(event_type=EventType.SESSION_STARTED, session_id=SESSION, message="go")
    events = [started]
    task_number = 0
    while len(events) < count - 1:
        task_number += 1
        task_id = f"task_{task_number}"

        def make(
            event_type: EventType, parent: str, task_id: str = task_id, **metadata: object
        ) -> Event:
            return Event(
                event_type=event_type,
                session_id=SESSION,
                message=f"{event_type.value} {task_id}",
                phase="EXECUTION",
                task_id=task_id,
                agent_role="coder",
                model="model-a",
                metadata=dict(metadata),
                parent_id=parent,
            )

        task = make(EventType.TASK_STARTED, started.id)
        agent = make(EventType.AGENT_INVOKED, task.id)
        request = make(
            EventType.LLM_REQUEST_SENT,
            task.id,
            prompt_tokens=150,
            messages=[{"role": "user", "content": f"write {task_id}"}],
        )
        events += [
            task,
            agent,
            request,
            make(
                EventType.LLM_RESPONSE_RECEIVED,
                request.id,
                prompt_tokens=150,
                completion_tokens=300,
                total_tokens=450,
                cost_usd=0.0049,
                response="def f(): ...",
            ),
            make(EventType.AGENT_RESPONSE, task.id, invocation_id=agent.id),
            make(EventType.DIFF_APPLIED, task.id, files=["app/f.py"]),
            make(EventType.COMMAND_EXECUTED, task.id, command="make", exit_code=0, duration_s=0.1),
            make(EventType.TASK_COMPLETED, task.id, duration_s=0.2),
        ]
    events.append(
        Event(
            event_type=EventType.SESSION_COMPLETED,
            session_id=SESSION,
            message="done",
            parent_id=started.id,
        )
    )
    return events


async def publish_all(events: Sequence[Event], otel: OtelSink | None) -> float:
    """Seconds to publish ``events`` and have every sink handle them (closing included)."""
    begin = time.perf_counter()
    async with EventBus() as bus:
        bus.subscribe(NoOpSink())
        if otel is not None:
            bus.subscribe(otel)
        for event in events:
            await bus.publish(event)
        await bus.flush()
    return time.perf_counter() - begin


def best_of(repeats: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(repeats))


def bus_cost(count: int, repeats: int) -> None:
    events = session_events(count)
    n = len(events)
    print(f"1. Export cost on the bus: {n:,} events ({n // 8:,} tasks), best of {repeats}")
    base = best_of(repeats, lambda: anyio.run(publish_all, events, None))
    print(f"   {'bus, no-op sink (baseline)':44} {base / n * 1e6:7.2f} us/event   1.00x")
    discard = Discard()
    with_sdk = best_of(repeats, lambda: anyio.run(publish_all, events, OtelSink(exporter=discard)))
    spans = discard.spans // repeats
    print(
        f"   {'+ OtelSink, spans discarded':44} {with_sdk / n * 1e6:7.2f} us/event"
        f"   {with_sdk / base:5.2f}x  ({spans:,} spans)"
    )
    with local_receiver() as url:
        otlp = best_of(repeats, lambda: anyio.run(publish_all, events, OtelSink(url)))
    print(
        f"   {'+ OtelSink, OTLP/HTTP to a local receiver':44} {otlp / n * 1e6:7.2f} us/event"
        f"   {otlp / base:5.2f}x"
    )
    print(
        f"   export cost per event: {(otlp - base) / n * 1e6:.2f} us (OTLP), "
        f"{(with_sdk - base) / n * 1e6:.2f} us (conversion + SDK)"
    )


async def log_session(root: Path, tasks: int) -> int:
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(root))
        coordinator = build_demo_coordinator(bus, root, tasks=tasks, run_commands=False)
        await coordinator.run(IDEA, session_id=SESSION)
    return sum(1 for _ in (root / SESSION / "events.jsonl").open("rb"))


async def export_log(root: Path, sink: OtelSink) -> float:
    begin = time.perf_counter()
    await export_logs(root, [SESSION], sink)
    await sink.aclose()
    return time.perf_counter() - begin


def log_export(tasks: int, repeats: int, endpoint: str | None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        lines = anyio.run(log_session, root, tasks)
        print(f"\n2. Export of a {tasks}-task demo session from its log ({lines:,} events)")
        discard = Discard()
        seconds = best_of(repeats, lambda: anyio.run(export_log, root, OtelSink(exporter=discard)))
        spans = discard.spans // repeats
        print(f"   {'spans discarded':30} {seconds * 1000:8.1f} ms  ({spans} spans)")
        with local_receiver() as url:
            seconds = best_of(repeats, lambda: anyio.run(export_log, root, OtelSink(url)))
        print(f"   {'OTLP/HTTP, local receiver':30} {seconds * 1000:8.1f} ms")
        if endpoint is not None:
            seconds = best_of(repeats, lambda: anyio.run(export_log, root, OtelSink(endpoint)))
            print(f"   {'OTLP/HTTP, ' + endpoint:30} {seconds * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoint", default=None, help="also export the log there (Phoenix)")
    args = parser.parse_args()
    bus_cost(args.events, args.repeats)
    log_export(args.tasks, args.repeats, args.endpoint)


if __name__ == "__main__":
    main()
