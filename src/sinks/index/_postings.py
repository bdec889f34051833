"""Postings: lists of index positions in time order, and the algorithms over them.

An :class:`~sinks.index.EventIndex` keeps, per field value, the positions of
the events holding it sorted by (timestamp, id); ``ts`` maps a position to
its timestamp and ``id_at``/``ids_at`` read ids (from memory or, in
low-memory mode, from the logs), so ties are broken only when they occur.
:class:`Postings` holds them; the functions find a time range by bisection
(:func:`cut`), insert a late event (:func:`insort`), sort positions
(:func:`time_sorted`) and filter a range of candidates, a page at a time
(:func:`scan`).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from itertools import chain, compress, islice, repeat
from operator import attrgetter, eq, is_not, lt
from typing import Any, Final, TypeAlias

from eventbus import Event

from ._chunks import Chunks

__all__: list[str] = []

Check: TypeAlias = Callable[[Sequence[int]], list[int]]
"""A filter of candidate positions: returns those that pass, in the order given."""

FIELDS: Final = ("event_type", "session_id", "phase", "task_id", "agent_role", "model")
"""The fields posted, in this order; then the (session, type) pairs (:data:`PAIRS`)."""
ROW: Final = attrgetter(*FIELDS)
"""An event's values of :data:`FIELDS`, as a tuple."""
_GETTERS: Final = tuple(map(attrgetter, FIELDS))
PAIRS: Final = len(FIELDS)
"""The posting lists of ``(session_id, event_type)`` pairs (after those of the fields)."""
SPARSE: Final = (2, 3, 4, 5)
"""The fields often ``None``: phase, task, role and model."""
_TYPE, _SESSION = 0, 1

FEW: Final = 32
"""Up to this many events, a loop over them costs less than a pass per field in C."""


def columns_of(events: Sequence[Event]) -> list[list[Any]]:
    """The events' values of each of :data:`FIELDS`: a list per field.

    (A pass per field: for many events, cheaper than a tuple per event.)
    """
    return [list(map(getter, events)) for getter in _GETTERS]


def increasing(items: Sequence[Any]) -> bool:
    """Whether ``items`` are strictly increasing."""
    return all(map(lt, items, islice(items, 1, None)))


def both(first: Check, second: Check) -> Check:
    """A check passing what passes ``first`` and then ``second``."""
    return lambda candidates: second(first(candidates))


def cut(
    sequence: Sequence[int],
    start: int,
    ts: Sequence[Any],
    bounds: tuple[Any, str | None, Any],
    id_at: Callable[[int], str],
) -> tuple[int, int]:
    """Return the bounds of the entries of ``sequence[start:]`` in the time range.

    ``bounds`` is ``(low, low_id, high)``: inclusive timestamps (``None``: open)
    and, with ``low_id``, strictly after ``(low, low_id)`` instead.
    """
    low, low_id, high = bounds
    lo, hi = start, len(sequence)
    if low is None and high is None:
        return lo, hi
    if type(sequence) is range:  # the time order, while events arrive in order
        if low is not None:
            lo = bisect_left(ts, low, lo, hi)
        if high is not None:
            hi = bisect_right(ts, high, lo, hi)
    elif type(sequence) is Chunks:  # the time order, once an event arrived late
        if low is not None:
            lo = sequence.bisect(ts, low, lo, right=False)
        if high is not None:
            hi = sequence.bisect(ts, high, lo, right=True)
    else:
        key = ts.__getitem__
        if low is not None:
            lo = bisect_left(sequence, low, lo, hi, key=key)
        if high is not None:
            hi = bisect_right(sequence, high, lo, hi, key=key)
    if low_id is not None:  # strictly after (low, low_id): skip ties up to that id
        while lo < hi and ts[sequence[lo]] == low and id_at(sequence[lo]) <= low_id:
            lo += 1
    return lo, hi


def insort(
    posting: MutableSequence[int],
    start: int,
    ts: Sequence[Any],
    position: int,
    id_at: Callable[[int], str],
) -> None:
    """Insert ``position`` into ``posting[start:]`` at its place in time order (ties by id).

    The place is searched from the newest end, in doubling steps, then by
    bisection: a late event is usually a little late, and the newest entries
    are the ones in the CPU's cache.
    """
    stamp = ts[position]
    hi = len(posting)
    lo, step = hi - 1, 1
    while lo > start and ts[posting[lo]] > stamp:  # everything from lo on is later
        hi = lo
        step += step
        lo = hi - step
    i = bisect_right(posting, stamp, max(lo, start), hi, key=ts.__getitem__)
    if i > start and ts[posting[i - 1]] == stamp:
        event_id = id_at(position)
        while i > start and ts[posting[i - 1]] == stamp:
            if id_at(posting[i - 1]) < event_id:
                break
            i -= 1
    posting.insert(i, position)


def time_sorted(
    positions: Iterable[int],
    ts: Sequence[Any],
    ids_at: Callable[[Sequence[int]], list[str]],
    *,
    dedupe: bool = False,
) -> tuple[list[int], list[int]]:
    """Return ``positions`` sorted by (timestamp, id), and (``dedupe``) the repeats.

    Of events with equal timestamp and id, the first to arrive is kept.
    """
    ordered = sorted(positions, key=ts.__getitem__)
    stamps = list(map(ts.__getitem__, ordered))
    ties = list(map(eq, stamps, islice(stamps, 1, None)))
    i = _index(ties, True, 0)
    if i < 0:
        return ordered, []
    result: list[int] = []
    repeats: list[int] = []
    done = 0
    while i >= 0:
        j = i
        while j < len(ties) and ties[j]:
            j += 1
        run = ordered[i : j + 1]  # these share one timestamp
        result.extend(ordered[done:i])
        previous = None
        for event_id, position in sorted(zip(ids_at(run), run, strict=True)):
            if dedupe and event_id == previous:
                repeats.append(position)
            else:
                result.append(position)
            previous = event_id
        done = j + 1
        i = _index(ties, True, j)
    result.extend(ordered[done:])
    return result, repeats


def scan(
    sequence: Sequence[int],
    lo: int,
    hi: int,
    checks: list[Check],
    limit: int | None,
    *,
    newest_first: bool,
) -> Sequence[int]:
    """Return the entries of ``sequence[lo:hi]`` that pass ``checks`` (up to ``limit``).

    With a limit, the entries are checked in growing chunks from the
    oldest (or ``newest_first``, the newest) end, so a page costs in
    proportion to the page, not to the candidates.
    """
    if not checks:
        if limit is not None and hi - lo > limit:
            if newest_first:
                lo = hi - limit
            else:
                hi = lo + limit
        return sequence[lo:hi]
    if limit is None:
        found: Sequence[int] = sequence[lo:hi]
        for check in checks:
            found = check(found)
        return found
    chunks: list[Sequence[int]] = []
    total = 0
    step = max(64, 4 * limit)
    while lo < hi and total < limit:
        if newest_first:
            part: Sequence[int] = sequence[max(lo, hi - step) : hi]
            hi -= len(part)
        else:
            part = sequence[lo : min(hi, lo + step)]
            lo += len(part)
        for check in checks:
            part = check(part)
        chunks.append(part)
        total += len(part)
        step *= 2
    if newest_first:
        return list(chain.from_iterable(reversed(chunks)))[-limit:]
    return list(chain.from_iterable(chunks))[:limit]


def _index(items: list[bool], wanted: bool, start: int) -> int:
    """Return the index of ``wanted`` in ``items[start:]``, or -1."""
    try:
        return items.index(wanted, start)
    except ValueError:
        return -1


class _Made(dict[Any, Any]):
    """A dict that gives a key it lacks the value ``make(key)``, stored (like ``defaultdict``).

    A large batch's postings are appended by ``map(append, map(made.__getitem__,
    values), positions)``: one pass in C per field, with no Python code run per
    event; a small batch's by
    ``made[value].append(position)``; ``make`` runs once per new value.
    """

    __slots__ = ("make",)

    def __init__(self, make: Callable[[Any], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> Any:
        made = self[key] = self.make(key)
        return made


class Postings:
    """Per field of :data:`FIELDS`, then per (session, type): value -> positions in time order.

    ``lists[field]`` maps each value of the field (``lists[PAIRS]``: each
    ``(session_id, event_type)``) to its posting. Entries before
    ``starts[field][value]`` belong to evicted events; they are dropped when
    the index compacts (:meth:`renumber`). A posting is a list (faster to
    append) or, with ``arrays``, an ``array("q")`` (8 bytes an entry).
    ``None`` is never posted; the fields in :data:`SPARSE` often hold it.
    """

    def __init__(self, *, arrays: bool) -> None:
        self.arrays = arrays
        self.lists: list[dict[Any, MutableSequence[int]]] = [
            _Made(self._new_posting) for _ in range(PAIRS + 1)
        ]
        self.starts: list[dict[Any, int]] = [{} for _ in range(PAIRS + 1)]
        self._append_one: Callable[[MutableSequence[int], int], None] = (
            array.append if arrays else list.append  # type: ignore[assignment]
        )
        self._extend: Callable[[MutableSequence[int], Sequence[int]], None] = (
            array.fromlist if arrays else list.extend  # type: ignore[assignment]
        )
        # session -> (type -> the posting of the pair), sharing the postings.
        self._pairs = _Made(self._pairs_of)
        # Per field, code -> posting (code 0, None: a scratch list), for values coded
        # by the rows (see append_all); dropped when postings are replaced.
        self._by_code: list[list[MutableSequence[int]]] = [[] for _ in FIELDS]

    def get(self, field: int, value: Any) -> tuple[MutableSequence[int], int] | None:
        """Return the posting of ``value`` and where its live entries start, or ``None``."""
        posting = self.lists[field].get(value)
        if posting is None:
            return None
        return posting, self.starts[field].get(value, 0)

    def append_all(
        self,
        events: Sequence[Event],
        positions: Sequence[int],
        columns: Sequence[Sequence[Any]] | None = None,
        coded: tuple[Sequence[Sequence[int]], Sequence[list[Any]]] | None = None,
    ) -> None:
        """Append ``events`` (the newest, in time order) at ``positions`` to their postings.

        A few are appended one by one (a loop costs less than setting up a
        pass in C per field); more, a field at a time (:meth:`_append`), from
        their ``columns`` (per field, the events' values) if given, or from
        ``coded``: per field, the events' codes and the values they stand for
        (code -> value, code 0 for ``None``), which spares a lookup per value.
        """
        n = len(events)
        if n <= FEW:
            types, sessions, phases, tasks, roles, models, _ = self.lists
            pairs = self._pairs
            for (event_type, session, phase, task, role, model), position in zip(
                map(ROW, events), positions, strict=True
            ):
                types[event_type].append(position)
                sessions[session].append(position)
                if phase is not None:
                    phases[phase].append(position)
                if task is not None:
                    tasks[task].append(position)
                if role is not None:
                    roles[role].append(position)
                if model is not None:
                    models[model].append(position)
                pairs[session][event_type].append(position)
            return
        if columns is None:
            columns = columns_of(events)
        if coded is None:
            for field, values in enumerate(columns):
                self._append(field, values, positions)
        else:
            for field, (codes, names) in enumerate(zip(*coded, strict=True)):
                self._append_coded(field, codes, names, positions)
        session_of, type_of = columns[_SESSION], columns[_TYPE]
        if session_of.count(session_of[0]) == n:  # one session
            postings: Iterable[MutableSequence[int]] = map(
                self._pairs[session_of[0]].__getitem__, type_of
            )
        else:  # nested dicts: no (session, type) tuple to build and hash per event
            postings = map(dict.__getitem__, map(self._pairs.__getitem__, session_of), type_of)
        any(map(self._append_one, postings, positions))  # returns None: consumes all

    def _append(self, field: int, values: Sequence[Any], positions: Sequence[int]) -> None:
        n = len(values)
        first = values[0]
        postings = self.lists[field]
        if values[-1] == first and values.count(first) == n:  # one value: one extend
            if first is not None:
                self._extend(postings[first], positions)
            return
        if field in SPARSE:  # often None: skip the Nones in C
            present = list(map(is_not, values, repeat(None)))
            if not all(present):
                any(map(self._append_one, map(postings.__getitem__, compress(values, present)),
                        compress(positions, present)))  # fmt: skip
                return
        any(map(self._append_one, map(postings.__getitem__, values), positions))
        if None in postings:  # a None among values that are seldom None
            del postings[None]

    def _append_coded(
        self, field: int, codes: Sequence[int], names: list[Any], positions: Sequence[int]
    ) -> None:
        by_code = self._by_code[field]
        if len(by_code) < len(names):
            made = self.lists[field]
            if not by_code:
                by_code.append([])  # code 0: None, never posted
            by_code.extend(map(made.__getitem__, names[len(by_code) :]))
        first = codes[0]
        if codes[-1] == first and codes.count(first) == len(codes):  # one value: one extend
            if first:
                self._extend(by_code[first], positions)
            return
        if 0 in codes:  # skip the Nones in C
            any(map(self._append_one, map(by_code.__getitem__, compress(codes, codes)),
                    compress(positions, codes)))  # fmt: skip
            return
        any(map(self._append_one, map(by_code.__getitem__, codes), positions))

    def insert_one(
        self, values: Sequence[Any], ts: Sequence[Any], position: int, id_at: Callable[[int], str]
    ) -> None:
        """Insert a late event's ``position`` into its postings, in place.

        ``values`` are its values of :data:`FIELDS` (as :data:`ROW` reads them).
        """
        lists, starts = self.lists, self.starts
        for field, value in enumerate(values):  # the pairs: below
            if value is not None:
                insort(lists[field][value], starts[field].get(value, 0), ts, position, id_at)
        pair = (values[_SESSION], values[_TYPE])
        insort(lists[PAIRS][pair], starts[PAIRS].get(pair, 0), ts, position, id_at)

    def sort(self, rank: Sequence[int], *, dropped: bool) -> None:
        """Sort every posting by ``rank`` (a position's place in time order), dropping evicted
        entries and, if ``dropped``, the positions ranked ``-1``."""
        keep = (0).__le__
        for postings, starts in zip(self.lists, self.starts, strict=True):
            for value, posting in postings.items():
                live: Iterable[int] = posting[starts.pop(value, 0) :]
                if dropped:
                    live = compress(live, map(keep, map(rank.__getitem__, live)))
                posting[:] = self._like(sorted(live, key=rank.__getitem__))

    def evict(self, values: list[list[Any]]) -> None:
        """Mark evicted the oldest entries: per field, the values of the evicted events."""
        for field, starts in enumerate(self.starts):
            for value, count in Counter(values[field]).items():
                if value is not None:
                    starts[value] = starts.get(value, 0) + count

    def renumber(self, renumber: Callable[[Iterable[int]], MutableSequence[int]]) -> None:
        """Drop evicted entries and empty postings; map the rest through ``renumber``."""
        for postings, starts in zip(self.lists, self.starts, strict=True):
            for value in list(postings):
                skip = starts.pop(value, 0)
                if skip == len(postings[value]):
                    del postings[value]
                else:
                    postings[value] = renumber(postings[value][skip:])
        self._pairs.clear()  # it holds the postings replaced
        self._by_code = [[] for _ in FIELDS]

    def forget(self, first: int) -> None:
        """Remove the positions from ``first`` on from every posting (a failed batch).

        A posting made for them stays, empty (as after :meth:`sort` drops rows).
        """
        for postings in self.lists:
            postings.pop(None, None)  # never posted: left by an append that failed
            for posting in postings.values():
                if posting and max(posting) >= first:
                    posting[:] = self._like(p for p in posting if p < first)

    def _new_posting(self, value: Any) -> MutableSequence[int]:
        return array("q") if self.arrays else []

    def _pairs_of(self, session: Any) -> _Made:
        """The postings of the pairs ``(session, event_type)``, by ``event_type``."""
        pairs = self.lists[PAIRS]
        return _Made(lambda event_type: pairs[session, event_type])

    def _like(self, items: Iterable[int]) -> MutableSequence[int]:
        return array("q", items) if self.arrays else list(items)
