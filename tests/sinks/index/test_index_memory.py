"""EventIndex in memory mode: events kept compact, decoded for a page, equal to those added."""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import factories
import sinks.index._memory
from eventbus import Event, EventBatch, EventBus, EventQuery, EventType, encode_event
from sinks.index import EventIndex

pytestmark = pytest.mark.anyio

TYPES = [EventType.INFO, EventType.TASK_STARTED, EventType.LLM_RESPONSE_RECEIVED]


@pytest.fixture
def window() -> Iterator[int]:
    """A window of 4 events kept as given: the rest of an index's events are encoded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sinks.index._memory, "WINDOW", 4)
        yield 4


def small(i: int) -> Event:
    """A small event, like ``bench_index_memory``'s: a type, a session of 10, a short message."""
    return factories.event(
        i,
        f"session-{i % 10}",
        TYPES[i % 3],
        seconds=i / 1000,
        message=f"event {i}",
        task_id=f"task-{i // 40}" if i % 3 else None,
        metadata={"total_tokens": 10} if i % 3 == 2 else {},
    )


def rows(index: EventIndex) -> sinks.index._memory.MemoryRows:
    """The storage of a memory-mode index."""
    held = index._rows
    assert isinstance(held, sinks.index._memory.MemoryRows)
    return held


# --- memory ---------------------------------------------------------------------------


def test_memory_mode_holds_small_events_in_a_few_hundred_bytes_each() -> None:
    """Indexed, a small event costs far less than the ~600 bytes its objects take.

    The window of events kept as given is made small, so what is measured is
    the encoded storage (the benchmark's figure at 1M events is about 210 bytes).
    """
    count = 40_000
    gc.collect()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sinks.index._memory, "WINDOW", 256)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            index = EventIndex()
            for start in range(0, count, 500):  # each batch dropped once indexed
                index.add([small(i) for i in range(start, start + 500)])
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert len(index) == count
    assert used / count < 300


def test_only_the_newest_events_are_kept_as_given(window: int) -> None:
    """Between one and two windows of the newest events are held as objects; older encoded."""
    index = EventIndex()
    events = [small(i) for i in range(20)]
    for event in events:
        index.add([event])
    held = rows(index)
    assert window <= len(held.young) < 2 * window
    assert held.young == events[held.base :]
    assert held.base == 20 - len(held.young)


# --- decoding on demand -----------------------------------------------------------------


def test_events_decoded_on_demand_equal_the_originals(window: int) -> None:
    """Every query returns events equal to those added, whether encoded or not."""
    parent = factories.event(0).id
    originals = [small(i) for i in range(30)]
    originals[1::2] = [msgspec.structs.replace(e, parent_id=parent) for e in originals[1::2]]
    index = EventIndex()
    index.add(originals[:17])
    index.add(originals[17:])
    assert rows(index).base > 20  # most are encoded
    assert index.get_events() == originals
    assert index.get_events(task_id="task-0", session_id="session-1") == [
        e for e in originals if e.task_id == "task-0" and e.session_id == "session-1"
    ]
    assert index.query(EventQuery(), limit=5, after=originals[9].id) == originals[10:15]
    assert index.get_latest(3) == originals[-3:]


def test_a_page_asked_for_again_is_served_from_the_cache(window: int) -> None:
    """Events decoded for a page are kept: asking again returns the same objects."""
    index = EventIndex()
    events = [small(i) for i in range(50)]
    index.add(events)
    first = index.get_events(end_time=factories.at(0.010))
    again = index.get_events(end_time=factories.at(0.010))
    assert first == events[:11]
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_the_events_decoded_lately_are_bounded(window: int) -> None:
    """At most twice ``CACHE`` decoded events are kept, and they are the last decoded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sinks.index._memory, "CACHE", 8)
        index = EventIndex()
        events = [small(i) for i in range(100)]
        index.add(events)
        for start in range(0, 90, 5):
            page = index.query(EventQuery(), limit=5, after=events[start].id)
            assert page == events[start + 1 : start + 6]
            kept = [event for event in rows(index).decoded if event is not None]
            assert len(kept) <= 16
            assert page[0] in kept


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"pair": (1, 2)}, id="tuple"),
        pytest.param({"nan": math.nan}, id="nan"),
        pytest.param({"big": 2**70}, id="big-int"),
        pytest.param({"when": factories.at(1)}, id="datetime"),
        pytest.param({1: "int key"}, id="int-key"),
        pytest.param({"deep": [{"set": {1, 2}}]}, id="nested-set"),
    ],
)
def test_an_event_that_would_not_read_back_equal_is_kept_whole(
    window: int, metadata: dict[Any, Any]
) -> None:
    """Metadata msgpack would change (a tuple, NaN, a huge int ...): the event is kept as given."""
    odd = factories.event(0, seconds=0, metadata=metadata)
    index = EventIndex()
    index.add([odd, *(small(i) for i in range(1, 20))])
    assert rows(index).whole == {0: odd}
    assert index.get_events(end_time=factories.at(0))[0] is odd


def test_an_id_not_made_by_new_event_id_is_kept_whole(window: int) -> None:
    """An id of another shape than 32 lowercase hex digits reads back unchanged."""
    odd = [factories.event(i, seconds=i, id=name) for i, name in enumerate(["A" * 32, "x", "é"])]
    index = EventIndex()
    index.add([*odd, *(factories.event(i, seconds=i) for i in range(3, 20))])
    assert index.get_events(end_time=factories.at(2)) == odd
    assert index.query(EventQuery(), limit=1, after="x") == [odd[2]]


async def test_events_written_by_a_bus_read_back_equal_once_encoded(window: int) -> None:
    """The bus path (``write`` of batches with their encoded lines) stores them alike."""
    index = EventIndex()
    events = [small(i) for i in range(30)]
    async with EventBus() as bus:
        bus.subscribe(index)
        for event in events:
            await bus.publish(event)
    assert rows(index).base > 0
    assert index.get_events() == events
    more = [small(i) for i in range(30, 40)]
    await index.write(EventBatch(more, [encode_event(e) for e in more]))
    assert index.get_events() == events + more


# --- property: stored and decoded events are the events added -----------------------------

_text = st.text(max_size=12) | st.sampled_from(["", "\ud800 lone surrogate", "ünï©ødé 🚀"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_odd = st.tuples(st.integers()) | st.floats() | st.integers(min_value=2**64)


@st.composite
def any_events(draw: st.DrawFn) -> Event:
    """Events with any fields: unicode, None, odd metadata, parent ids, odd ids."""
    maybe = st.none() | _text
    metadata = draw(st.dictionaries(_text, _json | _odd, max_size=4))
    fields: dict[str, Any] = {
        "event_type": draw(st.sampled_from([*TYPES, EventType("custom_kind")])),
        "session_id": draw(st.sampled_from(["s1", "s2", "ß"])),
        "message": draw(_text),
        "timestamp": factories.at(draw(st.integers(0, 5))),
        "phase": draw(maybe),
        "task_id": draw(maybe),
        "agent_role": draw(maybe),
        "model": draw(maybe),
        "metadata": metadata,
        "parent_id": draw(st.none() | st.just("0" * 32) | st.text(st.characters(), max_size=4)),
    }
    event = Event(**fields)
    if draw(st.booleans()):
        event = Event(**fields, id=draw(st.text("0123456789abcdefABC", min_size=31, max_size=33)))
    return event


@settings(max_examples=100, deadline=None)
@given(events=st.lists(any_events(), max_size=30, unique_by=lambda e: e.id))
def test_stored_and_decoded_events_equal_those_added(events: list[Event]) -> None:
    """Whatever the events hold, a memory-mode index returns them equal, in time order."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sinks.index._memory, "WINDOW", 2)
        patch.setattr(sinks.index._memory, "CACHE", 3)
        index = EventIndex()
        for start in range(0, len(events), 7):
            index.add(events[start : start + 7])
        expected = sorted(events, key=lambda e: (e.timestamp, e.id))
        assert index.get_events() == expected
        assert index.get_events() == expected  # again: from the cache, or decoded again
        for event in expected[:5]:
            assert (
                index.query(EventQuery(), limit=1, after=event.id)
                == expected[expected.index(event) + 1 :][:1]
            )
