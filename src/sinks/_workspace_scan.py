"""Answering a query by reading the logs once, without an index (``Workspace(index=False)``).

Each chunk of complete lines is decoded into a light record holding only the
fields queries filter on (no message, no metadata), filtered with C-level
loops, and only the matching lines are decoded into :class:`~eventbus.Event`:
a selective query over a log costs less than loading it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from itertools import compress, repeat
from operator import attrgetter, eq
from typing import Any

import msgspec

from eventbus import Event, EventDecodeError, EventQuery, as_utc, decode_event

from ._jsonl_read import CHUNK
from ._workspace_lines import open_log

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
_BLANK = b" \t\r"


def key_of(event: Event) -> Key:
    return event.timestamp, event.id


def _regions(fd: int, start: int, stop: int | None) -> Iterator[tuple[bytes, int]]:
    """``(data, cut)``: ``data[:cut]`` is a run of complete lines, from ``start`` on."""
    position, size = start, CHUNK
    while True:
        want = size if stop is None else min(size, stop - position)
        if want <= 0:
            return
        data = os.pread(fd, want, position)
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data, cut
            position += cut
            if len(data) < want:
                return
            size = CHUNK
        elif len(data) < want or want < size:
            return
        else:
            size *= 2


def _decoded(data: bytes, cut: int, timed: bool) -> tuple[list[Any], list[bytes] | None]:
    """Light records of the lines of ``data[:cut]``; the lines too if they had to be split.

    On the fast path (every line valid) the lines are not split: callers split
    them only when a record matched.
    """
    decoder = _timed if timed else _light
    try:
        return decoder.decode_lines(memoryview(data)[:cut]), None
    except msgspec.DecodeError:
        return _one_by_one(_lines(data), decoder)


def _lines(data: bytes) -> list[bytes]:
    """The complete lines of ``data`` (what follows the last newline dropped)."""
    lines = data.split(b"\n")
    lines.pop()
    return lines


def _one_by_one(lines: list[bytes], decoder: Any) -> tuple[list[Any], list[bytes]]:
    """The slow path: skip blank and corrupt lines, keep records and lines aligned."""
    records: list[Any] = []
    kept: list[bytes] = []
    for line in lines:
        if not line.strip(_BLANK):
            continue
        try:
            records.append(decoder.decode(line))
        except msgspec.DecodeError:
            continue
        kept.append(line)
    return records, kept


def _aligned(
    data: bytes, records: list[Any], lines: list[bytes] | None, timed: bool
) -> tuple[list[Any], list[bytes], bool]:
    """Records and lines, one for one (``True`` if the records had to be remade)."""
    if lines is not None:
        return records, lines, False
    lines = _lines(data)
    if len(lines) == len(records):
        return records, lines, False
    records, lines = _one_by_one(lines, _timed if timed else _light)  # blank lines
    return records, lines, True


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


def scan_log(
    path: str, query: EventQuery, *, stop: int | None = None
) -> Iterator[list[tuple[Event, bytes]]]:
    """Yield, per chunk, the events of the log at ``path`` matching ``query``, with their lines.

    Reads complete lines only, up to byte ``stop`` if given. A missing log
    yields nothing.
    """
    fd = open_log(path)
    if fd is None:
        return
    timed = query.start_time is not None or query.end_time is not None
    try:
        for data, cut in _regions(fd, 0, stop):
            records, lines = _decoded(data, cut, timed)
            chosen = _select(records, query)
            if not chosen:
                continue
            records, lines, remade = _aligned(data, records, lines, timed)
            if remade:
                chosen = _select(records, query)
            found = []
            for i in chosen:
                try:
                    found.append((decode_event(lines[i]), lines[i]))
                except EventDecodeError:  # a line with the light fields but not an event
                    continue
            yield found
    finally:
        os.close(fd)


def find_key(paths: list[str], event_id: str) -> Key | None:
    """The time-order key of the event with ``event_id`` in any of the logs, or ``None``."""
    for path in paths:
        fd = open_log(path)
        if fd is None:
            continue
        try:
            for data, cut in _regions(fd, 0, None):
                records, lines = _decoded(data, cut, False)
                if event_id not in map(_get_id, records):
                    continue
                records, lines, _ = _aligned(data, records, lines, False)
                ids = list(map(_get_id, records))
                try:
                    event = decode_event(lines[ids.index(event_id)])
                except EventDecodeError:
                    continue
                return key_of(event)
        finally:
            os.close(fd)
    return None
