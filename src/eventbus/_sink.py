"""The :class:`Sink` protocol and :class:`MemorySink`, a sink for tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import anyio

from ._event import Event
from ._query import EventQuery

__all__ = ["MemorySink", "Sink", "sink_name"]


@runtime_checkable
class Sink(Protocol):
    """Anything that can receive events from a bus: an object with these two methods.

    ``write`` receives a non-empty batch of events in publish order (an
    :class:`~eventbus.EventBatch`, whose ``lines`` hold each event's JSON).
    When it returns, the bus counts the batch as handled by this sink: a
    durable sink must have made it durable by then. ``aclose`` is awaited
    once, when the bus closes or the sink is unsubscribed, after its last
    write. What a custom sink must do:

    - **Be idempotent under retry.** When ``write`` raises, the bus retries
      the *same* batch (same events, same order). A sink that did part of the
      work before failing must not do it twice on the retry: remember what
      it finished (e.g. per batch ``(len, first id, last id)``), or undo it
      before raising. Event ids make duplicates detectable.
    - **Fail sessions, not itself, when only some sessions fail.** Write every
      session it can, then raise :class:`~eventbus.PartialWriteError` naming
      the failed ones: the bus stops sending this sink those sessions' events
      and reports them, and the other sessions keep flowing.
    - **Report acknowledged events it lost** (a buffer it could not write)
      with :class:`~eventbus.EventsLostError`: never return normally with
      events missing.
    - **Let the bus abandon it.** On close, the bus waits ``close_timeout``
      and then cancels a write or ``aclose`` still running. Blocking work in
      a worker thread must use ``anyio.to_thread.run_sync(...,
      abandon_on_cancel=True)`` (and tolerate the thread finishing later),
      or a stuck disk holds the close.
    - **Raise exceptions, not cancellations.** A cancellation exception the
      bus did not cause counts as a failed write.
    """

    async def write(self, events: Sequence[Event]) -> None:
        """Handle a batch of events (see the class docstring for the contract)."""
        ...

    async def aclose(self) -> None:
        """Release resources; no ``write`` follows."""
        ...


def sink_name(sink: object) -> str:
    """Return a readable name for a sink: its ``name`` attribute or its class name."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__


class MemorySink:
    """A sink that keeps every event it receives in a list, for tests.

    ``events`` holds what was written, in order; ``batches`` the batch sizes;
    ``closed`` whether the bus closed it. ``await wait_for(n)`` returns once
    ``n`` events have arrived (use it under ``anyio.fail_after``)::

        sink = MemorySink()
        async with EventBus() as bus:
            bus.subscribe(sink)
            await bus.publish(event)
            await bus.flush()
        assert sink.events == [event]
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.events: list[Event] = []
        self.batches: list[int] = []
        self.closed = False
        self._arrived: anyio.Event | None = None

    async def write(self, events: Sequence[Event]) -> None:
        """Append the batch to :attr:`events`."""
        self.events.extend(events)
        self.batches.append(len(events))
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def aclose(self) -> None:
        """Mark the sink closed; the events stay readable."""
        self.closed = True

    async def wait_for(self, count: int) -> list[Event]:
        """Wait until at least ``count`` events have been written; return them all."""
        while len(self.events) < count:
            if self._arrived is None:
                self._arrived = anyio.Event()
            await self._arrived.wait()
        return self.events

    def query(self, query: EventQuery) -> list[Event]:
        """Return the received events that match ``query``."""
        return query.filter(self.events)

    def __repr__(self) -> str:
        return f"MemorySink({self.name!r}, {len(self.events)} events)"
