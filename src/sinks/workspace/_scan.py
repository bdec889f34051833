"""Answering a query by reading the logs once, without an index (``Workspace(index=False)``).

Each chunk of complete lines is decoded into a light record holding only the
fields queries filter on (no message, no metadata), filtered with C-level
loops, and only the matching lines are decoded into :class:`~eventbus.Event`:
a selective query over a log costs less than loading it. A line without an
``id`` (the seed's format) is decoded with its byte offset, so it gets the id
:class:`~sinks.jsonl.EventLog` and the index derive; only chunks holding such
lines pay for the offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import accumulate, compress, repeat
from operator import attrgetter, eq
from typing import Any, cast

import msgspec

from eventbus import (
    Event,
    EventDecodeError,
    EventQuery,
    as_utc,
    decode_event,
    decode_events,
)

from .._lines import BLANK, line_runs, open_log
from .._segments import LogFile

__all__: list[str] = []

Key = tuple[datetime, str]
"""The time order of events: timestamp, then id."""


class _Light(msgspec.Struct, kw_only=True):
    event_type: str = ""
    session_id: str = ""
    phase: str | None = None
    task_id: str | None = None
    agent_role: str | None = None
    model: str | None = None
    id: str = ""


class _Timed(_Light, kw_only=True):
    timestamp: datetime


_light = msgspec.json.Decoder(_Light)
_timed = msgspec.json.Decoder(_Timed)
_EQUALS = ("session_id", "phase", "task_id", "agent_role", "model")
_get_id = attrgetter("id")
_DECODE_ERRORS = (msgspec.DecodeError, RecursionError)


def key_of(event: Event) -> Key:
    return event.timestamp, event.id


def _regions(fd: LogFile, start: int, stop: int | None) -> Iterator[tuple[bytes, int, int]]:
    """``(data, cut, offset)``: ``data[:cut]`` is a run of complete lines at ``offset``.

    Lines over ``MAX_LINE_BYTES`` (corrupt) are passed over unread.
    """
    for data, cut, position in line_runs(fd, start, stop):
        if data is not None:
            yield data, cut, position


class _Chunk:
    """The light records of a run of complete lines, and (once split) their lines.

    ``lines`` is ``None`` while the lines are not split (the fast path: every
    line valid); ``offsets`` is ``None`` while each line's offset was not
    needed: only lines without an ``id`` need it, to derive theirs.
    """

    __slots__ = ("cut", "data", "lines", "offsets", "records", "start", "timed")

    def __init__(
        self, data: bytes, cut: int, start: int, timed: bool, needles: list[bytes] | None = None
    ) -> None:
        self.data, self.cut, self.start, self.timed = data, cut, start, timed
        self.lines: list[bytes] | None = None
        self.offsets: list[int] | None = None
        if needles is not None:
            self._candidates(needles)
            return
        try:
            self.records: list[Any] = self._decoder.decode_lines(memoryview(data)[:cut])
        except _DECODE_ERRORS:
            self._one_by_one()

    @property
    def _decoder(self) -> Any:
        return _timed if self.timed else _light

    def align(self) -> bool:
        """Split the lines, one per record (``True`` if the records had to be remade)."""
        if self.lines is not None:
            return False
        self.lines = _lines(self.data)
        if len(self.lines) == len(self.records):
            return False
        self._one_by_one()  # blank lines, which msgspec skipped
        return True

    def offset_list(self) -> list[int]:
        """Each line's offset in its log (after :meth:`align`)."""
        if self.offsets is None:
            assert self.lines is not None
            self.offsets = list(accumulate(map(len, self.lines), _next_line, initial=self.start))
        return self.offsets

    def _candidates(self, needles: list[bytes]) -> None:
        """Keep (aligned, with their offsets) only the lines holding one of ``needles``.

        Each needle is searched for in the whole chunk (``bytes.find``): a line
        costs Python work only if it holds one.
        """
        data, cut = self.data, self.cut
        find, rfind = data.find, data.rfind
        ends: dict[int, int] = {}  # where each kept line begins -> where it ends
        for needle in needles:
            if needle is _ESCAPE and find(b"\\", 0, cut) < 0:
                continue  # no escape at all (one quick search for a byte)
            at = find(needle, 0, cut)
            while at >= 0:
                end = find(b"\n", at, cut)  # found: data[:cut] ends with a newline
                ends[rfind(b"\n", 0, at) + 1] = end
                at = find(needle, end, cut)
        begins = sorted(ends) if len(needles) > 1 else list(ends)
        kept = [data[begin : ends[begin]] for begin in begins]
        offsets = [self.start + begin for begin in begins]
        try:
            # no kept line is blank (each holds a needle): one record per line
            self.records = self._decoder.decode_lines(b"\n".join(kept))
            self.lines, self.offsets = kept, offsets
        except _DECODE_ERRORS:
            self._one_by_one(kept, offsets)

    def _one_by_one(
        self, lines: list[bytes] | None = None, starts: list[int] | None = None
    ) -> None:
        """The slow path: skip blank and corrupt lines, keep records, lines, offsets aligned.

        ``lines``, at ``starts``: the lines to decode (default: every line of the chunk).
        """
        if lines is None or starts is None:
            lines = _lines(self.data)
            starts = list(accumulate(map(len, lines), _next_line, initial=self.start))
        decoder = self._decoder
        records: list[Any] = []
        kept: list[bytes] = []
        offsets: list[int] = []
        for line, here in zip(lines, starts, strict=False):
            if not line.strip(BLANK):
                continue
            try:
                records.append(decoder.decode(line))
            except _DECODE_ERRORS:  # RecursionError: nested too deep
                continue
            kept.append(line)
            offsets.append(here)
        self.records, self.lines, self.offsets = records, kept, offsets


def _next_line(offset: int, size: int) -> int:
    return offset + size + 1


def _lines(data: bytes) -> list[bytes]:
    """The complete lines of ``data`` (what follows the last newline dropped)."""
    lines = data.split(b"\n")
    lines.pop()
    return lines


def _select(records: list[Any], query: EventQuery) -> list[int]:
    """Indices of the records meeting every condition of ``query``."""
    chosen: Any = range(len(records))
    at = records.__getitem__
    if query.event_type is not None:
        chosen = list(
            compress(chosen, map(query.event_type.__contains__, map(_TYPE, map(at, chosen))))
        )
    for name in _EQUALS:
        value = getattr(query, name)
        if value is not None:
            getter = attrgetter(name)
            chosen = list(compress(chosen, map(eq, map(getter, map(at, chosen)), repeat(value))))
    if query.start_time is not None or query.end_time is not None:
        times = list(map(_TIME, map(at, chosen)))
        if any(moment.tzinfo is None for moment in times):  # written without an offset: UTC
            times = list(map(as_utc, times))
        chosen = [
            i
            for i, moment in zip(chosen, times, strict=True)
            if (query.start_time is None or moment >= query.start_time)
            and (query.end_time is None or moment <= query.end_time)
        ]
    return list(chosen)


_TYPE = attrgetter("event_type")
_TIME = attrgetter("timestamp")
_ESCAPE = b"\\u"  # a line might spell a type with this escape: it stays a candidate
_SHORT_ESCAPES = frozenset('"\\/\b\f\n\r\t')


def _needles(query: EventQuery) -> list[bytes] | None:
    """Byte strings one of which every line matching ``query`` holds (``None``: no such).

    A matching line holds one of the query's types as a JSON string, written
    as is, or with a ``\\u`` escape. A type that a writer may write with
    another escape (a quote, a backslash, a slash, a control character) turns
    the prefilter off.
    """
    types = query.event_type
    if not types:
        return None
    if any(char in _SHORT_ESCAPES or char < " " for kind in types for char in kind):
        return None
    return [*sorted({_encode(kind) for kind in types}), _ESCAPE]


_encode = msgspec.json.encode


def scan_log(
    path: str, root: str, query: EventQuery, *, stop: int | None = None
) -> Iterator[list[tuple[Event, bytes]]]:
    """Yield, per chunk, the events of the log at ``path`` matching ``query``, with their lines.

    Reads complete lines only, up to byte ``stop`` if given. A missing log,
    or one :func:`open_log` refuses (a symlink out of ``root``), yields
    nothing. A line without an id gets the one its offset derives (as
    :class:`~sinks.jsonl.EventLog` gives it).
    """
    timed = query.start_time is not None or query.end_time is not None
    for chunk, chosen in _matching(path, root, query, stop, timed):
        records, lines = chunk.records, cast("list[bytes]", chunk.lines)
        found = []
        if all(map(_get_id, map(records.__getitem__, chosen))):  # no id to derive
            picked = list(map(lines.__getitem__, chosen))
            try:  # at once; if a line is not an event, line by line below
                events = decode_events(b"\n".join(picked))
            except EventDecodeError:
                events = []
            if len(events) == len(picked):
                yield list(zip(events, picked, strict=True))
                continue
            for i in chosen:
                try:
                    found.append((decode_event(lines[i]), lines[i]))
                except EventDecodeError:  # a line with the light fields but not an event
                    continue
        else:
            offsets = chunk.offset_list()
            for i in chosen:
                try:
                    found.append((decode_event(lines[i], offset=offsets[i]), lines[i]))
                except EventDecodeError:
                    continue
        yield found


def _matching(
    path: str, root: str, query: EventQuery, stop: int | None, timed: bool
) -> Iterator[tuple[_Chunk, list[int]]]:
    """Per chunk of the log holding a match of ``query``: the chunk (its lines split) and
    the indices of its matching records. Nothing for a missing or refused log."""
    fd = open_log(path, root)
    if fd is None:
        return
    needles = _needles(query)
    try:
        for data, cut, start in _regions(fd, 0, stop):
            chunk = _Chunk(data, cut, start, timed, needles)
            chosen = _select(chunk.records, query)
            if not chosen:
                continue
            if chunk.align():
                chosen = _select(chunk.records, query)
            yield chunk, chosen
    finally:
        fd.close()


Keyed = tuple[datetime, str, bytes, Event | None]
"""A match's key (timestamp, id), its line, and its event if it had to be decoded already."""


def scan_keys(
    path: str, root: str, query: EventQuery, *, stop: int | None = None
) -> Iterator[list[Keyed]]:
    """Like :func:`scan_log`, without decoding events: per chunk, each match's key and line.

    Only the fields queries filter on, the timestamp and the id are decoded
    (a line without an id is decoded whole, to derive its id). A caller that
    keeps few of the matches (a page) decodes only those. A line whose light
    fields decode but that is not an event is among the matches: decoding it
    later fails.
    """
    for chunk, chosen in _matching(path, root, query, stop, True):
        records = list(map(chunk.records.__getitem__, chosen))
        lines = list(map(cast("list[bytes]", chunk.lines).__getitem__, chosen))
        times = list(map(_TIME, records))
        if set(map(_ZONE, times)) != {UTC}:  # written with another offset, or none
            times = list(map(as_utc, times))
        ids = list(map(_get_id, records))
        if all(ids):
            yield list(zip(times, ids, lines, repeat(None)))
            continue
        offsets = chunk.offset_list()
        found: list[Keyed] = []
        for i, moment, event_id, line in zip(chosen, times, ids, lines, strict=True):
            if event_id:
                found.append((moment, event_id, line, None))
                continue
            try:
                event = decode_event(line, offset=offsets[i])
            except EventDecodeError:
                continue
            found.append((event.timestamp, event.id, line, event))
        yield found


def decode_keyed(items: list[Keyed]) -> list[tuple[Event, bytes]] | None:
    """The events of ``items`` with their lines; ``None`` if a line is not an event."""
    lines = [line for _, _, line, event in items if event is None]
    try:
        decoded = iter(decode_events(b"\n".join(lines)) if lines else [])
        found = [(next(decoded) if event is None else event, line) for _, _, line, event in items]
    except (EventDecodeError, StopIteration):
        return None
    return found


_ZONE = attrgetter("tzinfo")


def types_in_logs(paths: list[str], root: str) -> set[str]:
    """The event types of the lines of the logs at ``paths`` (decoding only the light fields)."""
    found: set[str] = set()
    for path in paths:
        fd = open_log(path, root)
        if fd is None:
            continue
        try:
            for data, cut, start in _regions(fd, 0, None):
                found.update(map(_TYPE, _Chunk(data, cut, start, False).records))
        finally:
            fd.close()
    found.discard("")
    return found


def find_key(paths: list[str], root: str, event_id: str) -> Key | None:
    """The time-order key of the event with ``event_id`` in any of the logs, or ``None``.

    In each chunk an id a line stores is looked for first; if no line stores
    it, the lines without an id whose timestamp falls in the millisecond the id
    starts with are decoded with their offsets, to find one deriving it.
    """
    window = _derived_window(event_id)
    for path in paths:
        fd = open_log(path, root)
        if fd is None:
            continue
        try:
            for data, cut, start in _regions(fd, 0, None):
                key = _find_in(_Chunk(data, cut, start, False), event_id, window)
                if key is not None:
                    return key
        finally:
            fd.close()
    return None


def _find_in(chunk: _Chunk, event_id: str, window: EventQuery | None) -> Key | None:
    """The key of ``event_id`` in ``chunk``, stored or derived, or ``None``."""
    ids = list(map(_get_id, chunk.records))
    if event_id in ids:
        chunk.align()
        ids = list(map(_get_id, chunk.records))
        candidates = [i for i, stored in enumerate(ids) if stored == event_id]
        return _key_at(chunk, candidates, None)
    if window is None or "" not in ids:
        return None
    chunk = _Chunk(chunk.data, chunk.cut, chunk.start, True)  # with the lines' timestamps
    chunk.align()
    records = chunk.records
    candidates = [i for i in _select(records, window) if not records[i].id]
    return _key_at(chunk, candidates, event_id)


def _key_at(chunk: _Chunk, candidates: list[int], derived: str | None) -> Key | None:
    """The key of the first candidate line that decodes (to the id ``derived``, if given)."""
    lines = chunk.lines
    assert lines is not None
    offsets = chunk.offset_list() if derived is not None and candidates else None
    for i in candidates:
        try:
            event = decode_event(lines[i], offset=0 if offsets is None else offsets[i])
        except EventDecodeError:
            continue
        if derived is None or event.id == derived:
            return key_of(event)
    return None


def _derived_window(event_id: str) -> EventQuery | None:
    """The times of the lines that can derive ``event_id`` (``None``: no line can).

    A derived id starts with the Unix millisecond of its event's timestamp,
    as 12 hex digits (0 for any time before 1970).
    """
    if len(event_id) != 32:
        return None
    try:
        ms = int(event_id[:12], 16)
        first = _EPOCH + timedelta(milliseconds=ms)
    except (ValueError, OverflowError):  # not hex, or a millisecond after year 9999
        return None
    last = first + _LAST_MICROSECOND
    return EventQuery(start_time=None if ms == 0 else first, end_time=last)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MICROSECOND = timedelta(microseconds=999)
