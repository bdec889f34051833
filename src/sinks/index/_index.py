"""`EventIndex`: adding, eviction, queries and usage (documented in :mod:`sinks.index`)."""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Iterable, MutableSequence, Sequence
from datetime import datetime
from functools import partial
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, Final

from eventbus import Event, EventQuery, EventType

from .._files import UnsafeSymlinkError
from .._layout import LOG_FILE_NAME, resolve_inside
from .._lines import iter_growth, open_log
from .._usage import NO_USAGE, RESPONSE, TokenUsage, usage_of
from ._disk import Locations, LogRows
from ._errors import (
    EventIndexError,
    IndexArgumentError,
    LocationRequiredError,
    StaleLogError,
    UnknownEventIdError,
)
from ._memory import MemoryRows
from ._order import Key, TimeOrder, is_row
from ._postings import (
    FEW,
    FIELDS,
    PAIRS,
    ROW,
    Check,
    Postings,
    both,
    columns_of,
    cut,
    scan,
    time_sorted,
)
from ._usage import USAGE_FIELDS, UsageField, UsageTable, single_group, usage_query

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

logger = logging.getLogger("sinks.index")

# --- the index ----------------------------------------------------------------------------

_FIELDS: Final = FIELDS  # posting lists: the six fields, then (session, type)
_GETTERS: Final = tuple(map(attrgetter, _FIELDS))
_TYPE, _SESSION, _SESSION_TYPE = 0, 1, PAIRS
_FIELD_INDEX: Final = {name: i for i, name in enumerate(_FIELDS)}
_get_timestamp = attrgetter("timestamp")
_EVERYTHING: Final = EventQuery()

_MIN_COMPACTION: Final = 4096  # compact once this many (and half the rows) are dead


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
    :param keep_duplicates: index every event given, even one the index holds
        (same id and timestamp), instead of skipping it. A log can hold a line
        twice; :class:`~sinks.jsonl.EventLog` keeps both, and so does its index.
    """

    def __init__(
        self,
        *,
        max_events: int | None = None,
        low_memory: bool = False,
        max_open_files: int = 32,
        keep_duplicates: bool = False,
    ) -> None:
        if max_events is not None and max_events < 1:
            raise IndexArgumentError("max_events", max_events, "hold at least 1 event, or None")
        if max_open_files < 1:
            raise IndexArgumentError("max_open_files", max_open_files, "must be >= 1")
        self._max_events = max_events
        self._low_memory = low_memory
        self._live = 0
        self._dead = 0  # rows of evicted or duplicate events, until compacted away
        self._evicted = 0
        # Row timestamps and the time order; ordering and de-duplicating batches.
        self._time = TimeOrder(low_memory=low_memory, keep_duplicates=keep_duplicates)
        # Per field (and per (session, type)), value -> positions in time order.
        self._postings = Postings(arrays=True)
        # Rows, by position (arrival order): field codes, id hashes, and in memory mode
        # the events (kept compact), in low-memory mode where each one is in its log.
        self._rows: MemoryRows | LogRows = (
            LogRows(len(_FIELDS), max_open_files) if low_memory else MemoryRows(len(_FIELDS))
        )
        self._usage = UsageTable()  # token usage: a row per response, folded lazily

    # --- properties ---------------------------------------------------------------------

    @property
    def low_memory(self) -> bool:
        """Whether events are read back from their logs instead of held in memory."""
        return self._low_memory

    @property
    def keep_duplicates(self) -> bool:
        """Whether an event the index holds is indexed again rather than skipped."""
        return self._time.keep_duplicates

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
        return self._time.duplicates

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
        self._add(list(iter(events)), None)  # iter: no call of the batch's __len__

    async def aclose(self) -> None:
        """Release open log files (the bus calls this); the index stays queryable."""
        self.close()

    def close(self) -> None:
        """Release open log files; they are reopened if a later query needs them."""
        self._rows.close()

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
        *,
        bulk: bool = False,
    ) -> int:
        """Index ``events`` read from, or just written to, the JSONL log at ``path``.

        ``offsets[i]`` is the byte offset of ``events[i]``'s line and
        ``lengths[i]`` its size including the newline. A writer calls this
        once the lines are written to the file (flushed to the OS, not
        necessarily to disk): a low-memory index reads them back with
        ``os.pread`` when a query returns them. A memory-mode index ignores
        the locations. Returns how many events were new (with ``bulk``: how
        many were given, duplicates being found by :meth:`settle`).

        ``bulk=True`` is for loading many batches: events older than the
        newest held are appended and sorted once, by :meth:`settle`, instead
        of being put in place batch by batch. Call :meth:`settle` after the
        last bulk batch, before any query. With ``max_events``, bulk loading
        settles by itself whenever twice that many events are held.

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
        located: Locations | None = None
        if self._low_memory:
            if min(offsets) < 0 or min(lengths) < 1 or max(lengths) >= 1 << 32:
                raise IndexArgumentError(
                    "lengths", "a line", "offsets must be >= 0 and lengths between 1 and 2**32 - 1"
                )
            located = (self._log_rows.file_id(path), list(offsets), list(lengths))
        return self._add_batch(events, located, bulk=bulk)

    def add_log(
        self,
        path: str | os.PathLike[str],
        start: int = 0,
        *,
        root: str | os.PathLike[str] | None = None,
        bulk: bool = False,
    ) -> int | None:
        """Index the events of the complete lines of the JSONL log at ``path`` from byte ``start``.

        This is how an index is loaded from logs (:meth:`from_workspace`, and
        ``Workspace`` keeping its index current as logs grow): call it again
        with the returned offset to index what the log gained since. An
        incomplete last line is left for the next call (a writer may be
        finishing it); corrupt and blank lines are skipped. ``bulk`` is as for
        :meth:`add_located` (call :meth:`settle` after the last log).

        :param root: the workspace root the log must stay inside: a log
            reached through a symlink leading out of it is not read (``None``
            if it is returned).
        :returns: the offset just after the last complete line read, or
            ``None`` if there is no log at ``path`` (or it is not a regular
            file, or leads out of ``root``).
        """
        path = os.fspath(path)
        fd = open_log(path, None if root is None else os.fspath(root))
        if fd is None:
            return None
        end = start
        try:
            for growth in iter_growth(fd, start):
                if growth.events:  # read here, so placed right: add_located's checks are moot
                    located: Locations | None = None
                    if self._low_memory:
                        located = (self._log_rows.file_id(path), growth.offsets, growth.lengths)
                    self._add_batch(growth.events, located, bulk=bulk)
                end = growth.end
        finally:
            fd.close()
        return end

    def _add_batch(self, events: list[Event], located: Locations | None, *, bulk: bool) -> int:
        """:meth:`_add`, then (in bulk) settle once twice ``max_events`` are held."""
        added = self._add(events, located, bulk=bulk)
        if bulk and self._max_events is not None and self._live >= 2 * self._max_events:
            self._settle()
        return added

    def settle(self) -> None:
        """Put the events of bulk batches in order and evict down to ``max_events``.

        Needed only after :meth:`add_located` or :meth:`add_log` with
        ``bulk=True``; cheap when there is nothing to do.
        """
        self._settle()

    def locate(self, event_id: str) -> tuple[str, int, int]:
        """Where the line of event ``event_id`` is: ``(path, offset, length)``, newline included.

        :raises UnknownEventIdError: if the index holds no event with this id.
        :raises EventIndexError: if the index is not low-memory (only a
            low-memory index keeps where each event is).
        """
        if not self._low_memory:
            raise EventIndexError(
                "locate() needs EventIndex(low_memory=True): an index in memory mode keeps "
                "the events, not where they are in their logs"
            )
        position = self._find(event_id)
        if position is None:
            raise UnknownEventIdError(event_id)
        rows = self._log_rows
        return rows.paths[rows.file[position]], rows.offset[position], rows.length[position]

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
        held while loading. A log reached through a symlink leading out of
        the root (or dangling) is skipped, with a warning on ``sinks.index``.

        :raises FileNotFoundError: if ``workspace_root`` does not exist.
        """
        index = cls(low_memory=low_memory, max_events=max_events)
        root = Path(workspace_root)
        for session in sorted(root.iterdir()):
            path = session / LOG_FILE_NAME
            try:  # nothing is read outside the root: a symlink leading out is skipped
                resolve_inside(os.fspath(root), os.fspath(path))
            except UnsafeSymlinkError as exc:
                logger.warning("skipped %s: %s", path, exc)
                continue
            if path.is_file():
                index.add_log(path, bulk=True)
        index.settle()
        return index

    def _add(self, events: list[Event], located: Locations | None, *, bulk: bool = False) -> int:
        """Index a batch, all or nothing (``bulk``: late events wait for :meth:`_settle`).

        If indexing raises part way (a field value that cannot be indexed, a
        ``MemoryError``), every row, posting entry, usage row and count the
        batch added is taken back before the exception propagates, so the
        index is exactly as before and the same batch can be given again.
        """
        time = self._time
        given = len(events)
        rows = self._rows
        if located is None and 0 < given <= FEW and type(rows) is MemoryRows:
            # The live path (the bus's batches are small): events after every one
            # held, in order, need no checks for late or held ones, nor columns.
            last = time.last
            first = time.append_newest(list(map(_get_timestamp, events)), events[-1].id)
            if first >= 0:
                young = rows.young
                young.extend(events)
                positions = list(range(first, first + given))  # shared by every posting
                usage_rows = -1
                try:
                    self._postings.append_all(events, positions)
                    responses = self._postings.lists[_TYPE].get(RESPONSE)
                    if responses and responses[-1] >= first:  # the batch holds responses
                        usage_rows = len(self._usage.positions)
                        self._usage.add(events, positions)
                except BaseException:
                    undo = (first, None, last, time.sorted, time.duplicates)  # as time.saved()
                    if usage_rows < 0:
                        usage_rows = len(self._usage.positions)
                    self._take_back(undo, self._live, usage_rows)
                    raise
                self._live += given
                if not bulk and (self._max_events is not None or not time.sorted):
                    self._settle()
                if len(young) >= rows.full:
                    rows.settle()
                return given
        duplicates = time.duplicates
        saved = time.saved(), self._live, len(self._usage.positions)
        try:
            event = events[0] if given == 1 and located is None and not self._low_memory else None
            if event is not None and time.is_late(event.timestamp, event.id, self._live):
                self._index_late(event)  # one event, late: inserted in place
            else:
                self._index(events, located, bulk=bulk)
        except BaseException:
            self._take_back(*saved)
            raise
        if not bulk:
            self._settle()  # after the batch is in: may count more duplicates
        if type(rows) is MemoryRows:
            rows.settle()
        return given - (time.duplicates - duplicates)

    def _take_back(self, time: tuple[Any, ...], live: int, usage_rows: int) -> None:
        """Undo what a failed :meth:`_index` added (see :meth:`_add`)."""
        self._time.restore(time)
        rows = len(self._time.ts)
        self._live = live
        self._rows.truncate(rows)
        self._postings.forget(rows)
        self._usage.truncate(usage_rows)

    def _index(self, events: list[Event], located: Locations | None, *, bulk: bool) -> None:
        """Index a batch (the work of :meth:`_add`).

        Events normally arrive in time order: then every posting gets an append,
        and no event can be one the index holds (it would sort before the
        newest). Late events are inserted in place, or, when many, appended and
        sorted; duplicates are found among them.
        """
        time = self._time
        prepared = time.prepare(events, located, bulk=bulk, live=self._live, id_at=self._id_at)
        if prepared is None:
            return
        events, ids, stamps, located, late, insert = prepared
        n, first = len(events), len(time.ts)
        columns: list[list[Any]] | None = None
        coded: tuple[list[list[int]], list[list[Any]]] | None = None
        rows = self._rows
        if type(rows) is MemoryRows:
            columns = columns_of(events) if n > FEW else None  # shared with the postings
            codes = rows.append(events, columns)
            if codes is not None:
                coded = codes, rows.values
        else:
            assert isinstance(rows, LogRows)
            assert located is not None
            assert ids is not None
            columns = columns_of(events)
            rows.extend(located, ids, columns)
        positions = list(range(first, first + n))  # shared by every posting
        time.add(stamps, ids, positions, late, insert, self._id_at)
        # Postings: append what sorts after the newest event, insert the rest in place.
        start = late if insert else 0
        if start == 0:
            self._postings.append_all(events, positions, columns, coded)
        elif start < n:
            self._postings.append_all(events[start:], positions[start:])
        if insert:
            for i in range(late):
                self._postings.insert_one(ROW(events[i]), time.ts, positions[i], self._id_at)
        self._usage.add(events, positions)
        self._live += n

    def _index_late(self, event: Event) -> None:
        """Index one event that sorts before the newest held (memory mode), in place.

        What :meth:`_index` does for such a batch, without the lists a batch needs.
        """
        time = self._time
        if time.holds(event.timestamp, event.id, self._id_at):
            return
        self._memory_rows.append([event])
        position = time.insert_late(event.timestamp, self._id_at)
        row = ROW(event)
        self._postings.insert_one(row, time.ts, position, self._id_at)
        if row[_TYPE] == RESPONSE:
            self._usage.add_one(event.metadata, position)
        self._live += 1

    def _settle(self) -> None:
        """Sort rows added late in bulk, then evict down to ``max_events``."""
        if not self._time.sorted:
            self._resort()
        if self._max_events is not None and self._live > self._max_events:
            self._evict(self._live - self._max_events)

    def _resort(self) -> None:
        """Put every posting back in time order, dropping duplicate rows."""
        rank, repeats = self._time.resort(self._ids_at)
        self._postings.sort(rank, dropped=bool(repeats))
        if repeats:  # forget their rows
            self._live -= len(repeats)
            self._dead += len(repeats)
            if type(self._rows) is MemoryRows:
                self._rows.forget(repeats)
            self._usage.discard(repeats, self._usage_value)

    # --- eviction and compaction --------------------------------------------------------

    def _evict(self, k: int) -> None:
        """Evict the ``k`` oldest events (the front of every posting)."""
        self._usage.fold(self._usage_value)
        victims = self._time.evict(k)
        self._live -= k
        self._evicted += k
        self._dead += k
        columns = [self._values_at(field, victims) for field in range(len(_FIELDS))]
        columns.append(list(zip(columns[_SESSION], columns[_TYPE], strict=True)))
        self._postings.evict(columns)
        for position, event_type in zip(victims, columns[_TYPE], strict=True):
            if event_type == RESPONSE:
                self._usage.subtract(position, self._usage_value)
        if type(self._rows) is MemoryRows:
            self._rows.forget(victims)
        if self._dead >= _MIN_COMPACTION and self._dead >= self._live:
            self._compact()

    def _compact(self) -> None:
        """Drop dead rows and renumber positions (amortised over the evictions)."""
        self._usage.fold(self._usage_value)
        live, new_position = self._time.compact()

        def renumber(positions: Iterable[int]) -> MutableSequence[int]:
            return array("q", map(new_position, positions))

        self._rows.keep(live)
        self._postings.renumber(renumber)
        self._usage.renumber(partial(is_row, live=live), new_position)
        self._dead = 0

    # --- ids ----------------------------------------------------------------------------

    def _find(self, event_id: str) -> int | None:
        """Return the position of the live event with ``event_id``, or ``None``."""
        return self._rows.find(event_id, self._time.is_live)

    def _id_at(self, position: int) -> str:
        return self._rows.id_at(position)

    def _ids_at(self, positions: Sequence[int]) -> list[str]:
        return self._rows.ids_at(positions)

    @property
    def _log_rows(self) -> LogRows:
        """The rows of a low-memory index (places in logs)."""
        rows = self._rows
        assert type(rows) is LogRows
        return rows

    @property
    def _memory_rows(self) -> MemoryRows:
        """The rows of a memory-mode index (the events)."""
        rows = self._rows
        assert type(rows) is MemoryRows
        return rows

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
        return len(scan(sequence, lo, hi, checks, None, newest_first=False))

    def event_types(self) -> list[str]:
        """Return the types of the events held, each once, sorted (from the postings)."""
        postings = self._postings
        return sorted(
            str(kind)
            for kind, posting in list(postings.lists[_TYPE].items())
            if len(posting) > postings.starts[_TYPE].get(kind, 0)
        )

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
        return self._events_at(scan(sequence, lo, hi, checks, n, newest_first=True))

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
        return self._events_at(scan(sequence, lo, hi, checks, limit, newest_first=False))

    def query_in_log_order(self, query: EventQuery) -> list[Event]:
        """Return the events matching ``query`` in the order of their lines in their logs.

        That is by log (in the order the index first saw each), then by byte
        offset: for the events of one log, the order they were appended in.
        Costs in proportion to the result (found like :meth:`query`, then
        sorted by place). Only a low-memory index knows where its events are.

        :raises EventIndexError: if the index is not ``low_memory``.
        """
        if not self._low_memory:
            raise EventIndexError(
                "query_in_log_order needs EventIndex(low_memory=True): only a low-memory "
                "index knows where its events are in their logs; use query() for time order"
            )
        plan = self._plan(_check_query(query), None)
        if plan is None:
            return []
        positions = scan(*plan, None, newest_first=False)
        rows = self._log_rows
        return rows.read(rows.in_log_order(positions))

    def _cursor(self, after: str | Event) -> Key:
        if isinstance(after, Event):
            return self._time.stamp(after.timestamp), after.id
        if not isinstance(after, str):
            raise TypeError(
                f"after must be an event id, an Event or None, got {type(after).__name__}"
            )
        position = self._find(after)
        if position is None:
            raise UnknownEventIdError(after)
        return self._time.ts[position], after

    def _plan(
        self, query: EventQuery, after: str | Event | None
    ) -> tuple[Sequence[int], int, int, list[Check]] | None:
        """Choose the smallest candidate list for ``query``: (list, lo, hi, other checks).

        The candidates are the postings of the query's values (for a session
        and types, the (session, type) postings) and, with a time range, the
        time order; each is cut to the time range (and past ``after``) by
        bisection, and the conditions of the others become checks on the
        chosen one. ``None``: no event can match.
        """
        time = self._time
        low: Any = None if query.start_time is None else time.stamp(query.start_time)
        low_id: str | None = None
        if after is not None:
            cursor = self._cursor(after)
            if low is None or cursor[0] >= low:
                low, low_id = cursor
        high: Any = None if query.end_time is None else time.stamp(query.end_time)
        bounds = (low, low_id, high)
        types, session = query.event_type, query.session_id
        # (size, list (None: a union of postings), lo, hi, check)
        candidates: list[tuple[int, Sequence[int] | None, int, int, Check | None]] = []
        for field in range(1, len(_FIELDS)):
            value = getattr(query, _FIELDS[field])
            if value is None or (field == _SESSION and types is not None):
                continue
            found = self._postings.get(field, value)
            if found is None:
                return None
            lo, hi = cut(found[0], found[1], time.ts, bounds, self._id_at)
            if lo >= hi:
                return None
            candidates.append((hi - lo, found[0], lo, hi, self._equals(field, value)))
        union: list[tuple[Sequence[int], int, int]] = []
        if types is not None:
            field = _TYPE if session is None else _SESSION_TYPE
            for event_type in types:
                value = event_type if session is None else (session, event_type)
                found = self._postings.get(field, value)
                if found is not None:
                    lo, hi = cut(found[0], found[1], time.ts, bounds, self._id_at)
                    if lo < hi:
                        union.append((found[0], lo, hi))
            if not union:
                return None
            check = self._one_of(types)
            if session is not None:
                check = both(check, self._equals(_SESSION, session))
            if len(union) == 1:
                only, lo, hi = union[0]
                candidates.append((hi - lo, only, lo, hi, check))
            else:
                candidates.append((sum(hi - lo for _, lo, hi in union), None, 0, 0, check))
        if not candidates or low is not None or high is not None:
            lo, hi = cut(time.order, time.start, time.ts, bounds, self._id_at)
            if lo >= hi:
                return None
            candidates.append((hi - lo, time.order, lo, hi, None))
        best = min(range(len(candidates)), key=lambda i: candidates[i][0])
        _, sequence, lo, hi, _check = candidates[best]
        if sequence is None:
            sequence = time_sorted(
                chain.from_iterable(p[lo:hi] for p, lo, hi in union), time.ts, self._ids_at
            )[0]
            lo, hi = 0, len(sequence)
        checks = [c[4] for i, c in enumerate(candidates) if i != best and c[4] is not None]
        return sequence, lo, hi, checks

    def _equals(self, field: int, value: Any) -> Check:
        return self._rows.equals(field, value)

    def _one_of(self, types: frozenset[EventType]) -> Check:
        if len(types) == 1:
            (only,) = types
            if self._rows.holds(_TYPE, only):
                return self._rows.equals(_TYPE, only)
        return self._rows.one_of(_TYPE, types)

    def _events_at(self, positions: Sequence[int]) -> list[Event]:
        rows = self._rows
        if type(rows) is MemoryRows:
            return rows.events_at(positions, self._time.ts)
        assert isinstance(rows, LogRows)
        return rows.read(positions)

    def _values_at(self, field: int, positions: Sequence[int]) -> list[Any]:
        return self._rows.values_at(field, positions)

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
        query = usage_query(
            query,
            session_id=session_id,
            model=model,
            agent_role=agent_role,
            task_id=task_id,
            phase=phase,
            start_time=start_time,
            end_time=end_time,
        )
        self._usage.fold(self._usage_value)
        if query is None or _check_query(query).is_empty:
            return usage_of(self._usage.total)
        group = single_group(query)
        if group is not None:
            return usage_of(self._usage.groups[group[0]].get(group[1]))
        positions = self._usage_rows(query)
        if not positions:
            return NO_USAGE
        return usage_of(self._usage.sum_positions(positions))

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
        if field not in USAGE_FIELDS:
            raise IndexArgumentError("field", field, f"must be one of {', '.join(USAGE_FIELDS)}")
        query = usage_query(
            query,
            session_id=session_id,
            model=model,
            agent_role=agent_role,
            task_id=task_id,
            phase=phase,
            start_time=start_time,
            end_time=end_time,
        )
        self._usage.fold(self._usage_value)
        if query is None or _check_query(query).is_empty:
            return {value: usage_of(sums) for value, sums in self._usage.groups[field].items()}
        positions = self._usage_rows(query)
        groups: dict[Any, list[int]] = {}
        for value, position in zip(
            self._values_at(_FIELD_INDEX[field], positions), positions, strict=True
        ):
            groups.setdefault(value, []).append(position)
        return {
            value: usage_of(self._usage.sum_positions(group)) for value, group in groups.items()
        }

    def _usage_rows(self, query: EventQuery) -> Sequence[int]:
        """Return the positions of the responses matching ``query``."""
        if query.event_type is not None and RESPONSE not in query.event_type:
            return []
        responses = EventQuery(
            event_type=RESPONSE,
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
        return scan(*plan, None, newest_first=False)

    def _usage_value(self, field: str, position: int) -> Any:
        return self._rows.value_at(_FIELD_INDEX[field], position)


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
