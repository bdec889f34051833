"""Noticing a log that left its path, without a ``stat`` per line: inotify, on Linux.

A :class:`~sinks.jsonl.JsonlSink` must notice a log deleted or replaced
under it before the next line goes in. A ``stat`` of the path per line says
so, but costs a path walk in the file system (about a sixth of the live
path's time, one event at a time). Here one inotify instance per process
watches each open log's directory and the sink's root for what can take a
log off its path: an entry deleted or moved out or in (``IN_DELETE``,
``IN_MOVED_FROM``, ``IN_MOVED_TO``), the directory itself deleted or moved
(``IN_DELETE_SELF``, ``IN_MOVE_SELF``). The kernel queues such an event
before the call that caused it returns, so:

- nothing queued (one ``epoll_wait`` that does not wait, no file system work), and no
  queued event read since the writer's last ``stat`` (:attr:`DirWatch.generation`
  unchanged): the log is where it was, no ``stat`` needed;
- otherwise the writer reads the queue (:meth:`DirWatch.settle`) and looks
  with ``stat``, as without a watch.

Any event sends every watched writer of the process to ``stat`` once: the
queue is not sorted by directory (events are rare; a segment's seal makes
two). A directory above the root moved is not seen (a ``stat`` would see
the path gone): the lines follow the moved files, so none is lost.

Where inotify is missing (not Linux), its instance or watch limits are
reached (``fs.inotify.max_user_instances``, ``max_user_watches``), or a
session directory is a symlink, a writer uses ``stat`` before every line,
as before. A forked child makes an instance of its own: reading the one it
shares with its parent would take the parent's events.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import sys
import threading
from typing import Final

__all__ = ["DirWatch", "dir_watch"]

logger = logging.getLogger("eventbus.sinks.jsonl")

# <sys/inotify.h>
_IN_MOVED_FROM: Final = 0x00000040
_IN_MOVED_TO: Final = 0x00000080
_IN_DELETE: Final = 0x00000200
_IN_DELETE_SELF: Final = 0x00000400
_IN_MOVE_SELF: Final = 0x00000800
_IN_ONLYDIR: Final = 0x01000000
_MASK: Final = (
    _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
)


class DirWatch:
    """One inotify instance: whether anything may have left the watched directories.

    :attr:`generation` counts the reads of the queue: a writer that looked
    with ``stat`` at generation ``g`` may skip the next ``stat`` while
    :meth:`quiet` and the generation is still ``g``. Thread-safe.
    """

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self.fd = fd
        self._poll = select.epoll()  # told whether fd has events queued
        self._poll.register(fd, select.EPOLLIN)
        self.generation = 0
        self._libc = libc
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}  # watch descriptor -> writers using it

    def quiet(self) -> bool:
        """Whether nothing is queued: one ``epoll_wait`` that does not wait (quicker, in
        Python, than ``ioctl(FIONREAD)``), no file system work."""
        return not self._poll.poll(0, 1)

    def settle(self) -> int:
        """Read (and drop) what is queued; return the generation to remember before a ``stat``.

        The generation moves before the queue is read, so a writer that then
        finds the queue empty also finds the generation moved.
        """
        if self.quiet():
            return self.generation
        with self._lock:
            self.generation += 1
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(self.fd, 65536):
                    pass
            return self.generation

    def add(self, directories: tuple[str, ...]) -> tuple[int, ...] | None:
        """Watch ``directories``; their watch descriptors, or ``None`` if one cannot be watched
        (limits reached, gone): the writer then uses ``stat``."""
        added: list[int] = []
        with self._lock:
            for directory in directories:
                wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), _MASK)
                if wd < 0:
                    if ctypes.get_errno() == errno.ENOSPC:
                        _tell_once(
                            "the inotify watch limit is reached (fs.inotify.max_user_watches): "
                            "logs opened meanwhile are checked with stat before each line"
                        )
                    self._release(added)
                    return None
                self._counts[wd] = self._counts.get(wd, 0) + 1
                added.append(wd)
        return tuple(added)

    def remove(self, wds: tuple[int, ...]) -> None:
        """A writer that watched ``wds`` is closed."""
        with self._lock:
            self._release(wds)

    def _release(self, wds: list[int] | tuple[int, ...]) -> None:
        for wd in wds:
            left = self._counts.get(wd, 0) - 1
            if left > 0:
                self._counts[wd] = left
                continue
            self._counts.pop(wd, None)
            # fails (EINVAL) if the kernel dropped it already (its directory was deleted)
            self._libc.inotify_rm_watch(self.fd, wd)

    def close(self) -> None:
        """Close the instance (in a forked child: this process's descriptors only)."""
        self._poll.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1

    @property
    def watches(self) -> int:
        """How many directories are watched."""
        return len(self._counts)


_state: dict[str, DirWatch | None] = {}  # "watch": the process's instance (None: none)
_made = threading.Lock()
_told: set[str] = set()


def _tell_once(message: str) -> None:
    if message not in _told:
        _told.add(message)
        logger.info(message)


def dir_watch() -> DirWatch | None:
    """The process's :class:`DirWatch`, made on first use; ``None`` without inotify (or,
    until a later call succeeds, while the instance or descriptor limits are reached)."""
    try:
        return _state["watch"]
    except KeyError:
        pass
    with _made:
        if "watch" not in _state:
            watch, final = _new_watch()
            if watch is None and not final:
                return None  # a limit: tried again for the next log
            _state["watch"] = watch
        return _state["watch"]


def _new_watch() -> tuple[DirWatch | None, bool]:
    """A new instance, or ``None`` and whether that is final (no inotify here)."""
    if not sys.platform.startswith("linux"):
        return None, True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init = libc.inotify_init1
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None, True
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        final = code not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
        _tell_once(
            f"no inotify instance ({os.strerror(code)}): logs are checked with stat before "
            "each line" + ("" if final else " until one can be made")
        )
        return None, final
    try:
        return DirWatch(libc, fd), True
    except OSError as exc:  # no epoll instance (too many open files)
        os.close(fd)
        _tell_once(f"no epoll instance ({exc.strerror}): logs are checked with stat for now")
        return None, False


def _new_watch_in_child() -> None:
    """After ``fork``, in the child: drop the parent's instance (shared with the parent)."""
    global _made
    _made = threading.Lock()  # a parent's thread may have held it
    inherited = _state.pop("watch", None)
    if inherited is not None:
        inherited.close()


os.register_at_fork(after_in_child=_new_watch_in_child)
