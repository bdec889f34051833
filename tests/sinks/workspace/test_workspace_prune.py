"""sinks.workspace.prune: which sessions are ended, which go first, and that removal is safe."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

import factories
from eventbus import Event, EventQuery, EventType
from sinks.jsonl import EventLog, JsonlSink
from sinks.workspace import PruneReport, Workspace, prune

NOW = factories.at(30 * 86400)  # thirty days after factories.T0
DAY = 86400


def write(
    root: Path, session_id: str, *events: Event, changed_days_ago: float | None = None
) -> Path:
    """A session's log holding ``events``; its mtime set ``changed_days_ago`` before NOW."""
    path = root / session_id / "events.jsonl"
    with EventLog(path) as log:
        for event in events:
            log.append(event)
    if changed_days_ago is not None:
        moment = NOW.timestamp() - changed_days_ago * DAY
        os.utime(path, (moment, moment))
    return path


def ended(
    root: Path, session_id: str, day: float, kind: EventType = EventType.SESSION_COMPLETED
) -> None:
    """A session that started on ``day`` (days after T0) and ended with ``kind`` an hour later."""
    write(
        root,
        session_id,
        factories.event(0, session_id, EventType.SESSION_STARTED, seconds=day * DAY),
        factories.event(1, session_id, kind, seconds=day * DAY + 3600),
        changed_days_ago=0,  # its log changed just now: ended by its terminal event alone
    )


def running(root: Path, session_id: str, day: float) -> None:
    """A session without a terminal event whose log changed just now."""
    write(
        root,
        session_id,
        factories.event(0, session_id, EventType.SESSION_STARTED, seconds=day * DAY),
        changed_days_ago=0,
    )


def ids(report: PruneReport) -> list[str]:
    return [session.session_id for session in report.removed]


class TestClassification:
    def test_terminal_events_end_a_session_at_their_time(self, tmp_path: Path) -> None:
        """session_completed, session_failed and session_aborted each end a session, at their
        timestamp, however recently its log changed."""
        ended(tmp_path, "done", 1)
        ended(tmp_path, "broke", 2, EventType.SESSION_FAILED)
        ended(tmp_path, "stopped", 3, EventType.SESSION_ABORTED)
        report = prune(tmp_path, now=NOW)
        assert [(s.session_id, s.status, s.ended_at) for s in report.removed] == [
            ("done", "completed", factories.at(DAY + 3600)),
            ("broke", "failed", factories.at(2 * DAY + 3600)),
            ("stopped", "aborted", factories.at(3 * DAY + 3600)),
        ]
        assert not any(tmp_path.iterdir())

    def test_a_log_unchanged_for_stale_days_ends_at_its_last_event(self, tmp_path: Path) -> None:
        """No terminal event, log untouched for 8 days (--stale is 7): ended at its last event."""
        write(
            tmp_path,
            "quiet",
            factories.event(0, "quiet", EventType.SESSION_STARTED, seconds=DAY),
            factories.event(1, "quiet", seconds=DAY + 60),
            changed_days_ago=8,
        )
        report = prune(tmp_path, now=NOW)
        assert [(s.session_id, s.status, s.ended_at) for s in report.removed] == [
            ("quiet", "stale", factories.at(DAY + 60))
        ]

    def test_stale_takes_the_number_of_days_given(self, tmp_path: Path) -> None:
        write(tmp_path, "quiet", factories.event(0, "quiet", seconds=DAY), changed_days_ago=2)
        assert ids(prune(tmp_path, now=NOW, dry_run=True)) == []
        assert ids(prune(tmp_path, now=NOW, stale=timedelta(days=1), dry_run=True)) == ["quiet"]

    def test_a_running_session_is_never_removed(self, tmp_path: Path) -> None:
        """No terminal event and a recent log: running, kept even with --max-bytes 0."""
        running(tmp_path, "live", 0)
        ended(tmp_path, "done", 1)
        report = prune(tmp_path, max_bytes=0, older_than=timedelta(0), now=NOW)
        assert ids(report) == ["done"]
        assert (tmp_path / "live" / "events.jsonl").exists()
        assert report.after > 0  # still over the limit: the running session stays

    def test_a_session_whose_log_a_writer_holds_is_running(self, tmp_path: Path) -> None:
        """A log still locked by its writer is running, even after session_completed."""
        log = EventLog(tmp_path / "busy" / "events.jsonl")
        log.append(factories.event(0, "busy", EventType.SESSION_COMPLETED, seconds=0))
        try:
            assert ids(prune(tmp_path, now=NOW)) == []
        finally:
            log.close()
        assert ids(prune(tmp_path, now=NOW)) == ["busy"]


class TestChoice:
    def test_oldest_end_goes_first(self, tmp_path: Path) -> None:
        """Order is by end time, not by name or start."""
        ended(tmp_path, "a", 5)
        ended(tmp_path, "b", 1)
        ended(tmp_path, "c", 3)
        assert ids(prune(tmp_path, now=NOW, dry_run=True)) == ["b", "c", "a"]

    def test_older_than_removes_only_sessions_that_ended_before(self, tmp_path: Path) -> None:
        ended(tmp_path, "old", 1)  # ended 29 days before NOW
        ended(tmp_path, "new", 25)  # 5 days
        report = prune(tmp_path, older_than=timedelta(days=10), now=NOW)
        assert ids(report) == ["old"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]

    def test_max_bytes_stops_once_the_workspace_is_under(self, tmp_path: Path) -> None:
        for day, session_id in enumerate(["a", "b", "c", "d"]):
            ended(tmp_path, session_id, day)
        each = sum(f.stat().st_size for f in (tmp_path / "a").rglob("*") if f.is_file())
        report = prune(tmp_path, max_bytes=2 * each, now=NOW)
        assert ids(report) == ["a", "b"]
        assert report.after <= 2 * each < report.after + each
        assert report.freed == report.before - report.after == 2 * each

    def test_both_limits_remove_the_older_then_more_until_under(self, tmp_path: Path) -> None:
        for day, session_id in enumerate(["a", "b", "c"]):
            ended(tmp_path, session_id, day + 20)
        size = prune(tmp_path, now=NOW, dry_run=True).before
        older = prune(
            tmp_path, older_than=timedelta(days=9.5), max_bytes=size, now=NOW, dry_run=True
        )
        assert ids(older) == ["a"]  # under the size already: only the old one
        both = prune(tmp_path, older_than=timedelta(days=9.5), max_bytes=0, now=NOW, dry_run=True)
        assert ids(both) == ["a", "b", "c"]

    def test_dry_run_removes_nothing(self, tmp_path: Path) -> None:
        ended(tmp_path, "a", 1)
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        report = prune(tmp_path, now=NOW, dry_run=True)
        assert report.dry_run
        assert ids(report) == ["a"]
        assert report.freed > 0
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before

    def test_a_missing_workspace_has_nothing_to_remove(self, tmp_path: Path) -> None:
        report = prune(tmp_path / "none", now=NOW)
        assert report == PruneReport(removed=(), freed=0, before=0, after=0)

    def test_negative_limits_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="max_bytes must be 0 or more"):
            prune(tmp_path, max_bytes=-1)
        with pytest.raises(ValueError, match="older_than must be 0 or more"):
            prune(tmp_path, older_than=timedelta(days=-1))


class TestSafety:
    def test_a_symlinked_session_directory_is_left_alone(self, tmp_path: Path) -> None:
        """A session directory that is a symlink (here to outside the root) is not removed,
        and neither is what it points to."""
        outside = tmp_path / "outside"
        root = tmp_path / "ws"
        ended(outside, "theirs", 1)
        root.mkdir()
        (root / "theirs").symlink_to(outside / "theirs")
        assert ids(prune(root, now=NOW)) == []
        assert (outside / "theirs" / "events.jsonl").exists()

    def test_a_symlink_inside_a_session_is_removed_not_its_target(self, tmp_path: Path) -> None:
        outside = tmp_path / "keep.txt"
        outside.write_text("mine")
        root = tmp_path / "ws"
        ended(root, "a", 1)
        (root / "a" / "link").symlink_to(outside)
        assert ids(prune(root, now=NOW)) == ["a"]
        assert not (root / "a").exists()
        assert outside.read_text() == "mine"

    def test_a_leftover_hidden_directory_is_finished(self, tmp_path: Path) -> None:
        """An interrupted prune leaves a hidden directory no reader lists; the next removes it."""
        (tmp_path / ".pruning-a-0000").mkdir()
        (tmp_path / ".pruning-a-0000" / "events.jsonl").write_text("")
        prune(tmp_path, now=NOW)
        assert list(tmp_path.iterdir()) == []

    def test_a_failure_is_reported_per_session(self, tmp_path: Path) -> None:
        ended(tmp_path, "a", 1)
        ended(tmp_path, "b", 2)
        real_rename = os.rename

        def rename(source: str, target: str) -> None:
            if source.endswith("a"):
                raise PermissionError(13, "Permission denied")
            real_rename(source, target)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "rename", rename)
            report = prune(tmp_path, now=NOW)
        assert ids(report) == ["b"]
        assert report.errors == {"a": "cannot rename it out of sight: Permission denied"}
        assert not report.ok
        assert (tmp_path / "a" / "events.jsonl").exists()


class TestWorkspacePrune:
    def test_workspace_prune_removes_and_forgets_the_sessions(self, tmp_path: Path) -> None:
        ended(tmp_path, "a", 1)
        running(tmp_path, "b", 2)
        with Workspace(tmp_path) as workspace:
            assert len(workspace.events(EventQuery())[0]) == 3
            report = workspace.prune(now=NOW)
            assert ids(report) == ["a"]
            assert workspace.session_ids() == ["b"]
            assert [e.session_id for e in workspace.events(EventQuery())[0]] == ["b"]

    def test_the_clock_is_the_default_now(self, tmp_path: Path) -> None:
        """Without ``now``: a log changed a moment ago is running; a stale one is ended."""
        write(tmp_path, "fresh", factories.event(0, "fresh"))
        path = write(tmp_path, "old", factories.event(0, "old", seconds=0))
        past = time.time() - 8 * DAY
        os.utime(path, (past, past))
        assert ids(prune(tmp_path, dry_run=True)) == ["old"]


class TestSegments:
    def test_a_log_in_segments_is_classified_and_removed_whole(self, tmp_path: Path) -> None:
        """The terminal event in a sealed segment ends the session; every segment is counted
        and removed."""
        done = factories.event(0, "seg", EventType.SESSION_COMPLETED, seconds=DAY)
        later = [factories.event(i, "seg", seconds=DAY + i) for i in range(1, 9)]

        async def main() -> None:
            sink = JsonlSink(tmp_path, segment_bytes=1)  # a segment per batch
            for event in [done, *later]:
                await sink.write([event])
            await sink.aclose()

        anyio.run(main)
        files = list((tmp_path / "seg").iterdir())
        assert len(files) == 9
        size = sum(f.stat().st_size for f in files)
        report = prune(tmp_path, now=NOW)
        assert [(s.session_id, s.status, s.ended_at) for s in report.removed] == [
            ("seg", "completed", factories.at(DAY))
        ]
        assert report.freed == report.before == size
        assert list(tmp_path.iterdir()) == []

    def test_a_stale_log_in_segments_ends_at_its_last_event(self, tmp_path: Path) -> None:
        """The live segment may be empty just after a seal: the last event is in a sealed one."""
        events = [factories.event(i, "seg", seconds=DAY + i) for i in range(3)]

        async def main() -> None:
            sink = JsonlSink(tmp_path, segment_bytes=1)
            for event in events:
                await sink.write([event])
            await sink.aclose()

        anyio.run(main)
        live = tmp_path / "seg" / "events.jsonl"
        live.write_bytes(b"")  # as if sealed just now (an empty live segment)
        moment = NOW.timestamp() - 8 * DAY
        os.utime(live, (moment, moment))
        report = prune(tmp_path, now=NOW, dry_run=True)
        assert [(s.status, s.ended_at) for s in report.removed] == [
            ("stale", factories.at(DAY + 1))
        ]
