"""``EventLog``: one session's append-only JSONL file, with the seed's query API.

Re-exported by :mod:`sinks.jsonl`, whose docstring describes the format,
durability, locking and recovery.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from eventbus import (
    MAX_LINE_BYTES,
    Event,
    EventQuery,
    EventType,
    encode_event,
)

from .._files import check_regular_path
from .._lines import TAIL_BLOCK
from .._segments import log_stat
from ..index import EventIndex
from ._read import LogScan, RecoveryReport, open_segments
from ._write import (
    DEFAULT_LOCK_TIMEOUT,
    Durability,
    LogWriter,
    check_durability,
    check_lock_timeout,
)

__all__ = ["EventLog"]

logger = logging.getLogger("eventbus.sinks.jsonl")

_LATEST_WINDOW_LIMIT = 2 * MAX_LINE_BYTES  # get_latest reads backwards at most this far


class EventLog:
    """An append-only event log in one JSONL file, with the seed's query API.

    Constructing it reads the events already in the file; it never locks,
    and several may exist for one file. The first :meth:`append` (or
    :meth:`clear`) takes the file's writer lock, cuts an incomplete last line
    (see :attr:`recovery`) and holds the lock until :meth:`close`, the end of
    a ``with`` block, or the object being dropped. While it does not hold the
    lock, every query first reads what other writers appended since.

    :param log_path: the JSONL file (its directory is created on first append).
        A log written in segments is read whole: its sealed segments beside
        it (``events.000001.jsonl``, ... for ``events.jsonl``) come first.
    :param cache: keep every event in memory for fast queries. With
        ``cache=False`` no event is held: a low-memory
        :class:`~sinks.index.EventIndex` keeps where each line is (about
        110 bytes per event), :meth:`get_events` reads back only the events
        it returns, :meth:`get_latest` reads the end of the file, and the
        answers are the same, in append order.
    :param strict: raise :class:`CorruptLogError` at the first damaged line
        instead of skipping it.
    :param durability: what a returned :meth:`append` guarantees: ``"none"``
        (nothing on a crash), ``"flush"`` (survives the process being killed)
        or ``"fsync"`` (survives power loss; one fsync per append, so prefer
        :class:`JsonlSink`'s batches for many events).
    :param lock_timeout: how many seconds :meth:`append` and :meth:`clear`
        wait (blocking this thread) for a lock another writer holds before
        raising :class:`LogLockedError`; ``0`` refuses at once. The wait
        covers a lock that outlives its writer by a moment, e.g. one kept by
        a process forked while the log was open (a ``multiprocessing`` pool)
        until the child has started.

    Not thread-safe: use one per thread, or a lock.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        *,
        cache: bool = True,
        strict: bool = False,
        durability: Durability = "flush",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        check_durability(durability)
        check_lock_timeout(lock_timeout)
        self.log_path = Path(log_path)
        self.lock_timeout = lock_timeout
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

        :raises LogLockedError: if another writer held the file's lock for
            ``lock_timeout`` seconds.
        :raises EventEncodeError: if the event's metadata cannot be encoded
            (nothing is written).
        """
        if not isinstance(event, Event):
            raise TypeError(f"append takes an Event, got {type(event).__name__}")
        line = encode_event(event) + b"\n"
        writer = self._writer
        if writer is None or writer.closed:  # closed: e.g. inherited by a forked process
            writer = self._lock()
        offset = writer.write(line, 1)
        self._scan.end += len(line)
        if self._index is not None:
            self._index.add_located([event], self.log_path, [offset], [len(line)])
        self._add([event])

    def clear(self) -> None:
        """Remove every event: the file is atomically replaced by an empty one.

        Takes the writer lock like :meth:`append` (and keeps it).

        :raises LogLockedError: if another writer held the file's lock for
            ``lock_timeout`` seconds.
        """
        writer = self._writer
        if writer is None or writer.closed:
            writer = LogWriter.open(
                self.log_path,
                durability=self.durability,
                strict=False,
                recover=False,
                lock_timeout=self.lock_timeout,
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
        writer = LogWriter.open(
            self.log_path,
            durability=self.durability,
            strict=self.strict,
            lock_timeout=self.lock_timeout,
        )
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
        path = os.fspath(self.log_path)
        status = log_stat(path)
        if status is None:
            if os.path.lexists(path):
                check_regular_path(path)  # a FIFO, a device...: said at once
            if self._seen is not None:
                self._reset()
            return
        seen = (*status[0], status[1])
        if seen == self._seen:
            return
        if self._seen is not None and (seen[:2] != self._seen[:2] or status[1] < self._scan.end):
            self._reset()  # replaced (cleared) or truncated: read it again
        try:
            fd = open_segments(path)
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
            ident = fd.ident
        finally:
            fd.close()
        self._seen = (*ident, self._scan.end + self._scan.tail)

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
            fd = open_segments(os.fspath(self.log_path))
        except FileNotFoundError:
            return []
        try:
            while True:
                if window > _LATEST_WINDOW_LIMIT:  # a line over MAX_LINE_BYTES: read forward
                    scan = LogScan(self._scan.path, strict=False)
                    latest: deque[Event] = deque(maxlen=n)
                    for located in scan.read_positioned(fd, stop=end):
                        latest.extend(event for event, _, _ in located)
                    return list(latest)
                start = max(0, end - window)
                data = fd.pread(end - start, start)
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
            fd.close()
