"""ArtifactSink through a real EventBus: saved artifacts and a live run_summary."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import sinks.artifacts._files
import sinks.artifacts._store
from eventbus import (
    Event,
    EventBatch,
    EventBus,
    EventType,
    PartialWriteError,
    RetryPolicy,
    create_artifact_event,
    create_diff_event,
    create_llm_response_event,
    create_phase_transition_event,
    create_session_event,
    create_task_event,
)
from sinks.artifacts import (
    ArtifactSink,
    ArtifactStore,
    RunSummary,
    SessionArtifactQuery,
    UnsafeSymlinkError,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, 12, tzinfo=UTC)


def one_by_one(
    replace: Callable[[str, str, bytes, bool], None],
) -> Callable[[str, Sequence[tuple[str, bytes]], bool], None]:
    """A ``replace_all_atomic`` that saves each file with ``replace`` (to watch or fail one)."""

    def replace_all(directory: str, files: Sequence[tuple[str, bytes]], durable: bool) -> None:
        for target, data in files:
            replace(directory, target, data, durable)

    return replace_all


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The workspace root, with an ``outside`` sibling that must never change."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text('{"keep": true}')
    return tmp_path / "workspace"


def at(event: Event, seconds: float) -> Event:
    """``event`` stamped ``seconds`` after T0."""
    return msgspec.structs.replace(event, timestamp=T0 + timedelta(seconds=seconds))


def started(session_id: str, seconds: float = 0.0) -> Event:
    """A session_started event at T0 + ``seconds``."""
    return at(create_session_event(session_id, EventType.SESSION_STARTED), seconds)


def llm(session_id: str, prompt: int, completion: int, cost: float) -> Event:
    """An llm_response_received event with token usage and cost."""
    return create_llm_response_event(
        session_id, "model-a", "coder", prompt, completion, cost_usd=cost
    )


async def publish(root: Path, events: Iterable[Event], sink: ArtifactSink | None = None) -> None:
    """Publish ``events`` through a bus with an ArtifactSink on ``root``, and flush."""
    async with EventBus() as bus:
        bus.subscribe(sink if sink is not None else ArtifactSink(root))
        for event in events:
            await bus.publish(event)
        await bus.flush()


def store(root: Path, session_id: str = "s1") -> ArtifactStore:
    """The artifacts of ``session_id``."""
    return SessionArtifactQuery(root).store(session_id)


async def run_summary(root: Path, session_id: str = "s1") -> RunSummary:
    """The session's run_summary artifact, typed."""
    return msgspec.convert(await store(root, session_id).aload_artifact("run_summary"), RunSummary)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its content."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


async def test_artifact_events_with_content_are_saved(root: Path) -> None:
    """artifact_created and artifact_updated save their content under their key."""
    sink = ArtifactSink(root)
    await publish(
        root,
        [
            create_artifact_event("s1", "build_spec", {"name": "demo"}),
            create_artifact_event("s1", "concept", {"idea": 1}),
            create_artifact_event("s1", "concept", {"idea": 2}, updated=True),
        ],
        sink,
    )
    assert await store(root).aload_artifact("build_spec") == {"name": "demo"}
    assert await store(root).aload_artifact("concept") == {"idea": 2}
    assert await store(root).alist_artifacts() == ["build_spec", "concept", "run_summary"]
    assert sink.saved_artifacts == 2


async def test_artifact_event_without_content_is_only_counted(root: Path) -> None:
    """An announcement without content writes no artifact, but counts as an event."""
    await publish(root, [create_artifact_event("s1", "report")])
    assert await store(root).alist_artifacts() == ["run_summary"]
    assert (await run_summary(root)).event_count == 1


async def test_run_summary_shows_live_totals_mid_session(root: Path) -> None:
    """After a flush, run_summary holds the totals so far; the end completes them."""
    async with EventBus() as bus:
        bus.subscribe(ArtifactSink(root))
        for event in [
            started("s1"),
            at(create_phase_transition_event("s1", "IDEA", "EXECUTION"), 1),
            at(llm("s1", 100, 50, 0.01), 2),
            at(create_task_event("s1", EventType.TASK_COMPLETED, "t1"), 3),
            at(create_diff_event("s1", ["src/b.py", "src/a.py"]), 4),
        ]:
            await bus.publish(event)
        await bus.flush()

        live = await run_summary(root)
        assert (live.status, live.phase, live.event_count) == ("running", "EXECUTION", 5)
        assert (live.prompt_tokens, live.completion_tokens, live.total_tokens) == (100, 50, 150)
        assert live.cost_usd == pytest.approx(0.01)
        assert (live.tasks_completed, live.files_generated) == (1, ["src/a.py", "src/b.py"])
        assert (live.started_at, live.ended_at, live.duration_s) == (T0.isoformat(), None, 4.0)

        await bus.publish(at(llm("s1", 200, 100, 0.02), 5))
        await bus.publish(at(create_session_event("s1", EventType.SESSION_COMPLETED), 10))
        await bus.flush()

    final = await run_summary(root)
    assert (final.status, final.llm_calls, final.total_tokens) == ("completed", 2, 450)
    assert final.cost_usd == pytest.approx(0.03)
    assert (final.ended_at, final.duration_s) == ((T0 + timedelta(seconds=10)).isoformat(), 10.0)


@pytest.mark.parametrize(
    ("end", "status"),
    [
        (EventType.SESSION_COMPLETED, "completed"),
        (EventType.SESSION_FAILED, "failed"),
        (EventType.SESSION_ABORTED, "aborted"),
    ],
)
async def test_session_end_event_sets_the_status(root: Path, end: EventType, status: str) -> None:
    """The session's last lifecycle event decides its status, shown in summaries."""
    await publish(root, [started("s1"), create_session_event("s1", end)])
    assert (await run_summary(root)).status == status
    summary = await SessionArtifactQuery(root).aget_session_summary("s1")
    assert summary["status"] == status


async def test_tasks_count_once_under_their_latest_outcome(root: Path) -> None:
    """Repeated and retried tasks count once: a failure then success is a success."""
    events = [
        create_task_event("s1", EventType.TASK_COMPLETED, "t1"),
        create_task_event("s1", EventType.TASK_COMPLETED, "t1"),
        create_task_event("s1", EventType.TASK_FAILED, "t2"),
        create_task_event("s1", EventType.TASK_COMPLETED, "t2"),
        create_task_event("s1", EventType.TASK_FAILED, "t3"),
        create_task_event("s1", EventType.TASK_STARTED, "t4"),
    ]
    await publish(root, events)
    summary = await run_summary(root)
    assert (summary.tasks_completed, summary.tasks_failed) == (2, 1)
    assert (summary.completed_task_ids, summary.failed_task_ids) == (["t1", "t2"], ["t3"])


async def test_files_generated_is_a_sorted_unique_list(root: Path) -> None:
    """Files from every diff_applied appear once, sorted; failed diffs do not count."""
    await publish(
        root,
        [
            create_diff_event("s1", ["b.py", "a.py"]),
            create_diff_event("s1", ["a.py", "c.py"]),
            create_diff_event("s1", ["z.py"], applied=False, error="conflict"),
        ],
    )
    assert (await run_summary(root)).files_generated == ["a.py", "b.py", "c.py"]
    assert (await SessionArtifactQuery(root).aget_session_summary("s1"))["files_generated"] == 3


async def test_run_summary_is_written_once_per_batch_per_session(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of many events over two sessions writes two summaries, not one per event."""
    written: list[str] = []
    real = sinks.artifacts._files.replace_atomic

    def counting(directory: str, target: str, data: bytes, durable: bool) -> None:
        written.append(os.path.relpath(target, root).replace(os.sep + "artifacts", ""))
        real(directory, target, data, durable)

    monkeypatch.setattr(sinks.artifacts._store, "replace_all_atomic", one_by_one(counting))
    events = [llm(f"s{i % 2}", 10, 5, 0.0) for i in range(100)]
    await ArtifactSink(root).write(EventBatch(events))
    assert sorted(written) == ["s0/run_summary.json", "s1/run_summary.json"]
    assert (await run_summary(root, "s0")).total_tokens == 750


async def test_a_batch_fsyncs_every_file_and_each_directory_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three artifacts and the summary of one session: four files fsynced, one directory."""
    await ArtifactSink(root).write([llm("s1", 1, 1, 0.0)])  # the directories exist now
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    directories: list[str] = []
    real_directory = sinks.artifacts._files.fsync_directory

    def fsync_directory(path: str) -> None:
        directories.append(os.path.relpath(path, root))
        real_directory(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(sinks.artifacts._store, "fsync_directory", fsync_directory)
    events = [create_artifact_event("s1", key, {"key": key}) for key in ("a", "b", "c")]
    await ArtifactSink(root).write([*events, llm("s1", 1, 1, 0.0)])
    assert directories == [os.path.join("s1", "artifacts")]
    assert synced == ["file"] * 4 + (["dir"] if os.name == "posix" else [])
    assert await store(root).alist_artifacts() == ["a", "b", "c", "run_summary"]
    assert (await run_summary(root)).event_count == 5


async def test_a_batch_follows_an_artifact_linked_inside_the_root_and_refuses_one_leading_out(
    root: Path, tmp_path: Path
) -> None:
    """A symlinked artifact is checked on its own: inside, its target is replaced (the
    link stays); leading out, its session fails and nothing outside changes."""
    await ArtifactSink(root).write([llm("s1", 1, 1, 0.0), llm("s2", 1, 1, 0.0)])
    (root / "shared.json").write_text("{}")
    (root / "s1" / "artifacts" / "concept.json").symlink_to(root / "shared.json")
    (root / "s2" / "artifacts" / "concept.json").symlink_to(tmp_path / "outside" / "secret.json")
    sink = ArtifactSink(root)
    batch = [create_artifact_event(s, "concept", {"idea": s}) for s in ("s1", "s2")]
    with pytest.raises(PartialWriteError, match="session 's2'"):
        await sink.write(batch)
    assert (root / "s1" / "artifacts" / "concept.json").is_symlink()
    assert msgspec.json.decode((root / "shared.json").read_bytes()) == {"idea": "s1"}
    assert (await run_summary(root, "s1")).event_count == 2
    assert isinstance(sink.failed_sessions["s2"], UnsafeSymlinkError)
    assert (tmp_path / "outside" / "secret.json").read_text() == '{"keep": true}'
    assert (await run_summary(root, "s2")).event_count == 1


async def test_bad_artifact_key_is_skipped_counted_and_logged(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid key skips that artifact only; the sink keeps working and nothing escapes."""
    sink = ArtifactSink(root)
    before = tree(tmp_path / "outside")
    with caplog.at_level(logging.WARNING, logger="sinks.artifacts"):
        async with EventBus() as bus:
            bus.subscribe(sink)
            await bus.publish(create_artifact_event("s1", "../../outside/secret", {"pwned": 1}))
            await bus.publish(create_artifact_event("s1", "run_summary", {"fake": True}))
            await bus.publish(create_artifact_event("s1", "concept", {"idea": 1}))
            await bus.flush()
            assert bus.stats().healthy
    assert (sink.skipped_artifacts, sink.saved_artifacts) == (2, 1)
    assert tree(tmp_path / "outside") == before
    assert await store(root).alist_artifacts() == ["concept", "run_summary"]
    assert (await run_summary(root)).event_count == 3
    messages = [record.getMessage() for record in caplog.records]
    assert any("invalid artifact key '../../outside/secret'" in m for m in messages)
    assert any("reserved" in m for m in messages)


async def test_invalid_session_id_is_skipped_and_nothing_escapes(
    root: Path, tmp_path: Path
) -> None:
    """Events whose session id is not a plain name are skipped; only valid sessions appear.

    The bus refuses such events at publish time; this is the sink's own guard,
    for batches that reach it another way.
    """
    sink = ArtifactSink(root)
    before = tree(tmp_path / "outside")
    await sink.write(
        [
            create_artifact_event("../outside", "secret", {"pwned": 1}),
            create_artifact_event("/tmp", "x", {"pwned": 1}),
            create_artifact_event("", "x", {"pwned": 1}),
            create_artifact_event("ok", "concept", {"idea": 1}),
        ]
    )
    await sink.aclose()
    assert sink.skipped_events == 3
    assert tree(tmp_path / "outside") == before
    assert sorted(tree(tmp_path)) == sorted(
        [
            *(f"outside/{name}" for name in before),
            "workspace/ok/artifacts/concept.json",
            "workspace/ok/artifacts/run_summary.json",
        ]
    )


async def test_failed_write_is_retried_without_counting_twice(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a write fails and the bus retries the batch, totals count each event once."""
    real = sinks.artifacts._files.replace_atomic
    failures = [OSError(28, "No space left on device")]

    def flaky(directory: str, target: str, data: bytes, durable: bool) -> None:
        if os.path.basename(target) == "run_summary.json" and failures:
            raise failures.pop()
        real(directory, target, data, durable)

    monkeypatch.setattr(sinks.artifacts._store, "replace_all_atomic", one_by_one(flaky))
    sink = ArtifactSink(root)
    async with EventBus(retry=RetryPolicy(retries=2, initial_delay=0.0)) as bus:
        bus.subscribe(sink)
        await bus.publish(llm("s1", 100, 50, 0.5))
        await bus.publish(create_artifact_event("s1", "concept", {"idea": 1}))
        await bus.flush()
        assert bus.stats().subscriptions[0].retries == 1
    summary = await run_summary(root)
    assert (summary.event_count, summary.total_tokens, summary.cost_usd) == (2, 150, 0.5)


async def test_new_sink_resumes_a_session_from_its_run_summary(root: Path) -> None:
    """A session continued by a new process (a new sink) keeps its earlier totals."""
    await publish(root, [started("s1"), llm("s1", 100, 50, 0.5)])
    await publish(
        root, [llm("s1", 10, 5, 0.25), create_task_event("s1", EventType.TASK_COMPLETED, "t1")]
    )
    summary = await run_summary(root)
    assert (summary.event_count, summary.total_tokens, summary.cost_usd) == (4, 165, 0.75)
    assert (summary.started_at, summary.tasks_completed) == (T0.isoformat(), 1)


async def test_totals_stay_right_when_sessions_leave_the_cache(root: Path) -> None:
    """With room for one session in memory, interleaved sessions still add up."""
    sink = ArtifactSink(root, max_cached_sessions=1)
    async with EventBus() as bus:
        bus.subscribe(sink)
        for _ in range(3):
            for session_id in ["a", "b", "c"]:
                await bus.publish(llm(session_id, 10, 0, 0.0))
                await bus.flush()
        await bus.publish(create_session_event("a", EventType.SESSION_COMPLETED))
        await bus.publish(create_artifact_event("a", "late", {"after": "end"}))
        await bus.flush()
    assert [(await run_summary(root, s)).total_tokens for s in "abc"] == [30, 30, 30]
    assert (await run_summary(root, "a")).event_count == 5


async def test_recorded_start_keeps_date_order_when_files_are_touched(root: Path) -> None:
    """Sessions dated by their session_started event keep their order after a touch."""
    await publish(root, [started(s, index * 3600.0) for index, s in enumerate(["a", "b", "c"])])
    touch_all_reversed(root, ["a", "b", "c"])
    found = await SessionArtifactQuery(root).aquery_sessions_by_date()
    assert [(s["session_id"], s["created_from"]) for s in found] == [
        ("c", "run_summary"),
        ("b", "run_summary"),
        ("a", "run_summary"),
    ]
    assert found[0]["created_at"] == (T0 + timedelta(hours=2)).timestamp()


def touch_all_reversed(root: Path, sessions: list[str]) -> None:
    """Give the files of later sessions older modification times."""
    for index, session_id in enumerate(sessions):
        when = T0.timestamp() - index * 86400
        for path in (root / session_id).rglob("*"):
            os.utime(path, (when, when))


async def test_ignored_metadata_of_the_wrong_type_is_not_counted(root: Path) -> None:
    """Token counts that are not ints and files that are not strings are ignored."""
    odd: dict[str, Any] = {"prompt_tokens": "many", "completion_tokens": True, "cost_usd": "1"}
    await publish(
        root,
        [
            Event(
                event_type=EventType.LLM_RESPONSE_RECEIVED,
                session_id="s1",
                message="m",
                metadata=odd,
            ),
            Event(
                event_type=EventType.DIFF_APPLIED,
                session_id="s1",
                message="d",
                metadata={"files": ["a.py", 3, None]},
            ),
        ],
    )
    summary = await run_summary(root)
    assert (summary.llm_calls, summary.total_tokens, summary.cost_usd) == (1, 0, 0.0)
    assert summary.files_generated == ["a.py"]


async def test_seed_style_run_summary_is_resumed_and_completed(root: Path) -> None:
    """A run_summary written without the sink (the seed's shape) keeps what it says."""
    await store(root).asave_artifact(
        "run_summary", {"status": "running", "files_generated": ["a.py"]}
    )
    await publish(root, [create_diff_event("s1", ["b.py"])])
    summary = await run_summary(root)
    assert (summary.session_id, summary.files_generated) == ("s1", ["a.py", "b.py"])


async def test_corrupt_run_summary_is_replaced_by_a_fresh_count(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run_summary the sink cannot read is logged and rebuilt from the new events."""
    await store(root).asave_artifact("concept", {})
    await anyio.Path(root / "s1" / "artifacts" / "run_summary.json").write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="sinks.artifacts"):
        await publish(root, [llm("s1", 1, 2, 0.0)])
    assert (await run_summary(root)).total_tokens == 3
    assert "cannot resume session 's1'" in caplog.text
