"""`JetStreamSink`: publishes each event to JetStream and returns when all are acknowledged."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import nats.aio.client
import nats.aio.msg

from eventbus import Event, encoded_lines

from ._nats_common import (
    DEFAULT_SERVERS,
    JetStreamError,
    NatsUnavailableError,
    check_prefix,
    connect,
    encode_token,
    ensure_stream,
    require_asyncio,
)

__all__ = ["JetStreamSink", "PublishNotAcknowledgedError"]

_STATUS = "Status"
_NO_RESPONDERS = "503"


class PublishNotAcknowledgedError(JetStreamError):
    """Raised by :meth:`JetStreamSink.write` when events of the batch got no PubAck.

    The server is down or restarting, the connection dropped, or the stream
    refused the message (``reason`` says which). The bus retries the batch
    with the same message ids; the stream stores each id once.
    """

    def __init__(self, missing: int, total: int, stream: str, reason: str) -> None:
        self.missing = missing
        self.total = total
        self.stream = stream
        self.reason = reason
        super().__init__(
            f"{missing} of {total} events were not acknowledged by JetStream stream "
            f"{stream!r}: {reason}; the bus retries the batch (the stream drops the "
            "duplicates), check that nats-server is running with JetStream (-js)"
        )


class _Attempt:
    """One attempt at writing a batch: the acks it waits for and what came back."""

    __slots__ = ("acked", "duplicates", "errors", "failed", "progress", "sent", "waiting")

    def __init__(self, acked: set[int]) -> None:
        self.acked = acked  # indices of the batch that have their PubAck (kept across retries)
        self.waiting: dict[int, int] = {}  # reply number -> index in the batch
        self.sent: deque[tuple[int, float]] = deque()  # (reply number, deadline), in order
        self.errors: dict[int, str] = {}
        self.duplicates = 0
        self.failed: str | None = None  # why the attempt cannot finish (connection lost)
        self.progress = asyncio.Event()


class JetStreamSink:
    """A sink that publishes every event to a NATS JetStream stream (extra ``nats``).

    Each event goes, as its JSON line, to ``{subject_prefix}.{session}.{type}``
    (both tokens encoded with :func:`encode_token`) with the header
    ``Nats-Msg-Id`` set to the event id. Publishes are pipelined: up to
    ``window`` wait for their PubAck at once, each for at most
    ``ack_timeout`` seconds. ``write`` returns only when every event of the
    batch is acknowledged (stored by the stream): that is what a returned
    ``bus.flush()`` means. A retried batch is published again with the same
    ids, minus those already acknowledged, and the stream stores each id once
    within its duplicate window.

    On first use the sink connects and creates the stream (subjects
    ``{subject_prefix}.>``, file storage, ``duplicate_window`` seconds) or
    checks that the existing one fits (:class:`StreamConfigError`
    otherwise). When the server is down or restarting, ``write`` waits up to
    ``ack_timeout`` for the connection and then raises
    :class:`PublishNotAcknowledgedError`: the bus retries, and declares the
    sink failed after its last retry; nothing is dropped silently. The
    client reconnects by itself; acks lost with a dropped connection fail the
    attempt at once instead of hanging.

    nats-py runs on asyncio only: on trio the sink raises
    :class:`AsyncioOnlyError` (when made, or at the first write).

    :param servers: the NATS server URL(s).
    :param stream: the JetStream stream name.
    :param subject_prefix: the first token(s) of every subject.
    :param window: the most publishes waiting for their PubAck at once.
    :param ack_timeout: seconds to wait for each PubAck (and for a lost connection).
    :param duplicate_window: the stream's de-duplication window in seconds when
        the sink creates it, and the least it accepts in an existing stream;
        keep it longer than the bus's retries of one batch may last.
    :param name: the sink's name in the bus's stats.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = DEFAULT_SERVERS,
        *,
        stream: str = "EVENTS",
        subject_prefix: str = "events",
        window: int = 4096,
        ack_timeout: float = 2.0,
        duplicate_window: float = 120.0,
        name: str = "nats",
    ) -> None:
        require_asyncio(type(self).__name__)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not ack_timeout > 0:
            raise ValueError(f"ack_timeout must be > 0, got {ack_timeout}")
        self.servers = servers
        self.stream = stream
        self.subject_prefix = check_prefix(subject_prefix)
        self.window = window
        self.ack_timeout = ack_timeout
        self.duplicate_window = duplicate_window
        self.name = name
        #: Events acknowledged by the stream, and how many of them it already held.
        self.acknowledged = 0
        self.duplicates = 0
        self._nc: nats.aio.client.Client | None = None
        self._js: Any = None
        self._stream_ready = False
        self._inbox = ""
        self._next_reply = 0
        self._attempt: _Attempt | None = None
        self._connected = asyncio.Event()
        self._retry: tuple[tuple[int, str, str], set[int]] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._prefixes: dict[str, str] = {}  # session id -> "{prefix}.{token}."
        self._types: dict[str, str] = {}  # event type -> token

    async def connect(self) -> None:
        """Connect and create (or check) the stream now, instead of at the first write.

        Use it to refuse early, before anything is published, when no server
        is there: it gives up as soon as every server refused the connection,
        or after ``ack_timeout`` seconds without an answer. Once connected,
        the sink reconnects by itself after a drop (see :meth:`write`).

        :raises NatsUnavailableError: no server accepted the connection.
        :raises StreamConfigError: the stream exists and does not fit.
        :raises AsyncioOnlyError: not running on asyncio.
        """
        require_asyncio(type(self).__name__)
        async with self._lock:
            await self._connection(0, fail_fast=True)
            if not self._stream_ready:
                await ensure_stream(
                    self._js, self.stream, self.subject_prefix, self.duplicate_window
                )
                self._stream_ready = True

    async def write(self, events: Sequence[Event]) -> None:
        """Publish the batch; return when JetStream acknowledged every event.

        :raises PublishNotAcknowledgedError: some events got no PubAck in time
            (the bus retries the batch).
        :raises StreamConfigError: the stream exists and does not fit.
        :raises AsyncioOnlyError: the bus runs on trio.
        """
        require_asyncio(type(self).__name__)
        if not events:
            return
        async with self._lock:
            await self._publish(events)

    async def _publish(self, events: Sequence[Event]) -> None:
        nc = await self._connection(len(events))
        if not self._stream_ready:
            await ensure_stream(self._js, self.stream, self.subject_prefix, self.duplicate_window)
            self._stream_ready = True
        key = (len(events), events[0].id, events[-1].id)
        acked = self._retry[1] if self._retry is not None and self._retry[0] == key else set()
        self._retry = (key, acked)
        attempt = self._attempt = _Attempt(acked)
        lines = encoded_lines(events)
        loop = asyncio.get_running_loop()
        publish = nc.publish
        inbox = self._inbox
        waiting = attempt.waiting
        sent = attempt.sent
        try:
            for index, event in enumerate(events):
                if index in acked:
                    continue
                while len(waiting) >= self.window:
                    await self._wait(attempt, loop)
                number = self._next_reply
                self._next_reply = number + 1
                waiting[number] = index
                sent.append((number, loop.time() + self.ack_timeout))
                await publish(
                    self._subject(event),
                    lines[index],
                    reply=f"{inbox}{number}",
                    headers={"Nats-Msg-Id": event.id},
                )
                if attempt.failed is not None:
                    break
            while waiting and attempt.failed is None:
                await self._wait(attempt, loop)
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            attempt.failed = f"the connection failed ({exc!r})"
        finally:
            self._attempt = None
        self.duplicates += attempt.duplicates
        missing = len(events) - len(acked)
        if attempt.failed is not None or attempt.errors:
            reason = attempt.failed or "; ".join(sorted(set(attempt.errors.values())))
            raise PublishNotAcknowledgedError(missing, len(events), self.stream, reason)
        self.acknowledged += len(events)
        self._retry = None

    def _subject(self, event: Event) -> str:
        start = self._prefixes.get(event.session_id)
        if start is None:
            if len(self._prefixes) >= 4096:
                self._prefixes.clear()
            start = f"{self.subject_prefix}.{encode_token(event.session_id)}."
            self._prefixes[event.session_id] = start
        kind: str = event.event_type.value
        token = self._types.get(kind)
        if token is None:
            token = self._types[kind] = encode_token(kind)
        return start + token

    async def _wait(self, attempt: _Attempt, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for an ack, or fail the attempt when the oldest outstanding one is late."""
        sent = attempt.sent
        while sent and sent[0][0] not in attempt.waiting:
            sent.popleft()
        if not sent or attempt.failed is not None:
            return
        attempt.progress.clear()
        try:
            async with asyncio.timeout_at(sent[0][1]):
                await attempt.progress.wait()
        except TimeoutError:
            attempt.failed = (
                f"no PubAck within {self.ack_timeout:g} s for {len(attempt.waiting)} of them"
            )

    async def _on_ack(self, msg: nats.aio.msg.Msg) -> None:
        attempt = self._attempt
        if attempt is None:
            return  # a late ack for an attempt that already failed
        try:
            number = int(msg.subject[len(self._inbox) :])
        except ValueError:
            return
        index = attempt.waiting.pop(number, None)
        if index is None:
            return
        data = msg.data
        headers = msg.headers
        if headers and headers.get(_STATUS) == _NO_RESPONDERS:
            attempt.errors[index] = (
                "no JetStream stream answered (503: the server is starting, or the stream "
                "was deleted and is created again on the retry)"
            )
            self._stream_ready = False  # deleted under us? check (and create) it again
        elif b'"error"' in data:
            attempt.errors[index] = data.decode(errors="replace")
        else:
            attempt.acked.add(index)
            if b'"duplicate"' in data and b"true" in data:
                attempt.duplicates += 1
        attempt.progress.set()

    async def _connection(self, total: int, *, fail_fast: bool = False) -> nats.aio.client.Client:
        if self._closed:
            raise JetStreamError(f"{self.name}: the sink is closed; create a new JetStreamSink")
        nc = self._nc
        if nc is None or nc.is_closed:
            try:
                nc = await connect(
                    self.servers,
                    name=f"eventbus {self.name}",
                    connect_timeout=self.ack_timeout,
                    on_disconnect=self._on_disconnect,
                    on_reconnect=self._on_reconnect,
                    give_up_after=self.ack_timeout,
                    fail_fast=fail_fast,
                )
            except NatsUnavailableError as exc:
                if fail_fast:
                    raise
                raise PublishNotAcknowledgedError(
                    total, total, self.stream, f"cannot connect to {self.servers} ({exc.reason})"
                ) from exc
            self._nc = nc
            self._js = nc.jetstream()
            self._inbox = nc.new_inbox() + "."
            await nc.subscribe(self._inbox + "*", cb=self._on_ack)
            self._connected.set()
        if not nc.is_connected:
            try:
                async with asyncio.timeout(self.ack_timeout):
                    await self._connected.wait()
            except TimeoutError:
                raise PublishNotAcknowledgedError(
                    total,
                    total,
                    self.stream,
                    f"the connection to {self.servers} is down and did not come back "
                    f"within {self.ack_timeout:g} s",
                ) from None
        return nc

    async def _on_disconnect(self) -> None:
        self._connected.clear()
        attempt = self._attempt
        if attempt is not None and attempt.waiting:
            attempt.failed = "the connection to the server dropped before the PubAcks came"
            attempt.progress.set()

    async def _on_reconnect(self) -> None:
        self._connected.set()

    async def aclose(self) -> None:
        """Close the connection (every acknowledged event is already stored)."""
        self._closed = True
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            async with asyncio.timeout(self.ack_timeout):
                await nc.close()

    def __repr__(self) -> str:
        return f"JetStreamSink({self.servers!r}, stream={self.stream!r})"
