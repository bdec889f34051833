"""The JetStream bridge: published events/s with acks, consumed events/s, end-to-end latency.

Needs a nats-server with JetStream on 127.0.0.1:4222 (``nats-server -js``);
run ``python benchmarks/bench_nats.py``. Baselines in the same run: a bus
with no sink (the publishing floor) and a bus with a ``MemorySink``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import nats

from eventbus import Event, EventBus, EventType, MemorySink
from sinks.artifacts import ArtifactSink
from sinks.index import EventIndex
from sinks.jsonl import JsonlSink
from sinks.nats import JetStreamSink, JetStreamSource

URL = "nats://127.0.0.1:4222"
EVENTS = 50_000


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


async def _consume_rate(stream: str) -> float:
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


async def _latency(stream: str, count: int = 2000) -> tuple[float, float]:
    clock = _Clock()
    with tempfile.TemporaryDirectory() as root:
        async with EventBus() as aggregator, anyio.create_task_group() as tg:
            aggregator.subscribe(JsonlSink(root))
            aggregator.subscribe(clock)
            source = JetStreamSource(
                URL, stream=stream, subject_prefix=stream.lower(), durable=None, start="new"
            )
            async with source:
                tg.start_soon(source.run, aggregator)
                async with EventBus() as producer:
                    producer.subscribe(
                        JetStreamSink(URL, stream=stream, subject_prefix=stream.lower())
                    )
                    for i in range(count):  # a steady trickle, one flush per 10 events
                        await producer.publish(_event(i))
                        if i % 10 == 9:
                            await producer.flush()
                with anyio.fail_after(30):
                    await clock.wait_for(count)
                tg.cancel_scope.cancel()
    ordered = sorted(clock.latencies)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99)] * 1000


async def main() -> None:
    stream = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    try:
        floor = await _publish_rate(False, None)
        memory = await _publish_rate(True, MemorySink())
        jetstream = await _publish_rate(
            True, JetStreamSink(URL, stream=stream, subject_prefix=stream.lower())
        )
        consumed = await _consume_rate(stream)
        p50, p99 = await _latency(stream)
    finally:
        nc = await nats.connect(URL)
        await nc.jetstream().delete_stream(stream)
        await nc.close()
    print(f"{EVENTS} events, each its own message, every PubAck awaited before flush returns")
    print(f"  bus, no sink:            {floor:>10,.0f} events/s  (1.00x)")
    print(f"  bus + MemorySink:        {memory:>10,.0f} events/s  ({memory / floor:.2f}x)")
    print(f"  bus + JetStreamSink:     {jetstream:>10,.0f} events/s  ({jetstream / floor:.2f}x)")
    print(f"  consumed into JsonlSink + EventIndex + ArtifactSink: {consumed:,.0f} events/s")
    print(f"  end to end (publish -> aggregator's sinks): p50 {p50:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")
