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
  on a crash, and other readers may not see the events yet.
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

Errors::

    EventBusError
    ├── LogLockedError
    ├── CorruptLogError (ValueError)
    └── InvalidNameError (ValueError, from eventbus: a bad session id)
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import accumulate
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Self

import anyio.to_thread
import msgspec

from eventbus import (
    Event,
    EventBusError,
    EventDecodeError,
    EventQuery,
    EventType,
    decode_event,
    decode_events,
    encode_event,
    encoded_lines,
    validate_session_id,
)

__all__ = [
    "LOG_FILE_NAME",
    "CorruptLogError",
    "Durability",
    "EventLog",
    "JsonlSink",
    "JsonlSinkStats",
    "LogLockedError",
    "RecoveryReport",
    "WrittenCallback",
    "iter_log",
]

logger = logging.getLogger("eventbus.sinks.jsonl")

Durability = Literal["none", "flush", "fsync"]
"""How far an acknowledged write has gone; see the module docstring."""

LOG_FILE_NAME = "events.jsonl"
"""The name of each session's log under ``{workspace_root}/{session_id}/``."""

_DURABILITIES: tuple[Durability, ...] = ("none", "flush", "fsync")
_CHUNK = 4 * 1024 * 1024  # bytes read and decoded at once
_TAIL_BLOCK = 64 * 1024  # bytes read at once when searching backwards
_BUFFER_LIMIT = 64 * 1024  # bytes buffered per file in "none" mode
_MAX_LISTED = 1000  # corrupt line numbers kept in a report (all are counted)
_BLANK = b" \t\r"  # a line made only of these is blank (skipped, as msgspec does)
_OPEN_ATTEMPTS = 10
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


# --- errors -------------------------------------------------------------------


class LogLockedError(EventBusError):
    """Raised when a log is opened for writing while another writer holds its lock.

    The other writer is an :class:`EventLog` that appended or a
    :class:`JsonlSink` that opened the file, in this process or another; it
    holds the lock until it is closed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(
            f"cannot write to {self.path}: another writer (in this process or another) "
            "holds its lock; close that EventLog or JsonlSink first, or only read from "
            "this one (reading never needs the lock)"
        )


class CorruptLogError(EventBusError, ValueError):
    """Raised in strict mode at the first damaged line of a log.

    Without ``strict=True`` the line is skipped (or, for an incomplete last
    line, cut by the writer) and counted in the :class:`RecoveryReport`.
    """

    def __init__(self, path: str, *, offset: int, problem: str, line: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.line = line
        self.problem = problem
        where = f"line {line} (byte offset {offset})" if line is not None else f"byte {offset}"
        super().__init__(
            f"{path}: {where} {problem}; open the log without strict=True to skip "
            "damaged lines (they are reported in its RecoveryReport)"
        )


def _check_durability(durability: str) -> None:
    if durability not in _DURABILITIES:
        raise ValueError(f"durability must be one of 'none', 'flush', 'fsync', got {durability!r}")


# --- recovery reports -------------------------------------------------------------


class RecoveryReport(msgspec.Struct, frozen=True, kw_only=True):
    """What reading or opening a log skipped or cut.

    ``torn_offset``/``torn_bytes``: where the incomplete last line starts and
    its size; ``torn_cut`` is true when a writer truncated it, false when a
    reader only ignored it. ``corrupt_count`` corrupt lines were skipped;
    ``corrupt_lines`` (1-based) and ``corrupt_offsets`` list the first 1000.
    """

    path: str
    torn_offset: int | None = None
    torn_bytes: int = 0
    torn_cut: bool = False
    corrupt_count: int = 0
    corrupt_lines: tuple[int, ...] = ()
    corrupt_offsets: tuple[int, ...] = ()

    @property
    def clean(self) -> bool:
        """``True`` when nothing was skipped or cut."""
        return self.torn_bytes == 0 and self.corrupt_count == 0

    def describe(self) -> str:
        """Say in one sentence what was skipped or cut."""
        parts = []
        if self.torn_bytes:
            verb = "cut" if self.torn_cut else "ignored"
            parts.append(
                f"{verb} an incomplete last line of {self.torn_bytes} bytes at offset "
                f"{self.torn_offset} (a write was interrupted)"
            )
        if self.corrupt_count:
            shown = ", ".join(map(str, self.corrupt_lines[:10]))
            more = ", ..." if self.corrupt_count > 10 else ""
            parts.append(f"skipped {self.corrupt_count} corrupt lines ({shown}{more})")
        return f"{self.path}: " + ("; ".join(parts) if parts else "clean")

    def to_event(self, session_id: str) -> Event:
        """Return a WARNING event for ``session_id`` that carries this report."""
        return Event(
            event_type=EventType.WARNING,
            session_id=session_id,
            message=f"event log recovered: {self.describe()}",
            metadata={"recovery": msgspec.json.decode(msgspec.json.encode(self))},
            parent_id=None,
        )


class _Scan:
    """Incremental, tolerant reading of one log, with what it skipped.

    ``end`` is the offset just after the last complete line read, ``tail``
    the size of the incomplete last line the last read saw. Line numbers are
    only needed for corrupt lines, so they are counted lazily: ``_lines``
    lines end before offset ``_counted``.
    """

    def __init__(self, path: str, *, strict: bool) -> None:
        self.path = path
        self.strict = strict
        self.end = 0
        self.tail = 0
        self.corrupt_count = 0
        self.corrupt_lines: list[int] = []
        self.corrupt_offsets: list[int] = []
        self.cut: tuple[int, int] | None = None
        self._fd: int | None = None
        self._lines = 0
        self._counted = 0

    def report(self) -> RecoveryReport:
        if self.cut is not None:
            torn_offset, torn_bytes, torn_cut = self.cut[0], self.cut[1], True
        elif self.tail:
            torn_offset, torn_bytes, torn_cut = self.end, self.tail, False
        else:
            torn_offset, torn_bytes, torn_cut = None, 0, False
        return RecoveryReport(
            path=self.path,
            torn_offset=torn_offset,
            torn_bytes=torn_bytes,
            torn_cut=torn_cut,
            corrupt_count=self.corrupt_count,
            corrupt_lines=tuple(self.corrupt_lines),
            corrupt_offsets=tuple(self.corrupt_offsets),
        )

    def read(self, fd: int, *, stop: int | None = None) -> Iterator[list[Event]]:
        """Yield the events of each chunk of complete lines from ``end`` on."""
        self._fd = fd
        try:
            for offset, view in self._regions(fd, stop):
                try:
                    # decode_events is annotated ``bytes``; msgspec reads any buffer, and
                    # a view saves copying each 4 MiB chunk.
                    events = decode_events(view)
                except EventDecodeError:
                    events = [event for event, _, _ in self._decode_each(bytes(view), offset)]
                self.end = offset + len(view)
                yield events
        finally:
            self._fd = None

    def read_positioned(self, fd: int) -> Iterator[list[tuple[Event, int, int]]]:
        """Like :meth:`read`, with each event's line offset and length."""
        self._fd = fd
        try:
            for offset, view in self._regions(fd, None):
                decoded = self.decode_positioned(bytes(view), offset)
                self.end = offset + len(view)
                yield decoded
        finally:
            self._fd = None

    def decode_positioned(self, data: bytes, offset: int) -> list[tuple[Event, int, int]]:
        """Decode complete lines starting at ``offset``, with positions."""
        try:
            events = decode_events(data)
        except EventDecodeError:
            return list(self._decode_each(data, offset))
        sizes = [size + 1 for size in map(len, data.split(b"\n"))]
        sizes.pop()  # what follows the last newline
        if len(sizes) != len(events):  # blank lines, which msgspec skipped: go slowly
            return list(self._decode_each(data, offset))
        # accumulate yields one more offset (the end), which strict=False leaves out
        return list(zip(events, accumulate(sizes, initial=offset), sizes, strict=False))

    def _regions(self, fd: int, stop: int | None) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(offset, view)`` of consecutive runs of complete lines."""
        position = self.end
        size = _CHUNK
        self.tail = 0
        while True:
            want = size if stop is None else min(size, stop - position)
            if want <= 0:
                return
            data = os.pread(fd, want, position)
            cut = data.rfind(b"\n") + 1
            if cut:
                yield position, memoryview(data)[:cut]
                position += cut
                size = _CHUNK
            elif len(data) < want or want < size:  # the end, inside an incomplete line
                self.tail = len(data)
                return
            else:  # one line longer than a chunk
                size *= 2

    def _decode_each(self, data: bytes, offset: int) -> Iterator[tuple[Event, int, int]]:
        """Decode line by line (the slow path), skipping and counting corrupt lines."""
        lines = data.split(b"\n")[:-1]
        first = self._lines_before(offset) + 1
        self._lines, self._counted = first - 1 + len(lines), offset + len(data)
        position = offset
        for number, raw in enumerate(lines, first):
            size = len(raw) + 1
            if raw.strip(_BLANK):
                try:
                    event = decode_event(raw)
                except EventDecodeError as exc:
                    self._corrupt(number, position, exc.reason)
                else:
                    yield event, position, size
            position += size

    def _lines_before(self, offset: int) -> int:
        """Count the lines that end before ``offset`` (0 when not reading a file)."""
        if self._fd is None:
            return 0
        while self._counted < offset:
            block = os.pread(self._fd, min(_CHUNK, offset - self._counted), self._counted)
            if not block:
                break
            self._lines += block.count(b"\n")
            self._counted += len(block)
        return self._lines

    def _corrupt(self, line: int, offset: int, reason: str) -> None:
        if self.strict:
            raise CorruptLogError(
                self.path, offset=offset, line=line, problem=f"is not a valid event ({reason})"
            )
        self.corrupt_count += 1
        if len(self.corrupt_lines) < _MAX_LISTED:
            self.corrupt_lines.append(line)
            self.corrupt_offsets.append(offset)


def iter_log(
    path: str | os.PathLike[str], *, strict: bool = False
) -> Iterator[tuple[Event, int, int]]:
    """Read a log without locking it: yield ``(event, offset, length)`` per event.

    ``offset`` is the byte offset of the event's line and ``length`` its size
    including the ``\\n``. Corrupt lines are skipped and an incomplete last
    line is ignored (a live writer may be finishing it).

    :param path: the ``events.jsonl`` file.
    :param strict: raise :class:`CorruptLogError` at a corrupt line instead.
    :raises FileNotFoundError: if ``path`` does not exist (raised by this call).
    """
    os.stat(path)  # a missing file raises here, not at the first next()
    return _iter_path(os.fspath(path), strict)


def _iter_path(path: str, strict: bool) -> Iterator[tuple[Event, int, int]]:
    fd = os.open(path, _READ_FLAGS)
    try:
        for chunk in _Scan(path, strict=strict).read_positioned(fd):
            yield from chunk
    finally:
        os.close(fd)


# --- the locked, writing end of a log --------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(directory: Path, *, fsync: bool) -> None:
    """Create ``directory`` and missing parents; in fsync mode, fsync each new entry."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue
        if fsync:
            _fsync_dir(new.parent)


def _last_line_end(fd: int, size: int) -> int:
    """Return the offset just after the last ``\\n`` before ``size`` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - _TAIL_BLOCK)
        found = os.pread(fd, position - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def _release(fd: int, buffer: bytearray) -> None:
    """Finalizer of a dropped writer: write what it buffered and close (unlock)."""
    try:
        if buffer:
            _write_all(fd, buffer)
    finally:
        os.close(fd)


class _LogWriter:
    """The open, locked, append-only end of one log file.

    ``size`` is the file's size on disk; in ``"none"`` mode up to 64 KiB more
    wait in ``buffer``. A write that fails is cut back off the file before the
    error propagates, so retrying it never duplicates events. Dropping the
    object closes the file and releases the lock.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        durability: Durability,
        size: int,
        cut: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        self.durability = durability
        self.size = size
        self.cut = cut
        self.buffer = bytearray()
        self._finalizer = weakref.finalize(self, _release, fd, self.buffer)

    @classmethod
    def open(
        cls, path: Path, *, durability: Durability, strict: bool, recover: bool = True
    ) -> _LogWriter:
        """Open ``path`` for appending, lock it, and cut an incomplete last line.

        :raises LogLockedError: if another writer holds the lock.
        :raises CorruptLogError: in strict mode, if there is an incomplete last line.
        """
        fsync = durability == "fsync"
        _make_parents(path.parent, fsync=fsync)
        for _ in range(_OPEN_ATTEMPTS):
            try:
                fd = os.open(path, _APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                fd = os.open(path, _APPEND_FLAGS)
            else:
                if fsync:
                    _fsync_dir(path.parent)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LogLockedError(path) from None
            except BaseException:
                os.close(fd)
                raise
            if _is_at(fd, path):
                break
            os.close(fd)  # replaced between open and lock (a clear()): open the new file
        else:
            raise LogLockedError(path)
        try:
            size = os.fstat(fd).st_size
            cut = None
            keep = _last_line_end(fd, size) if recover else size
            if keep < size:
                if strict:
                    raise CorruptLogError(
                        os.fspath(path),
                        offset=keep,
                        problem=f"is an incomplete last line of {size - keep} bytes "
                        "(a write was interrupted)",
                    )
                os.ftruncate(fd, keep)
                if fsync:
                    os.fsync(fd)
                cut = (keep, size - keep)
                logger.warning(
                    "%s: cut an incomplete last line of %d bytes at offset %d",
                    path,
                    size - keep,
                    keep,
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, durability=durability, size=keep, cut=cut)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def end(self) -> int:
        """The offset the next write starts at (buffered bytes included)."""
        return self.size + len(self.buffer)

    def write(self, data: bytes) -> None:
        """Append complete lines, as far as the durability mode says."""
        if self.durability == "none":
            if len(self.buffer) + len(data) <= _BUFFER_LIMIT:
                self.buffer += data
                return
            self.flush_buffer()
            if len(data) < _BUFFER_LIMIT:
                self.buffer += data
                return
        self._write_through(data)

    def flush_buffer(self) -> None:
        """Write what ``"none"`` mode buffered to the operating system."""
        if self.buffer:
            self._write_through(bytes(self.buffer))
            self.buffer.clear()

    def _write_through(self, data: bytes) -> None:
        start = self.size
        try:
            _write_all(self.fd, data)
            if self.durability == "fsync":
                os.fsync(self.fd)
        except BaseException as exc:
            self._undo(start, exc)
            raise
        self.size = start + len(data)

    def _undo(self, start: int, exc: BaseException) -> None:
        try:
            os.ftruncate(self.fd, start)
        except OSError as undo_exc:
            exc.add_note(
                f"could not cut the failed write off {self.path} ({undo_exc!r}); the file "
                "was closed and is repaired when it is opened again"
            )
            self._finalizer.detach()
            os.close(self.fd)

    def replace_with_empty(self) -> _LogWriter:
        """Atomically replace the file with an empty one, locked; close this writer."""
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, _APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temp, self.path)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        if self.durability == "fsync":
            _fsync_dir(self.path.parent)
        self.buffer.clear()  # events not yet written are cleared too
        self.close()
        return _LogWriter(self.path, fd, durability=self.durability, size=0)

    def close(self) -> None:
        """Write what is buffered, then close the file, releasing the lock."""
        if self._finalizer.alive:
            try:
                self.flush_buffer()
            finally:
                if self._finalizer.alive:
                    self._finalizer.detach()
                    os.close(self.fd)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    opened = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


# --- EventLog --------------------------------------------------------------------------


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
        ``cache=False`` only counts are kept: :meth:`get_events` reads the file
        each time and :meth:`get_latest` reads its end, so memory stays small
        for long sessions and answers are the same.
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
        _check_durability(durability)
        self.log_path = Path(log_path)
        self.cache = cache
        self.strict = strict
        self.durability: Durability = durability
        self._writer: _LogWriter | None = None
        self._events: list[Event] = []
        self._count = 0
        self._type_counts: Counter[EventType] | None = None  # made by the first count(type)
        self._scan = _Scan(os.fspath(self.log_path), strict=strict)
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
        writer = self._writer if self._writer is not None else self._lock()
        writer.write(line)
        self._scan.end += len(line)
        self._add([event])

    def clear(self) -> None:
        """Remove every event: the file is atomically replaced by an empty one.

        Takes the writer lock like :meth:`append` (and keeps it).

        :raises LogLockedError: if another writer holds the file's lock.
        """
        writer = self._writer
        if writer is None or writer.closed:
            writer = _LogWriter.open(
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
        if self.cache:
            return list(self._events) if query.is_empty else query.filter(self._events)
        matches = query.matches
        return [event for chunk in self._stream() for event in chunk if matches(event)]

    def get_latest(self, n: int = 100) -> list[Event]:
        """Return the last ``n`` events in append order (fewer if the log is shorter)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._sync()
        if n == 0:
            return []
        if self.cache:
            return self._events[-n:]
        return self._read_latest(n)

    def count(self, event_type: EventType | str | Sequence[EventType | str] | None = None) -> int:
        """Return the number of events, or of events of ``event_type`` (one or a list)."""
        self._sync()
        if event_type is None:
            return self._count
        types = EventQuery(event_type=event_type).event_type
        assert types is not None
        counts = self._type_counts
        if counts is None:
            counts = Counter(event.event_type for event in self._events)
            for chunk in () if self.cache else self._stream():
                counts.update([event.event_type for event in chunk])
            self._type_counts = counts
        return sum(counts[t] for t in types)

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        mode = "writing" if self.writing else "reading"
        return f"EventLog({os.fspath(self.log_path)!r}, {self._count} events, {mode})"

    # --- internals ------------------------------------------------------------------

    def _lock(self) -> _LogWriter:
        writer = _LogWriter.open(self.log_path, durability=self.durability, strict=self.strict)
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
            fd = os.open(self.log_path, _READ_FLAGS)
        except FileNotFoundError:
            self._reset()
            return
        try:
            for events in self._scan.read(fd):
                self._add(events)
            status = os.fstat(fd)
        finally:
            os.close(fd)
        self._seen = (status.st_dev, status.st_ino, self._scan.end + self._scan.tail)

    def _add(self, events: list[Event]) -> None:
        self._count += len(events)
        if self._type_counts is not None:
            self._type_counts.update([event.event_type for event in events])
        if self.cache:
            self._events.extend(events)

    def _reset(self) -> None:
        self._events = []
        self._count = 0
        self._type_counts = None
        self._scan = _Scan(os.fspath(self.log_path), strict=self.strict)
        self._seen = None

    def _stream(self) -> Iterator[list[Event]]:
        """Yield the file's events chunk by chunk, up to what this object has read."""
        try:
            fd = os.open(self.log_path, _READ_FLAGS)
        except FileNotFoundError:
            return
        try:
            yield from _Scan(self._scan.path, strict=False).read(fd, stop=self._scan.end)
        finally:
            os.close(fd)

    def _read_latest(self, n: int) -> list[Event]:
        """The last ``n`` events, reading backwards from the end in growing windows."""
        end = self._scan.end
        window = max(_TAIL_BLOCK, n * 1024)
        try:
            fd = os.open(self.log_path, _READ_FLAGS)
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
                decoded = _Scan(self._scan.path, strict=False).decode_positioned(
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

    ``batches``/``events``/``bytes``: what its writes appended; ``opened``
    and ``evicted``: files opened and closed to stay within
    ``max_open_files``; ``open_files``: files open (and locked) now;
    ``recoveries``: files whose torn last line was cut on opening.
    """

    batches: int
    events: int
    bytes: int
    opened: int
    evicted: int
    open_files: int
    recoveries: int


class JsonlSink:
    """A bus sink that appends each event to ``{workspace_root}/{session_id}/events.jsonl``.

    Each batch costs one write per session in it (with ``"fsync"``, one fsync
    per session file), done in a worker thread so the event loop never waits
    on the disk. When ``write`` returns, the batch is as durable as
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

    A session id that cannot name a directory (see
    :func:`validate_session_id`) fails the whole batch with
    :class:`InvalidNameError` before anything is written.

    :param workspace_root: the directory holding one directory per session.
    :param durability: ``"none"``, ``"flush"`` (default) or ``"fsync"``.
    :param max_open_files: the most files kept open at once.
    :param strict: raise :class:`CorruptLogError` instead of cutting a torn line.
    :param on_recovery: called with a WARNING event per file whose torn line was cut.
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
        _check_durability(durability)
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
        self._files: OrderedDict[str, _LogWriter] = OrderedDict()
        self._recoveries: list[RecoveryReport] = []
        self._unannounced: list[tuple[str, RecoveryReport]] = []
        self._partial: tuple[tuple[int, str, str], set[str]] | None = None
        self._closed = False
        self._batches = self._event_count = self._bytes = self._opened = self._evicted = 0

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
        )

    async def write(self, events: Sequence[Event]) -> None:
        """Append the batch to each of its sessions' logs (one write per session).

        :raises InvalidNameError: if a session id is invalid (nothing is written).
        :raises LogLockedError: if another writer holds a session's log.
        :raises OSError: if the disk fails. The failed session's lines are cut
            back off its file; sessions already written are skipped when the
            bus retries the same batch, so no event is written twice.
        """
        if self._closed:
            raise EventBusError("cannot write: this JsonlSink is closed; create a new one")
        if not events:
            return
        groups = self._group(events)
        key = (len(events), events[0].id, events[-1].id)
        done = self._partial[1] if self._partial is not None and self._partial[0] == key else set()
        todo = [
            (session_id, group) for session_id, group in groups.items() if session_id not in done
        ]
        try:
            await anyio.to_thread.run_sync(self._write_groups, todo, done)
        except BaseException:
            self._partial = (key, done)  # a retry of this batch skips the sessions done
            raise
        finally:
            self._announce()
        self._partial = None
        self._batches += 1
        self._event_count += len(events)

    async def aclose(self) -> None:
        """Write what is buffered and close every file, releasing their locks."""
        if self._closed:
            return
        self._closed = True
        await anyio.to_thread.run_sync(self._close_all)

    def __repr__(self) -> str:
        return f"JsonlSink({os.fspath(self.root)!r}, {self.durability!r}, {len(self._files)} open)"

    def _group(self, events: Sequence[Event]) -> dict[str, _Group]:
        """Split the batch by session, reusing each event's encoding; validate new ids."""
        lines = encoded_lines(events)
        groups: dict[str, tuple[list[Event], list[bytes]]] = {}
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

    def _write_groups(self, todo: list[tuple[str, _Group]], done: set[str]) -> None:
        """In a worker thread: append each session's lines."""
        for session_id, group in todo:
            writer = self._file(session_id)
            start = writer.end
            writer.write(group.data)
            done.add(session_id)
            self._bytes += len(group.data)
            if self._on_written is not None:
                offsets = list(accumulate(group.lengths, initial=start))
                offsets.pop()  # the end of the last line
                self._written.append((group.events, writer.path, offsets, group.lengths))

    def _file(self, session_id: str) -> _LogWriter:
        writer = self._files.get(session_id)
        if writer is not None:
            if not writer.closed:
                self._files.move_to_end(session_id)
                return writer
            del self._files[session_id]  # closed by a failed write: reopen and repair
        while len(self._files) >= self.max_open_files:
            _, evicted = self._files.popitem(last=False)
            self._evicted += 1
            evicted.close()
        path = self.path_for(session_id)
        writer = _LogWriter.open(path, durability=self.durability, strict=self.strict)
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
            self._unannounced.append((session_id, report))
        return writer

    def _announce(self) -> None:
        """On the event loop: pass new recoveries and written lines to the callbacks."""
        notices, self._unannounced = self._unannounced, []
        written, self._written = self._written, []
        if self._on_recovery is not None:
            for session_id, report in notices:
                try:
                    self._on_recovery(report.to_event(session_id))
                except Exception:
                    logger.exception(
                        "on_recovery failed to announce %s; it stays in JsonlSink.recoveries",
                        report.describe(),
                    )
        if self._on_written is not None:
            for events, path, offsets, lengths in written:
                try:
                    self._on_written(events, path, offsets, lengths)
                except Exception:
                    logger.exception("on_written failed for %d events of %s", len(events), path)

    def _close_all(self) -> None:
        errors: list[Exception] = []
        while self._files:
            _, writer = self._files.popitem(last=False)
            try:
                writer.close()
            except OSError as exc:
                errors.append(exc)
        if errors:
            if len(errors) > 1:
                errors[0].add_note(f"{len(errors) - 1} more files failed to close")
            raise errors[0]
