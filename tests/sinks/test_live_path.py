"""The live path: one event at a time, small batches written on the loop, indexed at once."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import factories
from eventbus import (
    Event,
    EventBatch,
    EventBus,
    EventType,
    Gap,
    MemorySink,
    RetryPolicy,
    SinkFailedError,
    encode_event,
)
from factories import T0
from sinks.index import EventIndex, TokenUsage
from sinks.jsonl import JsonlSink


def make(i: int, session_id: str = "s1", **fields: Any) -> Event:
    """The i-th event, ``i`` milliseconds after T0."""
    values = {"message": f"event {i}", "seconds": i / 1000, **fields}
    return factories.event(i, session_id, **values)


def batch(*events: Event) -> EventBatch:
    return EventBatch(list(events), [encode_event(event) for event in events])


class ThreadHops:
    """Counts the batches a JsonlSink hands to a worker thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = anyio.to_thread.run_sync

        async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await real(func, *args, **kwargs)

        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> ThreadHops:
    return ThreadHops(monkeypatch)


@pytest.mark.anyio
async def test_small_batch_to_an_open_log_is_written_on_the_loop(
    tmp_path: Path, hops: ThreadHops
) -> None:
    """Once a log is open, a small "flush" batch is in the file without a thread hop."""
    sink = JsonlSink(tmp_path, durability="flush")
    await sink.write(batch(make(0)))  # opens the log: in a thread
    opened = hops.count
    await sink.write(batch(make(1)))
    assert hops.count == opened == 1
    assert sink.path_for("s1").read_bytes().count(b"\n") == 2
    await sink.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("durability", "size"),
    [pytest.param("fsync", 10, id="fsync"), pytest.param("flush", 100_000, id="large")],
)
async def test_fsync_and_large_batches_go_to_a_worker_thread(
    tmp_path: Path, hops: ThreadHops, durability: Any, size: int
) -> None:
    """fsync, and batches over the inline limit, are written in a worker thread."""
    sink = JsonlSink(tmp_path, durability=durability)
    await sink.write(batch(make(0)))
    await sink.write(batch(make(1, message="x" * size)))
    assert hops.count == 2
    await sink.aclose()


@pytest.mark.anyio
async def test_a_batch_waits_in_a_thread_while_an_abandoned_write_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A batch never writes on the loop while a late worker thread still holds the sink's lock."""
    sink = JsonlSink(tmp_path, durability="flush")
    await sink.write(batch(make(0)))
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with sink._lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    written = anyio.Event()

    async def write() -> None:
        await sink.write(batch(make(1)))
        written.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            assert not written.is_set()  # waiting for the lock, off the loop
            release.set()
    holder.join()
    assert sink.path_for("s1").read_bytes().count(b"\n") == 2
    await sink.aclose()


@pytest.mark.anyio
async def test_publish_then_flush_one_at_a_time_writes_every_event_in_order(
    tmp_path: Path,
) -> None:
    """Awaiting flush after each publish leaves each event in the log and the index, in order."""
    index = EventIndex()
    sink = JsonlSink(tmp_path, durability="flush")
    events = [make(i) for i in range(50)]
    async with EventBus() as bus:
        bus.subscribe(sink)
        bus.subscribe(index)
        for i, event in enumerate(events):
            await bus.publish(event)
            await bus.flush()
            assert sink.path_for("s1").read_bytes().count(b"\n") == i + 1
            assert len(index) == i + 1
    assert index.get_latest(100) == events


RESPONSE = EventType.LLM_RESPONSE_RECEIVED
USAGE_CASES = [
    {"prompt_tokens": 5, "completion_tokens": 7, "cost_usd": 0.25},
    {"prompt_tokens": 5, "completion_tokens": "7", "cost_usd": float("inf")},
    {"prompt_tokens": True, "cost_usd": 2, "cached_tokens": 3},
    {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 10},
    {"prompt_tokens": -1, "total_tokens": 1 << 63, "cost_usd": -1.0},
    {},
]


def test_an_index_fed_one_event_at_a_time_answers_like_one_fed_a_batch() -> None:
    """Single-event adds (the live path) give the same rows, postings and usage as a batch."""
    events = [
        make(
            i,
            session_id=f"s{i % 2}",
            event_type=RESPONSE if i % 3 else EventType.TASK_STARTED,
            task_id=f"t{i % 4}" if i % 5 else None,
            model="m1" if i % 2 else None,
            agent_role="coder",
            metadata=USAGE_CASES[i % len(USAGE_CASES)],
        )
        for i in range(60)
    ]
    one_by_one, batched = EventIndex(), EventIndex()
    for event in events:
        assert one_by_one.add([event]) == 1
    batched.add(events)
    assert one_by_one.get_latest(100) == batched.get_latest(100) == events
    assert one_by_one.usage() == batched.usage() != TokenUsage()
    for field in ("session_id", "model", "agent_role", "task_id"):
        assert one_by_one.usage_by(field) == batched.usage_by(field)
    for query in (
        {"session_id": "s1"},
        {"task_id": "t2"},
        {"model": "m1"},
        {"event_type": RESPONSE},
    ):
        assert one_by_one.get_events(**query) == batched.get_events(**query)


def test_a_single_event_tying_the_newest_timestamp_is_still_placed_by_id() -> None:
    """An event with the newest event's timestamp takes the batch path and sorts by id."""
    index = EventIndex()
    first = Event(
        event_type=EventType.INFO, session_id="s", message="b", timestamp=T0, id="b", parent_id=None
    )
    tie = Event(
        event_type=EventType.INFO, session_id="s", message="a", timestamp=T0, id="a", parent_id=None
    )
    index.add([first])
    index.add([tie])
    index.add([first])  # held already: skipped
    assert index.get_latest(10) == [tie, first]
    assert index.duplicates == 1


def test_a_single_event_that_cannot_be_indexed_leaves_the_index_as_it_was() -> None:
    """A failing single add takes back what it added, so the index answers as before."""
    index = EventIndex()
    index.add([make(0, task_id="t1")])
    bad = make(1, task_id=["not", "hashable"])
    with pytest.raises(TypeError, match="unhashable"):
        index.add([bad])
    index.add([make(2, task_id="t1")])
    assert [event.message for event in index.get_events(task_id="t1")] == ["event 0", "event 2"]
    assert len(index) == 2


# --- the bus's live path: flush writes for idle sinks, listeners fed at publish ---

needs_asyncio = pytest.mark.parametrize("anyio_backend", [pytest.param("asyncio", id="asyncio")])


class Recorder:
    """A sink that records, per write, the task that ran it; it can fail or block on cue."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.tasks: list[int] = []
        self.log: list[str] = []
        self.fail: list[BaseException] = []  # raised by the next writes, in order
        self.block: anyio.Event | None = None  # the next write waits for it
        self.entered = anyio.Event()

    async def write(self, events: Sequence[Event]) -> None:
        self.tasks.append(anyio.get_current_task().id)
        self.log.append("write")
        self.entered.set()
        if self.block is not None:
            block, self.block = self.block, None
            await block.wait()
        if self.fail:
            raise self.fail.pop(0)
        self.events.extend(events)
        self.log.append("written")

    async def aclose(self) -> None:
        self.log.append("aclose")


@pytest.mark.anyio
async def test_flush_writes_an_idle_sinks_batch_in_the_flushing_task() -> None:
    """One event at a time, every write runs in the task awaiting flush: no task switch."""
    sink = Recorder()
    events = [make(i) for i in range(20)]
    async with EventBus() as bus:
        bus.subscribe(sink)
        await anyio.wait_all_tasks_blocked()  # the sink's task is idle
        for event in events:
            await bus.publish(event)
            await bus.flush()
    assert sink.events == events
    assert set(sink.tasks) == {anyio.get_current_task().id}


@pytest.mark.anyio
async def test_a_failed_inline_attempt_counts_as_the_first_of_the_retry_policy() -> None:
    """The flusher's failed attempt goes to the sink's task, which retries it once, not twice."""
    sink = Recorder()
    sink.fail = [OSError("disk hiccup")]
    event = make(0)
    async with EventBus(retry=RetryPolicy(retries=1, initial_delay=0)) as bus:
        bus.subscribe(sink)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await bus.publish(event)
            await bus.flush()
        assert bus.stats().subscriptions[0].retries == 1
    assert sink.events == [event]
    assert len(sink.tasks) == 2
    assert sink.tasks[0] == anyio.get_current_task().id != sink.tasks[1]


@pytest.mark.anyio
async def test_a_failed_inline_attempt_with_no_retries_fails_the_sink_after_one_attempt() -> None:
    """With retries=0, the flusher's attempt is the only one: one write, one error event."""
    sink = Recorder()
    sink.fail = [OSError("disk gone")]
    seen = MemorySink()

    async def publish_and_flush() -> None:
        async with EventBus(retry=RetryPolicy(retries=0)) as bus:
            bus.subscribe(sink)
            bus.subscribe(seen)
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5):
                await bus.publish(make(0))
                await bus.flush()

    with pytest.raises(SinkFailedError, match="disk gone"):
        await publish_and_flush()
    assert len(sink.tasks) == 1
    errors = [event for event in seen.events if event.event_type == EventType.ERROR]
    assert [error.metadata["attempts"] for error in errors] == [1]


@pytest.mark.anyio
async def test_a_flush_cancelled_mid_write_leaves_the_batch_to_the_sinks_task() -> None:
    """Cancelling flush during its write does not move the cursor: the task writes it again."""
    sink = Recorder()
    event = make(0)
    async with EventBus() as bus:
        bus.subscribe(sink)
        await anyio.wait_all_tasks_blocked()
        sink.block = anyio.Event()  # never set: the first write waits until cancelled
        with anyio.fail_after(5):
            with anyio.CancelScope() as scope:
                await bus.publish(event)
                scope.cancel()  # delivered at the write's first wait
                await bus.flush()
            assert scope.cancelled_caught
            await bus.flush()
    assert sink.events == [event]
    assert sink.log == ["write", "write", "written", "aclose"]
    assert sink.tasks[0] == anyio.get_current_task().id != sink.tasks[1]


@needs_asyncio
@pytest.mark.anyio
async def test_a_flushing_asyncio_task_cancelled_mid_write_is_cancelled() -> None:
    """task.cancel() (as asyncio.wait_for does) during the flusher's write cancels the flush."""
    sink = Recorder()
    event = make(0)
    async with EventBus() as bus:
        bus.subscribe(sink)
        await anyio.wait_all_tasks_blocked()
        sink.block = anyio.Event()  # never set: the first write waits until cancelled

        async def publish_and_flush() -> None:
            await bus.publish(event)
            await bus.flush()

        task = asyncio.create_task(publish_and_flush())
        with anyio.fail_after(5):
            await sink.entered.wait()
            task.cancel("cancelled by the test, as asyncio.wait_for does")
            with pytest.raises(asyncio.CancelledError, match="cancelled by the test"):
                await task
            await bus.flush()
    assert sink.events == [event]
    assert bus.stats().subscriptions[0].retries == 0


@needs_asyncio  # trio's Cancelled cannot be made by a sink
@pytest.mark.anyio
async def test_a_stray_cancellation_from_an_inline_write_is_a_failed_attempt() -> None:
    """A cancellation the flusher did not ask for is retried by the task, not raised by flush."""
    sink = Recorder()
    async with EventBus(retry=RetryPolicy(retries=1, initial_delay=0)) as bus:
        bus.subscribe(sink)
        await anyio.wait_all_tasks_blocked()
        sink.fail = [anyio.get_cancelled_exc_class()()]
        event = make(0)
        with anyio.fail_after(5):
            await bus.publish(event)
            await bus.flush()
        assert bus.stats().subscriptions[0].retries == 1
    assert sink.events == [event]


@pytest.mark.anyio
async def test_unsubscribing_during_a_flushers_write_closes_the_sink_after_it() -> None:
    """A sink is closed only once the write a flush runs for it has returned: no overlap."""
    sink = Recorder()
    gate = anyio.Event()
    async with EventBus() as bus:
        sub = bus.subscribe(sink)
        await anyio.wait_all_tasks_blocked()
        sink.block = gate
        async with anyio.create_task_group() as tg:

            async def unsubscribe_then_open_the_gate() -> None:
                await sink.entered.wait()
                tg.start_soon(bus.unsubscribe, sub)
                await anyio.wait_all_tasks_blocked()
                assert "aclose" not in sink.log  # the write is still running
                gate.set()

            sink.entered = anyio.Event()
            tg.start_soon(unsubscribe_then_open_the_gate)
            with anyio.fail_after(5):
                await bus.publish(make(0))
                await bus.flush()
    assert sink.log == ["write", "written", "aclose"]


@pytest.mark.anyio
async def test_a_listener_holds_each_event_as_soon_as_it_is_published() -> None:
    """publish puts the event into a listener at once (drop-oldest, then a Gap), no task between."""
    async with EventBus() as bus, bus.listen(buffer=2) as listener:
        events = [make(i) for i in range(5)]
        for event in events:
            bus.publish_nowait(event)
        assert listener.get_nowait() == [Gap(3), *events[3:]]
        assert bus.stats().subscriptions[0].dropped == 3


@pytest.mark.anyio
async def test_a_waiter_cancelled_leaves_the_other_waiters_waiting() -> None:
    """Each waiting task has its own wake-up: cancelling one reader of a listener, or one
    publisher waiting for space, neither cancels nor strands the others."""
    first, cancelled, second = make(0), make(1), make(2)
    stuck = Recorder()
    stuck.block = release = anyio.Event()
    async with EventBus(buffer=1) as bus, bus.listen() as listener:
        bus.subscribe(stuck)
        got: list[Event | Gap] = []

        async def read_one() -> None:
            got.append(await listener.__anext__())

        async with anyio.create_task_group() as tg:
            doomed_reader, doomed_publisher = anyio.CancelScope(), anyio.CancelScope()
            tg.start_soon(read_one)
            tg.start_soon(_in_scope, doomed_reader, read_one)
            await anyio.wait_all_tasks_blocked()
            doomed_reader.cancel()
            await anyio.wait_all_tasks_blocked()
            await bus.publish(first)  # the stuck sink holds it: the buffer is full
            await stuck.entered.wait()
            tg.start_soon(_in_scope, doomed_publisher, functools.partial(bus.publish, cancelled))
            tg.start_soon(bus.publish, second)
            await anyio.wait_all_tasks_blocked()
            doomed_publisher.cancel()
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert got == [first]
        await bus.flush()
    assert stuck.events == [first, second]


async def _in_scope(scope: anyio.CancelScope, func: Callable[[], Awaitable[object]]) -> None:
    with scope:
        await func()
