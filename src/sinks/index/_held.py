"""The memory-mode storage of an :class:`~sinks.index.EventIndex`: events held encoded.

An :class:`~eventbus.Event` held as Python objects costs about 500 bytes
(the struct, its strings, its datetime, its dict). :class:`HeldRows` keeps
what the index needs per row as a low-memory index does (each indexed
field's value as a small int, the hash of the id; the timestamp is in the
index's time order, as microseconds) and the rest of the event (id,
message, metadata, parent id, timestamp) as one msgpack record in a shared
``bytearray``: about 100 bytes a small event, index included. Events are
rebuilt when a query returns them (:meth:`HeldRows.read`), equal to those
added; the last few thousand read are kept at hand, as a dashboard asks for
the same pages again. An event whose rest msgpack cannot hold (an integer over 64 bits in
its metadata, a value JSON would refuse) is kept as it was given.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate
from operator import attrgetter
from typing import Any, Final

import msgspec

from eventbus import Event

from ._disk import Locations, LogRows, fit, take

__all__: list[str] = []

_REST: Final = attrgetter("id", "message", "metadata", "parent_id", "timestamp")
_FIELDS: Final = ("event_type", "session_id", "phase", "task_id", "agent_role", "model")
_GETTERS: Final = tuple(map(attrgetter, _FIELDS))
_ROW: Final = attrgetter(*_FIELDS)
_FEW: Final = 32  # up to this many events, held one by one
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_RECENT: Final = 16_384  # events read lately kept at hand (a dashboard asks for a page again)
_ARRAY32: Final = b"\xdd"  # msgpack: an array of up to 2**32 - 1 items, its size next (4 bytes)


class HeldRows(LogRows):
    """Per row: its field values as codes, its id's hash, and the rest of its event, encoded.

    Rows are positions, as in the index.
    """

    def __init__(self, fields: int) -> None:
        super().__init__(fields, 1)
        self.blob = bytearray()  # the rows' records, one after another
        self.ends: array[int] = array("I")  # where each row's record ends in blob
        self.kept: dict[int, Event] = {}  # rows whose record msgpack cannot hold: the event
        self.recent: dict[int, Event] = {}  # events read lately, by position

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, position: int) -> Event:
        return self.read([position])[0]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.read(range(len(self.ends))))

    # --- adding and compacting ------------------------------------------------------------

    def extend(self, located: Locations, ids: list[str], values: Sequence[Sequence[Any]]) -> None:
        """Not for held rows: use :meth:`hold` (they have no place in a log)."""
        raise TypeError("HeldRows holds events: use hold()")

    def hold(
        self, events: Sequence[Event], ids: Sequence[str], columns: Sequence[Sequence[Any]] | None
    ) -> None:
        """Add a row per event: its fields' codes (``columns``: per field, the values), its id's
        hash and its record."""
        if len(events) <= _FEW and columns is None:
            self._hold_few(events)
            return
        first = len(self.ends)
        try:
            records = list(map(_encode, map(_REST, events)))
        except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
            records = [self._record(event, first + i) for i, event in enumerate(events)]
        blob = self.blob
        start = len(blob)
        blob += b"".join(records)
        if len(blob) >= 1 << 32 and self.ends.typecode != "q":
            self.ends = array("q", self.ends)
        self.ends.fromlist(list(accumulate(map(len, records), initial=start)))
        del self.ends[first]  # the initial: where the first record starts
        self.hashes.fromlist(list(map(hash, ids)))
        if columns is None:
            columns = [list(map(getter, events)) for getter in _GETTERS]
        for field, column_values in enumerate(columns[: len(self.columns)]):
            self._append_codes(field, column_values)

    def _hold_few(self, events: Sequence[Event]) -> None:
        """:meth:`hold` for a few events (the bus's batches): a loop costs less than a pass per
        field."""
        blob, ends, hashes, codes, columns = (
            self.blob, self.ends, self.hashes, self.codes, self.columns
        )  # fmt: skip
        for event in events:
            try:
                blob += _encode(_REST(event))
            except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
                self.kept[len(ends)] = event
            if len(blob) >= 1 << 32 and ends.typecode != "q":
                ends = self.ends = array("q", ends)
            ends.append(len(blob))
            hashes.append(hash(event.id))
            for field, value in enumerate(_ROW(event)):
                code = codes[field].get(value)
                if code is None:
                    code = self._new_code(field, value)
                columns[field].append(code)

    def _new_code(self, field: int, value: Any) -> int:
        """Intern ``value`` of ``field``; return its code."""
        names = self.values[field]
        code = self.codes[field][value] = len(names)
        names.append(value)
        self.columns[field] = fit(self.columns[field], code)
        return code

    def _record(self, event: Event, position: int) -> bytes:
        try:
            return _encode(_REST(event))
        except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
            self.kept[position] = event
            return b""

    def _start(self, position: int) -> int:
        return self.ends[position - 1] if position else 0

    def truncate(self, rows: int) -> None:
        """Forget every row from ``rows`` on (a batch that failed part way)."""
        self.recent.clear()
        if rows < len(self.ends):
            del self.blob[self._start(rows) :]
        del self.ends[rows:]
        del self.hashes[rows:]
        for column in self.columns:
            del column[rows:]
        for position in [p for p in self.kept if p >= rows]:
            del self.kept[position]
        if self.slots_rows > rows:
            self.slots = None
            self.slots_rows = 0

    def keep(self, live: Sequence[int]) -> None:
        """Keep only the rows at ``live`` (increasing), renumbered from 0 (a compaction)."""
        self.recent.clear()
        blob, ends = self.blob, self.ends
        records = [blob[self._start(p) : ends[p]] for p in live]
        self.blob = bytearray(b"".join(records))
        self.ends = fit(array("I"), len(self.blob))
        self.ends.extend(accumulate(map(len, records)))
        self.hashes = array("q", take(self.hashes, live))
        self.columns = [array(c.typecode, take(c, live)) for c in self.columns]
        if self.kept:
            kept = self.kept
            self.kept = {new: kept[old] for new, old in enumerate(live) if old in kept}
        self._recode()
        self.slots = None

    # --- reading back ---------------------------------------------------------------------

    def _records(self, positions: Sequence[int]) -> list[Any]:
        """The decoded records (id, message, metadata, parent id, timestamp) at ``positions``.

        None of them may be a row in :attr:`kept` (whose record is empty).
        """
        blob, ends = self.blob, self.ends
        data: bytes | bytearray
        if type(positions) is range and positions.step == 1 and positions:
            data = blob[self._start(positions.start) : ends[positions.stop - 1]]
        else:
            data = b"".join([blob[(ends[p - 1] if p else 0) : ends[p]] for p in positions])
        records: list[Any] = _decode(_ARRAY32 + len(positions).to_bytes(4, "big") + data)
        return records

    def read(self, positions: Sequence[int]) -> list[Event]:
        """Return the events at ``positions``, in the order given.

        Those read lately (up to :data:`_RECENT`) are at hand; the others are rebuilt.
        """
        if not positions:
            return []
        recent = self.recent
        if not recent:
            events = self._rebuild(positions)
            self._remember(positions, events)
            return events
        found: list[Event | None] = list(map(recent.get, positions))
        if all(found):  # (an event is never false)
            return found  # type: ignore[return-value]
        missing = [p for p, event in zip(positions, found, strict=True) if event is None]
        rebuilt = self._rebuild(missing)
        self._remember(missing, rebuilt)
        made = iter(rebuilt)
        return [next(made) if event is None else event for event in found]

    def _remember(self, positions: Sequence[int], events: list[Event]) -> None:
        if len(positions) > _RECENT:
            return
        if len(self.recent) + len(positions) > _RECENT:
            self.recent.clear()
        self.recent.update(zip(positions, events, strict=True))

    def _rebuild(self, positions: Sequence[int]) -> list[Event]:
        """Rebuild the events at ``positions`` from their rows."""
        if self.kept:
            return self._read_kept(positions)
        records = self._records(positions)
        columns, values = self.columns, self.values
        types, sessions, phases, tasks, roles, models = (
            list(map(names.__getitem__, map(column.__getitem__, positions)))
            for column, names in zip(columns, values, strict=False)
        )
        return [
            Event(
                event_type=types[i],
                session_id=sessions[i],
                message=record[1],
                timestamp=record[4],
                phase=phases[i],
                task_id=tasks[i],
                agent_role=roles[i],
                model=models[i],
                metadata=record[2],
                id=record[0],
                parent_id=record[3],
            )
            for i, record in enumerate(records)
        ]

    def _read_kept(self, positions: Sequence[int]) -> list[Event]:
        kept = self.kept
        plain = [p for p in positions if p not in kept]
        self.kept = {}
        try:
            rebuilt = iter(self._rebuild(plain))
        finally:
            self.kept = kept
        return [kept[p] if p in kept else next(rebuilt) for p in positions]

    def id_at(self, position: int) -> str:
        """Return the id of the event at ``position``."""
        event = self.kept.get(position)
        if event is not None:
            return event.id
        record: list[Any] = _decode(self.blob[self._start(position) : self.ends[position]])
        return str(record[0])

    def ids_at(self, positions: Sequence[int]) -> list[str]:
        """Return the ids of the events at ``positions``."""
        if self.kept:
            return list(map(self.id_at, positions))
        return [str(record[0]) for record in self._records(positions)]

    def in_log_order(self, positions: Sequence[int]) -> list[int]:
        """Not for held rows: they have no place in a log."""
        raise TypeError("held rows have no place in a log")
