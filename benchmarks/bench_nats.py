"""The JetStream bridge: published events/s with acks, consumed events/s, end-to-end latency.

Needs a nats-server with JetStream on 127.0.0.1:4222 (``nats-server -js``);
run ``python benchmarks/bench_nats.py``. Baselines in the same run: a bus
with no sink (the publishing floor) and a bus with a ``MemorySink``; the
aggregator's rate (``eventbus relay``'s sinks: JsonlSink + EventIndex +
ArtifactSink, durable) is measured for plain ``info`` events and for the
demo session's mix (artifacts and run summaries included), each against
the same run's ``JetStreamSink`` publish rate of those events. The latency
is from an event's creation on a producer to the line in the aggregator's
log (fsynced), with four producers offering 5,000 events/s in all; each
producer is a process of its own, so that its CPU does not compete with the
aggregator's for one GIL (the aggregator still shares the machine's cores).
Each figure is the median of REPEATS repeats, each ratio taken against the
same repeat's baseline.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
import nats
import nats.aio.client
import nats.js.errors

from eventbus import Event, EventBus, EventType, MemorySink, new_event_id
from sinks.artifacts import ArtifactSink
from sinks.index import EventIndex
from sinks.jsonl import JsonlSink
from sinks.nats import JetStreamSink, JetStreamSource

sys.path.insert(0, str(Path(__file__).parent))
from bench_artifacts import demo_events

URL = "nats://127.0.0.1:4222"
EVENTS = 50_000
MIX_EVENTS = 30_000
PRODUCERS = 4
OFFERED = 5_000  # events/s, all producers together
SECONDS = 4
REPEATS = 3
STARTUP = 3.0  # seconds for the producer processes to start (Python, imports, a connection)


def _event(i: int) -> Event:
    return Event(event_type=EventType.INFO, session_id=f"s{i % 8}", message=f"event {i}")


async def _publish_rate(subscribe: bool, sink: object | None) -> float:
    async with EventBus() as bus:
        if sink is not None:
            bus.subscribe(sink)  # type: ignore[arg-type]
        start = time.perf_counter()
        for i in range(EVENTS):
            await bus.publish(_event(i))
        await bus.flush()
        return EVENTS / (time.perf_counter() - start)


def _mix(session: Sequence[Event], count: int) -> list[Event]:
    """``count`` events: the demo session's, again and again, each copy a new session."""
    start = datetime.now(UTC)
    events: list[Event] = []
    while len(events) < count:
        copy = f"mix{len(events) // len(session)}"
        events.extend(
            msgspec.structs.replace(
                event,
                id=new_event_id(),
                session_id=copy,
                timestamp=start + timedelta(microseconds=10 * (len(events) + i)),
            )
            for i, event in enumerate(session)
        )
    return events[:count]


async def _publish_events(stream: str, events: Sequence[Event]) -> float:
    """Publish ``events`` through a JetStreamSink; events/s, every PubAck awaited."""
    async with EventBus() as bus:
        bus.subscribe(JetStreamSink(URL, stream=stream, subject_prefix=stream.lower()))
        start = time.perf_counter()
        for event in events:
            await bus.publish(event)
        await bus.flush()
        return len(events) / (time.perf_counter() - start)


async def _consume_rate(stream: str) -> float:
    """Events/s consumed from ``stream`` into the relay's three sinks (as ``eventbus relay``)."""
    with tempfile.TemporaryDirectory() as root:
        async with EventBus() as bus:
            bus.subscribe(JsonlSink(root))
            bus.subscribe(EventIndex())
            bus.subscribe(ArtifactSink(root))
            async with JetStreamSource(URL, stream=stream, subject_prefix=stream.lower()) as src:
                start = time.perf_counter()
                await src.run(bus, until_idle=True)
                elapsed = time.perf_counter() - start
    return src.stats().published / elapsed


class _LoggedClock(JsonlSink):
    """A JsonlSink that records how long after its creation each event was in the log."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.latencies: list[float] = []
        self.written = 0

    async def write(self, events: Sequence[Event]) -> None:
        await super().write(events)  # returns once the lines are fsynced
        now = datetime.now(UTC)
        self.latencies.extend((now - event.timestamp).total_seconds() for event in events)
        self.written += len(events)


async def _produce(stream: str, producer: int, rate: float, start_at: float) -> int:
    """One producer process: ``rate`` events/s for SECONDS, flushed (PubAcks awaited) every 10 ms.

    It starts at ``start_at`` (a wall-clock time, the same for every producer).
    Each event is created (its timestamp taken) just before it is published.
    Returns how many events it published.
    """
    sink = JetStreamSink(URL, stream=stream, subject_prefix=stream.lower())
    await sink.connect()
    async with EventBus() as bus:
        bus.subscribe(sink)
        await anyio.sleep(max(0.0, start_at - time.time()))
        start, done = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < SECONDS:
            due = int(elapsed * rate)
            for i in range(done, due):
                await bus.publish(_event(producer * 1_000_000 + i))
            done = max(done, due)
            await bus.flush()
            await anyio.sleep(0.01)
    return done


def _producer_process(
    stream: str, producer: int, rate: float, start_at: float
) -> subprocess.Popen[str]:
    """Start a producer in a process of its own: its CPU is not the aggregator's GIL."""
    return subprocess.Popen(
        [sys.executable, __file__, "--produce", stream, str(producer), str(rate), str(start_at)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


async def _latency(stream: str, durable: str) -> tuple[float, float, int]:
    """p50 and p99 (ms) from an event's creation on a producer to the aggregator's log.

    PRODUCERS producer processes offer OFFERED events/s in all; this process
    is the aggregator (JsonlSink + EventIndex + ArtifactSink, as ``eventbus relay``).
    """
    with tempfile.TemporaryDirectory() as root:
        clock = _LoggedClock(root)
        source = JetStreamSource(
            URL, stream=stream, subject_prefix=stream.lower(), durable=durable, start="new"
        )
        async with EventBus() as aggregator, source:
            aggregator.subscribe(clock)
            aggregator.subscribe(EventIndex())
            aggregator.subscribe(ArtifactSink(root))
            async with anyio.create_task_group() as tg:
                tg.start_soon(source.run, aggregator)
                start_at = time.time() + STARTUP  # all producers start together
                producers = [
                    _producer_process(stream, producer, OFFERED / PRODUCERS, start_at)
                    for producer in range(PRODUCERS)
                ]
                sent = 0
                for process in producers:
                    out, _ = await anyio.to_thread.run_sync(process.communicate)
                    if process.returncode:
                        raise RuntimeError(f"a producer failed (exit {process.returncode})")
                    sent += int(out.split()[-1])
                with anyio.fail_after(30):
                    while clock.written < sent:  # noqa: ASYNC110 (a benchmark's poll)
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    ordered = sorted(clock.latencies)
    p50 = statistics.median(ordered) * 1000
    return p50, ordered[int(len(ordered) * 0.99)] * 1000, len(ordered)


async def _streams(nc: nats.aio.client.Client, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(name)


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):,.2f}-{max(values):,.2f}"


async def main() -> None:
    mix_session = await demo_events()
    names: list[str] = []

    def stream(kind: str) -> str:
        names.append(f"BENCH{kind}{uuid.uuid4().hex[:8].upper()}")
        return names[-1]

    floor, memory, jetstream, consumed = [], [], [], []
    mix_published, mix_consumed, p50s, p99s = [], [], [], []
    measured = 0
    try:
        for _ in range(REPEATS):
            floor.append(await _publish_rate(False, None))
            memory.append(await _publish_rate(True, MemorySink()))
            info = stream("INFO")
            jetstream.append(
                await _publish_rate(
                    True, JetStreamSink(URL, stream=info, subject_prefix=info.lower())
                )
            )
            consumed.append(await _consume_rate(info))
            mix = stream("MIX")
            mix_published.append(await _publish_events(mix, _mix(mix_session, MIX_EVENTS)))
            mix_consumed.append(await _consume_rate(mix))
            p50, p99, measured = await _latency(stream("LAT"), "latency")
            p50s.append(p50)
            p99s.append(p99)
    finally:
        nc = await nats.connect(URL)
        await _streams(nc, names)
        await nc.close()
    median = statistics.median
    info_ratio = [c / j for c, j in zip(consumed, jetstream, strict=True)]
    mix_ratio = [c / p for c, p in zip(mix_consumed, mix_published, strict=True)]
    print(f"medians of {REPEATS} repeats; each ratio against the same repeat's baseline")
    print(f"{EVENTS} events, each its own message, every PubAck awaited before flush returns")
    print(f"  bus, no sink:            {median(floor):>10,.0f} events/s  (1.00x)")
    print(
        f"  bus + MemorySink:        {median(memory):>10,.0f} events/s  "
        f"({median(m / f for m, f in zip(memory, floor, strict=True)):.2f}x)"
    )
    print(
        f"  bus + JetStreamSink:     {median(jetstream):>10,.0f} events/s  "
        f"({median(j / f for j, f in zip(jetstream, floor, strict=True)):.2f}x)"
    )
    print("consumed into JsonlSink + EventIndex + ArtifactSink (as eventbus relay), durable:")
    print(
        f"  {EVENTS} info events:     {median(consumed):>10,.0f} events/s  "
        f"({median(info_ratio):.2f}x the JetStreamSink publish rate; {_spread(info_ratio)})"
    )
    print(
        f"  {MIX_EVENTS} of the demo's mix: {median(mix_consumed):>8,.0f} events/s  "
        f"({median(mix_ratio):.2f}x its publish rate, {median(mix_published):,.0f}/s; "
        f"{_spread(mix_ratio)})"
    )
    print(
        f"end to end, {PRODUCERS} producer processes offering {OFFERED:,} events/s in all for "
        f"{SECONDS} s (created -> line in the aggregator's log), {measured} events: "
        f"p50 {median(p50s):.1f} ms, p99 {median(p99s):.1f} ms "
        f"(p99s {', '.join(f'{p:.0f}' for p in p99s)})"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--produce"]:
        args = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
        print(anyio.run(_produce, *args))
    else:
        anyio.run(main, backend="asyncio")
