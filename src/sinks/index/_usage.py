"""Token usage of an :class:`~sinks.memory.EventIndex`: :class:`TokenUsage` and its table.

The index keeps one row per LLM response (its position in the index and its
amounts) in a :class:`UsageTable`, folded lazily into running totals: a grand
total and one per session, model, agent role and task. Rows leave the totals
when their events are evicted or found to be duplicates. Costs are summed
exactly, in units of 1e-12 USD. :func:`usage_query` and :func:`single_group`
read the filters of ``usage()``. The public names are re-exported by
:mod:`sinks.memory`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import attrgetter, mul
from typing import Any, Final, Literal, TypeAlias

import msgspec

from eventbus import Event, EventQuery, EventType

from ._errors import IndexArgumentError

__all__ = ["TokenUsage", "UsageField"]

UsageField: TypeAlias = Literal["session_id", "model", "agent_role", "task_id"]
"""The fields :meth:`EventIndex.usage_by` groups by."""


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
_FEW: Final = 32  # up to this many events, the responses' amounts are read one by one
_get_type = attrgetter("event_type")
NO_USAGE: Final = TokenUsage()


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


def _column(metadata: list[dict[str, Any]], key: str) -> list[Any]:
    """The valid token counts of ``key`` (0 if absent or invalid; ``total_tokens``: None)."""
    values: list[Any] = list(map(dict.get, metadata, repeat(key)))
    if values.count(None) == len(values):  # absent from every response
        return values if key == "total_tokens" else [0] * len(values)
    if set(map(type, values)) == {int} and min(values) >= 0 and max(values) < _MAX_TOKENS:
        return values  # all valid: the usual case, checked in C
    valid = list(map(_tokens, values))
    if key == "total_tokens":
        return valid
    return [0 if value is None else value for value in valid]


def to_usage(sums: list[int] | None) -> TokenUsage:
    if sums is None:
        return NO_USAGE
    return TokenUsage(
        responses=sums[0],
        prompt_tokens=sums[1],
        completion_tokens=sums[2],
        total_tokens=sums[3],
        cached_tokens=sums[4],
        cost_usd=sums[5] / _PICO,
    )


USAGE_FIELDS: Final = ("session_id", "model", "agent_role", "task_id")
RESPONSE: Final = EventType.LLM_RESPONSE_RECEIVED

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
        # (a function call per response cost ~1.5 us; see _column).
        prompt, completion, total, cached = (
            _column(metadata, key)
            for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
        )
        if None in total:  # a response without a valid total: prompt + completion
            total = [
                p + c if t is None else t for p, c, t in zip(prompt, completion, total, strict=True)
            ]
        costs: list[Any] = list(map(dict.get, metadata, repeat("cost_usd")))
        if set(map(type, costs)) == {float} and all(map(math.isfinite, costs)) and min(costs) >= 0:
            picos: list[int] = list(map(round, map(mul, costs, repeat(float(_PICO)))))
        else:
            picos = list(map(_picodollars, costs))
        added = [positions[i] for i in responses]
        start = len(self.positions)
        self.row.update(zip(added, range(start, start + count), strict=True))
        self.positions.extend(added)
        for column, amounts in zip(self.amounts, (prompt, completion, total, cached), strict=True):
            column.extend(amounts)
        self.cost.extend(picos)

    def add_one(self, metadata: dict[str, Any], position: int) -> None:
        """Add the row of one response (its ``metadata``), as :meth:`add` would."""
        get = metadata.get
        prompt = _tokens(get("prompt_tokens")) or 0
        completion = _tokens(get("completion_tokens")) or 0
        total = _tokens(get("total_tokens"))
        if total is None:
            total = prompt + completion
        cached = _tokens(get("cached_tokens")) or 0
        self.row[position] = len(self.positions)
        self.positions.append(position)
        for column, amount in zip(self.amounts, (prompt, completion, total, cached), strict=True):
            column.append(amount)
        self.cost.append(_picodollars(get("cost_usd")))

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
