"""The low-memory storage of an :class:`~sinks.index.EventIndex`: places, not events.

A low-memory index holds no :class:`~eventbus.Event`. For each row (an
indexed event) :class:`LogRows` keeps where its line is (the log, as a small
int naming a path; the byte offset; the length), the hash of its id, and the
value of each indexed field as a small int (values are interned per field),
in arrays whose item size grows with what they must hold. Events are read
back from the logs with ``os.pread`` when a query returns them, neighbouring
lines in one read, and checked against what was indexed (:class:`StaleLogError` otherwise).
"""

from __future__ import annotations

import os
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, MutableSequence, Sequence
from itertools import compress, repeat
from operator import attrgetter, eq
from typing import Any, Final, TypeAlias

from eventbus import Event, EventDecodeError, decode_event, decode_events

from ._errors import StaleLogError
from ._postings import Check

__all__: list[str] = []

Locations: TypeAlias = tuple[int, list[int], list[int]]
"""A batch's places: file id, offsets, lengths."""

_READ_GAP: Final = 16 * 1024  # read neighbouring lines of a log in one call within this gap
_MAX_READ: Final = 1 << 20
_LIMITS: Final = (("B", 1 << 8), ("H", 1 << 16), ("I", 1 << 32), ("q", 1 << 63))
_get_id = attrgetter("id")


def fit(column: array[int], largest: int) -> array[int]:
    """Return ``column``, or a copy with a wider item type if ``largest`` does not fit."""
    for typecode, limit in _LIMITS:
        if largest < limit:
            if array(typecode).itemsize <= column.itemsize:
                return column
            return array(typecode, column)
    raise OverflowError(f"{largest} does not fit in 63 bits")


def take(column: MutableSequence[Any], positions: Sequence[int]) -> MutableSequence[Any]:
    """Return the items of ``column`` at ``positions``, as the same kind of sequence."""
    if type(positions) is range:
        return column[positions.start : positions.stop]
    picked = map(column.__getitem__, positions)
    if isinstance(column, array):
        return array(column.typecode, picked)
    return list(picked)


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without pread
    return os.read(fd, size)  # pragma: no cover


def _close_files(files: OrderedDict[int, int]) -> None:
    while files:
        os.close(files.popitem()[1])


class LogRows:
    """Per row: where the event's line is, its id's hash, and its field values as codes.

    Rows are positions, as in the index. Up to ``max_open_files`` logs are
    kept open for reading (least recently used closed first); dropping the
    object closes them.
    """

    def __init__(self, fields: int, max_open_files: int) -> None:
        self.max_open_files = max_open_files
        # Field values as small ints: value -> code, code -> value, a column per field.
        self.codes: list[dict[Any, int]] = [{None: 0} for _ in range(fields)]
        self.values: list[list[Any]] = [[None] for _ in range(fields)]
        self.columns: list[array[int]] = [array("B") for _ in range(fields)]
        self.file: array[int] = array("B")
        self.offset: array[int] = array("q")
        self.length: array[int] = array("I")
        self.hashes: array[int] = array("q")
        self.slots: array[int] | None = None  # id-hash table: 0 empty, else position + 1
        self.slots_rows = 0
        self.paths: list[str] = []
        self.path_ids: dict[str, int] = {}
        self.files: OrderedDict[int, int] = OrderedDict()
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

    def _append_codes(self, field: int, values: Sequence[Any]) -> None:
        codes = self.codes[field]
        missing = set(values).difference(codes)
        if missing:
            names = self.values[field]
            for value in missing:
                codes[value] = len(names)
                names.append(value)
            self.columns[field] = fit(self.columns[field], len(names) - 1)
        column = self.columns[field]
        if column.typecode == "B":  # bytes() and a copy: faster than an append per value
            column.frombytes(bytes(map(codes.__getitem__, values)))
        else:
            column.fromlist(list(map(codes.__getitem__, values)))

    def truncate(self, rows: int) -> None:
        """Forget every row from ``rows`` on (a batch that failed part way).

        Field values interned for them stay: a value no row holds matches nothing.
        """
        for column in (self.file, self.offset, self.length, self.hashes, *self.columns):
            del column[rows:]
        if self.slots_rows > rows:
            self.slots = None
            self.slots_rows = 0

    def keep(self, live: Sequence[int]) -> None:
        """Keep only the rows at ``live`` (increasing), renumbered from 0 (a compaction)."""
        self.file = array(self.file.typecode, take(self.file, live))
        self.offset = array("q", take(self.offset, live))
        self.length = array("I", take(self.length, live))
        self.hashes = array("q", take(self.hashes, live))
        self.columns = [array(c.typecode, take(c, live)) for c in self.columns]
        self._recode()
        self.slots = None

    def _recode(self) -> None:
        """Forget field values no row holds."""
        for field, column in enumerate(self.columns):
            used = sorted({0, *column})
            if len(used) * 2 > len(self.values[field]):
                continue
            names = self.values[field]
            recode = array("q", [0]) * len(names)
            for new, code in enumerate(used):
                recode[code] = new
            self.values[field] = [names[code] for code in used]
            self.codes[field] = {name: code for code, name in enumerate(self.values[field])}
            fitted = fit(array("B"), len(used) - 1)
            self.columns[field] = array(fitted.typecode, map(recode.__getitem__, column))

    # --- field values ---------------------------------------------------------------------

    def values_at(self, field: int, positions: Sequence[int]) -> list[Any]:
        """Return the values of ``field`` at ``positions``."""
        column = self.columns[field]
        return list(map(self.values[field].__getitem__, map(column.__getitem__, positions)))

    def equals(self, field: int, value: Any) -> Check:
        """A check keeping the positions whose ``field`` is ``value`` (a value held)."""
        column, code = self.columns[field], self.codes[field][value]
        return lambda c: list(compress(c, map(eq, map(column.__getitem__, c), repeat(code))))

    def one_of(self, field: int, values: frozenset[Any]) -> Check:
        """A check keeping the positions whose ``field`` is any of ``values``."""
        column, codes = self.columns[field], self.codes[field]
        wanted = frozenset(codes[v] for v in values if v in codes)
        return lambda c: list(compress(c, map(wanted.__contains__, map(column.__getitem__, c))))

    # --- ids ------------------------------------------------------------------------------

    def find(self, event_id: str, is_live: Callable[[int], bool]) -> int | None:
        """Return the position of the live row whose event has ``event_id``, or ``None``."""
        slots = self._hash_slots()
        hashes = self.hashes
        mask = len(slots) - 1
        h = hash(event_id)
        i = h & mask
        while (slot := slots[i]) != 0:
            position = slot - 1
            if hashes[position] == h and is_live(position) and self.id_at(position) == event_id:
                return position
            i = (i + 1) & mask
        return None

    def _hash_slots(self) -> array[int]:
        """The id-hash table, brought up to date."""
        rows = len(self.hashes)
        slots = self.slots
        if slots is None or rows * 10 > len(slots) * 7:
            size = 8
            while rows * 2 > size:
                size *= 2
            slots = self.slots = array("q", bytes(8 * size))
            self.slots_rows = 0
        mask = len(slots) - 1
        hashes = self.hashes
        for position in range(self.slots_rows, rows):
            i = hashes[position] & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = position + 1
        self.slots_rows = rows
        return slots

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

    def _fd(self, file_id: int) -> int:
        files = self.files
        fd = files.get(file_id)
        if fd is None:
            path = self.paths[file_id]
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise StaleLogError(path, 0, "the file is gone") from None
            files[file_id] = fd
            if len(files) > self.max_open_files:
                os.close(files.popitem(last=False)[1])
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
            data = _pread(self._fd(file_id), end - begin, begin)
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
