"""The writing end of a JSONL event log: one locked, append-only file.

:class:`LogWriter` opens a log for appending, takes its OS lock (``flock``),
cuts an incomplete last line left by a crash, and writes batches of complete
lines as far as the durability mode says (buffered, flushed or fsynced); a
failed write is cut back off the file. The helpers here create directories
and fsync them. The public names are re-exported by :mod:`sinks.jsonl`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import weakref
from pathlib import Path
from typing import Literal

from eventbus import EventBusError

from ._jsonl_read import TAIL_BLOCK, CorruptLogError

__all__ = ["Durability", "LogLockedError"]

logger = logging.getLogger("eventbus.sinks.jsonl")

Durability = Literal["none", "flush", "fsync"]
"""How far an acknowledged write has gone; see :mod:`sinks.jsonl`."""

_DURABILITIES: tuple[Durability, ...] = ("none", "flush", "fsync")
_BUFFER_LIMIT = 64 * 1024  # bytes buffered per file in "none" mode
_OPEN_ATTEMPTS = 10
APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


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


def check_durability(durability: str) -> None:
    if durability not in _DURABILITIES:
        raise ValueError(f"durability must be one of 'none', 'flush', 'fsync', got {durability!r}")


# --- the locked, writing end of a log --------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
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


def _last_line_end(fd: int, size: int) -> int:
    """Return the offset just after the last ``\\n`` before ``size`` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - TAIL_BLOCK)
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


class LogWriter:
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
    ) -> LogWriter:
        """Open ``path`` for appending, lock it, and cut an incomplete last line.

        :raises LogLockedError: if another writer holds the lock.
        :raises CorruptLogError: in strict mode, if there is an incomplete last line.
        """
        fsync = durability == "fsync"
        _make_parents(path.parent, fsync=fsync)
        for _ in range(_OPEN_ATTEMPTS):
            try:
                fd = os.open(path, APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                fd = os.open(path, APPEND_FLAGS)
            else:
                if fsync:
                    fsync_dir(path.parent)
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

    def replace_with_empty(self) -> LogWriter:
        """Atomically replace the file with an empty one, locked; close this writer."""
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temp, self.path)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        if self.durability == "fsync":
            fsync_dir(self.path.parent)
        self.buffer.clear()  # events not yet written are cleared too
        self.close()
        return LogWriter(self.path, fd, durability=self.durability, size=0)

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
