"""Loading an index from logs: ``add_log``, bulk batches with ``settle``, ``locate``.

``EventIndex.from_workspace`` and ``Workspace`` load through these same public calls,
so a rebuilt index and a workspace's index are filled by one loader.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import factories
from eventbus import Event, EventQuery
from sinks import EventIndex, EventIndexError, EventLog, UnknownEventIdError

EVERYTHING = EventQuery()


def _events(count: int) -> list[Event]:
    return [factories.event(i, seconds=i, task_id=f"t{i % 3}") for i in range(count)]


def _write(path: Path, events: list[Event]) -> None:
    with EventLog(path) as log:
        for event in events:
            log.append(event)


def test_add_log_reads_complete_lines_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    """The returned offset is after the last complete line; the next call reads the rest."""
    path = tmp_path / "events.jsonl"
    events = _events(5)
    _write(path, events[:3])
    whole = path.stat().st_size
    with path.open("ab") as file:  # a line a writer has not finished
        file.write(b'{"event_type": "task_sta')
    index = EventIndex(low_memory=True)
    assert index.add_log(path) == whole
    assert index.query(EVERYTHING) == events[:3]
    with path.open("r+b") as file:  # the writer is cut off; the log goes on cleanly
        file.truncate(whole)
    _write(path, events[3:])
    assert index.add_log(path, whole) == path.stat().st_size
    assert index.query(EVERYTHING) == events


def test_add_log_of_a_missing_log_is_none(tmp_path: Path) -> None:
    """No log, nothing indexed: ``None``."""
    assert EventIndex(low_memory=True).add_log(tmp_path / "absent.jsonl") is None


def test_bulk_batches_then_settle_answer_like_one_add() -> None:
    """Late events in bulk batches are sorted in by ``settle``, duplicates dropped."""
    events = _events(200)
    shuffled = events + events[:20]  # repeats are found too
    random.Random(7).shuffle(shuffled)
    bulk = EventIndex()
    for start in range(0, len(shuffled), 16):
        batch = shuffled[start : start + 16]
        bulk.add_located(batch, "log", range(len(batch)), [1] * len(batch), bulk=True)
    bulk.settle()
    one = EventIndex()
    one.add(events)
    assert bulk.query(EVERYTHING) == one.query(EVERYTHING) == events
    assert bulk.count() == 200


def test_bulk_loading_keeps_max_events_bounded() -> None:
    """With ``max_events``, bulk loading settles itself at twice the bound."""
    index = EventIndex(max_events=10)
    events = _events(100)
    for event in reversed(events):  # every one late: each waits for a settle
        index.add_located([event], "log", [0], [1], bulk=True)
        assert len(index) < 2 * 10
    index.settle()
    assert index.query(EVERYTHING) == events[-10:]


def test_locate_gives_the_place_of_an_events_line(tmp_path: Path) -> None:
    """``(path, offset, length)`` of the event's line, newline included."""
    path = tmp_path / "events.jsonl"
    events = _events(4)
    _write(path, events)
    index = EventIndex(low_memory=True)
    index.add_log(path)
    data = path.read_bytes()
    for event in events:
        where, offset, length = index.locate(event.id)
        assert where == str(path)
        line = data[offset : offset + length]
        assert line.endswith(b"\n")
        assert json.loads(line)["id"] == event.id


def test_locate_refuses_an_unknown_id(tmp_path: Path) -> None:
    """An id the index does not hold raises ``UnknownEventIdError``."""
    path = tmp_path / "events.jsonl"
    _write(path, _events(2))
    index = EventIndex(low_memory=True)
    index.add_log(path)
    with pytest.raises(UnknownEventIdError, match="no event with this id"):
        index.locate("nope")


def test_locate_needs_a_low_memory_index() -> None:
    """A memory-mode index keeps events, not places."""
    index = EventIndex()
    index.add(_events(1))
    with pytest.raises(EventIndexError, match=r"locate\(\) needs EventIndex\(low_memory=True\)"):
        index.locate("any")
