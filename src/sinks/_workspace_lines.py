"""Reading a log's lines as stored: growth from an offset, the end of the last complete line.

Used by :class:`sinks.workspace.Workspace` to follow logs that another process
writes and to print events byte for byte. Only complete lines (ending in
``\\n``) are read: a line being written is left for the next read, so a line
completed in two writes comes out once, whole. Corrupt lines are skipped and
counted (a line over ``MAX_LINE_BYTES`` too, without reading it whole); blank
lines are skipped.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Sequence
from itertools import accumulate

from eventbus import Event, EventDecodeError, decode_event, decode_events

from ._jsonl_read import READ_FLAGS, TAIL_BLOCK, line_runs
from ._paths import UnsafeSymlinkError, report_once, resolve_inside

__all__: list[str] = []

logger = logging.getLogger("sinks.workspace")

_BLANK = b" \t\r"


class Growth:
    """One run of complete lines read from a log: events, their places, their lines."""

    __slots__ = ("corrupt", "end", "events", "lengths", "lines", "offsets")

    def __init__(self, end: int) -> None:
        self.events: list[Event] = []
        self.offsets: list[int] = []
        self.lengths: list[int] = []  # newline included
        self.lines: list[bytes] = []  # as stored, without the newline
        self.end = end  # just after the last complete line read
        self.corrupt = 0


def iter_growth(fd: int, start: int) -> Iterator[Growth]:
    """Read the complete lines of ``fd`` from byte ``start`` on, a chunk at a time.

    Each :class:`Growth` covers up to about 4 MiB (or one long line); its
    ``end`` is where the next read starts. Stops at the end of the file or
    inside an incomplete line.
    """
    for data, cut, position in line_runs(fd, start):
        growth = Growth(position + cut)
        if data is None:  # a line over MAX_LINE_BYTES
            growth.corrupt = 1
        else:
            _decode_into(growth, data, cut, position)
        yield growth


def _decode_into(growth: Growth, data: bytes, cut: int, offset: int) -> None:
    """Decode the complete lines ``data[:cut]`` (``data`` is not copied whole)."""
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline
    lengths = [len(line) + 1 for line in lines]
    try:
        events = decode_events(memoryview(data)[: cut - 1], offset=offset)
    except EventDecodeError:
        events = None
    if events is not None and len(events) == len(lines):
        growth.events = events
        growth.lines = lines
        growth.lengths = lengths
        growth.offsets = list(accumulate(lengths, initial=offset))
        growth.offsets.pop()
        return
    position = offset
    for line, length in zip(lines, lengths, strict=True):  # slow path: blank or corrupt lines
        if line.strip(_BLANK):
            try:
                event = decode_event(line, offset=position)
            except EventDecodeError:
                growth.corrupt += 1
            else:
                growth.events.append(event)
                growth.lines.append(line)
                growth.offsets.append(position)
                growth.lengths.append(length)
        position += length


def open_log(path: str, root: str) -> int | None:
    """Open a log of the workspace ``root`` for reading.

    ``None`` if it is missing, is not a regular file, or is reached through a
    symlink that dangles or leads out of ``root`` (that one is logged once on
    ``sinks.workspace``: nothing outside the root is read). Opened without
    blocking, so a FIFO named like a log never hangs the reader.
    """
    try:
        path = resolve_inside(root, path)
    except UnsafeSymlinkError as exc:
        report_once(logger, f"skipped a log: {exc}")
        return None
    try:
        fd = os.open(path, READ_FLAGS | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def complete_end(fd: int, size: int) -> int:
    """Return the offset just after the last ``\\n`` before ``size`` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - TAIL_BLOCK)
        block = os.pread(fd, position - start, start)
        found = block.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def read_places(places: Sequence[tuple[str, int, int]], root: str) -> list[bytes]:
    """Read the line at each ``(path, offset, length)`` (newline included in ``length``).

    ``root`` is the workspace's root: see :func:`open_log`.

    Returns each line without its newline. Neighbouring lines of one file are
    read in one call.
    """
    out: list[bytes] = [b""] * len(places)
    order = sorted(range(len(places)), key=places.__getitem__)
    fd: int | None = None
    current: str | None = None
    try:
        i = 0
        while i < len(order):
            path, offset, _ = places[order[i]]
            if path != current:
                if fd is not None:
                    os.close(fd)
                    fd = None
                fd = open_log(path, root)
                if fd is None:
                    raise FileNotFoundError(f"the log {path} is gone or is not a file")
                current = path
            # one read for the run of lines of this file within 64 KiB of each other
            j = i
            end = offset + places[order[i]][2]
            while j + 1 < len(order):
                next_path, next_offset, next_length = places[order[j + 1]]
                if next_path != path or next_offset - end > TAIL_BLOCK:
                    break
                end = max(end, next_offset + next_length)
                j += 1
            assert fd is not None
            data = os.pread(fd, end - offset, offset)
            for k in range(i, j + 1):
                _, line_offset, length = places[order[k]]
                start = line_offset - offset
                out[order[k]] = data[start : start + length - 1]
            i = j + 1
    finally:
        if fd is not None:
            os.close(fd)
    return out
