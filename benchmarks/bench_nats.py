"""The JetStream bridge: published events/s with acks, consumed events/s, end-to-end latency.

Needs a nats-server with JetStream on 127.0.0.1:4222 (``nats-server -js``);
run ``python benchmarks/bench_nats.py``. Baselines in the same run: a bus
with no sink (the publishing floor) and a bus with a ``MemorySink``; the
aggregator's rate (``eventbus relay``'s sinks: JsonlSink + EventIndex +
ArtifactSink, durable) is measured for plain ``info`` events and for the
demo session's mix (artifacts and run summaries included), each against
the same run's ``JetStreamSink`` publish rate of those events. The latency
is from an event's creation on a producer to the aggregator's log, with
four producers offering 5,000 events/s in all.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
import nats

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


class _Clock(MemorySink):
    """Records how long after its creation each event reached the aggregator's sinks."""

    def __init__(self) -> None:
        super().__init__("latency")
        self.latencies: list[float] = []

    async def write(self, events: Sequence[Event]) -> None:
        now = datetime.now(UTC)
        self.latencies.extend((now - event.timestamp).total_seconds() for event in events)
        await super().write(events)


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


async def _produce(stream: str, producer: int, rate: float, sent: list[int]) -> None:
    """One producer: ``rate`` events/s for SECONDS, flushed (PubAcks awaited) every 10 ms."""
    async with EventBus() as bus:
        bus.subscribe(JetStreamSink(URL, stream=stream, subject_prefix=stream.lower()))
        start, done = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < SECONDS:
            due = int(elapsed * rate)
            for i in range(done, due):
                await bus.publish(_event(producer * 1_000_000 + i))
            sent[0] += max(0, due - done)
            done = max(done, due)
            await bus.flush()
            await anyio.sleep(0.01)


async def _latency(stream: str) -> tuple[float, float, int]:
    """p50 and p99 (ms) from an event's creation on a producer to the aggregator's log."""
    with tempfile.TemporaryDirectory() as root:
        clock = _LoggedClock(root)
        async with EventBus() as aggregator, anyio.create_task_group() as tg:
            aggregator.subscribe(clock)
            aggregator.subscribe(EventIndex())
            aggregator.subscribe(ArtifactSink(root))
            source = JetStreamSource(
                URL, stream=stream, subject_prefix=stream.lower(), durable="latency", start="new"
            )
            async with source:
                tg.start_soon(source.run, aggregator)
                sent = [0]
                async with anyio.create_task_group() as producers:
                    for producer in range(PRODUCERS):
                        producers.start_soon(_produce, stream, producer, OFFERED / PRODUCERS, sent)
                with anyio.fail_after(30):
                    while clock.written < sent[0]:  # noqa: ASYNC110 (a benchmark's poll)
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    ordered = sorted(clock.latencies)
    p50 = statistics.median(ordered) * 1000
    return p50, ordered[int(len(ordered) * 0.99)] * 1000, len(ordered)


async def main() -> None:
    stream = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    mix_stream = f"BENCHMIX{uuid.uuid4().hex[:8].upper()}"
    mix = _mix(await demo_events(), MIX_EVENTS)
    try:
        floor = await _publish_rate(False, None)
        memory = await _publish_rate(True, MemorySink())
        jetstream = await _publish_rate(
            True, JetStreamSink(URL, stream=stream, subject_prefix=stream.lower())
        )
        consumed = await _consume_rate(stream)
        mix_published = await _publish_events(mix_stream, mix)
        mix_consumed = await _consume_rate(mix_stream)
        p50, p99, measured = await _latency(stream)
    finally:
        nc = await nats.connect(URL)
        for name in (stream, mix_stream):
            await nc.jetstream().delete_stream(name)
        await nc.close()
    print(f"{EVENTS} events, each its own message, every PubAck awaited before flush returns")
    print(f"  bus, no sink:            {floor:>10,.0f} events/s  (1.00x)")
    print(f"  bus + MemorySink:        {memory:>10,.0f} events/s  ({memory / floor:.2f}x)")
    print(f"  bus + JetStreamSink:     {jetstream:>10,.0f} events/s  ({jetstream / floor:.2f}x)")
    print("consumed into JsonlSink + EventIndex + ArtifactSink (as eventbus relay), durable:")
    print(
        f"  {EVENTS} info events:     {consumed:>10,.0f} events/s  "
        f"({consumed / jetstream:.2f}x the JetStreamSink publish rate)"
    )
    print(
        f"  {MIX_EVENTS} of the demo's mix: {mix_consumed:>8,.0f} events/s  "
        f"({mix_consumed / mix_published:.2f}x its publish rate, {mix_published:,.0f}/s)"
    )
    print(
        f"end to end, {PRODUCERS} producers offering {OFFERED:,} events/s for {SECONDS} s "
        f"(created -> aggregator's log), {measured} events: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")
