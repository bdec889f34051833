"""sinks.workspace: reading a workspace another writer fills: sessions, events, usage, follow."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AsyncExitStack, aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from watchfiles._rust_notify import WatchfilesRustInternalError

import eventbus
import factories
import sinks._lines
import sinks.workspace._follow
import sinks.workspace._scan
import sinks.workspace._workspace
from _polling import poll_until
from eventbus import MAX_LINE_BYTES, Event, EventQuery, EventType, InvalidNameError, encode_event
from eventbus.web import create_app
from sinks._lines import Growth, iter_growth
from sinks.artifacts import ArtifactSink
from sinks.index import UnknownEventIdError
from sinks.jsonl import EventLog
from sinks.workspace import (
    InvalidTimeError,
    SessionNotFoundError,
    UnknownEventTypeError,
    Workspace,
    parse_time,
)
from sinks.workspace._follow import Watcher, WatchfilesWatcher
from sinks.workspace._inotify import InotifyWatcher
from sinks.workspace._scan import key_of

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def info(session: str, message: str, seconds: float, **fields: Any) -> Event:
    return factories.event(0, session, **{"message": message, "timestamp": at(seconds), **fields})


def response(session: str, seconds: float, model: str, phase: str, **usage: Any) -> Event:
    return info(
        session,
        f"response from {model}",
        seconds,
        event_type=EventType.LLM_RESPONSE_RECEIVED,
        model=model,
        phase=phase,
        agent_role="coder",
        metadata=usage,
    )


def append(root: Path, *events: Event) -> None:
    by_session: dict[str, list[Event]] = {}
    for event in events:
        by_session.setdefault(event.session_id, []).append(event)
    for session, group in by_session.items():
        with EventLog(root / session / "events.jsonl") as log:
            for event in group:
                log.append(event)


def append_raw(root: Path, session: str, data: bytes) -> None:
    path = root / session / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as file:
        file.write(data)


@pytest.fixture(
    params=[
        pytest.param((True, None), id="indexed"),
        pytest.param((False, None), id="scanning"),
        pytest.param((True, 2), id="bounded"),
    ]
)
def make(request: pytest.FixtureRequest) -> Callable[[Path], Workspace]:
    """Open a workspace with an index, one that reads the logs for each query, or one
    whose index holds only the newest 2 events (the rest read from the logs)."""
    indexed, bound = request.param
    return lambda root: Workspace(root, index=indexed, max_events=bound)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two sessions whose events interleave in time; no run_summary."""
    workspace = tmp_path / "ws"
    append(
        workspace,
        info("a", "a0", 0),
        info("a", "a2", 2, phase="PLAN"),
        response(
            "a",
            3,
            "m1",
            "PLAN",
            prompt_tokens=10,
            cached_tokens=6,
            completion_tokens=5,
            cost_usd=0.01,
        ),
        info("b", "b1", 1),
        info("b", "b4", 4),
        response("b", 5, "m2", "EXECUTION", prompt_tokens=7, completion_tokens=3, cost_usd=0.5),
    )
    return workspace


# --- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-01-01T12:00:00", T0, id="naive-is-utc"),
        pytest.param("2026-01-01T12:00:00Z", T0, id="zulu"),
        pytest.param("2026-01-01T14:00:00+02:00", T0, id="offset"),
        pytest.param("2026-01-01", T0 - timedelta(hours=12), id="date"),
        pytest.param("30s", T0 - timedelta(seconds=30), id="seconds-ago"),
        pytest.param("10m", T0 - timedelta(minutes=10), id="minutes-ago"),
        pytest.param("2h", T0 - timedelta(hours=2), id="hours-ago"),
        pytest.param("3d", T0 - timedelta(days=3), id="days-ago"),
        pytest.param("1.5h", T0 - timedelta(minutes=90), id="fraction"),
    ],
)
def test_parse_time_reads_iso_8601_and_times_ago(text: str, expected: datetime) -> None:
    """ISO 8601 (naive means UTC) and relative forms name the same UTC moment."""
    assert parse_time(text, now=T0) == expected


def test_parse_time_refuses_what_it_cannot_read() -> None:
    """An unreadable time says which forms are accepted."""
    with pytest.raises(InvalidTimeError, match=r"cannot read the time '10 minutes'.*10m"):
        parse_time("10 minutes")


# --- sessions ------------------------------------------------------------------------------


def test_sessions_are_summarised_from_logs_newest_first(root: Path) -> None:
    """Without run_summary artifacts, each session is tallied from its log."""
    rows = Workspace(root).sessions()
    assert [row["session_id"] for row in rows] == ["b", "a"]
    b = rows[0]
    assert b["started_at"] == at(1).isoformat()
    assert (b["event_count"], b["llm_calls"], b["total_tokens"], b["cost_usd"]) == (3, 1, 10, 0.5)
    assert (b["status"], b["duration_s"], b["error"]) == ("running", 4.0, None)


@pytest.mark.anyio
async def test_sessions_come_from_run_summary_when_there_is_one(tmp_path: Path) -> None:
    """A session with a run_summary is summarised from it, not re-read from its log."""
    sink = ArtifactSink(tmp_path)
    events = [
        info("s", "start", 0, event_type=EventType.SESSION_STARTED),
        info("s", "done", 0, event_type=EventType.TASK_COMPLETED, task_id="t1"),
        info("s", "end", 9, event_type=EventType.SESSION_COMPLETED),
    ]
    await sink.write(events)
    await sink.aclose()
    (row,) = Workspace(tmp_path).sessions()
    assert (row["status"], row["tasks_completed"], row["duration_s"]) == ("completed", 1, 9.0)
    assert row["event_count"] == 3  # no log at all: every value is the artifact's


def test_a_corrupt_run_summary_is_reported_and_the_log_still_summarises(root: Path) -> None:
    """An unreadable artifact sets error; the row still holds the log's counts."""
    (root / "a" / "artifacts").mkdir()
    (root / "a" / "artifacts" / "run_summary.json").write_text("{not json")
    row = next(row for row in Workspace(root).sessions() if row["session_id"] == "a")
    assert row["error"] is not None
    assert "run_summary" in row["error"]
    assert row["event_count"] == 3


def test_sessions_since_and_until_select_by_start(root: Path) -> None:
    """Bounds are inclusive and apply to each session's start."""
    workspace = Workspace(root)
    assert [r["session_id"] for r in workspace.sessions(since=at(0.5))] == ["b"]
    assert [r["session_id"] for r in workspace.sessions(until=at(0.5))] == ["a"]
    assert [r["session_id"] for r in workspace.sessions(since=at(1), until=at(1))] == ["b"]


def test_session_lists_its_artifacts(root: Path) -> None:
    """One session's summary adds the keys of its artifacts."""
    (root / "a" / "artifacts").mkdir()
    (root / "a" / "artifacts" / "plan.json").write_text("{}")
    summary = Workspace(root).session("a")
    assert (summary["session_id"], summary["artifacts"]) == ("a", ["plan"])


@pytest.mark.parametrize("bad", ["../a", "a/b", ".", ""])
def test_an_invalid_session_id_never_names_a_path(root: Path, bad: str) -> None:
    """An id that is not one file name is refused before any file is touched."""
    with pytest.raises(InvalidNameError, match="invalid session id"):
        Workspace(root).session(bad)
    with pytest.raises(InvalidNameError, match="invalid session id"):
        Workspace(root).events(session_id=bad)


def test_an_unknown_session_is_not_found(root: Path) -> None:
    """An unknown id raises SessionNotFoundError, a LookupError."""
    with pytest.raises(SessionNotFoundError, match="no session 'zz'") as caught:
        Workspace(root).session("zz")
    assert isinstance(caught.value, LookupError)
    with pytest.raises(SessionNotFoundError, match="no session 'zz'"):
        Workspace(root).usage(session_id="zz")


# --- events --------------------------------------------------------------------------------


def test_events_come_in_time_order_across_sessions(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Events of all sessions interleave by timestamp."""
    events, next_id = make(root).events()
    assert [e.message for e in events][:4] == ["a0", "b1", "a2", "response from m1"]
    assert next_id is None


def test_pages_concatenate_to_the_whole_answer(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Passing next as after walks every event once."""
    workspace = make(root)
    seen: list[str] = []
    after: str | None = None
    while True:
        page, after = workspace.events(limit=4, after=after)
        seen += [e.id for e in page]
        if after is None:
            break
    assert seen == [e.id for e in workspace.events()[0]]
    assert len(seen) == 6


def test_events_filter_by_query_and_session(root: Path, make: Callable[[Path], Workspace]) -> None:
    """A query and a session id combine."""
    query = EventQuery(event_type=EventType.LLM_RESPONSE_RECEIVED)
    events, _ = make(root).events(query, session_id="b")
    assert [e.model for e in events] == ["m2"]


def test_latest_is_the_last_n_in_time_order(
    tmp_path: Path, make: Callable[[Path], Workspace]
) -> None:
    """latest(n): the newest n, oldest first, however many match."""
    many = [info("s", f"e{i}", i) for i in range(3000)]
    append(tmp_path, *reversed(many[2990:]), *many[:2990])  # the newest written first
    assert [e.message for e in make(tmp_path).latest(3)] == ["e2997", "e2998", "e2999"]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(root: Path, limit: int) -> None:
    """A page holds at least one event."""
    with pytest.raises(ValueError, match="limit must be a positive int"):
        Workspace(root).events(limit=limit)


def test_an_unknown_after_id_is_refused(root: Path, make: Callable[[Path], Workspace]) -> None:
    """after must be an event a log holds."""
    with pytest.raises(UnknownEventIdError, match="nope"):
        make(root).events(after="nope")


def test_events_appended_and_new_sessions_are_seen_by_the_next_call(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Each call reads what the logs gained since the last one."""
    workspace = make(root)
    assert len(workspace.events()[0]) == 6
    append(root, info("a", "late", 10), info("c", "new session", 11))
    events, _ = workspace.events()
    assert [e.message for e in events][-2:] == ["late", "new session"]


def test_a_cleared_log_is_read_again(root: Path, make: Callable[[Path], Workspace]) -> None:
    """A log replaced by its writer (clear) is re-read, not mixed with the old one."""
    workspace = make(root)
    assert len(workspace.events(session_id="a")[0]) == 3
    with EventLog(root / "a" / "events.jsonl") as log:
        log.clear()
        log.append(info("a", "fresh", 20))
    assert [e.message for e in workspace.events(session_id="a")[0]] == ["fresh"]


def test_read_lines_are_the_stored_bytes(root: Path, make: Callable[[Path], Workspace]) -> None:
    """A line written by another producer (other key order, extra key) comes back byte for byte."""
    foreign = (
        b'{"id":"0199aaaa000070008000000000000001","extra":[1, 2],"session_id":"a",'
        b'"event_type":"info","message":"foreign","timestamp":"2026-01-01T12:00:30+00:00"}'
    )
    append_raw(root, "a", foreign + b"\n")
    workspace = make(root)
    events, _ = workspace.events(session_id="a")
    lines = workspace.read_lines(events)
    assert lines[-1] == foreign
    assert lines[0] == encode_event(events[0])


# --- usage ---------------------------------------------------------------------------------


def test_usage_has_the_api_shape(root: Path, make: Callable[[Path], Workspace]) -> None:
    """Rows per model, most expensive first, and the total; only responses count."""
    append(root, info("a", "req", 6, event_type=EventType.LLM_REQUEST_SENT, model="m1",
                      metadata={"prompt_tokens": 999}))  # fmt: skip
    assert make(root).usage("model") == {
        "by": "model",
        "rows": [
            {"key": "m2", "calls": 1, "prompt_tokens": 7, "cached_tokens": 0,
             "completion_tokens": 3, "total_tokens": 10, "cost_usd": 0.5,
             "cost_source": "producer"},
            {"key": "m1", "calls": 1, "prompt_tokens": 10, "cached_tokens": 6,
             "completion_tokens": 5, "total_tokens": 15, "cost_usd": 0.01,
             "cost_source": "producer"},
        ],
        "total": {"calls": 2, "prompt_tokens": 17, "cached_tokens": 6, "completion_tokens": 8,
                  "total_tokens": 25, "cost_usd": 0.51, "cost_source": "producer"},
    }  # fmt: skip


def test_usage_by_phase_and_for_one_session(root: Path, make: Callable[[Path], Workspace]) -> None:
    """Phase groups are summed like the index's groups; session_id narrows every figure."""
    usage = make(root).usage("phase", session_id="a")
    assert [(row["key"], row["calls"], row["total_tokens"]) for row in usage["rows"]] == [
        ("PLAN", 1, 15)
    ]
    assert usage["total"]["cost_usd"] == 0.01


def test_usage_by_an_unknown_field_is_refused(root: Path) -> None:
    """by must be one of the five fields."""
    with pytest.raises(ValueError, match=r"cannot group usage by 'colour'.*phase"):
        Workspace(root).usage("colour")


@pytest.mark.parametrize(
    ("short", "field"), [("role", "agent_role"), ("task", "task_id"), ("session", "session_id")]
)
def test_usage_by_a_short_name_is_by_its_field(
    root: Path, make: Callable[[Path], Workspace], short: str, field: str
) -> None:
    """role, task and session group by agent_role, task_id, session_id; "by" names the field."""
    workspace = make(root)
    assert workspace.usage(short) == workspace.usage(field)
    assert workspace.usage(short)["by"] == field


def test_usage_cached_tokens_are_summed_per_group(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """cached_tokens is in every row and the total, whatever the grouping."""
    append(root, response("b", 6, "m1", "PLAN", prompt_tokens=3, cached_tokens=2))
    for by in ("model", "agent_role", "task_id", "session_id", "phase"):
        usage = make(root).usage(by)
        assert sum(row["cached_tokens"] for row in usage["rows"]) == 8, by
        assert usage["total"]["cached_tokens"] == 8, by


# --- event types ---------------------------------------------------------------------------


def test_event_types_are_those_the_logs_hold(root: Path, make: Callable[[Path], Workspace]) -> None:
    """Each type once, sorted; a type this version does not know is listed as written."""
    append(root, info("b", "newer", 7, event_type="kind_from_v9"))
    assert make(root).event_types() == ["info", "kind_from_v9", "llm_response_received"]


def test_check_types_accepts_known_types_and_those_in_the_logs(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """This version's types pass even if absent; a newer producer's type passes if written."""
    append(root, info("b", "newer", 7, event_type="kind_from_v9"))
    make(root).check_types(["task_failed", "kind_from_v9"])
    make(root).check_types(None)


def test_check_types_refuses_a_type_nobody_knows_listing_the_known_ones(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """A misspelt type raises UnknownEventTypeError naming it; known lists every known type."""
    append(root, info("b", "newer", 7, event_type="kind_from_v9"))
    expected = r"no event type 'task_faild'.*known types: "
    with pytest.raises(UnknownEventTypeError, match=expected) as raised:
        make(root).check_types(["task_failed", "task_faild"])
    assert raised.value.types == ("task_faild",)
    assert set(raised.value.known) == {kind.value for kind in EventType} | {"kind_from_v9"}


def test_check_types_reads_no_log_for_known_or_seen_types(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Types of this version, and types an answer already holds (seen), cost no read."""
    workspace = make(root)
    with mock.patch.object(Workspace, "event_types", side_effect=AssertionError("read")):
        workspace.check_types(["info", "kind_from_v9"], seen={"kind_from_v9"})


# --- follow --------------------------------------------------------------------------------


async def take(stream: AsyncGenerator[tuple[Event, bytes], None], n: int) -> list[Event]:
    return [(await anext(stream))[0] for _ in range(n)]


@pytest.mark.anyio
async def test_follow_replays_then_yields_new_events_and_new_sessions(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Stored events in time order, then appended ones, including a session made later."""
    workspace = make(root)
    with anyio.fail_after(10):
        async with aclosing(workspace.follow_lines()) as stream:
            stored = await take(stream, 6)
            assert [e.message for e in stored][:2] == ["a0", "b1"]
            append(root, info("a", "live", 30))
            assert [e.message for e in await take(stream, 1)] == ["live"]
            append(root, info("new", "in a new session", 31))
            (event, line) = await anext(stream)
            assert (event.session_id, line) == ("new", encode_event(event))


@pytest.mark.anyio
async def test_follow_yields_a_line_written_in_two_parts_once_whole(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Half a line is left for later; completed, it comes out once."""
    first = encode_event(info("a", "split before start", 40)) + b"\n"
    second = encode_event(info("a", "split while live", 41)) + b"\n"
    append_raw(root, "a", first[:25])  # the snapshot sees an incomplete last line
    workspace = make(root)
    with anyio.fail_after(10):
        async with aclosing(workspace.follow_lines()) as stream:
            await take(stream, 6)  # the stored events: the snapshot is taken
            append_raw(root, "a", first[25:])
            event, line = await anext(stream)
            assert (event.message, line + b"\n") == ("split before start", first)
            append_raw(root, "a", second[:30])
            append(root, info("b", "marker", 42))
            assert (await anext(stream))[0].message == "marker"
            append_raw(root, "a", second[30:])
            event, line = await anext(stream)
            assert (event.message, line + b"\n") == ("split while live", second)


@pytest.mark.anyio
async def test_follow_after_an_id_resumes_without_gap_or_duplicate(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """after=id replays exactly what follows it, then live events, each once."""
    workspace = make(root)
    events, _ = workspace.events()
    with anyio.fail_after(10):
        async with aclosing(workspace.follow_lines(after=events[3].id)) as stream:
            replayed = await take(stream, 2)
            append(root, info("b", "after resume", 50))
            live = await take(stream, 1)
    assert [e.id for e in replayed] == [e.id for e in events[4:]]
    assert live[0].message == "after resume"


@pytest.mark.anyio
async def test_follow_misses_nothing_written_during_replay(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """Events appended while stored ones are being replayed come out once, after them."""
    workspace = make(root)
    written = [info("a", f"during {i}", 60 + i) for i in range(20)]
    with anyio.fail_after(10):
        async with aclosing(workspace.follow_lines(EventQuery(session_id="a"))) as stream:
            got = await take(stream, 1)
            append(root, *written)  # the replay has taken its snapshot
            workspace.events()  # another reader brings the shared index further meanwhile
            got += await take(stream, 2 + len(written))
    assert [e.message for e in got[:3]] == ["a0", "a2", "response from m1"]
    assert [e.id for e in got[3:]] == [e.id for e in written]


@pytest.mark.anyio
async def test_follow_ends_when_stop_event_is_set(root: Path) -> None:
    """Setting stop_event ends the iteration (the file watcher stops)."""
    stop = anyio.Event()
    got: list[Event] = []

    async def consume() -> None:
        got.extend([e async for e in Workspace(root).follow(from_start=False, stop_event=stop)])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            stop.set()
    assert got == []


@pytest.mark.anyio
async def test_cancelling_the_caller_ends_follow(root: Path) -> None:
    """A follower blocked waiting for changes is cancelled promptly."""

    async def consume() -> None:
        async for _ in Workspace(root).follow(from_start=False):
            pass

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    """Wait until another thread makes ``condition`` true (call under fail_after)."""
    await poll_until(condition)


async def attached(workspace: Workspace, followers: int) -> None:
    """Wait until ``followers`` followers of ``workspace`` are being watched for."""
    await until(lambda: workspace._change_hub().followers >= followers)


def watchers_of(directory: Path) -> int:
    """How many inotify instances of this process watch ``directory`` (Linux): counted by
    what they watch, so instances of other tests (still closing) or of sinks do not count."""
    watched = f"ino:{os.stat(directory).st_ino:x}"
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        if _link(fd) != "anon_inode:inotify":
            continue
        try:
            info = (Path("/proc/self/fdinfo") / fd.name).read_text()
        except OSError:  # closed meanwhile
            continue
        count += watched in info.split()
    return count


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


@pytest.mark.anyio
async def test_every_follower_of_a_workspace_shares_one_watcher(root: Path) -> None:
    """200 followers (past inotify's default limit of 128) hold one instance; all see a write."""
    workspace = Workspace(root)
    assert watchers_of(root) == 0
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(
                aclosing(workspace.follow_lines(session_id="a", from_start=False))
            )
            for _ in range(200)
        ]
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                got: list[str] = []

                async def take_one(stream: AsyncGenerator[tuple[Event, bytes], None]) -> None:
                    got.append((await anext(stream))[0].message)

                for stream in streams:
                    group.start_soon(take_one, stream)
                await attached(workspace, 200)
                assert watchers_of(root) == 1
                append(root, info("a", "for everyone", 70))
    assert got == ["for everyone"] * 200
    with anyio.fail_after(5):  # the watcher stops with the last follower
        await until(lambda: watchers_of(root) == 0)


@pytest.mark.anyio
async def test_a_change_is_decoded_once_however_many_follow(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 followers of a session woken by one write: its new lines are read and decoded once."""
    reads: list[int] = []

    def counting(fd: int, start: int) -> Iterator[Growth]:
        reads.append(start)
        return iter_growth(fd, start)

    monkeypatch.setattr(sinks.workspace._follow, "iter_growth", counting)
    workspace = Workspace(root)
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(
                aclosing(workspace.follow_lines(session_id="a", from_start=False))
            )
            for _ in range(50)
        ]
        got: list[str] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:

                async def take_one(stream: AsyncGenerator[tuple[Event, bytes], None]) -> None:
                    got.append((await anext(stream))[0].message)

                for stream in streams:
                    group.start_soon(take_one, stream)
                await attached(workspace, 50)
                reads.clear()
                append(root, info("a", "once", 75))
    assert got == ["once"] * 50
    assert len(reads) == 1


@pytest.mark.anyio
async def test_follow_polls_the_logs_when_the_kernel_refuses_a_watcher(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No inotify instance left: new events still come, through polling, with one warning."""

    def refuse(root: str) -> Watcher:
        raise WatchfilesRustInternalError(
            "Error creating recommended watcher: Too many open files (os error 24)"
        )

    monkeypatch.setattr(sinks.workspace._follow, "open_watcher", refuse)
    workspace = Workspace(root)
    got: list[Event] = []
    with anyio.fail_after(10):
        async with (
            aclosing(workspace.follow_lines(from_start=False)) as stream,
            anyio.create_task_group() as group,
        ):

            async def consume() -> None:
                got.extend(await take(stream, 2))

            group.start_soon(consume)
            await attached(workspace, 1)
            append(root, info("a", "polled", 80))
            append(root, info("new", "polled in a new session", 81))
    assert [e.message for e in got] == ["polled", "polled in a new session"]
    (warning,) = [r for r in caplog.records if r.name == "sinks.workspace"]
    assert "polling its logs every 100 ms" in warning.getMessage()
    assert "Too many open files" in warning.getMessage()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_reading_the_logs_never_wakes_the_watcher(root: Path) -> None:
    """Only writes concern followers: API reads (opening every log) cost the watcher nothing."""
    watcher = InotifyWatcher(os.fspath(root), debounce_ms=30, step_ms=10)
    try:
        workspace = Workspace(root)
        workspace.sessions()
        workspace.events()
        (root / "a" / "artifacts").mkdir()  # below a session: not watched
        assert watcher.wait(200) == set()
        append(root, info("b", "written", 90))
        assert watcher.wait(5000) == {os.path.join(root, "b", "events.jsonl")}
    finally:
        watcher.close()


@pytest.mark.anyio
async def test_follow_works_with_the_watchfiles_watcher(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off Linux the hub waits on watchfiles' watcher: new events and sessions still come."""
    monkeypatch.setattr(sinks.workspace._follow, "open_watcher", WatchfilesWatcher)
    workspace = Workspace(root)
    got: list[Event] = []
    with anyio.fail_after(10):
        async with (
            aclosing(workspace.follow_lines(from_start=False)) as stream,
            anyio.create_task_group() as group,
        ):

            async def consume() -> None:
                got.extend(await take(stream, 2))

            group.start_soon(consume)
            await attached(workspace, 1)
            append(root, info("a", "watched", 95))
            append(root, info("other", "in a new session", 96))
    assert [e.message for e in got] == ["watched", "in a new session"]
    assert not workspace._change_hub().polling


@pytest.mark.anyio
async def test_follow_can_wait_for_a_session_that_has_not_started(
    root: Path, make: Callable[[Path], Workspace]
) -> None:
    """wait_for_session=True: no SessionNotFoundError; the session's events once it starts."""
    workspace = make(root)
    got: list[Event] = []

    async def consume() -> None:
        lines = workspace.follow_lines(session_id="late", wait_for_session=True)
        async with aclosing(lines) as stream:
            got.extend(await take(stream, 1))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            append(root, info("late", "first of a late session", 70), info("a", "other", 71))
    assert [event.message for event in got] == ["first of a late session"]


@pytest.mark.anyio
async def test_follow_an_unknown_session_fails_at_once(root: Path) -> None:
    """The id is checked before anything is yielded."""
    with pytest.raises(SessionNotFoundError, match="no session 'zz'"):
        async for _ in Workspace(root).follow(session_id="zz"):
            pass


def test_workspace_lines_are_the_files_lines(root: Path, make: Callable[[Path], Workspace]) -> None:
    """Every event the workspace returns maps to one stored line of its log."""
    workspace = make(root)
    events, _ = workspace.events(session_id="b")
    assert [line + b"\n" for line in workspace.read_lines(events)] == (
        (root / "b" / "events.jsonl").read_bytes().splitlines(keepends=True)
    )
    assert os.fspath(workspace.root) == os.fspath(root)


# --- logs in the seed's format (lines without ids) ---------------------------------------


def seed_line(session: str, message: str, seconds: float, **fields: Any) -> bytes:
    """A line as the seed wrote it: no ``id``, no ``parent_id``."""
    stored = json.loads(encode_event(info(session, message, seconds, **fields)))
    del stored["id"], stored["parent_id"]
    return json.dumps(stored).encode() + b"\n"


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """A seed-format log of many chunks (duplicate lines, a blank, a corrupt and a
    timeless line in its middle) beside a log with ids; times interleave."""
    workspace = tmp_path / "ws"
    lines = []
    for i in range(240):
        line = seed_line("old", f"old {i}", i // 3, phase="PLAN" if i % 4 else "EXECUTION")
        lines.append(line)
        if i % 7 == 0:
            lines.append(line)  # the same bytes at another offset: another event
        if i == 80:
            lines.append(b"\n")
        if i == 120:
            lines.append(b'{"event_type": "info", "session_id": "old", "mess\n')
        if i == 160:
            lines.append(b'{"event_type": "info", "session_id": "old", "message": "no time"}\n')
        if i == 200:
            lines.append(b" \t\r\n")
    append_raw(workspace, "old", b"".join(lines))
    append(workspace, *(info("new", f"new {i}", i * 2 + 0.5, phase="PLAN") for i in range(40)))
    return workspace


SEED_QUERIES = [
    pytest.param(EventQuery(), id="all"),
    pytest.param(EventQuery(phase="EXECUTION"), id="phase"),
    pytest.param(EventQuery(start_time=at(20), end_time=at(50)), id="times"),
]


@pytest.mark.parametrize("query", SEED_QUERIES)
def test_a_scan_derives_the_ids_an_event_log_derives(seeded: Path, query: EventQuery) -> None:
    """Without an index, lines without ids get EventLog's ids (their offsets'), in many chunks."""
    with mock.patch.object(sinks._lines, "CHUNK", 1024):
        scanned, _ = Workspace(seeded, index=False).events(query)
    indexed, _ = Workspace(seeded).events(query)
    with EventLog(seeded / "old" / "events.jsonl") as log:
        logged = query.filter(log.get_events())
    assert len(logged) > 30
    assert len({e.id for e in logged}) == len(logged)  # duplicate lines: distinct ids
    assert [e.id for e in scanned] == [e.id for e in indexed]
    assert scanned == indexed
    assert [e for e in scanned if e.session_id == "old"] == sorted(logged, key=key_of)


def test_pages_after_derived_ids_are_the_index_pages(seeded: Path) -> None:
    """after=<derived id> pages the same way with and without an index."""
    pages: dict[bool, list[list[str]]] = {}
    for indexed in (True, False):
        workspace = Workspace(seeded, index=indexed)
        pages[indexed] = []
        after: str | None = None
        with mock.patch.object(sinks._lines, "CHUNK", 1024):
            while True:
                page, after = workspace.events(limit=37, after=after)
                pages[indexed].append([e.id for e in page])
                if after is None:
                    break
    assert pages[False] == pages[True]
    assert sum(map(len, pages[True])) == len(Workspace(seeded).events()[0])
    with EventLog(seeded / "old" / "events.jsonl") as log:
        copies = [e for e in log.get_events() if e.message in ("old 0", "old 119", "old 238")]
    assert len(copies) == 6  # each line twice
    for event in copies:
        scanned, _ = Workspace(seeded, index=False).events(after=event.id, limit=5)
        assert scanned == Workspace(seeded).events(after=event.id, limit=5)[0]


def test_an_unknown_after_id_is_refused_over_a_seed_format_log(seeded: Path) -> None:
    """Deriving ids does not make an id that no line has known."""
    with pytest.raises(UnknownEventIdError, match=r"^after='0{32}': no event with this id"):
        Workspace(seeded, index=False).events(after="0" * 32)


# --- a scan by event type reads only the lines that can hold the type -------------------------

RESPONSE = EventType.LLM_RESPONSE_RECEIVED
TYPED_LINES: dict[str, Callable[[int], bytes]] = {
    # as EventLog writes it, with an id
    "compact": lambda i: encode_event(info("s", f"r {i}", i, event_type=RESPONSE)) + b"\n",
    # as another writer may: spaces after the colons, no id
    "spaced": lambda i: seed_line("s", f"r {i}", i, event_type=RESPONSE),
    # the type spelled with an escape
    "escaped": lambda i: seed_line("s", f"r {i}", i, event_type=RESPONSE).replace(
        b'"llm_response', b'"\\u006clm_response'
    ),
    # another type, quoting the type in its message
    "quoting": lambda i: encode_event(info("s", f'see "{RESPONSE}" {i}', i)) + b"\n",
    "quoting spaced": lambda i: seed_line("s", f'"{RESPONSE}" {i}', i, event_type="task_started"),
    "other": lambda i: encode_event(info("s", f"i {i}", i)) + b"\n",
    # not an event (no timestamp), holding the type
    "timeless": lambda i: b'{"event_type": "llm_response_received", "session_id": "s"}\n',
    "corrupt": lambda i: b'{"event_type": "llm_response_received", "sess\n',
    "blank": lambda i: b"\n",
}
TYPE_QUERIES = [
    EventQuery(event_type=RESPONSE),
    EventQuery(event_type=[RESPONSE, "task_started"]),
    EventQuery(event_type="task_started"),
    EventQuery(event_type=EventType.INFO, start_time=at(5)),
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=st.lists(st.sampled_from(sorted(TYPED_LINES)), max_size=60))
def test_a_scan_by_type_answers_as_the_index(tmp_path_factory: Any, kinds: list[str]) -> None:
    """However a line spells its type (or quotes another's), a scan by type finds what the
    index finds: the same events, the same (derived) ids, in small chunks too."""
    workspace = tmp_path_factory.mktemp("ws")
    append_raw(workspace, "s", b"".join(TYPED_LINES[kind](i) for i, kind in enumerate(kinds)))
    for query in TYPE_QUERIES:
        indexed, _ = Workspace(workspace).events(query)
        with mock.patch.object(sinks._lines, "CHUNK", 256):
            scanned, _ = Workspace(workspace, index=False).events(query)
        assert scanned == indexed
        assert [e.id for e in scanned] == [e.id for e in indexed]
    assert Workspace(workspace, index=False).usage() == Workspace(workspace).usage()


def test_a_scan_by_type_finds_every_spelling_of_the_type(tmp_path: Path) -> None:
    """Compact, spaced and escaped lines of the type are found; a message quoting it is not."""
    workspace = tmp_path / "ws"
    append_raw(workspace, "s", b"".join(make(i) for i, make in enumerate(TYPED_LINES.values())))
    found, _ = Workspace(workspace, index=False).events(EventQuery(event_type=RESPONSE))
    assert [e.message for e in found] == ["r 0", "r 1", "r 2"]


def test_a_page_without_an_index_decodes_only_a_few_times_its_size(tmp_path: Path) -> None:
    """Pages and the latest events read every line's keys but decode few events whole."""
    workspace = tmp_path / "ws"
    append(workspace, *(info("s", f"e{i}", i) for i in range(3000)))
    append(workspace, *(info("t", f"f{i}", i + 0.5) for i in range(3000)))
    reader, indexed = Workspace(workspace, index=False), Workspace(workspace)
    decoded: list[int] = []
    real = eventbus.decode_events

    def counting(data: bytes, **kwargs: Any) -> list[Event]:
        events = real(data, **kwargs)
        decoded.append(len(events))
        return events

    with mock.patch.object(sinks.workspace._scan, "decode_events", counting):
        page, next_id = reader.events(limit=10)
        assert (page, next_id) == indexed.events(limit=10)
        assert next_id is not None
        assert reader.events(after=next_id, limit=10) == indexed.events(after=next_id, limit=10)
        assert reader.latest(5, session_id="t") == indexed.latest(5, session_id="t")
    assert sum(decoded) <= 3 * (4 * 11 + 1024)  # of 6,000 lines, three times


def test_a_line_with_an_events_keys_that_is_not_an_event_is_passed_over_in_a_page(
    tmp_path: Path,
) -> None:
    """A line whose type, timestamp and id decode but whose message does not is not
    an event: a page read without an index passes over it, as the index does."""
    workspace = tmp_path / "ws"
    stored = json.loads(encode_event(info("s", "x", 0)))
    append_raw(workspace, "s", json.dumps({**stored, "message": 7}).encode() + b"\n")
    append(workspace, *(info("s", f"e{i}", i + 1) for i in range(5)))
    expected = Workspace(workspace).events(limit=3)
    assert [e.message for e in expected[0]] == ["e0", "e1", "e2"]
    assert Workspace(workspace, index=False).events(limit=3) == expected
    assert Workspace(workspace, index=False).latest(6) == Workspace(workspace).latest(6)


# --- bad lines: nested too deep, forged ids, too long ----------------------------------------

DEEP = 2000


def bad_lines(session: str) -> bytes:
    """Three corrupt lines of ``session``: nested 2,000 deep, a forged SSE id, over the cap."""
    good = json.loads(encode_event(info(session, "bad", 10)))
    deep = json.dumps(good)[:-1].encode() + b',"x":' + b"[" * DEEP + b"]" * DEEP + b"}"
    forged = json.dumps({**good, "id": "x1\nevent: gap\ndata: {}"}).encode()
    long = json.dumps({**good, "message": "x" * MAX_LINE_BYTES}).encode()
    return deep + b"\n" + forged + b"\n" + long + b"\n"


@pytest.fixture
def damaged(root: Path) -> Path:
    """Session a with three corrupt lines in the middle of its log; b healthy."""
    append_raw(root, "a", bad_lines("a"))
    append(root, info("a", "a20", 20))
    return root


def test_bad_lines_are_skipped_by_every_query(
    damaged: Path, make: Callable[[Path], Workspace]
) -> None:
    """events, latest, usage and sessions answer from the good lines, the bad ones skipped."""
    workspace = make(damaged)
    events, _ = workspace.events(session_id="a")
    assert [e.message for e in events] == ["a0", "a2", "response from m1", "a20"]
    assert [e.message for e in workspace.latest(2)] == ["response from m2", "a20"]
    assert workspace.usage()["total"]["calls"] == 2
    rows = {row["session_id"]: row for row in workspace.sessions()}
    assert (rows["a"]["event_count"], rows["b"]["event_count"]) == (4, 3)


@pytest.mark.anyio
async def test_follow_skips_bad_lines_and_goes_on(
    damaged: Path, make: Callable[[Path], Workspace]
) -> None:
    """follow replays the good lines around the bad ones, then yields new events."""
    workspace = make(damaged)
    with anyio.fail_after(10):
        async with aclosing(workspace.follow_lines(session_id="a")) as stream:
            assert [e.message for e in await take(stream, 4)][-1] == "a20"
            append_raw(damaged, "a", bad_lines("a"))
            append(damaged, info("a", "a30", 30))
            assert [e.message for e in await take(stream, 1)] == ["a30"]


def test_a_run_summary_nested_too_deep_is_reported_and_the_rest_listed(root: Path) -> None:
    """That session's row carries the error and its log's counts; the others are listed."""
    (root / "a" / "artifacts").mkdir()
    summary = b'{"status":"completed","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    (root / "a" / "artifacts" / "run_summary.json").write_bytes(summary)
    rows = {row["session_id"]: row for row in Workspace(root).sessions()}
    assert set(rows) == {"a", "b"}
    assert "run_summary" in rows["a"]["error"]
    assert "nested too deep" in rows["a"]["error"]
    assert (rows["a"]["event_count"], rows["b"]["error"]) == (3, None)


@pytest.mark.anyio
async def test_every_api_route_answers_when_one_log_and_one_summary_nest_too_deep(
    damaged: Path,
) -> None:
    """No 500: the healthy session, the damaged one, usage and the session list all answer."""
    (damaged / "b" / "artifacts").mkdir()
    summary = b'{"status":"completed","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    (damaged / "b" / "artifacts" / "run_summary.json").write_bytes(summary)
    transport = httpx.ASGITransport(create_app(damaged))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        sessions = await client.get("/api/sessions")
        assert sessions.status_code == 200
        assert {row["session_id"] for row in sessions.json()["sessions"]} == {"a", "b"}
        for session in ("a", "b"):
            assert (await client.get(f"/api/sessions/{session}")).status_code == 200
            events = await client.get(f"/api/sessions/{session}/events")
            assert events.status_code == 200
        assert [e["message"] for e in events.json()["events"]] == ["b1", "b4", "response from m2"]
        usage = await client.get("/api/usage")
        assert (usage.status_code, usage.json()["total"]["calls"]) == (200, 2)
