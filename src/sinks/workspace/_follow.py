"""Following logs as they grow, for ``Workspace.follow_lines``.

:class:`Tail` remembers where it stopped reading each log and reads what was
appended since, complete lines only (a line written in two parts comes out
once, whole); a replaced or truncated log is read again from its start, and
an event id seen lately is not yielded twice.

:class:`ChangeHub` is the one file watcher of a workspace, shared by all its
followers: a thread that starts with the first follower and stops with the
last, waits on the kernel's notifications and rings every follower whose
logs changed, once per change however many follow. Each follower keeps its
own :class:`Tail`. A follower waiting for a change costs nothing: it waits
on an event of its own loop, and nothing wakes it until a log changed; the
hub's thread waits in the kernel. On Linux the watcher is one inotify
instance watching only what can concern a log (``sinks.workspace._inotify``),
elsewhere ``watchfiles``. When the kernel refuses a watcher (the per-user
limit of inotify instances or watches is reached, or the file system has no
notifications) the hub polls the logs' sizes instead, every
:data:`POLL_MS`; a warning says so once per hub.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Final, Protocol

import anyio
import anyio.to_thread

from eventbus import Event, EventQuery, is_valid_name

from .._layout import LOG_FILE_NAME
from .._lines import Growth, iter_growth, open_log
from .._segments import LogFile

__all__: list[str] = []

logger = logging.getLogger("sinks.workspace")

_RECENT_IDS: Final = 65536  # ids remembered to drop an event seen twice
_READS_EVENTS: Final = 65536  # events the shared reads hold at most
_READS_KEPT: Final = 1024  # reads kept at most

DEBOUNCE_MS: Final = 30
"""The longest the hub gathers file changes before it rings the followers."""
STEP_MS: Final = 10
"""How long the logs must be quiet before the hub rings the followers."""
SCAN_MS: Final = 1000
"""How often the hub compares every log's size with what it last saw.

A safety net for a change the watcher did not report (a log created in a
directory made a moment before it could be watched): such a change reaches
the followers within this delay.
"""
POLL_MS: Final = 100
"""How often the hub compares the logs' sizes when no watcher could be made."""


class Tail:
    """Reads what every log gained since the last read."""

    def __init__(
        self,
        root: str,
        ends: dict[str, tuple[tuple[int, int], int]],
        query: EventQuery,
        reads: Reads | None = None,
    ) -> None:
        self.root = root
        self.ends = dict(ends)
        self.query = query
        self.only = query.session_id
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.reads = reads if reads is not None else Reads()

    def read(self, changed: set[str] | None) -> list[tuple[Event, bytes]]:
        """Read the changed logs (``None``: every log); return the new matching events."""
        paths = self._all() if changed is None else self._changed(changed)
        found: list[tuple[Event, bytes]] = []
        for path in paths:
            found.extend(self._read(path))
        if len(paths) > 1:
            found.sort(key=lambda item: (item[0].timestamp, item[0].id))
        return found

    def _all(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        if self.only is not None:
            names = [self.only] if self.only in names else []
        return [
            os.path.join(self.root, name, LOG_FILE_NAME) for name in names if is_valid_name(name)
        ]

    def _changed(self, changed: set[str]) -> list[str]:
        paths = set()
        for path in changed:
            if os.path.basename(path) == LOG_FILE_NAME:
                session = os.path.basename(os.path.dirname(path))
            else:  # a session's directory, made or replaced
                session = os.path.basename(path)
            if not is_valid_name(session) or (self.only is not None and session != self.only):
                continue
            paths.add(os.path.join(self.root, session, LOG_FILE_NAME))
        return sorted(paths)

    def _read(self, path: str) -> list[tuple[Event, bytes]]:
        fd = open_log(path, self.root)
        if fd is None:
            return []
        found: list[tuple[Event, bytes]] = []
        try:
            size = fd.size()
            ident = fd.ident
            known = self.ends.get(path)
            if known is not None and known[0] == ident and size < known[1]:
                self.reads.forget(path)  # truncated: what was read of it is stale
            start = 0 if known is None or known[0] != ident or size < known[1] else known[1]
            if size <= start:
                self.ends[path] = (ident, start)
                return []
            matches, recent = self.query.matches, self.recent
            for growth in self.reads.growth(fd, path, ident, start, size):
                for event, line in zip(growth.events, growth.lines, strict=True):
                    if event.id in recent:
                        continue
                    recent[event.id] = None
                    if len(recent) > _RECENT_IDS:
                        recent.popitem(last=False)
                    if matches(event):
                        found.append((event, line))
                start = growth.end
            self.ends[path] = (ident, start)
        finally:
            fd.close()
        return found


class Reads:
    """The growth of the logs read lately, shared by the followers of one workspace.

    Followers of one session are woken together and read the same new
    lines: the first to ask reads and decodes them, the others wait for it
    and take its :class:`Growth` (events are immutable), so a change costs
    one decode however many follow. Holds at most :data:`_READS_EVENTS` events.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: OrderedDict[tuple[str, tuple[int, int], int], Growth] = OrderedDict()
        self._held = 0  # events in _found
        self._reading: dict[tuple[str, tuple[int, int], int], threading.Event] = {}

    def growth(
        self, fd: LogFile, path: str, ident: tuple[int, int], start: int, size: int
    ) -> Iterator[Growth]:
        """What ``iter_growth(fd, start)`` yields (``size``: the file's), read once for all."""
        while start < size:
            key = (path, ident, start)
            with self._lock:
                found = self._found.get(key)
                if found is not None and found.end > size:  # truncated and rewritten
                    self._held -= len(self._found.pop(key).events)
                    found = None
                reading = None if found is not None else self._reading.get(key)
                if found is None and reading is None:
                    self._reading[key] = threading.Event()  # this thread reads it
            if found is not None:
                yield found
                start = found.end
            elif reading is not None:
                reading.wait()  # another follower reads it: then take what it found
            else:
                yield from self._lead(fd, key)
                return

    def forget(self, path: str) -> None:
        """Drop what was read of ``path`` (truncated in place)."""
        with self._lock:
            for key in [key for key in self._found if key[0] == path]:
                self._held -= len(self._found.pop(key).events)

    def _lead(self, fd: LogFile, key: tuple[str, tuple[int, int], int]) -> Iterator[Growth]:
        """Read from ``key``'s start to the end, sharing what is read."""
        path, ident, start = key
        growths = iter_growth(fd, start)
        try:  # the first run of lines is what the other followers wait for
            first = next(growths, None)
            if first is not None and first.end > start:
                self._keep(key, first)
        finally:
            with self._lock:
                self._reading.pop(key).set()
        if first is None:
            return
        yield first
        start = first.end
        for growth in growths:
            if growth.end > start:
                self._keep((path, ident, start), growth)
            start = growth.end
            yield growth

    def _keep(self, key: tuple[str, tuple[int, int], int], growth: Growth) -> None:
        if len(growth.events) > _READS_EVENTS // 4:
            return  # a large read (a follower far behind): not shared
        with self._lock:
            if key not in self._found:
                self._found[key] = growth
                self._held += len(growth.events)
            while self._held > _READS_EVENTS or len(self._found) > _READS_KEPT:
                self._held -= len(self._found.popitem(last=False)[1].events)


class Watcher(Protocol):
    """What the hub waits on: changes of the workspace's logs."""

    def wait(self, timeout_ms: int) -> set[str]:
        """The paths of the logs changed (grouped over a few ms), or none after ``timeout_ms``.

        Returns at once, maybe with nothing, after :meth:`wake`.
        """

    def wake(self) -> None:
        """Make a :meth:`wait` in another thread return now."""

    def close(self) -> None:
        """Stop watching."""


def open_watcher(root: str) -> Watcher:
    """The watcher of ``root``'s logs: inotify on Linux (one instance), else ``watchfiles``.

    :raises OSError: or :class:`RuntimeError`: the system refused one (the hub
        then polls).
    """
    if sys.platform.startswith("linux"):
        from ._inotify import InotifyWatcher

        return InotifyWatcher(root, debounce_ms=DEBOUNCE_MS, step_ms=STEP_MS)
    return WatchfilesWatcher(root)


class WatchfilesWatcher:
    """``watchfiles``' recursive watcher of ``root`` (FSEvents on macOS, ...)."""

    def __init__(self, root: str) -> None:
        from watchfiles._rust_notify import RustNotify

        self.root = root
        self._stop = threading.Event()
        self._notify = RustNotify([root], False, False, POLL_MS, True, False)

    def wait(self, timeout_ms: int) -> set[str]:
        result = self._notify.watch(DEBOUNCE_MS, STEP_MS, timeout_ms, self._stop)
        if not isinstance(result, set):  # "timeout", "stop" or "signal"
            return set()
        return {log for _, path in result if (log := log_of(self.root, path))}

    def wake(self) -> None:
        self._stop.set()  # for good: the hub wakes its watcher only to stop it

    def close(self) -> None:
        self._notify.close()


def log_of(root: str, path: str) -> str:
    """The log a change at ``path`` under ``root`` can concern (``""``: none)."""
    if os.path.basename(path) == LOG_FILE_NAME:
        session = os.path.dirname(path)
    elif os.path.dirname(path) == root:  # a session's directory, made or replaced
        session = path
    else:
        return ""
    if os.path.dirname(session) != root or not is_valid_name(os.path.basename(session)):
        return ""
    return os.path.join(session, LOG_FILE_NAME)


def check_watchfiles() -> None:
    """Raise if ``watchfiles`` (the ``web`` extra) is missing."""
    try:
        import watchfiles  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the web extra is installed in tests
        raise ModuleNotFoundError(
            "following a workspace needs watchfiles: pip install 'eventbus[web]'"
        ) from exc


def _loop_caller() -> Callable[[Callable[[], object]], object]:
    """How another thread runs a callback in the running event loop, without waiting."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # not asyncio: trio (anyio's other backend)
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


class Bell:
    """One follower's doorbell: the logs that changed since it last looked."""

    __slots__ = ("_call", "_changed", "_event")

    def __init__(self) -> None:
        self._call = _loop_caller()
        self._event = anyio.Event()
        self._changed: set[str] = set()

    def _ring(self, changed: set[str]) -> None:
        """Note ``changed`` and wake the follower (in its loop's thread)."""
        self._changed |= changed
        self._event.set()

    async def changes(self, stop: anyio.Event | None = None) -> set[str] | None:
        """Wait for changed logs and return their paths; ``None`` once ``stop`` is set."""
        while not self._changed:
            if stop is None:
                await self._event.wait()
            elif not await _first_of(self._event, stop):
                return None
            self._event = anyio.Event()
        changed, self._changed = self._changed, set()
        return changed


async def _first_of(event: anyio.Event, stop: anyio.Event) -> bool:
    """Wait for ``event`` or ``stop``; return whether ``stop`` is still unset."""
    if stop.is_set():
        return False
    async with anyio.create_task_group() as group:

        async def on_stop() -> None:
            await stop.wait()
            group.cancel_scope.cancel()

        group.start_soon(on_stop)
        await event.wait()
        group.cancel_scope.cancel()
    return not stop.is_set()


Size = tuple[int, int, int, int]


def _size(path: str) -> Size | None:
    """(device, inode, size, mtime) of a log, ``None`` if there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


class ChangeHub:
    """The one watcher of a workspace's logs, ringing the :class:`Bell` of every follower.

    Thread-safe: followers may run in several event loops (and threads).

    :param root: the workspace directory (absolute).
    :param watcher: makes the watcher (default: :func:`open_watcher`); what it
        raises makes the hub poll.
    """

    def __init__(self, root: str, watcher: Callable[[str], Watcher] | None = None) -> None:
        self.root = root
        self._open_watcher = watcher
        self._lock = threading.Lock()
        self._bells: set[Bell] = set()
        self._stop: threading.Event | None = None  # the running thread's
        self._ready = threading.Event()
        self._watcher: Watcher | None = None  # the running thread's, to wake it
        self.reads = Reads()
        """The logs' growth read lately, shared by the followers' :class:`Tail`."""
        self.polling = False
        """Whether the hub polls (no watcher could be made)."""

    @property
    def followers(self) -> int:
        """How many followers are attached (each attached one is being watched for)."""
        return len(self._bells)

    @asynccontextmanager
    async def bell(self) -> AsyncIterator[Bell]:
        """A bell rung at every change of a log during the block (the hub is watching on entry)."""
        bell = Bell()
        try:  # cancelled while attaching: the thread attaches it all the same
            await anyio.to_thread.run_sync(self._attach, bell)
            yield bell
        finally:
            self._detach(bell)

    def _attach(self, bell: Bell) -> None:
        with self._lock:
            self._bells.add(bell)
            if self._stop is None:
                self._stop = threading.Event()
                self._ready = threading.Event()
                threading.Thread(
                    target=self._run,
                    args=(self._stop, self._ready),
                    name=f"eventbus watcher of {self.root}",
                    daemon=True,
                ).start()
            ready = self._ready
        ready.wait()

    def _detach(self, bell: Bell) -> None:
        with self._lock:
            self._bells.discard(bell)
            if not self._bells and self._stop is not None:
                self._stop.set()
                self._stop = None
                if self._watcher is not None:
                    self._watcher.wake()

    # --- the hub's thread ----------------------------------------------------------------

    def _run(self, stop: threading.Event, ready: threading.Event) -> None:
        watcher = self._open(stop)
        sizes = self._sizes()
        ready.set()
        scanned = time.monotonic()
        try:
            while not stop.is_set():
                changed: set[str] = set()
                if watcher is not None:
                    try:
                        changed = watcher.wait(SCAN_MS)
                    except (RuntimeError, OSError) as error:  # e.g. no inotify watch left
                        self._warn(error)
                        self._close(watcher)
                        watcher = None
                        continue
                    for path in changed:  # what the followers will read: seen
                        sizes[path] = _size(path)
                elif stop.wait(POLL_MS / 1000):
                    break
                now = time.monotonic()
                if watcher is None or now - scanned >= SCAN_MS / 1000:
                    current = self._sizes()
                    changed |= {
                        path
                        for path in current.keys() | sizes.keys()
                        if current.get(path) != sizes.get(path)
                    }
                    sizes, scanned = current, now
                if changed:
                    self._ring(changed)
        finally:
            if watcher is not None:
                self._close(watcher)

    def _open(self, stop: threading.Event) -> Watcher | None:
        """Make the watcher (``None``: poll) and let :meth:`_detach` wake it."""
        try:
            watcher = (self._open_watcher or open_watcher)(self.root)
        except (RuntimeError, OSError) as error:  # inotify's instance limit (EMFILE), ...
            self._warn(error)
            return None
        with self._lock:
            if stop.is_set():  # the last follower left meanwhile
                watcher.close()
                return None
            self._watcher = watcher
        return watcher

    def _close(self, watcher: Watcher) -> None:
        with self._lock:  # never woken once closed
            if self._watcher is watcher:
                self._watcher = None
            watcher.close()

    def _warn(self, error: BaseException) -> None:
        if not self.polling:
            self.polling = True
            logger.warning(
                "cannot watch %s for changes (%s): polling its logs every %d ms instead",
                self.root,
                error,
                POLL_MS,
            )

    def _sizes(self) -> dict[str, Size | None]:
        """What :func:`_size` says of every session's log (those that exist)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return {}
        found: dict[str, Size | None] = {}
        for name in names:
            if is_valid_name(name):
                path = os.path.join(self.root, name, LOG_FILE_NAME)
                if (size := _size(path)) is not None:
                    found[path] = size
        return found

    def _ring(self, changed: set[str]) -> None:
        """Ring every bell, one call per event loop."""
        with self._lock:
            bells = list(self._bells)
        by_loop: dict[Callable[[Callable[[], object]], object], list[Bell]] = {}
        for bell in bells:
            by_loop.setdefault(bell._call, []).append(bell)
        for call, group in by_loop.items():

            def ring(group: list[Bell] = group) -> None:
                for bell in group:
                    bell._ring(changed)

            # RuntimeError: that loop has ended without closing its followers.
            with suppress(RuntimeError):
                call(ring)
