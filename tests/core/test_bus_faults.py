"""EventBus under hostile sinks: bounded close, interrupts, stray cancellations,
sessions that fail alone, and events lost from a sink's buffer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from eventbus import (
    Event,
    EventBus,
    EventEncodeError,
    EventsLostError,
    EventType,
    MemorySink,
    PartialWriteError,
    RetryPolicy,
    SinkFailedError,
)
from factories import event as ev
from sinks.artifacts import ArtifactSink
from sinks.jsonl import JsonlSink
from sinks.jsonl._write import LogWriter

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(retries=2, initial_delay=0.001, max_delay=0.001)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """A gate for blocked worker threads, always opened at the end of the test."""
    gate = threading.Event()
    yield gate
    gate.set()


class ThreadBlockedSink(MemorySink):
    """A sink whose write (or aclose) blocks in a worker thread until released."""

    def __init__(self, gate: threading.Event, *, block_write: bool = True) -> None:
        super().__init__("blocked")
        self.gate = gate
        self.block_write = block_write
        self.entered = anyio.Event()

    async def write(self, events: Sequence[Event]) -> None:
        if self.block_write:
            self.entered.set()
            await anyio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
        await super().write(events)

    async def aclose(self) -> None:
        if not self.block_write:
            await anyio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
        await super().aclose()


class TestBoundedClose:
    async def test_normal_exit_returns_within_close_timeout_and_reports_the_loss(
        self, release: threading.Event
    ) -> None:
        """A write stuck in a thread cannot hold a normal exit: it is abandoned and counted."""
        sink = ThreadBlockedSink(release)
        other = MemorySink("other")
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(SinkFailedError, match="close_timeout"):
            async with EventBus(close_timeout=0.2) as bus:
                bus.subscribe(sink)
                bus.subscribe(other)
                for i in range(3):
                    await bus.publish(ev(i))
                await sink.entered.wait()
        assert time.monotonic() - started < 2
        assert bus.stats().lost == 3
        assert not bus.stats().healthy
        assert len(other.events) == 3
        assert other.closed

    async def test_the_body_exception_reaches_the_caller_even_when_close_times_out(
        self, release: threading.Event
    ) -> None:
        """The block's own error is what the caller sees, not the bus's close trouble."""
        sink = ThreadBlockedSink(release)
        with anyio.fail_after(5), pytest.raises(LookupError, match="the body's own"):
            async with EventBus(close_timeout=0.1) as bus:
                bus.subscribe(sink)
                await bus.publish(ev(0))
                await sink.entered.wait()
                raise LookupError("the body's own error")
        assert bus.stats().lost == 1

    async def test_cancelled_exit_is_bounded_with_a_write_blocked_in_a_thread(
        self, release: threading.Event
    ) -> None:
        """Cancellation, a stuck thread: still out within the grace period."""
        sink = ThreadBlockedSink(release)
        with anyio.fail_after(5):
            with anyio.CancelScope() as scope:
                async with EventBus(close_timeout=0.1) as bus:
                    bus.subscribe(sink)
                    await bus.publish(ev(0))
                    await sink.entered.wait()
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        assert bus.stats().lost == 1

    async def test_aclose_blocked_in_a_thread_is_abandoned_and_reported(
        self, release: threading.Event
    ) -> None:
        """A sink that never finishes closing is abandoned; the exit says so."""
        sink = ThreadBlockedSink(release, block_write=False)
        with anyio.fail_after(5), pytest.raises(SinkFailedError, match="aclose did not finish"):
            async with EventBus(close_timeout=0.2) as bus:
                bus.subscribe(sink)
                await bus.publish(ev(0))
        assert sink.events == [sink.events[0]]
        assert not bus.stats().healthy


class InterruptingSink(MemorySink):
    def __init__(self, exc: BaseException) -> None:
        super().__init__("interrupting")
        self.exc = exc
        self.calls = 0

    async def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        raise self.exc


class TestInterrupts:
    @pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)], ids=["kbd", "exit"])
    async def test_interrupt_from_a_sink_lets_others_drain_then_reaches_the_caller(
        self, exc: BaseException
    ) -> None:
        """The other sinks get every event; the interrupt then surfaces as itself."""
        other = MemorySink("other")
        sink = InterruptingSink(exc)
        with pytest.raises(type(exc)) as raised:
            async with EventBus(retry=FAST_RETRY) as bus:
                bus.subscribe(sink)
                bus.subscribe(other)
                for i in range(100):
                    await bus.publish(ev(i))
        assert raised.value is exc
        assert not isinstance(raised.value, BaseExceptionGroup)
        assert sink.calls == 1  # never retried
        infos = [e.message for e in other.events if e.event_type is EventType.INFO]
        assert infos == [str(i) for i in range(100)]
        assert other.closed

    async def test_interrupt_from_aclose_does_not_skip_closing_the_others(self) -> None:
        """Closing continues past a sink whose aclose raises KeyboardInterrupt."""

        class ClosingInterrupt(MemorySink):
            async def aclose(self) -> None:
                raise KeyboardInterrupt("interrupted while closing")

        other = MemorySink("other")
        with pytest.raises(KeyboardInterrupt, match="interrupted while closing"):
            async with EventBus() as bus:
                bus.subscribe(ClosingInterrupt("first"))
                bus.subscribe(other)
                await bus.publish(ev(0))
        assert other.closed
        assert len(other.events) == 1

    async def test_a_stray_cancellation_from_a_sink_is_a_failing_sink(
        self, anyio_backend: str
    ) -> None:
        """A sink raising a cancellation nobody asked for is retried, then failed."""
        cancelled = anyio.get_cancelled_exc_class()

        class StrayCancel(MemorySink):
            calls = 0

            async def write(self, events: Sequence[Event]) -> None:
                self.calls += 1
                if anyio_backend == "trio":
                    raise cancelled._create()  # type: ignore[attr-defined]
                raise cancelled()

        sink = StrayCancel("stray")
        other = MemorySink("other")
        with anyio.fail_after(5):
            async with EventBus(retry=FAST_RETRY) as bus:
                subscription = bus.subscribe(sink)
                bus.subscribe(other)
                await bus.publish(ev(0))
                with pytest.raises(SinkFailedError, match="'stray'"):
                    await bus.flush()
                await bus.unsubscribe(subscription)
                await bus.publish(ev(1))
                await bus.flush()
        assert sink.calls == 3
        assert [e.message for e in other.events if e.event_type is EventType.INFO] == ["0", "1"]


class SessionSink(MemorySink):
    """Writes every session but ``bad``; raises PartialWriteError for it."""

    def __init__(self, bad: str = "bad") -> None:
        super().__init__("sessions")
        self.bad = bad
        self.seen: set[str] = set()
        self.attempts = 0

    async def write(self, events: Sequence[Event]) -> None:
        self.attempts += 1
        fresh = [e for e in events if e.session_id != self.bad and e.id not in self.seen]
        self.seen.update(e.id for e in fresh)
        await super().write(fresh)
        if any(e.session_id == self.bad for e in events):
            raise PartialWriteError({self.bad: PermissionError("read-only directory")})


class TestSessionFailures:
    async def test_one_bad_session_fails_alone_and_the_others_keep_flowing(self) -> None:
        """The failed session is reported (stats, error event, flush); others are written."""
        sink = SessionSink()
        watcher = MemorySink("watcher")
        with pytest.raises(SinkFailedError, match="for session 'bad'"):  # on leaving, too
            async with EventBus(retry=FAST_RETRY) as bus:
                bus.subscribe(sink)
                bus.subscribe(watcher)
                await bus.publish(ev(0, "good"))
                await bus.publish(ev(1, "bad"))
                await bus.publish(ev(2, "good"))
                with pytest.raises(SinkFailedError, match="session 'bad'") as raised:
                    await bus.flush()
                assert "read-only directory" in str(raised.value)
                attempts = sink.attempts
                for i in range(3, 10):
                    await bus.publish(ev(i, "good" if i % 2 else "bad"))
                with pytest.raises(SinkFailedError, match="session 'bad'"):
                    await bus.flush()
                stats = next(s for s in bus.stats().subscriptions if s.name == "sessions")
                assert stats.failed_sessions == ("bad",)
                assert not stats.failed
                assert not bus.stats().healthy
        assert [e.message for e in sink.events] == ["0", "2", "3", "5", "7", "9"]
        assert sink.attempts == attempts + 1  # one later batch, "bad" filtered out: no retry
        errors = [e for e in watcher.events if e.event_type is EventType.ERROR]
        assert [e.session_id for e in errors] == ["bad"]
        assert "session 'bad'" in errors[0].message

    async def test_events_lost_from_a_buffer_fail_the_sink_at_once(self) -> None:
        """EventsLostError is not retried; the loss is counted on the bus."""

        class Leaky(MemorySink):
            calls = 0

            async def write(self, events: Sequence[Event]) -> None:
                self.calls += 1
                raise EventsLostError(7, "s1/events.jsonl", "[Errno 28] No space left")

        sink = Leaky("leaky")
        async with EventBus(retry=FAST_RETRY) as bus:
            subscription = bus.subscribe(sink)
            await bus.publish(ev(0))
            with pytest.raises(SinkFailedError, match="7 acknowledged events"):
                await bus.flush()
            assert bus.stats().lost == 7
            assert not bus.stats().healthy
            assert sink.calls == 1
            await bus.unsubscribe(subscription)

    async def test_a_sink_failing_to_close_fails_a_normal_exit(self) -> None:
        """An aclose that raises is reported on leaving the block, not only logged."""

        class BadClose(MemorySink):
            async def aclose(self) -> None:
                raise EventsLostError(2, "buffer", "[Errno 5] Input/output error")

        with pytest.raises(SinkFailedError, match="Input/output error"):
            async with EventBus() as bus:
                bus.subscribe(BadClose("badclose"))
                await bus.publish(ev(0))
        assert bus.stats().lost == 2
        assert not bus.stats().healthy


class TestShippedSinksAreAbandonable:
    async def test_a_jsonl_write_stuck_on_the_disk_cannot_hold_the_close(
        self, tmp_path: Path, release: threading.Event, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """JsonlSink's worker thread is abandoned at close_timeout; the events count as lost."""
        stuck = threading.Event()
        real_write = LogWriter.write

        def blocking_write(self: LogWriter, *args: object, **kwargs: object) -> None:
            stuck.set()
            release.wait()
            real_write(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(LogWriter, "write", blocking_write)
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(SinkFailedError, match="close_timeout"):
            async with EventBus(close_timeout=0.2) as bus:
                bus.subscribe(JsonlSink(tmp_path))
                for i in range(4):
                    await bus.publish(ev(i))
                await anyio.to_thread.run_sync(stuck.wait)
        assert time.monotonic() - started < 2
        assert bus.stats().lost == 4

    async def test_an_artifact_write_stuck_on_the_disk_cannot_hold_the_close(
        self, tmp_path: Path, release: threading.Event, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ArtifactSink's worker thread is abandoned at close_timeout too."""
        stuck = threading.Event()

        def blocking_batch(*args: object) -> None:
            stuck.set()
            release.wait()

        sink = ArtifactSink(tmp_path)
        monkeypatch.setattr(sink, "_write_batch", blocking_batch)
        with anyio.fail_after(5), pytest.raises(SinkFailedError, match="close_timeout"):
            async with EventBus(close_timeout=0.2) as bus:
                bus.subscribe(sink)
                await bus.publish(ev(0))
                await anyio.to_thread.run_sync(stuck.wait)
        assert bus.stats().lost == 1


async def test_a_session_id_that_is_no_str_is_an_encode_error_naming_the_field() -> None:
    """session_id=7 is refused like any mistyped field, nothing published."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        bad = Event(event_type=EventType.INFO, session_id=7, message="x")  # type: ignore[arg-type]
        with pytest.raises(EventEncodeError, match="session_id"):
            await bus.publish(bad)
        with pytest.raises(EventEncodeError, match="session_id"):
            bus.publish_nowait(bad)
        await bus.flush()
    assert sink.events == []


async def test_an_infinite_close_timeout_waits_for_a_slow_drain() -> None:
    """close_timeout=math.inf: a normal exit waits for every event, however slow."""
    import math

    class Slow(MemorySink):
        async def write(self, events: Sequence[Event]) -> None:
            await anyio.lowlevel.checkpoint()
            await super().write(events)

    sink = Slow("slow")
    async with EventBus(close_timeout=math.inf, max_batch=1) as bus:
        bus.subscribe(sink)
        for i in range(50):
            bus.publish_nowait(ev(i))
    assert len(sink.events) == 50
    assert bus.stats().healthy


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio: flush never writes inline
async def test_a_write_abandoned_by_a_cancelled_flush_is_not_written_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush cancelled while JsonlSink's thread writes: the retry skips what it wrote."""
    entered, release = threading.Event(), threading.Event()
    real_write = LogWriter.write
    calls = 0

    def first_write_waits(self: LogWriter, *args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            release.wait(10)
        real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LogWriter, "write", first_write_waits)
    retrying = threading.Event()
    real_groups = JsonlSink._write_groups
    attempts = 0

    def count_attempts(self: JsonlSink, *args: object) -> object:
        nonlocal attempts
        attempts += 1
        if attempts == 2:  # the retry, its sessions chosen, about to wait for the lock
            retrying.set()
        return real_groups(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(JsonlSink, "_write_groups", count_attempts)
    event = ev(0)
    with anyio.fail_after(10):
        async with EventBus() as bus:
            bus.subscribe(JsonlSink(tmp_path))
            await anyio.wait_all_tasks_blocked()  # the sink's task is idle: flush writes inline
            async with anyio.create_task_group() as tg:

                async def cancel_once_writing() -> None:
                    await anyio.to_thread.run_sync(entered.wait, 5, abandon_on_cancel=True)
                    scope.cancel()

                with anyio.CancelScope() as scope:
                    tg.start_soon(cancel_once_writing)
                    await bus.publish(event)
                    await bus.flush()  # writes inline, in this task, until cancelled
            assert scope.cancelled_caught
            async with anyio.create_task_group() as tg:
                tg.start_soon(bus.flush)
                retried = await anyio.to_thread.run_sync(retrying.wait, 5, abandon_on_cancel=True)
                release.set()
    assert retried, "the bus did not retry the batch the cancelled flush abandoned"
    lines = (tmp_path / "s1" / "events.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [event.id]
