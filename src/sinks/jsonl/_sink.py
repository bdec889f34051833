"""``JsonlSink``: the bus sink that appends each session's events to its log.

Re-exported by :mod:`sinks.jsonl`, whose docstring describes the format,
durability, locking and recovery.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

import anyio.to_thread
import msgspec

from eventbus import (
    Event,
    EventBatch,
    EventBusError,
    EventsLostError,
    EventType,
    PartialWriteError,
    encode_event,
    encoded_lines,
    validate_session_id,
)

from .._layout import LOG_FILE_NAME, check_link
from ._read import RecoveryReport
from ._write import (
    DEFAULT_LOCK_TIMEOUT,
    Durability,
    LogWriter,
    check_durability,
    check_lock_timeout,
)

__all__ = ["JsonlSink", "JsonlSinkStats", "WrittenCallback"]

logger = logging.getLogger("eventbus.sinks.jsonl")

_get_session_id = operator.attrgetter("session_id")
# A batch at most this big, for files already open, is written on the event
# loop in "none" and "flush" mode (see JsonlSink): measured at 1.5-3 us a
# session plus ~0.5 us per KiB (a stat and a write to the page cache), well
# under a thread hop (~60-250 us).
_INLINE_BYTES = 64 * 1024

DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024
"""The size past which :class:`JsonlSink` seals a log's live file, by default."""


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

    A log's live file is sealed into the next segment before a batch would
    take it past ``segment_bytes`` (see :mod:`sinks.jsonl`, "Segments").

    Each batch costs one write per session in it (with ``"fsync"``, one fsync
    per session file). Which path a batch takes:

    - **On the event loop**, in ``"none"`` and ``"flush"`` mode, when the
      batch is at most 64 KiB and every session in it has its log open
      already: a ``stat`` and a ``write`` into the page cache per session,
      much cheaper than a hop to a worker thread. This
      is the live path: a coordinator publishing one event at a time (a
      batch of one takes a shorter path, without grouping by session).
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
    event and kept open; a lock another writer holds is waited for, up to
    ``lock_timeout``, in the worker thread (the event loop never waits);
    beyond ``max_open_files`` the least recently used is closed, releasing
    its lock. Opening cuts an incomplete last line left by
    a crash; each cut is kept in :attr:`recoveries`, logged, and passed as a
    WARNING event to ``on_recovery``: use ``on_recovery=bus.publish_nowait``
    to put it on the bus (it is called on the event loop; an exception it
    raises is logged). Only the end of a file is checked when it is opened;
    corrupt lines elsewhere are reported by :class:`EventLog` and
    :func:`iter_log` when they read it.

    Faults, and what the sink does:

    - **One session fails** (its directory cannot be made, its log stays
      locked by another writer for ``lock_timeout``, is not a regular
      file...): every other session of the batch is written, then ``write`` raises
      :class:`~eventbus.PartialWriteError` naming the failed sessions (they
      are in ``stats().failed_sessions`` until a write to them succeeds).
      When the bus retries the same batch, the sessions already written are
      skipped: nothing is written twice.
    - **A buffer is lost** (``"none"`` mode: writing it failed, e.g. a full
      disk or an I/O error, when it filled, on eviction or on ``aclose``):
      :class:`~eventbus.EventsLostError` says how many acknowledged events
      are gone; ``stats().lost`` counts them, ``stats().failed`` is set and
      every later ``write`` is refused (the bus fails the sink at once).
    - **A log is deleted, replaced or moved, or its directory or the root
      deleted, replaced or moved**, while open: noticed before the next batch
      is written to it, never written into the unlinked file. On Linux an
      inotify watch on the log's directory and the root says whether an entry
      was deleted or moved there since the log was last looked at; only then
      is it looked at with ``stat`` (elsewhere, or past inotify's limits: one
      ``stat`` per file and batch; see :mod:`sinks.jsonl._watch`).
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
    :param lock_timeout: how many seconds opening a log waits for a lock
        another writer holds before that session fails with
        :class:`LogLockedError` (``0``: at once). The wait covers a lock that
        outlives its writer by a moment, e.g. one kept by a process forked
        while the log was open until the child has started.
    :param strict: raise :class:`CorruptLogError` instead of cutting a torn line.
    :param on_recovery: called with a WARNING event per file whose torn line
        was cut, or that was recreated after being deleted or replaced.
    :param on_written: called after each session's part of a batch is written
        with ``(events, path, offsets, lengths)``: each event's line offset
        and size (newline included). Its signature is
        ``EventIndex.add_located``'s, so ``on_written=index.add_located`` keeps
        a low-memory :class:`~sinks.index.EventIndex` current. Called on the
        event loop; an exception it raises is logged. Not with ``"none"``,
        whose lines may still be buffered. ``path`` is the live file's and
        offsets are log offsets, which stay valid when segments are sealed.
    :param segment_bytes: seal a log's live file into the next sealed
        segment (``events.000001.jsonl``, ...; see :mod:`sinks.jsonl`) before
        a batch would take it past this many bytes, so no file grows without
        bound; 256 MiB by default (a demo session writes one file), ``None``
        for one file that grows for ever (the seed's format).
    :param name: the sink's name in the bus's stats.
    """

    def __init__(
        self,
        workspace_root: str | os.PathLike[str],
        *,
        durability: Durability = "flush",
        max_open_files: int = 64,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        strict: bool = False,
        on_recovery: Callable[[Event], object] | None = None,
        on_written: WrittenCallback | None = None,
        segment_bytes: int | None = DEFAULT_SEGMENT_BYTES,
        name: str = "jsonl",
    ) -> None:
        check_durability(durability)
        if segment_bytes is not None and (
            not isinstance(segment_bytes, int)
            or isinstance(segment_bytes, bool)
            or segment_bytes < 1
        ):
            raise ValueError(
                f"segment_bytes must be a number of bytes >= 1 or None, got {segment_bytes!r}"
            )
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        check_lock_timeout(lock_timeout)
        if on_written is not None and durability == "none":
            raise ValueError(
                "on_written needs durability 'flush' or 'fsync': in 'none' mode written "
                "lines may still be buffered in this process, so they cannot be read back"
            )
        self.root = Path(workspace_root)
        self.durability: Durability = durability
        self.max_open_files = max_open_files
        self.lock_timeout = lock_timeout
        self.strict = strict
        self.segment_bytes = segment_bytes
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
        count = len(events)
        if count == 1 and self._write_one(events):
            return
        if not count:
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
                    failures = self._write_locked(todo, done, lock_timeout=0)
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

    def _write_one(self, events: Sequence[Event]) -> bool:
        """The live path: one small event to a log already open, on the loop; False to take
        the general path (fsync, a log to open or reopen, a retry, a lock held by a thread).

        Does what the general path does for such a batch, without grouping:
        the same checks, the same bookkeeping, the same errors.
        """
        if self._partial is not None or self._unannounced:
            return False
        event = events[0]
        session_id = event.session_id
        writer = self._files.get(session_id)
        if writer is None:
            return False
        # encoded_lines(events)[0], without its call: the bus's batches hold the encoding
        line = (events.lines[0] if type(events) is EventBatch else encode_event(event)) + b"\n"
        if len(line) > _INLINE_BYTES or not self._lock.acquire(blocking=False):
            return False
        try:
            if self.durability == "flush":  # a stat and a write (None: the general path)
                start = writer.append_here(line)
                if start is None:
                    return False
            else:
                if self.durability == "fsync" or writer.closed or writer.moved() is not None:
                    return False  # fsync: a thread; deleted or replaced: the general path reopens
                start = writer.write(line, 1)
        except EventsLostError as exc:
            self._fail(exc)
            raise
        except Exception as exc:
            logger.warning(
                "%s: could not write 1 events of session %r: %r", self.name, session_id, exc
            )
            self._partial = ((1, event.id, event.id), set())
            self._failed_sessions[session_id] = exc
            raise PartialWriteError({session_id: exc}) from None
        finally:
            self._lock.release()
        self._files.move_to_end(session_id)
        self._bytes += len(line)
        self._event_count += 1
        self._batches += 1
        if self._failed_sessions:
            self._failed_sessions.pop(session_id, None)
        if self._on_written is not None:
            self._written.append(([event], writer.path, [start], [len(line)]))
            self._announce()
        return True

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
            return self._write_locked(todo, done, lock_timeout=self.lock_timeout)

    def _write_locked(
        self, todo: list[tuple[str, _Group]], done: set[str], *, lock_timeout: float
    ) -> dict[str, Exception]:
        """Append each session's lines; return the sessions that failed (``self._lock`` held).

        ``lock_timeout`` is how long reopening a log that left its path may
        wait for its lock: ``0`` on the event loop (the session fails, and the
        bus's retry opens it in a worker thread, which waits).

        :raises EventsLostError: if buffered events were lost (the sink fails).
        """
        failures: dict[str, Exception] = {}
        for session_id, group in todo:
            if session_id in done:  # an abandoned attempt of this batch wrote it meanwhile
                continue
            try:
                writer = self._file(session_id, lock_timeout)
                start = writer.write(group.data, len(group.events))
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

    def _file(self, session_id: str, lock_timeout: float) -> LogWriter:
        """The open writer of ``session_id``'s log: checked, reopened or opened."""
        writer = self._files.get(session_id)
        if writer is not None:
            if not writer.closed:
                problem = writer.moved()
                if problem is None:
                    self._files.move_to_end(session_id)
                    return writer
                del self._files[session_id]
                return self._reopen(session_id, writer, problem, lock_timeout)
            del self._files[session_id]  # closed in a forked child: open it again
        while len(self._files) >= self.max_open_files:
            self._evict(1)
        return self._open(session_id, lock_timeout)

    def _open(self, session_id: str, lock_timeout: float) -> LogWriter:
        """Open (create, lock, repair) a session's log; on ``EMFILE`` close files and retry."""
        path = self.path_for(session_id)
        if os.path.islink(path.parent):  # followed only if it stays inside the root
            check_link(os.fspath(self.root), os.fspath(path.parent))
        while True:
            try:
                writer = LogWriter.open(
                    path,
                    durability=self.durability,
                    strict=self.strict,
                    follow_symlinks=False,
                    lock_timeout=lock_timeout,
                    segment_bytes=self.segment_bytes,
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

    def _reopen(
        self, session_id: str, old: LogWriter, problem: str, lock_timeout: float
    ) -> LogWriter:
        """Create a log again that left its path while open; move its buffer over."""
        data, count = old.abandon()
        logger.warning(
            "%s: %s %s while this sink held it open: creating it again",
            self.name,
            old.path,
            problem,
        )
        try:
            writer = self._open(session_id, lock_timeout)
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
                writer = self._reopen(session_id, writer, problem, self.lock_timeout)
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
