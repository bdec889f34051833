"""The writing end of a JSONL event log: one locked, append-only file.

:class:`LogWriter` opens a log for appending, takes its OS lock (``flock``),
cuts an incomplete last line left by a crash, and writes batches of complete
lines as far as the durability mode says (buffered, flushed or fsynced); a
failed write is cut back off the file. With ``segment_bytes`` it seals the
live file into the next segment (:meth:`LogWriter.seal`) as it grows. The
helpers here create directories and fsync them. The public names are
re-exported by :mod:`sinks.jsonl`.

Faults: a buffer (``"none"`` mode) that cannot be written raises
:class:`~eventbus.EventsLostError` with the number of events it held; a
writer inherited by a forked child is closed there at once, without writing
its buffer and without unlocking the parent's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
import weakref
from pathlib import Path
from typing import Literal

from eventbus import EventBusError, EventsLostError

from .._files import UnsafeSymlinkError, open_regular
from .._layout import MAX_SEGMENTS, sealed_name, sealed_names, segment_number
from .._lines import complete_end
from ._read import CorruptLogError
from ._watch import DirWatch, dir_watch

__all__ = ["Durability", "LogLockedError"]

logger = logging.getLogger("eventbus.sinks.jsonl")

Durability = Literal["none", "flush", "fsync"]
"""How far an acknowledged write has gone; see :mod:`sinks.jsonl`."""

_DURABILITIES: tuple[Durability, ...] = ("none", "flush", "fsync")
_BUFFER_LIMIT = 64 * 1024  # bytes buffered per file in "none" mode
_OPEN_ATTEMPTS = 10
DEFAULT_LOCK_TIMEOUT = 2.0  # seconds a writer waits for a lock someone else holds
_FIRST_LOCK_WAIT = 0.001  # seconds; doubled after each try, up to _MAX_LOCK_WAIT
_MAX_LOCK_WAIT = 0.05
APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
_stat = os.stat


# --- errors -------------------------------------------------------------------


class LogLockedError(EventBusError):
    """Raised when another writer kept a log's lock for the whole ``lock_timeout``.

    The other writer is an :class:`EventLog` that appended or a
    :class:`JsonlSink` that opened the file, in this process or another; it
    holds the lock until it is closed. ``waited`` is how long this writer
    waited for it, in seconds.
    """

    def __init__(self, path: str | os.PathLike[str], waited: float = 0.0) -> None:
        self.path = os.fspath(path)
        self.waited = waited
        held = f"held its lock for {waited:g} s" if waited > 0 else "holds its lock"
        super().__init__(
            f"cannot write to {self.path}: another writer (in this process or another) "
            f"{held}; close that EventLog or JsonlSink first, or only read from "
            "this one (reading never needs the lock)"
        )


def check_lock_timeout(lock_timeout: float) -> None:
    if not lock_timeout >= 0:  # NaN too
        raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout!r}")


def _take_lock(fd: int, path: Path, timeout: float) -> None:
    """Lock ``fd`` (``flock``), trying again with growing waits for up to ``timeout`` seconds.

    A lock is often held a moment longer than its writer lives: a process
    forked while the log was open shares the locked file until its fork
    handler closes it, so a parent that closes a log and opens it again at
    once would find it locked.

    :raises LogLockedError: the lock was still held after ``timeout`` seconds.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        if timeout <= 0:
            raise LogLockedError(path) from None
    logger.debug("%s: another writer holds its lock; waiting up to %g s for it", path, timeout)
    deadline = time.monotonic() + timeout
    wait = _FIRST_LOCK_WAIT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LogLockedError(path, waited=timeout) from None
        time.sleep(min(wait, remaining))
        wait = min(wait * 2, _MAX_LOCK_WAIT)
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return


def check_durability(durability: str) -> None:
    if durability not in _DURABILITIES:
        raise ValueError(f"durability must be one of 'none', 'flush', 'fsync', got {durability!r}")


# --- the locked, writing end of a log --------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a short write (a signal, a full pipe): write the rest
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
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
            fsync_dir(new.parent)


def _release(fd: int, buffer: bytearray, path: Path) -> None:
    """Finalizer of a dropped writer: write what it buffered and close (unlock)."""
    try:
        if buffer:
            _write_all(fd, buffer)
    except OSError:
        logger.exception("%s: a dropped writer could not write its buffered events", path)
    finally:
        os.close(fd)


def _open_log(path: Path, flags: int) -> int:
    """Open a log file, refusing non-regular files and (with ``O_NOFOLLOW``) symlinks."""
    try:
        return open_regular(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and flags & os.O_NOFOLLOW and os.path.islink(path):
            raise UnsafeSymlinkError(
                path,
                os.readlink(path),
                "where a log file should be; JsonlSink does not follow a symlink in place "
                "of a log: replace the link with the file itself",
            ) from None
        raise


class LogWriter:
    """The open, locked, append-only end of one log file.

    ``size`` is the file's size on disk; in ``"none"`` mode up to 64 KiB more
    wait in ``buffer`` (``buffered_events`` events). A write that fails is
    cut back off the file before the error propagates (or, if even that
    fails, before the next write), so retrying it never duplicates events.
    Dropping the object closes the file and releases the lock. In a child
    forked from this process the writer is closed at once, without writing
    its buffer or unlocking (see :func:`_forget_inherited_writers`).
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        durability: Durability,
        size: int,
        cut: tuple[int, int] | None = None,
        base: int = 0,
        sealed: int = 0,
        segment_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        self.durability = durability
        self.size = size
        self.cut = cut
        self.base = base  # the log offset of the live file's start: its sealed segments' size
        self.sealed = sealed  # the number of the last sealed segment (0: none)
        self.segment_bytes = segment_bytes
        self.buffer = bytearray()
        self.buffered_events = 0
        self.forked = False
        opened = os.fstat(fd)
        self._identity = (opened.st_dev, opened.st_ino)  # fixed while the file is open
        self._where = os.fspath(path)
        self._cut_pending = False  # a failed write could not be cut off: cut before the next
        self._finalizer = weakref.finalize(self, _release, fd, self.buffer, path)
        # The directory watch (see sinks.jsonl._watch): once watching, a stat that found the
        # file in place at generation _seen vouches for it until the watch has news.
        self._watch: DirWatch | None = None
        self._watchable = True
        self._unwatch: weakref.finalize[..., LogWriter] | None = None
        self._seen = -1
        _live_writers.add(self)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        durability: Durability,
        strict: bool,
        recover: bool = True,
        follow_symlinks: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        segment_bytes: int | None = None,
    ) -> LogWriter:
        """Open ``path`` for appending, lock it, and cut an incomplete last line.

        Blocks the calling thread while it waits for the lock.

        :param follow_symlinks: with ``False``, a symlink at ``path`` is refused.
        :param lock_timeout: how long to wait for a lock another writer holds.
        :param segment_bytes: seal the live file before a write would take it
            past this size (``None``: never); see :meth:`seal`.
        :raises LogLockedError: if another writer held the lock for ``lock_timeout``.
        :raises CorruptLogError: in strict mode, if there is an incomplete last line.
        :raises NotARegularFileError: if ``path`` is a FIFO, a device, a directory...
        :raises UnsafeSymlinkError: if ``path`` is a dangling symlink, or any
            symlink when ``follow_symlinks`` is false.
        """
        fsync = durability == "fsync"
        flags = APPEND_FLAGS if follow_symlinks else APPEND_FLAGS | os.O_NOFOLLOW
        _make_parents(path.parent, fsync=fsync)
        for _ in range(_OPEN_ATTEMPTS):
            try:
                fd = _open_log(path, flags | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                try:
                    fd = _open_log(path, flags)
                except FileNotFoundError:
                    if os.path.islink(path):
                        raise UnsafeSymlinkError(
                            path,
                            os.readlink(path),
                            "which does not exist; remove the link or create its target",
                        ) from None
                    continue  # removed between the two opens: create it
            else:
                if fsync:
                    fsync_dir(path.parent)
            try:
                _take_lock(fd, path, lock_timeout)
            except BaseException:
                os.close(fd)
                raise
            if _is_at(fd, path):
                break
            os.close(fd)  # replaced between open and lock (a clear()): open the new file
        else:
            raise LogLockedError(path)
        try:
            fd, base, sealed = _segments_before(path, fd, fsync=fsync)
            size = os.fstat(fd).st_size
            cut = None
            keep = complete_end(fd, size) if recover else size
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
        return cls(
            path,
            fd,
            durability=durability,
            size=keep,
            cut=cut,
            base=base,
            sealed=sealed,
            segment_bytes=segment_bytes,
        )

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def end(self) -> int:
        """The offset the next write starts at (buffered bytes included)."""
        return self.size + len(self.buffer)

    def moved(self) -> str | None:
        """Say how the file left ``path`` (deleted, replaced...), or ``None`` if it is there.

        While the directory watch has nothing to tell since the last look,
        ``None`` at once; else one ``stat`` of the path, compared with the open
        file's device and inode (which cannot be reused while it is open):
        cheap enough to call before each batch.
        """
        if self._in_place():
            return None
        if os.fstat(self.fd).st_nlink == 0:
            return "was deleted"
        if not os.path.exists(self._where):
            return "is gone (its directory was deleted, moved or replaced)"
        return "was replaced by another file"

    def _in_place(self) -> bool:
        """Whether the open file is still the one at its path: the directory watch vouches
        for it while it has no news since the last look; else one ``stat`` looks (the watch
        set up first), and a file found in place is vouched for from then on."""
        watch = self._watch
        if watch is not None and watch.quiet() and watch.generation == self._seen:
            return True
        if watch is None and self._watchable:
            watch = self._start_watching()
        seen = -1 if watch is None else watch.settle()  # read before the stat, never after
        try:
            current = _stat(self._where)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if current.st_ino != self._identity[1] or current.st_dev != self._identity[0]:
            return False
        self._seen = seen
        return True

    def _start_watching(self) -> DirWatch | None:
        """Watch the file's directory and the one above (a sink's root), or say it cannot."""
        self._watchable = False
        watch = dir_watch()
        directory = os.path.dirname(self._where)
        if watch is None or os.path.islink(directory):  # a link's target may move unseen
            return None
        wds = watch.add((directory, os.path.dirname(directory)))
        if wds is None:
            return None
        self._watch = watch
        self._unwatch = weakref.finalize(self, watch.remove, wds)
        self._unwatch.atexit = False  # exiting closes the instance anyway
        return watch

    def _stop_watching(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self._watch = None

    def append_here(self, data: bytes) -> int | None:
        """The live path of ``"flush"`` mode: append complete lines if the file is still at
        its path; ``None`` when :meth:`write` must do it (another mode, a seal due, a
        failed write to cut first) or the file left its path (see :meth:`moved`).

        A look at the directory watch (a ``stat`` of the path when it has
        news) and one ``write``: what :meth:`moved` and :meth:`write` do for
        such lines, without their set-up.

        :returns: the log offset ``data`` starts at.
        """
        size = self.size
        limit = self.segment_bytes
        if (
            self.durability != "flush"
            or self._cut_pending
            or (limit is not None and size > 0 and size + len(data) > limit)
            or not self._finalizer.alive
        ):
            return None
        if not self._in_place():
            return None
        try:
            _write_all(self.fd, data)
        except BaseException as exc:
            self._undo(size, exc)
            raise
        self.size = size + len(data)
        return self.base + size

    def write(self, data: bytes, count: int) -> int:
        """Append complete lines (``count`` events), as far as the durability mode says.

        Seals the live file first (:meth:`seal`) if ``data`` would take it
        past ``segment_bytes`` (a file holding nothing yet is never sealed, so
        a batch bigger than the limit makes one bigger segment).

        :returns: the log offset ``data`` starts at (see :mod:`sinks._segments`).
        :raises EventsLostError: in ``"none"`` mode, if the buffer had to be
            written to make room and that failed (``data`` is not written).
        """
        self._check_open()
        limit = self.segment_bytes
        if (
            limit is not None
            and self.end > 0
            and self.end + len(data) > limit
            and self.sealed < MAX_SEGMENTS
        ):
            self.seal()
        start = self.base + self.end
        if self.durability == "none":
            if len(self.buffer) + len(data) <= _BUFFER_LIMIT:
                self.buffer += data
                self.buffered_events += count
                return start
            self.flush_buffer()
            if len(data) < _BUFFER_LIMIT:
                self.buffer += data
                self.buffered_events += count
                return start
        self._write_through(data)
        return start

    def seal(self) -> None:
        """Make the live file the next sealed segment, and go on in a new, empty live file.

        What is buffered is written first (and fsynced in ``"fsync"`` mode).
        The live file is hard-linked to its sealed name, then the live name is
        atomically replaced by a new file this writer already holds locked:
        the live name never goes missing and no other writer can take it in
        between. A reader that has the old file open reads it to its end,
        then goes on in the next segment (see :mod:`sinks._segments`). A
        crash between the two steps leaves the live file under both names;
        readers read it once, and the next writer finishes the seal. On a
        file system without hard links the writer stops sealing (logged once)
        and the live file grows.
        """
        self._check_open()
        self.flush_buffer()
        if self._cut_pending:
            os.ftruncate(self.fd, self.size)
            self._cut_pending = False
        if self.durability == "fsync":
            os.fsync(self.fd)
        number = self.sealed + 1
        while True:
            sealed = self.path.with_name(sealed_name(self.path.name, number))
            try:
                os.link(self.path, sealed)
            except FileExistsError:  # a file put there by hand: take the next number
                names = sealed_names(os.fspath(self.path.parent), self.path.name)
                number = max(number, segment_number(self.path.name, names[-1])) + 1
                if number > MAX_SEGMENTS:
                    self.segment_bytes = None
                    return
                continue
            except OSError as exc:  # no hard links on this file system: one growing file
                logger.warning(
                    "%s: cannot seal it into %s (%s): it grows as one file from now on",
                    self.path,
                    sealed.name,
                    exc.strerror or exc,
                )
                self.segment_bytes = None
                return
            break
        fd = _replace_with_new(self.path, fsync=self.durability == "fsync")
        self._finalizer.detach()
        os.close(self.fd)
        self.fd = fd
        self.base += self.size
        self.size = 0
        self.sealed = number
        opened = os.fstat(fd)
        self._identity = (opened.st_dev, opened.st_ino)
        self._finalizer = weakref.finalize(self, _release, fd, self.buffer, self.path)

    def flush_buffer(self) -> None:
        """Write what ``"none"`` mode buffered to the operating system.

        :raises EventsLostError: if that fails: the buffered events are dropped
            (they were acknowledged, so they are lost) and the error says how many.
        """
        if not self.buffer:
            return
        self._check_open()
        lost = self.buffered_events
        try:
            self._write_through(bytes(self.buffer))
        except OSError as exc:
            self.buffer.clear()
            self.buffered_events = 0
            raise EventsLostError(lost, os.fspath(self.path), str(exc)) from exc
        self.buffer.clear()
        self.buffered_events = 0

    def _check_open(self) -> None:
        if self._finalizer.alive:
            return
        if self.forked:
            raise EventBusError(
                f"cannot write to {self.path}: this process was forked from the one that "
                "opened it, so its writer was closed here; open the log again in this process"
            )
        raise EventBusError(f"cannot write to {self.path}: its writer is closed")

    def _write_through(self, data: bytes) -> None:
        start = self.size
        try:
            if self._cut_pending:
                os.ftruncate(self.fd, start)
                self._cut_pending = False
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
            self._cut_pending = True
            exc.add_note(
                f"could not cut the failed write off {self.path} ({undo_exc!r}); it is cut "
                "before the next write (the file stays open and locked until then)"
            )

    def replace_with_empty(self) -> LogWriter:
        """Remove the sealed segments, atomically replace the file with an empty one,
        locked; close this writer."""
        for name in sealed_names(os.fspath(self.path.parent), self.path.name):
            (self.path.parent / name).unlink(missing_ok=True)
        fd = _replace_with_new(self.path, fsync=self.durability == "fsync")
        self.buffer.clear()  # events not yet written are cleared too
        self.buffered_events = 0
        self.close()
        return LogWriter(
            self.path, fd, durability=self.durability, size=0, segment_bytes=self.segment_bytes
        )

    def abandon(self) -> tuple[bytes, int]:
        """Close without writing the buffer (the file left its path); return it and its count."""
        data, count = bytes(self.buffer), self.buffered_events
        self.buffer.clear()
        self.buffered_events = 0
        self._stop_watching()
        if self._finalizer.alive:
            self._finalizer.detach()
            os.close(self.fd)
        return data, count

    def close(self) -> None:
        """Write what is buffered, then close the file, releasing the lock.

        :raises EventsLostError: if the buffer could not be written (the file
            is closed all the same).
        """
        self._stop_watching()
        if self._finalizer.alive:
            try:
                self.flush_buffer()
            finally:
                if self._finalizer.alive:
                    self._finalizer.detach()
                    self._cut_before_close()
                    os.close(self.fd)

    def _cut_before_close(self) -> None:
        if not self._cut_pending:
            return
        try:
            os.ftruncate(self.fd, self.size)
        except OSError as exc:
            logger.warning(
                "%s: could not cut a failed write off before closing (%r); the next "
                "writer cuts its incomplete last line",
                self.path,
                exc,
            )

    def _forget(self) -> None:
        """In a forked child: drop the buffer and close the inherited descriptor.

        Neither writes (the parent writes its own buffer) nor unlocks: ``flock``
        locks belong to the open file description the parent shares, so
        ``LOCK_UN`` here would unlock the parent's file. Closing this process's
        descriptor drops only its reference.
        """
        self.buffer.clear()
        self.buffered_events = 0
        self.forked = True
        if self._unwatch is not None:  # the parent's instance: the child made its own
            self._unwatch.detach()
            self._unwatch = None
        self._watch = None
        if self._finalizer.alive:
            self._finalizer.detach()
            with contextlib.suppress(OSError):  # nothing to undo if it is already closed
                os.close(self.fd)


_live_writers: weakref.WeakSet[LogWriter] = weakref.WeakSet()


def _forget_inherited_writers() -> None:
    """After ``fork``, in the child: close every writer inherited from the parent.

    Otherwise the child would write the parent's buffered lines a second
    time when it exits, and keep the parent's log locked after the parent
    closed it (so a later writer's :class:`LogLockedError` would blame a
    writer that no longer exists).
    """
    for writer in list(_live_writers):
        writer._forget()


os.register_at_fork(after_in_child=_forget_inherited_writers)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    opened = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


def _replace_with_new(path: Path, *, fsync: bool) -> int:
    """Atomically put a new, empty file at ``path``, locked by the returned descriptor."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(temp, path)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return fd


def _segments_before(path: Path, fd: int, *, fsync: bool) -> tuple[int, int, int]:
    """``(fd, base, sealed)`` for the locked live file ``fd``: its sealed segments' total
    size and the last one's number. A seal a crash interrupted (the live file is also the
    last sealed segment) is finished first: ``fd`` is then a new, empty, locked live file.
    """
    names = sealed_names(os.fspath(path.parent), path.name)
    if not names:
        return fd, 0, 0
    opened = os.fstat(fd)
    base = 0
    seen: set[tuple[int, int]] = set()
    last: tuple[int, int] | None = None
    for name in names:
        status = os.stat(path.parent / name)
        last = (status.st_dev, status.st_ino)
        if last not in seen:
            seen.add(last)
            base += status.st_size
    if last == (opened.st_dev, opened.st_ino):  # linked, not yet replaced: finish the seal
        new = _replace_with_new(path, fsync=fsync)
        os.close(fd)
        fd = new
        logger.warning("%s: finished sealing its last segment (a writer stopped midway)", path)
    return fd, base, segment_number(path.name, names[-1])
