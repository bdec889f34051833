"""Live listeners: lossy, bounded, never in the publisher's way."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from eventbus import Event, EventBus, EventQuery, EventType, Gap, Listener, MemorySink
from factories import event as ev

pytestmark = pytest.mark.anyio


async def test_listener_sees_matching_events_live_in_order() -> None:
    """A listener iterates over what is published after it started."""
    received: list[str] = []
    async with EventBus() as bus, bus.listen(EventQuery(session_id="s2")) as events:

        async def consume() -> None:
            async for item in events:
                assert isinstance(item, Event)
                received.append(item.message)
                if len(received) == 3:
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_all_tasks_blocked()
            for i in range(9):
                await bus.publish(ev(i, session_id=f"s{i % 3}"))
    assert received == ["2", "5", "8"]


async def test_stalled_listener_never_blocks_the_publisher() -> None:
    """A listener nobody reads: publish never waits, and it learns what it missed."""
    sink = MemorySink()
    async with EventBus(buffer=16) as bus:
        bus.subscribe(sink)
        async with bus.listen(buffer=10) as stalled:
            with anyio.fail_after(10):
                for i in range(5000):
                    await bus.publish(ev(i))
                await bus.flush()
            await wait_all_tasks_blocked()
            items = stalled.get_nowait()
            assert items[0] == Gap(missed=4990)
            assert [e.message for e in items[1:] if isinstance(e, Event)] == [
                str(i) for i in range(4990, 5000)
            ]
            assert stalled.missed == 4990
            listener_stats = bus.stats().subscriptions[1]
            assert (listener_stats.kind, listener_stats.dropped) == ("listener", 4990)
    assert len(sink.events) == 5000


async def test_gap_marks_where_events_were_dropped() -> None:
    """A slow reader sees its events, a Gap, then the newest events, in order."""
    async with EventBus() as bus, bus.listen(buffer=3) as events:
        await bus.publish(ev(0))
        await wait_all_tasks_blocked()
        first = await events.__anext__()
        assert isinstance(first, Event)
        assert first.message == "0"
        for i in range(1, 8):
            await bus.publish(ev(i))
        await wait_all_tasks_blocked()
        rest = events.get_nowait()
    assert rest[0] == Gap(missed=4)
    assert [e.message for e in rest[1:] if isinstance(e, Event)] == ["5", "6", "7"]


async def test_missed_counts_only_matching_events() -> None:
    """Events the query filters out are not 'missed'."""
    async with EventBus() as bus, bus.listen(EventQuery(event_type="error"), buffer=2) as events:
        for i in range(10):
            await bus.publish(ev(i))
        await bus.publish(Event(event_type=EventType.ERROR, session_id="s", message="e"))
        await wait_all_tasks_blocked()
        items = events.get_nowait()
    assert [getattr(item, "message", None) for item in items] == ["e"]
    assert events.missed == 0


async def test_iteration_ends_when_the_listen_block_is_left() -> None:
    """Leaving the block ends iteration after the buffered events."""
    seen: list[Event | Gap] = []
    async with anyio.create_task_group() as tg, EventBus() as bus:
        async with bus.listen() as events:

            async def consume() -> None:
                seen.extend([item async for item in events])

            tg.start_soon(consume)
            await bus.publish(ev(0))
            await bus.publish(ev(1))
            await wait_all_tasks_blocked()
        with anyio.fail_after(5):
            while not seen:
                await wait_all_tasks_blocked()
    assert [e.message for e in seen if isinstance(e, Event)] == ["0", "1"]


async def test_leaving_listen_detaches_the_listener() -> None:
    """After the block, the bus no longer delivers to it."""
    async with EventBus() as bus:
        async with bus.listen() as events:
            await bus.publish(ev(0))
        assert bus.stats().subscriptions == ()
        await bus.publish(ev(1))
        await wait_all_tasks_blocked()
        assert "1" not in [e.message for e in events.get_nowait() if isinstance(e, Event)]


def test_listener_buffer_must_hold_an_event() -> None:
    """A zero-sized buffer is refused."""
    with pytest.raises(ValueError, match="at least 1 event"):
        Listener(0)
