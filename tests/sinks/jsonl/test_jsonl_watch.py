"""JsonlSink's directory watch: no ``stat`` per line while nothing moved, and every change
that takes a log off its path still noticed before the next line (see ``sinks.jsonl._watch``).

Each change is made for real between two single events, once the watch vouches for the log,
and again with no inotify and with its watch limit reached (a ``stat`` per line then).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from eventbus import Event, EventBus, EventType, MemorySink
from factories import event as make_event
from sinks.jsonl import EventLog, JsonlSink, _watch, _write, iter_log

WATCH = _watch.dir_watch()
needs_inotify = pytest.mark.skipif(WATCH is None, reason="inotify is Linux's")


def logged(root: Path) -> list[Event]:
    return EventLog(root / "s1" / "events.jsonl").get_events()


def delete_file(root: Path) -> Path | None:
    (root / "s1" / "events.jsonl").unlink()
    return None


def replace_file(root: Path) -> Path | None:
    (root / "s1" / "other").write_bytes(b"")
    (root / "s1" / "other").replace(root / "s1" / "events.jsonl")
    return None


def move_file_away(root: Path) -> Path | None:
    (root / "s1" / "events.jsonl").rename(root / "s1" / "kept.jsonl")
    return root / "s1" / "kept.jsonl"


def delete_directory(root: Path) -> Path | None:
    shutil.rmtree(root / "s1")
    return None


def replace_directory(root: Path) -> Path | None:
    (root / "s1").rename(root / "s1.old")
    (root / "s1").mkdir()
    return root / "s1.old" / "events.jsonl"


def move_root(root: Path) -> Path | None:
    root.rename(root.with_name("moved"))
    return root.with_name("moved") / "s1" / "events.jsonl"


CHANGES = [
    delete_file,
    replace_file,
    move_file_away,
    delete_directory,
    replace_directory,
    move_root,
]


@pytest.fixture(params=["watched", "no inotify", "watch limit reached"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "watched" and WATCH is None:
        pytest.skip("inotify is Linux's")
    if request.param == "no inotify":
        monkeypatch.setattr(_write, "dir_watch", lambda: None)
    if request.param == "watch limit reached":
        monkeypatch.setattr(_watch.DirWatch, "add", lambda self, directories: None)
    return str(request.param)


class CountedStat:
    """``os.stat`` as the writer calls it, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = _write._stat

        def counted(path: str) -> os.stat_result:
            self.calls += 1
            return real(path)

        monkeypatch.setattr(_write, "_stat", counted)


async def one_at_a_time(bus: EventBus, events: list[Event]) -> None:
    for event in events:
        await bus.publish(event)
        await bus.flush()


@pytest.mark.anyio
@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
async def test_a_log_taken_off_its_path_between_single_events_is_noticed(
    tmp_path: Path,
    mode: str,
    change: Callable[[Path], Path | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the watch vouching for the log (no stat for lines 2-6), a log deleted, replaced or
    moved, or its directory or the sink's root moved, is noticed before the next line: that
    line and the recovery's warning go to a new log, none to the old file."""
    root = tmp_path / "root"
    before, after = [make_event(i) for i in range(6)], make_event(6)
    watcher = MemorySink()
    async with EventBus() as bus:
        sink = JsonlSink(root, on_recovery=bus.publish_nowait)
        bus.subscribe(sink)
        bus.subscribe(watcher)
        await one_at_a_time(bus, before[:2])  # opened, then looked at with stat once
        stats = CountedStat(monkeypatch)
        await one_at_a_time(bus, before[2:])
        if mode == "watched":
            assert stats.calls == 0
        else:
            assert stats.calls == 4
        old = change(root)
        await one_at_a_time(bus, [after])
        await bus.flush()  # the warning was published during the write
    (warning,) = [e for e in watcher.events if e.event_type == EventType.WARNING]
    assert logged(root) == [after, warning]
    assert sink.stats().reopened == 1
    if old is not None:  # the old file, still linked elsewhere, got nothing more
        assert EventLog(old).get_events() == before


@pytest.mark.anyio
@pytest.mark.parametrize("durability", ["none", "fsync"])
async def test_batches_in_other_modes_notice_a_deleted_log_under_the_watch(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The general path (a batch, a buffer) asks the same watch: quiet, no stat; a deleted log
    is created again and what was buffered for it goes there."""
    sink = JsonlSink(tmp_path, durability=durability)  # type: ignore[arg-type]
    events = [make_event(i) for i in range(8)]
    await sink.write(events[:2])
    await sink.write(events[2:4])
    stats = CountedStat(monkeypatch)
    await sink.write(events[4:6])
    assert stats.calls == (0 if WATCH is not None else 1)
    (tmp_path / "s1" / "events.jsonl").unlink()
    await sink.write(events[6:])
    await sink.aclose()
    kept = events if durability == "none" else events[6:]  # "none": the buffer held them all
    assert logged(tmp_path) == kept
    assert sink.stats().reopened == 1


@needs_inotify
@pytest.mark.anyio
async def test_single_events_across_seals_read_back_once_each_in_order(tmp_path: Path) -> None:
    """A seal renames in the watched directory: the writer looks again with stat once, and
    every line lands in the log, in order, across its segments."""
    events = [make_event(i) for i in range(200)]
    async with EventBus() as bus:
        sink = JsonlSink(tmp_path, segment_bytes=2048)
        bus.subscribe(sink)
        await one_at_a_time(bus, events)
    path = tmp_path / "s1" / "events.jsonl"
    assert len(list(path.parent.glob("events.*.jsonl"))) > 5
    assert [event for event, _, _ in iter_log(path)] == events
    assert sink.stats().reopened == 0


@needs_inotify
@pytest.mark.anyio
async def test_watches_are_shared_per_directory_and_removed_with_their_logs(
    tmp_path: Path,
) -> None:
    """Three sessions of one root watch four directories (the root once); closing removes them."""
    assert WATCH is not None
    start = WATCH.watches
    sink = JsonlSink(tmp_path)
    for session in ("a", "b", "c"):
        for i in range(2):  # the second write looks, and starts watching
            await sink.write([make_event(i, session_id=session)])
    assert WATCH.watches == start + 4
    await sink.aclose()
    assert WATCH.watches == start


@needs_inotify
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads running
def test_a_forked_child_does_not_read_its_parents_queue(tmp_path: Path) -> None:
    """The child makes an instance of its own: reading the inherited one would take the
    parent's news, and the parent would write into a log deleted meanwhile."""
    assert WATCH is not None
    wds = WATCH.add((os.fspath(tmp_path),))
    assert wds is not None
    try:
        (tmp_path / "gone").write_bytes(b"")
        (tmp_path / "gone").unlink()  # news for the parent
        assert not WATCH.quiet()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = False
            try:
                child = _watch.dir_watch()
                ok = child is not None and child is not WATCH and child.fd != WATCH.fd
                if child is not None:
                    child.settle()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not WATCH.quiet()  # still queued for the parent
        generation = WATCH.generation
        assert WATCH.settle() == generation + 1
        assert WATCH.quiet()
    finally:
        WATCH.remove(wds)


OUT_OF_DESCRIPTORS = """
import errno, os, sys, anyio
from eventbus import Event, EventType
from sinks.jsonl import EventLog, JsonlSink, _watch

root = sys.argv[1]

def event(i, session):
    return Event(event_type=EventType.INFO, session_id=session, message=str(i))

async def main():
    sink = JsonlSink(root)
    await sink.write([event(0, "a")])  # the log is open: no look yet
    filler = []
    try:
        while True:  # every descriptor taken: no inotify instance can be made
            filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    await sink.write([event(1, "a")])  # looks with stat
    assert "watch" not in _watch._state, "a limit is not final"
    os.unlink(os.path.join(root, "a", "events.jsonl"))
    for fd in filler:
        os.close(fd)
    await sink.write([event(2, "a")])  # still noticed: a stat per line for this log
    await sink.write([event(0, "b")])
    await sink.write([event(1, "b")])  # a new log looks again: now it is watched
    watch = _watch.dir_watch()
    assert watch is not None and watch.watches == 2, watch
    await sink.aclose()
    kept = EventLog(os.path.join(root, "a", "events.jsonl")).get_events()
    assert [e.message for e in kept] == ["2"]
    assert sink.stats().reopened == 1

anyio.run(main)
print("ok")
"""


@needs_inotify
def test_out_of_descriptors_logs_use_stat_and_later_ones_are_watched(tmp_path: Path) -> None:
    """Every descriptor taken (a real EMFILE): no instance is made, the log is checked with
    stat (its deletion is noticed); once descriptors are free, the next log is watched."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS, os.fspath(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
