"""Server-Sent Events: a log replayed after a position, then live events, joined on ids.

Each event is one message, ``id: <event id>`` and ``data: <its JSON line>``;
a stretch a slow client missed is ``event: gap`` with ``data: {"missed": n}``.
"After an id" means after that event in the workspace's time order (see
``Workspace.events``).

In-process (a bus is given) the live part is a lossy ``bus.listen`` listener,
subscribed *before* the log is read, so nothing published during the switch
falls between the two: the bus is flushed (the log then holds everything
published before the listener existed), the log is replayed after the
client's position, and the listener's events that the replay already sent
are skipped (the replay's last ids are remembered for that: enough to cover
every event published while it ran, unless the listener overflowed, in
which case the log is read again from where the replay stopped). From
files (no bus, or a closed one) the live part is the data layer's
``follow_batches``, which joins the log and its growth itself.

No field value written holds a line break, which would end the field early
and let the rest be read as other fields: an event whose id holds ``\r``,
``\n`` (or NUL, which makes browsers ignore the id) is not sent, and a
warning names it; a stored line holding ``\r`` (JSON whitespace another
writer may leave) is sent re-encoded, on one line. ``event:`` and gap
messages are constants.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing, suppress

import anyio
import anyio.to_thread

from .._bus import EventBus
from .._codec import encode_event
from .._errors import BusClosedError, SinkFailedError
from .._event import Event
from .._listen import Gap, Listener
from .._query import EventQuery
from ._workspace import Workspace

__all__ = ["LineCache", "bus_stream", "file_stream", "gap_message"]

logger = logging.getLogger("eventbus.web")

#: Events read from the log per page while replaying.
REPLAY_PAGE = 5000
#: How many times a resume re-reads the log when the listener overflowed meanwhile.
_REPLAY_PASSES = 3
#: The fewest replayed ids a resume remembers to skip the listener's duplicates.
_MIN_RECENT = 16384
#: What an SSE field value must not hold (line breaks end a field; NUL voids an id).
_UNSAFE_ID = re.compile(r"[\r\n\x00]")


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


def _message(event: Event, line: bytes) -> bytes:
    """The message of ``event`` (its JSON ``line``); ``b""`` if its id cannot be sent."""
    event_id = event.id
    if not event_id.isprintable() and _UNSAFE_ID.search(event_id):
        logger.warning(
            "not streaming event %r (session %r): its id holds a line break or NUL, "
            "which an SSE 'id:' field cannot carry",
            event_id,
            event.session_id,
        )
        return b""
    if b"\r" in line:  # JSON whitespace, but a line break to SSE
        line = encode_event(event)
    return b"id: " + event_id.encode() + b"\ndata: " + line + b"\n\n"


def gap_message(missed: int) -> bytes:
    """The ``event: gap`` message for ``missed`` dropped events."""
    return b'event: gap\ndata: {"missed": %d}\n\n' % missed


def _messages(events: Sequence[Event], cache: LineCache) -> bytes:
    line = cache.line
    return b"".join([_message(event, line(event)) for event in events])


class _Recent:
    """The last ``size`` ids sent by a replay."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, events: Sequence[Event]) -> None:
        ids = self._ids
        for event in events[-self._size :]:
            ids[event.id] = None
        while len(ids) > self._size:
            ids.popitem(last=False)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids


def _page(
    workspace: Workspace, query: EventQuery, session_id: str | None, after: str
) -> tuple[list[Event], list[bytes], str | None]:
    events, next_id = workspace.events(query, session_id=session_id, after=after, limit=REPLAY_PAGE)
    return events, workspace.read_lines(events) if events else [], next_id


async def _replay(
    workspace: Workspace, query: EventQuery, session_id: str | None, after: str
) -> AsyncIterator[tuple[list[Event], bytes]]:
    """Yield the stored events after ``after``, a page at a time, with their messages."""
    position: str | None = after
    while position is not None:
        read = functools.partial(_page, workspace, query, session_id, position)
        events, lines, position = await anyio.to_thread.run_sync(read)
        if events:
            chunk = b"".join(
                [_message(event, line) for event, line in zip(events, lines, strict=True)]
            )
            yield events, chunk


async def _live(listener: Listener, cache: LineCache) -> AsyncIterator[bytes]:
    """Everything the listener holds at each wake-up, as one chunk."""
    async for item in listener:
        events: list[Event] = []
        chunks: list[bytes] = []
        for entry in [item, *listener.get_nowait()]:
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
            recent = _Recent(max(4 * buffer, _MIN_RECENT))
            position = after
            kept: list[Event] = []
            missed = 0
            for _ in range(_REPLAY_PASSES):
                # The log then holds every event published before the listener
                # (if a sink failed, replay what the log has).
                with suppress(SinkFailedError):
                    await bus.flush()
                async for events, chunk in _replay(workspace, query, session_id, position):
                    recent.add(events)
                    position = events[-1].id
                    yield chunk
                items = listener.get_nowait()
                missed = items[0].missed if items and isinstance(items[0], Gap) else 0
                kept.extend(item for item in items if isinstance(item, Event))
                if not missed:
                    break
            if missed:
                yield gap_message(missed)
            rest = [event for event in kept if event.id not in recent]
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
        async for events, chunk in _replay(workspace, query, session_id, after):
            position = events[-1].id
            yield chunk
    follow = workspace.follow_batches(
        query, session_id=session_id, after=position, from_start=False
    )
    async with aclosing(follow) as batches:
        async for batch in batches:  # one chunk per change of the logs
            if chunk := b"".join([_message(event, line) for event, line in batch]):
                yield chunk
