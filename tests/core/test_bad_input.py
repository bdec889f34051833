"""Bad input is refused at publish, whole; an index takes a batch all or nothing.

Ids, nesting and line length have limits, the same at publish and on decode.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import factories
from eventbus import (
    MAX_ID_LENGTH,
    MAX_LINE_BYTES,
    MAX_METADATA_DEPTH,
    Event,
    EventBus,
    EventDecodeError,
    EventEncodeError,
    EventQuery,
    EventType,
    MemorySink,
    decode_event,
    decode_events,
    encode_event,
)
from sinks.index import EventIndex
from sinks.jsonl import EventLog, JsonlSink

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def make(i: int = 0, **fields: Any) -> Event:
    return factories.event(
        i, **{"message": f"event {i}", "timestamp": T0 + timedelta(seconds=i), **fields}
    )


def bad_field(name: str, value: Any) -> Event:
    """An event with ``name`` set to ``value`` after construction (as a careless caller can)."""
    event = make()
    msgspec.structs.force_setattr(event, name, value)
    return event


# --- fields --------------------------------------------------------------------------------

BAD_FIELDS = [
    pytest.param(lambda: make(message=42), "message", id="message-int"),
    pytest.param(lambda: make(task_id=7), "task_id", id="task_id-int"),
    pytest.param(lambda: make(phase=["EXECUTION"]), "phase", id="phase-list"),
    pytest.param(lambda: make(session_id=b"s1"), "session_id", id="session-bytes"),
    pytest.param(lambda: make(agent_role=1.5), "agent_role", id="role-float"),
    pytest.param(lambda: make(model={"name": "m"}), "model", id="model-dict"),
    pytest.param(lambda: make(id=123), "id", id="id-int"),
    pytest.param(lambda: make(parent_id=uuid.uuid4()), "parent_id", id="parent-uuid"),
    pytest.param(lambda: make(metadata=[("a", 1)]), "metadata", id="metadata-list"),
    pytest.param(lambda: make(timestamp=time(12, tzinfo=UTC)), "timestamp", id="timestamp-time"),
    pytest.param(lambda: bad_field("timestamp", "2025-01-01"), "timestamp", id="timestamp-str"),
]


@pytest.mark.parametrize(("build", "field"), BAD_FIELDS)
def test_encode_event_refuses_a_field_of_the_wrong_type_naming_it(
    build: Callable[[], Event], field: str
) -> None:
    """encode_event (EventLog.append, publish) refuses a mistyped field, naming it."""
    with pytest.raises(EventEncodeError, match=rf"\): {field} must be") as info:
        encode_event(build())
    assert info.value.path == field
    hint = "convert it" if field == "metadata" else "give each field a value of its declared type"
    assert hint in str(info.value)


def test_event_log_append_refuses_a_mistyped_field_writing_nothing(tmp_path: Path) -> None:
    """EventLog.append of an event with a task_id of 7 raises and leaves the file empty."""
    path = tmp_path / "s1" / "events.jsonl"
    with EventLog(path) as log:
        with pytest.raises(EventEncodeError, match="task_id must be a str or None"):
            log.append(make(task_id=7))
        log.append(make(1))
    assert [event.message for event in EventLog(path).get_events()] == ["event 1"]


def test_str_enum_fields_are_accepted_and_read_back_equal() -> None:
    """A StrEnum phase (a str) publishes and reads back equal; an OrderedDict is metadata."""

    class Phase(enum.StrEnum):
        EXECUTION = "EXECUTION"

    event = make(phase=Phase.EXECUTION, metadata=OrderedDict(a=1))
    assert decode_event(encode_event(event)) == event


def test_a_datetime_subclass_timestamp_is_refused_naming_the_field() -> None:
    """msgspec cannot encode a datetime subclass: the error names timestamp."""

    class Moment(datetime):
        pass

    with pytest.raises(EventEncodeError, match="timestamp must be a datetime, got Moment"):
        encode_event(make(timestamp=Moment(2025, 1, 1, tzinfo=UTC)))


@pytest.mark.anyio
@pytest.mark.parametrize(("build", "field"), [BAD_FIELDS[i] for i in (0, 1, 2, 9)])
async def test_bus_refuses_a_mistyped_event_whole_and_a_rebuilt_index_agrees(
    tmp_path: Path, build: Callable[[], Event], field: str
) -> None:
    """The bad event is refused by publish; good ones land; from_workspace equals the live index."""
    live = EventIndex()
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        bus.subscribe(live)
        await bus.publish(make(0))
        with pytest.raises(EventEncodeError, match=rf"{field} must be"):
            await bus.publish(build())
        with pytest.raises(EventEncodeError, match=rf"{field} must be"):
            bus.publish_nowait(build())
        await bus.publish(make(2))
        await bus.flush()
    rebuilt = EventIndex.from_workspace(tmp_path)
    assert [e.message for e in live.get_events()] == ["event 0", "event 2"]
    assert rebuilt.get_events() == live.get_events()
    assert rebuilt.count() == live.count() == 2
    assert rebuilt.get_latest(5) == live.get_latest(5)


# --- metadata ------------------------------------------------------------------------------


@dataclass
class Point:
    x: int


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


class Odd(enum.Enum):
    PAIR = (1, 2)


@pytest.mark.parametrize(
    ("metadata", "path", "reason"),
    [
        pytest.param({"cost": math.nan}, "metadata['cost']", "nan", id="nan"),
        pytest.param({"a": [1, {"b": math.inf}]}, r"metadata['a'][1]['b']", "inf", id="inf-nested"),
        pytest.param({"a": {"b": -math.inf}}, "metadata['a']['b']", "-inf", id="-inf"),
        pytest.param({1: "x"}, "metadata", "the key 1 of type 'int'", id="int-key"),
        pytest.param({"a": {(1, 2): "x"}}, "metadata['a']", "the key (1, 2)", id="tuple-key"),
        pytest.param({"raw": b"\x00"}, "metadata['raw']", "'bytes'", id="bytes"),
        pytest.param({"raw": bytearray(b"x")}, "metadata['raw']", "'bytearray'", id="bytearray"),
        pytest.param({"tags": {"a", "b"}}, "metadata['tags']", "'set'", id="set"),
        pytest.param({"t": [frozenset([1])]}, "metadata['t'][0]", "'frozenset'", id="frozenset"),
        pytest.param({"p": Point(1)}, "metadata['p']", "'Point'", id="dataclass"),
        pytest.param({"d": timedelta(1)}, "metadata['d']", "'timedelta'", id="timedelta"),
        pytest.param({"e": Odd.PAIR}, "metadata['e']", "enum member", id="enum-tuple-value"),
        pytest.param({"s": "\ud800"}, "metadata['s']", "cannot be encoded", id="lone-surrogate"),
    ],
)
def test_metadata_json_cannot_hold_is_refused_naming_the_path(
    metadata: dict[Any, Any], path: str, reason: str
) -> None:
    """NaN, infinities, non-str keys, bytes, sets and other silent conversions are refused."""
    with pytest.raises(EventEncodeError, match="convert it before publishing") as info:
        encode_event(make(metadata=metadata))
    assert info.value.path == path
    assert reason in info.value.reason


def test_documented_conversions_are_accepted() -> None:
    """datetime, date, time, UUID, Decimal and enums become strings (or values), tuples lists."""
    token = uuid.UUID(int=7)
    metadata = {
        "at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "day": date(2025, 1, 2),
        "clock": time(3, 4),
        "token": token,
        "price": Decimal("1.10"),
        "colour": Colour.RED,
        "size": Size.BIG,
        "pair": (1, "a"),
        "nested": [{"ok": 1.5, "none": None, "flag": True}],
    }
    decoded = decode_event(encode_event(make(metadata=metadata))).metadata
    assert decoded == {
        "at": "2025-01-02T03:04:05Z",
        "day": "2025-01-02",
        "clock": "03:04:00",
        "token": str(token),
        "price": "1.10",
        "colour": "red",
        "size": 3,
        "pair": [1, "a"],
        "nested": [{"ok": 1.5, "none": None, "flag": True}],
    }


@pytest.mark.anyio
async def test_bus_refuses_nan_metadata_whole() -> None:
    """publish of an event with a NaN cost raises and nothing reaches the sinks."""
    index = EventIndex()
    async with EventBus() as bus:
        bus.subscribe(index)
        with pytest.raises(EventEncodeError, match=r"metadata\['cost_usd'\] is nan"):
            await bus.publish(make(metadata={"cost_usd": math.nan}))
        await bus.publish(make(1, metadata={"cost_usd": 0.5}))
        await bus.flush()
    assert [e.message for e in index.get_events()] == ["event 1"]


# --- EventIndex: all or nothing ------------------------------------------------------------


def snapshot(index: EventIndex) -> tuple[Any, ...]:
    return (
        len(index),
        index.get_events(),
        index.count(),
        index.count(session_id="s2"),
        index.get_events(phase="P", task_id="t1"),
        index.get_latest(3),
        index.usage(),
        index.usage_by("model"),
        index.duplicates,
    )


def usage_event(i: int, **fields: Any) -> Event:
    return make(
        i,
        event_type=EventType.LLM_RESPONSE_RECEIVED,
        session_id="s2",
        phase="P",
        task_id="t1",
        model=f"m{i % 2}",
        metadata={"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.25},
        **fields,
    )


def held(index: EventIndex) -> EventIndex:
    """``index`` with 40 events, usage folded (as a reader would have)."""
    index.add([usage_event(i) if i % 3 else make(i) for i in range(0, 80, 2)])
    index.usage()
    return index


LATE = [usage_event(i) for i in (3, 5)] + [usage_event(100)]  # two sort before the newest
IN_ORDER = [usage_event(i) for i in range(100, 110)]


@pytest.mark.parametrize("low_memory", [False], ids=["memory"])
@pytest.mark.parametrize("batch", [IN_ORDER, LATE], ids=["in-order", "late"])
@pytest.mark.parametrize(
    "step",
    ["sinks.index._postings.Postings.append_all", "sinks.index._usage.UsageTable.add"],
    ids=["postings", "usage"],
)
def test_a_batch_failing_part_way_leaves_the_index_as_before(
    monkeypatch: pytest.MonkeyPatch, batch: list[Event], step: str, low_memory: bool
) -> None:
    """A MemoryError in one step of indexing takes the batch back; a retry adds it once."""
    index = held(EventIndex(low_memory=low_memory))
    before = snapshot(index)
    module, cls, method = step.rsplit(".", 2)
    target = getattr(__import__(module, fromlist=[cls]), cls)
    original = getattr(target, method)

    def fail_after_doing_it(self: Any, *args: Any) -> None:
        original(self, *args)  # the step did its work: then memory ran out
        raise MemoryError("simulated: memory ran out mid-batch")

    monkeypatch.setattr(target, method, fail_after_doing_it)
    with pytest.raises(MemoryError, match="memory ran out mid-batch"):
        index.add(batch)
    monkeypatch.undo()
    assert snapshot(index) == before
    assert index.add(batch) == len(batch)
    assert index.add(batch) == 0
    assert len(index) == before[0] + len(batch)
    assert index.get_events() == sorted([*before[1], *batch], key=lambda e: (e.timestamp, e.id))
    assert index.usage().responses == before[6].responses + len(batch)


def test_an_event_that_cannot_be_indexed_leaves_the_index_as_before() -> None:
    """An unhashable phase fails the batch in the postings; nothing of the batch stays."""
    index = held(EventIndex())
    before = snapshot(index)
    with pytest.raises(TypeError, match="unhashable"):
        index.add([usage_event(200), make(201, phase=["P"]), usage_event(202)])
    assert snapshot(index) == before
    assert index.add([usage_event(200), usage_event(202)]) == 2
    assert index.count(session_id="s2") == before[3] + 2


@pytest.mark.anyio
async def test_index_write_of_a_failing_batch_is_retried_and_lands_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the bus: the first write fails in the postings, the retry indexes each event once."""
    from eventbus import RetryPolicy
    from sinks.index._postings import Postings

    original = Postings.append_all
    calls = {"n": 0}

    def fail_once(self: Postings, *args: Any) -> None:
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError

    monkeypatch.setattr(Postings, "append_all", fail_once)
    index = EventIndex()
    async with EventBus(retry=RetryPolicy(retries=1, initial_delay=0)) as bus:
        bus.subscribe(index)
        for i in range(5):
            await bus.publish(usage_event(i))
        await bus.flush()
    assert len(index) == index.count() == len(index.get_events()) == 5
    assert index.usage().responses == 5
    assert index.count_query(EventQuery(session_id="s2")) == 5


# --- ids: no control characters, at most MAX_ID_LENGTH characters ---------------------------

FORGED_SSE_ID = "x1\nevent: gap\ndata: {}"
BAD_IDS = [
    pytest.param(FORGED_SSE_ID, "control character '\\\\n'", id="forged-sse-fields"),
    pytest.param("x1\r", "control character '\\\\r'", id="carriage-return"),
    pytest.param("x\x00", "control character '\\\\x00'", id="nul"),
    pytest.param("x\x85", "control character '\\\\x85'", id="c1-next-line"),
    pytest.param("x" * (MAX_ID_LENGTH + 1), "257 characters long", id="over-long"),
]


@pytest.mark.parametrize("field", ["id", "parent_id"])
@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_an_id_with_a_control_character_or_over_long_is_refused_naming_the_field(
    field: str, value: str, reason: str
) -> None:
    """encode_event refuses the id (or parent id) and says which field and why."""
    with pytest.raises(EventEncodeError, match=rf"\): {field} .*{reason}") as info:
        encode_event(msgspec.structs.replace(make(), **{field: value}))
    assert info.value.path == field
    assert "\n" not in str(info.value)  # the message shows the forged id escaped


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["id", "parent_id"])
async def test_bus_refuses_a_forged_sse_id_and_nothing_is_written(
    tmp_path: Path, field: str
) -> None:
    """Publishing an event whose id could forge SSE fields raises; the log stays without it."""
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        with pytest.raises(EventEncodeError, match=rf"{field} holds the control character"):
            await bus.publish(msgspec.structs.replace(make(), **{field: FORGED_SSE_ID}))
        with pytest.raises(EventEncodeError, match=rf"{field} holds the control character"):
            bus.publish_nowait(msgspec.structs.replace(make(), **{field: FORGED_SSE_ID}))
        await bus.publish(make(1))
    assert [event.message for event in EventLog(tmp_path / "s1" / "events.jsonl").get_events()] == [
        "event 1"
    ]


def test_ids_of_max_length_and_any_printable_text_are_accepted() -> None:
    """The limit is inclusive, and an id may hold spaces and non-ASCII letters."""
    for value in ["x" * MAX_ID_LENGTH, "task 1: résumé ✓", "a-b_c.d/e"]:
        event = make(id=value, parent_id=value)
        assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("field", ["id", "parent_id"])
@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_a_stored_line_with_a_bad_id_does_not_decode(field: str, value: str, reason: str) -> None:
    """A line (or dict) written by someone else with such an id is invalid, naming the field."""
    with pytest.raises(EventDecodeError, match=rf"`\$\.{field}`"):
        Event.from_dict({**make().to_dict(), field: value})
    line = msgspec.json.encode({**make().to_dict(), field: value})
    with pytest.raises(EventDecodeError, match=rf"`\$\.{field}`"):
        decode_event(line)
    with pytest.raises(EventDecodeError, match=rf"`\$(\[1\])?\.{field}`"):
        decode_events(encode_event(make()) + b"\n" + line + b"\n")


@given(st.text(max_size=300), st.sampled_from(["id", "parent_id"]))
def test_any_id_round_trips_or_is_refused_at_publish(value: str, field: str) -> None:
    """Never written then refused on read: an id either comes back equal or is never written."""
    event = msgspec.structs.replace(make(), **{field: value})
    try:
        line = encode_event(event)
    except EventEncodeError:
        return
    assert decode_event(line) == event
    assert decode_events(line + b"\n") == [event]


# --- deep nesting ----------------------------------------------------------------------------


def nested(depth: int) -> Any:
    """``depth`` lists, one inside the other (so ``{"a": nested(n)}`` is n + 1 deep)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_metadata_at_the_depth_limit_round_trips() -> None:
    """metadata, itself included, may nest MAX_METADATA_DEPTH dicts and lists."""
    event = make(metadata={"a": nested(MAX_METADATA_DEPTH - 1)})
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH, 2000, 10_000])
def test_metadata_deeper_than_the_limit_is_refused_naming_the_limit(depth: int) -> None:
    """No RecursionError: an EventEncodeError that names the limit and the path."""
    with pytest.raises(EventEncodeError, match=r"metadata\['a'\]\[0\].*\(MAX_METADATA_DEPTH\)"):
        encode_event(make(metadata={"a": nested(depth)}))


@pytest.mark.anyio
async def test_bus_refuses_deep_metadata_whole() -> None:
    """Publishing metadata nested 2,000 levels raises EventEncodeError; the bus goes on."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        with pytest.raises(EventEncodeError, match="MAX_METADATA_DEPTH"):
            await bus.publish(make(metadata={"a": nested(2000)}))
        await bus.publish(make(1))
    assert [event.message for event in sink.events] == ["event 1"]


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_a_line_nested_too_deep_to_decode_is_an_event_decode_error(depth: int) -> None:
    """A stored line nested deeper than Python recurses is invalid, not a RecursionError."""
    line = encode_event(make())[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(EventDecodeError, match="nested too deep"):
        decode_event(line)
    with pytest.raises(EventDecodeError, match="nested too deep"):
        decode_events(line + b"\n")


# --- the longest line ------------------------------------------------------------------------


def test_an_event_encoding_over_max_line_bytes_is_refused() -> None:
    """What readers would skip as corrupt is never written: refused, naming the limit."""
    with pytest.raises(
        EventEncodeError, match=r"the encoded event is \d+ bytes long.*MAX_LINE_BYTES"
    ):
        encode_event(make(message="x" * MAX_LINE_BYTES))


def test_a_line_over_max_line_bytes_does_not_decode() -> None:
    """decode_event refuses a line longer than MAX_LINE_BYTES before parsing it."""
    with pytest.raises(EventDecodeError, match="MAX_LINE_BYTES"):
        decode_event(b" " * (MAX_LINE_BYTES + 1))
