"""EventQuery: the one filter type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import Event, EventQuery, EventType
from factories import event as make

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_empty_query_matches_everything() -> None:
    """EventQuery() is 'any event'."""
    assert EventQuery().matches(make())
    assert EventQuery().is_empty


@pytest.mark.parametrize(
    ("query", "event", "expected"),
    [
        pytest.param(EventQuery(event_type=EventType.INFO), make(), True, id="type-one"),
        pytest.param(EventQuery(event_type="error"), make(), False, id="type-str"),
        pytest.param(
            EventQuery(event_type=[EventType.ERROR, "info"]), make(), True, id="type-several"
        ),
        pytest.param(EventQuery(session_id="s1"), make(), True, id="session"),
        pytest.param(EventQuery(session_id="s2"), make(), False, id="other-session"),
        pytest.param(EventQuery(phase="PLAN"), make(phase="PLAN"), True, id="phase"),
        pytest.param(EventQuery(task_id="t1"), make(task_id="t2"), False, id="task"),
        pytest.param(EventQuery(agent_role="coder"), make(agent_role="coder"), True, id="role"),
        pytest.param(EventQuery(model="m1"), make(model=None), False, id="model-none"),
        pytest.param(
            EventQuery(event_type="info", session_id="s1", task_id="t1"),
            make(task_id="t1"),
            True,
            id="conjunction",
        ),
    ],
)
def test_conditions(query: EventQuery, event: Event, expected: bool) -> None:
    """Each field condition, alone and together."""
    assert query.matches(event) is expected


def test_time_bounds_are_inclusive_and_naive_means_utc() -> None:
    """start_time <= timestamp <= end_time; naive bounds are UTC."""
    event = make(timestamp=T0)
    naive = T0.replace(tzinfo=None)
    assert EventQuery(start_time=naive, end_time=naive).matches(event)
    assert not EventQuery(start_time=T0 + timedelta(microseconds=1)).matches(event)
    assert not EventQuery(end_time=T0 - timedelta(microseconds=1)).matches(event)


def test_unknown_type_can_be_queried() -> None:
    """A type this version does not know is still a valid filter."""
    event = make(event_type="from_the_future")
    assert EventQuery(event_type="from_the_future").matches(event)
    assert not EventQuery(event_type="info").matches(event)


def test_queries_are_immutable_hashable_values() -> None:
    """Equal conditions make equal queries; they can key a dict."""
    a = EventQuery(event_type=["info", "error"], session_id="s")
    b = EventQuery(session_id="s", event_type=("error", EventType.INFO))
    assert a == b
    assert {a: 1}[b] == 1
    with pytest.raises(AttributeError, match="immutable"):
        a.session_id = "x"
    assert "session_id='s'" in repr(a)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"event_type": []}, ValueError, "empty collection", id="no-types"),
        pytest.param({"event_type": [3]}, TypeError, "non-empty strings", id="bad-type"),
        pytest.param({"session_id": 5}, TypeError, "session_id must be a str", id="bad-session"),
        pytest.param({"start_time": "today"}, TypeError, "start_time must be a datetime", id="t"),
        pytest.param(
            {"start_time": T0, "end_time": T0 - timedelta(1)}, ValueError, "is after", id="range"
        ),
    ],
)
def test_bad_conditions_are_refused(kwargs: dict[str, object], error: type, match: str) -> None:
    """Mistakes are caught when the query is built, not silently matched."""
    with pytest.raises(error, match=match):
        EventQuery(**kwargs)  # type: ignore[arg-type]


@given(
    st.lists(
        st.builds(
            make,
            event_type=st.sampled_from(["info", "error", "task_started"]),
            session_id=st.sampled_from(["a", "b"]),
            task_id=st.sampled_from([None, "t1", "t2"]),
            timestamp=st.datetimes(
                min_value=datetime(2026, 1, 1),
                max_value=datetime(2026, 1, 2),
                timezones=st.just(UTC),
            ),
        ),
        max_size=30,
    ),
    st.sampled_from([None, "info", "error"]),
    st.sampled_from([None, "a", "b"]),
    st.sampled_from([None, "t1", "t2"]),
)
def test_filter_equals_a_plain_predicate(
    events: list[Event], event_type: str | None, session: str | None, task: str | None
) -> None:
    """filter() keeps exactly the events a hand-written predicate keeps, in order."""
    query = EventQuery(event_type=event_type, session_id=session, task_id=task)
    expected = [
        e
        for e in events
        if (event_type is None or e.event_type == event_type)
        and (session is None or e.session_id == session)
        and (task is None or e.task_id == task)
    ]
    assert query.filter(events) == expected
