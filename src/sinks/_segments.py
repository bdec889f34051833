"""A log's segments, read as one file.

A session's log may be a series of segments in its directory::

    events.000001.jsonl     sealed: complete lines, never written again
    events.000002.jsonl     sealed
    events.jsonl            the live segment: the writer appends here

A plain sort of the sealed names, then the live one, is the read order
(the names are made and listed by :mod:`sinks._layout`: six digits, so a
plain sort is numeric order). A log never sealed is just ``events.jsonl`` (the seed's format). The
writer seals (see ``LogWriter.seal`` in :mod:`sinks.jsonl._write`) by
hard-linking the live file to the next sealed name, then atomically
replacing the live name with a new, already locked, empty file: the live
name is never missing, and for a moment the last sealed name and the live
one are the same file, which readers read once (they skip a file they
already read, by device and inode).

:class:`LogFile` reads the segments as one file whose byte offsets count
from the start of the first segment (a *log offset*): a sealed segment never
changes, so a log offset stays valid when the segment holding it is sealed.
This is how every place kept by an index (path of ``events.jsonl``, offset,
length) stays valid across seals. A log's identity is its first segment's
(device, inode), which sealing keeps (the live file becomes the first sealed
one); clearing or replacing the log changes it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Final

from ._layout import (
    UnsafeSymlinkError,
    report_once,
    resolve_inside,
    sealed_names,
)

__all__ = ["LogFile", "log_stat", "segment_paths"]

logger = logging.getLogger("sinks.workspace")

_READ_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_OPEN_ATTEMPTS: Final = 20


def segment_paths(path: str) -> list[str]:
    """Every segment of the log whose live file is ``path``, in read order (existing or not)."""
    directory, name = os.path.split(path)
    return [os.path.join(directory, sealed) for sealed in sealed_names(directory, name)] + [path]


def log_stat(path: str) -> tuple[tuple[int, int], int] | None:
    """The identity (first segment's device, inode) and size (all segments) of a log.

    ``None`` if it has no segment, or one is not a regular file (or a sealed
    one is a symlink). Costs a ``stat`` of the directory and of the live
    file while neither changed since the last call (for the last 1024 logs;
    a seal or a clear replaces the live file and changes the directory),
    else two ``listdir`` too (sealed segments, which never change, are
    remembered: see :func:`_sealed_stats`), listed again if a seal happened
    meanwhile.
    """
    directory, name = os.path.split(path)
    for _ in range(_OPEN_ATTEMPTS):
        try:
            folder = os.stat(directory)
            status: os.stat_result | None = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            folder, status = None, None
        except OSError:
            return None
        if status is not None and not stat.S_ISREG(status.st_mode):
            return None
        live = None if status is None else (status.st_dev, status.st_ino)
        place = None if folder is None else (folder.st_dev, folder.st_ino, folder.st_mtime_ns)
        with _known_lock:
            listed = _listed.get(path)
        if (
            listed is not None
            and live is not None
            and status is not None
            and listed[0] == place
            and listed[1] == live
            and place is not None
            and place[2] < time.time_ns() - _SETTLED_NS
        ):
            sealed = listed[2]
            first = sealed[0][1] if sealed else live
            return first, sum(found[2] for found in sealed) + status.st_size
        names = sealed_names(directory, name)
        try:
            found = _sealed_stats(directory, name, names)
        except _Moved:  # removed meanwhile (a clear, a prune): no log now
            return None
        if found is None:
            return None
        size = sum(one[2] for one in found)
        ident = found[0][1] if found else None
        if status is None or live is None:
            return None if ident is None else (ident, size)
        if ident is not None and found[-1][1] == live:  # the live file being sealed: once
            return ident, size
        again = sealed_names(directory, name)
        if again == names:
            _remember(path, (place, live, found))
        if again == names or (
            again[:-1] == names and _ident_of(os.path.join(directory, again[-1])) == live
        ):
            return (live if ident is None else ident), size + status.st_size
    return None  # sealed again and again while listed: as if gone, for now


def _remember(path: str, listed: _Listed) -> None:
    with _known_lock:
        _listed[path] = listed
        _listed.move_to_end(path)
        while len(_listed) > _KNOWN_LOGS:
            _listed.popitem(last=False)


_Sealed = tuple[str, tuple[int, int], int, int]  # name, (device, inode), size, mtime (ns)
_known: OrderedDict[tuple[str, str], list[_Sealed]] = OrderedDict()
_known_lock = threading.Lock()
_KNOWN_LOGS: Final = 1024
_SETTLED_NS: Final = 1_000_000_000  # a directory changed more recently may change unseen
_Listed = tuple[tuple[int, int, int] | None, tuple[int, int], list[_Sealed]]
_listed: OrderedDict[str, _Listed] = OrderedDict()  # live path -> (directory, live, sealed)


def _sealed_stats(directory: str, name: str, names: list[str]) -> list[_Sealed] | None:
    """``(name, identity, size, mtime)`` of the sealed segments ``names`` (all of the log's).

    A sealed segment never changes, so what was found is remembered per log
    (for the last 1024 logs) and only new names are looked at, once the
    first and last remembered are seen unchanged (same inode, size and
    modification time: a cleared log written again starts anew).
    ``None`` if one is not a regular file. :raises _Moved: if one is gone.
    """
    if not names:
        return []
    key = (directory, name)
    with _known_lock:
        cached = _known.get(key, [])
    reuse = 0
    if (
        cached
        and len(cached) <= len(names)
        and all(known[0] == listed for known, listed in zip(cached, names, strict=False))
    ):
        # the same files still? (an inode may be reused by a log cleared and written again)
        ends = [_lstat(directory, cached[0][0]), _lstat(directory, cached[-1][0])]
        if None in ends:
            return None
        if ends == [cached[0], cached[-1]]:
            reuse = len(cached)
    found = cached[:reuse]
    for listed in names[reuse:]:
        one = _lstat(directory, listed)
        if one is None:
            return None
        found.append(one)
    with _known_lock:
        _known[key] = found
        _known.move_to_end(key)
        while len(_known) > _KNOWN_LOGS:
            _known.popitem(last=False)
    return found


def _each_sealed(directory: str, names: list[str]) -> list[_Sealed] | None:
    """:func:`_lstat` of each of ``names`` (not remembered); ``None`` if one is no file."""
    found = []
    for name in names:
        one = _lstat(directory, name)
        if one is None:
            return None
        found.append(one)
    return found


def _lstat(directory: str, name: str) -> _Sealed | None:
    """A sealed segment's ``(name, identity, size)``; ``None`` if not a regular file."""
    try:
        status = os.lstat(os.path.join(directory, name))
    except FileNotFoundError:
        raise _Moved from None
    if not stat.S_ISREG(status.st_mode):
        return None
    return name, (status.st_dev, status.st_ino), status.st_size, status.st_mtime_ns


class _Part:
    """One segment: its path, identity, size and start (log offset); ``fd`` -1 while closed."""

    __slots__ = ("fd", "ident", "path", "size", "start")

    def __init__(
        self, path: str, fd: int, ident: tuple[int, int], size: int, start: int = 0
    ) -> None:
        self.path, self.fd, self.ident, self.size, self.start = path, fd, ident, size, start


class LogFile:
    """The segments of one log, open for reading as one file (see the module).

    ``pread`` and ``size`` take *log offsets*. Made by :meth:`open`; close it
    (or use it in a ``with`` block). The first segment (whose inode, the
    log's identity, cannot be reused while it is open) and the live file are
    held open; another sealed segment is opened when a read reaches it (one at
    a time, so a log of many segments costs at most three descriptors).
    Segments sealed while it is open are found when a read reaches past the
    end of the live file it opened.
    """

    def __init__(self, path: str, directory: str, parts: list[_Part]) -> None:
        self.path = path
        self._directory = directory
        self._parts = parts
        self._open_sealed: _Part | None = None

    @classmethod
    def open(cls, path: str, root: str | None = None) -> LogFile | None:
        """Open the segments of the log whose live file is ``path``.

        ``None`` if there is none, one is not a regular file (or a sealed one
        is a symlink), or (with ``root``) the log is reached through a symlink
        that dangles or leads out of ``root`` (logged once on
        ``sinks.workspace``). Opened without blocking, so a FIFO named like a
        log never hangs the reader.
        """
        real = path
        if root is not None:
            try:
                real = resolve_inside(root, path)
            except UnsafeSymlinkError as exc:
                report_once(logger, f"skipped a log: {exc}")
                return None
        directory, name = os.path.split(real)
        for _ in range(_OPEN_ATTEMPTS):
            before = sealed_names(directory, name)
            try:
                parts = _parts(directory, name, before)
            except _Moved:
                continue
            if parts is None:
                return None
            after = sealed_names(directory, name)
            if after == before or (
                after[: len(before)] == before
                and len(after) == len(before) + 1
                and parts[-1].fd >= 0
                and _ident_of(os.path.join(directory, after[-1])) == parts[-1].ident
            ):
                for held in (parts[0], parts[-1]):  # the first (its inode is the log's
                    if held.fd < 0:  # identity: held, it is not reused) and the live file
                        held.fd = _open(held)
                return cls(path, directory, parts)
            _close(parts)  # sealed while being opened: open again
        return None

    @property
    def ident(self) -> tuple[int, int]:
        """The log's identity: its first segment's (device, inode)."""
        return self._parts[0].ident

    def size(self) -> int:
        """The log's size now (its live file's size read again)."""
        last = self._parts[-1]
        if last.fd >= 0:
            last.size = os.fstat(last.fd).st_size
        return last.start + last.size

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at log offset ``offset`` (fewer at the end of the log)."""
        parts = self._parts
        i = len(parts) - 1
        while i > 0 and parts[i].start > offset:
            i -= 1
        out: list[bytes] = []
        while length > 0:
            part = parts[i]
            data = os.pread(self._fd(part), length, offset - part.start)
            out.append(data)
            length -= len(data)
            offset += len(data)
            if length <= 0:
                break
            if i + 1 < len(parts):
                if offset < parts[i + 1].start:  # a sealed part shorter than opened: changed
                    break
                i += 1
                continue
            if not self._extend():
                break
            # on with the same part: it may have grown between the read and its seal
        return out[0] if len(out) == 1 else b"".join(out)

    def _fd(self, part: _Part) -> int:
        """``part``'s descriptor, opening it (and closing the sealed one open before)."""
        if part.fd >= 0:
            return part.fd
        previous = self._open_sealed
        if previous is not None and previous not in (self._parts[0], self._parts[-1]):
            os.close(previous.fd)
            previous.fd = -1
        part.fd = _open(part)
        self._open_sealed = part
        return part.fd

    def _extend(self) -> bool:
        """Add the segments that came after the last part opened; ``False`` if none.

        When the last part is the live file, it must have been sealed (its
        inode under the next sealed name); then the sealed segments after it
        and the live file are opened, checked against a second listing as
        :meth:`open` does (a seal in between would shift every offset).
        """
        last = self._parts[-1]
        name = os.path.basename(self.path)
        for _ in range(_OPEN_ATTEMPTS):
            names = sealed_names(self._directory, name)
            if last.path == self.path:  # the live file: sealed since?
                known = {part.path for part in self._parts}
                newer = [n for n in names if self._path(n) not in known]
                if not newer or _ident_of(self._path(newer[0])) != last.ident:
                    return False  # not sealed (or the log was replaced: readers see the identity)
                sealed_as, rest = newer[0], newer[1:]
            else:  # a sealed segment (opened while the live file was being sealed)
                after = os.path.basename(last.path)
                sealed_as, rest = after, [n for n in names if n > after]
            try:
                more = _parts(self._directory, name, rest, whole=False)
            except _Moved:
                return False
            if more and more[0].ident == last.ident:  # the live file, being sealed again
                _close(more[:1])
                more = more[1:]
            if not more:
                return False
            again = sealed_names(self._directory, name)
            tail = again[again.index(sealed_as) + 1 :] if sealed_as in again else None
            if tail == rest or (
                tail is not None
                and tail[:-1] == rest
                and more[-1].path == self.path
                and _ident_of(self._path(tail[-1])) == more[-1].ident
            ):
                break
            _close(more)  # sealed again meanwhile: list again
        else:
            return False
        if last.fd >= 0:
            last.size = os.fstat(last.fd).st_size  # sealed: final now
        last.path = self._path(sealed_as)
        start = last.start + last.size
        for part in more:
            part.start = start
            start += part.size
        self._open_sealed = last  # closed when another sealed part is opened
        self._parts += more
        return True

    def _path(self, name: str) -> str:
        return os.path.join(self._directory, name)

    def close(self) -> None:
        parts, self._parts = self._parts, []
        _close(parts)

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Moved(Exception):
    """A segment went away between listing and opening."""


def _parts(
    directory: str, name: str, sealed: list[str], *, whole: bool = True
) -> list[_Part] | None:
    """The sealed segments (stat, not opened), then the live file (opened, if there is one).

    ``whole``: ``sealed`` names all of the log's (their stats may be remembered).
    ``None`` if a segment is not a regular file (a sealed one may not be a symlink) or
    there is no segment at all. :raises _Moved: if a sealed segment is gone.
    """
    stats = _sealed_stats(directory, name, sealed) if whole else _each_sealed(directory, sealed)
    if stats is None:
        return None
    parts: list[_Part] = []
    start = 0
    for listed, ident, size, _ in stats:
        parts.append(_Part(os.path.join(directory, listed), -1, ident, size, start))
        start += size
    live = os.path.join(directory, name)
    try:
        fd = os.open(live, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return parts or None
    except IsADirectoryError:
        return None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        return None
    ident = (status.st_dev, status.st_ino)
    if parts and parts[-1].ident == ident:  # the live file, being sealed: read once
        os.close(fd)
        return parts
    parts.append(_Part(live, fd, ident, status.st_size, start))
    return parts


def _open(part: _Part) -> int:
    """Open a sealed segment again by its name; an empty stand-in if it changed."""
    try:
        fd = os.open(part.path, _READ_FLAGS)
    except OSError:
        return _empty()
    status = os.fstat(fd)
    if (status.st_dev, status.st_ino) != part.ident:  # removed (cleared), name reused
        os.close(fd)
        return _empty()
    return fd


def _empty() -> int:
    """A descriptor reading nothing (a segment gone: its readers see the identity change)."""
    return os.open(os.devnull, _READ_FLAGS)


def _close(parts: list[_Part]) -> None:
    for part in parts:
        if part.fd >= 0:
            os.close(part.fd)
            part.fd = -1


def _ident_of(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino
