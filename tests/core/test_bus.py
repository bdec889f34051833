"""EventBus contracts: order, backpressure, isolation, flush, close, threads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

import eventbus._bus
import eventbus._codec
from eventbus import (
    BusClosedError,
    BusFullError,
    Event,
    EventBatch,
    EventBus,
    EventBusError,
    EventEncodeError,
    EventQuery,
    EventType,
    InvalidNameError,
    MemorySink,
    RetryPolicy,
    SinkFailedError,
    decode_event,
    encode_event,
    encode_jsonl,
)
from factories import event as ev

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(retries=3, initial_delay=0.001, max_delay=0.001)


class GatedSink(MemorySink):
    """A sink whose writes wait until the test opens the gate."""

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name)
        self.gate = anyio.Event()
        self.writing = anyio.Event()

    async def write(self, events: Sequence[Event]) -> None:
        self.writing.set()
        await self.gate.wait()
        await super().write(events)


class FailingSink(MemorySink):
    """A sink that raises on its first ``failures`` writes (forever if None)."""

    def __init__(self, failures: int | None = None, name: str = "failing") -> None:
        super().__init__(name)
        self.failures = failures
        self.attempts: list[float] = []

    async def write(self, events: Sequence[Event]) -> None:
        self.attempts.append(anyio.current_time())
        if self.failures is None or len(self.attempts) <= self.failures:
            raise OSError(f"disk on fire (attempt {len(self.attempts)})")
        await super().write(events)


class TestOrder:
    async def test_every_subscription_sees_publish_order(self) -> None:
        """Each sink receives all events in publish order, across many batches."""
        sinks = [MemorySink(f"m{i}") for i in range(3)]
        published = [ev(i) for i in range(5000)]
        async with EventBus(buffer=64, max_batch=50) as bus:
            for sink in sinks:
                bus.subscribe(sink)
            for i, event in enumerate(published):
                await bus.publish(event)
                if i % 97 == 0:
                    await checkpoint()
        for sink in sinks:
            assert sink.events == published
            assert max(sink.batches) <= 50

    async def test_filtered_subscription_sees_matching_events_in_order(self) -> None:
        """A query per subscription; order is kept among the matching events."""
        errors, s2 = MemorySink("errors"), MemorySink("s2")
        published = [
            ev(i, f"s{i % 3}", [EventType.INFO, EventType.ERROR][i % 2]) for i in range(300)
        ]
        async with EventBus() as bus:
            bus.subscribe(errors, EventQuery(event_type=EventType.ERROR))
            bus.subscribe(s2, EventQuery(session_id="s2"))
            for event in published:
                await bus.publish(event)
        assert errors.events == [e for e in published if e.event_type == EventType.ERROR]
        assert s2.events == [e for e in published if e.session_id == "s2"]

    async def test_sinks_receive_batches_with_the_published_encoding(self) -> None:
        """A burst is one batch; its lines are each event's JSON."""
        sink = MemorySink()
        async with EventBus() as bus:
            bus.subscribe(sink)
            batch_seen: list[EventBatch] = []

            class Spy(MemorySink):
                async def write(self, events: Sequence[Event]) -> None:
                    assert isinstance(events, EventBatch)
                    batch_seen.append(events)

            bus.subscribe(Spy())
            for i in range(100):
                bus.publish_nowait(ev(i))
            await bus.flush()
        assert sink.batches == [100]
        assert [line for b in batch_seen for line in b.lines] == [
            encode_event(e) for e in sink.events
        ]

    async def test_each_event_is_encoded_once_however_many_sinks_need_bytes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Three byte-writing sinks; the encoder runs once per event."""
        calls = 0
        real = eventbus._codec._encode

        def counting(obj: Event) -> bytes:
            nonlocal calls
            calls += 1
            return real(obj)

        monkeypatch.setattr(eventbus._codec, "_encode", counting)
        monkeypatch.setattr(eventbus._bus, "_encode", counting)
        outputs: list[bytes] = []

        class BytesSink(MemorySink):
            async def write(self, events: Sequence[Event]) -> None:
                outputs.append(encode_jsonl(events))

        async with EventBus() as bus:
            for _ in range(3):
                bus.subscribe(BytesSink())
            for i in range(50):
                await bus.publish(ev(i))
        assert calls == 50
        assert sum(o.count(b"\n") for o in outputs) == 150


class TestBackpressure:
    async def test_full_buffer_makes_publish_wait_and_drops_nothing(self) -> None:
        """With a stuck lossless sink, publish waits once the buffer is full."""
        sink = GatedSink()
        published = [ev(i) for i in range(10)]
        finished = anyio.Event()
        async with EventBus(buffer=4) as bus:
            bus.subscribe(sink)

            async def publisher() -> None:
                for event in published:
                    await bus.publish(event)
                finished.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher)
                await sink.writing.wait()
                await wait_all_tasks_blocked()
                assert not finished.is_set()
                assert bus.stats().buffered == 4
                with pytest.raises(BusFullError, match=r"use 'await bus\.publish"):
                    bus.publish_nowait(ev(99))
                sink.gate.set()
            assert finished.is_set()
        assert sink.events == published

    async def test_publish_nowait_succeeds_until_the_buffer_is_full(self) -> None:
        """publish_nowait accepts exactly `buffer` events ahead of a stuck sink."""
        sink = GatedSink()
        async with EventBus(buffer=3) as bus:
            bus.subscribe(sink)
            for i in range(3):
                bus.publish_nowait(ev(i))
            with pytest.raises(BusFullError, match="3 events are buffered"):
                bus.publish_nowait(ev(3))
            assert bus.stats().published == 3
            sink.gate.set()
        assert [e.message for e in sink.events] == ["0", "1", "2"]

    async def test_bus_without_subscribers_never_fills(self) -> None:
        """Events published to nobody are not kept."""
        async with EventBus(buffer=2) as bus:
            for i in range(10):
                bus.publish_nowait(ev(i))
            assert bus.stats().buffered == 0
            assert bus.stats().published == 10


class TestIsolation:
    async def test_flaky_sink_is_retried_and_loses_nothing(self) -> None:
        """Two failures then success: every event arrives once, retries are counted."""
        flaky = FailingSink(failures=2)
        published = [ev(i) for i in range(5)]
        async with EventBus(retry=FAST_RETRY) as bus:
            bus.subscribe(flaky)
            for event in published:
                bus.publish_nowait(event)
            await bus.flush()
            stats = bus.stats().subscriptions[0]
        assert flaky.events == published
        assert (stats.retries, stats.failed) == (2, False)

    async def test_retries_wait_growing_delays(self) -> None:
        """The waits between attempts follow the policy and grow."""
        policy = RetryPolicy(retries=3, initial_delay=0.02, multiplier=2.0, max_delay=1.0)
        assert policy.delays() == [0.02, 0.04, 0.08]
        sink = FailingSink()
        async with EventBus(retry=policy) as bus:
            subscription = bus.subscribe(sink)
            await bus.publish(ev(0))
            with pytest.raises(SinkFailedError, match="disk on fire"):
                await bus.flush()
            await bus.unsubscribe(subscription)
        gaps = [b - a for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
        assert len(sink.attempts) == 4
        assert [round(g, 2) >= d for g, d in zip(gaps, policy.delays(), strict=True)] == [True] * 3
        assert policy.delays() == sorted(policy.delays())

    async def test_failed_sink_is_reported_and_others_keep_receiving(self) -> None:
        """A dead sink: marked failed, an error event to the others, flush raises."""
        dead, healthy = FailingSink(), MemorySink("healthy")
        async with EventBus(retry=FAST_RETRY) as bus:
            dead_subscription = bus.subscribe(dead)
            bus.subscribe(healthy)
            await bus.publish(ev(0))
            with pytest.raises(SinkFailedError, match="'failing'") as info:
                await bus.flush()
            assert isinstance(info.value.__cause__, OSError)
            assert info.value.failures[0][0] == "failing"
            for i in range(1, 4):
                await bus.publish(ev(i))
            stats = {s.name: s for s in bus.stats().subscriptions}
            assert stats["failing"].failed
            assert "disk on fire" in (stats["failing"].error or "")
            assert not bus.stats().healthy
            await bus.unsubscribe(dead_subscription)
            await bus.flush()
        errors = [e for e in healthy.events if e.event_type == EventType.ERROR]
        assert len(errors) == 1
        assert errors[0].metadata["sink"] == "failing"
        assert errors[0].metadata["error_type"] == "OSError"
        assert errors[0].session_id == "s1"
        assert [e.message for e in healthy.events if e.event_type == EventType.INFO] == [
            "0", "1", "2", "3",
        ]  # fmt: skip
        assert dead.closed

    async def test_default_policy_declares_a_failing_sink_failed_within_10_seconds(self) -> None:
        """Defaults: at least 3 retries with growing delays, failed well under 10 s."""
        assert RetryPolicy().retries >= 3
        delays = RetryPolicy().delays()
        assert delays == sorted(delays)
        assert delays[0] < delays[-1]
        sink = FailingSink()
        with anyio.fail_after(10):
            async with EventBus() as bus:
                subscription = bus.subscribe(sink)
                await bus.publish(ev(0))
                with pytest.raises(
                    SinkFailedError, match="sink 'failing' failed and stopped receiving events"
                ):
                    await bus.flush()
                assert subscription.failed
                await bus.unsubscribe(subscription)
        assert len(sink.attempts) == RetryPolicy().retries + 1

    async def test_leaving_the_bus_raises_while_a_failed_sink_is_attached(self) -> None:
        """A failure is raised on exit too, never swallowed, until unsubscribed."""
        bus = EventBus(retry=FAST_RETRY)
        bus.subscribe(FailingSink())
        with pytest.raises(SinkFailedError, match="'failing'"):  # raised on leaving the block
            async with bus:
                await bus.publish(ev(0))

    async def test_unencodable_event_is_refused_at_publish_and_nothing_is_lost(self) -> None:
        """Bad metadata raises in publish, naming the key; the bus keeps working."""
        sink = MemorySink()
        async with EventBus() as bus:
            bus.subscribe(sink)
            bad = Event(event_type=EventType.INFO, session_id="s", message="m",
                        metadata={"handle": object()})  # fmt: skip
            with pytest.raises(EventEncodeError, match=r"metadata\['handle'\]"):
                await bus.publish(bad)
            with pytest.raises(EventEncodeError, match=r"metadata\['handle'\]"):
                bus.publish_nowait(bad)
            await bus.publish(ev(1))
            assert bus.stats().published == 1
        assert [e.message for e in sink.events] == ["1"]

    @pytest.mark.parametrize("session_id", ["../etc", "a/b", "", ".hidden", "x\x00"])
    async def test_session_id_that_cannot_name_a_directory_is_refused(
        self, session_id: str
    ) -> None:
        """A path-escaping session id raises at publish; no sink ever sees it."""
        sink = MemorySink()
        async with EventBus() as bus:
            bus.subscribe(sink)
            bad = Event(event_type=EventType.INFO, session_id=session_id, message="m")
            with pytest.raises(InvalidNameError, match="invalid session id"):
                await bus.publish(bad)
            with pytest.raises(InvalidNameError, match="invalid session id"):
                bus.publish_nowait(bad)
            await bus.publish(ev(1))
        assert [e.session_id for e in sink.events] == ["s1"]

    async def test_non_event_is_refused(self) -> None:
        """publish takes Events only."""
        async with EventBus() as bus:
            with pytest.raises(TypeError, match="publish takes an Event, got dict"):
                await bus.publish({"event_type": "info"})  # type: ignore[arg-type]

    async def test_non_sink_is_refused(self) -> None:
        """subscribe says what a sink needs."""
        async with EventBus() as bus:
            with pytest.raises(TypeError, match="has no 'write' method"):
                bus.subscribe(object())  # type: ignore[arg-type]


class TestFlush:
    async def test_flush_returns_only_after_every_lossless_sink_wrote(self) -> None:
        """flush waits for the slow sink's write to finish."""
        slow, fast = GatedSink("slow"), MemorySink("fast")
        flushed = anyio.Event()
        async with EventBus() as bus:
            bus.subscribe(slow)
            bus.subscribe(fast)
            await bus.publish(ev(0))

            async def flusher() -> None:
                await bus.flush()
                flushed.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(flusher)
                await slow.writing.wait()
                await wait_all_tasks_blocked()
                assert not flushed.is_set()
                assert len(fast.events) == 1
                slow.gate.set()
            assert len(slow.events) == 1

    async def test_flush_does_not_wait_for_a_stalled_listener(self) -> None:
        """Listeners are lossy: flush ignores them."""
        sink = MemorySink()
        async with EventBus() as bus, bus.listen(buffer=1):
            bus.subscribe(sink)
            for i in range(10):
                await bus.publish(ev(i))
            with anyio.fail_after(5):
                await bus.flush()
            assert len(sink.events) == 10


class TestClose:
    async def test_leaving_drains_every_sink_then_closes_it(self) -> None:
        """All published events are written before aclose."""
        order: list[str] = []

        class Recording(MemorySink):
            async def write(self, events: Sequence[Event]) -> None:
                await checkpoint()
                order.append(f"write {len(events)}")
                await super().write(events)

            async def aclose(self) -> None:
                order.append("close")
                await super().aclose()

        sink = Recording()
        async with EventBus(max_batch=10) as bus:
            bus.subscribe(sink)
            for i in range(25):
                bus.publish_nowait(ev(i))
        assert len(sink.events) == 25
        assert order[-1] == "close"
        assert order.count("close") == 1

    async def test_cancellation_still_drains_within_the_grace_period(self) -> None:
        """Cancelling the block: pending events are still written, shielded."""
        sink = GatedSink()

        async def open_gate_once_close_waits() -> None:
            await wait_all_tasks_blocked()
            sink.gate.set()

        async with anyio.create_task_group() as outside:
            with anyio.CancelScope() as scope:
                async with EventBus(close_timeout=5) as bus:
                    bus.subscribe(sink)
                    for i in range(5):
                        await bus.publish(ev(i))
                    await sink.writing.wait()
                    outside.start_soon(open_gate_once_close_waits)
                    scope.cancel()
                    await checkpoint()
        assert scope.cancelled_caught
        assert len(sink.events) == 5
        assert sink.closed

    async def test_grace_period_bounds_a_cancelled_close(self) -> None:
        """A sink that never finishes cannot hold a cancelled close forever."""
        sink = GatedSink()
        with anyio.fail_after(5):
            with anyio.CancelScope() as scope:
                async with EventBus(close_timeout=0.05) as bus:
                    bus.subscribe(sink)
                    await bus.publish(ev(0))
                    await sink.writing.wait()
                    scope.cancel()
                    await checkpoint()
        assert bus.stats().lost == 1
        assert not bus.stats().healthy
        assert sink.closed

    async def test_publish_after_close_raises(self) -> None:
        """A closed bus says so, and what to do."""
        async with EventBus() as bus:
            pass
        with pytest.raises(BusClosedError, match="the bus is closed; publish inside"):
            await bus.publish(ev(0))
        with pytest.raises(BusClosedError, match="the bus is closed"):
            bus.publish_nowait(ev(0))
        with pytest.raises(BusClosedError, match="cannot subscribe"):
            bus.subscribe(MemorySink())

    async def test_publish_before_start_raises(self) -> None:
        """A bus not yet entered refuses events."""
        with pytest.raises(BusClosedError, match="has not been started"):
            await EventBus().publish(ev(0))

    async def test_a_bus_is_entered_once(self) -> None:
        """Re-entering a closed bus is an error, not a silent restart."""
        bus = EventBus()
        async with bus:
            pass
        with pytest.raises(EventBusError, match="entered only once"):
            async with bus:
                pass

    async def test_subscribing_before_entering_starts_at_entry(self) -> None:
        """Sinks can be attached before the block starts."""
        sink = MemorySink()
        bus = EventBus()
        bus.subscribe(sink)
        async with bus:
            await bus.publish(ev(0))
        assert len(sink.events) == 1


class TestIndependence:
    async def test_two_buses_in_one_process_are_independent(self) -> None:
        """No singleton: each bus has its own sinks, counts and lifetime."""
        a_sink, b_sink = MemorySink("a"), MemorySink("b")
        async with EventBus() as a:
            a.subscribe(a_sink)
            async with EventBus() as b:
                b.subscribe(b_sink)
                await a.publish(ev(1))
                await b.publish(ev(2))
                await b.publish(ev(3))
            assert b.stats().state == "closed"
            await a.publish(ev(4))
        assert [e.message for e in a_sink.events] == ["1", "4"]
        assert [e.message for e in b_sink.events] == ["2", "3"]


class TestThreads:
    async def test_worker_threads_publish_through_the_threadsafe_path(self) -> None:
        """Sync code in threads publishes; every event arrives, per-thread order kept."""
        sink = MemorySink()
        async with EventBus(buffer=8) as bus:
            bus.subscribe(sink)

            def produce(thread: int) -> None:
                for i in range(200):
                    bus.publish_threadsafe(ev(i, session_id=f"t{thread}"))

            plain = threading.Thread(target=produce, args=(9,))
            plain.start()
            async with anyio.create_task_group() as tg:
                for thread in range(3):
                    tg.start_soon(anyio.to_thread.run_sync, produce, thread)
            await anyio.to_thread.run_sync(plain.join)
        for thread in (0, 1, 2, 9):
            mine = [int(e.message) for e in sink.events if e.session_id == f"t{thread}"]
            assert mine == list(range(200))

    async def test_threadsafe_publish_from_the_loop_thread_is_refused(self) -> None:
        """It would deadlock; it raises instead."""
        async with EventBus() as bus:
            with pytest.raises(EventBusError, match="would deadlock"):
                bus.publish_threadsafe(ev(0))

    async def test_threadsafe_publish_after_close_raises_in_the_thread(self) -> None:
        """A thread publishing to a closed bus gets BusClosedError, not a hang."""
        async with EventBus() as bus:
            pass

        def produce() -> None:
            bus.publish_threadsafe(ev(0))

        with anyio.fail_after(5), pytest.raises(BusClosedError, match="the bus is closed"):
            await anyio.to_thread.run_sync(produce)

    async def test_thread_waiting_for_space_is_told_when_the_bus_closes(self) -> None:
        """A thread blocked by backpressure is released with BusClosedError at close."""
        sink = GatedSink()
        outcome: list[BaseException | None] = []

        def produce(bus: EventBus) -> None:
            try:
                bus.publish_threadsafe(ev(1))
            except BusClosedError as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        async with anyio.create_task_group() as tg, EventBus(buffer=1) as bus:
            bus.subscribe(sink)
            await bus.publish(ev(0))
            await sink.writing.wait()
            tg.start_soon(anyio.to_thread.run_sync, produce, bus)
            with anyio.fail_after(5):
                while not bus._progress:  # the thread's publish waits for space
                    await anyio.lowlevel.checkpoint()
            sink.gate.set()  # leaving the block now drains event 0 and closes
        assert len(outcome) == 1
        assert isinstance(outcome[0], BusClosedError)
        assert [e.message for e in sink.events] == ["0"]


class TestMemorySink:
    async def test_wait_for_returns_once_enough_events_arrived(self) -> None:
        """The test helper waits without sleeping."""
        sink = MemorySink()
        async with EventBus() as bus:
            bus.subscribe(sink)
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    with anyio.fail_after(5):
                        events = await sink.wait_for(3)
                    assert len(events) >= 3

                tg.start_soon(waiter)
                await wait_all_tasks_blocked()
                for i in range(3):
                    await bus.publish(ev(i))
        assert sink.query(EventQuery(event_type="info")) == sink.events


class TestRetryPolicy:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            pytest.param({"retries": -1}, "retries must be >= 0", id="retries"),
            pytest.param({"initial_delay": -1}, "initial_delay must be", id="delay"),
            pytest.param({"multiplier": 0.5}, "multiplier must be >= 1", id="multiplier"),
            pytest.param({"max_delay": 0.01}, "max_delay", id="max"),
        ],
    )
    def test_bad_policies_are_refused(self, kwargs: dict[str, float], match: str) -> None:
        """A policy that could not work is refused when built."""
        with pytest.raises(ValueError, match=match):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]

    def test_delays_are_capped(self) -> None:
        """max_delay caps the growth."""
        assert RetryPolicy(retries=5, initial_delay=1, multiplier=10, max_delay=5).delays() == [
            1, 5, 5, 5, 5,
        ]  # fmt: skip


class LineSink(MemorySink):
    """Keeps the encoded line of every event it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[bytes] = []

    async def write(self, events: Sequence[Event]) -> None:
        assert isinstance(events, EventBatch)
        self.lines += events.lines
        await super().write(events)


async def test_publish_line_hands_sinks_the_line_as_received() -> None:
    """A relay's line (here spaced, as another producer may write it) reaches the sinks as
    received, with the event decoded from it; nothing is encoded again."""
    event = ev(1)
    spaced = b'{"event_type": "info", "session_id": "s1", "message": "1", "timestamp": "'
    spaced += event.timestamp.isoformat().encode() + b'", "id": "' + event.id.encode() + b'"}'
    decoded = decode_event(spaced)
    sink = LineSink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        await bus.publish_line(decoded, spaced)
        await bus.flush()
    assert sink.lines == [spaced]
    assert sink.events == [decoded]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"a": 1,\n "b": 2}', id="line-feed"),
        pytest.param(b'{"a": 1,\r "b": 2}', id="carriage-return"),
        pytest.param(bytearray(b"{}"), id="not-bytes"),
        pytest.param(b" " * (eventbus._codec.MAX_LINE_BYTES + 1), id="over-the-cap"),
    ],
)
async def test_publish_line_encodes_the_event_when_its_line_is_not_one_line(
    line: bytes,
) -> None:
    """A line that cannot go into a log as one line is not kept: the event is encoded."""
    event = ev(2)
    sink = LineSink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        await bus.publish_line(event, line)
        await bus.flush()
    assert sink.lines == [encode_event(event)]


async def test_publish_line_refuses_what_publish_refuses() -> None:
    """Not an Event, a session id that names no directory, a closed bus: as publish."""
    bus = EventBus()
    with pytest.raises(BusClosedError, match="the bus has not been started"):
        await bus.publish_line(ev(0), encode_event(ev(0)))
    async with bus:
        with pytest.raises(TypeError, match="publish takes an Event, got dict"):
            await bus.publish_line({"id": "x"}, b"{}")  # type: ignore[arg-type]
        bad = ev(0, "../up")
        with pytest.raises(InvalidNameError, match=r"invalid session id '\.\./up'"):
            await bus.publish_line(bad, b'{"session_id": "../up"}')


async def test_publish_line_checks_a_line_with_many_brackets_as_publish_does() -> None:
    """Decoding lets metadata nest deeper than publishing does: a line with more brackets
    than MAX_METADATA_DEPTH has the event checked, and refused if too deep."""
    deep: list[Any] = []
    for _ in range(eventbus._codec.MAX_METADATA_DEPTH):
        deep = [deep]
    event = ev(3, metadata={"a": deep})
    line = eventbus._codec._encode_unchecked(event)
    async with EventBus() as bus:
        with pytest.raises(EventEncodeError, match="MAX_METADATA_DEPTH"):
            await bus.publish_line(event, line)
        wide = ev(4, metadata={"a": [[1]] * 100})  # many brackets, shallow: kept, re-encoded
        sink = LineSink()
        bus.subscribe(sink)
        await bus.publish_line(wide, b" " + encode_event(wide))
        await bus.flush()
    assert sink.lines == [encode_event(wide)]
