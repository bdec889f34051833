"""JsonlSink and the log writer under faults: full disks, I/O errors, deleted files, bad sessions,
too many open files, fork, FIFOs and devices, symlinks.

Faults are real where they can be: a small tmpfs fills up, files and directories are deleted
and replaced under a running sink, the process's file limit is lowered, a child is forked.
Only EIO (and a failing cut-back) is injected by wrapping ``os`` functions.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.from_thread
import pytest

from eventbus import (
    Event,
    EventBatch,
    EventBus,
    EventsLostError,
    EventType,
    MemorySink,
    PartialWriteError,
    RetryPolicy,
    SinkFailedError,
    encode_event,
)
from factories import event as make_event
from sinks.jsonl import (
    EventLog,
    JsonlSink,
    LogLockedError,
    NotARegularFileError,
    UnsafeSymlinkError,
    iter_log,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

T = TypeVar("T")

ONE_RETRY = RetryPolicy(retries=1, initial_delay=0)


def logged(root: Path, session_id: str) -> list[Event]:
    """The events in a session's log, read like any reader would."""
    return EventLog(root / session_id / "events.jsonl").get_events()


async def publish_all(bus: EventBus, events: list[Event]) -> None:
    """Publish a burst (no await between events, so the bus hands it over as one batch)."""
    for event in events:
        bus.publish_nowait(event)
    await bus.flush()


def fill(disk: Path) -> None:
    """Write a file on ``disk`` until the disk is full."""
    with open(disk / "filler", "wb", buffering=0) as filler:
        while True:
            try:
                filler.write(b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def bounded(function: Callable[[], T], timeout: float = 10) -> T:
    """Run ``function`` in a thread; fail (instead of hanging the suite) if it blocks."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{function} still blocked after {timeout}s")
    if failure:
        raise failure[0]
    return outcome[0]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, so a disk can fill up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", os.fspath(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", os.fspath(mount_point)], check=True)


class FailingWrites:
    """Wraps ``os.write``: the write of a chosen payload writes half of it, then raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: int = errno.EIO) -> None:
        self.error = error
        self.marker: bytes | None = None
        self._write = os.write
        monkeypatch.setattr(os, "write", self)

    def fail_next(self, marker: bytes) -> None:
        self.marker = marker

    def __call__(self, fd: int, data: ReadableBuffer) -> int:
        payload = bytes(data)
        if self.marker is not None and self.marker in payload:
            self.marker = None
            self._write(fd, payload[: len(payload) // 2])
            raise OSError(self.error, os.strerror(self.error))
        return self._write(fd, data)


# --- 1. "none" mode: a buffer that cannot be written is reported lost -----------------


@pytest.mark.anyio
async def test_full_disk_on_aclose_reports_the_buffered_events_lost(small_disk: Path) -> None:
    """A "none" buffer that a full disk refuses at aclose raises EventsLostError with its count."""
    sink = JsonlSink(small_disk / "ws", durability="none")
    await sink.write([make_event(i) for i in range(7)])
    fill(small_disk)
    with pytest.raises(EventsLostError, match=r"^7 acknowledged events could not be written"):
        await sink.aclose()
    stats = sink.stats()
    assert (stats.lost, stats.failed, stats.healthy) == (7, True, False)
    assert (small_disk / "ws" / "s1" / "events.jsonl").read_bytes() == b""


@pytest.mark.anyio
async def test_full_disk_when_the_buffer_fills_fails_the_sink_on_the_bus(small_disk: Path) -> None:
    """A buffer flush refused by a full disk fails the sink: flush raises, stats are unhealthy."""
    root = small_disk / "ws"
    sink = JsonlSink(root, durability="none")

    async def overflow_the_buffer() -> None:
        async with EventBus(retry=ONE_RETRY) as bus:
            bus.subscribe(sink)
            await publish_all(bus, [make_event(i) for i in range(10)])  # buffered
            fill(small_disk)
            big = [make_event(i) for i in range(10, 600)]  # more than the 64 KiB buffer
            with pytest.raises(SinkFailedError, match="10 acknowledged events"):
                await publish_all(bus, big)
            assert not bus.stats().healthy
            assert bus.stats().lost >= 10  # needs the bus's handling of EventsLostError

    with pytest.raises(SinkFailedError, match="10 acknowledged events"):  # on leaving, too
        await overflow_the_buffer()
    assert (sink.stats().lost, sink.stats().failed) == (10, True)
    assert logged(root, "s1") == []


@pytest.mark.anyio
async def test_io_error_on_eviction_reports_the_evicted_files_events_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO writing an evicted file's buffer raises EventsLostError naming that file."""
    writes = FailingWrites(monkeypatch)
    sink = JsonlSink(tmp_path, durability="none", max_open_files=1)
    await sink.write([make_event(i, session_id="first") for i in range(3)])
    writes.fail_next(b'"session_id":"first"')
    with pytest.raises(EventsLostError, match=r"^3 acknowledged events .*/first/events\.jsonl"):
        await sink.write([make_event(3, session_id="second")])
    assert (sink.stats().lost, sink.stats().failed) == (3, True)
    assert (tmp_path / "first" / "events.jsonl").read_bytes() == b""  # the half write was cut
    with pytest.raises(Exception, match="this JsonlSink failed"):
        await sink.write([make_event(4, session_id="second")])


@pytest.mark.anyio
async def test_lost_buffer_on_aclose_is_counted_by_the_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer that cannot be written when the bus closes: the bus is unhealthy, lost counted."""
    writes = FailingWrites(monkeypatch)
    sink = JsonlSink(tmp_path, durability="none")
    # The bus may or may not raise on leaving (its choice); what it reports is checked below.
    with contextlib.suppress(SinkFailedError, EventsLostError):
        async with EventBus() as bus:
            bus.subscribe(sink)
            await publish_all(bus, [make_event(i) for i in range(5)])
            writes.fail_next(b'"session_id":"s1"')
    assert sink.stats().lost == 5
    assert bus.stats().lost == 5  # needs the bus's handling of EventsLostError from aclose
    assert not bus.stats().healthy


# --- 2. a log deleted or replaced while open is recreated, never written unlinked -------


def delete_file(root: Path) -> None:
    (root / "s1" / "events.jsonl").unlink()


def delete_directory(root: Path) -> None:
    shutil.rmtree(root / "s1")


def replace_directory(root: Path) -> None:
    (root / "s1").rename(root / "s1.old")
    (root / "s1").mkdir()


def replace_file(root: Path) -> None:
    (root / "s1" / "other").write_bytes(b"")
    (root / "s1" / "other").replace(root / "s1" / "events.jsonl")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "remove",
    [delete_file, delete_directory, replace_directory, replace_file],
    ids=lambda f: f.__name__,
)
async def test_log_removed_under_the_sink_is_recreated_and_reported(
    tmp_path: Path, remove: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    """A log deleted or replaced between two batches is created again; the recovery is reported."""
    first = [make_event(i) for i in range(3)]
    second = [make_event(i) for i in range(3, 6)]
    watcher = MemorySink()
    async with EventBus() as bus:
        sink = JsonlSink(tmp_path, on_recovery=bus.publish_nowait)
        bus.subscribe(sink)
        bus.subscribe(watcher)
        await publish_all(bus, first)
        remove(tmp_path)
        with caplog.at_level(logging.WARNING, logger="eventbus.sinks.jsonl"):
            await publish_all(bus, second)
        await bus.flush()  # the warning was published during the write
    (warning,) = [e for e in watcher.events if e.event_type == EventType.WARNING]
    assert warning.metadata["log_reopened"]["path"] == os.fspath(tmp_path / "s1" / "events.jsonl")
    assert logged(tmp_path, "s1") == [*second, warning]
    assert sink.stats().reopened == 1
    assert "creating it again" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    "remove",
    [delete_file, delete_directory, replace_directory, replace_file],
    ids=lambda f: f.__name__,
)
async def test_log_removed_between_single_events_is_recreated(
    tmp_path: Path, remove: Callable[[Path], None]
) -> None:
    """The live path (one event per flush, written on the loop) notices a log deleted or
    replaced before its next line, like a batch does: never a line in the old file."""
    first, second = make_event(0), make_event(1)
    watcher = MemorySink()
    async with EventBus() as bus:
        sink = JsonlSink(tmp_path, on_recovery=bus.publish_nowait)
        bus.subscribe(sink)
        bus.subscribe(watcher)
        await bus.publish(first)
        await bus.flush()
        remove(tmp_path)
        await bus.publish(second)
        await bus.flush()
        await bus.flush()  # the warning was published during the write
    (warning,) = [e for e in watcher.events if e.event_type == EventType.WARNING]
    assert logged(tmp_path, "s1") == [second, warning]
    assert sink.stats().reopened == 1


@pytest.mark.anyio
async def test_buffered_events_of_a_deleted_log_go_to_the_new_file(tmp_path: Path) -> None:
    """In "none" mode, what was buffered for a deleted log is written to its new file."""
    sink = JsonlSink(tmp_path, durability="none")
    events = [make_event(i) for i in range(4)]
    await sink.write(events[:2])
    (tmp_path / "s1" / "events.jsonl").unlink()
    await sink.write(events[2:])
    await sink.aclose()
    assert logged(tmp_path, "s1") == events
    assert sink.stats().reopened == 1


@pytest.mark.anyio
async def test_buffer_of_a_deleted_log_is_not_closed_into_the_unlinked_file(tmp_path: Path) -> None:
    """aclose writes a "none" buffer to a recreated file, not into the deleted one."""
    sink = JsonlSink(tmp_path, durability="none")
    events = [make_event(i) for i in range(4)]
    await sink.write(events)
    shutil.rmtree(tmp_path / "s1")
    await sink.aclose()
    assert logged(tmp_path, "s1") == events


# --- 3. a retry after a partial failure writes nothing twice ----------------------------


@pytest.mark.anyio
async def test_retry_after_a_failed_cut_back_writes_each_event_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The middle session's write and its cut-back fail once; after the bus's retry each event is
    in its log exactly once."""
    writes = FailingWrites(monkeypatch)
    writes.fail_next(b'"session_id":"b"')
    real_ftruncate = os.ftruncate
    cut_fails = [True]

    def ftruncate(fd: int, length: int) -> None:
        if cut_fails.pop() if cut_fails else False:
            raise OSError(errno.EIO, "Input/output error")
        real_ftruncate(fd, length)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    events = [make_event(i, session_id="abc"[i % 3]) for i in range(30)]
    async with EventBus(retry=RetryPolicy(retries=2, initial_delay=0)) as bus:
        bus.subscribe(JsonlSink(tmp_path))
        await publish_all(bus, events)
        assert bus.stats().subscriptions[0].retries == 1
    for session in "abc":
        assert logged(tmp_path, session) == [e for e in events if e.session_id == session]


@pytest.mark.anyio
async def test_one_event_refused_by_a_full_disk_fails_its_session_and_its_retry_lands_once(
    small_disk: Path,
) -> None:
    """The one-event path (an open log, on the loop) fails like the general one: the session is
    named, nothing is left half-written, and the batch retried once space is back lands once."""
    root = small_disk / "ws"
    sink = JsonlSink(root)
    first = make_event(0)
    await sink.write([first])  # opens the log
    fill(small_disk)
    later = make_event(1)
    one = EventBatch([later], [encode_event(later)])  # as the bus hands it over
    big = Event(event_type=EventType.INFO, session_id="s1", message="x" * 8192, parent_id=None)
    with pytest.raises(PartialWriteError, match="session 's1'") as caught:
        await sink.write([big])
    assert isinstance(caught.value.failures["s1"], OSError)
    assert sink.stats().failed_sessions == ("s1",)
    assert logged(root, "s1") == [first]  # the partial line was cut back
    (small_disk / "filler").unlink()
    await sink.write([big])  # the bus's retry of the same batch
    await sink.write(one)
    await sink.aclose()
    assert logged(root, "s1") == [first, big, later]
    assert sink.stats().failed_sessions == ()


@pytest.mark.anyio
@pytest.mark.parametrize("count", [1, 5], ids=["one event", "a batch"])
async def test_short_writes_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """os.write may write less than asked (a signal, a pipe): the rest is written, in order."""
    real_write = os.write

    def short_write(fd: int, data: ReadableBuffer) -> int:
        return real_write(fd, bytes(data)[:7])

    sink = JsonlSink(tmp_path)
    events = [make_event(i) for i in range(count + 1)]
    await sink.write(events[:1])  # opens the log
    monkeypatch.setattr(os, "write", short_write)
    await sink.write(events[1:])
    monkeypatch.undo()
    await sink.aclose()
    assert logged(tmp_path, "s1") == events


# --- 4. one bad session does not stop the others ---------------------------------------


@pytest.mark.anyio
async def test_blocked_session_fails_alone_and_the_others_are_written(tmp_path: Path) -> None:
    """write writes every other session of the batch, then raises PartialWriteError for the
    blocked one; it is listed in failed_sessions until a write to it succeeds."""
    (tmp_path / "blocked").write_text("a file where the session directory should be")
    sink = JsonlSink(tmp_path)
    events = [make_event(i, session_id=("a", "blocked", "c")[i % 3]) for i in range(9)]
    with pytest.raises(PartialWriteError, match="session 'blocked'") as caught:
        await sink.write(events)
    assert list(caught.value.failures) == ["blocked"]
    assert isinstance(caught.value.failures["blocked"], NotADirectoryError)
    assert logged(tmp_path, "a") == events[0::3]
    assert logged(tmp_path, "c") == events[2::3]
    assert sink.stats().failed_sessions == ("blocked",)
    (tmp_path / "blocked").unlink()
    later = make_event(9, session_id="blocked")
    await sink.write([later])
    await sink.aclose()
    assert logged(tmp_path, "blocked") == [later]
    assert sink.stats().failed_sessions == ()


@pytest.mark.anyio
async def test_blocked_session_on_the_bus_leaves_the_other_session_flowing(tmp_path: Path) -> None:
    """Through the bus: flush names the blocked session; the other's events all reach its log."""
    (tmp_path / "blocked").write_text("a file where the session directory should be")
    good = [make_event(i, session_id="good") for i in range(10)]
    bad = [make_event(i, session_id="blocked") for i in range(10)]

    async def publish_to_both() -> None:
        async with EventBus(retry=ONE_RETRY) as bus:
            bus.subscribe(JsonlSink(tmp_path))
            for start in (0, 5):
                burst = [*good[start : start + 5], *bad[start : start + 5]]
                with pytest.raises(SinkFailedError, match="blocked"):
                    await publish_all(bus, burst)

    with pytest.raises(SinkFailedError, match="blocked"):  # on leaving, too
        await publish_to_both()
    assert logged(tmp_path, "good") == good


# --- 5. too many open files -------------------------------------------------------------


def limit_free_descriptors(free: int) -> int:
    """A soft RLIMIT_NOFILE that leaves exactly ``free`` descriptors to open."""
    used = {int(name) for name in os.listdir("/proc/self/fd")}
    limit = 0
    while free:
        if limit not in used:
            free -= 1
        limit += 1
    return limit


@pytest.mark.anyio
async def test_too_many_open_files_closes_the_least_recently_used_and_retries(
    tmp_path: Path,
) -> None:
    """With the process's file limit reached, the sink closes old logs and keeps writing."""
    sink = JsonlSink(tmp_path, max_open_files=64)
    events = [make_event(i, session_id=f"s{i}") for i in range(8)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit_free_descriptors(3), hard))
    try:
        for event in events:
            await sink.write([event])
        stats = sink.stats()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await sink.aclose()
    assert stats.open_files < len(events)  # about 3: os.listdir's descriptor may be free too
    assert stats.evicted + stats.open_files == len(events)
    for event in events:
        assert logged(tmp_path, event.session_id) == [event]


@pytest.mark.anyio
async def test_enfile_on_open_closes_a_file_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENFILE (the system's file table is full) is handled like EMFILE."""
    sink = JsonlSink(tmp_path)
    await sink.write([make_event(0, session_id="old")])
    real_open = os.open
    refusals = [OSError(errno.ENFILE, "Too many open files in system")]

    def refusing_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if os.fspath(path).endswith("new/events.jsonl") and refusals:
            raise refusals.pop()
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    await sink.write([make_event(1, session_id="new")])
    await sink.aclose()
    assert (sink.stats().evicted, len(logged(tmp_path, "new"))) == (1, 1)


# --- 6. fork ----------------------------------------------------------------------------


def in_child(body: Callable[[], None]) -> int:
    """Fork; run ``body`` in the child and exit it at once (0, or 1 if body raised)."""
    with warnings.catch_warnings():
        # Python 3.12+ warns when forking with threads (anyio's idle workers); the child
        # only closes descriptors and exits, taking no lock those threads could hold.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_forked_child_does_not_write_the_parents_buffer_again(tmp_path: Path) -> None:
    """A child that closes its inherited "none"-mode log adds nothing; each line is there once."""
    path = tmp_path / "s1" / "events.jsonl"
    log = EventLog(path, durability="none")
    events = [make_event(i) for i in range(3)]
    for event in events:
        log.append(event)
    assert exit_code(in_child(log.close)) == 0
    log.close()
    assert EventLog(path).get_events() == events


def test_forked_child_does_not_write_the_parent_sinks_buffer_again(tmp_path: Path) -> None:
    """A child that closes an inherited "none"-mode JsonlSink writes nothing of the parent's."""
    sink = JsonlSink(tmp_path, durability="none")
    events = [make_event(i) for i in range(3)]
    anyio.run(sink.write, events)
    assert exit_code(in_child(lambda: anyio.run(sink.aclose))) == 0
    anyio.run(sink.aclose)
    assert logged(tmp_path, "s1") == events


def test_forked_child_does_not_keep_the_parents_log_locked(tmp_path: Path) -> None:
    """While the parent writes, a second writer is refused; once it closes, one may write, even
    though a child forked while it held the lock is still running."""
    path = tmp_path / "s1" / "events.jsonl"
    log = EventLog(path)
    log.append(make_event(0))
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()

    def wait_for_the_parent() -> None:
        os.close(write_end)
        os.write(ready_write, b"r")  # the child runs (its fork handlers ran)
        os.read(read_end, 1)

    pid = in_child(wait_for_the_parent)
    os.close(read_end)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"r"
        with pytest.raises(LogLockedError, match="another writer"):
            EventLog(path, lock_timeout=0).append(make_event(1))
        log.close()
        with EventLog(path) as later:
            later.append(make_event(2))
    finally:
        os.close(write_end)  # the child reads EOF and exits
        os.close(ready_read)
        assert exit_code(pid) == 0
    assert [e.message for e in EventLog(path).get_events()] == ["0", "2"]


def test_inherited_log_in_a_forked_child_refuses_rather_than_sharing_the_lock(
    tmp_path: Path,
) -> None:
    """The child's copy of a writing EventLog opens the file again, so the parent's lock holds."""
    path = tmp_path / "s1" / "events.jsonl"
    log = EventLog(path, lock_timeout=0)
    log.append(make_event(0))

    def append_in_child() -> None:
        try:
            log.append(make_event(1))
        except LogLockedError:
            os._exit(7)

    assert exit_code(in_child(append_in_child)) == 7
    log.close()
    assert [e.message for e in EventLog(path).get_events()] == ["0"]


# --- 7. files that are not regular files ------------------------------------------------


def test_event_log_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    """EventLog(path) on a FIFO raises at once instead of waiting for a writer."""
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFileError, match=r"events\.jsonl is a FIFO"):
        bounded(lambda: EventLog(fifo))


def test_iter_log_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    """iter_log on a FIFO raises when called, never blocks."""
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFileError, match="FIFO"):
        bounded(lambda: list(iter_log(fifo)))


def test_event_log_refuses_a_device_behind_a_symlink(tmp_path: Path) -> None:
    """A log path that leads to /dev/null is refused, not silently written to the void."""
    link = tmp_path / "events.jsonl"
    link.symlink_to(os.devnull)
    with pytest.raises(NotARegularFileError, match="is a character device"):
        EventLog(link)


def test_log_writer_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    """Appending to a log that became a FIFO after loading raises at once."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    os.mkfifo(path)
    with pytest.raises(NotARegularFileError, match="FIFO"):
        bounded(lambda: log.append(make_event(0)))


def make_device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # S_IFCHR: /dev/null's numbers
    except PermissionError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(os.mkfifo, "a FIFO", id="fifo"),
        pytest.param(make_device, "a character device", id="device"),
        pytest.param(Path.mkdir, "a directory", id="directory"),
    ],
)
async def test_sink_refuses_a_log_that_is_not_a_regular_file(
    tmp_path: Path, make: Callable[[Path], object], kind: str
) -> None:
    """The session fails at once with NotARegularFileError; the other session is written."""
    (tmp_path / "odd").mkdir()
    make(tmp_path / "odd" / "events.jsonl")
    sink = JsonlSink(tmp_path)
    events = [make_event(0, session_id="odd"), make_event(1, session_id="fine")]
    with anyio.fail_after(10), pytest.raises(PartialWriteError, match="session 'odd'") as caught:
        await sink.write(events)
    await sink.aclose()
    error = caught.value.failures["odd"]
    assert isinstance(error, NotARegularFileError)
    assert str(error).startswith(f"{tmp_path / 'odd' / 'events.jsonl'} is {kind}")
    assert logged(tmp_path, "fine") == events[1:]


# --- 8. symlinks ------------------------------------------------------------------------


async def refused(sink: JsonlSink, session_id: str) -> BaseException:
    """Write one event of ``session_id``; return the error its session failed with."""
    with pytest.raises(PartialWriteError, match=f"session '{session_id}'") as caught:
        await sink.write([make_event(0, session_id=session_id)])
    return caught.value.failures[session_id]


@pytest.mark.anyio
async def test_session_directory_linking_outside_the_root_is_refused(tmp_path: Path) -> None:
    """A session directory that is a symlink out of the root is refused, naming the link."""
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "s1").symlink_to(outside)
    sink = JsonlSink(root)
    error = await refused(sink, "s1")
    await sink.aclose()
    assert isinstance(error, UnsafeSymlinkError)
    assert str(error).startswith(f"{root / 's1'} is a symlink to '{outside}'")
    assert "not inside the workspace root" in str(error)
    assert list(outside.iterdir()) == []


@pytest.mark.anyio
async def test_dangling_session_directory_link_is_refused_naming_the_link(tmp_path: Path) -> None:
    """A dangling symlink where a session directory should be: the error names the link."""
    (tmp_path / "s1").symlink_to(tmp_path / "gone")
    sink = JsonlSink(tmp_path)
    error = await refused(sink, "s1")
    await sink.aclose()
    assert isinstance(error, UnsafeSymlinkError)
    assert str(error).startswith(f"{tmp_path / 's1'} is a symlink to '{tmp_path / 'gone'}'")
    assert "does not exist" in str(error)


@pytest.mark.anyio
async def test_log_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """events.jsonl itself may not be a symlink, even to a file inside the root."""
    (tmp_path / "s1").mkdir()
    (tmp_path / "elsewhere.jsonl").write_bytes(b"")
    (tmp_path / "s1" / "events.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    sink = JsonlSink(tmp_path)
    error = await refused(sink, "s1")
    await sink.aclose()
    assert isinstance(error, UnsafeSymlinkError)
    assert str(error).startswith(f"{tmp_path / 's1' / 'events.jsonl'} is a symlink")
    assert (tmp_path / "elsewhere.jsonl").read_bytes() == b""


@pytest.mark.anyio
async def test_session_directory_linking_inside_the_root_is_followed(tmp_path: Path) -> None:
    """A session directory symlinked to another directory inside the root is written through."""
    (tmp_path / "real").mkdir()
    (tmp_path / "s1").symlink_to(tmp_path / "real")
    sink = JsonlSink(tmp_path)
    event = make_event(0)
    await sink.write([event])
    await sink.aclose()
    assert EventLog(tmp_path / "real" / "events.jsonl").get_events() == [event]


# --- 9. a lock held a moment longer is waited for ----------------------------------------

HOLD_THE_LOCK = """
import sys
from eventbus import Event, EventType
from sinks.jsonl import EventLog
log = EventLog(sys.argv[1], lock_timeout=0)
log.append(Event(event_type=EventType.INFO, session_id="s1", message="held", parent_id=None))
print("locked", flush=True)
sys.stdin.read()  # until the test closes the pipe; exiting releases the lock
"""


@contextlib.contextmanager
def held_by_another_process(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that appended to ``path`` and holds its lock until its stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, os.fspath(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        with contextlib.suppress(BrokenPipeError):
            holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        holder.stdout.close()


class _OnWaiting(logging.Handler):
    """Calls ``react`` (once) when a writer logs that it is waiting for a lock."""

    def __init__(self, react: Callable[[], object]) -> None:
        super().__init__(logging.DEBUG)
        self.react: Callable[[], object] | None = react

    def emit(self, record: logging.LogRecord) -> None:
        if self.react is not None and "waiting up to" in record.getMessage():
            react, self.react = self.react, None
            react()


@contextlib.contextmanager
def on_waiting_for_a_lock(react: Callable[[], object]) -> Iterator[None]:
    logger = logging.getLogger("eventbus.sinks.jsonl")
    handler = _OnWaiting(react)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()


def test_append_waits_for_a_lock_another_process_releases(tmp_path: Path) -> None:
    """A writer that finds the lock held waits; once the holder lets go, the append lands."""
    path = tmp_path / "s1" / "events.jsonl"
    with held_by_another_process(path) as holder, on_waiting_for_a_lock(lambda: release(holder)):
        log = EventLog(path, lock_timeout=30)
        bounded(lambda: log.append(make_event(1)), timeout=20)
        log.close()
    assert [e.message for e in EventLog(path).get_events()] == ["held", "1"]


def test_a_lock_never_released_is_refused_after_lock_timeout(tmp_path: Path) -> None:
    """LogLockedError comes after lock_timeout seconds of waiting, and says so."""
    path = tmp_path / "s1" / "events.jsonl"
    with held_by_another_process(path):
        log = EventLog(path, lock_timeout=0.2)
        with pytest.raises(LogLockedError, match=r"another writer .* held its lock for 0\.2 s"):
            log.append(make_event(1))
    assert [e.message for e in EventLog(path).get_events()] == ["held"]


def test_lock_timeout_zero_refuses_at_once(tmp_path: Path) -> None:
    """With lock_timeout=0 the writer does not wait (the error says the lock is held)."""
    path = tmp_path / "s1" / "events.jsonl"
    waited: list[bool] = []
    with (
        held_by_another_process(path),
        on_waiting_for_a_lock(lambda: waited.append(True)),
        pytest.raises(LogLockedError, match=r"another writer .* holds its lock;"),
    ):
        EventLog(path, lock_timeout=0).append(make_event(1))
    assert waited == []


@pytest.mark.parametrize("lock_timeout", [-1.0, float("nan")])
def test_a_negative_lock_timeout_is_refused(tmp_path: Path, lock_timeout: float) -> None:
    """EventLog and JsonlSink refuse a lock_timeout that is not 0 or more seconds."""
    with pytest.raises(ValueError, match="lock_timeout must be a number of seconds >= 0"):
        EventLog(tmp_path / "events.jsonl", lock_timeout=lock_timeout)
    with pytest.raises(ValueError, match="lock_timeout must be a number of seconds >= 0"):
        JsonlSink(tmp_path, lock_timeout=lock_timeout)


@pytest.mark.anyio
async def test_sink_waits_for_a_lock_in_a_worker_thread_while_the_loop_runs(
    tmp_path: Path,
) -> None:
    """The sink's wait for a lock happens off the event loop: a task on the loop is what
    releases the lock, and then the write lands."""
    path = tmp_path / "s1" / "events.jsonl"
    waiting = anyio.Event()
    sink = JsonlSink(tmp_path, lock_timeout=30)
    with (
        held_by_another_process(path) as holder,
        on_waiting_for_a_lock(lambda: anyio.from_thread.run_sync(waiting.set)),
    ):

        async def release_when_the_sink_waits() -> None:
            await waiting.wait()
            release(holder)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(release_when_the_sink_waits)
                await sink.write([make_event(1)])
        await sink.aclose()
    assert [e.message for e in logged(tmp_path, "s1")] == ["held", "1"]


def _nothing() -> None:
    """A forked child's work: none (it exits as soon as it has started)."""


def test_a_log_closed_and_reopened_right_after_a_fork_is_never_refused(tmp_path: Path) -> None:
    """A child forked while the log is open shares the locked file until its fork handler
    closes it; the parent closing and reopening the log at once waits for that."""
    path = tmp_path / "s1" / "events.jsonl"
    context = multiprocessing.get_context("fork")
    children = []
    log = EventLog(path)
    try:
        for index in range(20):
            log.append(make_event(index))
            with warnings.catch_warnings():  # see in_child
                warnings.filterwarnings(
                    "ignore", "This process .* is multi-threaded", DeprecationWarning
                )
                child = context.Process(target=_nothing)
                child.start()
            children.append(child)
            log.close()
            log = EventLog(path)
    finally:
        log.close()
        for child in children:
            child.join(timeout=30)
    assert [child.exitcode for child in children] == [0] * 20
    assert len(EventLog(path).get_events()) == 20
