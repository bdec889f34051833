"""Reading a JSONL event log: tolerant, incremental, with each event's position.

:class:`LogScan` reads the complete lines of a log chunk by chunk, skipping and
counting corrupt lines and ignoring an incomplete last line (a live writer
may be finishing it); :func:`iter_log` is its public face. What was skipped
is described by a :class:`RecoveryReport`. The public names are re-exported
by :mod:`sinks.jsonl`.

Its lines come from :class:`sinks._lines.LineRuns`, the one complete-line
reader of every log reader (a line over :data:`~eventbus.MAX_LINE_BYTES` is
corrupt and never held whole).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from itertools import accumulate

import msgspec

from eventbus import (
    MAX_LINE_BYTES,
    Event,
    EventBusError,
    EventDecodeError,
    EventType,
    decode_event,
    decode_events,
)

from .._files import check_regular_path
from .._lines import BLANK, CHUNK, LineRuns, Source, pread
from .._segments import LogFile

__all__ = ["CorruptLogError", "RecoveryReport", "iter_log"]

_TOO_LONG = f"is longer than the {MAX_LINE_BYTES} bytes a line may hold (MAX_LINE_BYTES)"
_MAX_LISTED = 1000  # corrupt line numbers kept in a report (all are counted)


# --- errors -------------------------------------------------------------------


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


class LogScan:
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
        self._fd: Source | None = None
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

    def read(self, fd: Source, *, stop: int | None = None) -> Iterator[list[Event]]:
        """Yield the events of each chunk of complete lines from ``end`` on."""
        self._fd = fd
        try:
            for offset, view in self._regions(fd, stop):
                if view is None:
                    continue
                try:
                    # decode_events is annotated ``bytes``; msgspec reads any buffer, and
                    # a view saves copying each 4 MiB chunk.
                    events = decode_events(view, offset=offset)
                except EventDecodeError:
                    events = [event for event, _, _ in self._decode_each(view, offset)]
                self.end = offset + len(view)
                yield events
        finally:
            self._fd = None

    def read_positioned(
        self, fd: Source, *, stop: int | None = None
    ) -> Iterator[list[tuple[Event, int, int]]]:
        """Like :meth:`read`, with each event's line offset and length."""
        self._fd = fd
        try:
            for offset, view in self._regions(fd, stop):
                if view is None:
                    continue
                decoded = self.decode_positioned(view, offset)
                self.end = offset + len(view)
                yield decoded
        finally:
            self._fd = None

    def decode_positioned(
        self, data: bytes | memoryview, offset: int
    ) -> list[tuple[Event, int, int]]:
        """Decode complete lines starting at ``offset``, with positions."""
        try:
            events = decode_events(data, offset=offset)
        except EventDecodeError:
            return list(self._decode_each(data, offset))
        sizes = _line_sizes(data)
        if len(sizes) != len(events):  # blank lines, which msgspec skipped: go slowly
            return list(self._decode_each(data, offset))
        # accumulate yields one more offset (the end), which strict=False leaves out
        return list(zip(events, accumulate(sizes, initial=offset), sizes, strict=False))

    def _regions(self, fd: Source, stop: int | None) -> Iterator[tuple[int, memoryview | None]]:
        """Yield ``(offset, view)`` of consecutive runs of complete lines.

        A line over ``MAX_LINE_BYTES`` is counted as corrupt, and yields
        ``(offset, None)`` so that :attr:`end` moves past it.
        """
        runs = LineRuns(fd, self.end, stop)
        try:
            for data, cut, offset in runs:
                if data is None:
                    self._corrupt(self._lines_before(offset) + 1, offset, _TOO_LONG)
                    self.end = offset + cut
                    yield offset, None
                else:
                    yield offset, memoryview(data)[:cut]
        finally:
            self.tail = runs.tail

    def _decode_each(
        self, data: bytes | memoryview, offset: int
    ) -> Iterator[tuple[Event, int, int]]:
        """Decode line by line (the slow path), skipping and counting corrupt lines.

        ``data`` ends with a newline; its lines are decoded from views, not copies.
        """
        view = memoryview(data)
        sizes = _line_sizes(data)
        first = self._lines_before(offset) + 1
        self._lines, self._counted = first - 1 + len(sizes), offset + len(view)
        at = 0
        for number, size in enumerate(sizes, first):
            raw = view[at : at + size - 1]
            if _NOT_BLANK(raw) is not None:
                try:
                    event = decode_event(raw, offset=offset + at)
                except EventDecodeError as exc:
                    self._corrupt(number, offset + at, exc.reason)
                else:
                    yield event, offset + at, size
            at += size

    def _lines_before(self, offset: int) -> int:
        """Count the lines that end before ``offset`` (0 when not reading a file)."""
        if self._fd is None:
            return 0
        while self._counted < offset:
            block = pread(self._fd, min(CHUNK, offset - self._counted), self._counted)
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


_NOT_BLANK = re.compile(b"[^" + re.escape(BLANK) + b"]").search


def _line_sizes(data: bytes | memoryview) -> list[int]:
    """The size of each line of ``data`` (which ends with a newline), newline included.

    A chunk of many lines is split (copies of at most ``CHUNK`` bytes); a
    longer run (a few long lines) is searched in place, so that a long line
    is not copied.
    """
    if len(data) <= CHUNK:
        sizes = [len(line) + 1 for line in bytes(data).split(b"\n")]
        sizes.pop()  # what follows the last newline
        return sizes
    ends = [match.end() for match in _NEWLINE(data)]
    return [end - start for start, end in zip([0, *ends], ends, strict=False)]


_NEWLINE = re.compile(b"\n").finditer


def iter_log(
    path: str | os.PathLike[str], *, strict: bool = False
) -> Iterator[tuple[Event, int, int]]:
    """Read a log without locking it: yield ``(event, offset, length)`` per event.

    A log written in segments is read across them, in order, as one file:
    ``offset`` is the byte offset of the event's line in that whole (its
    *log offset*, see :mod:`sinks.jsonl`; in a log never sealed, its offset in
    the file) and ``length`` its size including the ``\\n``. Corrupt lines
    are skipped and an incomplete last line is ignored (a live writer may be
    finishing it).

    :param path: the ``events.jsonl`` file (its sealed segments are found beside it).
    :param strict: raise :class:`CorruptLogError` at a corrupt line instead.
    :raises FileNotFoundError: if ``path`` does not exist (raised by this call).
    :raises NotARegularFileError: if it is a FIFO, a device... (raised by this call).
    """
    check_regular_path(path)  # a missing file or a FIFO raises here, not at the first next()
    return _iter_path(os.fspath(path), strict)


def open_segments(path: str) -> LogFile:
    """Open every segment of the log whose live file is ``path``.

    :raises FileNotFoundError: if it has none.
    :raises NotARegularFileError: if its live file is a FIFO, a device...
    """
    log = LogFile.open(path)
    if log is None:
        check_regular_path(path)
        raise FileNotFoundError(errno.ENOENT, "no such log (or a segment is not a file)", path)
    return log


def _iter_path(path: str, strict: bool) -> Iterator[tuple[Event, int, int]]:
    with open_segments(path) as log:
        for chunk in LogScan(path, strict=strict).read_positioned(log):
            yield from chunk
