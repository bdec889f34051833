"""EventLog: the seed's VF-131 API over one JSONL file, recovery, locking and reading."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import (
    Event,
    EventType,
    create_llm_request_event,
    create_phase_transition_event,
    encode_event,
    encode_jsonl,
)
from sinks.jsonl import CorruptLogError, EventLog, LogLockedError, RecoveryReport, iter_log

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def make_event(index: int = 0, **fields: Any) -> Event:
    """A complete event (the same ``index`` makes an equal event); ``fields`` override."""
    values: dict[str, Any] = {
        "event_type": EventType.INFO,
        "session_id": "session-1",
        "message": f"event {index}",
        "timestamp": T0 + timedelta(minutes=index),
        "id": f"event-{index}",
        "parent_id": None,
    }
    values.update(fields)
    return Event(**values)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "session-1" / "events.jsonl"


@pytest.fixture
def log(log_path: Path) -> Iterator[EventLog]:
    with EventLog(log_path) as event_log:
        yield event_log


def write_lines(path: Path, *lines: bytes, end: bytes = b"") -> None:
    """Write raw lines (each followed by a newline), then ``end`` as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines) + end)


def sample_log(log: EventLog) -> list[Event]:
    """Append 12 events spread over types, phases, tasks, roles and time; return them."""
    types = [EventType.TASK_STARTED, EventType.TASK_COMPLETED, EventType.LLM_REQUEST_SENT]
    events = [
        make_event(
            i,
            event_type=types[i % 3],
            phase="PLAN_REVIEW" if i < 4 else "EXECUTION",
            task_id=f"task-{i % 2}",
            agent_role="coder" if i % 4 else "reviewer",
        )
        for i in range(12)
    ]
    for event in events:
        log.append(event)
    return events


# --- the seed's tests -----------------------------------------------------------------


def test_event_to_dict_from_dict() -> None:
    """to_dict gives the seed's shape and from_dict rebuilds the same event."""
    event = make_event(metadata={"prompt_tokens": 150}, phase="IDEA", model="model-a")
    data = event.to_dict()
    assert data["event_type"] == "info"
    assert data["timestamp"] == T0.isoformat()
    assert Event.from_dict(json.loads(json.dumps(data))) == event


def test_event_log_append(log: EventLog) -> None:
    """Appended events are counted and returned in append order."""
    events = [make_event(i) for i in range(3)]
    for event in events:
        log.append(event)
    assert log.count() == 3
    assert log.get_events() == events


def test_event_log_persistence(log: EventLog, log_path: Path) -> None:
    """The file holds one JSON object per line, each line ending in a newline."""
    events = [make_event(i, metadata={"n": i}) for i in range(3)]
    for event in events:
        log.append(event)
    data = log_path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert [Event.from_dict(json.loads(line)) for line in lines] == events


def test_get_events_by_type(log: EventLog) -> None:
    """event_type takes one type or a list of types."""
    events = sample_log(log)
    started = [e for e in events if e.event_type == EventType.TASK_STARTED]
    assert log.get_events(event_type=EventType.TASK_STARTED) == started
    both = [e for e in events if e.event_type != EventType.LLM_REQUEST_SENT]
    assert log.get_events(event_type=[EventType.TASK_STARTED, EventType.TASK_COMPLETED]) == both


def test_get_events_by_phase(log: EventLog) -> None:
    """phase filters on the event's phase."""
    events = sample_log(log)
    assert log.get_events(phase="PLAN_REVIEW") == events[:4]


def test_get_events_by_task(log: EventLog) -> None:
    """task_id filters on the event's task, combined with other filters."""
    events = sample_log(log)
    assert log.get_events(task_id="task-1") == events[1::2]
    assert log.get_events(task_id="task-0", agent_role="reviewer") == events[::4]


def test_get_events_by_time_range(log: EventLog) -> None:
    """start_time and end_time are inclusive; naive datetimes are UTC."""
    events = sample_log(log)
    start = T0 + timedelta(minutes=3)
    end = (T0 + timedelta(minutes=5)).replace(tzinfo=None)
    assert log.get_events(start_time=start, end_time=end) == events[3:6]
    assert log.get_events(start_time=T0 + timedelta(minutes=10)) == events[10:]


def test_get_latest(log: EventLog) -> None:
    """get_latest(n) is the last n events in append order."""
    events = sample_log(log)
    assert log.get_latest(3) == events[-3:]
    assert log.get_latest() == events
    assert log.get_latest(0) == []


def test_count(log: EventLog) -> None:
    """count() counts all events, or those of one type or of a list of types."""
    sample_log(log)
    assert log.count() == 12
    assert log.count(EventType.TASK_STARTED) == 4
    assert log.count([EventType.TASK_STARTED, EventType.LLM_REQUEST_SENT]) == 8
    assert log.count(EventType.ERROR) == 0


def test_event_log_reload(log: EventLog, log_path: Path) -> None:
    """A new EventLog on the same file loads every event."""
    events = sample_log(log)
    log.close()
    assert EventLog(log_path).get_events() == events


def test_create_helper_functions(log: EventLog) -> None:
    """The seed's helpers build events that persist and query by type."""
    transition = create_phase_transition_event("session-1", "IDEA", "PLAN_REVIEW")
    request = create_llm_request_event("session-1", "model-a", "coder", 150, task_id="t1")
    assert transition.phase == "PLAN_REVIEW"
    assert transition.metadata == {"old_phase": "IDEA", "new_phase": "PLAN_REVIEW"}
    assert (request.model, request.agent_role, request.task_id) == ("model-a", "coder", "t1")
    assert request.metadata == {"prompt_tokens": 150}
    log.append(transition)
    log.append(request)
    reloaded = EventLog(log.log_path)
    assert reloaded.get_events(event_type=EventType.LLM_REQUEST_SENT) == [request]
    assert reloaded.get_events(event_type=EventType.PHASE_TRANSITION) == [transition]


# --- recovery --------------------------------------------------------------------------


def test_writer_cuts_torn_last_line_and_reports_it(log_path: Path) -> None:
    """Opening for writing truncates an interrupted last line and reports offset and size."""
    first = encode_event(make_event(0))
    write_lines(log_path, first, end=b'{"event_type":"info","sess')
    log = EventLog(log_path)
    log.append(make_event(1))
    log.close()
    assert log.recovery.torn_cut
    assert (log.recovery.torn_offset, log.recovery.torn_bytes) == (len(first) + 1, 26)
    assert EventLog(log_path).get_events() == [make_event(0), make_event(1)]


def test_missing_final_newline_is_a_torn_line(log_path: Path) -> None:
    """A complete object without its newline is incomplete: ignored, then cut."""
    write_lines(log_path, encode_event(make_event(0)), end=encode_event(make_event(1)))
    assert EventLog(log_path).count() == 1
    with EventLog(log_path) as log:
        log.append(make_event(2))
    assert log.recovery.torn_bytes == len(encode_event(make_event(1)))
    assert [e.message for e in EventLog(log_path).get_events()] == ["event 0", "event 2"]


def test_trailing_nul_bytes_are_cut(log_path: Path) -> None:
    """NUL bytes a crash left after the last line are cut off."""
    write_lines(log_path, encode_event(make_event(0)), end=b"\x00" * 4096)
    with EventLog(log_path) as log:
        log.append(make_event(1))
    assert log.recovery.torn_bytes == 4096
    assert log_path.read_bytes() == encode_jsonl([make_event(0), make_event(1)])


def test_corrupt_middle_line_is_skipped_and_counted(log_path: Path) -> None:
    """A corrupt line is skipped and counted; the lines around it are kept."""
    before, after = encode_event(make_event(0)), encode_event(make_event(1))
    write_lines(log_path, before, b'{"event_type": oops}', after)
    log = EventLog(log_path)
    assert log.get_events() == [make_event(0), make_event(1)]
    assert log.recovery == RecoveryReport(
        path=os.fspath(log_path),
        corrupt_count=1,
        corrupt_lines=(2,),
        corrupt_offsets=(len(before) + 1,),
    )


def test_unknown_event_type_is_kept_unchanged(log_path: Path) -> None:
    """An event type from a newer producer loads, queries and re-encodes unchanged."""
    line = encode_event(make_event(0, event_type="quantum_leap"))
    write_lines(log_path, line)
    log = EventLog(log_path)
    (event,) = log.get_events(event_type="quantum_leap")
    assert not event.event_type.is_known
    assert encode_event(event) == line
    assert log.recovery.clean


def test_strict_mode_raises_on_a_corrupt_line(log_path: Path) -> None:
    """strict=True raises CorruptLogError naming the line instead of skipping it."""
    write_lines(log_path, encode_event(make_event(0)), b"not json")
    with pytest.raises(CorruptLogError, match=r"line 2 \(byte offset \d+\) is not a valid event"):
        EventLog(log_path, strict=True)


def test_strict_mode_raises_on_a_torn_line_when_writing(log_path: Path) -> None:
    """strict=True refuses to cut an incomplete last line."""
    write_lines(log_path, encode_event(make_event(0)), end=b'{"event')
    log = EventLog(log_path, strict=True)
    with pytest.raises(CorruptLogError, match="incomplete last line of 7 bytes"):
        log.append(make_event(1))
    assert not log.writing


def test_next_append_starts_on_a_clean_line(log_path: Path) -> None:
    """After a torn line is cut, the next event is on its own line."""
    write_lines(log_path, encode_event(make_event(0)), end=b"garbage-without-newline")
    with EventLog(log_path) as log:
        log.append(make_event(1))
    lines = log_path.read_bytes().split(b"\n")
    assert lines == [encode_event(make_event(0)), encode_event(make_event(1)), b""]


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_reader_ignores_incomplete_last_line_until_it_is_complete(
    log_path: Path, cache: bool
) -> None:
    """A reader neither cuts nor reports as corrupt a line a writer is finishing."""
    line = encode_event(make_event(1))
    write_lines(log_path, encode_event(make_event(0)), end=line[:10])
    reader = EventLog(log_path, cache=cache)
    assert reader.count() == 1
    assert reader.get_events() == [make_event(0)]
    assert (reader.recovery.torn_bytes, reader.recovery.torn_cut) == (10, False)
    with log_path.open("ab") as file:
        file.write(line[10:] + b"\n")
    assert reader.get_events() == [make_event(0), make_event(1)]
    assert reader.recovery.clean


# --- locking ---------------------------------------------------------------------------


def test_second_writer_in_this_process_is_refused(log: EventLog, log_path: Path) -> None:
    """A second writer gets LogLockedError naming the file."""
    log.append(make_event(0))
    expected = re.escape(f"cannot write to {log_path}: another writer")
    with pytest.raises(LogLockedError, match=expected):
        EventLog(log_path, lock_timeout=0).append(make_event(1))


def test_second_writer_in_another_process_is_refused(log: EventLog, log_path: Path) -> None:
    """A writer in another process gets LogLockedError while this one holds the lock."""
    log.append(make_event(0))
    script = textwrap.dedent(
        """
        import sys
        from eventbus import Event, EventType
        from sinks.jsonl import EventLog, LogLockedError
        try:
            EventLog(sys.argv[1], lock_timeout=0).append(
                Event(event_type=EventType.INFO, session_id="s", message="other")
            )
        except LogLockedError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script, os.fspath(log_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 3, child.stderr
    assert f"cannot write to {log_path}" in child.stdout


def test_readers_never_take_the_lock(log: EventLog, log_path: Path) -> None:
    """Readers load and query while a writer holds the lock, and never block it."""
    reader = EventLog(log_path)
    log.append(make_event(0))
    assert EventLog(log_path).get_events() == [make_event(0)]
    assert reader.get_latest(1) == [make_event(0)]
    log.append(make_event(1))
    assert reader.count() == 2
    assert not reader.writing


def test_close_releases_the_lock(log_path: Path) -> None:
    """After close() (or a with block), another writer can append."""
    with EventLog(log_path) as first:
        first.append(make_event(0))
    with EventLog(log_path) as second:
        second.append(make_event(1))
    assert EventLog(log_path).count() == 2


def test_dropping_the_writer_releases_the_lock(log_path: Path) -> None:
    """A writer that is garbage collected releases its lock."""
    first = EventLog(log_path)
    first.append(make_event(0))
    del first
    gc.collect()
    with EventLog(log_path) as second:
        second.append(make_event(1))
    assert EventLog(log_path).count() == 2


# --- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("carriage\rreturn", id="CR"),
        pytest.param("line\u2028separator", id="U+2028"),
        pytest.param("next\u0085line", id="U+0085"),
        pytest.param("paragraph\u2029separator\x0bvt\x0cff\x1c\x1d\x1e", id="other-separators"),
        pytest.param("new\nline\r\n", id="LF"),
    ],
)
def test_lines_split_on_newline_only(log: EventLog, message: str) -> None:
    """Line separators inside strings never split an event."""
    event = make_event(0, message=message, metadata={message: [message]})
    log.append(event)
    log.append(make_event(1))
    assert EventLog(log.log_path).get_events() == [event, make_event(1)]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({}, id="all"),
        pytest.param({"event_type": EventType.TASK_STARTED}, id="type"),
        pytest.param({"event_type": ["task_started", "quantum_leap"]}, id="types"),
        pytest.param({"phase": "EXECUTION", "agent_role": "coder"}, id="phase-role"),
        pytest.param({"task_id": "task-1"}, id="task"),
        pytest.param({"start_time": T0 + timedelta(minutes=5)}, id="since"),
    ],
)
def test_uncached_queries_equal_cached_queries(log: EventLog, query: dict[str, Any]) -> None:
    """cache=False answers every query like the cached log, without holding events."""
    sample_log(log)
    log.append(make_event(12, event_type="quantum_leap"))
    with log.log_path.open("ab") as file:
        file.write(b"corrupt line\n" + encode_event(make_event(13)) + b"\n" + b'{"torn')
    cached, uncached = EventLog(log.log_path), EventLog(log.log_path, cache=False)
    assert uncached.get_events(**query) == cached.get_events(**query)
    assert [uncached.get_latest(n) for n in (0, 1, 5, 100)] == [
        cached.get_latest(n) for n in (0, 1, 5, 100)
    ]
    assert uncached.count(query.get("event_type")) == cached.count(query.get("event_type"))
    assert uncached.recovery == cached.recovery


def test_uncached_writer_sees_its_own_appends(log_path: Path) -> None:
    """An uncached writer's queries include what it appended, in every durability mode."""
    with EventLog(log_path, cache=False, durability="none") as log:
        log.append(make_event(0, event_type=EventType.ERROR))
        log.append(make_event(1))
        assert log.get_events(event_type=EventType.ERROR) == [
            make_event(0, event_type=EventType.ERROR)
        ]
        assert log.get_latest(1) == [make_event(1)]
        assert log.count(EventType.INFO) == 1


def test_reader_sees_events_another_writer_appends(log: EventLog, log_path: Path) -> None:
    """A reader's queries include what the writer appended since it was made."""
    reader = EventLog(log_path, cache=False)
    log.append(make_event(0))
    log.append(make_event(1, event_type=EventType.ERROR))
    assert reader.count(EventType.ERROR) == 1
    assert reader.get_latest(5) == [make_event(0), make_event(1, event_type=EventType.ERROR)]


def test_durability_none_writes_on_close(log_path: Path) -> None:
    """In "none" mode appends wait in this process until the log is closed."""
    log = EventLog(log_path, durability="none")
    log.append(make_event(0))
    assert EventLog(log_path).count() == 0
    log.close()
    assert EventLog(log_path).get_events() == [make_event(0)]


def test_clear_removes_every_event(log: EventLog, log_path: Path) -> None:
    """clear() empties the log for this object and for readers; appending goes on."""
    reader = EventLog(log_path)
    sample_log(log)
    assert reader.count() == 12
    log.clear()
    log.append(make_event(99))
    assert log.get_events() == [make_event(99)]
    assert reader.get_events() == [make_event(99)]


def test_missing_file_reads_as_empty_and_is_not_created(log_path: Path) -> None:
    """Constructing and querying a log that does not exist creates nothing."""
    log = EventLog(log_path)
    assert (log.count(), log.get_events(), log.get_latest()) == (0, [], [])
    assert not log_path.parent.exists()


def test_iter_log_yields_each_event_with_its_line_position(log_path: Path) -> None:
    """iter_log gives (event, offset, length) per line, skipping damage."""
    lines = [encode_event(make_event(0)), b"corrupt", b"", encode_event(make_event(1))]
    write_lines(log_path, *lines, end=b'{"torn')
    data = log_path.read_bytes()
    found = list(iter_log(log_path))
    assert [event for event, _, _ in found] == [make_event(0), make_event(1)]
    assert [data[offset : offset + length] for _, offset, length in found] == [
        lines[0] + b"\n",
        lines[3] + b"\n",
    ]


def test_iter_log_of_a_missing_file_raises_at_once(tmp_path: Path) -> None:
    """iter_log raises FileNotFoundError when called, not at the first next()."""
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        iter_log(tmp_path / "missing.jsonl")


# --- properties ----------------------------------------------------------------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
_metadata = st.dictionaries(
    st.text(),
    st.recursive(
        _json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=6,
    ),
    max_size=4,
)
_events = st.builds(
    Event,
    event_type=st.sampled_from(EventType) | st.text(min_size=1),
    session_id=st.text(),
    message=st.text(),
    timestamp=st.datetimes(timezones=st.just(UTC)),
    phase=st.none() | st.text(),
    task_id=st.none() | st.text(),
    agent_role=st.none() | st.text(),
    model=st.none() | st.text(),
    metadata=_metadata,
    parent_id=st.none() | st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=256),
)


def in_temp_log(test: Callable[[Path], None]) -> None:
    """Run ``test`` with the path of a log in a fresh temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        test(Path(directory) / "events.jsonl")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_events, max_size=8))
def test_any_events_round_trip_through_append_and_reload(events: list[Event]) -> None:
    """Whatever their strings and metadata, appended events reload equal and in order."""

    def check(path: Path) -> None:
        with EventLog(path) as log:
            for event in events:
                log.append(event)
        assert EventLog(path).get_events() == events
        assert EventLog(path, cache=False).get_events() == events

    in_temp_log(check)


@settings(max_examples=100, deadline=None)
@given(events=st.lists(_events, min_size=1, max_size=5), data=st.data())
def test_truncating_at_any_offset_keeps_a_prefix(events: list[Event], data: st.DataObject) -> None:
    """A log cut at any byte reads as a prefix of its events; the writer then appends after it."""

    def check(path: Path) -> None:
        content = encode_jsonl(events)
        cut = data.draw(st.integers(min_value=0, max_value=len(content)), label="cut")
        path.write_bytes(content[:cut])
        kept = content[:cut].count(b"\n")
        assert [event for event, _, _ in iter_log(path)] == events[:kept]
        extra = make_event(0, message="after the cut")
        with EventLog(path) as log:
            log.append(extra)
        assert EventLog(path).get_events() == [*events[:kept], extra]

    in_temp_log(check)


def test_append_refuses_what_is_not_an_event(log: EventLog) -> None:
    """Only events are appended; nothing is written otherwise."""
    with pytest.raises(TypeError, match="append takes an Event, got dict"):
        log.append({"event_type": "info"})  # type: ignore[arg-type]
    assert not log.log_path.exists()


# --- cache=False: a low-memory index over the file ----------------------------------------

_TYPES = [EventType.TASK_STARTED, EventType.ERROR, "quantum_leap", "other_new_type"]
_uncached_events = st.builds(
    make_event,
    st.integers(min_value=0, max_value=5),  # few ids: the same event is appended again
    event_type=st.sampled_from(_TYPES),
    timestamp=st.integers(min_value=0, max_value=6).map(lambda m: T0 + timedelta(minutes=m)),
    phase=st.sampled_from([None, "PLAN", "EXECUTION"]),
    task_id=st.sampled_from([None, "task-1", "task-2"]),
    agent_role=st.sampled_from([None, "coder"]),
)
_moments = st.none() | st.integers(min_value=0, max_value=6).map(
    lambda m: T0 + timedelta(minutes=m)
)
_filters = st.fixed_dictionaries(
    {},
    optional={
        "event_type": st.sampled_from(_TYPES) | st.lists(st.sampled_from(_TYPES), min_size=1),
        "phase": st.sampled_from(["PLAN", "EXECUTION"]),
        "task_id": st.sampled_from(["task-1", "task-2"]),
        "agent_role": st.just("coder"),
        "start_time": _moments,
        "end_time": _moments,
    },
)
# An operation: append an event, or clear the log (None).
_operations = st.lists(st.none() | _uncached_events, max_size=25).filter(
    lambda ops: ops.count(None) <= 2
)


def brute_force(events: list[Event], query: dict[str, Any]) -> list[Event]:
    """The events matching every filter of ``query``, in append order, by plain comparison."""
    types = query.get("event_type")
    if types is not None:
        wanted = {EventType(t) for t in ([types] if isinstance(types, str) else types)}
    start, end = query.get("start_time"), query.get("end_time")
    return [
        event
        for event in events
        if (types is None or event.event_type in wanted)
        and all(
            getattr(event, name) == query[name]
            for name in ("phase", "task_id", "agent_role")
            if query.get(name) is not None
        )
        and (start is None or event.timestamp >= start)
        and (end is None or event.timestamp <= end)
    ]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=_operations, queries=st.lists(_filters, min_size=1, max_size=4))
def test_uncached_log_answers_like_cached_log_and_brute_force(
    operations: list[Event | None], queries: list[dict[str, Any]]
) -> None:
    """cache=False (writing, reading, reloaded) equals cache=True and a filter in append order.

    Timestamps arrive out of order, the same event is appended more than once,
    types may be unknown, and the log may be cleared in between.
    """
    for query in queries:  # a start after the end is refused by every log alike
        if None not in (query.get("start_time"), query.get("end_time")):
            query["start_time"], query["end_time"] = sorted(
                (query["start_time"], query["end_time"])
            )

    def check(path: Path) -> None:
        appended: list[Event] = []
        early_reader = EventLog(path, cache=False)  # follows the appends and clears
        with EventLog(path, cache=False) as writer:
            for operation in operations:
                if operation is None:
                    writer.clear()
                    appended.clear()
                else:
                    writer.append(operation)
                    appended.append(operation)
                assert early_reader.count() == len(appended)  # reads what is new each time
            logs = {
                "writer": writer,
                "cached reader": EventLog(path),
                "uncached reader": EventLog(path, cache=False),
                "early uncached reader": early_reader,
            }
            for name, log in logs.items():
                for query in queries:
                    expected = brute_force(appended, query)
                    assert log.get_events(**query) == expected, name
                    types = query.get("event_type")
                    assert log.count(types) == len(brute_force(appended, {"event_type": types}))
                for n in (0, 1, 3, 30):
                    assert log.get_latest(n) == (appended[-n:] if n else []), name
                assert log.count() == len(appended), name

    in_temp_log(check)


def test_uncached_log_holds_no_events(tmp_path: Path) -> None:
    """cache=False keeps about 110 bytes per event (a held Event costs 600 to 900)."""
    path = tmp_path / "events.jsonl"
    n = 20_000
    events = [
        make_event(i, task_id=f"task-{i % 50}", phase="EXECUTION", agent_role="coder")
        for i in range(n)
    ]
    path.write_bytes(encode_jsonl(events))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = EventLog(path, cache=False)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert log.count() == n
    assert held / n < 200, f"{held / n:.0f} bytes per event"
    assert log.get_events(task_id="task-7") == events[7::50]


def test_uncached_log_keeps_late_and_repeated_appends_in_append_order(log_path: Path) -> None:
    """A few late or repeated events among many (inserted in the index one by one)."""
    events = [make_event(i, task_id=f"task-{i % 2}") for i in range(100)]
    late = [events[10], make_event(5, message="late", id="late", task_id="task-1"), events[99]]
    with EventLog(log_path, cache=False) as log:
        for event in [*events, *late]:
            log.append(event)
        appended = [*events, *late]
        assert log.get_events(task_id="task-1") == [e for e in appended if e.task_id == "task-1"]
        assert log.get_events(end_time=T0 + timedelta(minutes=10)) == [
            e for e in appended if e.timestamp <= T0 + timedelta(minutes=10)
        ]
        assert log.get_latest(4) == appended[-4:]
        assert log.count() == log.count(EventType.INFO) == 103
        assert EventLog(log_path).get_events() == log.get_events() == appended
