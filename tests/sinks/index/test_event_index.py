"""EventIndex: filters, time order, paging, usage, eviction, low-memory mode and rebuilds."""

from __future__ import annotations

import tempfile
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, cast
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import factories
import sinks.index
import sinks.index._chunks
import sinks.index._index
import sinks.index._memory
import sinks.index._order
import sinks.index._postings
import sinks.index._usage
from eventbus import (
    Event,
    EventBus,
    EventQuery,
    EventType,
    create_llm_request_event,
    create_llm_response_event,
    encode_jsonl,
)
from factories import at
from sinks.index import (
    EventIndex,
    EventIndexError,
    IndexArgumentError,
    LocationRequiredError,
    StaleLogError,
    TokenUsage,
    UnknownEventIdError,
    UsageField,
)
from sinks.jsonl import JsonlSink

pytestmark = pytest.mark.anyio

CUSTOM = EventType("custom_kind")  # a type this version does not know


def make(
    event_type: EventType = EventType.INFO,
    seconds: float = 0,
    session_id: str = "s1",
    **fields: Any,
) -> Event:
    """An event ``seconds`` after T0; ``fields`` set the rest."""
    message = f"{event_type.value} at {seconds}"
    return factories.event(0, session_id, event_type, seconds=seconds, message=message, **fields)


def response(
    seconds: float,
    *,
    session_id: str = "s1",
    model: str = "m1",
    role: str = "coder",
    task_id: str | None = "t1",
    prompt: int = 10,
    completion: int = 20,
    cost: float = 0.5,
) -> Event:
    """An ``llm_response_received`` event with usage, ``seconds`` after T0."""
    event = create_llm_response_event(
        session_id, model, role, prompt, completion, task_id, cached_tokens=1, cost_usd=cost
    )
    return Event(**{**event.to_dict(), "timestamp": at(seconds), "id": event.id})


def in_time_order(events: Iterable[Event]) -> list[Event]:
    """Each event once (the first with its id), by (timestamp, id): the index's order."""
    unique = list({event.id: event for event in reversed(list(events))}.values())
    return sorted(unique, key=lambda e: (e.timestamp, e.id))


class LogWriter:
    """Appends batches to ``{root}/{session}/events.jsonl`` and tells ``index`` where."""

    def __init__(self, root: Path, index: EventIndex) -> None:
        self.root = root
        self.index = index

    def write(self, batch: Sequence[Event]) -> None:
        by_session: dict[str, list[Event]] = {}
        for event in batch:
            by_session.setdefault(event.session_id, []).append(event)
        for session_id, events in by_session.items():
            path = self.root / session_id / "events.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [encode_jsonl([event]) for event in events]
            with path.open("ab") as file:
                offset = file.tell()
                file.write(b"".join(lines))
            offsets = []
            for line in lines:
                offsets.append(offset)
                offset += len(line)
            self.index.add_located(events, path, offsets, [len(line) for line in lines])


def located_index(root: Path, events: Sequence[Event], **options: Any) -> EventIndex:
    """A low-memory index of ``events``, written to logs under ``root``."""
    index = EventIndex(low_memory=True, **options)
    LogWriter(root, index).write(events)
    return index


def brute_usage(events: Iterable[Event]) -> TokenUsage:
    """Usage summed by hand from the responses' metadata."""
    responses = [e for e in events if e.event_type == EventType.LLM_RESPONSE_RECEIVED]
    return TokenUsage(
        responses=len(responses),
        prompt_tokens=sum(e.metadata.get("prompt_tokens", 0) for e in responses),
        completion_tokens=sum(e.metadata.get("completion_tokens", 0) for e in responses),
        total_tokens=sum(e.metadata.get("total_tokens", 0) for e in responses),
        cached_tokens=sum(e.metadata.get("cached_tokens", 0) for e in responses),
        cost_usd=sum(e.metadata.get("cost_usd", 0.0) for e in responses),
    )


def assert_usage_equal(actual: TokenUsage, expected: TokenUsage) -> None:
    assert actual.cost_usd == pytest.approx(expected.cost_usd, abs=1e-9)
    assert msgspec_replace_cost(actual) == msgspec_replace_cost(expected)


def msgspec_replace_cost(usage: TokenUsage) -> tuple[int, ...]:
    return (
        usage.responses,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cached_tokens,
    )


# --- the property: live, rebuilt and brute force answer alike ---------------------------

TYPES = [
    EventType.TASK_STARTED,
    EventType.TASK_COMPLETED,
    EventType.LLM_REQUEST_SENT,
    EventType.LLM_RESPONSE_RECEIVED,
    EventType.INFO,
    CUSTOM,
]
SESSIONS = ["s1", "s2", "s3"]
USAGE_FIELDS: tuple[UsageField, ...] = ("session_id", "model", "agent_role", "task_id")


def maybe(*values: str) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(values))


@st.composite
def events_strategy(draw: st.DrawFn) -> Event:
    event_type = draw(st.sampled_from(TYPES))
    metadata: dict[str, Any] = {}
    if event_type in (EventType.LLM_RESPONSE_RECEIVED, EventType.LLM_REQUEST_SENT):
        prompt = draw(st.integers(0, 1000))
        completion = draw(st.integers(0, 1000))
        metadata = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": draw(st.integers(0, 50)),
            "cost_usd": draw(st.floats(0, 2, allow_nan=False)),
        }
    return Event(
        event_type=event_type,
        session_id=draw(st.sampled_from(SESSIONS)),
        message="m",
        # coarse times: many events share a timestamp
        timestamp=at(draw(st.integers(0, 12))) + timedelta(microseconds=draw(st.integers(0, 1))),
        phase=draw(maybe("PLAN", "EXECUTION")),
        task_id=draw(maybe("t1", "t2", "t3")),
        agent_role=draw(maybe("coder", "reviewer")),
        model=draw(maybe("m1", "m2")),
        metadata=metadata,
    )


@st.composite
def queries(draw: st.DrawFn) -> EventQuery:
    times = sorted(draw(st.lists(st.integers(0, 12).map(at), min_size=2, max_size=2)))
    return EventQuery(
        event_type=draw(st.one_of(st.none(), st.lists(st.sampled_from(TYPES), min_size=1))),
        session_id=draw(st.one_of(st.none(), st.sampled_from([*SESSIONS, "nope"]))),
        phase=draw(maybe("PLAN", "EXECUTION")),
        task_id=draw(maybe("t1", "t2", "t3")),
        agent_role=draw(maybe("coder", "reviewer")),
        model=draw(maybe("m1", "m2")),
        start_time=draw(st.one_of(st.none(), st.just(times[0]))),
        end_time=draw(st.one_of(st.none(), st.just(times[1]))),
    )


@st.composite
def arrivals(draw: st.DrawFn) -> list[list[Event]]:
    """Events in batches, arriving in any order (of time and of id), some of them twice."""
    events = draw(st.lists(events_strategy(), max_size=60).flatmap(st.permutations))
    redeliver = draw(st.booleans())
    if events and redeliver:
        events += draw(st.lists(st.sampled_from(events), max_size=5))
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    bounds = [0, *cuts, len(events)]
    return [events[a:b] for a, b in pairwise(bounds) if b > a]


@settings(max_examples=150, deadline=None)
@given(
    batches=arrivals(),
    checks=st.lists(queries(), min_size=1, max_size=4),
    cap=st.one_of(st.none(), st.integers(1, 40)),
    page=st.integers(1, 7),
    insert_ratio=st.sampled_from([1, 32, 10**9]),
    compact_at=st.sampled_from([1, 4096]),
    chunk_size=st.sampled_from([2, 2048]),
    few=st.sampled_from([0, 2, 32]),
    window=st.sampled_from([1, 3, 8192]),
)
def test_live_rebuilt_and_brute_force_answer_alike(
    batches: list[list[Event]],
    checks: list[EventQuery],
    cap: int | None,
    page: int,
    insert_ratio: int,
    compact_at: int,
    chunk_size: int,
    few: int,
    window: int,
) -> None:
    """Live and rebuilt indexes, in both modes, equal a brute-force filter of the events.

    The thresholds between inserting late events and re-sorting, of
    compaction, the size of the time order's chunks, up to which batch
    size events are indexed one by one, and how many of the newest events a
    memory-mode index keeps as given (the rest encoded; with a cache of 2)
    vary too, so every path runs on small inputs.
    """
    every = [event for batch in batches for event in batch]
    held = in_time_order(every)
    if cap is not None:
        held = held[-cap:]
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(sinks.index._order, "_INSERT_RATIO", insert_ratio),
        mock.patch.object(sinks.index._index, "_MIN_COMPACTION", compact_at),
        mock.patch.object(sinks.index._chunks, "_CHUNK", chunk_size),
        mock.patch.object(sinks.index._index, "FEW", few),
        mock.patch.object(sinks.index._postings, "FEW", few),
        mock.patch.object(sinks.index._usage, "_FEW", few),
        mock.patch.object(sinks.index._memory, "WINDOW", window),
        mock.patch.object(sinks.index._memory, "CACHE", 2),
    ):
        root = Path(tmp)
        live = EventIndex(max_events=cap)
        low = EventIndex(low_memory=True, max_events=cap)
        writer = LogWriter(root, low)
        for batch in batches:
            live.add(batch)
            writer.write(batch)
        indexes = {
            "live": live,
            "live low-memory": low,
            "rebuilt": EventIndex.from_workspace(root, max_events=cap),
            "rebuilt low-memory": EventIndex.from_workspace(root, low_memory=True, max_events=cap),
        }
        for name, index in indexes.items():
            assert len(index) == len(held), name
            evicted = len({e.id for e in every}) - len(held)
            if len(every) == len({e.id for e in every}):
                assert index.evicted == evicted, name
            else:  # an evicted event delivered again is evicted again
                assert index.evicted >= evicted, name
            assert index.get_latest(page) == held[-page:], name
            assert_usage_equal(index.usage(), brute_usage(held))
            for field in USAGE_FIELDS:
                groups: dict[str | None, list[Event]] = {}
                for event in held:
                    if event.event_type == EventType.LLM_RESPONSE_RECEIVED:
                        groups.setdefault(getattr(event, field), []).append(event)
                by = index.usage_by(field)
                assert set(by) == set(groups), (name, field)
                for value, members in groups.items():
                    assert_usage_equal(by[value], brute_usage(members))
            for query in checks:
                expected = query.filter(held)
                assert index.query(query) == expected, (name, query)
                assert index.count_query(query) == len(expected), (name, query)
                assert index.get_latest(page, query) == expected[-page:], (name, query)
                pages: list[Event] = []
                after: str | None = None
                while chunk := index.query(query, limit=page, after=after):
                    pages += chunk
                    after = chunk[-1].id
                assert pages == expected, (name, query)
                assert_usage_equal(index.usage(query), brute_usage(expected))
            index.close()


# --- filters --------------------------------------------------------------------------


@pytest.fixture
def index() -> EventIndex:
    """An index of a few events of two sessions, added out of time order."""
    built = EventIndex()
    built.add(
        [
            make(EventType.TASK_STARTED, 3, task_id="t1", phase="EXECUTION", agent_role="coder"),
            make(EventType.PHASE_TRANSITION, 1, phase="PLAN_REVIEW"),
            make(EventType.LLM_REQUEST_SENT, 4, task_id="t1", agent_role="coder", model="m1"),
            make(EventType.TASK_STARTED, 2, session_id="s2", task_id="t9", phase="EXECUTION"),
            make(EventType.TASK_COMPLETED, 5, task_id="t1", phase="EXECUTION"),
        ]
    )
    return built


def test_get_events_by_type_takes_one_type_or_a_list(index: EventIndex) -> None:
    """``event_type`` is one type or a list of types, like the seed's."""
    started = index.get_events(event_type=EventType.TASK_STARTED)
    assert [e.timestamp for e in started] == [at(2), at(3)]
    either = index.get_events(event_type=[EventType.TASK_STARTED, EventType.TASK_COMPLETED])
    assert [e.timestamp for e in either] == [at(2), at(3), at(5)]


@pytest.mark.parametrize(
    ("field", "value", "seconds"),
    [
        pytest.param("phase", "EXECUTION", [2, 3, 5], id="phase"),
        pytest.param("task_id", "t1", [3, 4, 5], id="task"),
        pytest.param("agent_role", "coder", [3, 4], id="agent_role"),
        pytest.param("session_id", "s2", [2], id="session"),
        pytest.param("model", "m1", [4], id="model"),
    ],
)
def test_get_events_filters_by_each_field(
    index: EventIndex, field: str, value: str, seconds: list[int]
) -> None:
    """Each of the seed's filters, plus session and model, selects exactly its events."""
    found = index.get_events(**cast(dict[str, Any], {field: value}))
    assert [e.timestamp for e in found] == [at(s) for s in seconds]
    assert all(getattr(e, field) == value for e in found)


def test_get_events_by_time_range_is_inclusive_and_naive_means_utc(index: EventIndex) -> None:
    """Both bounds are inclusive; naive datetimes are taken as UTC."""
    naive = at(2).replace(tzinfo=None)
    found = index.get_events(start_time=naive, end_time=at(4))
    assert [e.timestamp for e in found] == [at(2), at(3), at(4)]


def test_filters_combine_and_unknown_values_match_nothing(index: EventIndex) -> None:
    """Filters are a conjunction; a value no event holds gives an empty answer."""
    assert len(index.get_events(event_type=EventType.TASK_STARTED, session_id="s1")) == 1
    assert index.get_events(task_id="t1", end_time=at(3.5))[0].timestamp == at(3)
    assert index.get_events(task_id="nope") == []
    assert index.get_events(event_type=CUSTOM) == []


def test_results_are_in_time_order_when_events_arrive_late() -> None:
    """An event that arrives after newer ones takes its place in time, one by one or in bulk."""
    index = EventIndex()
    index.add([make(seconds=s) for s in range(100, 200)])
    index.add([make(seconds=50)])  # inserted in place
    index.add([make(seconds=s) for s in range(0, 100, 2)])  # many late ones: sorted in bulk
    times = [e.timestamp for e in index.get_events()]
    assert times == sorted(times)
    assert len(times) == 151
    assert index.get_latest(1)[0].timestamp == at(199)


def test_events_with_equal_timestamps_are_ordered_by_id() -> None:
    """Ties in time are broken by id (creation order), whatever the arrival order."""
    first, second, third = (make(seconds=1) for _ in range(3))
    index = EventIndex()
    index.add([third])
    index.add([first, make(seconds=2)])
    index.add([second])
    assert index.get_events(end_time=at(1)) == [first, second, third]


@pytest.mark.parametrize("low_memory", [False, True], ids=["memory", "low-memory"])
def test_a_late_event_tying_with_held_ones_is_placed_by_id(
    tmp_path: Path, low_memory: bool
) -> None:
    """A late event with the timestamp of held ones goes among them by id, in every posting."""
    early = make(EventType.TASK_STARTED, 50, task_id="t1")  # made first: the smallest id
    held = [make(EventType.TASK_STARTED, s // 2, task_id="t1") for s in range(200)]
    index = EventIndex(low_memory=low_memory)
    add: Callable[[Sequence[Event]], object] = (
        LogWriter(tmp_path, index).write if low_memory else index.add
    )
    add(held)
    add([early])
    expected = in_time_order([*held, early])
    assert expected.index(early) == 100  # before the two held events of 50 s
    assert index.get_events() == expected
    assert index.get_events(task_id="t1", event_type=EventType.TASK_STARTED) == expected


def test_get_latest_returns_the_last_n_oldest_first(index: EventIndex) -> None:
    """The seed's ``get_latest``: the last n events, in order; n=0 gives none."""
    assert [e.timestamp for e in index.get_latest(2)] == [at(4), at(5)]
    assert len(index.get_latest()) == 5
    assert index.get_latest(0) == []


def test_get_latest_with_a_query_returns_the_last_n_matching(index: EventIndex) -> None:
    """``get_latest(n, query)`` is the last n events that match."""
    latest = index.get_latest(2, EventQuery(session_id="s1", phase="EXECUTION"))
    assert [e.timestamp for e in latest] == [at(3), at(5)]


def test_count_matches_get_events_for_the_same_filters(index: EventIndex) -> None:
    """``count`` takes ``get_events``'s filters (the seed's first one positionally)."""
    assert index.count() == 5
    assert index.count(EventType.TASK_STARTED) == 2
    assert index.count(task_id="t1", agent_role="coder") == 2
    assert index.count(start_time=at(4)) == len(index.get_events(start_time=at(4)))
    assert index.count(session_id="nope") == 0


# --- paging ---------------------------------------------------------------------------


def test_query_pages_concatenate_to_the_full_answer() -> None:
    """``limit`` and ``after`` page through the answer in time order, without gaps."""
    index = EventIndex()
    index.add([make(seconds=s % 7, task_id=f"t{s % 2}") for s in range(50)])
    query = EventQuery(task_id="t1")
    pages: list[Event] = []
    page = index.query(query, limit=4)
    while page:
        pages += page
        page = index.query(query, limit=4, after=page[-1].id)
    assert pages == index.query(query)
    assert len(pages) == 25


def test_query_after_an_event_pages_past_an_evicted_event() -> None:
    """``after`` may be the Event itself, which works even once it is evicted."""
    events = [make(seconds=s) for s in range(10)]
    index = EventIndex(max_events=5)
    index.add(events)
    assert index.query(EventQuery(), after=events[2], limit=2) == events[5:7]
    assert index.query(EventQuery(), after=events[6]) == events[7:]


def test_query_after_an_unknown_id_raises(index: EventIndex) -> None:
    """An ``after`` id the index does not hold is an error naming it."""
    with pytest.raises(UnknownEventIdError, match="after='missing': no event with this id"):
        index.query(EventQuery(), after="missing")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda i: i.query(EventQuery(), limit=-1), "limit=-1 is invalid", id="limit"),
        pytest.param(lambda i: i.get_latest(-3), "n=-3 is invalid", id="latest"),
        pytest.param(lambda i: i.usage_by("phase"), "field='phase' is invalid", id="usage_by"),
        pytest.param(lambda i: i.query("s1"), "query must be an EventQuery", id="query"),
        pytest.param(lambda i: i.usage("s1"), "query must be an EventQuery", id="usage"),
        pytest.param(
            lambda i: i.usage(EventQuery(), model="m1"),
            r"give an EventQuery or keyword filters \(model\), not both",
            id="usage-both",
        ),
        pytest.param(
            lambda i: i.query(EventQuery(), after=3), "after must be an event id", id="after"
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(index: EventIndex, call: Any, message: str) -> None:
    """Out-of-range or mistyped arguments raise, saying which and why."""
    with pytest.raises((IndexArgumentError, TypeError), match=message):
        call(index)


def test_bad_construction_and_input_raise_clear_errors(tmp_path: Path) -> None:
    """A non-positive cap, a non-event, and mismatched locations are refused."""
    with pytest.raises(IndexArgumentError, match="max_events=0 is invalid"):
        EventIndex(max_events=0)
    with pytest.raises(TypeError, match="EventIndex indexes Event objects, got dict"):
        EventIndex().add([{"event_type": "info"}])  # type: ignore[list-item]
    with pytest.raises(IndexArgumentError, match="give one offset and one length per event"):
        EventIndex(low_memory=True).add_located([make()], tmp_path / "x", [0, 10], [10])


# --- duplicates and eviction ------------------------------------------------------------


def test_an_event_seen_twice_is_indexed_once() -> None:
    """A re-delivered batch (the bus retries) is harmless: duplicates are counted, not kept."""
    events = [make(seconds=s) for s in range(3)]
    index = EventIndex()
    assert index.add(events) == 3
    assert index.add([events[1], events[1], make(seconds=9)]) == 1
    assert index.duplicates == 2
    assert len(index) == 4
    assert index.get_events() == [*events, index.get_latest(1)[0]]


async def test_an_empty_batch_adds_nothing() -> None:
    """An empty batch, before or after events, leaves the index as it was."""
    index = EventIndex()
    assert index.add([]) == 0
    await index.write([])
    assert index.add([make(seconds=1)]) == 1
    await index.write([])
    assert index.add([]) == 0
    assert len(index) == 1


def test_max_events_evicts_the_oldest_and_counts_them() -> None:
    """With ``max_events`` the oldest events (in time) go first, counted in ``evicted``."""
    index = EventIndex(max_events=3)
    index.add([make(seconds=s) for s in (5, 1, 4, 2)])
    assert [e.timestamp for e in index.get_events()] == [at(2), at(4), at(5)]
    index.add([make(seconds=0)])  # older than everything held: evicted at once
    assert [e.timestamp for e in index.get_events()] == [at(2), at(4), at(5)]
    assert index.evicted == 2
    assert index.count() == 3


def test_long_run_with_a_cap_compacts_and_keeps_answering() -> None:
    """Far more events than the cap, some late: memory is reclaimed, answers stay right."""
    index = EventIndex(max_events=1000)
    events = []
    for batch in range(12):
        chunk = [
            make(seconds=batch * 1000 + s, session_id=f"s{s % 3}", task_id=f"t{s % 50}")
            for s in range(1000)
        ]
        chunk[10] = make(seconds=batch * 1000 - 500, session_id="s0", task_id="late")
        events += chunk
        index.add(chunk)
    held = in_time_order(events)[-1000:]
    assert index.get_events() == held
    assert index.get_events(session_id="s1", task_id="t1") == [
        e for e in held if e.session_id == "s1" and e.task_id == "t1"
    ]
    # Type + session: the (session, type) postings, replaced by each compaction.
    assert index.get_events(event_type=EventType.INFO, session_id="s2") == [
        e for e in held if e.session_id == "s2"
    ]
    assert index.count(EventType.INFO, session_id="s0") == sum(e.session_id == "s0" for e in held)
    assert index.evicted == 11_000
    assert len(index._time.ts) < 3000  # evicted rows were compacted away


# --- token usage ----------------------------------------------------------------------


def test_usage_counts_responses_not_requests() -> None:
    """A request's prompt tokens are repeated by its response, so only responses count."""
    index = EventIndex()
    index.add([create_llm_request_event("s1", "m1", "coder", 100), response(1, prompt=100)])
    assert index.usage() == TokenUsage(
        responses=1,
        prompt_tokens=100,
        completion_tokens=20,
        total_tokens=120,
        cached_tokens=1,
        cost_usd=0.5,
    )


def test_usage_by_groups_by_session_model_role_and_task() -> None:
    """Totals per session, model, agent role and task; responses without one under None."""
    index = EventIndex()
    index.add(
        [
            response(1, session_id="s1", model="m1", task_id="t1"),
            response(2, session_id="s2", model="m1", task_id=None, role="reviewer"),
            response(3, session_id="s2", model="m2", task_id="t1", cost=0.25),
        ]
    )
    assert {k: v.responses for k, v in index.usage_by("session_id").items()} == {"s1": 1, "s2": 2}
    assert index.usage_by("model")["m2"].cost_usd == 0.25
    assert index.usage_by("agent_role")["reviewer"].prompt_tokens == 10
    assert {k: v.responses for k, v in index.usage_by("task_id").items()} == {"t1": 2, None: 1}
    assert index.usage(EventQuery(model="m1")).total_tokens == 60
    assert index.usage(model="m1") == index.usage(EventQuery(model="m1"))
    assert index.usage_by("model", EventQuery(session_id="s2"))["m1"].responses == 1
    assert index.usage_by("model", session_id="s2", agent_role="reviewer") == {
        "m1": index.usage(session_id="s2", model="m1")
    }


def test_usage_over_a_time_range() -> None:
    """``usage(EventQuery(start_time=..., end_time=...))`` totals the responses in the range."""
    index = EventIndex()
    index.add([response(s, cost=0.1) for s in range(10)])
    usage = index.usage(EventQuery(start_time=at(3), end_time=at(5)))
    assert usage.responses == 3
    assert usage.cost_usd == pytest.approx(0.3)
    assert index.usage(EventQuery(event_type=EventType.INFO)) == TokenUsage()


def test_usage_ignores_invalid_values_and_fills_in_the_total() -> None:
    """Non-integer tokens and non-finite costs count as zero; a missing total is the sum."""
    index = EventIndex()
    index.add(
        [
            make(
                EventType.LLM_RESPONSE_RECEIVED,
                metadata={"prompt_tokens": 5, "completion_tokens": "7", "cost_usd": float("inf")},
            ),
            make(EventType.LLM_RESPONSE_RECEIVED, metadata={"prompt_tokens": True, "cost_usd": 2}),
        ]
    )
    assert index.usage() == TokenUsage(responses=2, prompt_tokens=5, total_tokens=5, cost_usd=2.0)


def test_usage_forgets_evicted_responses() -> None:
    """Aggregates cover the events held: evicted responses are subtracted."""
    index = EventIndex(max_events=2)
    index.add([response(1, session_id="a"), response(2), response(3)])
    assert index.usage().responses == 2
    assert "a" not in index.usage_by("session_id")


def test_token_usage_is_frozen() -> None:
    """Usage results are immutable records."""
    with pytest.raises(AttributeError, match="immutable type"):
        TokenUsage().responses = 3  # type: ignore[misc]


# --- low-memory mode ------------------------------------------------------------------


def test_low_memory_reads_events_back_from_the_log(tmp_path: Path) -> None:
    """A low-memory index holds no events but returns them, equal, from the logs."""
    events = [
        make(EventType.TASK_STARTED, s, session_id=f"s{s % 2}", task_id="t1") for s in range(20)
    ]
    index = located_index(tmp_path, events)
    assert index.low_memory
    assert not isinstance(index._rows, sinks.index._memory.MemoryRows)
    assert index.get_events(session_id="s1") == events[1::2]
    assert index.query(EventQuery(task_id="t1"), limit=3, after=events[4].id) == events[5:8]
    assert index.get_latest(2) == events[-2:]


def test_low_memory_after_an_evicted_or_unknown_id_raises(tmp_path: Path) -> None:
    """In low-memory mode too, ``after`` must name an event the index holds."""
    events = [make(seconds=s) for s in range(10)]
    index = located_index(tmp_path, events, max_events=5)
    assert index.query(EventQuery(), after=events[7].id) == events[8:]
    with pytest.raises(UnknownEventIdError, match="never added, or evicted"):
        index.query(EventQuery(), after=events[2].id)
    with pytest.raises(UnknownEventIdError, match="after='nope'"):
        index.query(EventQuery(), after="nope")


def test_low_memory_index_stays_under_150_bytes_per_event(tmp_path: Path) -> None:
    """Positions and postings only: well under the 150 bytes per event of the target."""
    events = [
        make(
            EventType.TASK_STARTED if s % 3 else EventType.INFO,
            s / 1000,
            session_id=f"s{s % 4}",
            task_id=f"t{s // 10}",
            phase="EXECUTION",
            agent_role="coder" if s % 2 else None,
        )
        for s in range(20_000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = located_index(tmp_path, events)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == 20_000
    assert used / len(index) < 150


def test_low_memory_index_cannot_be_written_to_without_locations() -> None:
    """A bus cannot feed a low-memory index directly: it needs each event's place in a log."""
    index = EventIndex(low_memory=True)
    with pytest.raises(LocationRequiredError, match="add_located"):
        index.add([make()])


async def test_low_memory_write_from_a_bus_raises() -> None:
    """``write`` (the sink method) raises the same clear error in low-memory mode."""
    with pytest.raises(LocationRequiredError, match="cannot index events written by a bus"):
        await EventIndex(low_memory=True).write([make()])


def test_low_memory_detects_a_rewritten_log(tmp_path: Path) -> None:
    """If a log changes under the index, reading back raises instead of lying."""
    events = [make(seconds=s) for s in range(3)]
    index = located_index(tmp_path, events)
    index.close()
    log = tmp_path / "s1" / "events.jsonl"
    log.write_bytes(encode_jsonl([make(seconds=s) for s in range(3)]))
    with pytest.raises(StaleLogError, match="it holds another event"):
        index.get_events()
    log.write_bytes(b"")
    with pytest.raises(StaleLogError, match="shorter than when indexed"):
        index.get_latest(1)


def test_close_releases_files_and_later_queries_reopen_them(tmp_path: Path) -> None:
    """``close`` releases the open logs; the index stays queryable."""
    events = [make(seconds=s, session_id=f"s{s}") for s in range(5)]
    index = EventIndex(low_memory=True, max_open_files=2)
    LogWriter(tmp_path, index).write(events)
    assert index.get_events() == events
    assert len(index._log_rows.files) == 2
    index.close()
    assert index.get_events(session_id="s3") == [events[3]]


# --- as a sink and rebuilt --------------------------------------------------------------


async def test_index_as_a_bus_sink_sees_every_published_event() -> None:
    """Subscribed to a real bus, the index answers for everything published."""
    index = EventIndex()
    events = [make(seconds=s, session_id=f"s{s % 3}") for s in range(30)]
    async with EventBus() as bus:
        bus.subscribe(index)
        for event in events:
            await bus.publish(event)
        await bus.flush()
        assert index.get_events(session_id="s1") == events[1::3]
    assert len(index) == 30


async def test_low_memory_index_kept_current_by_a_jsonl_sink(tmp_path: Path) -> None:
    """``JsonlSink(on_written=index.add_located)`` feeds a low-memory index from a bus."""
    index = EventIndex(low_memory=True)
    events = [make(seconds=s, session_id=f"s{s % 2}", task_id=f"t{s % 3}") for s in range(40)]
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path, on_written=index.add_located))
        for event in events:
            await bus.publish(event)
        await bus.flush()
        assert index.get_events(session_id="s1", task_id="t1") == [
            e for e in events if e.session_id == "s1" and e.task_id == "t1"
        ]
    assert EventIndex.from_workspace(tmp_path, low_memory=True).get_events() == events
    assert index.get_events() == events


def test_from_workspace_rebuilds_what_the_logs_hold(tmp_path: Path) -> None:
    """Every session's log is read; the rebuilt index equals the live one."""
    events = [make(seconds=s, session_id=f"s{s % 3}", task_id=f"t{s % 4}") for s in range(40)]
    live = located_index(tmp_path, events)
    (tmp_path / "not-a-session").mkdir()
    for low_memory in (False, True):
        rebuilt = EventIndex.from_workspace(tmp_path, low_memory=low_memory)
        assert rebuilt.get_events() == live.get_events() == events
        assert rebuilt.get_events(task_id="t2") == events[2::4]


# --- log order and duplicates (what EventLog(cache=False) builds on) ---------------------


def test_query_in_log_order_follows_the_lines_not_the_timestamps(tmp_path: Path) -> None:
    """query_in_log_order returns matches in the order they were appended to their logs."""
    events = [
        make(EventType.TASK_STARTED, s, session_id=f"s{i % 2}", task_id=f"t{i % 3}")
        for i, s in enumerate([5, 1, 9, 3, 7, 0, 8, 2])
    ]
    index = located_index(tmp_path, events)
    assert index.query_in_log_order(EventQuery(session_id="s0")) == events[0::2]
    assert index.query_in_log_order(EventQuery(task_id="t1", start_time=at(2))) == [
        e for e in events[1::3] if e.timestamp >= at(2)
    ]
    assert (
        index.query_in_log_order(EventQuery())
        == [
            *events[0::2],  # s0's log was seen first
            *events[1::2],
        ]
    )
    assert index.get_events() == in_time_order(events)


def test_query_in_log_order_needs_a_low_memory_index() -> None:
    """Only a low-memory index knows where its events are in their logs."""
    with pytest.raises(EventIndexError, match=r"needs EventIndex\(low_memory=True\)"):
        EventIndex().query_in_log_order(EventQuery())


@pytest.mark.parametrize("late", [False, True], ids=["in-order", "late"])
def test_keep_duplicates_indexes_an_event_each_time_it_is_given(tmp_path: Path, late: bool) -> None:
    """With keep_duplicates a repeated event is indexed again, not skipped."""
    events = [make(seconds=s) for s in range(100)]
    again = events[3] if late else events[-1]
    index = located_index(tmp_path, [*events, again, again], keep_duplicates=True)
    assert index.keep_duplicates
    assert (len(index), index.duplicates) == (102, 0)
    assert index.query_in_log_order(EventQuery()) == [*events, again, again]
    skipping = located_index(tmp_path / "skip", [*events, again, again])
    assert (len(skipping), skipping.duplicates) == (100, 2)
