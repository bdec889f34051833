"""`EventBus`: fans published events out to sinks and live listeners.

How it works: published events go, with their JSON encoding, into one shared
buffer. Every lossless subscription has a cursor into it and a task that
hands the events between its cursor and the head to its sink as one batch,
so a burst of publishes costs one ``write`` per sink, not one queue hop per
event per sink. The buffer is bounded by the slowest lossless subscription:
when it is ``buffer`` events behind, ``publish`` waits (backpressure).
Listeners never wait (they drop their oldest events instead): ``publish``
puts each event into their buffers itself, so they never hold the publisher
back and need no task.

The live path (one event at a time, ``await publish(e); await flush()``):
``publish`` does not wake an idle subscription's task at once but on the
event loop's next turn (asyncio's ``call_soon``; elsewhere a waker task of
the bus). A ``flush`` that comes first writes the batch of every idle
subscription itself (one attempt; a failure goes to the subscription's
task, which retries it as usual), so the round trip costs no task switch
per sink. Writes to one sink never overlap: the task and a flusher take
turns (``Subscription._writing``). Tasks sleep on one-shot signals
(``_signal``), cheaper than ``anyio.Event``.
"""

import asyncio
import functools
import logging
import math
import threading
import types
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
from anyio.abc import TaskGroup

from ._codec import (
    MAX_LINE_BYTES,
    MAX_METADATA_DEPTH,
    EventBatch,
    _encode,
    _explain_encode_error,
    encode_event,
)
from ._errors import (
    BusClosedError,
    BusFullError,
    EventBusError,
    EventsLostError,
    PartialWriteError,
    SinkFailedError,
)
from ._event import Event, EventType
from ._listen import Listener
from ._names import validate_session_id
from ._query import EventQuery
from ._signal import Signal, Waiters, running_trio, signal_factory
from ._sink import Sink, sink_name

__all__ = ["BusStats", "EventBus", "RetryPolicy", "Subscription", "SubscriptionStats"]

logger = logging.getLogger("eventbus")

_State = Literal["new", "running", "closing", "closed"]
_TRIM_THRESHOLD = 4096
_MAX_REMEMBERED_SESSIONS = 4096


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a failing ``write`` is retried before its sink is declared failed.

    The write is retried ``retries`` times; the first retry waits
    ``initial_delay`` seconds and each next one ``multiplier`` times longer,
    capped at ``max_delay``. The default (3 retries after 0.1, 0.2 and 0.4 s)
    declares a continuously failing sink failed in under a second.
    """

    retries: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not (self.initial_delay >= 0 and math.isfinite(self.initial_delay)):
            raise ValueError(
                f"initial_delay must be a finite number >= 0, got {self.initial_delay}"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not self.max_delay >= self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= initial_delay ({self.initial_delay})"
            )

    def delays(self) -> list[float]:
        """The waits before each retry, in order."""
        return [
            min(self.initial_delay * self.multiplier**attempt, self.max_delay)
            for attempt in range(self.retries)
        ]


class SubscriptionStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one subscription.

    ``delivered``: events its sink accepted (after the query's filter).
    ``pending``: events published that it has not processed yet.
    ``dropped``: events it will never receive: dropped by a full listener,
    published after its sink failed, or belonging to a session that failed
    for this sink. ``failed_sessions``: the sessions this sink could not
    write (see :class:`~eventbus.PartialWriteError`); their events no longer
    reach it, while every other session's still do.
    """

    name: str
    kind: Literal["sink", "listener"]
    delivered: int
    pending: int
    dropped: int
    retries: int
    failed: bool
    error: str | None
    failed_sessions: tuple[str, ...] = ()


class BusStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the bus: ``published`` events in all, ``buffered`` not yet
    handled by every lossless sink (at most ``capacity``), ``lost`` events that
    were acknowledged but never written (a close that ran out of
    ``close_timeout``, a sink's buffer that could not be written: see
    :class:`~eventbus.EventsLostError`), and each subscription."""

    state: str
    published: int
    buffered: int
    capacity: int
    lost: int
    subscriptions: tuple[SubscriptionStats, ...]

    @property
    def healthy(self) -> bool:
        """``True`` when no sink (nor any session of a sink) has failed and nothing was lost."""
        return self.lost == 0 and not any(s.failed or s.failed_sessions for s in self.subscriptions)


class Subscription:
    """The handle ``EventBus.subscribe`` returns; pass it to ``unsubscribe``."""

    __slots__ = (
        "_cursor",
        "_delivered",
        "_done",
        "_error",
        "_failed",
        "_failed_sessions",
        "_handoff",
        "_inline",
        "_ready",
        "_removed",
        "_retries",
        "_scope",
        "_session_dropped",
        "_writing",
        "lossless",
        "max_batch",
        "name",
        "query",
        "retry",
        "sink",
    )

    def __init__(
        self,
        sink: Sink,
        query: EventQuery | None,
        *,
        name: str,
        lossless: bool,
        retry: RetryPolicy,
        max_batch: int,
        cursor: int,
    ) -> None:
        self.sink = sink
        self.query = None if query is None or query.is_empty else query
        self.name = name
        self.lossless = lossless
        self.retry = retry
        self.max_batch = max_batch
        self._cursor = cursor
        self._delivered = 0
        self._retries = 0
        self._error: BaseException | None = None
        self._failed = False
        self._failed_sessions: dict[str, BaseException] = {}
        self._session_dropped = 0
        self._removed = False
        self._writing = False  # a write (by the task or a flusher) is running
        self._inline = False  # ... and a flusher runs it
        # Set while the task waits for events (idle): what wakes it.
        self._ready: Signal | None = None
        # A batch a flusher's attempt failed to write, for the task to retry:
        # (batch, its failure, events it spans, events the filters removed).
        self._handoff: tuple[EventBatch, BaseException, int, int] | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None

    @property
    def failed(self) -> bool:
        """Whether the sink was declared failed (it receives nothing more)."""
        return self._failed

    @property
    def error(self) -> BaseException | None:
        """The exception of the sink's last failed write, if any."""
        return self._error

    @property
    def failed_sessions(self) -> dict[str, BaseException]:
        """The sessions this sink failed to write, with why (see :class:`PartialWriteError`)."""
        return dict(self._failed_sessions)

    def __repr__(self) -> str:
        state = "failed" if self._failed else "removed" if self._removed else "active"
        return f"<Subscription {self.name!r} {state}>"


class EventBus:
    """An in-process async event bus. Use it as ``async with EventBus() as bus:``.

    :param buffer: how many published events may wait for the slowest
        lossless sink before ``publish`` waits (``publish_nowait`` raises
        :class:`BusFullError`).
    :param max_batch: the most events handed to one ``write``.
    :param retry: the default :class:`RetryPolicy` of subscriptions.
    :param close_timeout: how long leaving the ``async with`` block may take,
        however it is left (normal exit, an exception, cancellation): draining
        the lossless sinks (shielded from cancellation) and closing every sink
        share this budget; each ``aclose`` gets at least a quarter of it, so
        the exit returns within about 1.25 times ``close_timeout``. A write or
        ``aclose`` still running then is abandoned (cancelled: a sink doing
        blocking work in a thread must use ``abandon_on_cancel=True``), logged,
        and what it did not write is counted in ``stats().lost``. Pass
        ``math.inf`` to wait on a normal exit for as long as the sinks take.

    Each bus owns its task group; buses are independent of each other. The
    exception that ended the block always reaches the caller unchanged; a
    sink's failure on close is raised (as :class:`SinkFailedError`) only when
    the block ended normally. A sink raising ``KeyboardInterrupt`` or
    ``SystemExit`` fails that sink only: the others drain, then the interrupt
    is re-raised, as itself, from :meth:`flush` or on leaving the block.
    """

    def __init__(
        self,
        *,
        buffer: int = 8192,
        max_batch: int = 2048,
        retry: RetryPolicy | None = None,
        close_timeout: float = 5.0,
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if close_timeout < 0:
            raise ValueError(f"close_timeout must be >= 0, got {close_timeout}")
        self._capacity = buffer
        self._max_batch = max_batch
        self._retry = retry if retry is not None else RetryPolicy()
        self._close_timeout = close_timeout
        self._state: _State = "new"
        # The shared buffer: _events[i] (encoded as _lines[i]) has sequence
        # number _base + i; _head is the next sequence number; _floor the
        # lowest cursor of the active subscriptions (or _head if none).
        self._events: list[Event] = []
        self._lines: list[bytes] = []
        self._base = 0
        self._head = 0
        self._floor = 0
        self._lost = 0
        self._interrupt: BaseException | None = None
        self._troubled = False  # a sink or a session failed: flush looks for whom
        self._cancelled: type[BaseException] = BaseException  # set on entering
        self._valid_sessions: set[str] = set()
        self._subs: list[Subscription] = []
        self._active: list[Subscription] = []  # the lossless ones not failed nor removed
        self._listeners: dict[Subscription, Listener] = {}
        self._feeds: list[tuple[EventQuery | None, Listener]] = []  # the same, for publish
        self._listener_count = 0
        self._tg: TaskGroup | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._idle = 0  # subscription tasks waiting for events
        self._wake_scheduled = False
        self._asyncio = False
        # Runs a callback on the loop's next turn: asyncio's call_soon; elsewhere
        # the waker task (see _run_waker) stands in for it.
        self._call_soon: Callable[[Callable[[], None]], asyncio.Handle | None] | None = None
        self._wake_handle: asyncio.Handle | None = None  # the one _wake_idle_soon scheduled
        self._waker: Signal | None = None
        self._waker_scope: anyio.CancelScope | None = None
        self._inline_writes = 0  # flushers writing for a subscription
        self._signal: Callable[[], Signal] = anyio.Event
        self._progress = Waiters()  # tasks waiting for a cursor to move
        # flush's yield where it is not asyncio's (the backend's own, looked up once)
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint

    # --- lifetime ---------------------------------------------------------

    async def __aenter__(self) -> "EventBus":
        if self._state != "new":
            raise EventBusError("an EventBus can be entered only once; create a new one")
        self._signal = signal_factory()
        try:
            self._call_soon = asyncio.get_running_loop().call_soon
            self._asyncio = True
        except RuntimeError:  # not asyncio: a task of ours wakes idle tasks
            self._waker = self._signal()
            self._call_soon = self._set_waker
            self._checkpoint = _backend_checkpoint()
        self._cancelled = anyio.get_cancelled_exc_class()
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self._waker is not None:
            self._waker_scope = anyio.CancelScope()
            self._tg.start_soon(_protected_from_interrupts(self._run_waker), self._waker_scope)
        self._state = "running"
        for sub in self._subs:
            self._start(sub)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._state = "closing"
        deadline = anyio.current_time() + self._close_timeout
        drained = False
        try:
            with anyio.CancelScope(shield=True, deadline=deadline):
                await self._drain()
                drained = True
        finally:
            self._state = "closed"
            if not drained:
                self._count_lost()
            self._wake_all()
            self._notify_progress()
            if self._waker_scope is not None:
                self._waker_scope.cancel()
                self._waker = None  # from now on idle tasks are woken at once
            for sub in self._subs:  # anything still writing now is abandoned
                if sub._scope is not None and (not drained or sub._writing):
                    sub._scope.cancel()
            try:
                await self._tg.__aexit__(None, None, None)
            finally:
                close_deadline = max(deadline, anyio.current_time() + self._close_timeout / 4)
                with anyio.CancelScope(shield=True):
                    await self._wait_inline_writes(close_deadline)
                    await self._close_sinks(self._subs, close_deadline)
        if exc is not None:
            return None  # the block's own exception propagates unchanged
        self._raise_if_failed()
        if not drained:
            raise SinkFailedError(
                [
                    (
                        sub.name,
                        TimeoutError(f"not drained within close_timeout={self._close_timeout}s"),
                    )
                    for sub in self._subs
                    if sub.lossless and not sub._failed
                ]
                or [("bus", TimeoutError("close_timeout expired"))]
            )
        return None

    async def _wait_inline_writes(self, deadline: float) -> None:
        """Let writes that flushers in other tasks run end before the sinks are closed.

        The bus cannot cancel them (they run in their callers' tasks): past
        ``deadline`` it logs them and closes the sinks anyway.
        """
        with anyio.CancelScope(deadline=deadline):
            while self._inline_writes:
                await self._wait_progress()
        for sub in self._subs:
            if sub._inline:
                logger.error(
                    "sink %r is closed while a flush() in another task is still writing to it "
                    "(not done within close_timeout=%ss)",
                    sub.name,
                    self._close_timeout,
                )

    def _count_lost(self) -> None:
        lost = sum(self._head - sub._cursor for sub in self._active if sub.lossless)
        if lost:
            self._lost += lost
            logger.error(
                "event bus closed before its sinks were drained within close_timeout=%ss: "
                "%d events lost",
                self._close_timeout,
                lost,
            )

    async def _drain(self) -> None:
        while any(sub._cursor < self._head for sub in self._active):
            await self._wait_progress()

    async def _close_sinks(self, subs: Sequence[Subscription], deadline: float) -> None:
        async def close(sub: Subscription) -> None:
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    await sub.sink.aclose()
                except BaseException as exc:
                    if isinstance(exc, self._cancelled) and scope.cancel_called:
                        raise
                    self._sink_broke(sub, exc, "closing")
            if scope.cancelled_caught:
                logger.error(
                    "closing sink %r took over close_timeout=%ss and was abandoned",
                    sub.name,
                    self._close_timeout,
                )
                self._mark_failed(sub, TimeoutError("aclose did not finish within close_timeout"))

        if len(subs) == 1:
            await close(subs[0])
            return
        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(close, sub)

    def _sink_broke(self, sub: Subscription, exc: BaseException, doing: str) -> None:
        """Record an exception a sink raised while ``doing`` (closing or writing) for good."""
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            if self._interrupt is None:
                self._interrupt = exc
            logger.error("sink %r raised %r while %s", sub.name, exc, doing)
        else:
            logger.error("sink %r failed while %s: %r", sub.name, doing, exc)
        if isinstance(exc, EventsLostError):
            self._lost += exc.lost
        self._mark_failed(sub, exc)

    def _mark_failed(self, sub: Subscription, exc: BaseException) -> None:
        sub._failed = True
        self._troubled = True
        if sub._error is None or not isinstance(sub._error, EventsLostError):
            sub._error = exc
        self._deactivate(sub)

    # --- subscribing --------------------------------------------------------

    def subscribe(
        self,
        sink: Sink,
        query: EventQuery | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        max_batch: int | None = None,
    ) -> Subscription:
        """Deliver every event published from now on that matches ``query`` to ``sink``.

        The subscription is lossless: its events wait in the bus's bounded
        buffer until ``sink.write`` accepts them, and ``publish`` waits when
        the buffer is full. A write that raises is retried per ``retry``;
        after the last retry the sink is declared failed (see :meth:`flush`).
        The bus closes the sink when it closes.
        """
        return self._subscribe(
            sink, query, name=name, lossless=True, retry=retry, max_batch=max_batch
        )

    def _subscribe(
        self,
        sink: Sink,
        query: EventQuery | None,
        *,
        name: str | None,
        lossless: bool,
        retry: RetryPolicy | None,
        max_batch: int | None,
    ) -> Subscription:
        if self._state in ("closing", "closed"):
            raise BusClosedError("subscribe", self._state)
        for method in ("write", "aclose"):
            if not callable(getattr(sink, method, None)):
                raise TypeError(
                    f"{type(sink).__name__} is not a sink: it has no '{method}' method "
                    "(a sink needs 'async def write(self, events)' and 'async def aclose(self)')"
                )
        if query is not None and not isinstance(query, EventQuery):
            raise TypeError(f"query must be an EventQuery or None, got {type(query).__name__}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        sub = Subscription(
            sink,
            query,
            name=name or sink_name(sink),
            lossless=lossless,
            retry=retry or self._retry,
            max_batch=max_batch or self._max_batch,
            cursor=self._head,
        )
        self._subs.append(sub)
        if not lossless:  # a Listener: publish feeds it directly
            assert isinstance(sink, Listener)
            self._listeners[sub] = sink
            self._feeds = [(sub.query, listener) for sub, listener in self._listeners.items()]
            return sub
        self._active.append(sub)
        if self._state == "running":
            self._start(sub)
        return sub

    def _start(self, sub: Subscription) -> None:
        assert self._tg is not None
        if not sub.lossless:
            return
        sub._done = anyio.Event()
        self._tg.start_soon(self._run, sub, name=f"eventbus sink {sub.name}")

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to a subscription and close its sink.

        A write in progress finishes first; events not yet written to this
        sink are not written to it. Use it to detach a failed sink, after
        which :meth:`flush` no longer reports it.
        """
        if subscription not in self._subs:
            raise ValueError(f"{subscription!r} is not subscribed to this bus")
        subscription._removed = True
        self._subs.remove(subscription)
        if self._listeners.pop(subscription, None) is not None:
            self._feeds = [(sub.query, listener) for sub, listener in self._listeners.items()]
        self._deactivate(subscription)
        if subscription._scope is not None and not subscription._writing:
            subscription._scope.cancel()
        self._wake(subscription)
        if subscription._done is not None:
            with anyio.CancelScope(shield=True):
                await subscription._done.wait()
        with anyio.CancelScope(shield=True):
            await self._close_sinks([subscription], anyio.current_time() + self._close_timeout)

    @asynccontextmanager
    async def listen(
        self, query: EventQuery | None = None, *, buffer: int = 1000
    ) -> AsyncIterator[Listener]:
        """Iterate over live events matching ``query`` as they are published.

        The listener holds at most ``buffer`` events; when it falls behind it
        drops its oldest events and yields a :class:`Gap` saying how many.
        ``publish`` puts each matching event into its buffer at once and never
        waits for it. Leaving the block detaches
        the listener and ends its iteration (after what it had buffered).
        """
        listener = Listener(buffer)
        self._listener_count += 1
        sub = self._subscribe(
            listener,
            query,
            name=f"listener-{self._listener_count}",
            lossless=False,
            retry=RetryPolicy(retries=0),
            max_batch=None,
        )
        try:
            yield listener
        finally:
            if sub in self._subs:
                await self.unsubscribe(sub)

    # --- publishing ----------------------------------------------------------

    def publish_nowait(self, event: Event) -> None:
        """Publish ``event`` without waiting.

        Raises :class:`BusFullError` (publishing nothing) when the buffer is
        full, :class:`EventEncodeError` when the event cannot be encoded,
        :class:`InvalidNameError` when its session id cannot name a directory
        (see :func:`validate_session_id`), and :class:`BusClosedError` when
        the bus is not running. Once it returns,
        the event will reach every subscription (lossless sinks: surely;
        listeners: unless they drop it).
        """
        if self._state != "running":
            raise BusClosedError("publish", self._state)
        if type(event) is not Event:
            _reject(event)
        try:  # checks every field's type first (a session id that is no str included)
            line = _encode(event)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _explain_encode_error(event, exc) from exc
        if event.session_id not in self._valid_sessions:
            self._check_session(event.session_id)
        if self._head - self._floor >= self._capacity:
            raise BusFullError(self._capacity)
        if self._active:  # _append, inlined: this is the hot path
            self._events.append(event)
            self._lines.append(line)
            self._head += 1
            if self._idle and not self._wake_scheduled:
                self._wake_idle_soon()
            if self._feeds:
                self._feed(event)
        else:
            self._append(event, line)

    async def publish(self, event: Event) -> None:
        """Publish ``event``, waiting while the buffer is full (backpressure).

        Returns once the event is accepted, without waiting for sinks (see
        :meth:`flush`) and without yielding to other tasks unless it has to
        wait. Raises like :meth:`publish_nowait`, but never
        :class:`BusFullError`.
        """
        if self._state != "running":
            raise BusClosedError("publish", self._state)
        if type(event) is not Event:
            _reject(event)
        try:  # checks every field's type first (a session id that is no str included)
            line = _encode(event)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _explain_encode_error(event, exc) from exc
        if (
            event.session_id not in self._valid_sessions
            or self._head - self._floor >= self._capacity
            or not self._active
        ):
            await self._accept(event, line)  # checks, waits for space, or no lossless sink
            return
        self._events.append(event)  # _accept, inlined: one coroutine less on the hot path
        self._lines.append(line)
        self._head += 1
        if self._idle and not self._wake_scheduled:
            self._wake_idle_soon()
        if self._feeds:
            self._feed(event)

    async def publish_line(self, event: Event, line: bytes) -> None:
        """Publish ``event``, decoded from ``line``, keeping ``line`` as its encoding.

        For a relay: ``line`` is the JSON the event arrived as, and the caller
        decoded ``event`` from it (:func:`~eventbus.decode_event`), which
        checked most of what publishing checks (field types, ids; JSON holds
        no NaN). Sinks get ``line`` as given instead of an encoding made
        again: a log stores the bytes the producer sent. A ``line`` that is
        not one line of at most :data:`MAX_LINE_BYTES` (it holds a line
        break, as pretty-printed JSON may), or that holds more brackets than
        :data:`MAX_METADATA_DEPTH` (its metadata might nest too deep), is not
        kept: the event is checked and encoded as :meth:`publish` does. That
        ``event`` is what ``line`` decodes to is the caller's promise. Waits
        and raises like :meth:`publish`.
        """
        if self._state != "running":
            raise BusClosedError("publish", self._state)
        if type(event) is not Event:
            _reject(event)
        if (
            type(line) is not bytes
            or b"\n" in line
            or b"\r" in line
            or len(line) > MAX_LINE_BYTES
            # decoding allows deeper metadata than publishing: with this few brackets
            # (strings' included) it cannot be too deep, else the full checks say
            or line.count(b"{") + line.count(b"[") > MAX_METADATA_DEPTH
        ):
            line = encode_event(event)
        await self._accept(event, line)

    async def _accept(self, event: Event, line: bytes) -> None:
        """Take ``event`` (encoded as ``line``), waiting while the buffer is full."""
        if event.session_id not in self._valid_sessions:
            self._check_session(event.session_id)
        while self._head - self._floor >= self._capacity:
            await self._wait_progress()
            if self._state != "running":
                raise BusClosedError("publish", self._state)
        if self._active:  # _append, inlined: this is the hot path
            self._events.append(event)
            self._lines.append(line)
            self._head += 1
            if self._idle and not self._wake_scheduled:
                self._wake_idle_soon()
            if self._feeds:
                self._feed(event)
        else:
            self._append(event, line)

    def publish_threadsafe(self, event: Event) -> None:
        """Publish from a thread other than the bus's event loop thread.

        Blocks the calling thread until the event is accepted (waiting for
        space like :meth:`publish`). Works from any thread, including ones
        not started by anyio; raises :class:`EventBusError` if called from
        the event loop's own thread, where it would deadlock.
        """
        if self._token is None or self._state != "running":
            raise BusClosedError("publish", self._state)
        if threading.get_ident() == self._loop_thread:
            raise EventBusError(
                "publish_threadsafe was called from the event loop thread, where it would "
                "deadlock; use 'await bus.publish(event)' or 'bus.publish_nowait(event)'"
            )
        anyio.from_thread.run(self.publish, event, token=self._token)

    def _check_session(self, session_id: str) -> None:
        validate_session_id(session_id)
        if len(self._valid_sessions) >= _MAX_REMEMBERED_SESSIONS:
            self._valid_sessions.clear()
        self._valid_sessions.add(session_id)

    def _append(self, event: Event, line: bytes) -> None:
        if self._active:
            self._events.append(event)
            self._lines.append(line)
            self._head += 1
            if self._idle and not self._wake_scheduled:
                self._wake_idle_soon()
        else:
            self._head += 1
            self._base = self._floor = self._head
        if self._feeds:
            self._feed(event)

    def _feed(self, event: Event) -> None:
        """Put ``event`` into every listener whose query it matches."""
        for query, listener in self._feeds:
            if query is None or query.matches(event):  # Listener._put, inlined
                listener._buffer.append(event)
                listener._received += 1
                if listener._waiters:
                    listener._waiters.wake()

    async def flush(self) -> None:
        """Wait until every event published before the call is handled by every
        lossless sink (listeners are not waited for).

        "Handled" means the sink's ``write`` returned for it (for a durable
        sink: it is durable) or the query filtered it out. Raises
        :class:`SinkFailedError` naming each failed sink still subscribed, and
        each session a sink failed to write: those events were not written
        to them. Re-raises a ``KeyboardInterrupt`` or ``SystemExit`` that a
        sink raised.

        A lossless sink whose task is idle (waiting for events) gets its
        batch from the flushing task itself, with no task switch (one
        attempt: a failure goes to the sink's task, which retries it per the
        policy); a sink that is busy writes it from its own task. Either way
        one sink never has two writes running, and every call with events
        pending yields once to the other tasks.
        """
        target = self._head
        pending = idle = False
        for sub in self._active:
            if sub._cursor < target:
                pending = True
                if sub._ready is not None and not sub._writing:
                    idle = True
        if pending:
            if idle:
                await self._write_inline(target)
            # Yielding once lets the tasks woken by publish (and listeners'
            # readers) run first, so a quick sink is done without a wake-up
            # of our own, and a flushing loop never starves the others.
            if self._asyncio:
                await _yield_once()  # anyio's checkpoint, without looking up the backend
            else:
                await self._checkpoint()
            while True:  # until no active subscription is behind target
                for sub in self._active:
                    if sub._cursor < target:
                        break
                else:
                    break
                await self._wait_progress()
        if self._troubled or self._interrupt is not None:
            self._raise_if_failed()

    async def _write_inline(self, target: int) -> None:
        """Write, in the calling task, what idle subscriptions hold up to ``target``.

        One attempt per batch: a failure is handed to the subscription's
        task, which retries it as if it had made the attempt. If the caller
        is cancelled meanwhile, the batch stays for the task to write.
        Subscriptions without a filter share one batch; the floor moves once,
        at the end (until then it is lower than it could be: never unsafe).
        Once nothing is left for an idle task, the wake-up ``publish``
        scheduled is called off (asyncio).
        """
        shared: EventBatch | None = None  # the unfiltered batch of shared_start:shared_stop
        shared_start = shared_stop = -1
        moved = False
        try:
            for sub in tuple(self._active):
                while (
                    sub._cursor < target
                    and sub._ready is not None
                    and not sub._writing
                    and sub._handoff is None
                    and not sub._removed
                    and self._state == "running"
                ):
                    cursor = sub._cursor
                    if sub.query is None and not sub._failed_sessions:
                        stop = min(self._head, cursor + sub.max_batch)
                        if shared is None or shared_start != cursor or shared_stop != stop:
                            start = cursor - self._base
                            shared = EventBatch(
                                self._events[start : stop - self._base],
                                self._lines[start : stop - self._base],
                            )
                            shared_start, shared_stop = cursor, stop
                        batch, count, dropped = shared, stop - cursor, 0
                        size = count
                    else:
                        batch, count, dropped = self._take(sub)
                        size = len(batch)
                        if not size:
                            self._delivered(sub, batch, count, dropped)
                            continue
                    sub._writing = sub._inline = True
                    self._inline_writes += 1
                    try:
                        await sub.sink.write(batch)
                    except BaseException as exc:
                        if isinstance(exc, self._cancelled) and self._caller_cancelled():
                            raise  # the flusher was cancelled: the task writes the batch
                        sub._handoff = (batch, exc, count, dropped)
                    else:  # _delivered, with the floor moved once at the end
                        sub._session_dropped += dropped
                        sub._delivered += size
                        sub._cursor += count
                        moved = True
                    finally:
                        self._inline_writes -= 1
                        sub._writing = sub._inline = False
                        if (  # else _release would find nothing to do
                            sub._handoff is not None
                            or sub._cursor < self._head
                            or sub._removed
                            or self._state != "running"
                        ):
                            self._release(sub)
                    if sub._handoff is not None:
                        break
        finally:
            if moved:
                self._update_floor()
                if self._progress:
                    self._progress.wake()
        handle = self._wake_handle
        if handle is not None and self._wake_scheduled:
            head = self._head
            for sub in self._active:
                if sub._ready is not None and sub._cursor < head:
                    break
            else:  # the scheduled _wake_idle would find nothing to do
                handle.cancel()
                self._wake_handle = None
                self._wake_scheduled = False

    def _caller_cancelled(self) -> bool:
        """Whether the current task is being cancelled (not a sink's stray cancellation)."""
        if anyio.current_effective_deadline() == -math.inf:  # by a cancel scope
            return True
        if not self._asyncio:
            return False
        task = asyncio.current_task()  # asyncio: task.cancel() without a scope
        return task is not None and task.cancelling() > 0

    def _release(self, sub: Subscription) -> None:
        """A flusher's write for ``sub`` ended: wake its task if it has work or must exit."""
        sub._writing = sub._inline = False
        if self._progress and self._state != "running":
            self._notify_progress()  # closing may wait for this write
        if sub._ready is not None and (
            sub._handoff is not None
            or sub._cursor < self._head
            or sub._removed
            or self._state != "running"
        ):
            self._wake(sub)

    def _raise_if_failed(self) -> None:
        interrupt = self._interrupt
        if interrupt is not None:
            self._interrupt = None
            raise interrupt
        failures = [
            (sub.name, sub._error or EventBusError("unknown")) for sub in self._subs if sub._failed
        ]
        sessions = [
            (sub.name, session_id, error)
            for sub in self._subs
            for session_id, error in sub._failed_sessions.items()
        ]
        if failures or sessions:
            cause = failures[0][1] if failures else sessions[0][2]
            raise SinkFailedError(failures, sessions) from cause

    # --- introspection ---------------------------------------------------------

    def stats(self) -> BusStats:
        """Return a snapshot of the bus and of each subscription."""
        subs = []
        for sub in self._subs:
            pending = 0 if sub._failed or not sub.lossless else self._head - sub._cursor
            dropped = (self._head - sub._cursor if sub._failed else 0) + sub._session_dropped
            delivered = sub._delivered
            if isinstance(sub.sink, Listener):
                dropped += sub.sink.missed
                delivered = sub.sink.received
            subs.append(
                SubscriptionStats(
                    name=sub.name,
                    kind="sink" if sub.lossless else "listener",
                    delivered=delivered,
                    pending=pending,
                    dropped=dropped,
                    retries=sub._retries,
                    failed=sub._failed,
                    error=repr(sub._error) if sub._error is not None else None,
                    failed_sessions=tuple(sub._failed_sessions),
                )
            )
        return BusStats(
            state=self._state,
            published=self._head,
            buffered=self._head - self._floor,
            capacity=self._capacity,
            lost=self._lost,
            subscriptions=tuple(subs),
        )

    # --- delivery ------------------------------------------------------------------

    async def _run(self, sub: Subscription) -> None:
        assert sub._done is not None
        try:
            # Shielded: cancelling the code around the bus must not interrupt
            # delivery; the bus itself cancels this scope when it gives up.
            with anyio.CancelScope(shield=True) as sub._scope:
                await self._deliver_until_closed(sub)
        finally:
            sub._scope = None
            sub._done.set()

    async def _deliver_until_closed(self, sub: Subscription) -> None:
        while True:
            if sub._inline:  # a flusher is writing for this sink: wait for it
                await self._idle_wait(sub)
                continue
            if sub._removed:
                return
            if sub._handoff is not None:  # a flusher's attempt failed: retry it here
                batch, failure, count, dropped = sub._handoff
                sub._handoff = None
                if not await self._write_again(sub, batch, failure):
                    return
                self._delivered(sub, batch, count, dropped)
                continue
            if sub._cursor >= self._head:
                if self._state == "closed":
                    return
                await self._idle_wait(sub)
                continue
            batch, count, dropped = self._take(sub)
            if batch and not await self._write(sub, batch):
                return
            self._delivered(sub, batch, count, dropped)

    def _take(self, sub: Subscription) -> tuple[EventBatch, int, int]:
        """The next batch for ``sub``: (the batch, events it spans, events filtered out)."""
        start = sub._cursor - self._base
        stop = min(self._head - self._base, start + sub.max_batch)
        batch = EventBatch(self._events[start:stop], self._lines[start:stop])
        if sub.query is not None:
            batch = batch.filter(sub.query.matches)
        dropped = 0
        if sub._failed_sessions:
            kept = batch.filter(functools.partial(_session_not_in, sub._failed_sessions))
            dropped = len(batch) - len(kept)
            batch = kept
        return batch, stop - start, dropped

    def _delivered(self, sub: Subscription, batch: EventBatch, count: int, dropped: int) -> None:
        """``batch`` (spanning ``count`` events) was handled: move ``sub``'s cursor past it."""
        sub._session_dropped += dropped
        sub._delivered += len(batch)
        self._advance(sub, count)

    async def _write(self, sub: Subscription, batch: EventBatch) -> bool:
        """Write ``batch`` to ``sub``'s sink with retries; False if the sink failed for good.

        A :class:`PartialWriteError` after the last retry fails only its
        sessions (the rest of the batch was written: True). An
        :class:`EventsLostError`, ``KeyboardInterrupt`` or ``SystemExit`` is
        not retried. A cancellation exception the bus did not cause (the
        subscription's scope was not cancelled) is a failing write.
        """
        sub._writing = True
        try:
            await sub.sink.write(batch)
        except BaseException as exc:
            if self._abandoned(sub, exc):
                raise
            failure = exc
        else:
            return True  # the usual case: no retry set up
        finally:
            sub._writing = False
        return await self._write_again(sub, batch, failure)

    def _abandoned(self, sub: Subscription, exc: BaseException) -> bool:
        """Whether ``exc`` is the cancellation of a write the bus is abandoning."""
        return isinstance(exc, self._cancelled) and (sub._scope is None or sub._scope.cancel_called)

    async def _write_again(
        self, sub: Subscription, batch: EventBatch, failure: BaseException
    ) -> bool:
        """Retry the write of ``batch`` that failed with ``failure`` (see :meth:`_write`)."""
        delays = sub.retry.delays()
        attempt = 0  # the attempt that raised failure
        while True:
            sub._error = failure
            final = (
                attempt == len(delays)
                or sub._removed
                or isinstance(failure, EventsLostError | KeyboardInterrupt | SystemExit)
            )
            if final:
                if isinstance(failure, PartialWriteError):
                    self._fail_sessions(sub, failure, batch, attempts=attempt + 1)
                    return True
                self._fail(sub, failure, batch, attempts=attempt + 1)
                return False
            logger.warning(
                "sink %r failed to write %d events (attempt %d, retrying in %ss): %r",
                sub.name,
                len(batch),
                attempt + 1,
                delays[attempt],
                failure,
            )
            sub._retries += 1
            await anyio.sleep(delays[attempt])
            attempt += 1
            sub._writing = True
            try:
                await sub.sink.write(batch)
            except BaseException as exc:
                if self._abandoned(sub, exc):
                    raise
                failure = exc
            else:
                sub._error = None
                return True
            finally:
                sub._writing = False

    def _advance(self, sub: Subscription, count: int) -> None:
        was_floor = sub._cursor == self._floor
        sub._cursor += count
        if was_floor:
            self._update_floor()
        if self._progress:
            self._notify_progress()

    def _deactivate(self, sub: Subscription) -> None:
        if sub in self._active:
            self._active.remove(sub)
            self._update_floor()
            self._notify_progress()

    def _update_floor(self) -> None:
        floor = self._head
        for sub in self._active:  # a loop: quicker than min() of a generator for a few
            if sub._cursor < floor:
                floor = sub._cursor
        self._floor = floor
        drop = floor - self._base
        if drop:
            if drop == len(self._events):  # every event handled (the live path: one)
                self._events.clear()
                self._lines.clear()
                self._base = floor
            elif drop >= _TRIM_THRESHOLD:
                del self._events[:drop]
                del self._lines[:drop]
                self._base = floor

    def _fail(
        self, sub: Subscription, exc: BaseException, batch: EventBatch, attempts: int
    ) -> None:
        self._sink_broke(sub, exc, f"writing {len(batch)} events after {attempts} attempts")
        if sub._removed or self._state == "closed":
            return
        first = batch[0]
        self._announce_failure(
            sub,
            exc,
            session_id=first.session_id,
            phase=first.phase,
            attempts=attempts,
            first_undelivered_id=first.id,
            what="failed and stopped receiving events",
        )

    def _fail_sessions(
        self, sub: Subscription, exc: PartialWriteError, batch: EventBatch, attempts: int
    ) -> None:
        """Fail, for ``sub`` only, the sessions ``exc`` names; the others keep flowing."""
        failed = {sid: error for sid, error in exc.failures.items() if sid}
        sub._failed_sessions.update(failed)
        self._troubled = True
        written = sum(1 for event in batch if event.session_id not in failed)
        sub._session_dropped += len(batch) - written
        sub._delivered -= len(batch) - written  # the caller adds the whole batch
        for session_id, error in failed.items():
            logger.error(
                "sink %r failed to write session %r after %d attempts and receives no more "
                "of its events: %r",
                sub.name,
                session_id,
                attempts,
                error,
            )
            if self._state == "closed" or sub._removed:
                continue
            first = next((event for event in batch if event.session_id == session_id), None)
            self._announce_failure(
                sub,
                error,
                session_id=session_id,
                phase=first.phase if first is not None else None,
                attempts=attempts,
                first_undelivered_id=first.id if first is not None else None,
                what=f"failed for session {session_id!r} and stopped receiving its events",
            )

    def _announce_failure(
        self,
        sub: Subscription,
        exc: BaseException,
        *,
        session_id: str,
        phase: str | None,
        attempts: int,
        first_undelivered_id: str | None,
        what: str,
    ) -> None:
        notice = Event(
            event_type=EventType.ERROR,
            session_id=session_id,
            message=f"sink {sub.name!r} {what}: {exc!r}",
            phase=phase,
            metadata={
                "sink": sub.name,
                "error_type": type(exc).__name__,
                "error": str(exc),
                "attempts": attempts,
                "first_undelivered_id": first_undelivered_id,
                "session_failed": session_id if "session" in what else None,
            },
            parent_id=None,
        )
        self._append(notice, encode_event(notice))

    async def _idle_wait(self, sub: Subscription) -> None:
        """Wait, idle, until ``sub`` is woken (events arrived, a flusher is done, closing)."""
        sub._ready = ready = self._signal()
        self._idle += 1
        try:
            await ready.wait()
        finally:
            if sub._ready is ready:  # not woken: cancelled
                sub._ready = None
                self._idle -= 1

    def _wake(self, sub: Subscription) -> None:
        ready = sub._ready
        if ready is not None:
            sub._ready = None
            self._idle -= 1
            ready.set()

    def _wake_idle_soon(self) -> None:
        """Events were appended: wake the idle tasks on the loop's next turn.

        Until then a ``flush`` may write their batches itself (no task switch).
        """
        assert self._call_soon is not None
        self._wake_scheduled = True
        self._wake_handle = self._call_soon(self._wake_idle)

    def _set_waker(self, callback: Callable[[], None]) -> None:
        """``call_soon`` where there is none (trio): :meth:`_run_waker` runs ``_wake_idle``;
        once it is gone (closing), at once."""
        if self._waker is None:
            callback()
        else:
            self._waker.set()

    async def _run_waker(self, scope: anyio.CancelScope) -> None:
        """Not on asyncio: run :meth:`_wake_idle` on the loop's next turn after a publish.

        A task woken by a signal, so that a ``flush`` right after ``publish``
        still finds the sinks idle and writes their batches itself, as on asyncio.
        """
        try:
            with scope:
                while self._waker is not None:
                    await self._waker.wait()
                    self._waker = self._signal()
                    self._wake_idle()
        finally:
            self._waker = None
            self._wake_idle()

    def _wake_idle(self) -> None:
        """Wake every idle task with events to write (not those a flusher writes for)."""
        self._wake_scheduled = False
        self._wake_handle = None
        for sub in self._active:
            if sub._ready is not None and sub._cursor < self._head and not sub._inline:
                self._wake(sub)

    def _wake_all(self) -> None:
        """Wake every idle task (closing, unsubscribing): each sees why and acts."""
        for sub in self._subs:
            self._wake(sub)

    async def _wait_progress(self) -> None:
        """Wait until a cursor moves, a sink is deactivated or the bus closes."""
        await self._progress.wait()

    def _notify_progress(self) -> None:
        if self._progress:
            self._progress.wake()


def _backend_checkpoint() -> Callable[[], Awaitable[None]]:
    """trio's own checkpoint on trio (anyio's looks the backend up on each call)."""
    if running_trio():
        import trio

        return trio.lowlevel.checkpoint
    return anyio.lowlevel.checkpoint


@types.coroutine
def _yield_once() -> Generator[None, None, None]:
    """On asyncio: let the other ready tasks run once (``asyncio.sleep(0)``, one frame less)."""
    yield


def _protected_from_interrupts(
    func: Callable[[anyio.CancelScope], Coroutine[Any, Any, None]],
) -> Callable[[anyio.CancelScope], Coroutine[Any, Any, None]]:
    """On trio, let a Ctrl-C land in the user's code rather than in our waker task."""
    try:
        from trio.lowlevel import enable_ki_protection
    except ImportError:  # pragma: no cover - the waker runs on trio only
        return func
    return enable_ki_protection(func)


def _session_not_in(sessions: Mapping[str, object], event: Event) -> bool:
    return event.session_id not in sessions


def _reject(event: object) -> None:
    if isinstance(event, Event):  # a subclass: fine
        return
    raise TypeError(f"publish takes an Event, got {type(event).__name__}")
