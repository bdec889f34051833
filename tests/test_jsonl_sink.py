"""JsonlSink: per-session logs fed by a real EventBus, batching, bounds and durability."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from eventbus import (
    Event,
    EventBatch,
    EventBus,
    EventBusError,
    EventType,
    InvalidNameError,
    MemorySink,
    PartialWriteError,
    RetryPolicy,
    encode_event,
    validate_session_id,
)
from sinks.jsonl import EventLog, JsonlSink, LogLockedError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

pytestmark = pytest.mark.anyio

NO_RETRY = RetryPolicy(retries=0)


def make_event(index: int, session_id: str = "s1", **fields: object) -> Event:
    return Event(
        event_type=EventType.INFO,
        session_id=session_id,
        message=f"event {index}",
        parent_id=None,
        **fields,  # type: ignore[arg-type]
    )


def logged(root: Path, session_id: str) -> list[Event]:
    """The events in a session's log, read like any reader would."""
    return EventLog(root / session_id / "events.jsonl").get_events()


def files_under(directory: Path) -> list[str]:
    """Every path under ``directory``, relative to it."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


async def publish_all(bus: EventBus, events: list[Event]) -> None:
    """Publish a burst (no await between events, so the bus batches it) and flush."""
    for event in events:
        bus.publish_nowait(event)
    await bus.flush()


class WriteSpy:
    """Wraps ``os.write``, recording the payloads that look like events of a session."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.payloads: list[bytes] = []
        self.fail_next: Callable[[bytes], bool] | None = None
        self._write = os.write
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data: ReadableBuffer) -> int:
        payload = bytes(data)
        if b'"session_id":' in payload:
            self.payloads.append(payload)
            if self.fail_next is not None and self.fail_next(payload):
                self.fail_next = None
                self._write(
                    fd, payload[: len(payload) // 2]
                )  # a partial write, then the disk fills
                raise OSError(errno.ENOSPC, "No space left on device")
        return self._write(fd, data)

    def count(self, session_id: str) -> int:
        marker = f'"session_id":"{session_id}"'.encode()
        return sum(marker in payload for payload in self.payloads)


class FsyncSpy:
    """Wraps ``os.fsync``, recording whether each fsynced fd was a file or a directory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files = 0
        self.directories: list[int] = []  # inode numbers
        self._fsync = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            self.directories.append(status.st_ino)
        else:
            self.files += 1
        self._fsync(fd)


async def test_events_are_routed_to_their_session_log(tmp_path: Path) -> None:
    """Each event lands in {root}/{session_id}/events.jsonl, in publish order."""
    events = [make_event(i, session_id=f"s{i % 3}") for i in range(30)]
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        await publish_all(bus, events)
    for session in ("s0", "s1", "s2"):
        assert logged(tmp_path, session) == [e for e in events if e.session_id == session]


async def test_one_write_per_session_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch costs one write per session in it, not one per event."""
    spy = WriteSpy(monkeypatch)
    sink = JsonlSink(tmp_path)
    async with EventBus() as bus:
        bus.subscribe(sink)
        await publish_all(bus, [make_event(i, session_id=f"s{i % 2}") for i in range(500)])
    batches = sink.stats().batches
    assert batches < 50
    assert (spy.count("s0"), spy.count("s1")) == (batches, batches)


async def test_each_file_is_opened_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are opened once per session, never per event or per batch."""
    opened: list[str] = []
    real_open = os.open

    def spy_open(path: str | os.PathLike[str], flags: int, *args: int, **kw: int) -> int:
        if os.fspath(path).endswith("events.jsonl"):
            opened.append(os.fspath(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", spy_open)
    sink = JsonlSink(tmp_path)
    for start in range(0, 100, 10):
        await sink.write([make_event(i, session_id=f"s{i % 2}") for i in range(start, start + 10)])
    await sink.aclose()
    assert sorted(opened) == [os.fspath(tmp_path / s / "events.jsonl") for s in ("s0", "s1")]


async def test_open_files_are_bounded_and_evicted_files_unlocked(tmp_path: Path) -> None:
    """Beyond max_open_files the least recently used file is closed, releasing its lock."""
    sink = JsonlSink(tmp_path, max_open_files=2)
    for index in range(5):
        await sink.write([make_event(index, session_id=f"s{index}")])
    stats = sink.stats()
    assert (stats.open_files, stats.opened, stats.evicted) == (2, 5, 3)
    with EventLog(tmp_path / "s0" / "events.jsonl") as evicted:
        evicted.append(make_event(99, session_id="s0"))
    s4 = EventLog(tmp_path / "s4" / "events.jsonl", lock_timeout=0)
    with pytest.raises(LogLockedError, match="s4"):
        s4.append(make_event(99, session_id="s4"))
    await sink.aclose()


async def test_evicted_file_is_reopened_for_later_events(tmp_path: Path) -> None:
    """An evicted session's next events are appended after its earlier ones."""
    sink = JsonlSink(tmp_path, max_open_files=1)
    first, second = make_event(0, session_id="a"), make_event(2, session_id="a")
    await sink.write([first])
    await sink.write([make_event(1, session_id="b")])
    await sink.write([second])
    await sink.aclose()
    assert logged(tmp_path, "a") == [first, second]


async def test_flush_mode_events_are_readable_when_flush_returns(tmp_path: Path) -> None:
    """In "flush" mode a returned bus.flush() means the events are in the file."""
    events = [make_event(i) for i in range(10)]
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path, durability="flush"))
        await publish_all(bus, events)
        assert logged(tmp_path, "s1") == events


async def test_none_mode_writes_when_the_sink_closes(tmp_path: Path) -> None:
    """In "none" mode small batches wait in memory until the sink is closed."""
    events = [make_event(i) for i in range(10)]
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path, durability="none"))
        await publish_all(bus, events)
        assert logged(tmp_path, "s1") == []
    assert logged(tmp_path, "s1") == events


async def test_fsync_mode_fsyncs_once_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In "fsync" mode each batch costs one fsync of the file, not one per event."""
    spy = FsyncSpy(monkeypatch)
    sink = JsonlSink(tmp_path, durability="fsync")
    async with EventBus() as bus:
        bus.subscribe(sink)
        await publish_all(bus, [make_event(i) for i in range(300)])
        await publish_all(bus, [make_event(i) for i in range(300, 600)])
    assert spy.files == sink.stats().batches
    assert sink.stats().events == 600


async def test_fsync_mode_fsyncs_the_directory_of_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new session's directory entries are fsynced; reopening an existing file fsyncs none."""
    spy = FsyncSpy(monkeypatch)
    root = tmp_path / "workspace"
    root.mkdir()
    sink = JsonlSink(root, durability="fsync")
    await sink.write([make_event(0)])
    await sink.aclose()
    session_dir = root / "s1"
    assert sorted(spy.directories) == sorted([root.stat().st_ino, session_dir.stat().st_ino])
    spy.directories.clear()
    reopened = JsonlSink(root, durability="fsync")
    await reopened.write([make_event(1)])
    await reopened.aclose()
    assert spy.directories == []


@pytest.mark.parametrize(
    ("session_id", "reason"),
    [
        pytest.param("../escape", "path separator", id="parent"),
        pytest.param("a/b", "path separator", id="slash"),
        pytest.param("a\\b", "path separator", id="backslash"),
        pytest.param("..", "'..'", id="dotdot"),
        pytest.param("a..b", "'..'", id="inner-dotdot"),
        pytest.param(".hidden", "starts with '.'", id="leading-dot"),
        pytest.param("", "empty", id="empty"),
        pytest.param("a\x00b", "non-printable character", id="nul"),
        pytest.param("a\nb", "non-printable character", id="newline"),
        pytest.param("x" * 256, "256 bytes", id="too-long"),
        pytest.param("é" * 128, "256 bytes", id="too-long-utf8"),
        pytest.param("\ud800", "non-printable character", id="surrogate"),
    ],
)
def test_invalid_session_ids_are_rejected(session_id: str, reason: str) -> None:
    """Session ids that could escape the root or not name a directory raise ValueError."""
    with pytest.raises(InvalidNameError, match=f"invalid session id .*{re.escape(reason)}"):
        validate_session_id(session_id)


def test_valid_session_ids_are_accepted() -> None:
    """Ordinary ids, including dots, dashes and non-ASCII letters, are valid."""
    for session_id in ("session-1", "2025-01-01_run.3", "sessão", "x" * 255):
        assert validate_session_id(session_id) == session_id


async def test_path_traversal_fails_the_batch_and_writes_nothing(tmp_path: Path) -> None:
    """A batch with an escaping session id fails as a whole; nothing is written anywhere.

    The bus refuses such an event at publish time; this is the sink's own
    guard, for batches that reach it another way.
    """
    sink = JsonlSink(tmp_path / "workspace")
    batch = [make_event(0, session_id="fine"), make_event(1, session_id="../escape")]
    with pytest.raises(InvalidNameError, match=re.escape("invalid session id '../escape'")):
        await sink.write(batch)
    await sink.aclose()
    assert files_under(tmp_path) == []


async def test_bus_refuses_an_escaping_session_id_before_any_sink(tmp_path: Path) -> None:
    """Publishing the event raises; the sink keeps working for other sessions."""
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path / "workspace"), retry=NO_RETRY)
        with pytest.raises(InvalidNameError, match=re.escape("contains '..'")):
            bus.publish_nowait(make_event(1, session_id="../escape"))
        bus.publish_nowait(make_event(0, session_id="fine"))
    assert [e.message for e in logged(tmp_path / "workspace", "fine")] == ["event 0"]
    assert not (tmp_path / "escape").exists()


async def test_second_sink_on_the_same_log_is_refused(tmp_path: Path) -> None:
    """Two sinks cannot write one session's log; the error names the session and the file."""
    first, second = JsonlSink(tmp_path), JsonlSink(tmp_path, lock_timeout=0)
    await first.write([make_event(0)])
    with pytest.raises(PartialWriteError, match="session 's1'") as caught:
        await second.write([make_event(1)])
    assert isinstance(caught.value.failures["s1"], LogLockedError)
    assert os.fspath(tmp_path / "s1") in str(caught.value.failures["s1"])
    await first.aclose()
    await second.write([make_event(2)])
    await second.aclose()
    assert [e.message for e in logged(tmp_path, "s1")] == ["event 0", "event 2"]


async def test_torn_line_is_cut_and_announced_on_the_bus(tmp_path: Path) -> None:
    """Opening a log with a torn last line cuts it and publishes a WARNING event."""
    old = make_event(0)
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "events.jsonl").write_bytes(encode_event(old) + b'\n{"torn')
    watcher = MemorySink()
    async with EventBus() as bus:
        sink = JsonlSink(tmp_path, on_recovery=bus.publish_nowait)
        bus.subscribe(sink)
        bus.subscribe(watcher)
        new = make_event(1)
        await bus.publish(new)
        await bus.flush()
        await bus.flush()  # the warning was published during the first write
    (report,) = sink.recoveries
    assert (report.torn_offset, report.torn_bytes, report.torn_cut) == (
        len(encode_event(old)) + 1,
        6,
        True,
    )
    warning = watcher.events[-1]
    assert warning.event_type == EventType.WARNING
    assert warning.metadata["recovery"]["torn_bytes"] == 6
    assert logged(tmp_path, "s1") == [old, new, warning]


async def test_failing_announcement_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_recovery callback that raises does not fail the write."""

    def refuse(event: Event) -> None:
        raise RuntimeError("dashboard down")

    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "events.jsonl").write_bytes(b'{"torn')
    sink = JsonlSink(tmp_path, on_recovery=refuse)
    with caplog.at_level(logging.ERROR, logger="eventbus.sinks.jsonl"):
        await sink.write([make_event(0)])
    await sink.aclose()
    assert "on_recovery failed" in caplog.text
    assert len(sink.recoveries) == 1


async def test_failed_write_is_cut_off_so_the_retry_does_not_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half way is truncated; the bus's retry writes each event once."""
    spy = WriteSpy(monkeypatch)
    spy.fail_next = lambda payload: True
    events = [make_event(i) for i in range(20)]
    async with EventBus(retry=RetryPolicy(retries=2, initial_delay=0)) as bus:
        bus.subscribe(JsonlSink(tmp_path))
        await publish_all(bus, events)
        assert bus.stats().subscriptions[0].retries == 1
    assert logged(tmp_path, "s1") == events


async def test_retry_skips_sessions_the_failed_attempt_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one session of a batch fails, the retry does not write the others again."""
    spy = WriteSpy(monkeypatch)
    spy.fail_next = lambda payload: b'"session_id":"s2"' in payload
    events = [make_event(i, session_id=f"s{1 + i % 2}") for i in range(20)]
    async with EventBus(retry=RetryPolicy(retries=2, initial_delay=0)) as bus:
        bus.subscribe(JsonlSink(tmp_path))
        await publish_all(bus, events)
    assert logged(tmp_path, "s1") == events[0::2]
    assert logged(tmp_path, "s2") == events[1::2]


async def test_batch_lines_are_written_without_re_encoding(tmp_path: Path) -> None:
    """The sink writes the bus's encoding of each event as it is."""
    events = [make_event(0), make_event(1)]
    lines = [b" " + encode_event(event) for event in events]  # a recognisable encoding
    sink = JsonlSink(tmp_path)
    await sink.write(EventBatch(events, lines))
    await sink.aclose()
    assert (tmp_path / "s1" / "events.jsonl").read_bytes() == b"\n".join(lines) + b"\n"


async def test_write_after_aclose_raises(tmp_path: Path) -> None:
    """A closed sink refuses further writes."""
    sink = JsonlSink(tmp_path)
    await sink.aclose()
    with pytest.raises(EventBusError, match="JsonlSink is closed"):
        await sink.write([make_event(0)])


async def test_writes_do_not_block_the_event_loop(tmp_path: Path) -> None:
    """File I/O runs in a worker thread: other tasks run while a write is in progress."""
    ran = anyio.Event()
    sink = JsonlSink(tmp_path, durability="fsync")

    async def other_task() -> None:
        ran.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(sink.write, [make_event(i) for i in range(1000)])
            group.start_soon(other_task)
        await sink.aclose()
    assert ran.is_set()
    assert len(logged(tmp_path, "s1")) == 1000


async def test_on_written_reports_where_each_event_was_written(tmp_path: Path) -> None:
    """on_written gets (events, path, offsets, lengths) that locate each line in its file."""
    calls: list[tuple[list[Event], Path, list[int], list[int]]] = []

    def record(
        events: Sequence[Event], path: Path, offsets: Sequence[int], lengths: Sequence[int]
    ) -> None:
        calls.append((list(events), path, list(offsets), list(lengths)))

    events = [make_event(i, session_id=f"s{i % 2}") for i in range(20)]
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path, on_written=record))
        await publish_all(bus, events[:10])
        await publish_all(bus, events[10:])
    located = {}
    for written, path, offsets, lengths in calls:
        data = path.read_bytes()
        for event, offset, length in zip(written, offsets, lengths, strict=True):
            located[event.id] = data[offset : offset + length]
    assert located == {event.id: encode_event(event) + b"\n" for event in events}


def test_on_written_is_refused_in_none_mode(tmp_path: Path) -> None:
    """Buffered lines cannot be located on disk, so "none" mode refuses on_written."""
    with pytest.raises(ValueError, match="on_written needs durability 'flush' or 'fsync'"):
        JsonlSink(tmp_path, durability="none", on_written=lambda *located: None)
