"""The one rule set for token and cost usage: what a response's amounts count for.

Every place that sums LLM usage reads a response's ``metadata`` by these rules:
the index (:meth:`EventIndex.usage <sinks.index.EventIndex.usage>`), the run
summary (:class:`~sinks.artifacts.RunSummary`) and the workspace
(``Workspace.usage`` and ``Workspace.sessions``). So they agree for any
response, however its amounts are spelled.

- Only ``llm_response_received`` events count: a request's ``prompt_tokens``
  is repeated by its response, so counting both would count it twice.
- A token count (``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
  ``cached_tokens``) counts if it is an ``int`` (not a ``bool``) with
  ``0 <= count < 2**63``; anything else (absent, negative, huge, a float, a
  string) counts as zero.
- ``total_tokens`` is the response's own count, or ``prompt_tokens +
  completion_tokens`` (as counted above) when it has none that counts.
- ``cost_usd`` counts if it is an ``int`` or a finite ``float`` (not a
  ``bool``), at least zero, and less than ``2**63`` picodollars (about
  9.2 million USD); anything else counts as zero. Costs are summed exactly,
  in units of 1e-12 USD, so totals do not depend on the order of the
  responses; a total's ``cost_usd`` is its picodollars divided by ``10**12``.
- A ``cost_usd`` that counts is the producer's and always wins. Only the
  workspace's usage (``sinks.workspace``) prices the other responses from a
  price table (the optional ``genai-prices`` package), and says where each
  total's cost came from in ``cost_source``: ``"producer"``, ``"genai-prices"``,
  ``"mixed"`` or ``None`` (no cost known).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import mul
from typing import Any, Final, cast

import msgspec

from eventbus import EventType

__all__ = ["TokenUsage"]

RESPONSE: Final = EventType.LLM_RESPONSE_RECEIVED
"""The event type whose metadata counts."""

PICO: Final = 10**12
"""Picodollars per USD: costs are summed as integers in this unit."""

LIMIT: Final = 1 << 63
"""Amounts (tokens, picodollars) count below this; at or above it they count as zero."""

TOKEN_KEYS: Final = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
"""The token counts of a response's metadata, in the order of :data:`Amounts`."""

_PICO_FLOAT: Final = float(PICO)


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token and cost totals of LLM responses (``llm_response_received`` events).

    What each response counts for is the rule set of this module: a token count
    that is not an ``int`` with ``0 <= count < 2**63`` counts as zero;
    ``total_tokens`` is the response's own count, or ``prompt_tokens +
    completion_tokens`` when it has none that counts; a ``cost_usd`` that is not
    a finite number from 0 to about 9.2 million counts as zero. Costs are summed
    exactly (in units of 1e-12 USD), so totals do not depend on arrival order.
    """

    responses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0


NO_USAGE: Final = TokenUsage()


def tokens(value: object) -> int | None:
    """The token count ``value`` stands for; ``None`` if it does not count."""
    if type(value) is int and 0 <= value < LIMIT:
        return value
    return None


def picodollars(value: object) -> int:
    """The cost ``value`` (in USD) stands for, in picodollars (0 if it does not count)."""
    return given_cost(value) or 0


def given_cost(value: object) -> int | None:
    """The cost ``value`` (in USD) stands for, in picodollars; ``None`` if it does not count.

    A response whose ``cost_usd`` counts has a cost *the producer gave* (it
    may be 0); only the others can be priced from a price table.
    """
    if type(value) is float:
        scaled = value * _PICO_FLOAT
        if 0 <= scaled < LIMIT:  # False for NaN and infinities
            return round(scaled)
    elif type(value) is int and value >= 0 and value * PICO < LIMIT:
        return value * PICO
    return None


def response_amounts(metadata: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """``(prompt, completion, total, cached, picodollars)`` of one response's metadata."""
    get = metadata.get
    prompt = tokens(get("prompt_tokens")) or 0
    completion = tokens(get("completion_tokens")) or 0
    total = tokens(get("total_tokens"))
    if total is None:
        total = prompt + completion
    return (
        prompt,
        completion,
        total,
        tokens(get("cached_tokens")) or 0,
        picodollars(get("cost_usd")),
    )


def token_column(metadata: Sequence[dict[str, Any]], key: str) -> list[Any]:
    """The counts of ``key`` over many responses, by :func:`tokens` (0 when it does not count).

    For ``total_tokens`` an entry that does not count is ``None`` (the caller
    puts prompt + completion there). Checked for the whole column at once: the
    usual column (every value a valid ``int``) costs no call per response.
    """
    values: list[Any] = list(map(dict.get, metadata, repeat(key)))
    if values.count(None) == len(values):  # absent from every response
        return values if key == "total_tokens" else [0] * len(values)
    if set(map(type, values)) == {int} and min(values) >= 0 and max(values) < LIMIT:
        return values
    valid = list(map(tokens, values))
    if key == "total_tokens":
        return valid
    return [0 if value is None else value for value in valid]


def picodollar_column(metadata: Sequence[dict[str, Any]]) -> list[int]:
    """The costs of many responses in picodollars, by :func:`picodollars`."""
    costs = given_cost_column(metadata)
    if None in costs:
        return [cost or 0 for cost in costs]
    return cast("list[int]", costs)


def given_cost_column(metadata: Sequence[dict[str, Any]]) -> list[int | None]:
    """The given costs of many responses in picodollars, by :func:`given_cost`.

    Checked for the whole column at once when every cost is a ``float``.
    """
    costs: list[Any] = list(map(dict.get, metadata, repeat("cost_usd")))
    if costs and set(map(type, costs)) == {float}:
        scaled = list(map(mul, costs, repeat(_PICO_FLOAT)))
        if all(map(math.isfinite, scaled)) and min(scaled) >= 0 and max(scaled) < LIMIT:
            return list(map(round, scaled))
    return list(map(given_cost, costs))


class Sums:
    """Running totals of responses: count, the four token counts, picodollars."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[int] = (0, 0, 0, 0, 0, 0)) -> None:
        self.values = list(values)

    def add(self, metadata: Mapping[str, Any]) -> None:
        """Count one response (its ``metadata``)."""
        values = self.values
        values[0] += 1
        for i, amount in enumerate(response_amounts(metadata), 1):
            values[i] += amount

    def merge(self, other: Sums) -> None:
        """Add ``other``'s totals to these."""
        for i, amount in enumerate(other.values):
            self.values[i] += amount

    def usage(self) -> TokenUsage:
        """These totals as a :class:`TokenUsage`."""
        return usage_of(self.values)


def usage_of(sums: Sequence[int] | None) -> TokenUsage:
    """A :class:`TokenUsage` of ``[responses, prompt, completion, total, cached, picodollars]``."""
    if sums is None:
        return NO_USAGE
    return TokenUsage(
        responses=sums[0],
        prompt_tokens=sums[1],
        completion_tokens=sums[2],
        total_tokens=sums[3],
        cached_tokens=sums[4],
        cost_usd=sums[5] / PICO,
    )
