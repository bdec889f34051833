"""The errors of :class:`~sinks.index.EventIndex` (re-exported by :mod:`sinks.index`)."""

from __future__ import annotations

from eventbus import EventBusError

__all__ = [
    "EventIndexError",
    "IndexArgumentError",
    "LocationRequiredError",
    "StaleLogError",
    "UnknownEventIdError",
]


class EventIndexError(EventBusError):
    """Base class of the errors raised by :class:`~sinks.index.EventIndex`."""


class IndexArgumentError(EventIndexError, ValueError):
    """Raised when an argument of an :class:`~sinks.index.EventIndex` method is out of range."""

    def __init__(self, name: str, value: object, requirement: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"{name}={value!r} is invalid: {requirement}")


class UnknownEventIdError(EventIndexError, LookupError):
    """Raised when ``query(after=...)`` names an event id the index does not hold."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(
            f"after={event_id!r}: no event with this id is in the index (never added, or "
            "evicted by max_events); pass the Event itself as 'after' to page past an "
            "evicted event"
        )


class LocationRequiredError(EventIndexError):
    """Raised when a low-memory index is given events without their places in a log."""

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(
            f"cannot {action}: EventIndex(low_memory=True) keeps only where each event is "
            "in its JSONL log, so events reach it through add_located(events, path, offsets, "
            "lengths), called by the writer that wrote them; use EventIndex() to index "
            "events straight from a bus"
        )


class StaleLogError(EventIndexError):
    """Raised when a low-memory index reads an event back and its log no longer holds it."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        super().__init__(
            f"cannot read the event indexed at byte {offset} of {path}: {reason}; the log "
            "changed after it was indexed (cleared or rewritten): rebuild the index with "
            "EventIndex.from_workspace(...)"
        )
