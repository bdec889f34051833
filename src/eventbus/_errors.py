"""The exceptions raised by eventbus and its sinks.

Every error derives from :class:`EventBusError`; where a built-in exception
also describes the failure, the class inherits from it too, so existing
``except ValueError`` code keeps working::

    EventBusError
    ├── BusClosedError (RuntimeError)
    ├── BusFullError
    ├── EventEncodeError (TypeError)
    ├── EventDecodeError (ValueError)
    ├── EventsLostError
    ├── PartialWriteError
    └── SinkFailedError
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
    """Raised when a field of an event has the wrong type, or its metadata is not JSON.

    Also when an ``id`` or ``parent_id`` holds a control character or is
    longer than ``MAX_ID_LENGTH``, when ``metadata`` nests deeper than
    ``MAX_METADATA_DEPTH``, or when the encoded event is longer than
    ``MAX_LINE_BYTES`` (what readers would skip as corrupt).

    ``path`` names the field (``"task_id"``) or the value in metadata
    (``"metadata['a'][1]"``). Raised by ``publish`` before the event is
    accepted (nothing is published), never later in a sink.
    """

    def __init__(self, event_id: str, event_type: str, path: str, reason: str) -> None:
        self.event_id = event_id
        self.path = path
        self.reason = reason
        if "MAX_METADATA_DEPTH" in reason:
            hint = "flatten it (or store it as an artifact) before publishing"
        elif "MAX_LINE_BYTES" in reason:
            hint = "store large content as an artifact and refer to it from the event"
        elif path in ("id", "parent_id") and "MAX_ID_LENGTH" in reason:
            hint = "use the ids eventbus makes, or short printable strings"
        elif path.startswith("metadata"):
            hint = (
                "metadata must hold JSON values only (str, int, finite float, bool, None, "
                "lists and dicts with str keys; datetimes, UUIDs, Decimals and enums become "
                "strings or their values, tuples lists): convert it before publishing"
            )
        else:
            hint = "give each field a value of its declared type"
        shown = str(event_id)
        if not shown.isprintable() or len(shown) > 64:
            shown = repr(shown[:64])
        super().__init__(f"cannot publish event {shown} ({event_type}): {path} {reason}; {hint}")


class EventDecodeError(EventBusError, ValueError):
    """Raised when bytes or a dict do not describe a valid event."""

    def __init__(self, reason: str, *, where: str = "") -> None:
        self.reason = reason
        self.where = where
        location = f" ({where})" if where else ""
        super().__init__(f"invalid event{location}: {reason}")


class EventsLostError(EventBusError):
    """Raised by a sink when events it had already acknowledged can no longer be written.

    A sink that buffers (``JsonlSink(durability="none")``) acknowledges events
    before they reach the disk; when writing that buffer fails (a full disk,
    an I/O error on eviction, on ``aclose`` or on a flush), those events are
    gone. ``lost`` counts them. The bus never retries this error: it declares
    the sink failed at once and adds ``lost`` to ``bus.stats().lost``.
    """

    def __init__(self, lost: int, where: str, reason: str) -> None:
        self.lost = lost
        self.where = where
        self.reason = reason
        noun = "event" if lost == 1 else "events"
        super().__init__(
            f"{lost} acknowledged {noun} could not be written to {where} and are lost: {reason}"
        )


class PartialWriteError(EventBusError):
    """Raised by a sink's ``write`` when some sessions of a batch failed and the rest were written.

    ``failures`` maps each failed session id to its exception. The bus
    retries the same batch (the sink must skip what it already wrote); if
    sessions still fail after the last retry, the bus fails *those sessions*
    for this sink only: their later events are not delivered to it (counted
    as dropped), an ``error`` event is published for each, ``flush()`` raises
    :class:`SinkFailedError` naming sink and session, and every other
    session keeps flowing to the sink.
    """

    def __init__(self, failures: Mapping[str, BaseException]) -> None:
        if not failures:
            raise ValueError("PartialWriteError needs at least one failed session")
        self.failures = dict(failures)
        described = "; ".join(f"session {sid!r}: {exc!r}" for sid, exc in self.failures.items())
        super().__init__(
            f"{len(self.failures)} session(s) of the batch could not be written "
            f"(the others were): {described}"
        )


class SinkFailedError(EventBusError):
    """Raised by ``flush`` (and on leaving the bus) when a lossless sink has failed.

    A sink fails when a write keeps raising after every retry of its
    subscription's :class:`~eventbus.RetryPolicy` (at once for
    :class:`EventsLostError`), or when its ``aclose`` fails. The events it
    did not write are not lost from the bus's other sinks; they are lost to
    this one. ``failures`` holds ``(subscription name, exception)`` pairs;
    ``sessions`` holds ``(subscription name, session id, exception)`` for
    each session a sink could not write (see :class:`PartialWriteError`)
    while it kept writing the others. The first exception is also the
    ``__cause__``.
    """

    def __init__(
        self,
        failures: Sequence[tuple[str, BaseException]],
        sessions: Sequence[tuple[str, str, BaseException]] = (),
    ) -> None:
        self.failures = tuple(failures)
        self.sessions = tuple(sessions)
        parts = [
            f"sink {name!r} failed and stopped receiving events ({exc!r})"
            for name, exc in self.failures
        ]
        parts += [
            f"sink {name!r} failed for session {session_id!r} and stopped receiving its "
            f"events ({exc!r})"
            for name, session_id, exc in self.sessions
        ]
        super().__init__(
            "; ".join(parts) + "; see bus.stats() for what each missed, and call "
            "'await bus.unsubscribe(...)' to detach a failed sink"
        )
