"""Events for tests: the one place test modules make them.

``event(i)`` is the ``i``-th event of a session (``INFO``, message ``str(i)``, no
parent); every field can be given. ``seconds=`` stamps it that long after
:data:`T0`, so tests that care about time order say so; otherwise it is stamped
now, like any event. ``events(n)`` makes the first ``n``; ``response(...)`` an
``llm_response_received`` with usage metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from eventbus import Event, EventType

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
"""The time ``seconds=`` counts from."""


def at(seconds: float) -> datetime:
    """The moment ``seconds`` after :data:`T0`."""
    return T0 + timedelta(seconds=seconds)


def event(
    i: int = 0,
    session_id: str = "s1",
    event_type: EventType | str = EventType.INFO,
    *,
    seconds: float | None = None,
    **fields: Any,
) -> Event:
    """The ``i``-th event of ``session_id``; ``fields`` set any other field of :class:`Event`."""
    values: dict[str, Any] = {"message": str(i), "parent_id": None}
    if seconds is not None:
        values["timestamp"] = at(seconds)
    values.update(fields)
    return Event(event_type=EventType(event_type), session_id=session_id, **values)


def events(count: int, session_id: str = "s1", **fields: Any) -> list[Event]:
    """The first ``count`` events of ``session_id`` (see :func:`event`)."""
    return [event(i, session_id, **fields) for i in range(count)]


def response(
    i: int = 0,
    session_id: str = "s1",
    *,
    model: str | None = "m1",
    agent_role: str | None = "coder",
    task_id: str | None = "t1",
    seconds: float | None = None,
    **usage: Any,
) -> Event:
    """An ``llm_response_received`` event whose metadata is ``usage`` (token counts, cost)."""
    return event(
        i,
        session_id,
        EventType.LLM_RESPONSE_RECEIVED,
        seconds=seconds,
        model=model,
        agent_role=agent_role,
        task_id=task_id,
        metadata=usage,
    )
