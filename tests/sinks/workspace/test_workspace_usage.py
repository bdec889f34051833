"""Workspace.usage: tallied per log, read on from where it stopped, the same as summing events."""

from __future__ import annotations

import math
import os
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sinks._lines
import sinks.workspace._tally
import sinks.workspace._usage
import sinks.workspace._workspace
from eventbus import Event, EventQuery, EventType, encode_event
from sinks.index import EventIndex
from sinks.jsonl import EventLog
from sinks.workspace import USAGE_KEYS, Workspace
from sinks.workspace._usage import usage_table

RESPONSE = EventType.LLM_RESPONSE_RECEIVED
T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


def write(root: Path, events: list[Event]) -> None:
    """Append ``events`` to their sessions' logs."""
    for event in events:
        with EventLog(root / event.session_id / "events.jsonl") as log:
            log.append(event)


def expected(root: Path, by: str, session_id: str | None = None) -> dict[str, Any]:
    """The answer summed from every response event, as the index returns them."""
    query = EventQuery(event_type=RESPONSE, session_id=session_id)
    responses, _ = Workspace(root).events(query)
    return usage_table(responses, by)


amounts = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.just("12"),
)
costs = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=20, allow_nan=False),
    st.floats(allow_nan=False, allow_infinity=False),  # (JSON holds no NaN)
    st.integers(min_value=-1, max_value=10**8),
    st.booleans(),
)


@st.composite
def response_events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from([RESPONSE, RESPONSE, RESPONSE, EventType.INFO]))
    metadata = {
        key: value
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
        if (value := draw(amounts)) is not None
    }
    cost = draw(costs)
    if cost is not None:
        metadata["cost_usd"] = cost
    zone = draw(st.sampled_from([UTC, timezone(timedelta(hours=5)), timezone(timedelta(hours=-7))]))
    moment = (T0 + timedelta(minutes=draw(st.integers(0, 6 * 60)))).astimezone(zone)
    return Event(
        event_type=kind,
        session_id=draw(st.sampled_from(["s1", "s2"])),
        message="a response",
        timestamp=moment,
        model=draw(st.sampled_from([None, "", "m1", "gpt-4o"])),
        agent_role=draw(st.sampled_from([None, "coder", "planner"])),
        task_id=draw(st.sampled_from([None, "t1", "t2"])),
        phase=draw(st.sampled_from([None, "PLAN", "EXECUTION"])),
        metadata=metadata,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(response_events(), max_size=40), cut=st.integers(0, 40))
def test_usage_is_the_sum_of_the_responses_asked_once_or_as_the_logs_grow(
    tmp_path_factory: pytest.TempPathFactory, events: list[Event], cut: int
) -> None:
    """Any amounts, costs, zones and keys: the tally answers as summing the events does,
    whether the logs were read at once or read on after they grew."""
    root = tmp_path_factory.mktemp("ws")
    write(root, events[:cut])
    growing = Workspace(root, index=False)
    for by in USAGE_KEYS:
        growing.usage(by)
    write(root, events[cut:])
    fresh = Workspace(root, index=False)
    for by in USAGE_KEYS:
        assert growing.usage(by) == expected(root, by)
        assert fresh.usage(by) == expected(root, by)
    for session in {event.session_id for event in events}:
        assert growing.usage("model", session_id=session) == expected(root, "model", session)


def test_asked_again_only_what_a_log_gained_is_read(tmp_path: Path) -> None:
    """The first answer reads each log from its start; later ones from where it stopped."""
    write(tmp_path, [response(0, "s1"), response(1, "s2")])
    workspace = Workspace(tmp_path)
    starts: list[int] = []
    real = sinks._lines.line_runs

    def line_runs(fd: Any, start: int, stop: int | None = None) -> Any:
        starts.append(start)
        return real(fd, start, stop)

    with mock.patch.object(sinks.workspace._tally, "line_runs", line_runs):
        assert workspace.usage()["total"]["calls"] == 2
        assert starts == [0, 0]
        assert workspace.usage("task")["total"]["calls"] == 2
        assert starts == [0, 0]  # nothing changed: nothing read
        size = os.path.getsize(tmp_path / "s1" / "events.jsonl")
        write(tmp_path, [response(2, "s1")])
        assert workspace.usage()["total"]["calls"] == 3
        assert starts == [0, 0, size]  # only s1, from where it stopped


def test_a_log_replaced_or_cleared_is_read_again(tmp_path: Path) -> None:
    """A log whose identity changed, or that shrank, is tallied from its start."""
    write(tmp_path, [response(0, "s1"), response(1, "s1")])
    workspace = Workspace(tmp_path, index=False)
    assert workspace.usage()["total"]["calls"] == 2
    log = tmp_path / "s1" / "events.jsonl"
    replacement = tmp_path / "s1" / "new.jsonl"
    replacement.write_bytes(encode_event(response(7, "s1")) + b"\n")
    os.replace(replacement, log)
    assert workspace.usage()["total"]["calls"] == 1
    log.write_bytes(b"")
    assert workspace.usage()["total"]["calls"] == 0
    write(tmp_path, [response(8, "s1", prompt_tokens=3)])
    assert workspace.usage()["total"]["prompt_tokens"] == 3


def test_a_torn_last_line_counts_once_it_is_complete(tmp_path: Path) -> None:
    """A response being written (no newline yet) is not counted, then counted once whole."""
    line = encode_event(response(0, "s1", prompt_tokens=5))
    log = tmp_path / "s1" / "events.jsonl"
    log.parent.mkdir()
    log.write_bytes(line[:20])
    workspace = Workspace(tmp_path, index=False)
    assert workspace.usage()["total"]["calls"] == 0
    with open(log, "ab") as file:
        file.write(line[20:] + b"\n")
    assert workspace.usage()["total"] == expected(tmp_path, "model")["total"]
    assert workspace.usage()["total"]["prompt_tokens"] == 5


def test_build_index_tallies_usage_first(tmp_path: Path) -> None:
    """serve's build reads usage before the index: usage asked meanwhile or after reads nothing."""
    write(tmp_path, [response(0, "s1"), response(1, "s2")])
    workspace = Workspace(tmp_path)
    workspace.build_index()
    with mock.patch.object(sinks.workspace._tally, "line_runs") as line_runs:
        assert workspace.usage()["total"]["calls"] == 2
    line_runs.assert_not_called()


def response(i: int, session: str, **usage: Any) -> Event:
    return Event(
        event_type=RESPONSE,
        session_id=session,
        message=f"r{i}",
        timestamp=T0 + timedelta(seconds=i),
        model="m1",
        metadata=usage or {"prompt_tokens": 1, "completion_tokens": 1},
    )


def test_amounts_follow_the_one_rule_set() -> None:
    """(A check of the reference used above: NaN costs and bools count as nothing.)"""
    table = usage_table(
        [response(0, "s", prompt_tokens=True, cost_usd=math.nan), response(1, "s", cost_usd=1)],
        "model",
    )
    assert table["total"]["prompt_tokens"] == 0
    assert table["total"]["cost_usd"] == 1.0


def test_the_build_gives_way_to_a_query_reading_the_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a query reads the logs, the build (in another thread) waits between chunks,
    leaving the interpreter to the query; it goes on once the query is done."""
    write(tmp_path, [response(i, "s1") for i in range(3)])
    monkeypatch.setattr(sinks.workspace._workspace, "_GIVE_WAY", 60.0)
    workspace = Workspace(tmp_path)
    seen: list[str] = []
    waiting = threading.Event()
    quiet = workspace._quiet
    real_wait_for = quiet.wait_for

    def wait_for(predicate: Any, timeout: float | None = None) -> bool:
        waiting.set()
        return bool(real_wait_for(predicate, timeout))

    monkeypatch.setattr(quiet, "wait_for", wait_for)
    real_add = EventIndex.add_located

    def add_located(index: EventIndex, *args: Any, **kwargs: Any) -> int:
        seen.append("indexed")
        return real_add(index, *args, **kwargs)

    monkeypatch.setattr(EventIndex, "add_located", add_located)
    with workspace._asked():
        build = threading.Thread(target=workspace.build_index)
        build.start()
        assert waiting.wait(30)
        seen.append("query done")
    build.join(30)
    assert not build.is_alive()
    assert seen == ["query done", "indexed"]
    assert workspace.events()[0] == Workspace(tmp_path, index=False).events()[0]


def test_an_answer_is_kept_while_no_log_changes_and_handed_out_as_a_copy(tmp_path: Path) -> None:
    """Asked again with no log changed, the answer is not summed again; changing the
    answer given does not change the next one; a log grown is summed again."""
    write(tmp_path, [response(0, "s1"), response(1, "s2")])
    workspace = Workspace(tmp_path, index=False)
    real = sinks.workspace._usage.groups_table
    with mock.patch.object(sinks.workspace._tally, "groups_table", wraps=real) as summed:
        first = workspace.usage("task")
        first["rows"][0]["calls"] = 99
        first["total"]["calls"] = 99
        again = workspace.usage("task")
        assert summed.call_count == 1
        assert again["total"]["calls"] == 2
        assert again["rows"][0]["calls"] == 2
        write(tmp_path, [response(2, "s1")])
        assert workspace.usage("task")["total"]["calls"] == 3
        assert summed.call_count == 2
