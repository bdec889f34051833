"""A Workspace whose index is bounded (``max_events``) answers like an unbounded one.

The events the index drops are read back from the logs: every query over
them (pages, filters, ``after=``, latest, usage, lines) answers exactly as
without a bound, only more slowly.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

import factories
from eventbus import Event, EventQuery, EventType, encode_jsonl
from sinks.index import UnknownEventIdError
from sinks.workspace import Workspace

TYPES = [EventType.TASK_STARTED, EventType.INFO, EventType.LLM_RESPONSE_RECEIVED]


def session_events(session: int, count: int) -> list[Event]:
    """One session's events, a few of them late (written after newer ones)."""
    rng = random.Random(session)
    events = []
    for i in range(count):
        kind = TYPES[i % 3]
        fields: dict[str, Any] = {"task_id": f"t{i // 10}", "phase": "EXECUTION"}
        if kind is EventType.LLM_RESPONSE_RECEIVED:
            fields.update(
                model=f"m{i % 2}",
                agent_role="coder",
                metadata={"prompt_tokens": i, "completion_tokens": 2, "cost_usd": 0.001 * i},
            )
        seconds = i + session / 10 - (5 if rng.random() < 0.05 else 0)  # some late
        events.append(factories.event(i, f"s{session}", kind, seconds=max(seconds, 0), **fields))
    return events


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    for session in range(3):
        log = root / f"s{session}" / "events.jsonl"
        log.parent.mkdir()
        log.write_bytes(encode_jsonl(session_events(session, 200)))
    return root


@pytest.fixture(scope="module")
def pair(root: Path) -> tuple[Workspace, Workspace]:
    return Workspace(root), Workspace(root, max_events=50)


QUERIES = [
    pytest.param(EventQuery(), id="everything"),
    pytest.param(EventQuery(session_id="s1"), id="a session"),
    pytest.param(EventQuery(event_type=EventType.LLM_RESPONSE_RECEIVED), id="a type"),
    pytest.param(EventQuery(task_id="t3"), id="an old task"),
    pytest.param(EventQuery(task_id="t19", session_id="s2"), id="a recent task"),
    pytest.param(EventQuery(start_time=factories.at(50), end_time=factories.at(120)), id="a range"),
    pytest.param(EventQuery(start_time=factories.at(195)), id="the newest"),
]


@pytest.mark.parametrize("query", QUERIES)
def test_pages_are_those_of_an_unbounded_index(
    pair: tuple[Workspace, Workspace], query: EventQuery
) -> None:
    """Paging with ``after=`` through dropped and held events gives the same pages."""
    unbounded, bounded = pair
    assert bounded.events(query) == unbounded.events(query)
    after: str | None = None
    pages = 0
    while True:
        expected = unbounded.event_lines(query, after=after, limit=37)
        assert bounded.event_lines(query, after=after, limit=37) == expected
        pages += 1
        after = expected[1]
        if after is None:
            break
    assert pages >= 1


@pytest.mark.parametrize("query", QUERIES)
def test_latest_is_that_of_an_unbounded_index(
    pair: tuple[Workspace, Workspace], query: EventQuery
) -> None:
    unbounded, bounded = pair
    for n in (1, 10, 49, 51, 300, 1000):
        assert bounded.latest_lines(n, query) == unbounded.latest_lines(n, query)


def test_the_index_holds_only_the_bound(pair: tuple[Workspace, Workspace]) -> None:
    """The bound holds: the index keeps at most ``max_events``, dropping the oldest."""
    _, bounded = pair
    bounded.events(limit=1)
    index = bounded._current()
    assert len(index) == 50
    assert index.evicted == 600 - 50


def test_after_a_dropped_event_pages_on_from_the_logs(pair: tuple[Workspace, Workspace]) -> None:
    unbounded, bounded = pair
    everything, _ = unbounded.events()
    old = everything[3].id  # long dropped by the bounded index
    assert bounded.events(after=old, limit=5) == unbounded.events(after=old, limit=5)
    with pytest.raises(UnknownEventIdError, match="nope"):
        bounded.events(after="nope", limit=5)


@pytest.mark.parametrize("by", ["model", "agent_role", "task_id", "session_id", "phase"])
def test_usage_counts_the_dropped_responses(pair: tuple[Workspace, Workspace], by: str) -> None:
    unbounded, bounded = pair
    assert bounded.usage(by) == unbounded.usage(by)
    assert bounded.usage(by, session_id="s0") == unbounded.usage(by, session_id="s0")


def test_event_types_and_lines_of_dropped_events(pair: tuple[Workspace, Workspace]) -> None:
    unbounded, bounded = pair
    assert bounded.event_types() == unbounded.event_types()
    events, _ = unbounded.events()
    sample = events[::17]
    bounded._answered = {}  # nothing remembered: read from the logs
    assert bounded.read_lines(sample) == unbounded.read_lines(sample)


def test_queries_are_answered_while_the_index_is_built(root: Path) -> None:
    """While ``build_index`` runs, queries are answered from the logs, the same."""
    unbounded = Workspace(root)
    workspace = Workspace(root)
    started, release = threading.Event(), threading.Event()
    new_index = workspace._new_index

    def slow_build() -> Any:
        started.set()
        assert release.wait(10)
        return new_index()

    workspace._new_index = slow_build  # type: ignore[method-assign]
    builder = threading.Thread(target=workspace.build_index)
    builder.start()
    assert started.wait(10)
    try:
        assert workspace._index is None
        query = EventQuery(session_id="s1", task_id="t4")
        assert workspace.event_lines(query, limit=3) == unbounded.event_lines(query, limit=3)
        assert workspace.usage("model") == unbounded.usage("model")
        assert workspace.latest(5) == unbounded.latest(5)
        assert [row["session_id"] for row in workspace.sessions()] == ["s2", "s1", "s0"]
        assert workspace._index is None  # nothing waited for, nor built, the index
    finally:
        release.set()
        builder.join(10)
    assert workspace._index is not None
    assert workspace.events(limit=5) == unbounded.events(limit=5)
