"""The in-memory query index: :class:`EventIndex`, a sink that answers queries without scanning.

Subscribe an :class:`EventIndex` to a bus and it indexes the events of every
session it receives. It answers the seed's ``get_events`` filters (plus
``session_id`` and ``model``), ``get_latest``, ``count``, a paged
:meth:`EventIndex.query` and token/cost aggregates (:class:`TokenUsage`), each
at a cost in proportion to what it returns, not to how many events it holds.

Order. Results come in *time order*: by ``timestamp``, and events with equal
timestamps by ``id`` (ids sort by creation). The order depends only on the
events, never on when they arrived, so an index rebuilt from the JSONL logs
(:meth:`EventIndex.from_workspace`) answers every query exactly like the live
one, an event that arrives late takes its place in time, and a paging cursor
(``after=``) means the same in both.

How. Each event gets a row (its position). For each field, and for each
(session, type) pair, the index keeps *postings*: per value, the positions of
the events holding it, in time order. A query walks the smallest candidate
list (a posting cut to the time range by bisection, or the time order of all
events) and checks the other conditions on that list only; with a ``limit`` it
stops once the page is full. Events normally arrive in time order, so keeping
postings current is an append per posting; a late event is inserted in place,
and many late ones (or a rebuild) are appended and sorted once. An event the
index holds (same id and timestamp) is skipped: an event in order cannot be
one, so only late ones are checked. Token usage is kept per response and
folded into per-session, -model, -role and -task totals when read.

Memory. By default events are held in memory (an Event costs 0.6 to 0.9 KB,
the index about 100 bytes more). ``max_events`` bounds that: the oldest
events (in time order) are evicted and counted, and their rows compacted away
in batches. ``low_memory=True`` holds no events at all, only where each one is
in its JSONL log, the postings and interned field values (about 100 bytes per
event); queries read the events they return back from the logs.

Errors::

    EventBusError
    └── EventIndexError
        ├── IndexArgumentError (ValueError)
        ├── UnknownEventIdError (LookupError)
        ├── LocationRequiredError
        └── StaleLogError

An :class:`EventIndex` is not thread-safe: use it from one thread (the bus's
event loop, or the thread that owns it).
"""

from __future__ import annotations

import math
import os
import weakref
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain, compress, islice, repeat
from operator import attrgetter, eq, is_not, lt
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import msgspec

from eventbus import (
    Event,
    EventBusError,
    EventDecodeError,
    EventQuery,
    EventType,
    decode_event,
    decode_events,
)

__all__ = [
    "EventIndex",
    "EventIndexError",
    "IndexArgumentError",
    "LocationRequiredError",
    "StaleLogError",
    "TokenUsage",
    "UnknownEventIdError",
    "UsageField",
]

UsageField: TypeAlias = Literal["session_id", "model", "agent_role", "task_id"]
"""The fields :meth:`EventIndex.usage_by` groups by."""


# --- errors -------------------------------------------------------------------------------


class EventIndexError(EventBusError):
    """Base class of the errors raised by :class:`EventIndex`."""


class IndexArgumentError(EventIndexError, ValueError):
    """Raised when an argument of an :class:`EventIndex` method is out of range."""

    def __init__(self, name: str, value: object, requirement: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"{name}={value!r} is invalid: {requirement}")


class UnknownEventIdError(EventIndexError, LookupError):
    """Raised when ``query(after=...)`` names an event id the index does not hold."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(
            f"after={event_id!r}: no event with this id is in the index (never added, or "
            "evicted by max_events); pass the Event itself as 'after' to page past an "
            "evicted event"
        )


class LocationRequiredError(EventIndexError):
    """Raised when a low-memory index is given events without their places in a log."""

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(
            f"cannot {action}: EventIndex(low_memory=True) keeps only where each event is "
            "in its JSONL log, so events reach it through add_located(events, path, offsets, "
            "lengths), called by the writer that wrote them; use EventIndex() to index "
            "events straight from a bus"
        )


class StaleLogError(EventIndexError):
    """Raised when a low-memory index reads an event back and its log no longer holds it."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        super().__init__(
            f"cannot read the event indexed at byte {offset} of {path}: {reason}; the log "
            "changed after it was indexed (cleared or rewritten): rebuild the index with "
            "EventIndex.from_workspace(...)"
        )


# --- token usage --------------------------------------------------------------------------


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token and cost totals of LLM responses (``llm_response_received`` events).

    Only responses count: a request's ``prompt_tokens`` is repeated by its
    response, so counting both would count it twice. ``total_tokens`` is the
    response's own value, or ``prompt_tokens + completion_tokens`` when it has
    none. A token count that is not a non-negative ``int``, or a ``cost_usd``
    that is not a finite non-negative number, counts as zero. Costs are summed
    exactly (in units of 1e-12 USD), so totals do not depend on arrival order.
    """

    responses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0


_PICO: Final = 10**12
_MAX_TOKENS: Final = 1 << 63
_NO_USAGE: Final = TokenUsage()


def _tokens(value: object) -> int | None:
    if type(value) is int and 0 <= value < _MAX_TOKENS:
        return value
    return None


def _picodollars(value: object) -> int:
    if type(value) is float and math.isfinite(value) and value >= 0:
        return round(value * _PICO)
    if type(value) is int and value >= 0:
        return value * _PICO
    return 0


def _usage_amounts(metadata: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """Return (prompt, completion, total, cached, cost in 1e-12 USD) of one response."""
    prompt = _tokens(metadata.get("prompt_tokens")) or 0
    completion = _tokens(metadata.get("completion_tokens")) or 0
    total = _tokens(metadata.get("total_tokens"))
    return (
        prompt,
        completion,
        prompt + completion if total is None else total,
        _tokens(metadata.get("cached_tokens")) or 0,
        _picodollars(metadata.get("cost_usd")),
    )


def _to_usage(sums: list[int] | None) -> TokenUsage:
    if sums is None:
        return _NO_USAGE
    return TokenUsage(
        responses=sums[0],
        prompt_tokens=sums[1],
        completion_tokens=sums[2],
        total_tokens=sums[3],
        cached_tokens=sums[4],
        cost_usd=sums[5] / _PICO,
    )


# --- the index ----------------------------------------------------------------------------

_FIELDS: Final = ("event_type", "session_id", "phase", "task_id", "agent_role", "model")
_GETTERS: Final = tuple(map(attrgetter, _FIELDS))
_TYPE, _SESSION, _SESSION_TYPE = 0, 1, 6  # posting lists: the six fields, then (session, type)
_POSTED: Final = 7
_USAGE_FIELDS: Final = ("session_id", "model", "agent_role", "task_id")
_FIELD_INDEX: Final = {name: i for i, name in enumerate(_FIELDS)}
_MAYBE_NONE: Final = (2, 3, 4, 5)  # fields that are often None: phase, task, role, model
_get_id = attrgetter("id")
_get_timestamp = attrgetter("timestamp")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_RESPONSE: Final = EventType.LLM_RESPONSE_RECEIVED
_EVERYTHING: Final = EventQuery()
# Stands in for an evicted (or duplicate) event until its row is compacted away.
_GONE: Final = Event(event_type=EventType.INFO, session_id="", message="", id="", parent_id=None)

_INSERT_RATIO: Final = 32  # insert late events one by one while fewer than live/ratio
_MIN_COMPACTION: Final = 4096  # compact once this many (and half the rows) are dead
_READ_GAP: Final = 16 * 1024  # read neighbouring lines of a log in one call within this gap
_MAX_READ: Final = 1 << 20
_BATCH: Final = 4096
_LIMITS: Final = (("B", 1 << 8), ("H", 1 << 16), ("I", 1 << 32), ("q", 1 << 63))

_Check: TypeAlias = Callable[[Sequence[int]], list[int]]
_Key: TypeAlias = tuple[Any, str]
_Locations: TypeAlias = tuple[int, list[int], list[int]]  # file id, offsets, lengths
_Posting: TypeAlias = MutableSequence[int]


def _fit(column: array[int], largest: int) -> array[int]:
    """Return ``column``, or a copy with a wider item type if ``largest`` does not fit."""
    for typecode, limit in _LIMITS:
        if largest < limit:
            if array(typecode).itemsize <= column.itemsize:
                return column
            return array(typecode, column)
    raise OverflowError(f"{largest} does not fit in 63 bits")


def _take(column: MutableSequence[Any], positions: Sequence[int]) -> MutableSequence[Any]:
    """Return the items of ``column`` at ``positions``, as the same kind of sequence."""
    if type(positions) is range:
        return column[positions.start : positions.stop]
    picked = map(column.__getitem__, positions)
    if isinstance(column, array):
        return array(column.typecode, picked)
    return list(picked)


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without pread
    return os.read(fd, size)  # pragma: no cover


def _close_files(files: OrderedDict[int, int]) -> None:
    while files:
        os.close(files.popitem()[1])


def _increasing(items: Sequence[Any]) -> bool:
    return all(map(lt, items, islice(items, 1, None)))


def _pick(located: _Locations | None, keep: list[int]) -> _Locations | None:
    if located is None:
        return None
    return located[0], [located[1][i] for i in keep], [located[2][i] for i in keep]


class EventIndex:
    """An index of events from every session, queried without scanning; also a bus sink.

    ``bus.subscribe(index)`` keeps it current (``write``); :meth:`add` adds
    events directly. Queries return events in time order (ties by id)::

        index = EventIndex()
        async with EventBus() as bus:
            bus.subscribe(index)
            ...
        index.get_events(event_type=EventType.TASK_FAILED, session_id="s1")
        index.query(EventQuery(task_id="t7"), limit=100)         # one page
        index.usage_by("model")                                  # {"gpt-4o": TokenUsage(...)}

    An event the index already holds (same id and timestamp) is skipped and
    counted in :attr:`duplicates`, so a batch seen twice is harmless.

    :param max_events: hold at most this many events; the oldest (in time
        order) are evicted and counted in :attr:`evicted`. ``None``: unbounded.
    :param low_memory: hold no events, only where each one is in its JSONL log
        (events are added with :meth:`add_located` by the writer of the log, or
        by :meth:`from_workspace`); queries read the events they return back
        from the logs.
    :param max_open_files: in low-memory mode, how many logs stay open for reading.
    """

    def __init__(
        self,
        *,
        max_events: int | None = None,
        low_memory: bool = False,
        max_open_files: int = 32,
    ) -> None:
        if max_events is not None and max_events < 1:
            raise IndexArgumentError("max_events", max_events, "hold at least 1 event, or None")
        if max_open_files < 1:
            raise IndexArgumentError("max_open_files", max_open_files, "must be >= 1")
        self._max_events = max_events
        self._low_memory = low_memory
        self._max_open_files = max_open_files
        self._live = 0
        self._dead = 0  # rows of evicted or duplicate events, until compacted away
        self._evicted = 0
        self._duplicates = 0
        self._last: _Key | None = None  # (timestamp, id) of the newest event
        self._sorted = True  # False while late rows added in bulk await _resort
        # Rows, by position (arrival order). Timestamps are datetimes in memory
        # mode and microseconds since the epoch in low-memory mode.
        self._events: list[Event] = []
        self._ts: MutableSequence[Any] = array("q") if low_memory else []
        # All live positions in time order: a range (equal to range(rows))
        # while events arrive in order. Entries before _order_start are evicted.
        self._order: range | array[int] = range(0)
        self._order_start = 0
        # Postings: per field (and per (session, type)), value -> positions in
        # time order; entries before _starts[field][value] are evicted. Lists
        # in memory mode (faster to append), arrays in low-memory mode.
        self._postings: list[dict[Any, _Posting]] = [{} for _ in range(_POSTED)]
        self._starts: list[dict[Any, int]] = [{} for _ in range(_POSTED)]
        self._scratch: list[int] = []
        self._appends: list[dict[Any, Callable[[int], None]]] = []
        self._reset_appends()
        # Event id -> position, built when `after=<id>` first needs it.
        self._id_map: dict[str, int] | None = None
        self._id_map_rows = 0
        # Low-memory mode: field values as small ints, where each event is, and
        # id hashes (with an open-addressing table of them, built when needed).
        self._codes: list[dict[Any, int]] = [{None: 0} for _ in _FIELDS]
        self._values: list[list[Any]] = [[None] for _ in _FIELDS]
        self._columns: list[array[int]] = [array("B") for _ in _FIELDS]
        self._file: array[int] = array("B")
        self._offset: array[int] = array("q")
        self._length: array[int] = array("I")
        self._hashes: array[int] = array("q")
        self._slots: array[int] | None = None  # 0 empty, else position + 1
        self._slots_rows = 0
        self._paths: list[str] = []
        self._path_ids: dict[str, int] = {}
        self._files: OrderedDict[int, int] = OrderedDict()
        weakref.finalize(self, _close_files, self._files)
        # Token usage: one row per response (positions increase), folded lazily
        # into the totals.
        self._usage_positions: array[int] = array("q")
        self._usage_row: dict[int, int] = {}  # position -> row
        self._usage_amounts: list[array[int]] = [array("q") for _ in range(4)]
        self._usage_cost: list[int] = []
        self._usage_folded = 0
        self._usage_total: list[int] = [0] * 6
        self._usage_groups: dict[str, dict[Any, list[int]]] = {name: {} for name in _USAGE_FIELDS}

    # --- properties ---------------------------------------------------------------------

    @property
    def low_memory(self) -> bool:
        """Whether events are read back from their logs instead of held in memory."""
        return self._low_memory

    @property
    def max_events(self) -> int | None:
        """The most events held at once, or ``None``."""
        return self._max_events

    @property
    def evicted(self) -> int:
        """How many evictions kept the index within :attr:`max_events`.

        An evicted event is forgotten: delivered again, it is indexed and
        (being the oldest) evicted again, and counted again.
        """
        return self._evicted

    @property
    def duplicates(self) -> int:
        """How many events were skipped because the index already held them."""
        return self._duplicates

    def __len__(self) -> int:
        return self._live

    def __repr__(self) -> str:
        mode = ", low_memory=True" if self._low_memory else ""
        return f"EventIndex({self._live} events{mode}, evicted={self._evicted})"

    # --- adding events ------------------------------------------------------------------

    async def write(self, events: Sequence[Event]) -> None:
        """Index a batch from the bus (the :class:`~eventbus.Sink` protocol).

        :raises LocationRequiredError: in low-memory mode, which needs each
            event's place in its log (see :meth:`add_located`).
        """
        if self._low_memory:
            raise LocationRequiredError("index events written by a bus")
        self._add(list(events), None)

    async def aclose(self) -> None:
        """Release open log files (the bus calls this); the index stays queryable."""
        self.close()

    def close(self) -> None:
        """Release open log files; they are reopened if a later query needs them."""
        _close_files(self._files)

    def add(self, events: Iterable[Event]) -> int:
        """Index ``events`` (in any order); return how many were new.

        :raises LocationRequiredError: in low-memory mode (see :meth:`add_located`).
        :raises TypeError: if an item is not an :class:`~eventbus.Event`.
        """
        if self._low_memory:
            raise LocationRequiredError("add events without their places in a log")
        return self._add(_checked(events), None)

    def add_located(
        self,
        events: Sequence[Event],
        path: str | os.PathLike[str],
        offsets: Sequence[int],
        lengths: Sequence[int],
    ) -> int:
        """Index ``events`` read from, or just written to, the JSONL log at ``path``.

        ``offsets[i]`` is the byte offset of ``events[i]``'s line and
        ``lengths[i]`` its size including the newline. A writer calls this
        once the lines are written to the file (flushed to the OS, not
        necessarily to disk): a low-memory index reads them back with
        ``os.pread`` when a query returns them. A memory-mode index ignores
        the locations. Returns how many events were new.

        :raises IndexArgumentError: if the three sequences differ in length or
            hold negative offsets or non-positive lengths.
        """
        events = _checked(events)
        if not len(events) == len(offsets) == len(lengths):
            raise IndexArgumentError(
                "offsets", f"{len(offsets)} offsets and {len(lengths)} lengths",
                f"give one offset and one length per event ({len(events)} events)",
            )  # fmt: skip
        if not events:
            return 0
        if not self._low_memory:
            return self._add(events, None)
        if min(offsets) < 0 or min(lengths) < 1 or max(lengths) >= 1 << 32:
            raise IndexArgumentError(
                "lengths", "a line", "offsets must be >= 0 and lengths between 1 and 2**32 - 1"
            )
        return self._add(events, (self._file_id(path), list(offsets), list(lengths)))

    @classmethod
    def from_workspace(
        cls,
        workspace_root: str | os.PathLike[str],
        *,
        low_memory: bool = False,
        max_events: int | None = None,
    ) -> EventIndex:
        """Build an index from every ``{workspace_root}/{session_id}/events.jsonl``.

        The result answers every query exactly like an index that received the
        same events live (corrupt lines, which :func:`sinks.jsonl.iter_log`
        skips, excepted). With ``max_events``, up to twice that many events are
        held while loading.

        :raises FileNotFoundError: if ``workspace_root`` does not exist.
        """
        from sinks.jsonl import iter_log  # here: sinks.jsonl may import this module

        index = cls(low_memory=low_memory, max_events=max_events)
        for session in sorted(Path(workspace_root).iterdir()):
            path = session / "events.jsonl"
            if not path.is_file():
                continue
            entries = iter_log(path)
            while chunk := list(islice(entries, _BATCH)):
                events = [entry[0] for entry in chunk]
                located: _Locations | None = None
                if low_memory:
                    offsets = [entry[1] for entry in chunk]
                    located = (index._file_id(path), offsets, [entry[2] for entry in chunk])
                index._add(events, located, bulk=True)
                if max_events is not None and index._live >= 2 * max_events:
                    index._settle()
        index._settle()
        return index

    def _file_id(self, path: str | os.PathLike[str]) -> int:
        name = os.path.abspath(path)
        file_id = self._path_ids.get(name)
        if file_id is None:
            file_id = self._path_ids[name] = len(self._paths)
            self._paths.append(name)
            self._file = _fit(self._file, file_id)
        return file_id

    def _add(self, events: list[Event], located: _Locations | None, *, bulk: bool = False) -> int:
        """Index a batch. ``bulk`` leaves late events unsorted until :meth:`_settle`.

        Events normally arrive in time order: then every posting gets an append,
        and no event can be one the index holds (it would sort before the
        newest). Late events are inserted in place, or, when many, appended and
        sorted; duplicates are found among them.
        """
        given, duplicates = len(events), self._duplicates
        prepared = self._prepare(events, located, bulk=bulk)
        if prepared is None:
            return 0
        events, ids, stamps, located, late, insert = prepared
        n, last, first = len(events), self._last, len(self._ts)
        positions = list(range(first, first + n))  # shared by every posting
        self._ts.extend(stamps)
        values = [list(map(getter, events)) for getter in _GETTERS]
        values.append(list(zip(values[_SESSION], values[_TYPE], strict=True)))
        if self._low_memory:
            assert located is not None
            self._file.extend(repeat(located[0], n))
            self._offset.extend(located[1])
            self._length.extend(located[2])
            self._hashes.extend(map(hash, ids))
            for field in range(len(_FIELDS)):
                self._append_codes(field, values[field])
        else:
            self._events.extend(events)
        # Postings: append what sorts after the newest event, insert the rest in place.
        if insert and type(self._order) is range:
            self._order = array("q", self._order)
        start = late if insert else 0
        if start < n:
            tail = positions[start:] if start else positions
            for field, field_values in enumerate(values):
                self._append_postings(field, field_values[start:] if start else field_values, tail)
            if type(self._order) is range:
                self._order = range(first + n)
            else:
                self._order.extend(tail)
        if insert:
            for i in range(late):
                self._insert_late(positions[i], [field_values[i] for field_values in values])
        elif late:
            self._sorted = False
        self._live += n
        newest = (stamps[-1], ids[-1])
        if last is None or newest > last:
            self._last = newest
        self._add_usage(events, values[_TYPE], positions)
        if not bulk:
            self._settle()
        return given - (self._duplicates - duplicates)

    def _prepare(
        self, events: list[Event], located: _Locations | None, *, bulk: bool
    ) -> tuple[list[Event], list[str], list[Any], _Locations | None, int, bool] | None:
        """Order a batch by (timestamp, id) and drop the events the index holds.

        Returns the events, their ids, timestamps and locations, how many sort
        before the newest event held (``late``), and whether to insert those
        one by one (else they are sorted in later). ``None``: nothing new.
        """
        if not events:
            return None
        ids = list(map(_get_id, events))
        stamps: list[Any] = list(map(_get_timestamp, events))
        if self._low_memory:
            stamps = list(map(_microseconds, stamps))
        keys: list[_Key] | None = None
        if not _increasing(stamps):
            keys = list(zip(stamps, ids, strict=True))
            if not _increasing(keys):
                keep = self._sorted_unique(keys)
                events = [events[i] for i in keep]
                ids = [ids[i] for i in keep]
                stamps = [stamps[i] for i in keep]
                keys = [keys[i] for i in keep]
                located = _pick(located, keep)
        last = self._last
        if last is None or (stamps[0], ids[0]) > last:  # the usual case: all in order
            return events, ids, stamps, located, 0, False
        if keys is None:
            keys = list(zip(stamps, ids, strict=True))
        late = bisect_right(keys, last)
        insert = not bulk and late * _INSERT_RATIO <= self._live
        if insert:  # few: drop those held now (many: _resort finds them)
            held = [i for i in range(late) if self._holds(stamps[i], ids[i])]
            if held:
                self._duplicates += len(held)
                keep = sorted(set(range(len(events))).difference(held))
                if not keep:
                    return None
                events = [events[i] for i in keep]
                ids = [ids[i] for i in keep]
                stamps = [stamps[i] for i in keep]
                located = _pick(located, keep)
                late -= len(held)
        return events, ids, stamps, located, late, insert and late > 0

    def _sorted_unique(self, keys: list[_Key]) -> list[int]:
        """Return the indexes of ``keys`` in key order, without repeated keys (counted)."""
        order = sorted(range(len(keys)), key=keys.__getitem__)
        keep = [i for i, j in zip(order, [-1, *order], strict=False) if j < 0 or keys[i] != keys[j]]
        self._duplicates += len(keys) - len(keep)
        return keep

    def _holds(self, stamp: Any, event_id: str) -> bool:
        """Whether the (sorted) index holds an event with this timestamp and id."""
        order, ts = self._order, self._ts
        if type(order) is range:
            i = bisect_left(ts, stamp, self._order_start)
        else:
            i = bisect_left(order, stamp, self._order_start, key=ts.__getitem__)
        while i < len(order) and ts[order[i]] == stamp:
            if self._id_at(order[i]) == event_id:
                return True
            i += 1
        return False

    def _append_codes(self, field: int, values: list[Any]) -> None:
        codes = self._codes[field]
        missing = set(values).difference(codes)
        if missing:
            names = self._values[field]
            for value in missing:
                codes[value] = len(names)
                names.append(value)
            self._columns[field] = _fit(self._columns[field], len(names) - 1)
        self._columns[field].extend(map(codes.__getitem__, values))

    def _posting(self, field: int, value: Any) -> _Posting:
        postings = self._postings[field]
        posting = postings.get(value)
        if posting is None:
            posting = postings[value] = array("q") if self._low_memory else []
            self._appends[field][value] = posting.append
        return posting

    def _append_postings(self, field: int, values: list[Any], positions: list[int]) -> None:
        n = len(values)
        first = values[0]
        if values[-1] == first and values.count(first) == n:  # one value: one extend
            if first is not None:
                self._posting(field, first).extend(positions)
            return
        appends = self._appends[field]
        for value in set(values).difference(appends):
            self._posting(field, value)
        if field in _MAYBE_NONE and values.count(None) * 4 > n:  # sparse: skip Nones in C
            present = list(map(is_not, values, repeat(None)))
            for position, value in zip(
                compress(positions, present), compress(values, present), strict=True
            ):
                appends[value](position)
            return
        for position, value in zip(positions, values, strict=True):
            appends[value](position)
        self._scratch.clear()  # the Nones' appends

    def _reset_appends(self) -> None:
        self._appends = [
            {value: posting.append for value, posting in postings.items()}
            for postings in self._postings
        ]
        for appends in self._appends:
            appends[None] = self._scratch.append

    def _like(self, items: Iterable[int]) -> _Posting:
        """A posting (a list, or in low-memory mode an array) holding ``items``."""
        return array("q", items) if self._low_memory else list(items)

    def _insert_late(self, position: int, values: list[Any]) -> None:
        """Insert one late row into the time order and its postings."""
        assert type(self._order) is not range
        self._insort(self._order, self._order_start, position)
        for field, value in enumerate(values):
            if value is not None:
                start = self._starts[field].get(value, 0)
                self._insort(self._posting(field, value), start, position)

    def _insort(self, posting: _Posting, start: int, position: int) -> None:
        ts = self._ts
        stamp = ts[position]
        i = bisect_right(posting, stamp, start, key=ts.__getitem__)
        if i > start and ts[posting[i - 1]] == stamp:
            event_id = self._id_at(position)
            while i > start and ts[posting[i - 1]] == stamp:
                if self._id_at(posting[i - 1]) < event_id:
                    break
                i -= 1
        posting.insert(i, position)

    def _settle(self) -> None:
        """Sort rows added late in bulk, then evict down to ``max_events``."""
        if not self._sorted:
            self._resort()
        if self._max_events is not None and self._live > self._max_events:
            self._evict(self._live - self._max_events)

    def _resort(self) -> None:
        """Put every posting back in time order, dropping duplicate rows."""
        order, duplicates = self._time_sorted(self._order[self._order_start :], dedupe=True)
        # Not a range: a late row sorts before an earlier one (compaction may restore it).
        self._order, self._order_start = array("q", order), 0
        rank = array("q", [-1]) * len(self._ts)
        for i, position in enumerate(order):
            rank[position] = i
        keep = (0).__le__
        for postings, starts in zip(self._postings, self._starts, strict=True):
            for value, posting in postings.items():
                live: Iterable[int] = posting[starts.pop(value, 0) :]
                if duplicates:
                    live = compress(live, map(keep, map(rank.__getitem__, live)))
                posting[:] = self._like(sorted(live, key=rank.__getitem__))
        if duplicates:
            self._drop(duplicates)
        self._sorted = True

    def _drop(self, positions: list[int]) -> None:
        """Forget the rows of duplicate events (found by :meth:`_resort`)."""
        self._live -= len(positions)
        self._dead += len(positions)
        self._duplicates += len(positions)
        if not self._low_memory:
            for position in positions:
                self._events[position] = _GONE
        rows = {self._usage_row[p] for p in positions if p in self._usage_row}
        for row in rows:
            if row < self._usage_folded:
                self._apply_usage(row, -1)
        self._remove_usage_rows(rows)

    def _time_sorted(
        self, positions: Iterable[int], *, dedupe: bool = False
    ) -> tuple[list[int], list[int]]:
        """Return ``positions`` sorted by (timestamp, id), and (``dedupe``) the repeats.

        Of events with equal timestamp and id, the first to arrive is kept.
        """
        ts = self._ts
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
            for event_id, position in sorted(zip(self._ids_at(run), run, strict=True)):
                if dedupe and event_id == previous:
                    repeats.append(position)
                else:
                    result.append(position)
                previous = event_id
            done = j + 1
            i = _index(ties, True, j)
        result.extend(ordered[done:])
        return result, repeats

    # --- eviction and compaction --------------------------------------------------------

    def _evict(self, k: int) -> None:
        """Evict the ``k`` oldest events (the front of every posting)."""
        self._fold_usage()
        start = self._order_start
        victims = self._order[start : start + k]
        self._order_start = start + k
        self._live -= k
        self._evicted += k
        self._dead += k
        columns = [self._values_at(field, victims) for field in range(len(_FIELDS))]
        columns.append(list(zip(columns[_SESSION], columns[_TYPE], strict=True)))
        for field, starts in enumerate(self._starts):
            for value, count in Counter(columns[field]).items():
                if value is not None:
                    starts[value] = starts.get(value, 0) + count
        for position, event_type in zip(victims, columns[_TYPE], strict=True):
            if event_type == _RESPONSE:
                self._apply_usage(self._usage_row[position], -1)
        if not self._low_memory:
            events = self._events
            for position in victims:
                events[position] = _GONE
        if self._dead >= _MIN_COMPACTION and self._dead >= self._live:
            self._compact()

    def _compact(self) -> None:
        """Drop dead rows and renumber positions (amortised over the evictions)."""
        self._fold_usage()
        order, start = self._order, self._order_start
        live: Sequence[int]
        new_position: Callable[[int], int]
        if type(order) is range:
            live = range(start, order.stop)
            new_position = start.__rsub__
            self._order = range(len(live))
        else:
            live = sorted(order[start:])
            remap = array("q", [-1]) * len(self._ts)
            for new, old in enumerate(live):
                remap[old] = new
            new_position = remap.__getitem__
            renumbered = array("q", map(new_position, order[start:]))
            in_order = all(map(eq, renumbered, range(len(renumbered))))
            self._order = range(len(renumbered)) if in_order else renumbered
        self._order_start = 0
        shared = list(range(len(live)))  # one int object per row, shared by the postings

        def renumber(positions: Iterable[int]) -> _Posting:
            if self._low_memory:
                return array("q", map(new_position, positions))
            return list(map(shared.__getitem__, map(new_position, positions)))

        self._ts = _take(self._ts, live)
        if self._low_memory:
            self._file = array(self._file.typecode, _take(self._file, live))
            self._offset = array("q", _take(self._offset, live))
            self._length = array("I", _take(self._length, live))
            self._hashes = array("q", _take(self._hashes, live))
            self._columns = [array(c.typecode, _take(c, live)) for c in self._columns]
            self._recode()
            self._slots = None
        else:
            self._events = list(_take(self._events, live))
            self._id_map = None
        for postings, starts in zip(self._postings, self._starts, strict=True):
            for value in list(postings):
                skip = starts.pop(value, 0)
                if skip == len(postings[value]):
                    del postings[value]
                else:
                    postings[value] = renumber(postings[value][skip:])
        self._reset_appends()
        self._remove_usage_rows(
            {r for r, p in enumerate(self._usage_positions) if not self._is_row(p, live)}
        )
        self._usage_positions = array("q", map(new_position, self._usage_positions))
        self._usage_row = dict(
            zip(self._usage_positions, range(len(self._usage_positions)), strict=True)
        )
        self._dead = 0

    @staticmethod
    def _is_row(position: int, live: Sequence[int]) -> bool:
        if type(live) is range:
            return position in live
        i = bisect_left(live, position)
        return i < len(live) and live[i] == position

    def _remove_usage_rows(self, rows: set[int]) -> None:
        """Delete usage rows (already subtracted from the totals, or never folded)."""
        if not rows:
            return
        keep = [row for row in range(len(self._usage_positions)) if row not in rows]
        folded = sum(1 for row in keep if row < self._usage_folded)
        self._usage_positions = array("q", map(self._usage_positions.__getitem__, keep))
        self._usage_amounts = [array("q", map(a.__getitem__, keep)) for a in self._usage_amounts]
        self._usage_cost = list(map(self._usage_cost.__getitem__, keep))
        self._usage_folded = folded
        self._usage_row = dict(zip(self._usage_positions, range(len(keep)), strict=True))

    def _recode(self) -> None:
        """Forget field values no live event holds (low-memory mode)."""
        for field, column in enumerate(self._columns):
            used = sorted({0, *column})
            if len(used) * 2 > len(self._values[field]):
                continue
            names = self._values[field]
            recode = array("q", [0]) * len(names)
            for new, code in enumerate(used):
                recode[code] = new
            self._values[field] = [names[code] for code in used]
            self._codes[field] = {name: code for code, name in enumerate(self._values[field])}
            fitted = _fit(array("B"), len(used) - 1)
            self._columns[field] = array(fitted.typecode, map(recode.__getitem__, column))

    # --- ids ----------------------------------------------------------------------------

    def _find(self, event_id: str) -> int | None:
        """Return the position of the live event with ``event_id``, or ``None``."""
        if not self._low_memory:
            id_map, events = self._id_map, self._events
            if id_map is None:
                id_map = self._id_map = {}
                self._id_map_rows = 0
            if self._id_map_rows < len(events):  # catch up with the rows added since
                new = range(self._id_map_rows, len(events))
                id_map.update(zip(map(_get_id, events[new.start :]), new, strict=True))
                self._id_map_rows = len(events)
            position = id_map.get(event_id)
            if position is None or events[position] is _GONE:
                return None
            return position
        slots = self._hash_slots()
        hashes = self._hashes
        mask = len(slots) - 1
        h = hash(event_id)
        i = h & mask
        while (slot := slots[i]) != 0:
            position = slot - 1
            if (
                hashes[position] == h
                and self._is_live(position)
                and self._id_at(position) == event_id
            ):
                return position
            i = (i + 1) & mask
        return None

    def _is_live(self, position: int) -> bool:
        if not self._low_memory:
            return self._events[position] is not _GONE
        order, ts = self._order, self._ts
        stamp = ts[position]
        if type(order) is range:
            return self._order_start <= position < order.stop
        i = bisect_left(order, stamp, self._order_start, key=ts.__getitem__)
        while i < len(order) and ts[order[i]] == stamp:
            if order[i] == position:
                return True
            i += 1
        return False

    def _hash_slots(self) -> array[int]:
        """The id-hash table (low-memory mode), brought up to date."""
        rows = len(self._hashes)
        slots = self._slots
        if slots is None or rows * 10 > len(slots) * 7:
            size = 8
            while rows * 2 > size:
                size *= 2
            slots = self._slots = array("q", bytes(8 * size))
            self._slots_rows = 0
        mask = len(slots) - 1
        hashes = self._hashes
        for position in range(self._slots_rows, rows):
            i = hashes[position] & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = position + 1
        self._slots_rows = rows
        return slots

    def _id_at(self, position: int) -> str:
        if self._low_memory:
            return self._read([position])[0].id
        return self._events[position].id

    def _ids_at(self, positions: Sequence[int]) -> list[str]:
        if self._low_memory:
            return [event.id for event in self._read(positions)]
        return [self._events[p].id for p in positions]

    # --- reading back (low-memory mode) -------------------------------------------------

    def _fd(self, file_id: int) -> int:
        files = self._files
        fd = files.get(file_id)
        if fd is None:
            path = self._paths[file_id]
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise StaleLogError(path, 0, "the file is gone") from None
            files[file_id] = fd
            if len(files) > self._max_open_files:
                os.close(files.popitem(last=False)[1])
        else:
            files.move_to_end(file_id)
        return fd

    def _read(self, positions: Sequence[int]) -> list[Event]:
        """Read the events at ``positions`` from their logs, in the order given."""
        k = len(positions)
        files = list(map(self._file.__getitem__, positions))
        offsets = list(map(self._offset.__getitem__, positions))
        lengths = list(map(self._length.__getitem__, positions))
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
            events = decode_events(data)
        except EventDecodeError:
            return False
        hashes = self._hashes
        wanted = [hashes[positions[index]] for index in run]
        if list(map(hash, map(_get_id, events))) != wanted:
            return False
        for index, event in zip(run, events, strict=True):
            out[index] = event
        return True

    def _decode(self, line: bytes, position: int) -> Event:
        path, offset = self._paths[self._file[position]], self._offset[position]
        if len(line) != self._length[position] or not line.endswith(b"\n"):
            raise StaleLogError(path, offset, "the line there is shorter than when indexed")
        try:
            event = decode_event(line)
        except EventDecodeError as exc:
            raise StaleLogError(path, offset, f"it is not an event ({exc})") from exc
        if hash(event.id) != self._hashes[position]:
            raise StaleLogError(path, offset, f"it holds another event ({event.id})")
        return event

    # --- querying -----------------------------------------------------------------------

    def get_events(
        self,
        event_type: EventType | str | Sequence[EventType | str] | None = None,
        phase: str | None = None,
        task_id: str | None = None,
        agent_role: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        session_id: str | None = None,
        model: str | None = None,
    ) -> list[Event]:
        """Return the events matching every filter given, in time order.

        The seed's filters plus ``session_id`` and ``model``: ``event_type`` is
        one type or several, times are inclusive bounds (naive means UTC).
        """
        return self.query(
            EventQuery(
                event_type=event_type,
                phase=phase,
                task_id=task_id,
                agent_role=agent_role,
                start_time=start_time,
                end_time=end_time,
                session_id=session_id,
                model=model,
            )
        )

    def count(
        self,
        event_type: EventType | str | Sequence[EventType | str] | None = None,
        phase: str | None = None,
        task_id: str | None = None,
        agent_role: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        session_id: str | None = None,
        model: str | None = None,
    ) -> int:
        """Return how many events :meth:`get_events` would return for the same filters."""
        return self.count_query(
            EventQuery(
                event_type=event_type,
                phase=phase,
                task_id=task_id,
                agent_role=agent_role,
                start_time=start_time,
                end_time=end_time,
                session_id=session_id,
                model=model,
            )
        )

    def count_query(self, query: EventQuery) -> int:
        """Return how many events match ``query``."""
        if _check_query(query).is_empty:
            return self._live
        plan = self._plan(query, None)
        if plan is None:
            return 0
        sequence, lo, hi, checks = plan
        if not checks:
            return hi - lo
        return len(self._scan(sequence, lo, hi, checks, None, newest_first=False))

    def get_latest(self, n: int = 100, query: EventQuery | None = None) -> list[Event]:
        """Return the ``n`` most recent events (matching ``query``), oldest first.

        Like the seed's ``get_latest``, the last ``n`` events; "last" is by
        time (ties by id), which is arrival order when events arrive in order.
        """
        if n < 0:
            raise IndexArgumentError("n", n, "must be >= 0")
        if n == 0:
            return []
        query = _EVERYTHING if query is None else _check_query(query)
        plan = self._plan(query, None)
        if plan is None:
            return []
        sequence, lo, hi, checks = plan
        return self._events_at(self._scan(sequence, lo, hi, checks, n, newest_first=True))

    def query(
        self,
        query: EventQuery,
        *,
        limit: int | None = None,
        after: str | Event | None = None,
    ) -> list[Event]:
        """Return the events matching ``query`` in time order, a page at a time.

        Pages concatenate to the full answer: pass the last event of a page
        (or its id) as ``after`` to get the next one.

        :param limit: at most this many events; ``None``: all.
        :param after: only events after this one in time order (ties by id).
            An id must be of an event the index holds; an :class:`Event` need not.
        :raises UnknownEventIdError: if ``after`` is an id the index does not hold.
        """
        if limit is not None and limit < 0:
            raise IndexArgumentError("limit", limit, "must be >= 0, or None for every event")
        plan = self._plan(_check_query(query), after)
        if plan is None or limit == 0:
            return []
        sequence, lo, hi, checks = plan
        return self._events_at(self._scan(sequence, lo, hi, checks, limit, newest_first=False))

    def _stamp(self, moment: datetime) -> Any:
        return _microseconds(moment) if self._low_memory else moment

    def _cursor(self, after: str | Event) -> _Key:
        if isinstance(after, Event):
            return self._stamp(after.timestamp), after.id
        if not isinstance(after, str):
            raise TypeError(
                f"after must be an event id, an Event or None, got {type(after).__name__}"
            )
        position = self._find(after)
        if position is None:
            raise UnknownEventIdError(after)
        return self._ts[position], after

    def _plan(
        self, query: EventQuery, after: str | Event | None
    ) -> tuple[Sequence[int], int, int, list[_Check]] | None:
        """Choose the smallest candidate list for ``query``: (list, lo, hi, other checks).

        The candidates are the postings of the query's values (for a session
        and types, the (session, type) postings) and, with a time range, the
        time order; each is cut to the time range (and past ``after``) by
        bisection, and the conditions of the others become checks on the
        chosen one. ``None``: no event can match.
        """
        low: Any = None if query.start_time is None else self._stamp(query.start_time)
        low_id: str | None = None
        if after is not None:
            cursor = self._cursor(after)
            if low is None or cursor[0] >= low:
                low, low_id = cursor
        high: Any = None if query.end_time is None else self._stamp(query.end_time)
        types, session = query.event_type, query.session_id
        # (size, list (None: a union of postings), lo, hi, check)
        candidates: list[tuple[int, Sequence[int] | None, int, int, _Check | None]] = []
        for field in range(1, len(_FIELDS)):
            value = getattr(query, _FIELDS[field])
            if value is None or (field == _SESSION and types is not None):
                continue
            posting = self._postings[field].get(value)
            if posting is None:
                return None
            lo, hi = self._cut(posting, self._starts[field].get(value, 0), low, low_id, high)
            if lo >= hi:
                return None
            candidates.append((hi - lo, posting, lo, hi, self._equals(field, value)))
        union: list[tuple[Sequence[int], int, int]] = []
        if types is not None:
            field = _TYPE if session is None else _SESSION_TYPE
            for event_type in types:
                value = event_type if session is None else (session, event_type)
                posting = self._postings[field].get(value)
                if posting is not None:
                    start = self._starts[field].get(value, 0)
                    lo, hi = self._cut(posting, start, low, low_id, high)
                    if lo < hi:
                        union.append((posting, lo, hi))
            if not union:
                return None
            check = self._one_of(types)
            if session is not None:
                check = _both(check, self._equals(_SESSION, session))
            if len(union) == 1:
                only, lo, hi = union[0]
                candidates.append((hi - lo, only, lo, hi, check))
            else:
                candidates.append((sum(hi - lo for _, lo, hi in union), None, 0, 0, check))
        if not candidates or low is not None or high is not None:
            lo, hi = self._cut(self._order, self._order_start, low, low_id, high)
            if lo >= hi:
                return None
            candidates.append((hi - lo, self._order, lo, hi, None))
        best = min(range(len(candidates)), key=lambda i: candidates[i][0])
        _, sequence, lo, hi, _check = candidates[best]
        if sequence is None:
            sequence = self._time_sorted(chain.from_iterable(p[lo:hi] for p, lo, hi in union))[0]
            lo, hi = 0, len(sequence)
        checks = [c[4] for i, c in enumerate(candidates) if i != best and c[4] is not None]
        return sequence, lo, hi, checks

    def _cut(
        self, sequence: Sequence[int], start: int, low: Any, low_id: str | None, high: Any
    ) -> tuple[int, int]:
        """Return the bounds of the entries of ``sequence`` in the time range."""
        lo, hi = start, len(sequence)
        if low is None and high is None:
            return lo, hi
        ts = self._ts
        if type(sequence) is range:  # the time order, while events arrive in order
            if low is not None:
                lo = bisect_left(ts, low, lo, hi)
            if high is not None:
                hi = bisect_right(ts, high, lo, hi)
        else:
            key = ts.__getitem__
            if low is not None:
                lo = bisect_left(sequence, low, lo, hi, key=key)
            if high is not None:
                hi = bisect_right(sequence, high, lo, hi, key=key)
        if low_id is not None:  # strictly after (low, low_id): skip ties up to that id
            while lo < hi and ts[sequence[lo]] == low and self._id_at(sequence[lo]) <= low_id:
                lo += 1
        return lo, hi

    def _equals(self, field: int, value: Any) -> _Check:
        if self._low_memory:
            column, code = self._columns[field], self._codes[field][value]
            return lambda c: list(compress(c, map(eq, map(column.__getitem__, c), repeat(code))))
        events, getter = self._events, _GETTERS[field]
        return lambda c: list(
            compress(c, map(eq, map(getter, map(events.__getitem__, c)), repeat(value)))
        )

    def _one_of(self, types: frozenset[EventType]) -> _Check:
        if len(types) == 1:
            (only,) = types
            if not self._low_memory or only in self._codes[_TYPE]:
                return self._equals(_TYPE, only)
        if self._low_memory:
            column, codes = self._columns[_TYPE], self._codes[_TYPE]
            wanted = frozenset(codes[t] for t in types if t in codes)
            return lambda c: list(compress(c, map(wanted.__contains__, map(column.__getitem__, c))))
        events, getter = self._events, _GETTERS[_TYPE]
        return lambda c: list(
            compress(c, map(types.__contains__, map(getter, map(events.__getitem__, c))))
        )

    @staticmethod
    def _scan(
        sequence: Sequence[int],
        lo: int,
        hi: int,
        checks: list[_Check],
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

    def _events_at(self, positions: Sequence[int]) -> list[Event]:
        if self._low_memory:
            return self._read(positions)
        if type(positions) is range:
            return self._events[positions.start : positions.stop]
        return list(map(self._events.__getitem__, positions))

    def _values_at(self, field: int, positions: Sequence[int]) -> list[Any]:
        if self._low_memory:
            column = self._columns[field]
            return list(map(self._values[field].__getitem__, map(column.__getitem__, positions)))
        return list(map(_GETTERS[field], map(self._events.__getitem__, positions)))

    # --- token usage --------------------------------------------------------------------

    def usage(
        self,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        model: str | None = None,
        agent_role: str | None = None,
        task_id: str | None = None,
        phase: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> TokenUsage:
        """Return the token and cost totals of the responses matching the filters.

        Filter with an :class:`~eventbus.EventQuery` or keywords (not both).
        ``usage()`` is the grand total; ``usage(session_id="s1")`` one
        session's (the totals of every single session, model, role and task
        are kept up to date); ``usage(start_time=..., end_time=...)`` a time
        range (cost in proportion to the responses in it). See :class:`TokenUsage`.

        :raises IndexArgumentError: if both a query and keywords are given.
        """
        query = _usage_query(
            query,
            session_id=session_id,
            model=model,
            agent_role=agent_role,
            task_id=task_id,
            phase=phase,
            start_time=start_time,
            end_time=end_time,
        )
        self._fold_usage()
        if query is None or query.is_empty:
            return _to_usage(self._usage_total)
        group = _single_group(query)
        if group is not None:
            return _to_usage(self._usage_groups[group[0]].get(group[1]))
        positions = self._usage_rows(query)
        if not positions:
            return _NO_USAGE
        return _to_usage(self._sum_rows(list(map(self._usage_row.__getitem__, positions))))

    def usage_by(
        self,
        field: UsageField,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        model: str | None = None,
        agent_role: str | None = None,
        task_id: str | None = None,
        phase: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> dict[str | None, TokenUsage]:
        """Return the totals of the responses matching the filters, per value of ``field``.

        ``field`` is ``"session_id"``, ``"model"``, ``"agent_role"`` or
        ``"task_id"``; responses without one are under ``None``. Filters as
        for :meth:`usage`: ``usage_by("model", session_id="s1")``.

        :raises IndexArgumentError: if ``field`` is not one of those, or both
            a query and keywords are given.
        """
        if field not in _USAGE_FIELDS:
            raise IndexArgumentError("field", field, f"must be one of {', '.join(_USAGE_FIELDS)}")
        query = _usage_query(
            query,
            session_id=session_id,
            model=model,
            agent_role=agent_role,
            task_id=task_id,
            phase=phase,
            start_time=start_time,
            end_time=end_time,
        )
        self._fold_usage()
        if query is None or query.is_empty:
            return {value: _to_usage(sums) for value, sums in self._usage_groups[field].items()}
        positions = self._usage_rows(query)
        groups: dict[Any, list[int]] = {}
        rows = list(map(self._usage_row.__getitem__, positions))
        for value, row in zip(self._values_at(_FIELD_INDEX[field], positions), rows, strict=True):
            groups.setdefault(value, []).append(row)
        return {value: _to_usage(self._sum_rows(group)) for value, group in groups.items()}

    def _usage_rows(self, query: EventQuery) -> Sequence[int]:
        """Return the positions of the responses matching ``query``."""
        if query.event_type is not None and _RESPONSE not in query.event_type:
            return []
        responses = EventQuery(
            event_type=_RESPONSE,
            session_id=query.session_id,
            phase=query.phase,
            task_id=query.task_id,
            agent_role=query.agent_role,
            model=query.model,
            start_time=query.start_time,
            end_time=query.end_time,
        )
        plan = self._plan(responses, None)
        if plan is None:
            return []
        return self._scan(*plan, None, newest_first=False)

    def _sum_rows(self, rows: list[int]) -> list[int]:
        sums = [len(rows)]
        sums.extend(sum(map(amounts.__getitem__, rows)) for amounts in self._usage_amounts)
        sums.append(sum(map(self._usage_cost.__getitem__, rows)))
        return sums

    def _add_usage(self, events: list[Event], types: list[Any], positions: list[int]) -> None:
        count = types.count(_RESPONSE)
        i = -1
        for _ in range(count):
            i = types.index(_RESPONSE, i + 1)
            amounts = _usage_amounts(events[i].metadata)
            self._usage_row[positions[i]] = len(self._usage_positions)
            self._usage_positions.append(positions[i])
            for column, amount in zip(self._usage_amounts, amounts[:4], strict=True):
                column.append(amount)
            self._usage_cost.append(amounts[4])

    def _row_amounts(self, row: int) -> list[int]:
        return [1, *(amounts[row] for amounts in self._usage_amounts), self._usage_cost[row]]

    def _fold_usage(self) -> None:
        """Add the responses indexed since the last fold to the totals."""
        end = len(self._usage_positions)
        for row in range(self._usage_folded, end):
            self._apply_usage(row, 1)
        self._usage_folded = end

    def _apply_usage(self, row: int, sign: int) -> None:
        amounts = self._row_amounts(row)
        position = self._usage_positions[row]
        total = self._usage_total
        for i, amount in enumerate(amounts):
            total[i] += sign * amount
        for name in _USAGE_FIELDS:
            value = self._values_at(_FIELD_INDEX[name], [position])[0]
            groups = self._usage_groups[name]
            sums = groups.get(value)
            if sums is None:
                sums = groups[value] = [0] * 6
            for i, amount in enumerate(amounts):
                sums[i] += sign * amount
            if sums[0] == 0:
                del groups[value]


def _checked(events: Iterable[Event]) -> list[Event]:
    events = list(events)
    if not all(map(isinstance, events, repeat(Event))):
        bad = next(e for e in events if not isinstance(e, Event))
        raise TypeError(f"EventIndex indexes Event objects, got {type(bad).__name__}: {bad!r:.80}")
    return events


def _check_query(query: EventQuery) -> EventQuery:
    if not isinstance(query, EventQuery):
        raise TypeError(f"query must be an EventQuery, got {type(query).__name__}")
    return query


def _usage_query(query: EventQuery | None, **filters: Any) -> EventQuery | None:
    """The query of :meth:`EventIndex.usage`: ``query``, or one made of keyword filters."""
    given = {name: value for name, value in filters.items() if value is not None}
    if not given:
        return None if query is None else _check_query(query)
    if query is not None:
        raise IndexArgumentError(
            "query", query, f"give an EventQuery or keyword filters ({', '.join(given)}), not both"
        )
    return EventQuery(**given)


def _single_group(query: EventQuery) -> tuple[str, str] | None:
    """Return (field, value) if ``query`` names exactly one session, model, role or task."""
    if query.event_type is not None or query.phase is not None:
        return None
    if query.start_time is not None or query.end_time is not None:
        return None
    named = [(name, getattr(query, name)) for name in _USAGE_FIELDS]
    named = [(name, value) for name, value in named if value is not None]
    return named[0] if len(named) == 1 else None


def _both(first: _Check, second: _Check) -> _Check:
    return lambda candidates: second(first(candidates))


def _index(items: list[bool], wanted: bool, start: int) -> int:
    """Return the index of ``wanted`` in ``items[start:]``, or -1."""
    try:
        return items.index(wanted, start)
    except ValueError:
        return -1
