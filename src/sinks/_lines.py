"""The one complete-line reader of the JSONL logs, and reading lines back by their places.

Every reader of a log (:func:`sinks.jsonl.iter_log` and ``EventLog``, the
index's loader, the workspace's scan, its follow and its session rows) reads
it through :class:`LineRuns`, over every segment of the log as one file
(:class:`sinks._segments.LogFile`, opened by :func:`open_log`; offsets are
log offsets): from a byte offset, a run of up to about 4 MiB
of *complete* lines (ending in ``\\n``) at a time. A line being written is
left for the next read, so a line completed in two writes comes out once,
whole; a line longer than a run doubles the read until it fits. A line longer
than :data:`~eventbus.MAX_LINE_BYTES` is corrupt, and is passed over in
:data:`CHUNK`-sized reads, never held whole: a reader holds at most one read
of ``MAX_LINE_BYTES`` + 1 bytes (one read of :data:`CHUNK` bytes while no line
is longer) and what it decodes from it. :func:`iter_growth` decodes the runs
into events with their places (corrupt and blank lines skipped and counted);
:func:`complete_end` finds where the last complete line ends;
:func:`read_places` reads lines back by their places.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from itertools import accumulate

from eventbus import MAX_LINE_BYTES, Event, EventDecodeError, decode_event, decode_events

from ._segments import LogFile

Source = LogFile | int
"""What lines are read from: a log's segments (log offsets), or one open file."""

__all__: list[str] = []

CHUNK = 4 * 1024 * 1024  # bytes read and decoded at once
TAIL_BLOCK = 64 * 1024  # bytes read at once when searching backwards
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
BLANK = b" \t\r"  # a line made only of these is blank (skipped, as msgspec does)


class LineRuns:
    """The runs of complete lines of a file from ``start`` (up to ``stop``), read in chunks.

    Iterating yields ``(data, cut, offset)``: ``data[:cut]`` is a run of
    complete lines starting at byte ``offset``. A line longer than
    ``MAX_LINE_BYTES`` comes as ``(None, size, offset)`` (``size`` with its
    newline), found without reading it whole. Afterwards ``tail`` is the size
    of the incomplete last line (a writer may be finishing it), 0 if none.
    """

    def __init__(self, fd: Source, start: int, stop: int | None = None) -> None:
        self.fd, self.start, self.stop = fd, start, stop
        self.tail = 0

    def __iter__(self) -> Iterator[tuple[bytes | None, int, int]]:
        fd, stop = self.fd, self.stop
        position = self.start
        size = CHUNK
        self.tail = 0
        while True:
            want = size if stop is None else min(size, stop - position)
            if want <= 0:
                return
            data = pread(fd, want, position)
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data, cut, position
                position += cut
                size = CHUNK
            elif len(data) < want or want < size:  # the end, inside an incomplete line
                self.tail = len(data)
                return
            elif size > MAX_LINE_BYTES:  # no newline in MAX_LINE_BYTES + 1 bytes: too long
                del data
                end = self._line_end(position, position + size)
                if end is None:
                    return
                yield None, end - position, position
                position = end
                size = CHUNK
            else:  # one line longer than a chunk: read it again, whole
                del data  # before the next read, not after
                size = min(2 * size, MAX_LINE_BYTES + 1)

    def _line_end(self, start: int, position: int) -> int | None:
        """The end of the line at ``start``, searched from ``position`` on.

        ``None`` if the file (or ``stop``) comes first; ``tail`` is then set.
        """
        while True:
            want = CHUNK if self.stop is None else min(CHUNK, self.stop - position)
            block = pread(self.fd, want, position) if want > 0 else b""
            found = block.find(b"\n")
            if found >= 0:
                return position + found + 1
            position += len(block)
            if len(block) < CHUNK:
                self.tail = position - start
                return None


def pread(source: Source, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes of ``source`` at ``offset``."""
    if isinstance(source, int):
        return os.pread(source, length, offset)
    return source.pread(length, offset)


def line_runs(
    fd: Source, start: int, stop: int | None = None
) -> Iterator[tuple[bytes | None, int, int]]:
    """Iterate :class:`LineRuns` (when its ``tail`` is not needed)."""
    return iter(LineRuns(fd, start, stop))


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


def iter_growth(fd: Source, start: int) -> Iterator[Growth]:
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
        if line.strip(BLANK):
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


def open_log(path: str, root: str | None) -> LogFile | None:
    """Open a log (every segment: see :mod:`sinks._segments`) of the workspace ``root``.

    ``None`` if it is missing, is not a regular file, or is reached through a
    symlink that dangles or leads out of ``root`` (that one is logged once on
    ``sinks.workspace``: nothing outside the root is read; ``root=None``: no
    such check, for a log named by the caller). Opened without blocking, so a
    FIFO named like a log never hangs the reader.
    """
    return LogFile.open(path, root)


def complete_end(fd: Source, size: int) -> int:
    """Return the offset just after the last ``\\n`` before ``size`` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - TAIL_BLOCK)
        block = pread(fd, position - start, start)
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
    fd: LogFile | None = None
    current: str | None = None
    try:
        i = 0
        while i < len(order):
            path, offset, _ = places[order[i]]
            if path != current:
                if fd is not None:
                    fd.close()
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
            data = fd.pread(end - offset, offset)
            for k in range(i, j + 1):
                _, line_offset, length = places[order[k]]
                start = line_offset - offset
                out[order[k]] = data[start : start + length - 1]
            i = j + 1
    finally:
        if fd is not None:
            fd.close()
    return out
