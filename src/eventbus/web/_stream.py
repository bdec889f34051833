"""Server-Sent Events: a log replayed after a position, then live events, joined on ids.

Each event is one message, ``id: <event id>`` and ``data: <its JSON line>``;
a stretch a slow client missed is ``event: gap`` with ``data: {"missed": n}``.

In-process (a bus is given) the live part is a lossy ``bus.listen`` listener,
subscribed *before* the log is read, so nothing published during the switch
falls between the two: the bus is flushed (the log then holds everything
published before the listener existed), the log is replayed after the
client's position, and the listener's events already replayed are skipped.
Per session, the log and the listener hold events in publish order, so the
listener's events up to the last replayed id of their session are the
duplicates. From files (no bus, or a closed one) the live part is the data
layer's ``follow``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, suppress

import anyio
import anyio.to_thread

from .._bus import EventBus
from .._codec import encode_event
from .._errors import BusClosedError, SinkFailedError
from .._event import Event
from .._listen import Gap, Listener
from .._query import EventQuery
from ._workspace import Workspace, is_not_found

__all__ = ["LineCache", "bus_stream", "file_stream", "gap_message"]

#: Events read from the log per page while replaying.
REPLAY_PAGE = 5000
#: How many times a resume re-reads the log when the listener overflowed meanwhile.
_REPLAY_PASSES = 3


class LineCache:
    """Encoded lines of recent events, shared by every client of one app.

    A live event goes to every connected client; it is encoded once.
    """

    def __init__(self, size: int = 8192) -> None:
        self._lines: OrderedDict[str, bytes] = OrderedDict()
        self._size = size

    def line(self, event: Event) -> bytes:
        """The JSON line of ``event`` (no newline)."""
        line = self._lines.get(event.id)
        if line is None:
            line = encode_event(event)
            if len(self._lines) >= self._size:
                self._lines.popitem(last=False)
            self._lines[event.id] = line
        return line


def _message(event_id: str, line: bytes) -> bytes:
    return b"id: " + event_id.encode() + b"\ndata: " + line + b"\n\n"


def gap_message(missed: int) -> bytes:
    """The ``event: gap`` message for ``missed`` dropped events."""
    return b'event: gap\ndata: {"missed": %d}\n\n' % missed


def _messages(events: Sequence[Event], cache: LineCache | None = None) -> bytes:
    line = cache.line if cache is not None else encode_event
    return b"".join([_message(event.id, line(event)) for event in events])


async def _replay(
    workspace: Workspace,
    query: EventQuery,
    session_id: str | None,
    after: str,
    last: dict[str, str],
) -> AsyncIterator[bytes]:
    """Yield the log's events after ``after`` in chunks; record each session's last id."""
    position: str | None = after
    while position is not None:
        read = functools.partial(
            workspace.events, query, session_id=session_id, after=position, limit=REPLAY_PAGE
        )
        try:
            events, position = await anyio.to_thread.run_sync(read)
        except Exception as error:
            if is_not_found(error):  # no log (yet): nothing to replay
                return
            raise
        if events:
            for event in events:
                last[event.session_id] = event.id
            yield _messages(events)


def _after_replayed(kept: list[Event], last: dict[str, str]) -> list[Event]:
    """The listener's events that the replay did not send (see the module docstring)."""
    cut: dict[str, int] = {}
    for index, event in enumerate(kept):
        if last.get(event.session_id) == event.id:
            cut[event.session_id] = index
    if not cut:
        return kept
    return [event for index, event in enumerate(kept) if index > cut.get(event.session_id, -1)]


async def _live(listener: Listener, cache: LineCache) -> AsyncIterator[bytes]:
    async for item in listener:
        items = [item, *listener.get_nowait()]
        events: list[Event] = []
        chunks: list[bytes] = []
        for entry in items:
            if isinstance(entry, Gap):
                chunks.append(_messages(events, cache))
                chunks.append(gap_message(entry.missed))
                events = []
            else:
                events.append(entry)
        chunks.append(_messages(events, cache))
        yield b"".join(chunks)


async def bus_stream(
    bus: EventBus,
    workspace: Workspace,
    query: EventQuery,
    *,
    session_id: str | None,
    after: str | None,
    buffer: int,
    cache: LineCache,
) -> AsyncIterator[bytes]:
    """The log after ``after`` (if given), then the bus's live events; ends when the bus closes.

    Falls back to :func:`file_stream` when the bus is already closed.
    """
    async with AsyncExitStack() as stack:
        try:
            listener = await stack.enter_async_context(bus.listen(query, buffer=buffer))
        except BusClosedError:
            async for chunk in file_stream(workspace, query, session_id=session_id, after=after):
                yield chunk
            return
        if after is not None:
            last: dict[str, str] = {}
            position = after
            kept: list[Event] = []
            missed = 0
            for _ in range(_REPLAY_PASSES):
                # The log then holds every event published before the listener
                # (if a sink failed, replay what the log has).
                with suppress(SinkFailedError):
                    await bus.flush()
                async for chunk in _replay(workspace, query, session_id, position, last):
                    yield chunk
                if last:
                    position = max(last.values()) if session_id is None else last[session_id]
                items = listener.get_nowait()
                missed = items[0].missed if items and isinstance(items[0], Gap) else 0
                kept.extend(item for item in items if isinstance(item, Event))
                if not missed:
                    break
            if missed:
                yield gap_message(missed)
            rest = _after_replayed(kept, last)
            if rest:
                yield _messages(rest, cache)
        async for chunk in _live(listener, cache):
            yield chunk


async def file_stream(
    workspace: Workspace, query: EventQuery, *, session_id: str | None, after: str | None
) -> AsyncIterator[bytes]:
    """The log after ``after`` (if given), then events as they are written to the files."""
    position = after
    if after is not None:
        last: dict[str, str] = {}
        async for chunk in _replay(workspace, query, session_id, after, last):
            yield chunk
        if last:
            position = max(last.values()) if session_id is None else last[session_id]
    follow = workspace.follow(query, session_id=session_id, after=position, from_start=False)
    async for event in follow:
        yield _message(event.id, encode_event(event))
