"""Token usage rows for ``Workspace.usage``: grouping responses, pricing, the API's shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from eventbus import Event, as_utc

from .._usage import PICO, given_cost, response_amounts
from ._prices import PRICE_SOURCE, price_table

__all__: list[str] = []

PRODUCER = "producer"
MIXED = "mixed"


class Group:
    """One row's running totals, and the tokens of its responses that have no cost."""

    __slots__ = ("computed", "given", "sums", "unpriced")

    def __init__(self) -> None:
        self.sums = [0, 0, 0, 0, 0, 0]  # responses, prompt, completion, total, cached, pico
        self.given = 0  # responses whose producer gave a cost
        self.computed = 0  # responses priced from the table
        # (model, UTC date) -> [responses, prompt, completion, cached, latest timestamp]
        self.unpriced: dict[tuple[str, str], list[Any]] = {}

    def add(self, event: Event, day: str | None = None) -> None:
        """Count one response; ``day``: its UTC date when the caller has it already."""
        metadata = event.metadata
        prompt, completion, total, cached, _ = response_amounts(metadata)
        sums = self.sums
        sums[0] += 1
        sums[1] += prompt
        sums[2] += completion
        sums[3] += total
        sums[4] += cached
        cost = given_cost(metadata.get("cost_usd"))
        if cost is not None:
            sums[5] += cost
            self.given += 1
        elif event.model:
            slot = (event.model, day or day_of(event))
            tokens = self.unpriced.get(slot)
            if tokens is None:
                tokens = self.unpriced[slot] = [0, 0, 0, 0, as_utc(event.timestamp)]
            tokens[0] += 1
            tokens[1] += prompt
            tokens[2] += completion
            tokens[3] += cached
            tokens[4] = max(tokens[4], as_utc(event.timestamp))

    def add_cell(self, model: str | None, day: str, cell: list[Any]) -> None:
        """Count a :class:`~._tally.UsageTally` cell: responses of one model and UTC ``day``."""
        sums = self.sums
        for i in range(6):
            sums[i] += cell[i]
        self.given += cell[6]
        if cell[7] and model:
            slot = (model, day)
            tokens = self.unpriced.get(slot)
            if tokens is None:
                self.unpriced[slot] = cell[7:12]
            else:
                tokens[0] += cell[7]
                tokens[1] += cell[8]
                tokens[2] += cell[9]
                tokens[3] += cell[10]
                tokens[4] = max(tokens[4], cell[11])

    def price(self) -> None:
        """Add the table's price of the responses without a cost (if the table knows them)."""
        if not self.unpriced:
            return
        table = price_table()
        if table is None:
            return
        for (model, _), (count, prompt, completion, cached, when) in self.unpriced.items():
            cost = table.picodollars(model, prompt, completion, cached, when)
            if cost is not None:
                self.sums[5] += cost
                self.computed += count

    def source(self) -> str | None:
        if self.given and self.computed:
            return MIXED
        if self.given:
            return PRODUCER
        if self.computed:
            return PRICE_SOURCE
        return None

    def values(self) -> dict[str, Any]:
        sums = self.sums
        return {
            "calls": sums[0],
            "prompt_tokens": sums[1],
            "cached_tokens": sums[4],
            "completion_tokens": sums[2],
            "total_tokens": sums[3],
            "cost_usd": sums[5] / PICO,
            "cost_source": self.source(),
        }


def day_of(event: Event) -> str:
    """The UTC date of ``event``'s timestamp, ``YYYY-MM-DD``."""
    moment: datetime = event.timestamp
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.date().isoformat()


def none_last(key: str | None) -> tuple[bool, str]:
    return (key is None, key or "")


def usage_table(responses: Sequence[Event], by: str) -> dict[str, Any]:
    """The answer of ``Workspace.usage``: a row per value of ``by`` (or UTC date), the total.

    Amounts follow :mod:`sinks._usage`; a response without a cost the producer
    gave is priced from the table (:mod:`._prices`) when it knows the model.
    The total is the sum of the rows, ``cost_source`` included.
    """
    key_of: Callable[[Event], Any] = day_of if by == "day" else attrgetter(by)
    groups: dict[str | None, Group] = {}
    by_day = by == "day"
    for event in responses:
        key = key_of(event)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group()
        group.add(event, key if by_day else None)
    return groups_table(groups, by)


def groups_table(groups: dict[str | None, Group], by: str) -> dict[str, Any]:
    """The answer of ``Workspace.usage`` from its groups: priced, sorted, with the total."""
    total = Group()
    for group in groups.values():
        group.price()
        for i, amount in enumerate(group.sums):
            total.sums[i] += amount
        total.given += group.given
        total.computed += group.computed
    rows = [{"key": key, **group.values()} for key, group in groups.items()]
    if by == "day":
        rows.sort(key=lambda row: row["key"])
    else:
        rows.sort(key=lambda row: (-row["cost_usd"], -row["total_tokens"], none_last(row["key"])))
    return {"by": by, "rows": rows, "total": total.values()}
