"""Opening log files safely: regular files only, never a hang, no symlink out of the root.

A FIFO opened for reading blocks until a writer appears, so every open here
adds ``O_NONBLOCK`` (which regular files ignore) and checks with ``fstat``
that it got a regular file before anything is read or written. The public
names are re-exported by :mod:`sinks.jsonl`.
"""

from __future__ import annotations

import errno
import os
import stat

from eventbus import EventBusError

__all__ = ["NotARegularFileError", "UnsafeSymlinkError"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink"),
)


class NotARegularFileError(EventBusError, OSError):
    """Raised when a log's or an artifact's path holds something other than a regular file.

    A FIFO, a device, a socket or a directory where ``events.jsonl``, an
    artifact or a ``run_summary`` should be is refused by readers and
    writers alike, at once (never a hang), and never replaced.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        self.path = os.fspath(path)
        self.kind = kind
        super().__init__(
            f"{self.path} is {kind}, not a regular file: eventbus reads and writes only "
            "regular files there; move it away or use another path"
        )


class UnsafeSymlinkError(EventBusError, OSError):
    """Raised when a path in a workspace is a symlink that is not followed.

    A symlink under a workspace root that resolves outside it (or dangles)
    is refused by :class:`~sinks.jsonl.JsonlSink` and the artifact store and
    queries; ``JsonlSink`` also refuses an ``events.jsonl`` that is itself a
    symlink, and any log writer a dangling one. ``link`` is the symlink's
    path, ``target`` what it points to.
    """

    def __init__(self, link: str | os.PathLike[str], target: str, problem: str) -> None:
        self.link = os.fspath(link)
        self.target = target
        self.problem = problem
        super().__init__(f"{self.link} is a symlink to {target!r} {problem}")


def describe_mode(mode: int) -> str:
    """Say what kind of file ``mode`` (an ``st_mode``) is: ``"a FIFO (named pipe)"``..."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def check_regular(fd: int, path: str | os.PathLike[str]) -> None:
    """Raise :class:`NotARegularFileError` unless the open ``fd`` is a regular file."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(path, describe_mode(mode))


def check_regular_path(path: str | os.PathLike[str]) -> None:
    """Raise :class:`NotARegularFileError` unless ``path`` (followed) is a regular file.

    :raises FileNotFoundError: if there is nothing at ``path``.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(path, describe_mode(mode))


def open_regular(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses anything but a regular file, without blocking on a FIFO.

    ``O_NONBLOCK`` is added (a FIFO opens at once instead of waiting for its
    other end; regular files ignore the flag). A directory raises
    :class:`NotARegularFileError` too (not :class:`IsADirectoryError`).

    :raises NotARegularFileError: if ``path`` is not a regular file.
    """
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, mode)
    except IsADirectoryError:
        raise NotARegularFileError(path, "a directory") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO opened write-only without a reader, or a socket
            raise NotARegularFileError(path, describe_mode(os.stat(path).st_mode)) from None
        raise
    try:
        check_regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd
