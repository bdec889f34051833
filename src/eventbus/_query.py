"""`EventQuery`: the one filter type of subscriptions, listeners and query APIs."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ._event import Event, EventType

__all__ = ["EventQuery", "as_utc"]

_EQUALITY_FIELDS = ("session_id", "phase", "task_id", "agent_role", "model")


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware UTC datetime; a naive one is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class EventQuery:
    """A conjunction of conditions on events; ``None`` means "any".

    ``event_type`` takes one type or several (any of them matches). Times are
    inclusive bounds; naive datetimes are taken as UTC. ``EventQuery()``
    matches every event. Queries are immutable, hashable and comparable.
    """

    __slots__ = (
        "_equals",
        "_types",
        "agent_role",
        "end_time",
        "event_type",
        "model",
        "phase",
        "session_id",
        "start_time",
        "task_id",
    )

    event_type: frozenset[EventType] | None
    session_id: str | None
    phase: str | None
    task_id: str | None
    agent_role: str | None
    model: str | None
    start_time: datetime | None
    end_time: datetime | None
    _types: frozenset[EventType] | None
    _equals: tuple[tuple[str, str], ...]

    def __init__(
        self,
        *,
        event_type: EventType | str | Iterable[EventType | str] | None = None,
        session_id: str | None = None,
        phase: str | None = None,
        task_id: str | None = None,
        agent_role: str | None = None,
        model: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> None:
        types = _normalise_types(event_type)
        if start_time is not None:
            start_time = as_utc(_require_datetime("start_time", start_time))
        if end_time is not None:
            end_time = as_utc(_require_datetime("end_time", end_time))
        if start_time is not None and end_time is not None and start_time > end_time:
            raise ValueError(
                f"start_time {start_time.isoformat()} is after end_time "
                f"{end_time.isoformat()}: no event could match"
            )
        values = {
            "session_id": session_id,
            "phase": phase,
            "task_id": task_id,
            "agent_role": agent_role,
            "model": model,
        }
        for name, value in values.items():
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
        setattr_ = object.__setattr__
        setattr_(self, "event_type", types)
        for name, value in values.items():
            setattr_(self, name, value)
        setattr_(self, "start_time", start_time)
        setattr_(self, "end_time", end_time)
        setattr_(self, "_types", types)
        setattr_(
            self,
            "_equals",
            tuple((name, value) for name, value in values.items() if value is not None),
        )

    def matches(self, event: Event) -> bool:
        """Return whether ``event`` satisfies every condition."""
        if self._types is not None and event.event_type not in self._types:
            return False
        for name, value in self._equals:
            if getattr(event, name) != value:
                return False
        if self.start_time is not None and event.timestamp < self.start_time:
            return False
        return self.end_time is None or event.timestamp <= self.end_time

    __call__ = matches

    def filter(self, events: Iterable[Event]) -> list[Event]:
        """Return the events that match, in their order."""
        return [event for event in events if self.matches(event)]

    @property
    def is_empty(self) -> bool:
        """``True`` when the query matches every event."""
        return (
            self._types is None
            and not self._equals
            and self.start_time is None
            and self.end_time is None
        )

    def _key(self) -> tuple[Any, ...]:
        return (self._types, self._equals, self.start_time, self.end_time)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventQuery):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"EventQuery is immutable: cannot set {name!r}")

    def __repr__(self) -> str:
        parts = []
        if self._types is not None:
            parts.append(f"event_type={sorted(t.value for t in self._types)!r}")
        parts.extend(f"{name}={value!r}" for name, value in self._equals)
        if self.start_time is not None:
            parts.append(f"start_time={self.start_time.isoformat()!r}")
        if self.end_time is not None:
            parts.append(f"end_time={self.end_time.isoformat()!r}")
        return f"EventQuery({', '.join(parts)})"


def _normalise_types(
    event_type: EventType | str | Iterable[EventType | str] | None,
) -> frozenset[EventType] | None:
    if event_type is None:
        return None
    items = [event_type] if isinstance(event_type, str) else list(event_type)
    if not items:
        raise ValueError("event_type is an empty collection: pass None to match every type")
    types = set()
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"event_type entries must be non-empty strings, got {item!r}")
        types.add(EventType(item))
    return frozenset(types)


def _require_datetime(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return value
