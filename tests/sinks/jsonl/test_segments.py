"""Segments: a log written as sealed segments is read by every reader as one log, in order."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import factories
from eventbus import Event, EventBus, EventQuery, encode_event
from eventbus.cli._otel import export_logs
from eventbus.cli._relay import _recent_ids
from eventbus.coordinator._control import read_outcomes
from sinks._layout import sealed_names
from sinks._segments import LogFile, log_stat
from sinks.artifacts import SessionArtifactQuery
from sinks.index import EventIndex
from sinks.jsonl import EventLog, JsonlSink, LogLockedError, iter_log
from sinks.jsonl._write import LogWriter
from sinks.workspace import Workspace

SESSION = "s1"


def log_path(root: Path, session_id: str = SESSION) -> Path:
    return root / session_id / "events.jsonl"


def line_size(event: Event) -> int:
    return len(encode_event(event)) + 1


async def write(
    root: Path, events: Sequence[Event], segment_bytes: int | None, **options: object
) -> None:
    """Write ``events`` one batch each through a JsonlSink with ``segment_bytes``."""
    sink = JsonlSink(root, segment_bytes=segment_bytes, **options)  # type: ignore[arg-type]
    try:
        for event in events:
            await sink.write([event])
    finally:
        await sink.aclose()


def segments(root: Path, session_id: str = SESSION) -> list[str]:
    return sorted(p.name for p in (root / session_id).iterdir() if p.name.startswith("events"))


def ids(events: Sequence[Event]) -> list[str]:
    return [event.id for event in events]


def same_size(count: int, first: int = 0) -> list[Event]:
    """Events whose lines are all the same size (fixed-width messages and times)."""
    return [factories.event(i, message=f"{i:04d}", seconds=i) for i in range(first, first + count)]


@pytest.fixture
def events() -> list[Event]:
    return same_size(50)


@pytest.fixture
def sealed(tmp_path: Path, events: list[Event]) -> Path:
    """A workspace whose session ``s1`` was written as 5 segments of 10 events (one live)."""
    anyio.run(write, tmp_path, events, 10 * line_size(events[0]))
    return tmp_path


class TestWriter:
    def test_a_tiny_segment_size_writes_sealed_segments_then_the_live_file(
        self, sealed: Path, events: list[Event]
    ) -> None:
        assert segments(sealed) == [
            "events.000001.jsonl",
            "events.000002.jsonl",
            "events.000003.jsonl",
            "events.000004.jsonl",
            "events.jsonl",
        ]
        limit = 10 * line_size(events[0])
        sizes = [(sealed / SESSION / name).stat().st_size for name in segments(sealed)]
        assert sizes == [limit] * 5

    def test_a_plain_sort_of_the_sealed_names_is_their_order(self) -> None:
        """Six digits: 000010 sorts after 000009 (no reader orders segments by time)."""
        names = [f"events.{n:06d}.jsonl" for n in (10, 2, 9, 1)]
        assert sorted(names) == [f"events.{n:06d}.jsonl" for n in (1, 2, 9, 10)]

    def test_the_default_writes_one_file(self, tmp_path: Path, events: list[Event]) -> None:
        anyio.run(write, tmp_path, events, JsonlSink(tmp_path).segment_bytes)
        assert segments(tmp_path) == ["events.jsonl"]

    def test_none_never_seals(self, tmp_path: Path, events: list[Event]) -> None:
        anyio.run(write, tmp_path, events, None)
        assert segments(tmp_path) == ["events.jsonl"]

    def test_a_bad_segment_size_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="segment_bytes must be a number of bytes >= 1"):
            JsonlSink(tmp_path, segment_bytes=0)

    def test_a_batch_bigger_than_a_segment_makes_one_segment(self, tmp_path: Path) -> None:
        """Lines never split across segments: an oversized batch is one bigger segment."""
        batch = factories.events(20)

        async def main() -> None:
            sink = JsonlSink(tmp_path, segment_bytes=100)
            await sink.write(batch[:10])
            await sink.write(batch[10:])
            await sink.aclose()

        anyio.run(main)
        assert segments(tmp_path) == ["events.000001.jsonl", "events.jsonl"]
        assert ids(EventLog(log_path(tmp_path)).get_events()) == ids(batch)

    def test_the_lock_holds_across_a_seal(self, tmp_path: Path) -> None:
        """After sealing, the new live file is already locked: another writer is refused."""
        batch = factories.events(10)

        async def main() -> None:
            sink = JsonlSink(tmp_path, segment_bytes=3 * line_size(batch[0]))
            for event in batch:
                await sink.write([event])
            assert len(segments(tmp_path)) > 1
            with pytest.raises(LogLockedError, match="another writer"):
                EventLog(log_path(tmp_path), lock_timeout=0).append(factories.event(99))
            await sink.aclose()

        anyio.run(main)

    def test_a_writer_continues_the_numbering_and_the_offsets(
        self, sealed: Path, events: list[Event]
    ) -> None:
        more = same_size(20, 50)
        anyio.run(write, sealed, more, 10 * line_size(events[0]))
        assert segments(sealed)[-3:] == [
            "events.000005.jsonl",
            "events.000006.jsonl",
            "events.jsonl",
        ]
        offsets = [offset for _, offset, _ in iter_log(log_path(sealed))]
        sizes = [length for _, _, length in iter_log(log_path(sealed))]
        assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]

    def test_an_interrupted_seal_is_read_once_and_finished_by_the_next_writer(
        self, tmp_path: Path, events: list[Event]
    ) -> None:
        """A crash between linking and replacing leaves the live file under two names."""
        path = log_path(tmp_path)
        with EventLog(path) as log:
            for event in events[:5]:
                log.append(event)
        os.link(path, path.with_name("events.000001.jsonl"))
        assert ids(EventLog(path).get_events()) == ids(events[:5])
        assert [e.id for e, _, _ in iter_log(path)] == ids(events[:5])
        with EventLog(path) as log:
            log.append(events[5])
        assert path.stat().st_ino != path.with_name("events.000001.jsonl").stat().st_ino
        assert ids(EventLog(path).get_events()) == ids(events[:6])

    def test_clear_removes_every_segment(self, sealed: Path) -> None:
        log = EventLog(log_path(sealed))
        log.clear()
        log.close()
        assert segments(sealed) == ["events.jsonl"]
        assert EventLog(log_path(sealed)).count() == 0

    def test_on_written_places_stay_valid_after_seals(self, tmp_path: Path) -> None:
        """A low-memory index fed by on_written reads every event back across seals."""
        index = EventIndex(low_memory=True)
        batch = factories.events(30)
        anyio.run(
            lambda: write(tmp_path, batch, 4 * line_size(batch[0]), on_written=index.add_located)
        )
        assert len(segments(tmp_path)) > 5
        assert ids(index.query(EventQuery())) == ids(batch)


class TestReaders:
    def test_event_log_reads_every_segment_in_order(
        self, sealed: Path, events: list[Event]
    ) -> None:
        log = EventLog(log_path(sealed))
        assert ids(log.get_events()) == ids(events)
        assert log.count() == 50
        assert ids(log.get_latest(15)) == ids(events[-15:])

    def test_event_log_without_cache_reads_every_segment(
        self, sealed: Path, events: list[Event]
    ) -> None:
        log = EventLog(log_path(sealed), cache=False)
        assert ids(log.get_events()) == ids(events)
        assert ids(log.get_latest(25)) == ids(events[-25:])

    def test_event_log_appends_after_the_segments(self, sealed: Path, events: list[Event]) -> None:
        extra = factories.event(50)
        with EventLog(log_path(sealed), cache=False) as log:
            log.append(extra)
            assert ids(log.get_events()) == [*ids(events), extra.id]

    def test_iter_log_yields_log_offsets_across_segments(
        self, sealed: Path, events: list[Event]
    ) -> None:
        read = list(iter_log(log_path(sealed)))
        assert [event.id for event, _, _ in read] == ids(events)
        data = b"".join(
            (sealed / SESSION / name).read_bytes() for name in segments(sealed)
        )  # the segments in name order are the log
        for event, offset, length in read:
            assert data[offset : offset + length] == encode_event(event) + b"\n"

    @pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "index-free"])
    def test_workspace_reads_every_segment(
        self, sealed: Path, events: list[Event], indexed: bool
    ) -> None:
        with Workspace(sealed, index=indexed) as workspace:
            found, _ = workspace.events(EventQuery())
            assert ids(found) == ids(events)
            after, _ = workspace.events(EventQuery(), after=events[5].id)  # in segment 1
            assert ids(after) == ids(events[6:])
            assert ids(workspace.latest(12, EventQuery())) == ids(events[-12:])
            assert workspace.sessions()[0]["event_count"] == 50

    def test_an_indexed_workspace_follows_seals_without_reading_twice(self, tmp_path: Path) -> None:
        """Sealing keeps the log's identity: the index reads only what was added."""
        batch = factories.events(40)
        size = 5 * line_size(batch[0])
        anyio.run(write, tmp_path, batch[:12], size)
        with Workspace(tmp_path) as workspace:
            assert ids(workspace.events(EventQuery())[0]) == ids(batch[:12])
            index = workspace._index
            anyio.run(write, tmp_path, batch[12:], size)
            assert ids(workspace.events(EventQuery())[0]) == ids(batch)
            assert workspace._index is index  # not rebuilt

    def test_a_reader_with_the_live_file_open_goes_on_into_the_next_segment(
        self, tmp_path: Path
    ) -> None:
        batch = factories.events(20)
        size = 5 * line_size(batch[0])
        anyio.run(write, tmp_path, batch[:3], size)
        log = LogFile.open(os.fspath(log_path(tmp_path)))
        assert log is not None
        with log:
            anyio.run(write, tmp_path, batch[3:], size)  # seals the file it has open, and more
            data = log.pread(1 << 20, 0)
        assert data.decode().splitlines() == [encode_event(e).decode() for e in batch]
        assert sealed_names(os.fspath(tmp_path / SESSION), "events.jsonl")

    def test_a_seed_format_log_still_loads(self, tmp_path: Path, events: list[Event]) -> None:
        path = log_path(tmp_path)
        path.parent.mkdir()
        path.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
        assert ids(EventLog(path).get_events()) == ids(events)
        with Workspace(tmp_path) as workspace:
            assert ids(workspace.events(EventQuery())[0]) == ids(events)


@pytest.mark.anyio
async def test_follow_sees_every_event_once_while_sealing_happens(tmp_path: Path) -> None:
    """Following a session while its writer seals every few events: each event once, in order."""
    batch = factories.events(60)
    size = 4 * line_size(batch[0])
    got: list[str] = []
    with Workspace(tmp_path) as workspace:
        async with EventBus() as bus:
            bus.subscribe(JsonlSink(tmp_path, segment_bytes=size))
            await bus.publish(batch[0])
            await bus.flush()

            async def collect() -> None:
                async with aclosing(workspace.follow(session_id=SESSION)) as followed:
                    async for event in followed:
                        got.append(event.id)
                        if len(got) == len(batch):
                            return

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(collect)
                    for event in batch[1:]:
                        await bus.publish(event)
                        await bus.flush()
    assert got == ids(batch)
    assert len(segments(tmp_path)) > 10


@pytest.mark.anyio
async def test_follow_resumes_after_an_id_in_an_earlier_segment(tmp_path: Path) -> None:
    """The SSE resume path: ``follow(after=id)`` with the id in a sealed segment."""
    batch = factories.events(30)
    await write(tmp_path, batch, 4 * line_size(batch[0]))
    got: list[str] = []
    with Workspace(tmp_path) as workspace:
        with anyio.fail_after(10):
            async with aclosing(workspace.follow(session_id=SESSION, after=batch[2].id)) as found:
                async for event in found:
                    got.append(event.id)
                    if len(got) == len(batch) - 3:
                        break
    assert got == ids(batch[3:])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    segment_bytes=st.integers(min_value=1, max_value=4000),
    batches=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=12),
    message_sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=5),
)
def test_any_segment_size_reads_back_every_event_once_in_order(
    tmp_path_factory: pytest.TempPathFactory,
    segment_bytes: int,
    batches: list[int],
    message_sizes: list[int],
) -> None:
    root = tmp_path_factory.mktemp("ws")
    written: list[Event] = []

    async def main() -> None:
        sink = JsonlSink(root, segment_bytes=segment_bytes)
        n = 0
        for count in batches:
            batch = [
                factories.event(n + i, message="x" * message_sizes[(n + i) % len(message_sizes)])
                for i in range(count)
            ]
            n += count
            written.extend(batch)
            await sink.write(batch)
        await sink.aclose()

    anyio.run(main)
    expected = ids(written)
    assert ids(EventLog(log_path(root)).get_events()) == expected
    assert ids(EventLog(log_path(root), cache=False).get_events()) == expected
    assert [event.id for event, _, _ in iter_log(log_path(root))] == expected
    for indexed in (True, False):
        with Workspace(root, index=indexed) as workspace:
            assert ids(workspace.events(EventQuery())[0]) == expected


def test_the_coordinator_reads_command_outcomes_from_every_segment(tmp_path: Path) -> None:
    """A restarted session finds a command applied in a sealed segment (applied once per id)."""
    applied = factories.event(
        0,
        event_type="control_applied",
        seconds=0,
        metadata={"command_id": "c1", "kind": "pause"},
    )
    batch = [applied, *same_size(20, 1)]
    anyio.run(write, tmp_path, batch, 3 * line_size(batch[1]))
    assert len(segments(tmp_path)) > 3
    outcomes = read_outcomes(os.fspath(log_path(tmp_path)))
    assert list(outcomes) == ["c1"]
    assert outcomes["c1"].status == "applied"


def test_reading_many_segments_holds_three_files_open(tmp_path: Path) -> None:
    """The first segment, the live file and one more are open at once, however many there are."""
    batch = same_size(200)
    anyio.run(write, tmp_path, batch, line_size(batch[0]))
    assert len(segments(tmp_path)) == 200
    before = len(os.listdir("/proc/self/fd"))
    most = 0
    for _ in iter_log(log_path(tmp_path)):
        most = max(most, len(os.listdir("/proc/self/fd")) - before)
    assert most <= 3


def test_a_sealed_segment_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    """Segments are regular files the writer made: a symlink among them refuses the log."""
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(encode_event(factories.event(9)) + b"\n")
    root = tmp_path / "ws"
    anyio.run(write, root, same_size(3), None)
    (root / SESSION / "events.000001.jsonl").symlink_to(outside)
    with pytest.raises(FileNotFoundError, match="a segment is not a file"):
        list(iter_log(log_path(root)))
    with Workspace(root) as workspace:
        assert workspace.events(EventQuery())[0] == []


def test_export_otel_and_the_relay_cursor_read_every_segment(
    sealed: Path, events: list[Event]
) -> None:
    """``eventbus export-otel`` feeds every segment's events; the relay's recent ids (its
    guard against redeliveries) are the last events across segments."""

    class Collect:
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def export(self, batch: Sequence[Event]) -> int:
            self.seen += ids(batch)
            return len(batch)

    collect = Collect()
    counts = anyio.run(export_logs, sealed, [SESSION], collect)  # type: ignore[arg-type]
    assert counts == {SESSION: 50}
    assert collect.seen == ids(events)
    assert _recent_ids(sealed, 15) == ids(events[-15:])


def test_a_log_cleared_and_sealed_again_is_read_anew(sealed: Path, events: list[Event]) -> None:
    """Sealed segments' sizes are remembered per log; a cleared log's new segments are not
    mistaken for the old ones (same names, other files)."""
    with Workspace(sealed) as workspace:
        assert ids(workspace.events(EventQuery())[0]) == ids(events)
        log = EventLog(log_path(sealed))
        log.clear()
        log.close()
        fresh = same_size(50, 100)
        anyio.run(write, sealed, fresh, 10 * line_size(events[0]))
        assert len(segments(sealed)) == 5
        assert ids(workspace.events(EventQuery())[0]) == ids(fresh)
    assert ids(EventLog(log_path(sealed)).get_events()) == ids(fresh)


def test_a_session_starts_at_the_first_event_of_its_first_segment(
    sealed: Path, events: list[Event]
) -> None:
    """Without a run_summary, a session is dated by its log's first event (in a sealed one)."""
    created = SessionArtifactQuery(sealed).get_session_created_at(SESSION)
    assert created == events[0].timestamp.timestamp()
    with Workspace(sealed) as workspace:
        assert [row["session_id"] for row in workspace.sessions(since=events[0].timestamp)] == [
            SESSION
        ]


def test_without_hard_links_the_log_grows_as_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file system that refuses os.link: sealing stops (said once), nothing is lost."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    batch = same_size(10)
    anyio.run(write, tmp_path, batch, 2 * line_size(batch[0]))
    assert segments(tmp_path) == ["events.jsonl"]
    assert ids(EventLog(log_path(tmp_path)).get_events()) == ids(batch)
    assert [
        r.getMessage().split(": ", 1)[1] for r in caplog.records if "seal" in r.getMessage()
    ] == [
        "cannot seal it into events.000001.jsonl (Operation not permitted): it grows as one "
        "file from now on"
    ]


def test_a_sealed_name_taken_meanwhile_is_skipped(tmp_path: Path) -> None:
    """A file made under the next sealed name while the sink writes: sealing takes the next."""
    batch = same_size(6)

    async def main() -> None:
        sink = JsonlSink(tmp_path, segment_bytes=2 * line_size(batch[0]))
        await sink.write(batch[:1])
        (tmp_path / SESSION / "events.000001.jsonl").write_bytes(b"")
        for event in batch[1:]:
            await sink.write([event])
        await sink.aclose()

    anyio.run(main)
    assert segments(tmp_path)[:3] == [
        "events.000001.jsonl",
        "events.000002.jsonl",
        "events.000003.jsonl",
    ]
    assert (tmp_path / SESSION / "events.000001.jsonl").stat().st_size == 0
    assert ids(EventLog(log_path(tmp_path)).get_events()) == ids(batch)


def test_readers_racing_a_writer_that_seals_see_a_prefix_of_the_log(tmp_path: Path) -> None:
    """A writer thread seals every two events while readers open and read the log again and
    again, and one reader keeps its LogFile open: every read is the log's start, in order."""
    batch = same_size(300)
    lines = [encode_event(e) + b"\n" for e in batch]
    whole = b"".join(lines)
    path = log_path(tmp_path)
    writer = LogWriter.open(path, durability="flush", strict=False, segment_bytes=2 * len(lines[0]))
    done = threading.Event()
    problems: list[str] = []

    def write_all() -> None:
        try:
            for line in lines:
                writer.write(line, 1)
        finally:
            writer.close()
            done.set()

    def check(data: bytes, where: str) -> None:
        if not whole.startswith(data):
            problems.append(f"{where}: {len(data)} bytes that are not the log's start")

    thread = threading.Thread(target=write_all)
    thread.start()
    kept = LogFile.open(os.fspath(path))
    assert kept is not None
    try:
        while not done.is_set():
            fresh = LogFile.open(os.fspath(path))
            if fresh is not None:
                with fresh:
                    check(fresh.pread(len(whole), 0), "a new reader")
            check(kept.pread(len(whole), 0), "the kept reader")
        thread.join()
        check(kept.pread(len(whole), 0), "the kept reader")
        assert kept.pread(len(whole), 0) == whole
    finally:
        kept.close()
    assert problems == []
    assert len(segments(tmp_path)) == 150


def test_log_stat_notices_a_seal_in_a_directory_it_remembered(tmp_path: Path) -> None:
    """log_stat skips listing a settled directory whose live file is unchanged; a seal
    replaces the live file and changes the directory, so it lists again."""
    batch = same_size(12)
    size = 4 * line_size(batch[0])
    anyio.run(write, tmp_path, batch[:6], size)
    directory = tmp_path / SESSION
    past = time.time() - 10
    os.utime(directory, (past, past))
    path = os.fspath(log_path(tmp_path))
    first = log_stat(path)
    assert first is not None
    assert log_stat(path) == first  # remembered: the same answer
    anyio.run(write, tmp_path, batch[6:], size)
    total = sum(p.stat().st_size for p in directory.iterdir())
    assert log_stat(path) == (first[0], total)
