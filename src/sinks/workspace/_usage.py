"""Token usage rows for ``Workspace.usage``: grouping responses, the API's shape."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from eventbus import Event

from .._usage import Sums, TokenUsage

__all__: list[str] = []


def usage_values(usage: TokenUsage) -> dict[str, Any]:
    return {
        "calls": usage.responses,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": usage.cost_usd,
    }


def none_last(key: str | None) -> tuple[bool, str]:
    return (key is None, key or "")


def usage_by(responses: list[Event], field: str) -> dict[str | None, TokenUsage]:
    """Sum responses per value of ``field`` by the rules of :mod:`sinks._usage`."""
    sums: dict[str | None, Sums] = {}
    get = attrgetter(field)
    for event in responses:
        value = get(event)
        group = sums.get(value)
        if group is None:
            group = sums[value] = Sums()
        group.add(event.metadata)
    return {value: group.usage() for value, group in sums.items()}


def total_of(responses: list[Event]) -> TokenUsage:
    """The sums of all ``responses`` by the rules of :mod:`sinks._usage`."""
    total = Sums()
    for event in responses:
        total.add(event.metadata)
    return total.usage()
