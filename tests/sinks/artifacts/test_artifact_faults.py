"""ArtifactSink under faults: one bad session fails alone, and retries count nothing twice.

A session is blocked for real: a regular file named ``artifacts`` stands where
its artifacts directory should be, so every save of it fails with
``NotADirectoryError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import pytest

import sinks.artifacts._files
import sinks.artifacts._store
from eventbus import (
    Event,
    EventBatch,
    EventBus,
    PartialWriteError,
    RetryPolicy,
    SinkFailedError,
    create_llm_response_event,
)
from sinks.artifacts import ArtifactSink, RunSummary, SessionArtifactQuery

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(retries=2, initial_delay=0.0)


def one_by_one(
    replace: Callable[[str, str, bytes, bool], None],
) -> Callable[[str, Sequence[tuple[str, bytes]], bool], None]:
    """A ``replace_all_atomic`` that saves each file with ``replace`` (to watch or fail one)."""

    def replace_all(directory: str, files: Sequence[tuple[str, bytes]], durable: bool) -> None:
        for target, data in files:
            replace(directory, target, data, durable)

    return replace_all


def llm(session_id: str) -> Event:
    """An llm_response_received event: 100 + 50 tokens, 0.25 USD."""
    return create_llm_response_event(session_id, "model-a", "coder", 100, 50, cost_usd=0.25)


def block(root: Path, session_id: str) -> Path:
    """Put a file where the session's artifacts directory goes; return it."""
    (root / session_id).mkdir(parents=True, exist_ok=True)
    blocker = root / session_id / "artifacts"
    blocker.write_text("in the way")
    return blocker


def totals(root: Path, session_id: str) -> tuple[int, int, int, float]:
    """The session's run_summary: events, LLM calls, tokens, cost."""
    data = SessionArtifactQuery(root).store(session_id).load_artifact("run_summary")
    summary = msgspec.convert(data, RunSummary)
    return (summary.event_count, summary.llm_calls, summary.total_tokens, summary.cost_usd)


def unblock_after_first_failure(
    monkeypatch: pytest.MonkeyPatch, blocker: Path
) -> Callable[[], int]:
    """Remove ``blocker`` as soon as a save fails on it; return a count of those failures."""
    real = sinks.artifacts._files.replace_atomic
    failures = 0

    def replace_atomic(directory: str, target: str, data: bytes, durable: bool) -> None:
        nonlocal failures
        try:
            real(directory, target, data, durable)
        except NotADirectoryError:
            failures += 1
            if blocker.is_file():
                blocker.unlink()
            raise

    monkeypatch.setattr(sinks.artifacts._store, "replace_all_atomic", one_by_one(replace_atomic))
    return lambda: failures


async def test_write_saves_the_other_sessions_then_names_the_failed_one(tmp_path: Path) -> None:
    """A blocked session raises PartialWriteError for it alone; the others are on disk."""
    block(tmp_path, "s2")
    sink = ArtifactSink(tmp_path, durable=False)
    with pytest.raises(PartialWriteError, match=r"1 session\(s\).*session 's2'") as raised:
        await sink.write(EventBatch([llm("s1"), llm("s2"), llm("s3")]))
    assert set(raised.value.failures) == {"s2"}
    assert isinstance(raised.value.failures["s2"], NotADirectoryError)
    assert set(sink.failed_sessions) == {"s2"}
    assert totals(tmp_path, "s1") == totals(tmp_path, "s3") == (1, 1, 150, 0.25)


async def test_retrying_the_same_batch_counts_the_saved_sessions_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry skips what was saved and counts the failed session once; the record clears."""
    failures = unblock_after_first_failure(monkeypatch, block(tmp_path, "s2"))
    sink = ArtifactSink(tmp_path, durable=False)
    batch = EventBatch([llm("s1"), llm("s2"), llm("s1"), llm("s2")])
    with pytest.raises(PartialWriteError, match="session 's2'"):
        await sink.write(batch)
    await sink.write(batch)
    assert failures() == 1
    assert totals(tmp_path, "s1") == totals(tmp_path, "s2") == (2, 2, 300, 0.5)
    assert dict(sink.failed_sessions) == {}


async def test_bus_retry_after_a_partial_failure_counts_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real bus: each run_summary equals the truth after the retried batch."""
    failures = unblock_after_first_failure(monkeypatch, block(tmp_path, "s2"))
    sink = ArtifactSink(tmp_path, durable=False)
    async with EventBus(retry=FAST_RETRY) as bus:
        bus.subscribe(sink)
        for _ in range(3):
            await bus.publish(llm("s1"))
            await bus.publish(llm("s2"))
        await bus.flush()
        assert bus.stats().healthy
    assert failures() == 1
    assert totals(tmp_path, "s1") == totals(tmp_path, "s2") == (3, 3, 450, 0.75)


async def test_bus_fails_the_blocked_session_alone_and_the_others_stay_current(
    tmp_path: Path,
) -> None:
    """flush() names the blocked session; the other session's run_summary keeps up."""
    blocker = block(tmp_path, "s2")
    sink = ArtifactSink(tmp_path, durable=False)

    async def run() -> None:
        async with EventBus(retry=FAST_RETRY) as bus:
            bus.subscribe(sink)
            await bus.publish(llm("s1"))
            await bus.publish(llm("s2"))
            with pytest.raises(SinkFailedError, match="session 's2'"):
                await bus.flush()
            assert totals(tmp_path, "s1") == (1, 1, 150, 0.25)
            await bus.publish(llm("s1"))
            await bus.publish(llm("s2"))
            with pytest.raises(SinkFailedError, match="session 's2'"):
                await bus.flush()
            assert totals(tmp_path, "s1") == (2, 2, 300, 0.5)

    with pytest.raises(SinkFailedError, match="session 's2'"):  # on leaving, too
        await run()
    assert set(sink.failed_sessions) == {"s2"}
    assert blocker.read_text() == "in the way"
