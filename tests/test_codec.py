"""Encoding and decoding: one line per event, round trips, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import (
    Event,
    EventBatch,
    EventDecodeError,
    EventEncodeError,
    EventType,
    decode_event,
    decode_events,
    encode_event,
    encode_jsonl,
    encoded_lines,
)

LINE_BREAKERS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(
    alphabet=st.characters(codec="utf-8")
    | st.sampled_from([c for c in LINE_BREAKERS if len(c) == 1])
)
optional_texts = st.none() | texts
events = st.builds(
    Event,
    event_type=st.sampled_from(list(EventType))
    | st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True),
    session_id=texts,
    message=texts,
    timestamp=st.datetimes(timezones=st.just(UTC)),
    phase=optional_texts,
    task_id=optional_texts,
    agent_role=optional_texts,
    model=optional_texts,
    metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    parent_id=st.none()
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=32),
)


@given(events)
def test_any_event_round_trips_through_one_line(event: Event) -> None:
    """Encoding then decoding gives the same event; the line has no newline byte."""
    line = encode_event(event)
    assert b"\n" not in line
    assert b"\r" not in line
    assert decode_event(line) == event


@given(st.lists(events, max_size=20))
def test_jsonl_has_one_line_per_event_split_on_newline_only(batch: list[Event]) -> None:
    """encode_jsonl gives exactly len(events) newline-terminated lines, decodable in bulk."""
    data = encode_jsonl(batch)
    assert data.count(b"\n") == len(batch)
    assert decode_events(data) == batch
    assert [decode_event(line) for line in data.split(b"\n")[:-1]] == batch


@pytest.mark.parametrize("breaker", LINE_BREAKERS)
def test_line_separators_in_strings_stay_inside_the_line(breaker: str) -> None:
    """\\n, \\r, U+2028, U+0085 ... in any string never break the JSON line."""
    event = Event(
        event_type=EventType.INFO,
        session_id=f"s{breaker}1",
        message=f"a{breaker}b",
        metadata={f"k{breaker}": [f"v{breaker}"]},
    )
    data = encode_jsonl([event, event])
    assert data.split(b"\n") == [encode_event(event), encode_event(event), b""]
    assert decode_events(data) == [event, event]


def test_unknown_event_type_decodes_and_reencodes_byte_for_byte() -> None:
    """A newer producer's line loads and is written back unchanged."""
    line = (
        b'{"event_type":"galaxy_brain","session_id":"s","message":"m",'
        b'"timestamp":"2026-01-01T00:00:00Z","phase":null,"task_id":null,'
        b'"agent_role":null,"model":null,"metadata":{"x":1},'
        b'"id":"01a2143ba4097d0c8768011600000008","parent_id":null}'
    )
    event = decode_event(line)
    assert event.event_type == "galaxy_brain"
    assert encode_event(event) == line


class Opaque:
    """Not JSON."""


@pytest.mark.parametrize(
    ("metadata", "path"),
    [
        pytest.param({"payload": Opaque()}, "metadata['payload']", id="top-level"),
        pytest.param({"a": [1, {"b": Opaque()}]}, r"metadata['a'][1]['b']", id="nested"),
        pytest.param({"when": datetime.now}, "metadata['when']", id="function"),
    ],
)
def test_unencodable_metadata_error_names_the_key(metadata: dict[str, Any], path: str) -> None:
    """The error says which value cannot be encoded and what to do."""
    event = Event(event_type=EventType.INFO, session_id="s", message="m", metadata=metadata)
    with pytest.raises(EventEncodeError, match="cannot publish event") as info:
        encode_event(event)
    assert path in str(info.value)
    assert "convert it before publishing" in str(info.value)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"{not json", "malformed", id="malformed"),
        pytest.param(b'{"event_type":"info"}', "missing required field", id="missing-field"),
        pytest.param(b'{"event_type":"","session_id":"s","message":"m"}', "enum", id="empty-type"),
        pytest.param(b"[]", "Expected `object`", id="not-an-object"),
    ],
)
def test_invalid_line_raises_decode_error_saying_where(data: bytes, match: str) -> None:
    """Bad bytes give EventDecodeError (a ValueError) with msgspec's location."""
    with pytest.raises(EventDecodeError, match=match):
        decode_event(data)


def test_decode_events_of_nothing_is_empty() -> None:
    """An empty chunk holds no events."""
    assert decode_events(b"") == []


class TestEventBatch:
    def test_carries_lines_parallel_to_events(self) -> None:
        """A batch is a sequence of events with their encoded lines."""
        evs = [Event(event_type=EventType.INFO, session_id="s", message=str(i)) for i in range(3)]
        batch = EventBatch(evs)
        assert list(batch) == evs
        assert len(batch) == 3
        assert batch[1] is evs[1]
        assert list(batch.lines) == [encode_event(e) for e in evs]
        assert list(batch[1:].lines) == [encode_event(e) for e in evs[1:]]

    def test_encoded_lines_reuses_the_batch_encoding(self) -> None:
        """Sinks that need bytes get the bus's encoding, not a second one."""
        event = Event(event_type=EventType.INFO, session_id="s", message="m")
        sentinel = b'{"precomputed":true}'
        batch = EventBatch([event], [sentinel])
        assert encoded_lines(batch) == [sentinel]
        assert encode_jsonl(batch) == sentinel + b"\n"
        assert encoded_lines([event]) == [encode_event(event)]

    def test_filter_keeps_lines_aligned(self) -> None:
        """Filtering a batch filters its lines the same way."""
        evs = [Event(event_type=EventType.INFO, session_id="s", message=str(i)) for i in range(4)]
        batch = EventBatch(evs).filter(lambda e: int(e.message) % 2 == 0)
        assert [e.message for e in batch] == ["0", "2"]
        assert [decode_event(line) for line in batch.lines] == list(batch)

    def test_mismatched_lines_are_refused(self) -> None:
        """A batch cannot pair 2 events with 1 line."""
        evs = [Event(event_type=EventType.INFO, session_id="s", message="m")] * 2
        with pytest.raises(ValueError, match="2 events but 1 encoded lines"):
            EventBatch(evs, [b"{}"])
