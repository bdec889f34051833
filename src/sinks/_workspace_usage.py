"""Token usage rows for ``Workspace.usage``: grouping responses, the API's shape."""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Final

from eventbus import Event

from ._index_usage import _picodollars, _tokens
from .memory import TokenUsage

__all__: list[str] = []

_PICO: Final = 10**12


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
    """Sum responses per value of ``field`` by :class:`TokenUsage`'s rules."""
    sums: dict[str | None, list[int]] = {}
    get = attrgetter(field)
    for event in responses:
        metadata = event.metadata
        prompt = _tokens(metadata.get("prompt_tokens")) or 0
        completion = _tokens(metadata.get("completion_tokens")) or 0
        total = _tokens(metadata.get("total_tokens"))
        row = sums.setdefault(get(event), [0, 0, 0, 0, 0, 0])
        row[0] += 1
        row[1] += prompt
        row[2] += completion
        row[3] += prompt + completion if total is None else total
        row[4] += _tokens(metadata.get("cached_tokens")) or 0
        row[5] += _picodollars(metadata.get("cost_usd"))
    return {
        value: TokenUsage(
            responses=row[0],
            prompt_tokens=row[1],
            completion_tokens=row[2],
            total_tokens=row[3],
            cached_tokens=row[4],
            cost_usd=row[5] / _PICO,
        )
        for value, row in sums.items()
    }


def total_of(groups: dict[str | None, TokenUsage]) -> TokenUsage:
    usages = list(groups.values())
    return TokenUsage(
        responses=sum(u.responses for u in usages),
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
        cached_tokens=sum(u.cached_tokens for u in usages),
        cost_usd=sum(round(u.cost_usd * _PICO) for u in usages) / _PICO,
    )
