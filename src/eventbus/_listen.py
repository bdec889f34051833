"""Live listeners: lossy, bounded views of the bus for dashboards and streams."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence

import msgspec

from ._event import Event
from ._signal import Waiters

__all__ = ["Gap", "Listener"]


class Gap(msgspec.Struct, frozen=True):
    """Yielded by a :class:`Listener` in place of events it had to drop.

    ``missed`` events that matched the listener's query were published at
    this point in the stream but dropped because the listener's buffer was
    full (drop-oldest).
    """

    missed: int


class Listener(AsyncIterator["Event | Gap"]):
    """An async iterator over live events, returned by ``EventBus.listen``.

    Holds at most ``buffer`` events; when a new event arrives at a full
    buffer the oldest is dropped and the next item yielded is a :class:`Gap`
    saying how many were dropped. The publisher never waits for a listener.
    Iteration ends, after the buffered events, when the ``listen`` block is
    left or the bus closes.
    """

    def __init__(self, buffer: int) -> None:
        if buffer < 1:
            raise ValueError(f"a listener's buffer must hold at least 1 event, got {buffer}")
        self._buffer: deque[Event] = deque(maxlen=buffer)
        # Drops are counted lazily, so that buffering an event costs an append:
        # missed = received - taken - len(buffer); a Gap reports the unreported.
        self._received = 0
        self._taken = 0
        self._reported = 0
        self._closed = False
        self._waiters = Waiters()  # the readers waiting for an event

    @property
    def missed(self) -> int:
        """Total number of events dropped for this listener so far."""
        return self._received - self._taken - len(self._buffer)

    @property
    def received(self) -> int:
        """Total number of events that reached this listener's buffer."""
        return self._received

    # The bus-facing side: a sink whose write never waits.

    async def write(self, events: Sequence[Event]) -> None:
        """Buffer a batch, dropping the oldest events beyond the buffer's size."""
        self._buffer.extend(events)
        self._received += len(events)
        self._wake()

    def _put(self, event: Event) -> None:
        """Buffer one event (what the bus calls as it publishes); never waits."""
        self._buffer.append(event)
        self._received += 1
        if self._waiters:
            self._waiters.wake()

    async def aclose(self) -> None:
        """End iteration once the buffered events have been consumed."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiters:
            self._waiters.wake()

    # The consumer side.

    def __aiter__(self) -> Listener:
        return self

    def _gap(self) -> int:
        """Events dropped since the last Gap (and reports them)."""
        missed = self._received - self._taken - len(self._buffer) - self._reported
        self._reported += missed
        return missed

    async def __anext__(self) -> Event | Gap:
        while True:
            buffer = self._buffer
            if self._received - self._taken - len(buffer) != self._reported:
                return Gap(self._gap())
            if buffer:
                self._taken += 1
                return buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            waiters = self._waiters
            signal = waiters.add()  # waiters.wait(), without its coroutine
            try:
                await (signal if waiters.futures else signal.wait())
            except BaseException:
                waiters.discard(signal)
                raise

    def get_nowait(self) -> list[Event | Gap]:
        """Return everything buffered now (gap first, if any) without waiting."""
        missed = self._gap()
        items: list[Event | Gap] = [Gap(missed)] if missed else []
        items.extend(self._buffer)
        self._taken += len(self._buffer)
        self._buffer.clear()
        return items
