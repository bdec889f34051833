"""The exceptions raised by eventbus and its sinks.

Every error derives from :class:`EventBusError`; where a built-in exception
also describes the failure, the class inherits from it too, so existing
``except ValueError`` code keeps working::

    EventBusError
    ├── BusClosedError (RuntimeError)
    ├── BusFullError
    ├── EventEncodeError (TypeError)
    ├── EventDecodeError (ValueError)
    └── SinkFailedError
"""

from __future__ import annotations

from collections.abc import Sequence


class EventBusError(Exception):
    """Base class of every error raised by eventbus and its sinks."""


class BusClosedError(EventBusError, RuntimeError):
    """Raised when publishing to, or subscribing to, a bus that is not running."""

    def __init__(self, action: str, state: str) -> None:
        self.action = action
        self.state = state
        where = "has not been started" if state == "new" else "is closed"
        super().__init__(
            f"cannot {action}: the bus {where}; {action} inside 'async with EventBus() as bus:'"
        )


class BusFullError(EventBusError):
    """Raised by ``publish_nowait`` when the bus buffer is full.

    Nothing was published. Await ``publish`` instead to wait for space, or
    give the bus a larger ``buffer``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        super().__init__(
            f"cannot publish without waiting: {capacity} events are buffered for a slow "
            "lossless sink; use 'await bus.publish(event)' to wait for space, "
            "or create the bus with a larger buffer"
        )


class EventEncodeError(EventBusError, TypeError):
    """Raised when an event cannot be encoded as JSON, naming the offending value.

    Raised by ``publish`` before the event is accepted, never later in a sink.
    """

    def __init__(self, event_id: str, event_type: str, path: str, reason: str) -> None:
        self.event_id = event_id
        self.path = path
        self.reason = reason
        super().__init__(
            f"cannot publish event {event_id} ({event_type}): {path} {reason}; "
            "metadata must hold JSON values only (str, int, float, bool, None, "
            "lists and dicts with str keys): convert it before publishing"
        )


class EventDecodeError(EventBusError, ValueError):
    """Raised when bytes or a dict do not describe a valid event."""

    def __init__(self, reason: str, *, where: str = "") -> None:
        self.reason = reason
        self.where = where
        location = f" ({where})" if where else ""
        super().__init__(f"invalid event{location}: {reason}")


class SinkFailedError(EventBusError):
    """Raised by ``flush`` (and on leaving the bus) when a lossless sink has failed.

    A sink fails when a write keeps raising after every retry of its
    subscription's :class:`~eventbus.RetryPolicy`. The events it did not
    write are not lost from the bus's other sinks; they are lost to this one.
    ``failures`` holds ``(subscription name, exception)`` pairs; the first
    exception is also the ``__cause__``.
    """

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = tuple(failures)
        described = "; ".join(f"{name!r} ({exc!r})" for name, exc in self.failures)
        noun = "sink has" if len(self.failures) == 1 else "sinks have"
        super().__init__(
            f"{len(self.failures)} {noun} failed and stopped receiving events: {described}; "
            "see bus.stats() for what each missed, and call 'await bus.unsubscribe(...)' "
            "to detach a failed sink"
        )
