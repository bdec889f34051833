"""The low-memory storage of an :class:`~sinks.index.EventIndex`: places, not events.

A low-memory index holds no :class:`~eventbus.Event`. For each row (an
indexed event) :class:`LogRows` keeps where its line is (the log, as a small
int naming a path; the byte offset; the length), the hash of its id, and the
value of each indexed field as a small int (values are interned per field),
in arrays whose item size grows with what they must hold. Events are read
back from the logs (across their segments: :mod:`sinks._segments`) when a
query returns them, neighbouring lines in one read, and checked against what
was indexed (:class:`StaleLogError` otherwise).
"""

from __future__ import annotations

import os
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, Final, TypeAlias

from eventbus import Event, EventDecodeError, decode_event, decode_events

from .._segments import LogFile
from ._errors import StaleLogError
from ._rows import Rows, fit, take

__all__: list[str] = []

Locations: TypeAlias = tuple[int, list[int], list[int]]
"""A batch's places: file id, offsets, lengths."""

_READ_GAP: Final = 16 * 1024  # read neighbouring lines of a log in one call within this gap
_MAX_READ: Final = 1 << 20
_get_id = attrgetter("id")


def _close_files(files: OrderedDict[int, LogFile]) -> None:
    while files:
        files.popitem()[1].close()


class LogRows(Rows):
    """Per row: where the event's line is, its id's hash, and its field values as codes.

    Rows are positions, as in the index. Up to ``max_open_files`` logs are
    kept open for reading (least recently used closed first); dropping the
    object closes them.
    """

    def __init__(self, fields: int, max_open_files: int) -> None:
        super().__init__(fields)
        self.max_open_files = max_open_files
        self.file: array[int] = array("B")
        self.offset: array[int] = array("q")
        self.length: array[int] = array("I")
        self.paths: list[str] = []
        self.path_ids: dict[str, int] = {}
        self.files: OrderedDict[int, LogFile] = OrderedDict()
        weakref.finalize(self, _close_files, self.files)

    def close(self) -> None:
        """Close the open logs; they are reopened when a read needs them."""
        _close_files(self.files)

    # --- adding and compacting ------------------------------------------------------------

    def file_id(self, path: str | os.PathLike[str]) -> int:
        """Return the small int naming the log at ``path`` (made on first use)."""
        name = os.path.abspath(path)
        file_id = self.path_ids.get(name)
        if file_id is None:
            file_id = self.path_ids[name] = len(self.paths)
            self.paths.append(name)
            self.file = fit(self.file, file_id)
        return file_id

    def extend(self, located: Locations, ids: list[str], values: Sequence[Sequence[Any]]) -> None:
        """Add rows: their places, their ids' hashes and (per field) their values."""
        n = len(ids)
        self.file.extend(repeat(located[0], n))
        self.offset.extend(located[1])
        self.length.extend(located[2])
        self.hashes.extend(map(hash, ids))
        for field, column_values in enumerate(values[: len(self.columns)]):
            self._append_codes(field, column_values)

    def truncate(self, rows: int) -> None:
        """Forget every row from ``rows`` on (a batch that failed part way)."""
        for column in (self.file, self.offset, self.length):
            del column[rows:]
        super().truncate(rows)

    def keep(self, live: Sequence[int]) -> None:
        """Keep only the rows at ``live`` (increasing), renumbered from 0 (a compaction)."""
        self.file = array(self.file.typecode, take(self.file, live))
        self.offset = array("q", take(self.offset, live))
        self.length = array("I", take(self.length, live))
        super().keep(live)

    # --- ids ------------------------------------------------------------------------------

    def id_at(self, position: int) -> str:
        """Return the id of the event at ``position`` (read back from its log)."""
        return self.read([position])[0].id

    def ids_at(self, positions: Sequence[int]) -> list[str]:
        """Return the ids of the events at ``positions`` (read back from their logs)."""
        return [event.id for event in self.read(positions)]

    # --- reading back ---------------------------------------------------------------------

    def in_log_order(self, positions: Sequence[int]) -> list[int]:
        """Return ``positions`` sorted by place: by log (first seen first), then offset."""
        files, offsets = self.file, self.offset
        if len(self.paths) == 1:
            return sorted(positions, key=offsets.__getitem__)
        return sorted(positions, key=lambda p: (files[p], offsets[p]))

    def _fd(self, file_id: int) -> LogFile:
        files = self.files
        fd = files.get(file_id)
        if fd is None:
            path = self.paths[file_id]
            fd = LogFile.open(path)
            if fd is None:
                raise StaleLogError(path, 0, "the file is gone")
            files[file_id] = fd
            if len(files) > self.max_open_files:
                files.popitem(last=False)[1].close()
        else:
            files.move_to_end(file_id)
        return fd

    def read(self, positions: Sequence[int]) -> list[Event]:
        """Read the events at ``positions`` from their logs, in the order given."""
        k = len(positions)
        files = list(map(self.file.__getitem__, positions))
        offsets = list(map(self.offset.__getitem__, positions))
        lengths = list(map(self.length.__getitem__, positions))
        if k and files.count(files[0]) == k:
            by_place = sorted(range(k), key=offsets.__getitem__)
        else:
            places = list(zip(files, offsets, strict=True))
            by_place = sorted(range(k), key=places.__getitem__)
        out: list[Any] = [None] * k
        i = 0
        while i < k:  # one read per run of nearby lines of one file
            first = by_place[i]
            file_id, begin = files[first], offsets[first]
            end = begin + lengths[first]
            adjacent = True
            j = i + 1
            while j < k:
                nxt = by_place[j]
                if files[nxt] != file_id or offsets[nxt] - end > _READ_GAP:
                    break
                if offsets[nxt] + lengths[nxt] - begin > _MAX_READ:
                    break
                adjacent = adjacent and offsets[nxt] == end
                end = offsets[nxt] + lengths[nxt]
                j += 1
            data = self._fd(file_id).pread(end - begin, begin)
            run = by_place[i:j]
            if not (adjacent and self._decode_run(data, run, positions, out)):
                for index in run:
                    at = offsets[index] - begin
                    out[index] = self._decode(data[at : at + lengths[index]], positions[index])
            i = j
        return out

    def _decode_run(
        self, data: bytes, run: list[int], positions: Sequence[int], out: list[Any]
    ) -> bool:
        """Decode adjacent lines in one call; ``False`` if they are not what was indexed."""
        try:
            events = decode_events(data, offset=self.offset[positions[run[0]]])
        except EventDecodeError:
            return False
        hashes = self.hashes
        wanted = [hashes[positions[index]] for index in run]
        if list(map(hash, map(_get_id, events))) != wanted:
            return False
        for index, event in zip(run, events, strict=True):
            out[index] = event
        return True

    def _decode(self, line: bytes, position: int) -> Event:
        path, offset = self.paths[self.file[position]], self.offset[position]
        if len(line) != self.length[position] or not line.endswith(b"\n"):
            raise StaleLogError(path, offset, "the line there is shorter than when indexed")
        try:
            event = decode_event(line, offset=offset)
        except EventDecodeError as exc:
            raise StaleLogError(path, offset, f"it is not an event ({exc})") from exc
        if hash(event.id) != self.hashes[position]:
            raise StaleLogError(path, offset, f"it holds another event ({event.id})")
        return event
