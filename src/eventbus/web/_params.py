"""Query-string parameters of the API; a bad value raises :class:`BadRequest` (a 400).

Any other refusal is an :class:`ApiError` with its status.
"""

from __future__ import annotations

from datetime import datetime

from starlette.datastructures import QueryParams

from sinks import workspace

from .._errors import EventBusError
from .._query import EventQuery

__all__ = ["USAGE_KEYS", "ApiError", "BadRequest", "event_query", "parse_time", "positive_int"]

#: The values ``by`` takes in ``/api/usage``: the fields, and their short names.
USAGE_KEYS = (*workspace.USAGE_KEYS, *workspace.USAGE_ALIASES)


class ApiError(EventBusError):
    """A request the API refuses: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class BadRequest(EventBusError, ValueError):
    """A request parameter cannot be used; the API answers 400 with this message."""

    def __init__(self, parameter: str, value: str, expected: str) -> None:
        self.parameter = parameter
        self.value = value
        super().__init__(f"parameter {parameter}={value!r} is not valid: expected {expected}")


def parse_time(parameter: str, text: str) -> datetime:
    """An ISO 8601 time (no offset means UTC) or a time ago (``10m``, ``2h``), as the CLI reads it.

    :raises BadRequest: ``text`` is neither.
    """
    try:
        return workspace.parse_time(text)
    except workspace.InvalidTimeError:
        raise BadRequest(
            parameter, text, "an ISO 8601 time (2026-01-31T12:00:00Z) or a time ago (30s, 10m, 2h)"
        ) from None


def positive_int(parameter: str, text: str, *, maximum: int) -> int:
    """A whole number from 1 to ``maximum``.

    :raises BadRequest: ``text`` is not one.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise BadRequest(parameter, text, f"a whole number from 1 to {maximum}")
    return value


def event_query(params: QueryParams, *, session_id: str | None = None) -> EventQuery:
    """The :class:`EventQuery` of ``type`` (repeated or comma-separated), ``phase``,
    ``task_id``, ``agent_role``, ``model``, ``since``, ``until`` (and ``session_id``).

    :raises BadRequest: a time cannot be read, or ``since`` is after ``until``.
    """
    types = [t for value in params.getlist("type") for t in value.split(",") if t.strip()]
    since = params.get("since")
    until = params.get("until")
    start = parse_time("since", since) if since else None
    end = parse_time("until", until) if until else None
    if start is not None and end is not None and start > end:
        raise BadRequest("since", since or "", f"a time before until={until!r}")
    return EventQuery(
        event_type=[t.strip() for t in types] or None,
        session_id=session_id if session_id is not None else params.get("session_id") or None,
        phase=params.get("phase") or None,
        task_id=params.get("task_id") or None,
        agent_role=params.get("agent_role") or None,
        model=params.get("model") or None,
        start_time=start,
        end_time=end,
    )
