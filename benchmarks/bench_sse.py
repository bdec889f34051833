"""Server-Sent Events: what 100 following clients cost the coordinator, and replay speed.

Run: ``python benchmarks/bench_sse.py [--events N] [--clients C] [--replay R]``.
The clients run in a child process (raw sockets that read and count), so the
coordinator's event loop carries only the server's work, as it would in
production.

- ``publish``: the coordinator publishes N events (``Event(...)`` and
  ``await bus.publish``, yielding after every 100) on a bus with a
  ``JsonlSink``, serving ``create_app(workspace, bus=bus)`` in-process, with no
  client and then with C clients following the session. Per-event publish
  latency p50/p99, and per 100-event burst the wall time until the
  coordinator has control again (p99): that includes the time the loop spent
  serving clients, the real slowdown a coordinator sees.
- ``replay``: a session of R events on disk, served from files
  (``create_app(workspace)``); one client resumes after the first event
  (``Last-Event-ID``) and reads to the last: events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import uvicorn
from starlette.applications import Starlette

from eventbus import Event, EventBus, EventType, encode_jsonl
from eventbus.web import create_app
from sinks.jsonl import JsonlSink

SESSION = "bench"


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port for the block; yield the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1, backlog=1024
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True


# --- the client process ----------------------------------------------------------


async def _client(port: int, path: str, headers: str, ready: asyncio.Event) -> int:
    """Read one stream until the server closes it; return (events, last id)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    ready.set()
    count = 0
    tail = b""
    while data := await reader.read(1 << 16):
        block = tail + data
        count += block.count(b"\nid: ") + block.startswith(b"id: ")
        tail = block[-8:]
        if b'"message":"last"' in block:
            break
    writer.close()
    return count


async def _clients(port: int, count: int, path: str, headers: str) -> None:
    ready = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(_client(port, path, headers, ready[i])) for i in range(count)]
    for event in ready:
        await event.wait()
    print("ready", flush=True)
    started = time.perf_counter()
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    print(f"done {sum(results)} {elapsed:.6f}", flush=True)


async def run_clients(
    port: int, count: int, path: str, last_event_id: str | None, ready: anyio.Event | None = None
) -> float:
    """Run ``count`` clients in a child process; return seconds from connected to last event.

    ``ready`` is set once every client has its response headers.
    """
    headers = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    command = [sys.executable, __file__, "--client", str(port), str(count), path, headers]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        output = b""
        while b"ready\n" not in output:
            output += await process.stdout.receive()
        if ready is not None:
            ready.set()
        while not (b"done" in output and output.endswith(b"\n")):
            output += await process.stdout.receive()
        await process.wait()
    events, elapsed = output.decode().split()[-2:]
    assert int(events) >= count, f"the clients saw {events} events"
    return float(elapsed)


# --- the benchmarks ---------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def publish_run(root: Path, events: int, clients: int) -> dict[str, float]:
    """Publish ``events`` with ``clients`` following; return latency figures (µs)."""
    latencies: list[float] = []
    bursts: list[float] = []
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(root))
        async with serving(create_app(root, bus=bus)) as port, anyio.create_task_group() as tg:
            if clients:
                ready = anyio.Event()
                path = f"/api/sessions/{SESSION}/stream"
                tg.start_soon(run_clients, port, clients, path, None, ready)
                await ready.wait()
            perf = time.perf_counter_ns
            burst_start = perf()
            for n in range(events):
                message = "last" if n == events - 1 else "event"
                start = perf()
                await bus.publish(
                    Event(event_type=EventType.INFO, session_id=SESSION, message=message)
                )
                latencies.append((perf() - start) / 1000)
                if n % 100 == 99:
                    await anyio.lowlevel.checkpoint()
                    now = perf()
                    bursts.append((now - burst_start) / 1000)
                    burst_start = now
            await bus.flush()
    return {
        "p50": _percentile(latencies, 0.5),
        "p99": _percentile(latencies, 0.99),
        "burst_p99": _percentile(bursts, 0.99),
    }


async def replay_run(root: Path, count: int) -> float:
    """Events/s for one client resuming after the first event of a ``count``-event session."""
    events = [
        Event(
            event_type=EventType.INFO,
            session_id=SESSION,
            message="last" if n == count - 1 else "event",
            metadata={"n": n},
        )
        for n in range(count)
    ]
    log = root / SESSION / "events.jsonl"
    log.parent.mkdir(parents=True)
    log.write_bytes(encode_jsonl(events))
    async with serving(create_app(root)) as port:
        elapsed = await run_clients(port, 1, f"/api/sessions/{SESSION}/stream", events[0].id)
    return (count - 1) / elapsed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        alone = await publish_run(Path(tmp) / "alone", args.events, 0)
        followed = await publish_run(Path(tmp) / "followed", args.events, args.clients)
        print(f"publish {args.events} events, in-process server, JsonlSink subscribed")
        print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}{'burst p99 µs':>16}")
        for name, figures in (("no client", alone), (f"{args.clients} SSE clients", followed)):
            print(
                f"{name:24}{figures['p50']:10.1f}{figures['p99']:10.1f}{figures['burst_p99']:16.0f}"
            )
        print(
            f"ratio (clients / none): publish p99 {followed['p99'] / alone['p99']:.2f}x, "
            f"burst p99 {followed['burst_p99'] / alone['burst_p99']:.2f}x"
        )
        rate = await replay_run(Path(tmp) / "replay", args.replay)
        print(f"replay over SSE from files: {args.replay} events at {rate:,.0f} events/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, count, path, headers = sys.argv[2:6]
        asyncio.run(_clients(int(port), int(count), path, headers.replace("\\r\\n", "\r\n")))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--replay", type=int, default=100_000)
    anyio.run(main, parser.parse_args())
