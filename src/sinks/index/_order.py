"""The time order of an :class:`~sinks.index.EventIndex`, and the batches that extend it.

Each indexed event has a row (its position, in arrival order); :class:`TimeOrder`
keeps the row timestamps (``ts``) and the live positions sorted by (timestamp,
id) (``order``; a ``range`` while events arrive in order, from the first late
one :class:`~sinks.index._chunks.Chunks`, where an insert costs O(log n +
chunk); entries before ``start`` evicted). It prepares each batch before it
is indexed (sorted, the events it already holds skipped and counted in
``duplicates``), inserts late events in place or leaves many to one
:meth:`TimeOrder.resort`, and does the time-order part of eviction and
compaction; the index does the rest (events, postings, usage). Ids are read
through the ``id_at``/``ids_at`` callables the index passes in.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, MutableSequence, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from operator import attrgetter, eq, lt
from typing import Any, Final, TypeAlias

from eventbus import Event

from ._chunks import Chunks
from ._disk import Locations
from ._postings import increasing, time_sorted
from ._rows import take

__all__: list[str] = []

Key: TypeAlias = tuple[Any, str]
"""(timestamp, id): what the time order sorts by."""

Prepared: TypeAlias = tuple[list[Event], list[str] | None, list[Any], Locations | None, int, bool]
"""A batch ready to index: events, ids, timestamps, locations, ``late``, ``insert``.

The ids are ``None`` (not read) when the batch is in order, after the newest
event held, in memory mode (where the index can read them from the events).
"""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_INSERT_RATIO: Final = 32  # insert late events one by one while fewer than live/ratio
_get_id = attrgetter("id")
_get_timestamp = attrgetter("timestamp")


def microseconds(moment: datetime) -> int:
    """``moment`` as microseconds since the epoch (the low-memory timestamps)."""
    return (moment - _EPOCH) // _MICROSECOND


def is_row(position: int, *, live: Sequence[int]) -> bool:
    """Whether ``position`` is in ``live`` (sorted), the rows kept by a compaction."""
    if type(live) is range:
        return position in live
    i = bisect_left(live, position)
    return i < len(live) and live[i] == position


def _ordered(positions: Sequence[int]) -> range | Chunks:
    """A time order holding ``positions`` (in time order): a range if they are ``range(n)``."""
    if all(map(eq, positions, range(len(positions)))):
        return range(len(positions))
    return Chunks.of(positions)


def _pick(located: Locations | None, keep: list[int]) -> Locations | None:
    if located is None:
        return None
    return located[0], [located[1][i] for i in keep], [located[2][i] for i in keep]


class TimeOrder:
    """Row timestamps and the live positions in time order (ties by id).

    :param low_memory: timestamps are microseconds in an ``array`` (else datetimes).
    :param keep_duplicates: keep events with the (timestamp, id) of one held.
    """

    def __init__(self, *, low_memory: bool, keep_duplicates: bool) -> None:
        self.low_memory = low_memory
        self.keep_duplicates = keep_duplicates
        self.duplicates = 0  # events skipped or dropped as held already
        self.last: Key | None = None  # (timestamp, id) of the newest event
        self.sorted = True  # False while late rows added in bulk await resort()
        # Rows, by position: datetimes in memory mode, microseconds in low-memory mode.
        self.ts: MutableSequence[Any] = array("q") if low_memory else []
        # All live positions in time order: a range (equal to range(rows))
        # while events arrive in order. Entries before start are evicted.
        self.order: range | Chunks = range(0)
        self.start = 0

    def stamp(self, moment: datetime) -> Any:
        """``moment`` as the index stores timestamps."""
        return microseconds(moment) if self.low_memory else moment

    # --- batches ------------------------------------------------------------------------

    def prepare(
        self,
        events: list[Event],
        located: Locations | None,
        *,
        bulk: bool,
        live: int,
        id_at: Callable[[int], str],
    ) -> Prepared | None:
        """Order a batch by (timestamp, id) and drop the events the index holds.

        Returns the events, their ids, timestamps and locations, how many sort
        before the newest event held (``late``), and whether to insert those
        one by one (else they are sorted in by :meth:`resort`). ``None``:
        nothing new.
        """
        if not events:
            return None
        stamps: list[Any] = list(map(_get_timestamp, events))
        if self.low_memory:
            stamps = list(map(microseconds, stamps))
        in_order = increasing(stamps)
        last = self.last
        if in_order and (last is None or stamps[0] > last[0]):  # the usual case
            # No event can be one held, so only low-memory rows need the ids.
            unread = list(map(_get_id, events)) if self.low_memory else None
            return events, unread, stamps, located, 0, False
        ids = list(map(_get_id, events))
        keys: list[Key] | None = None
        if not in_order:
            keys = list(zip(stamps, ids, strict=True))
            if not increasing(keys):
                keep = self._sorted_unique(keys)
                events = [events[i] for i in keep]
                ids = [ids[i] for i in keep]
                stamps = [stamps[i] for i in keep]
                keys = [keys[i] for i in keep]
                located = _pick(located, keep)
        if last is None or (stamps[0], ids[0]) > last:  # all in order (ties with the newest)
            return events, ids, stamps, located, 0, False
        if keys is None:
            keys = list(zip(stamps, ids, strict=True))
        late = bisect_right(keys, last)
        insert = not bulk and late * _INSERT_RATIO <= live
        if insert and not self.keep_duplicates:  # few: drop those held now (many: resort)
            held = [i for i in range(late) if self._holds(stamps[i], ids[i], id_at)]
            if held:
                self.duplicates += len(held)
                keep = sorted(set(range(len(events))).difference(held))
                if not keep:
                    return None
                events = [events[i] for i in keep]
                ids = [ids[i] for i in keep]
                stamps = [stamps[i] for i in keep]
                located = _pick(located, keep)
                late -= len(held)
        return events, ids, stamps, located, late, insert and late > 0

    def _sorted_unique(self, keys: list[Key]) -> list[int]:
        """Return the indexes of ``keys`` in key order, without repeated keys (counted).

        With ``keep_duplicates`` repeated keys are kept, in the order given.
        """
        order = sorted(range(len(keys)), key=keys.__getitem__)
        if self.keep_duplicates:
            return order
        keep = [i for i, j in zip(order, [-1, *order], strict=False) if j < 0 or keys[i] != keys[j]]
        self.duplicates += len(keys) - len(keep)
        return keep

    def _holds(self, stamp: Any, event_id: str, id_at: Callable[[int], str]) -> bool:
        """Whether the (sorted) index holds an event with this timestamp and id."""
        order, ts = self.order, self.ts
        i = self._first(stamp)
        while i < len(order) and ts[order[i]] == stamp:
            if id_at(order[i]) == event_id:
                return True
            i += 1
        return False

    def _first(self, stamp: Any) -> int:
        """The index in :attr:`order` (from ``start``) of the first row not before ``stamp``."""
        order = self.order
        if type(order) is range:
            return bisect_left(self.ts, stamp, self.start)
        return order.bisect(self.ts, stamp, self.start, right=False)

    def add(
        self,
        stamps: list[Any],
        ids: list[str] | None,
        positions: list[int],
        late: int,
        insert: bool,
        id_at: Callable[[int], str],
    ) -> None:
        """Add the rows of a prepared batch (their events must be readable by ``id_at``).

        The first ``late`` are inserted in place if ``insert``, else left for
        :meth:`resort`; the rest are appended.
        """
        self.ts.extend(stamps)
        if insert and type(self.order) is range:
            self.order = Chunks([self.order])  # no copy: late inserts cut it up
        start = late if insert else 0
        if start < len(positions):
            if type(self.order) is range:
                self.order = range(positions[-1] + 1)
            else:  # the positions are consecutive
                self.order.append_run(positions[start], positions[-1] + 1)
        if insert:
            for position in positions[:late]:
                self.insert(position, id_at)
        elif late:
            self.sorted = False
        newest = (stamps[-1], id_at(positions[-1]) if ids is None else ids[-1])
        if self.last is None or newest > self.last:
            self.last = newest

    def append_newest(self, stamps: list[Any], last_id: str) -> int:
        """Add the rows of events after the newest held, in order; return the first position.

        ``stamps`` are the events' timestamps, ``last_id`` the last one's id.
        Returns -1, having added nothing, unless the first sorts after every
        event held (no tie possible) and each of the rest after the one before.
        """
        last = self.last
        if (last is not None and not stamps[0] > last[0]) or (
            len(stamps) > 1 and not all(map(lt, stamps, islice(stamps, 1, None)))
        ):
            return -1
        ts = self.ts
        first = len(ts)
        ts.extend(stamps)
        order = self.order
        if type(order) is range:
            self.order = range(len(ts))
        else:
            order.append_run(first, len(ts))
        self.last = (stamps[-1], last_id)
        return first

    def holds(self, stamp: Any, event_id: str, id_at: Callable[[int], str]) -> bool:
        """Whether to skip an event sorting before the newest (one held; counted if so)."""
        if self.keep_duplicates or not self._holds(stamp, event_id, id_at):
            return False
        self.duplicates += 1
        return True

    def insert_late(self, stamp: Any, id_at: Callable[[int], str]) -> int:
        """Add the row of one event sorting before the newest, in place; return its position.

        Its event must be readable by ``id_at`` at that position (the next row).
        """
        position = len(self.ts)
        self.ts.append(stamp)
        order = self.order
        if type(order) is range:
            order = self.order = Chunks([order])  # no copy: late inserts cut it up
        order.insort(position, self.start, self.ts, id_at)
        return position

    def is_late(self, stamp: Any, event_id: str, live: int) -> bool:
        """Whether one event sorts before the newest held, to be inserted in place.

        Not while rows added in bulk await :meth:`resort`, nor into fewer than
        ``_INSERT_RATIO`` events (as for a batch in :meth:`prepare`).
        """
        last = self.last
        return (
            self.sorted and last is not None and (stamp, event_id) <= last and live >= _INSERT_RATIO
        )

    def saved(self) -> tuple[Any, ...]:
        """What :meth:`restore` needs to undo the rows added from now on."""
        order = self.order
        return (
            len(self.ts),
            order if type(order) is range else None,
            self.last,
            self.sorted,
            self.duplicates,
        )

    def restore(self, saved: tuple[Any, ...]) -> None:
        """Undo the rows added (and duplicates counted) since :meth:`saved` returned ``saved``."""
        rows, order, self.last, self.sorted, self.duplicates = saved
        del self.ts[rows:]
        if order is not None:
            self.order = order
        elif len(self.order) and max(self.order) >= rows:
            self.order = _ordered([p for p in self.order if p < rows])

    def insert(self, position: int, id_at: Callable[[int], str]) -> None:
        """Insert one late row into the time order."""
        assert type(self.order) is not range
        self.order.insort(position, self.start, self.ts, id_at)

    def resort(self, ids_at: Callable[[Sequence[int]], list[str]]) -> tuple[array[int], list[int]]:
        """Sort the time order after bulk late rows; return each row's rank and the repeats.

        A rank is a position's place in the new order (``-1``: not in it); the
        repeats (rows of events held already, unless ``keep_duplicates``) are
        dropped from the order and counted in ``duplicates``.
        """
        order, repeats = time_sorted(
            self.order[self.start :], self.ts, ids_at, dedupe=not self.keep_duplicates
        )
        # Not a range: a late row sorts before an earlier one (compaction may restore it).
        self.order, self.start = Chunks.of(order), 0
        rank = array("q", [-1]) * len(self.ts)
        for i, position in enumerate(order):
            rank[position] = i
        self.duplicates += len(repeats)
        self.sorted = True
        return rank, repeats

    # --- eviction and compaction --------------------------------------------------------

    def evict(self, k: int) -> Sequence[int]:
        """Evict the ``k`` oldest rows; return their positions."""
        start = self.start
        victims = self.order[start : start + k]
        self.start = start + k
        return victims

    def compact(self) -> tuple[Sequence[int], Callable[[int], int]]:
        """Drop evicted rows and renumber: return the rows kept (sorted) and old -> new."""
        order, start = self.order, self.start
        live: Sequence[int]
        new_position: Callable[[int], int]
        if type(order) is range:
            live = range(start, order.stop)
            new_position = start.__rsub__
            self.order = range(len(live))
        else:
            live = sorted(order[start:])
            remap = array("q", [-1]) * len(self.ts)
            for new, old in enumerate(live):
                remap[old] = new
            new_position = remap.__getitem__
            self.order = _ordered(array("q", map(new_position, order[start:])))
        self.start = 0
        self.ts = take(self.ts, live)
        return live, new_position

    def is_live(self, position: int) -> bool:
        """Whether ``position`` is in the time order (not evicted nor dropped)."""
        order, ts = self.order, self.ts
        stamp = ts[position]
        if type(order) is range:
            return self.start <= position < order.stop
        i = self._first(stamp)
        while i < len(order) and ts[order[i]] == stamp:
            if order[i] == position:
                return True
            i += 1
        return False
