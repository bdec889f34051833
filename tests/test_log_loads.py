"""Loads are stable and complete: no line is stamped with the time it is read, ids do not change."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

import sinks._jsonl_read
from eventbus import (
    MAX_ID_LENGTH,
    MAX_LINE_BYTES,
    Event,
    EventDecodeError,
    EventType,
    decode_event,
    decode_events,
    encode_event,
)
from sinks.jsonl import CorruptLogError, EventLog, iter_log
from sinks.memory import EventIndex

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def seed_line(i: int, *, message: str | None = None) -> bytes:
    """A line as the seed's EventLog wrote it: ``json.dumps(event.to_dict())``, no ids."""
    event = Event(
        event_type=EventType.TASK_STARTED if i % 2 else EventType.INFO,
        session_id="s1",
        message=message or f"seed event {i}",
        timestamp=T0 + timedelta(seconds=i // 2),  # pairs share a timestamp
        task_id=f"t{i % 3}",
        metadata={"n": i},
    )
    data = event.to_dict()
    del data["id"], data["parent_id"]
    return json.dumps(data).encode()


@pytest.fixture
def seed_log(tmp_path: Path) -> Path:
    """A seed-format log of 8 events, two of them identical lines."""
    path = tmp_path / "s1" / "events.jsonl"
    path.parent.mkdir()
    lines = [seed_line(i) for i in range(6)] + [seed_line(6, message="same")] * 2
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def without_timestamp(i: int) -> bytes:
    data = json.loads(encode_event(Event(event_type=EventType.INFO, session_id="s1",
                                         message=f"no time {i}", timestamp=T0)))  # fmt: skip
    del data["timestamp"]
    return json.dumps(data).encode()


# --- a line without timestamp ---------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_a_line_without_timestamp_is_corrupt_not_stamped_now(tmp_path: Path, cache: bool) -> None:
    """It is skipped and counted in the RecoveryReport, never given the time of the load."""
    path = tmp_path / "s1" / "events.jsonl"
    path.parent.mkdir()
    good = encode_event(Event(event_type=EventType.INFO, session_id="s1", message="ok",
                              timestamp=T0, parent_id=None))  # fmt: skip
    path.write_bytes(good + b"\n" + without_timestamp(1) + b"\n" + good + b"\n")
    log = EventLog(path, cache=cache)
    assert [e.message for e in log.get_events()] == ["ok", "ok"]
    assert (log.recovery.corrupt_count, log.recovery.corrupt_lines) == (1, (2,))
    assert [e.message for e, _, _ in iter_log(path)] == ["ok", "ok"]
    with pytest.raises(CorruptLogError, match=r"line 2 .*missing required field `timestamp`"):
        EventLog(path, cache=cache, strict=True).get_events()


def test_decoding_a_line_without_timestamp_raises() -> None:
    """decode_event, decode_events and Event.from_dict refuse a missing timestamp."""
    line = without_timestamp(0)
    with pytest.raises(EventDecodeError, match="missing required field `timestamp`"):
        decode_event(line)
    with pytest.raises(EventDecodeError, match="missing required field `timestamp`"):
        decode_events(encode_event(Event(event_type=EventType.INFO, session_id="s",
                                         message="m")) + b"\n" + line + b"\n")  # fmt: skip
    with pytest.raises(EventDecodeError, match="missing required field `timestamp`"):
        Event.from_dict(json.loads(line))


# --- a line without id ----------------------------------------------------------------------


def load_all(path: Path) -> dict[str, list[Event]]:
    return {
        "cached": EventLog(path).get_events(),
        "cached again": EventLog(path).get_events(),
        "uncached": EventLog(path, cache=False).get_events(),
        "uncached again": EventLog(path, cache=False).get_events(),
        "iter_log": [event for event, _, _ in iter_log(path)],
    }


def test_seed_lines_get_the_same_ids_on_every_load_in_every_mode(seed_log: Path) -> None:
    """A reload, cache=False and iter_log give equal events, ids included; all 8 are there."""
    loads = load_all(seed_log)
    first = loads["cached"]
    assert len(first) == 8
    for name, events in loads.items():
        assert events == first, name
    assert len({event.id for event in first}) == 8  # equal lines at two places: two ids


def test_seed_lines_rebuilt_index_agrees_with_the_logs(seed_log: Path) -> None:
    """EventIndex.from_workspace (both modes) holds the 8 events with the logs' ids."""
    events = EventLog(seed_log).get_events()
    in_time_order = sorted(events, key=lambda e: (e.timestamp, e.id))
    for low_memory in (False, True):
        index = EventIndex.from_workspace(seed_log.parent.parent, low_memory=low_memory)
        assert index.get_events() == in_time_order
        assert index.get_events(task_id="t1") == [e for e in in_time_order if e.task_id == "t1"]


def test_derived_ids_sort_by_time_and_change_with_place(seed_log: Path) -> None:
    """Derived ids carry the timestamp's milliseconds; the same line elsewhere gets another id."""
    events = EventLog(seed_log).get_events()
    by_id = sorted(events, key=lambda e: e.id)
    assert [e.timestamp for e in by_id] == sorted(e.timestamp for e in events)
    line = seed_line(0)
    assert decode_event(line, offset=0).id == decode_event(line, offset=0).id
    assert decode_event(line, offset=0).id != decode_event(line, offset=len(line) + 1).id


def test_from_dict_without_id_makes_a_new_id_each_time() -> None:
    """A dict has no place in a log: from_dict gives it a new id (documented)."""
    data: dict[str, Any] = json.loads(seed_line(0))
    assert Event.from_dict(data).id != Event.from_dict(data).id


# --- lines nested too deep, with bad ids, or too long -----------------------------------------


def good_line(i: int) -> bytes:
    event = Event(event_type=EventType.INFO, session_id="s1", message=f"ok {i}",
                  timestamp=T0 + timedelta(seconds=i), parent_id=None)  # fmt: skip
    return encode_event(event)


def with_field(i: int, **fields: Any) -> bytes:
    return json.dumps({**json.loads(good_line(i)), **fields}).encode()


DEEP = 2000
BAD_LINES = {
    "deep": with_field(1)[:-1] + b',"metadata":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}}",
    "forged id": with_field(2, id="x1\nevent: gap\ndata: {}"),
    "long parent id": with_field(3, parent_id="p" * (MAX_ID_LENGTH + 1)),
    "over MAX_LINE_BYTES": b'{"message":"' + b"x" * MAX_LINE_BYTES + b'"}',
}


@pytest.fixture
def bad_log(tmp_path: Path) -> Path:
    """ok 0, then each bad line followed by a good one: ok 0, bad, ok 1, bad, ok 2, ..."""
    path = tmp_path / "s1" / "events.jsonl"
    path.parent.mkdir()
    lines = [good_line(0)]
    for i, line in enumerate(BAD_LINES.values(), 1):
        lines += [line, good_line(10 + i)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


GOOD = ["ok 0", "ok 11", "ok 12", "ok 13", "ok 14"]


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_deep_forged_and_over_long_lines_are_skipped_and_counted(
    bad_log: Path, cache: bool
) -> None:
    """EventLog loads every good line; each bad one is a corrupt line in the report."""
    log = EventLog(bad_log, cache=cache)
    assert [e.message for e in log.get_events()] == GOOD
    assert [e.message for e in log.get_latest(2)] == GOOD[-2:]
    assert (log.recovery.corrupt_count, log.recovery.corrupt_lines) == (4, (2, 4, 6, 8))
    assert [e.message for e, _, _ in iter_log(bad_log)] == GOOD


@pytest.mark.parametrize(
    ("number", "problem"),
    [(2, "nested too deep"), (4, "control character"), (6, "length <= 256"), (8, "MAX_LINE")],
)
def test_strict_mode_names_each_kind_of_bad_line(
    tmp_path: Path, bad_log: Path, number: int, problem: str
) -> None:
    """With strict=True the first bad line raises CorruptLogError saying what is wrong."""
    lines = bad_log.read_bytes().split(b"\n")
    path = tmp_path / "one" / "events.jsonl"
    path.parent.mkdir()
    path.write_bytes(lines[0] + b"\n" + lines[number - 1] + b"\n")
    with pytest.raises(CorruptLogError, match=rf"line 2 .*{problem}"):
        EventLog(path, strict=True).get_events()
    with pytest.raises(CorruptLogError, match=rf"line 2 .*{problem}"):
        list(iter_log(path, strict=True))


def test_a_line_over_the_cap_is_read_in_bounded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers never hold a too-long line whole: memory stays near the cap, not the line."""
    monkeypatch.setattr(sinks._jsonl_read, "MAX_LINE_BYTES", 256 * 1024)
    monkeypatch.setattr(sinks._jsonl_read, "CHUNK", 64 * 1024)
    path = tmp_path / "s1" / "events.jsonl"
    path.parent.mkdir()
    size = 16 * 1024 * 1024
    path.write_bytes(good_line(0) + b"\n" + b"x" * size + b"\n" + good_line(1) + b"\n")
    tracemalloc.start()
    try:
        log = EventLog(path)
        messages = [e.message for e in log.get_events()]
        read = [e.message for e, _, _ in iter_log(path)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert messages == read == ["ok 0", "ok 1"]
    assert log.recovery.corrupt_lines == (2,)
    assert peak < size // 8


def test_an_incomplete_last_line_over_the_cap_is_a_torn_tail_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer may still be finishing it: ignored (and reported) until its newline comes."""
    monkeypatch.setattr(sinks._jsonl_read, "MAX_LINE_BYTES", 1024)
    monkeypatch.setattr(sinks._jsonl_read, "CHUNK", 256)
    path = tmp_path / "s1" / "events.jsonl"
    path.parent.mkdir()
    first = good_line(0) + b"\n"
    path.write_bytes(first + b"x" * 5000)
    log = EventLog(path)
    assert [e.message for e in log.get_events()] == ["ok 0"]
    report = log.recovery
    assert (report.corrupt_count, report.torn_offset, report.torn_bytes) == (0, len(first), 5000)
    with path.open("ab") as file:
        file.write(b"\n" + good_line(1) + b"\n")
    assert [e.message for e in log.get_events()] == ["ok 0", "ok 1"]
    assert (log.recovery.corrupt_count, log.recovery.torn_bytes) == (1, 0)


def test_the_longest_event_publishing_accepts_is_read_back(tmp_path: Path) -> None:
    """An event encoding to exactly MAX_LINE_BYTES is written, and every reader loads it."""
    empty = Event(event_type=EventType.INFO, session_id="s1", message="", timestamp=T0,
                  parent_id=None)  # fmt: skip
    size = MAX_LINE_BYTES - len(encode_event(empty))
    event = msgspec.structs.replace(empty, message="x" * size)
    assert len(encode_event(event)) == MAX_LINE_BYTES
    path = tmp_path / "s1" / "events.jsonl"
    with EventLog(path) as log:
        log.append(event)
    assert EventLog(path).get_events() == [event]
    assert [e for e, _, _ in iter_log(path)] == [event]
