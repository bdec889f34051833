"""EventIndex in memory mode holds events encoded: compactly, and given back equal."""

from __future__ import annotations

import gc
import math
import tracemalloc
from typing import Any

import pytest

import factories
from eventbus import Event, EventBatch, EventQuery, EventType
from sinks.index import EventIndex

pytestmark = pytest.mark.anyio


def small(i: int) -> Event:
    """A small event: a type, one of 10 sessions, a short message, a task on some."""
    return factories.event(
        i,
        f"session-{i % 10}",
        (EventType.TASK_STARTED, EventType.INFO, EventType.TASK_COMPLETED)[i % 3],
        seconds=i / 1000,
        message=f"event {i}",
        task_id=f"task-{i // 40}" if i % 3 else None,
    )


def held_bytes(fill: Any) -> float:
    """Bytes per event the index built by ``fill(index)`` holds (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = EventIndex()
        fill(index)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / len(index)


def test_small_events_are_held_in_under_250_bytes_each() -> None:
    """``add`` in batches: events and index together under 250 bytes an event."""
    count = 20_000

    def fill(index: EventIndex) -> None:
        for start in range(0, count, 1024):
            index.add([small(i) for i in range(start, min(count, start + 1024))])

    assert held_bytes(fill) < 250


async def test_events_written_by_the_bus_are_held_in_under_250_bytes_each() -> None:
    """``write`` (the bus path, small batches with their lines): under 250 bytes an event."""
    count = 20_000
    batches = [
        EventBatch([small(i) for i in range(start, min(count, start + 16))])
        for start in range(0, count, 16)
    ]

    async def write_all(index: EventIndex) -> None:
        for batch in batches:
            await index.write(batch)

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = EventIndex()
        await write_all(index)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / len(index) < 250


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"metadata": {"n": 2**70, "tags": ["a", 1]}}, id="an int over 64 bits"),
        pytest.param(
            {"metadata": {"x": math.inf, "nested": {"a": [None, True, 1.5]}}}, id="nested"
        ),
        pytest.param({"message": "naïve ✓ \u2028 line", "parent_id": "p-1"}, id="unicode, parent"),
        pytest.param({"event_type": EventType("custom_kind")}, id="a type this version lacks"),
    ],
)
def test_events_come_back_equal(fields: dict[str, Any]) -> None:
    """Every event comes back equal to the one added, from pages, latest and after=."""
    fields = {"event_type": EventType.INFO, **fields}
    events = [small(i) for i in range(100)]
    odd = factories.event(1000, "session-1", seconds=0.0505, **fields)
    index = EventIndex()
    index.add(events[:60])
    index.add([odd])  # late: inserted in place
    index.add(events[60:])
    expected = sorted([*events, odd], key=lambda e: (e.timestamp, e.id))
    assert index.query(EventQuery()) == expected
    assert index.query(EventQuery(), after=odd.id, limit=3) == expected[52:55]
    assert index.get_latest(5) == expected[-5:]
    assert index.get_events(session_id="session-1") == [
        e for e in expected if e.session_id == "session-1"
    ]


def test_evicted_and_compacted_events_come_back_equal() -> None:
    """After evictions and compactions, the events held still come back equal."""
    events = [small(i) for i in range(20_000)]
    events[12_345] = factories.event(
        12_345, "session-5", seconds=12.345, metadata={"big": 2**80}
    )  # kept as given
    index = EventIndex(max_events=9_000)
    for start in range(0, len(events), 100):
        index.add(events[start : start + 100])
    assert index.query(EventQuery()) == events[-9_000:]
    assert (
        index.query(EventQuery(session_id="session-5"), limit=5)
        == [e for e in events[-9_000:] if e.session_id == "session-5"][:5]
    )


def test_pages_read_again_after_compactions_are_the_events_held() -> None:
    """Events read lately are kept at hand; a compaction renumbers rows, never mixing them up."""
    events = [small(i) for i in range(12_000)]
    index = EventIndex(max_events=3_000)
    for stop in range(500, len(events) + 1, 500):
        index.add(events[stop - 500 : stop])
        assert index.get_latest(3) == events[stop - 3 : stop]
        assert index.query(EventQuery(), limit=2) == events[max(0, stop - 3_000) :][:2]
