"""The file watcher of ``sinks.workspace._follow.ChangeHub`` on Linux: inotify, narrowly.

One inotify instance watches the workspace directory (sessions made,
removed or renamed) and each session's directory (its log written, made,
replaced or removed), and nothing below them: not ``artifacts/``, not the
files the agents write, and not opens or reads. A general-purpose recursive
watcher (``watchfiles``) is also told of every file *opened* in the tree, so
every API request that reads the logs makes its thread work (measured: 6%
of a core under an ``/api/sessions`` load), and it wakes every 10 ms to
check whether to stop; this one is woken only by writes that can concern a
log, and waits in the kernel (``select``, without the GIL) between them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import time
from contextlib import suppress
from typing import Final

from eventbus import is_valid_name

from .._layout import LOG_FILE_NAME

__all__: list[str] = []

# <sys/inotify.h>
_IN_MODIFY: Final = 0x2
_IN_CLOSE_WRITE: Final = 0x8
_IN_MOVED_FROM: Final = 0x40
_IN_MOVED_TO: Final = 0x80
_IN_CREATE: Final = 0x100
_IN_DELETE: Final = 0x200
_IN_Q_OVERFLOW: Final = 0x4000
_IN_IGNORED: Final = 0x8000
_IN_ONLYDIR: Final = 0x0100_0000
_IN_ISDIR: Final = 0x4000_0000
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC

#: The workspace directory: sessions made, removed or renamed.
_ROOT_MASK: Final = _IN_CREATE | _IN_MOVED_TO | _IN_DELETE | _IN_MOVED_FROM | _IN_ONLYDIR
#: A session's directory: its log written, made, replaced or removed.
_SESSION_MASK: Final = (
    _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO | _IN_DELETE | _IN_MOVED_FROM
) | _IN_ONLYDIR
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str = "") -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path or None)
    return result


class InotifyWatcher:
    """Watches ``root`` and its sessions' directories for changes of their logs.

    :raises OSError: the kernel refused an inotify instance (``EMFILE``: the
        per-user limit) or a watch (``ENOSPC``), here or in :meth:`wait`.
    """

    def __init__(self, root: str, *, debounce_ms: int, step_ms: int) -> None:
        self.root = root
        self._debounce = debounce_ms / 1000
        self._step = step_ms / 1000
        self._libc = _libc()
        self._fd = _check(self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC), "inotify_init1")
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sessions: dict[int, str] = {}  # watch descriptor -> session directory
        try:
            self._root_wd = self._add(root, _ROOT_MASK)
            for name in os.listdir(root):
                self._watch_session(name)
        except BaseException:
            self.close()
            raise

    def wait(self, timeout_ms: int) -> set[str]:
        """The logs changed, once changes stop for a step (at most the debounce time).

        Returns an empty set after ``timeout_ms`` without a change, or at once
        after :meth:`wake`.
        """
        if not self._ready(timeout_ms / 1000):
            return set()
        changed = self._read()
        deadline = time.monotonic() + self._debounce
        while (left := deadline - time.monotonic()) > 0 and self._ready(min(self._step, left)):
            changed |= self._read()
        return changed

    def wake(self) -> None:
        """Make a :meth:`wait` in another thread return now (never after :meth:`close`)."""
        with suppress(BlockingIOError):  # the pipe is full: it is woken already
            os.write(self._wake_write, b"x")

    def close(self) -> None:
        """Release the inotify instance."""
        for fd in (self._fd, self._wake_read, self._wake_write):
            os.close(fd)

    # --- internals ----------------------------------------------------------------------

    def _add(self, path: str, mask: int) -> int:
        return _check(
            self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask),
            "inotify_add_watch",
            path,
        )

    def _watch_session(self, name: str) -> str:
        """Watch session directory ``name`` (if it is one); return its log's path, or ``""``."""
        if not is_valid_name(name):
            return ""
        directory = os.path.join(self.root, name)
        try:
            wd = self._add(directory, _SESSION_MASK)
        except OSError as error:  # gone already, or not a directory
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return ""
            raise
        self._sessions[wd] = directory
        return os.path.join(directory, LOG_FILE_NAME)

    def _ready(self, timeout: float) -> bool:
        """Wait for events; ``False`` on timeout or when woken."""
        ready, _, _ = select.select([self._fd, self._wake_read], [], [], timeout)
        if self._wake_read in ready:
            while True:
                try:
                    os.read(self._wake_read, 512)
                except BlockingIOError:
                    break
            return False
        return bool(ready)

    def _read(self) -> set[str]:
        changed: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return changed
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = os.fsdecode(data[offset + _EVENT.size : offset + _EVENT.size + length])
                name = name.rstrip("\0")
                offset += _EVENT.size + length
                changed |= self._event(wd, mask, name)

    def _event(self, wd: int, mask: int, name: str) -> set[str]:
        """The logs one inotify event can concern."""
        if mask & _IN_Q_OVERFLOW:  # events were lost: every log may have changed
            return {
                os.path.join(self.root, entry, LOG_FILE_NAME)
                for entry in os.listdir(self.root)
                if is_valid_name(entry)
            }
        if mask & _IN_IGNORED:  # the directory went away
            self._sessions.pop(wd, None)
            return set()
        if wd == self._root_wd:
            if mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO):
                log = self._watch_session(name)  # its log may exist already: read it
                return {log} if log else set()
            if is_valid_name(name):
                return {os.path.join(self.root, name, LOG_FILE_NAME)}
            return set()
        directory = self._sessions.get(wd)
        if directory is not None and name == LOG_FILE_NAME:
            return {os.path.join(directory, LOG_FILE_NAME)}
        return set()
