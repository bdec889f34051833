"""The JSONL event log: one append-only ``events.jsonl`` file per session.

:class:`EventLog` keeps the seed's API over one file (``append``,
``get_events``, ``get_latest``, ``count``, ``clear``); :class:`JsonlSink` is
the bus sink that appends each event to
``{workspace_root}/{session_id}/events.jsonl``; :func:`iter_log` reads a log
tolerantly, with the byte position of each event (to rebuild an index).

**Format.** One compact JSON object per event, each line ending in ``\\n``.
Lines are split on ``\\n`` only: ``\\r``, U+2028 or U+0085 inside a message
never end a line.

**Durability** (``durability=``): what an acknowledged write survives. For
:class:`JsonlSink` the acknowledgement is ``write`` returning, which is what
a returned ``await bus.flush()`` reports; for :class:`EventLog` it is
``append`` returning.

- ``"none"``: events are buffered in this process (up to 64 KiB per file) and
  written when the buffer fills or the file is closed. Nothing is guaranteed
  on a crash, and other readers may not see the events yet. An I/O error is
  not a crash: a buffer that cannot be written (full disk, EIO) raises
  :class:`~eventbus.EventsLostError` saying how many events are lost.
- ``"flush"`` (default): every batch is written to the operating system
  before the acknowledgement. Survives the process being killed; not a power
  loss or an OS crash.
- ``"fsync"``: every batch is written and ``fsync``-ed (one ``fsync`` per
  batch and file, not per event); a new file's directory is fsynced too.
  Survives power loss.

**One writer per file.** Writing takes an OS lock (``flock``) on the file,
held until the writer is closed. A second writer, in this process or
another, gets :class:`LogLockedError`. Reading never locks.

**Recovery.** A crash can leave an incomplete last line. A reader ignores it
(a live writer may be finishing it). A writer, when it opens the file, cuts
it off and reports where and how many bytes, so the next append starts on a
clean line. A corrupt line elsewhere is skipped and counted, and the lines
around it are kept; an event type this version does not know is kept. None of
this raises unless ``strict=True``, which raises :class:`CorruptLogError` at
the first problem. What was skipped is in a :class:`RecoveryReport`
(``EventLog.recovery``, ``JsonlSink.recoveries``); ``JsonlSink(on_recovery=
bus.publish_nowait)`` also puts a WARNING event on the bus.

**Files that are not logs.** Readers and writers refuse a FIFO, a device,
a socket or a directory where a log should be with
:class:`NotARegularFileError`, at once (a FIFO is opened non-blocking, so
nothing hangs). :class:`JsonlSink` refuses symlinks that would take it out of
its workspace root (:class:`UnsafeSymlinkError`); ``EventLog(path)`` writes
where the path the caller gave leads. What :class:`JsonlSink` does on each
fault (a full disk, a deleted log, one bad session, too many open files, a
fork) is listed in its docstring.

Errors::

    EventBusError
    ├── LogLockedError
    ├── CorruptLogError (ValueError)
    ├── NotARegularFileError (OSError)
    ├── UnsafeSymlinkError (OSError)
    ├── InvalidNameError (ValueError, from eventbus: a bad session id)
    ├── EventsLostError (from eventbus: a "none" buffer could not be written)
    └── PartialWriteError (from eventbus: some sessions of a batch failed)

Layout: this module holds :class:`EventLog` and :class:`JsonlSink`; reading
and recovery (:func:`iter_log`, :class:`RecoveryReport`) live in
``sinks._jsonl_read``, the locked writer and its fsync helpers in
``sinks._jsonl_write``, safe opening (regular files, symlinks) in
``sinks._jsonl_files``. Import every name from here.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import accumulate
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import anyio.to_thread
import msgspec

from eventbus import (
    Event,
    EventBusError,
    EventQuery,
    EventsLostError,
    EventType,
    PartialWriteError,
    encode_event,
    encoded_lines,
    validate_session_id,
)

from ._jsonl_files import NotARegularFileError, UnsafeSymlinkError, open_regular
from ._jsonl_read import READ_FLAGS, TAIL_BLOCK, CorruptLogError, LogScan, RecoveryReport, iter_log
from ._jsonl_write import Durability, LogLockedError, LogWriter, check_durability
from ._paths import check_link
from .memory import EventIndex

__all__ = [
    "LOG_FILE_NAME",
    "CorruptLogError",
    "Durability",
    "EventLog",
    "JsonlSink",
    "JsonlSinkStats",
    "LogLockedError",
    "NotARegularFileError",
    "RecoveryReport",
    "UnsafeSymlinkError",
    "WrittenCallback",
    "iter_log",
]

logger = logging.getLogger("eventbus.sinks.jsonl")

LOG_FILE_NAME = "events.jsonl"
"""The name of each session's log under ``{workspace_root}/{session_id}/``."""


# --- EventLog --------------------------------------------------------------------------


_get_session_id = operator.attrgetter("session_id")
# A batch at most this big, for files already open, is written on the event
# loop in "none" and "flush" mode (see JsonlSink): measured at 1.5-3 us a
# session plus ~0.5 us per KiB (a stat and a write to the page cache), well
# under a thread hop (~60-250 us).
_INLINE_BYTES = 64 * 1024


class EventLog:
    """An append-only event log in one JSONL file, with the seed's query API.

    Constructing it reads the events already in the file; it never locks,
    and several may exist for one file. The first :meth:`append` (or
    :meth:`clear`) takes the file's writer lock, cuts an incomplete last line
    (see :attr:`recovery`) and holds the lock until :meth:`close`, the end of
    a ``with`` block, or the object being dropped. While it does not hold the
    lock, every query first reads what other writers appended since.

    :param log_path: the JSONL file (its directory is created on first append).
    :param cache: keep every event in memory for fast queries. With
        ``cache=False`` no event is held: a low-memory
        :class:`~sinks.memory.EventIndex` keeps where each line is (about
        110 bytes per event), :meth:`get_events` reads back only the events
        it returns, :meth:`get_latest` reads the end of the file, and the
        answers are the same, in append order.
    :param strict: raise :class:`CorruptLogError` at the first damaged line
        instead of skipping it.
    :param durability: what a returned :meth:`append` guarantees: ``"none"``
        (nothing on a crash), ``"flush"`` (survives the process being killed)
        or ``"fsync"`` (survives power loss; one fsync per append, so prefer
        :class:`JsonlSink`'s batches for many events).

    Not thread-safe: use one per thread, or a lock.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        *,
        cache: bool = True,
        strict: bool = False,
        durability: Durability = "flush",
    ) -> None:
        check_durability(durability)
        self.log_path = Path(log_path)
        self.cache = cache
        self.strict = strict
        self.durability: Durability = durability
        self._writer: LogWriter | None = None
        self._events: list[Event] = []
        self._index: EventIndex | None = None if cache else self._new_index()
        self._count = 0
        self._type_counts: Counter[EventType] | None = None  # made by the first count(type)
        self._scan = LogScan(os.fspath(self.log_path), strict=strict)
        self._seen: tuple[int, int, int] | None = None  # (device, inode, size) last read
        self._refresh()

    # --- writing -------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Append ``event`` to the log (taking the writer lock on first use).

        When it returns, the event is as durable as ``durability`` says.

        :raises LogLockedError: if another writer holds the file's lock.
        :raises EventEncodeError: if the event's metadata cannot be encoded
            (nothing is written).
        """
        if not isinstance(event, Event):
            raise TypeError(f"append takes an Event, got {type(event).__name__}")
        line = encode_event(event) + b"\n"
        writer = self._writer
        if writer is None or writer.closed:  # closed: e.g. inherited by a forked process
            writer = self._lock()
        offset = writer.end
        writer.write(line, 1)
        self._scan.end += len(line)
        if self._index is not None:
            self._index.add_located([event], self.log_path, [offset], [len(line)])
        self._add([event])

    def clear(self) -> None:
        """Remove every event: the file is atomically replaced by an empty one.

        Takes the writer lock like :meth:`append` (and keeps it).

        :raises LogLockedError: if another writer holds the file's lock.
        """
        writer = self._writer
        if writer is None or writer.closed:
            writer = LogWriter.open(
                self.log_path, durability=self.durability, strict=False, recover=False
            )
        try:
            new = writer.replace_with_empty()
        except BaseException:
            if writer is not self._writer:
                writer.close()
            raise
        self._reset()
        self._writer = new

    def close(self) -> None:
        """Write what is buffered and release the writer lock; queries still work."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def writing(self) -> bool:
        """Whether this object holds the file's writer lock."""
        return self._writer is not None and not self._writer.closed

    @property
    def recovery(self) -> RecoveryReport:
        """What loading skipped (corrupt lines) and what was cut or ignored at the end."""
        return self._scan.report()

    # --- queries ------------------------------------------------------------------

    def get_events(
        self,
        event_type: EventType | str | Sequence[EventType | str] | None = None,
        phase: str | None = None,
        task_id: str | None = None,
        agent_role: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> list[Event]:
        """Return the events matching every given filter, in append order.

        ``event_type`` is one type or a list (any of them matches); times are
        inclusive bounds, naive datetimes are UTC; ``None`` means any.
        """
        query = EventQuery(
            event_type=event_type,
            phase=phase,
            task_id=task_id,
            agent_role=agent_role,
            start_time=start_time,
            end_time=end_time,
        )
        self._sync()
        if self._index is not None:
            return self._index.query_in_log_order(query)
        return list(self._events) if query.is_empty else query.filter(self._events)

    def get_latest(self, n: int = 100) -> list[Event]:
        """Return the last ``n`` events in append order (fewer if the log is shorter)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._sync()
        if n == 0:
            return []
        if self._index is not None:
            return self._read_latest(n)
        return self._events[-n:]

    def count(self, event_type: EventType | str | Sequence[EventType | str] | None = None) -> int:
        """Return the number of events, or of events of ``event_type`` (one or a list)."""
        self._sync()
        if event_type is None:
            return self._count
        query = EventQuery(event_type=event_type)
        if self._index is not None:
            return self._index.count_query(query)
        types = query.event_type
        assert types is not None
        counts = self._type_counts
        if counts is None:
            counts = self._type_counts = Counter(event.event_type for event in self._events)
        return sum(counts[t] for t in types)

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        mode = "writing" if self.writing else "reading"
        return f"EventLog({os.fspath(self.log_path)!r}, {self._count} events, {mode})"

    # --- internals ------------------------------------------------------------------

    def _lock(self) -> LogWriter:
        writer = LogWriter.open(self.log_path, durability=self.durability, strict=self.strict)
        try:
            self._refresh()  # what was appended since the last read, now that no one writes
        except BaseException:
            writer.close()
            raise
        self._scan.tail = 0
        if writer.cut is not None:
            self._scan.cut = writer.cut
        self._writer = writer
        return writer

    def _sync(self) -> None:
        writer = self._writer
        if writer is None or writer.closed:
            self._writer = None
            self._refresh()
        elif not self.cache:
            writer.flush_buffer()  # the file is read back

    def _refresh(self) -> None:
        """Read what was appended since the last read; start over if the file was replaced."""
        try:
            status = os.stat(self.log_path)
        except FileNotFoundError:
            if self._seen is not None:
                self._reset()
            return
        seen = (status.st_dev, status.st_ino, status.st_size)
        if seen == self._seen:
            return
        if self._seen is not None and (
            seen[:2] != self._seen[:2] or status.st_size < self._scan.end
        ):
            self._reset()  # replaced (cleared) or truncated: read it again
        try:
            fd = open_regular(self.log_path, READ_FLAGS)
        except FileNotFoundError:
            self._reset()
            return
        try:
            if self._index is None:
                for events in self._scan.read(fd):
                    self._add(events)
            else:
                for located in self._scan.read_positioned(fd):
                    self._add_located(located)
            status = os.fstat(fd)
        finally:
            os.close(fd)
        self._seen = (status.st_dev, status.st_ino, self._scan.end + self._scan.tail)

    def _add(self, events: list[Event]) -> None:
        self._count += len(events)
        if self._index is not None:
            return  # the index has them
        if self._type_counts is not None:
            self._type_counts.update([event.event_type for event in events])
        self._events.extend(events)

    def _add_located(self, located: list[tuple[Event, int, int]]) -> None:
        """Index events read from the file (``cache=False``), with their lines' places."""
        if not located:
            return
        assert self._index is not None
        events = [event for event, _, _ in located]
        offsets = [offset for _, offset, _ in located]
        lengths = [length for _, _, length in located]
        self._index.add_located(events, self.log_path, offsets, lengths)
        self._count += len(events)

    @staticmethod
    def _new_index() -> EventIndex:
        # One log: one file to keep open; duplicate lines are kept, like the cache keeps them.
        return EventIndex(low_memory=True, max_open_files=1, keep_duplicates=True)

    def _reset(self) -> None:
        self._events = []
        if self._index is not None:
            self._index.close()  # its open file may be the replaced one
            self._index = self._new_index()
        self._count = 0
        self._type_counts = None
        self._scan = LogScan(os.fspath(self.log_path), strict=self.strict)
        self._seen = None

    def _read_latest(self, n: int) -> list[Event]:
        """The last ``n`` events, reading backwards from the end in growing windows."""
        end = self._scan.end
        window = max(TAIL_BLOCK, n * 1024)
        try:
            fd = open_regular(self.log_path, READ_FLAGS)
        except FileNotFoundError:
            return []
        try:
            while True:
                start = max(0, end - window)
                data = os.pread(fd, end - start, start)
                skip = data.find(b"\n") + 1 if start else 0
                if start and not skip:  # no line starts in the window
                    window *= 2
                    continue
                decoded = LogScan(self._scan.path, strict=False).decode_positioned(
                    data[skip:], start + skip
                )
                if len(decoded) >= n or start == 0:
                    return [event for event, _, _ in decoded[-n:]]
                window *= 2
        finally:
            os.close(fd)


# --- JsonlSink ---------------------------------------------------------------------------


WrittenCallback = Callable[[Sequence[Event], Path, Sequence[int], Sequence[int]], object]
"""``on_written(events, path, offsets, lengths)``: where a sink just wrote ``events``."""


class _Group(NamedTuple):
    """One session's part of a batch: its events, their lines, each line's size."""

    events: list[Event]
    data: bytes
    lengths: list[int]


class JsonlSinkStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a :class:`JsonlSink`.

    ``batches``: writes that completed; ``events``/``bytes``: what was
    appended (or buffered, in ``"none"`` mode); ``opened`` and ``evicted``:
    files opened, and closed to stay within ``max_open_files`` or after
    ``EMFILE``; ``open_files``: files open (and locked) now; ``recoveries``:
    files whose torn last line was cut on opening; ``reopened``: files
    recreated because they were deleted or replaced while open; ``lost``:
    acknowledged events that could not be written (``"none"`` mode);
    ``failed``: the sink lost events and refuses writes; ``failed_sessions``:
    sessions whose last write failed (the others kept being written).
    """

    batches: int
    events: int
    bytes: int
    opened: int
    evicted: int
    open_files: int
    recoveries: int
    reopened: int = 0
    lost: int = 0
    failed: bool = False
    failed_sessions: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        """``True`` when nothing was lost and no session failed."""
        return not self.failed and self.lost == 0 and not self.failed_sessions


class JsonlSink:
    """A bus sink that appends each event to ``{workspace_root}/{session_id}/events.jsonl``.

    Each batch costs one write per session in it (with ``"fsync"``, one fsync
    per session file). Which path a batch takes:

    - **On the event loop**, in ``"none"`` and ``"flush"`` mode, when the
      batch is at most 64 KiB and every session in it has its log open
      already: a ``stat`` and a ``write`` into the page cache per session,
      about 2-4 us for one event, against 60-250 us for a thread hop. This
      is the live path: a coordinator publishing one event at a time.
    - **In a worker thread**, everything else: ``"fsync"`` (a disk flush can
      take milliseconds), batches over 64 KiB, and opening a log (creating
      directories, locking, repairing a torn last line); also when a thread
      the bus abandoned still holds the sink, so the loop never waits for it.

    When ``write`` returns, the batch is as durable as
    ``durability`` says, so a returned ``await bus.flush()`` means: ``"none"``
    nothing on a crash; ``"flush"`` survives the process being killed;
    ``"fsync"`` survives power loss. A failed write is cut back off the file
    before it raises, so the bus's retry never duplicates events.

    A file is opened (and locked: see :class:`LogLockedError`) at its first
    event and kept open; beyond ``max_open_files`` the least recently used is
    closed, releasing its lock. Opening cuts an incomplete last line left by
    a crash; each cut is kept in :attr:`recoveries`, logged, and passed as a
    WARNING event to ``on_recovery``: use ``on_recovery=bus.publish_nowait``
    to put it on the bus (it is called on the event loop; an exception it
    raises is logged). Only the end of a file is checked when it is opened;
    corrupt lines elsewhere are reported by :class:`EventLog` and
    :func:`iter_log` when they read it.

    Faults, and what the sink does:

    - **One session fails** (its directory cannot be made, its log is locked
      by another writer, is not a regular file...): every other session of
      the batch is written, then ``write`` raises
      :class:`~eventbus.PartialWriteError` naming the failed sessions (they
      are in ``stats().failed_sessions`` until a write to them succeeds).
      When the bus retries the same batch, the sessions already written are
      skipped: nothing is written twice.
    - **A buffer is lost** (``"none"`` mode: writing it failed, e.g. a full
      disk or an I/O error, when it filled, on eviction or on ``aclose``):
      :class:`~eventbus.EventsLostError` says how many acknowledged events
      are gone; ``stats().lost`` counts them, ``stats().failed`` is set and
      every later ``write`` is refused (the bus fails the sink at once).
    - **A log is deleted, or its directory deleted or replaced**, while open:
      noticed before the next batch is written to it (one ``stat`` per file
      and batch), never written into the unlinked file.
      The log is created again (directories included), its buffered events
      (``"none"`` mode) go to the new file, and the recovery is logged,
      counted in ``stats().reopened`` and passed to ``on_recovery`` as a
      WARNING event. If it cannot be created, that session fails as above.
    - **Too many open files** (``EMFILE``/``ENFILE`` on opening): the least
      recently used half of the open files (at least one) is closed and the
      open retried.
    - **Not a regular file** where a log should be (a FIFO, a device, a
      directory): :class:`NotARegularFileError` for that session, at once.
    - **Symlinks**: a session directory that is a symlink resolving inside
      the root is followed; one resolving outside the root, or dangling, and
      an ``events.jsonl`` that is itself a symlink, are refused with
      :class:`UnsafeSymlinkError` naming the link (checked when the file is
      opened).
    - **Fork**: a child process forked from this one neither writes this
      process's buffered lines nor keeps its logs locked; a sink used in the
      child opens its files again.

    A session id that cannot name a directory (see
    :func:`validate_session_id`) fails the whole batch with
    :class:`InvalidNameError` before anything is written.

    :param workspace_root: the directory holding one directory per session.
    :param durability: ``"none"``, ``"flush"`` (default) or ``"fsync"``.
    :param max_open_files: the most files kept open at once.
    :param strict: raise :class:`CorruptLogError` instead of cutting a torn line.
    :param on_recovery: called with a WARNING event per file whose torn line
        was cut, or that was recreated after being deleted or replaced.
    :param on_written: called after each session's part of a batch is written
        with ``(events, path, offsets, lengths)``: each event's line offset
        and size (newline included). Its signature is
        ``EventIndex.add_located``'s, so ``on_written=index.add_located`` keeps
        a low-memory :class:`~sinks.memory.EventIndex` current. Called on the
        event loop; an exception it raises is logged. Not with ``"none"``,
        whose lines may still be buffered.
    :param name: the sink's name in the bus's stats.
    """

    def __init__(
        self,
        workspace_root: str | os.PathLike[str],
        *,
        durability: Durability = "flush",
        max_open_files: int = 64,
        strict: bool = False,
        on_recovery: Callable[[Event], object] | None = None,
        on_written: WrittenCallback | None = None,
        name: str = "jsonl",
    ) -> None:
        check_durability(durability)
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        if on_written is not None and durability == "none":
            raise ValueError(
                "on_written needs durability 'flush' or 'fsync': in 'none' mode written "
                "lines may still be buffered in this process, so they cannot be read back"
            )
        self.root = Path(workspace_root)
        self.durability: Durability = durability
        self.max_open_files = max_open_files
        self.strict = strict
        self.name = name
        self._on_recovery = on_recovery
        self._on_written = on_written
        self._written: list[tuple[list[Event], Path, list[int], list[int]]] = []
        self._files: OrderedDict[str, LogWriter] = OrderedDict()
        self._recoveries: list[RecoveryReport] = []
        self._unannounced: list[tuple[Event, str]] = []  # (warning, what to log if it fails)
        self._partial: tuple[tuple[int, str, str], set[str]] | None = None
        self._failed_sessions: dict[str, Exception] = {}
        self._failure: EventsLostError | None = None
        self._closed = False
        self._lock = threading.Lock()  # the worker thread's state, against a late aclose
        self._batches = self._event_count = self._bytes = self._opened = self._evicted = 0
        self._reopened = self._lost = 0
        _live_sinks.add(self)

    def path_for(self, session_id: str) -> Path:
        """Return the log file of ``session_id``.

        :raises InvalidNameError: if the id cannot name a directory.
        """
        return self.root / validate_session_id(session_id) / LOG_FILE_NAME

    @property
    def recoveries(self) -> tuple[RecoveryReport, ...]:
        """A report per file whose incomplete last line was cut when it was opened."""
        return tuple(self._recoveries)

    def stats(self) -> JsonlSinkStats:
        """Return a snapshot of what this sink has written and holds open."""
        return JsonlSinkStats(
            batches=self._batches,
            events=self._event_count,
            bytes=self._bytes,
            opened=self._opened,
            evicted=self._evicted,
            open_files=len(self._files),
            recoveries=len(self._recoveries),
            reopened=self._reopened,
            lost=self._lost,
            failed=self._failure is not None,
            failed_sessions=tuple(sorted(self._failed_sessions)),
        )

    async def write(self, events: Sequence[Event]) -> None:
        """Append the batch to each of its sessions' logs (one write per session).

        :raises InvalidNameError: if a session id is invalid (nothing is written).
        :raises PartialWriteError: if some sessions failed (their lines are cut
            back off their files; the other sessions were written, and are
            skipped when the bus retries the same batch, so no event is
            written twice). A session's error is e.g. :class:`LogLockedError`
            (another writer holds its log) or an :class:`OSError`.
        :raises EventsLostError: in ``"none"`` mode, if buffered events could
            not be written; the sink is failed from then on.
        """
        if self._closed:
            raise EventBusError("cannot write: this JsonlSink is closed; create a new one")
        if self._failure is not None:
            raise EventBusError(
                f"cannot write: this JsonlSink failed ({self._failure}); create a new one"
            )
        if not events:
            return
        groups = self._group(events)
        key = (len(events), events[0].id, events[-1].id)
        done = self._partial[1] if self._partial is not None and self._partial[0] == key else set()
        todo = [
            (session_id, group) for session_id, group in groups.items() if session_id not in done
        ]
        try:
            if self._inline(todo) and self._lock.acquire(blocking=False):
                try:  # small, to files already open, no fsync: on the loop
                    failures = self._write_locked(todo, done)
                finally:
                    self._lock.release()
            else:
                # Abandonable: the bus's close_timeout can give up on a stuck disk; the
                # thread then finishes under self._lock, which aclose waits for.
                failures = await anyio.to_thread.run_sync(
                    self._write_groups, todo, done, abandon_on_cancel=True
                )
        except EventsLostError as exc:
            self._fail(exc)
            raise
        except BaseException:
            self._partial = (key, done)  # a retry of this batch skips the sessions done
            raise
        finally:
            self._announce()
        for session_id in done:
            self._failed_sessions.pop(session_id, None)
        if failures:
            self._partial = (key, done)
            self._failed_sessions.update(failures)
            raise PartialWriteError(failures)
        self._partial = None
        self._batches += 1

    async def aclose(self) -> None:
        """Write what is buffered and close every file, releasing their locks.

        :raises EventsLostError: if buffered events could not be written
            (every file is closed all the same).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await anyio.to_thread.run_sync(self._close_all, abandon_on_cancel=True)
        except EventsLostError as exc:
            self._fail(exc)
            raise
        finally:
            self._announce()

    def __repr__(self) -> str:
        return f"JsonlSink({os.fspath(self.root)!r}, {self.durability!r}, {len(self._files)} open)"

    def _fail(self, exc: EventsLostError) -> None:
        self._lost += exc.lost
        if self._failure is None:
            self._failure = exc
        logger.error("%s: %s", self.name, exc)

    def _group(self, events: Sequence[Event]) -> dict[str, _Group]:
        """Split the batch by session, reusing each event's encoding; validate new ids."""
        lines = encoded_lines(events)
        groups: dict[str, tuple[list[Event], list[bytes]]] = {}
        sessions = set(map(_get_session_id, events))  # C-level: the common case is one
        if len(sessions) == 1:
            groups[sessions.pop()] = (list(events), list(lines))
        else:
            current_id: str | None = None
            current: tuple[list[Event], list[bytes]] = ([], [])
            for event, line in zip(events, lines, strict=True):
                session_id = event.session_id
                if session_id != current_id:
                    current = groups.setdefault(session_id, ([], []))
                    current_id = session_id
                current[0].append(event)
                current[1].append(line)
        for session_id in groups:
            if session_id not in self._files:
                validate_session_id(session_id)
        located = self._on_written is not None
        result = {}
        for session_id, (group_events, group_lines) in groups.items():
            lengths = [len(line) + 1 for line in group_lines] if located else []
            group_lines.append(b"")  # so one join ends the last line too, copying once
            result[session_id] = _Group(group_events, b"\n".join(group_lines), lengths)
        return result

    def _inline(self, todo: list[tuple[str, _Group]]) -> bool:
        """Whether to write ``todo`` on the event loop: small, no fsync, every file open."""
        if self.durability == "fsync":
            return False
        size = 0
        files = self._files
        for session_id, group in todo:
            writer = files.get(session_id)
            if writer is None or writer.closed:
                return False  # opening may create directories, lock and repair: a thread
            size += len(group.data)
        return size <= _INLINE_BYTES

    def _write_groups(self, todo: list[tuple[str, _Group]], done: set[str]) -> dict[str, Exception]:
        """In a worker thread: :meth:`_write_locked` under the lock."""
        with self._lock:
            return self._write_locked(todo, done)

    def _write_locked(self, todo: list[tuple[str, _Group]], done: set[str]) -> dict[str, Exception]:
        """Append each session's lines; return the sessions that failed (``self._lock`` held).

        :raises EventsLostError: if buffered events were lost (the sink fails).
        """
        failures: dict[str, Exception] = {}
        for session_id, group in todo:
            try:
                writer = self._file(session_id)
                start = writer.end
                writer.write(group.data, len(group.events))
            except EventsLostError:
                raise
            except Exception as exc:  # this session fails; the others are written
                failures[session_id] = exc
                logger.warning(
                    "%s: could not write %d events of session %r: %r",
                    self.name,
                    len(group.events),
                    session_id,
                    exc,
                )
                continue
            done.add(session_id)
            self._bytes += len(group.data)
            self._event_count += len(group.events)
            if self._on_written is not None:
                offsets = list(accumulate(group.lengths, initial=start))
                offsets.pop()  # the end of the last line
                self._written.append((group.events, writer.path, offsets, group.lengths))
        return failures

    def _file(self, session_id: str) -> LogWriter:
        """The open writer of ``session_id``'s log: checked, reopened or opened."""
        writer = self._files.get(session_id)
        if writer is not None:
            if not writer.closed:
                problem = writer.moved()
                if problem is None:
                    self._files.move_to_end(session_id)
                    return writer
                del self._files[session_id]
                return self._reopen(session_id, writer, problem)
            del self._files[session_id]  # closed in a forked child: open it again
        while len(self._files) >= self.max_open_files:
            self._evict(1)
        return self._open(session_id)

    def _open(self, session_id: str) -> LogWriter:
        """Open (create, lock, repair) a session's log; on ``EMFILE`` close files and retry."""
        path = self.path_for(session_id)
        if os.path.islink(path.parent):  # followed only if it stays inside the root
            check_link(os.fspath(self.root), os.fspath(path.parent))
        while True:
            try:
                writer = LogWriter.open(
                    path, durability=self.durability, strict=self.strict, follow_symlinks=False
                )
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE) or not self._files:
                    raise
                count = max(1, len(self._files) // 2)
                logger.warning(
                    "%s: too many open files opening %s (%s): closing the %d least recently "
                    "used logs and trying again",
                    self.name,
                    path,
                    exc.strerror,
                    count,
                )
                self._evict(count)
                continue
            break
        self._opened += 1
        self._files[session_id] = writer
        if writer.cut is not None:
            report = RecoveryReport(
                path=os.fspath(path),
                torn_offset=writer.cut[0],
                torn_bytes=writer.cut[1],
                torn_cut=True,
            )
            self._recoveries.append(report)
            self._unannounced.append((report.to_event(session_id), report.describe()))
        return writer

    def _reopen(self, session_id: str, old: LogWriter, problem: str) -> LogWriter:
        """Create a log again that left its path while open; move its buffer over."""
        data, count = old.abandon()
        logger.warning(
            "%s: %s %s while this sink held it open: creating it again",
            self.name,
            old.path,
            problem,
        )
        try:
            writer = self._open(session_id)
            if data:
                writer.write(data, count)
        except Exception as exc:
            if count:
                raise EventsLostError(count, os.fspath(old.path), f"{problem}, and {exc}") from exc
            raise
        self._reopened += 1
        described = f"{old.path}: {problem} while open; created it again"
        warning = Event(
            event_type=EventType.WARNING,
            session_id=session_id,
            message=f"event log recreated: {described} (later events are in the new file)",
            metadata={"log_reopened": {"path": os.fspath(old.path), "problem": problem}},
            parent_id=None,
        )
        self._unannounced.append((warning, described))
        return writer

    def _evict(self, count: int) -> None:
        """Close the ``count`` least recently used files (writing their buffers)."""
        for _ in range(min(count, len(self._files))):
            session_id, writer = self._files.popitem(last=False)
            self._evicted += 1
            self._retire(session_id, writer)

    def _retire(self, session_id: str, writer: LogWriter) -> None:
        """Close a writer; a buffer whose file left its path goes to a new file first."""
        if writer.buffer and not writer.closed:
            problem = writer.moved()
            if problem is not None:
                writer = self._reopen(session_id, writer, problem)
                del self._files[session_id]
        writer.close()

    def _announce(self) -> None:
        """On the event loop: pass new recoveries and written lines to the callbacks."""
        notices, self._unannounced = self._unannounced, []
        written, self._written = self._written, []
        if self._on_recovery is not None:
            for warning, described in notices:
                try:
                    self._on_recovery(warning)
                except Exception:
                    logger.exception(
                        "on_recovery failed to announce %s; it stays in JsonlSink.recoveries",
                        described,
                    )
        if self._on_written is not None:
            for events, path, offsets, lengths in written:
                try:
                    self._on_written(events, path, offsets, lengths)
                except Exception:
                    logger.exception("on_written failed for %d events of %s", len(events), path)

    def _close_all(self) -> None:
        """In a worker thread: close every file; raise the buffers lost, or the first error."""
        lost: list[EventsLostError] = []
        errors: list[Exception] = []
        with self._lock:
            while self._files:
                session_id, writer = self._files.popitem(last=False)
                try:
                    self._retire(session_id, writer)
                except EventsLostError as exc:
                    lost.append(exc)
                except Exception as exc:
                    errors.append(exc)
        if lost:
            where = ", ".join(exc.where for exc in lost)
            reason = "; ".join(f"{exc.where}: {exc.reason}" for exc in lost)
            error = EventsLostError(sum(exc.lost for exc in lost), where, reason)
            for other in errors:
                error.add_note(f"closing another file failed too: {other!r}")
            raise error from lost[0]
        if errors:
            if len(errors) > 1:
                errors[0].add_note(f"{len(errors) - 1} more files failed to close")
            raise errors[0]


_live_sinks: weakref.WeakSet[JsonlSink] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    """After ``fork``, in the child: a sink's lock may have been held by a parent's thread."""
    for sink in list(_live_sinks):
        sink._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)
