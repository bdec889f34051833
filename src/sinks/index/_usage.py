"""Token usage of an :class:`~sinks.index.EventIndex`: its table of responses and totals.

What each response counts for is the rule set of :mod:`sinks._usage`. The
index keeps one row per LLM response (its position in the index and its
amounts) in a :class:`UsageTable`, folded lazily into running totals: a grand
total and one per session, model, agent role and task. Rows leave the totals
when their events are evicted or found to be duplicates. :func:`usage_query`
and :func:`single_group` read the filters of ``usage()``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any, Final, Literal, TypeAlias

from eventbus import Event, EventQuery

from .._usage import (
    RESPONSE,
    TOKEN_KEYS,
    TokenUsage,
    picodollar_column,
    response_amounts,
    token_column,
)
from ._errors import IndexArgumentError

__all__ = ["TokenUsage", "UsageField"]

_FEW: Final = 32  # up to this many events, the responses' amounts are read one by one
_get_type = attrgetter("event_type")

UsageField: TypeAlias = Literal["session_id", "model", "agent_role", "task_id"]
"""The fields :meth:`EventIndex.usage_by` groups by."""


USAGE_FIELDS: Final = ("session_id", "model", "agent_role", "task_id")

ValueOf: TypeAlias = Callable[[str, int], Any]
"""``value_of(field, position)``: the value of a usage field of the event at ``position``."""


class UsageTable:
    """One row per indexed response (its position and amounts), and the totals.

    Rows are added in increasing position order; ``folded`` rows are in the
    totals, the rest are added by :meth:`fold`, which every read of the
    totals calls first. The per-field totals need each response's session,
    model, role and task: the index passes ``value_of`` to look them up.
    """

    def __init__(self) -> None:
        self.positions: array[int] = array("q")
        self.row: dict[int, int] = {}  # position -> row
        self.amounts: list[array[int]] = [array("q") for _ in range(4)]
        self.cost: list[int] = []
        self.folded = 0
        self.total: list[int] = [0] * 6
        self.groups: dict[str, dict[Any, list[int]]] = {name: {} for name in USAGE_FIELDS}

    def add(self, events: Sequence[Event], positions: Sequence[int]) -> None:
        """Add a row per response among ``events`` (at ``positions``)."""
        if len(events) <= _FEW:
            for event, position in zip(events, positions, strict=True):
                if event.event_type == RESPONSE:
                    self.add_one(event.metadata, position)
            return
        types = list(map(_get_type, events))
        count = types.count(RESPONSE)
        if not count:
            return
        responses: list[int] = []
        i = -1
        for _ in range(count):
            i = types.index(RESPONSE, i + 1)
            responses.append(i)
        metadata = [events[i].metadata for i in responses]
        # A column per amount, each read and checked for the whole batch at once
        # (a function call per response costs more than the whole column check).
        prompt, completion, total, cached = (token_column(metadata, key) for key in TOKEN_KEYS)
        if None in total:  # a response without a valid total: prompt + completion
            total = [
                p + c if t is None else t for p, c, t in zip(prompt, completion, total, strict=True)
            ]
        picos = picodollar_column(metadata)
        added = [positions[i] for i in responses]
        start = len(self.positions)
        self.row.update(zip(added, range(start, start + count), strict=True))
        self.positions.extend(added)
        for column, amounts in zip(self.amounts, (prompt, completion, total, cached), strict=True):
            column.extend(amounts)
        self.cost.extend(picos)

    def add_one(self, metadata: dict[str, Any], position: int) -> None:
        """Add the row of one response (its ``metadata``), as :meth:`add` would."""
        prompt, completion, total, cached, picos = response_amounts(metadata)
        self.row[position] = len(self.positions)
        self.positions.append(position)
        for column, amount in zip(self.amounts, (prompt, completion, total, cached), strict=True):
            column.append(amount)
        self.cost.append(picos)

    def truncate(self, rows: int) -> None:
        """Forget the rows from ``rows`` on (never folded: added by a batch that failed)."""
        for position in self.positions[rows:]:
            self.row.pop(position, None)
        del self.positions[rows:]
        for column in self.amounts:
            del column[rows:]
        del self.cost[rows:]

    def fold(self, value_of: ValueOf) -> None:
        """Add the rows added since the last fold to the totals."""
        end = len(self.positions)
        for row in range(self.folded, end):
            self._apply(row, 1, value_of)
        self.folded = end

    def sum_positions(self, positions: Iterable[int]) -> list[int]:
        """Return the sums (count, tokens..., cost) of the rows of these responses."""
        rows = list(map(self.row.__getitem__, positions))
        sums = [len(rows)]
        sums.extend(sum(map(amounts.__getitem__, rows)) for amounts in self.amounts)
        sums.append(sum(map(self.cost.__getitem__, rows)))
        return sums

    def subtract(self, position: int, value_of: ValueOf) -> None:
        """Take the (folded) response at ``position`` out of the totals (it was evicted)."""
        self._apply(self.row[position], -1, value_of)

    def discard(self, positions: Iterable[int], value_of: ValueOf) -> None:
        """Forget the rows of these positions (duplicates), out of the totals if folded."""
        rows = {self.row[p] for p in positions if p in self.row}
        for row in rows:
            if row < self.folded:
                self._apply(row, -1, value_of)
        self._remove_rows(rows)

    def renumber(self, is_live: Callable[[int], bool], new_position: Callable[[int], int]) -> None:
        """After a compaction: drop the rows of dead positions and renumber the rest.

        The rows of dead positions must be out of the totals already (fold first).
        """
        self._remove_rows({r for r, p in enumerate(self.positions) if not is_live(p)})
        self.positions = array("q", map(new_position, self.positions))
        self.row = dict(zip(self.positions, range(len(self.positions)), strict=True))

    def _remove_rows(self, rows: set[int]) -> None:
        """Delete rows (already subtracted from the totals, or never folded)."""
        if not rows:
            return
        keep = [row for row in range(len(self.positions)) if row not in rows]
        folded = sum(1 for row in keep if row < self.folded)
        self.positions = array("q", map(self.positions.__getitem__, keep))
        self.amounts = [array("q", map(a.__getitem__, keep)) for a in self.amounts]
        self.cost = list(map(self.cost.__getitem__, keep))
        self.folded = folded
        self.row = dict(zip(self.positions, range(len(keep)), strict=True))

    def _apply(self, row: int, sign: int, value_of: ValueOf) -> None:
        amounts = [1, *(amounts[row] for amounts in self.amounts), self.cost[row]]
        position = self.positions[row]
        total = self.total
        for i, amount in enumerate(amounts):
            total[i] += sign * amount
        for name in USAGE_FIELDS:
            value = value_of(name, position)
            groups = self.groups[name]
            sums = groups.get(value)
            if sums is None:
                sums = groups[value] = [0] * 6
            for i, amount in enumerate(amounts):
                sums[i] += sign * amount
            if sums[0] == 0:
                del groups[value]


def usage_query(query: EventQuery | None, **filters: Any) -> EventQuery | None:
    """The query of :meth:`EventIndex.usage`: ``query`` (as given), or one made of keyword filters.

    :raises IndexArgumentError: if both are given.
    """
    given = {name: value for name, value in filters.items() if value is not None}
    if not given:
        return query
    if query is not None:
        raise IndexArgumentError(
            "query", query, f"give an EventQuery or keyword filters ({', '.join(given)}), not both"
        )
    return EventQuery(**given)


def single_group(query: EventQuery) -> tuple[str, str] | None:
    """Return (field, value) if ``query`` names exactly one session, model, role or task."""
    if query.event_type is not None or query.phase is not None:
        return None
    if query.start_time is not None or query.end_time is not None:
        return None
    named = [(name, getattr(query, name)) for name in USAGE_FIELDS]
    named = [(name, value) for name, value in named if value is not None]
    return named[0] if len(named) == 1 else None
