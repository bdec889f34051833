"""What both storages of an :class:`~sinks.index.EventIndex` keep per row: codes and ids.

A row is an indexed event (its position). :class:`Rows` holds, in arrays
whose item size grows with what they must hold, the value of each indexed
field as a small int (values are interned per field), and finds a row by its
event's id through a table of id hashes. The storages build on it: the
low-memory one (``sinks.index._disk``: where each event's line is in its log)
and the memory one (``sinks.index._memory``: the events, encoded compactly).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, MutableSequence, Sequence
from itertools import compress, repeat
from operator import eq
from typing import Any, Final

from ._postings import Check

__all__: list[str] = []

_LIMITS: Final = (("B", 1 << 8), ("H", 1 << 16), ("I", 1 << 32), ("q", 1 << 63))
_SIZES: Final = {array(typecode).itemsize: limit for typecode, limit in _LIMITS}
"""How many codes (0 to limit - 1) an array of each item size holds."""


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


class Codes(dict[Any, int]):
    """A field's values -> their codes (``None`` is 0); a value looked up the first time
    gets the next code, and is appended to ``names`` (code -> value)."""

    __slots__ = ("names",)

    def __init__(self, names: list[Any]) -> None:
        super().__init__(zip(names, range(len(names)), strict=True))
        self.names = names

    def __missing__(self, value: Any) -> int:
        code = self[value] = len(self.names)
        self.names.append(value)
        return code


class Rows(ABC):
    """Per row: the value of each indexed field as a code, and (for lookups) its id's hash.

    ``hashes`` may lag behind the rows: :meth:`_hashes` brings it up to date
    (a subclass that fills it as rows are added has nothing to do).
    """

    def __init__(self, fields: int) -> None:
        # Field values as small ints: value -> code, code -> value, a column per field.
        self.codes: list[Codes] = [Codes([None]) for _ in range(fields)]
        self.values: list[list[Any]] = [codes.names for codes in self.codes]
        self.columns: list[array[int]] = [array("B") for _ in range(fields)]
        self.hashes: array[int] = array("q")
        self.slots: array[int] | None = None  # id-hash table: 0 empty, else position + 1
        self.slots_rows = 0

    # --- adding and compacting ------------------------------------------------------------

    def _append_codes(self, field: int, values: Sequence[Any]) -> list[int]:
        """Append the codes of ``values`` to the column of ``field``; return them."""
        codes = self.codes[field]
        coded = list(map(codes.__getitem__, values))
        column = self.columns[field]
        if len(codes.names) > _SIZES[column.itemsize]:
            column = self.columns[field] = fit(column, len(codes.names) - 1)
        if column.itemsize == 1:
            column.frombytes(bytes(coded))  # quicker than converting item by item
        else:
            column.fromlist(coded)
        return coded

    def truncate(self, rows: int) -> None:
        """Forget the codes and hashes of every row from ``rows`` on (a batch that failed).

        Field values interned for them stay: a value no row holds matches nothing.
        """
        for column in (self.hashes, *self.columns):
            del column[rows:]
        if self.slots_rows > rows:
            self.slots = None
            self.slots_rows = 0

    def keep(self, live: Sequence[int]) -> None:
        """Keep only the rows at ``live`` (increasing), renumbered from 0 (a compaction).

        Every row must have its codes; hashes lagging behind are dropped (made again).
        """
        if len(self.hashes) == len(self.columns[0]):
            self.hashes = array("q", take(self.hashes, live))
        else:
            self.hashes = array("q")
        self.columns = [array(c.typecode, take(c, live)) for c in self.columns]
        self._recode()
        self.slots = None
        self.slots_rows = 0

    def close(self) -> None:  # noqa: B027 (a hook: most rows hold nothing open)
        """Release what the rows hold open (nothing, unless a subclass says otherwise)."""

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
            self.codes[field] = Codes([names[code] for code in used])
            self.values[field] = self.codes[field].names
            fitted = fit(array("B"), len(used) - 1)
            self.columns[field] = array(fitted.typecode, map(recode.__getitem__, column))

    # --- field values ---------------------------------------------------------------------

    def values_at(self, field: int, positions: Sequence[int]) -> list[Any]:
        """Return the values of ``field`` at ``positions``."""
        column = self.columns[field]
        return list(map(self.values[field].__getitem__, map(column.__getitem__, positions)))

    def value_at(self, field: int, position: int) -> Any:
        """Return the value of ``field`` at ``position``."""
        return self.values[field][self.columns[field][position]]

    def holds(self, field: int, value: Any) -> bool:
        """Whether some row (live or not) was given ``value`` in ``field``."""
        return value in self.codes[field]

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

    @abstractmethod
    def id_at(self, position: int) -> str:
        """Return the id of the event at ``position``."""

    def _hashes(self) -> array[int]:
        """The id hashes of every row (a subclass brings a lagging column up to date)."""
        return self.hashes

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
        hashes = self._hashes()
        rows = len(hashes)
        slots = self.slots
        if slots is None or rows * 10 > len(slots) * 7:
            size = 8
            while rows * 2 > size:
                size *= 2
            slots = self.slots = array("q", bytes(8 * size))
            self.slots_rows = 0
        mask = len(slots) - 1
        for position in range(self.slots_rows, rows):
            i = hashes[position] & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = position + 1
        self.slots_rows = rows
        return slots
