"""Server-Sent Events: what following clients cost the coordinator and the API; replay speed.

Run: ``python benchmarks/bench_sse.py [--events N] [--clients C] [--replay R]
[--idle I] [--fanout F] [--sections publish,idle,fanout,replay]``.
The clients run in child processes (raw sockets that read and count), so
the measured process carries only the server's work, as it would in
production.

- ``publish``: the coordinator publishes N events (``Event(...)`` and
  ``await bus.publish``, yielding after every 100) on a bus with a
  ``JsonlSink``, with no client and then with C clients following the
  session, two ways: ``demo --serve``'s dashboard (the server in a thread
  with its own event loop, following the files), and ``create_app(workspace,
  bus=bus)`` served on the coordinator's own loop. Per-event publish latency
  p50/p99, and per 100-event burst the wall time until the coordinator has
  control again (p99): that includes the time the loop spent serving
  clients. The issue's target: with the dashboard, publish p99 with C=100
  clients within 2x of none.
- ``idle``: ``eventbus serve``'s app (files, no bus) over 20 sessions;
  ``GET /api/sessions`` from 8 keep-alive connections for a few seconds,
  with no stream open and with I idle streams (one session each, no event
  written), alternately, a few times each: the medians of requests/s, p99
  latency and the server's CPU time per request. The target: at least 80%
  of the rate with I=500.
- ``fanout``: F clients follow one session from files; 200 events are
  appended: every client must get all of them (counted), and how long the
  last client took.
- ``replay``: a session of R events on disk, served from files
  (``create_app(workspace)``); one client resumes after the first event
  (``Last-Event-ID``) and reads to the last: events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import uvicorn
from starlette.applications import Starlette

from eventbus import Event, EventBus, EventType, encode_jsonl
from eventbus.cli._serve import bind, dashboard
from eventbus.web import create_app
from sinks.jsonl import EventLog, JsonlSink

SESSION = "bench"


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port for the block; yield the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
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


async def _idle(port: int, count: int, sessions: int) -> None:
    """Open ``count`` streams (session ``i % sessions`` each), then hold them until killed."""
    streams = []
    for n in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /api/sessions/s{n % sessions}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        streams.append((reader, writer))
    for reader, _ in streams:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _load(port: int, connections: int, seconds: float) -> None:
    """GET /api/sessions from ``connections`` keep-alive connections; print count and p99."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        while (start := time.perf_counter()) < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    print(f"done {len(latencies) / elapsed:.1f} {_percentile(latencies, 0.99) * 1000:.3f}")


async def _child(*arguments: str) -> list[str]:
    """Run this file with ``arguments`` and return its last line's words."""
    command = [sys.executable, __file__, *arguments]
    result = await anyio.run_process(command)
    words: list[str] = result.stdout.decode().split()
    return words


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


async def publish_run(root: Path, events: int, clients: int, *, thread: bool) -> dict[str, float]:
    """Publish ``events`` with ``clients`` following; return latency figures (µs).

    ``thread``: the dashboard of ``demo --serve`` (its own thread and loop,
    following the files); else ``create_app(bus=bus)`` on the coordinator's loop.
    """
    latencies: list[float] = []
    bursts: list[float] = []
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(root))
        # The session's log exists before the clients follow it.
        await bus.publish(Event(event_type=EventType.INFO, session_id=SESSION, message="start"))
        await bus.flush()
        async with AsyncExitStack() as stack:
            if thread:
                sock = bind("127.0.0.1", 0)
                await stack.enter_async_context(dashboard(root, sock=sock, out=io.StringIO()))
                port = sock.getsockname()[1]
            else:
                port = await stack.enter_async_context(serving(create_app(root, bus=bus)))
            tg = await stack.enter_async_context(anyio.create_task_group())
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


def _write_sessions(root: Path, sessions: int, events: int) -> None:
    for n in range(sessions):
        batch = [
            Event(event_type=EventType.INFO, session_id=f"s{n}", message=f"event {i}")
            for i in range(events)
        ]
        (root / f"s{n}").mkdir(parents=True)
        (root / f"s{n}" / "events.jsonl").write_bytes(encode_jsonl(batch))


async def _api_load(port: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p99 ms, server CPU µs per request) of ``GET /api/sessions``."""
    cpu = time.process_time()
    rate, p99 = map(float, (await _child("--load", str(port), "8", str(seconds)))[-2:])
    return rate, p99, (time.process_time() - cpu) / (rate * seconds) * 1e6


async def idle_run(
    root: Path, streams: int, seconds: float, repeats: int
) -> tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]:
    """``/api/sessions`` figures with no stream and with ``streams`` idle ones, interleaved."""
    none: list[tuple[float, float, float]] = []
    idle: list[tuple[float, float, float]] = []
    async with serving(create_app(root)) as port:
        await _api_load(port, 1)  # warm up: the index, the first connections
        for _ in range(repeats):
            none.append(await _api_load(port, seconds))
            command = [sys.executable, __file__, "--idle", str(port), str(streams), "20"]
            async with await anyio.open_process(command) as holder:
                assert holder.stdout is not None
                output = b""
                while b"ready\n" not in output:
                    output += await holder.stdout.receive()
                idle.append(await _api_load(port, seconds))
                holder.kill()
    return none, idle


async def fanout_run(root: Path, clients: int, events: int) -> tuple[int, float]:
    """(events delivered in all, seconds) for ``clients`` following one session from files."""
    log = EventLog(root / SESSION / "events.jsonl")
    first = Event(event_type=EventType.INFO, session_id=SESSION, message="first")
    log.append(first)
    async with serving(create_app(root)) as port:
        command = [
            sys.executable,
            __file__,
            "--client",
            str(port),
            str(clients),
            f"/api/sessions/{SESSION}/stream",
            f"Last-Event-ID: {first.id}\\r\\n",
        ]
        async with await anyio.open_process(command) as process:
            assert process.stdout is not None
            output = b""
            while b"ready\n" not in output:
                output += await process.stdout.receive()
            for n in range(events):
                message = "last" if n == events - 1 else "event"
                log.append(Event(event_type=EventType.INFO, session_id=SESSION, message=message))
            while not (b"done" in output and output.endswith(b"\n")):
                output += await process.stdout.receive()
            await process.wait()
    log.close()
    delivered, elapsed = output.decode().split()[-2:]
    return int(delivered), float(elapsed)


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


def _print_publish(
    args: argparse.Namespace, title: str, alone: dict[str, float], followed: dict[str, float]
) -> None:
    print(title)
    print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}{'burst p99 µs':>16}")
    for name, figures in (("no client", alone), (f"{args.clients} SSE clients", followed)):
        print(f"{name:24}{figures['p50']:10.1f}{figures['p99']:10.1f}{figures['burst_p99']:16.0f}")
    print(
        f"ratio (clients / none): publish p99 {followed['p99'] / alone['p99']:.2f}x, "
        f"burst p99 {followed['burst_p99'] / alone['burst_p99']:.2f}x"
    )


async def main(args: argparse.Namespace) -> None:
    sections = set(args.sections.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if "publish" in sections:
            await publish_run(Path(tmp) / "warm-up", 5000, 0, thread=True)  # imports, caches
            for thread, title in (
                (True, "publish, demo --serve's dashboard (own thread and loop, files)"),
                (False, "publish, create_app(bus=bus) on the coordinator's loop"),
            ):
                mode = "thread" if thread else "loop"
                alone = await publish_run(
                    Path(tmp) / f"alone-{mode}", args.events, 0, thread=thread
                )
                followed = await publish_run(
                    Path(tmp) / f"followed-{mode}", args.events, args.clients, thread=thread
                )
                _print_publish(
                    args, f"{args.events} events, JsonlSink subscribed, {title}", alone, followed
                )
        if "idle" in sections:
            root = Path(tmp) / "idle"
            _write_sessions(root, 20, 100)
            none, idle = await idle_run(root, args.idle, args.seconds, args.repeats)
            print(
                f"GET /api/sessions (20 sessions), 8 connections, {args.seconds:g} s per measure, "
                f"{args.repeats} measures of each, interleaved (medians)"
            )
            print(f"{'':24}{'req/s':>10}{'p99 ms':>10}{'CPU µs/req':>12}")
            medians = {}
            for name, figures in (("no stream", none), (f"{args.idle} idle streams", idle)):
                rate, p99, cpu = (
                    statistics.median(column) for column in zip(*figures, strict=True)
                )
                medians[name] = rate, p99, cpu
                print(f"{name:24}{rate:10.0f}{p99:10.2f}{cpu:12.0f}")
            (rate0, p990, cpu0), (rate1, p991, cpu1) = medians.values()
            pairs = ", ".join(f"{i[0] / n[0]:.2f}" for n, i in zip(none, idle, strict=True))
            print(
                f"ratio (idle streams / none): rate {rate1 / rate0:.2f}x, p99 {p991 / p990:.2f}x, "
                f"server CPU per request {cpu1 / cpu0:.2f}x; "
                f"rate per pair: {pairs}"
            )
        if "fanout" in sections:
            delivered, elapsed = await fanout_run(Path(tmp) / "fanout", args.fanout, 200)
            print(
                f"fan-out from files: {args.fanout} clients x 200 events: {delivered} delivered "
                f"(expected {args.fanout * 200}), last client done in {elapsed:.2f} s"
            )
        if "replay" in sections:
            rate = await replay_run(Path(tmp) / "replay", args.replay)
            print(f"replay over SSE from files: {args.replay} events at {rate:,.0f} events/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, count, path, headers = sys.argv[2:6]
        asyncio.run(_clients(int(port), int(count), path, headers.replace("\\r\\n", "\r\n")))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--idle":
        asyncio.run(_idle(*map(int, sys.argv[2:5])))
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        asyncio.run(_load(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--replay", type=int, default=100_000)
    parser.add_argument("--idle", type=int, default=500, help="idle streams for the API figure")
    parser.add_argument("--fanout", type=int, default=500, help="clients of the fan-out")
    parser.add_argument("--seconds", type=float, default=3.0, help="API load per measure")
    parser.add_argument("--repeats", type=int, default=3, help="API measures of each kind")
    parser.add_argument("--sections", default="publish,idle,fanout,replay")
    anyio.run(main, parser.parse_args())
