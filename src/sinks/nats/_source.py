"""`JetStreamSource`: consumes a stream into a local bus, acking after its sinks flushed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Self

import anyio
import msgspec
import nats.aio.client
import nats.aio.msg
import nats.errors
import nats.js.errors
import nats.protocol.parser
from anyio.streams.memory import MemoryObjectReceiveStream
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventbus import (
    MAX_LINE_BYTES,
    Event,
    EventBus,
    EventDecodeError,
    EventEncodeError,
    EventType,
    InvalidNameError,
    as_utc,
    decode_event,
    decode_events,
    validate_session_id,
)

from ._common import (
    DEFAULT_SERVERS,
    JetStreamError,
    check_prefix,
    connect,
    encode_token,
    ensure_stream,
    require_asyncio,
)

__all__ = ["ConsumerConfigError", "JetStreamSource", "SourceStats", "Start"]

_logger = logging.getLogger("eventbus.nats")

_MAX_VALID_SESSIONS = 4096  # session ids remembered as valid (then forgotten at once)
_ACK = b"+ACK"  # the payload of an ack (JetStream's AckAck)
_AWAITING_CONTROL_LINE = nats.protocol.parser.AWAITING_CONTROL_LINE
_AWAITING_MSG_PAYLOAD = nats.protocol.parser.AWAITING_MSG_PAYLOAD

#: Where a new consumer starts: every message, only new ones, a stream sequence, or a time.
Start = Literal["all", "new"] | int | datetime


class ConsumerConfigError(JetStreamError):
    """Raised when the durable consumer exists with another filter than the one asked for."""

    def __init__(self, stream: str, durable: str, has: str, wants: str) -> None:
        self.stream = stream
        self.durable = durable
        super().__init__(
            f"durable consumer {durable!r} of stream {stream!r} filters {has!r}, not "
            f"{wants!r}; pass another durable name, or delete it with "
            f"'nats consumer rm {stream} {durable}' to start it again"
        )


class SourceStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a :class:`JetStreamSource` did so far.

    ``received``: messages fetched (redeliveries included); ``published``:
    events put on the bus; ``duplicates``: messages dropped because their
    event id was seen already; ``filtered``: events not matching ``sessions``
    or ``types``; ``invalid``: messages that are not events, or events
    publishing refuses (ids with control characters, JSON nested too deep,
    metadata over ``MAX_METADATA_DEPTH``...): logged, acked and dropped;
    ``acks``: acks sent (with ``AckPolicy.ALL``, one per flush of the bus,
    however many batches it covered).
    """

    received: int
    published: int
    duplicates: int
    filtered: int
    invalid: int
    acks: int = 0


class _Message(NamedTuple):
    """A message as the server sent it: what the source needs of it, nothing parsed."""

    subject: bytes
    reply: bytes  # the subject an ack goes to
    data: bytes
    status: bytes | None  # a status message's code (b"408": a pull request expired), else None


class _Published(NamedTuple):
    """A batch published on the bus, waiting for its flush and its ack."""

    replies: list[bytes]  # the ack subjects of the batch's messages
    events: list[Event]


def _decode_all(messages: Sequence[_Message]) -> list[Event | EventDecodeError]:
    """Each message's event (as :func:`decode_event` decodes it), or why it is not one.

    The payloads are decoded at once, as JSON lines, when each is one line
    (the common case), which costs less than one decode per message. When
    that fails, or when some payload lacks an id (the ids derived for such
    lines depend on their offset), each is decoded on its own.
    """
    payloads = [msg.data for msg in messages]
    if len(payloads) > 1 and max(map(len, payloads)) <= MAX_LINE_BYTES:
        joined = b"\n".join(payloads)
        if joined.count(b"\n") == len(payloads) - 1:
            try:
                events = decode_events(joined)
            except EventDecodeError:
                pass  # one of them is not an event: each on its own says which
            else:
                if len(events) == len(payloads) and all(
                    event.id.encode() in payload
                    for event, payload in zip(events, payloads, strict=True)
                ):
                    return list(events)
    decoded: list[Event | EventDecodeError] = []
    for payload in payloads:
        try:
            decoded.append(decode_event(payload))
        except EventDecodeError as exc:
            decoded.append(exc)
    return decoded


HOOKED_RELEASES: Final = ("2.16",)
"""The nats-py releases (major.minor) whose private parser hooks the source takes over."""


@functools.cache
def hooks_known() -> bool:
    """Whether the installed nats-py is one of :data:`HOOKED_RELEASES`."""
    try:
        release = importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        return False
    return ".".join(release.split(".")[:2]) in HOOKED_RELEASES


def _fast_parse(
    parser: nats.protocol.parser.Parser,
    sid: int,
    take: Callable[[bytes, bytes, bytes, bytes | None], None],
    process: Callable[[int, bytes, bytes, bytes, bytes | None], Awaitable[None]],
) -> Callable[[bytes], Coroutine[Any, Any, None]]:
    """A ``parse`` for nats-py's ``parser`` that cuts messages from the bytes read itself.

    nats-py's parser matches two regular expressions per message and awaits
    a coroutine for each. This one splits each ``MSG``/``HMSG`` control line
    on spaces and hands each message of subscription ``sid`` to ``take``
    (others to ``process``, nats-py's ``_process_msg``, in order); a message
    cut by the end of a read waits in the parser's own state for the next.
    Whatever else comes (``PING``, ``+OK``, ``-ERR``, ``INFO``, a line it does
    not expect) is left, from there on, to nats-py's own ``parse``, which
    keeps its protocol handling and its errors.
    """
    original = parser.parse

    async def parse(data: bytes = b"") -> None:
        buf = parser.buf
        buf.extend(data)
        if parser.state == _AWAITING_MSG_PAYLOAD:  # the rest of a message cut by a read
            needed, header_size = parser.needed, parser.header_needed
            if len(buf) < needed + 2:
                return
            headers = bytes(buf[:header_size]) if header_size else None
            payload = bytes(buf[header_size:needed])
            del buf[: needed + 2]
            parser.header_needed = 0
            parser.state = _AWAITING_CONTROL_LINE
            arg = parser.msg_arg
            if arg["sid"] == sid:
                take(arg["subject"], arg["reply"], payload, headers)
            else:
                await process(arg["sid"], arg["subject"], arg["reply"], payload, headers)
        pos, size = 0, len(buf)
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break  # the line is not all here
            if buf.startswith(b"HMSG ", pos):
                fields = bytes(buf[pos + 5 : end]).split(b" ")
                if len(fields) == 5:
                    subject, msg_sid, reply, header_bytes, total = fields
                elif len(fields) == 4:
                    subject, msg_sid, header_bytes, total = fields
                    reply = b""
                else:
                    break
            elif buf.startswith(b"MSG ", pos):
                fields = bytes(buf[pos + 4 : end]).split(b" ")
                header_bytes = b"0"
                if len(fields) == 4:
                    subject, msg_sid, reply, total = fields
                elif len(fields) == 3:
                    subject, msg_sid, total = fields
                    reply = b""
                else:
                    break
            else:
                break
            if not (msg_sid.isdigit() and header_bytes.isdigit() and total.isdigit()):
                break
            start = end + 2
            header_size, needed = int(header_bytes), int(total)
            if start + needed + 2 > size:  # cut by the end of the read: wait for the rest
                parser.msg_arg.update(subject=subject, sid=int(msg_sid), reply=reply)
                parser.needed, parser.header_needed = needed, header_size
                parser.state = _AWAITING_MSG_PAYLOAD
                pos = start
                break
            headers = bytes(buf[start : start + header_size]) if header_size else None
            payload = bytes(buf[start + header_size : start + needed])
            pos = start + needed + 2
            if int(msg_sid) == sid:
                take(subject, reply, payload, headers)
            else:  # another subscription's: nats-py's way, after what came before it
                del buf[:pos]
                pos, size = 0, len(buf)
                await process(int(msg_sid), subject, reply, payload, headers)
        if pos:
            del buf[:pos]
        if buf and parser.state == _AWAITING_CONTROL_LINE:
            await original()

    return parse


def _status(headers: bytes | None) -> bytes | None:
    """The status code of a message's header block (``NATS/1.0 408 ...``), or None."""
    if headers is None or headers[8:9] != b" ":  # b"NATS/1.0\r\n...": no status
        return None
    return headers[9:12]


class JetStreamSource:
    """Consumes a JetStream stream into a local bus (extra ``nats``).

    ::

        async with JetStreamSource(servers, durable="aggregator") as source:
            await source.run(bus)

    Each message is decoded into an :class:`~eventbus.Event` (unknown types
    kept) and published on ``bus``; after each batch ``run`` awaits
    ``bus.flush()`` and only then acks the batch, so a message is
    acknowledged once every lossless sink of the bus holds it. A durable
    consumer keeps up to two pull requests of ``batch`` messages open, so
    the next batch arrives while this one is written; a batch is what
    arrived meanwhile (up to ``batch``), so a trickle is not held back to
    fill one. Batches are published while earlier ones are flushed: one
    ``flush`` covers every batch published meanwhile, and so does one ack
    (a consumer this class creates acks with ``AckPolicy.ALL``: the last
    message's ack acks all before it; one made with explicit acks gets one
    ack per message). An ack therefore means: every lossless sink of the
    bus wrote the message's event (durably, for durable sinks), or the
    event was dropped (a duplicate, filtered out, or not an event). The
    pulled messages skip nats-py's ``Msg`` objects and header parsing
    (:attr:`raw_messages` says whether the nats-py in use allows it).

    **Durable** (``durable="name"``): the server remembers the position;
    a restarted source resumes after the last acked message. Messages
    fetched but not acked before a crash are delivered again after
    ``ack_wait`` seconds. **No duplicates**: an event whose id was seen in
    the last ``remember`` events is acked and dropped; seed that memory
    with :meth:`remember` from what the local sinks already hold (``eventbus
    relay`` reads the last ``batch`` events of every log), since the events
    of the last batch before a crash may be in the sinks but not acked.
    **Ordered** (``durable=None``): an ephemeral, ordered consumer for a live
    view; nothing is acked and nothing is kept by the server.

    ``start`` (for a new consumer only; a durable one keeps its position):
    ``"all"``, ``"new"``, a stream sequence number, or a datetime (naive =
    UTC). ``sessions`` and ``types`` restrict what is consumed; with one
    session and/or one type the server filters, otherwise the source does.

    nats-py runs on asyncio only: on trio, :class:`AsyncioOnlyError`.

    :param servers: the NATS server URL(s).
    :param stream: the stream (created like :class:`JetStreamSink` does if missing).
    :param durable: the durable consumer's name, or None for an ordered one.
    :param subject_prefix: the subjects' first token(s), as the sink's.
    :param sessions: consume only these sessions (None: all).
    :param types: consume only these event types (None: all).
    :param start: where a new consumer starts.
    :param batch: the most messages taken and published as one batch; a
        consumer made here lets the server deliver up to ``4 * batch``
        messages before they are acked.
    :param ack_wait: seconds before the server redelivers an unacked message.
    :param remember: how many recent event ids are kept to drop redeliveries.
    :param fetch_timeout: seconds a pull request (or an ordered fetch) waits for messages.
    :param duplicate_window: as :class:`JetStreamSink`'s, when creating the stream.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = DEFAULT_SERVERS,
        *,
        stream: str = "EVENTS",
        durable: str | None = "aggregator",
        subject_prefix: str = "events",
        sessions: Iterable[str] | None = None,
        types: Iterable[str | EventType] | None = None,
        start: Start = "all",
        batch: int = 1024,
        ack_wait: float = 30.0,
        remember: int = 100_000,
        fetch_timeout: float = 1.0,
        duplicate_window: float = 120.0,
    ) -> None:
        require_asyncio(type(self).__name__)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if remember < batch:
            raise ValueError(f"remember must be >= batch ({batch}), got {remember}")
        if not (isinstance(start, int | datetime) or start in ("all", "new")):
            raise ValueError(
                f"start must be 'all', 'new', a stream sequence or a datetime, got {start!r}"
            )
        if isinstance(start, int) and start < 1:
            raise ValueError(f"a start sequence must be >= 1, got {start}")
        self.servers = servers
        self.stream = stream
        self.durable = durable
        self.subject_prefix = check_prefix(subject_prefix)
        self.sessions = None if sessions is None else frozenset(sessions)
        self.types = None if types is None else frozenset(EventType(t) for t in types)
        self.start = start
        self.batch = batch
        self.ack_wait = ack_wait
        self.fetch_timeout = fetch_timeout
        self.duplicate_window = duplicate_window
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._nc: nats.aio.client.Client | None = None
        self._sub: Any = None
        self._received = self._published = self._duplicates = 0
        self._filtered = self._invalid = self._acks = 0
        self._last_sequence = 0  # consumer sequence of the last message handled (ordered)
        # Durable: the messages pushed for our pull requests, and those requests.
        self._js: Any = None
        self._arrived: deque[_Message] = deque()
        #: Whether the pulled messages skip nats-py's ``Msg`` (set on entering; see _take_over).
        self.raw_messages = False
        #: Whether they are also cut from the bytes read without nats-py's parser (see _fast_parse).
        self.fast_parse = False
        self._wakeup = asyncio.Event()
        self._requests: deque[list[float]] = deque()  # [messages still due, deadline], oldest first
        self._next_subject = ""
        self._inbox = ""
        self._ack_all = False
        self._in_flight: set[str] = set()  # ids published, not flushed yet
        self._valid_sessions: set[str] = set()  # session ids that passed validate_session_id
        self._unsettled = 0  # batches published, not flushed and acked yet
        self._settled: anyio.Event | None = None  # set while nothing waits to be settled

    @property
    def filter_subject(self) -> str:
        """The subject the consumer filters on (the server's part of the filtering)."""
        session = "*"
        if self.sessions is not None and len(self.sessions) == 1:
            session = encode_token(next(iter(self.sessions)))
        kind = "*"
        if self.types is not None and len(self.types) == 1:
            kind = encode_token(next(iter(self.types)).value)
        if session == kind == "*":
            return f"{self.subject_prefix}.>"
        return f"{self.subject_prefix}.{session}.{kind}"

    def stats(self) -> SourceStats:
        """Return what the source did so far."""
        return SourceStats(
            received=self._received,
            published=self._published,
            duplicates=self._duplicates,
            filtered=self._filtered,
            invalid=self._invalid,
            acks=self._acks,
        )

    def remember(self, event_ids: Iterable[str]) -> None:
        """Treat these event ids as seen (e.g. the last events of the local logs)."""
        seen = self._seen
        for event_id in event_ids:
            seen[event_id] = None
            seen.move_to_end(event_id)
        while len(seen) > self._remember:
            seen.popitem(last=False)

    def _consumer_config(self) -> ConsumerConfig:
        if self.durable is None:  # ordered: nats-py sets the rest
            config = ConsumerConfig()
        else:
            config = ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=self.ack_wait)
            config.max_ack_pending = 4 * self.batch
        start = self.start
        if start == "new":
            config.deliver_policy = DeliverPolicy.NEW
        elif isinstance(start, datetime):
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = as_utc(start)
        elif isinstance(start, int):
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
        return config

    async def __aenter__(self) -> Self:
        require_asyncio(type(self).__name__)
        try:
            async with asyncio.timeout(self.fetch_timeout + 5):
                nc = await connect(self.servers, name="eventbus source", connect_timeout=5)
        except Exception as exc:
            raise JetStreamError(
                f"cannot connect to NATS at {self.servers} ({exc!r}); start nats-server "
                "with JetStream (nats-server -js) or pass the right URL"
            ) from exc
        self._nc = nc
        try:
            js = nc.jetstream()
            await ensure_stream(js, self.stream, self.subject_prefix, self.duplicate_window)
            subject = self.filter_subject
            config = self._consumer_config()
            if self.durable is None:
                self._sub = await js.subscribe(
                    subject,
                    stream=self.stream,
                    ordered_consumer=True,
                    config=config,
                    deliver_policy=config.deliver_policy,
                )
            else:
                try:
                    info = await js.consumer_info(self.stream, self.durable)
                except nats.js.errors.NotFoundError:
                    config.durable_name = self.durable
                    config.filter_subject = subject
                    info = await js.add_consumer(self.stream, config=config)
                else:
                    has = info.config.filter_subject or ">"
                    if has != subject:
                        raise ConsumerConfigError(self.stream, self.durable, has, subject)
                self._ack_all = info.config.ack_policy == AckPolicy.ALL
                self._js = js
                self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
                self._inbox = nc.new_inbox()
                self._sub = await nc.subscribe(self._inbox, cb=self._arrive)
                self.raw_messages = self._take_over(nc, self._sub)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            async with asyncio.timeout(5):
                await nc.close()

    async def run(self, bus: EventBus, *, until_idle: bool = False) -> None:
        """Publish the stream's events on ``bus`` until cancelled.

        :param until_idle: return once nothing is left to consume (every
            message delivered and acked) instead of waiting for more.
        :raises SinkFailedError: a lossless sink of ``bus`` failed; the batch
            was not acked, so it is delivered again on the next run.
        """
        require_asyncio(type(self).__name__)
        if self._nc is None:
            raise JetStreamError("use the source as 'async with JetStreamSource(...) as source'")
        # Two stages: this task fetches and publishes batches while the other flushes
        # and acks those before them; one flush covers every batch waiting, one ack
        # acks them with AckPolicy.ALL. A slow flush (fsyncs) never stops the
        # publishing of what arrives meanwhile, however small its batches: what
        # bounds them is the server, which delivers at most max_ack_pending messages
        # (4 x batch for the consumers made here) before an ack, so at most that
        # many batches wait.
        send, receive = anyio.create_memory_object_stream[_Published](4 * self.batch)
        self._settled = anyio.Event()
        self._settled.set()
        try:
            async with anyio.create_task_group() as group, send:
                group.start_soon(self._settle_all, bus, receive)
                while True:
                    messages = await self._next_batch()
                    if messages:
                        self._unsettled += 1
                        self._settled = anyio.Event()
                        await send.send(await self._publish(bus, messages))
                    if until_idle and len(messages) < self.batch and not self._more(messages):
                        await self._settled.wait()  # acked: else the server counts it pending
                        if await self._idle():
                            group.cancel_scope.cancel()
                            return
        except BaseExceptionGroup as group:  # one stage failed: its error, as it is
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _settle_all(
        self, bus: EventBus, receive: MemoryObjectReceiveStream[_Published]
    ) -> None:
        async with receive:
            async for published in receive:
                batches = [published]
                while True:  # what was published meanwhile: one flush covers it all
                    try:
                        batches.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self._settle(bus, batches)
                self._unsettled -= len(batches)
                if not self._unsettled and self._settled is not None:
                    self._settled.set()

    async def _arrive(self, msg: nats.aio.msg.Msg) -> None:
        """Take a message pushed for a pull request (nats-py calls this in order)."""
        headers = msg.headers
        status = headers.get("Status") if headers else None
        self._arrived.append(
            _Message(
                msg.subject.encode(),
                msg.reply.encode(),
                msg.data,
                None if status is None else status.encode(),
            )
        )
        self._wakeup.set()

    def _take_over(self, nc: nats.aio.client.Client, sub: Any) -> bool:
        """Take the messages of ``sub`` from nats-py's parser as they are read.

        nats-py turns each message into a ``Msg`` (its headers parsed into a
        dict), puts it on the subscription's queue, and a task of its own
        calls :meth:`_arrive`: most of a relay's CPU. Messages of our pull
        requests only need their reply subject, their payload and, for the
        server's status messages, the status code, so they go straight to
        ``_arrived``. This hooks ``Client._process_msg(sid, subject, reply,
        data, headers)``, called by nats-py's parser for every message, and
        its parser's ``parse`` (see :func:`_fast_parse`). Both are private to
        nats-py: only with a release they were checked against
        (:data:`HOOKED_RELEASES`) are they hooked; with another, or one that
        has no such method, messages take the callback path (slower, the same
        messages). Returns whether the hook is in place.
        """
        process = getattr(nc, "_process_msg", None)
        sid = getattr(sub, "_id", None)
        if not hooks_known() or process is None or not isinstance(sid, int):
            return False
        arrived, wakeup = self._arrived, self._wakeup

        async def process_msg(
            msg_sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if msg_sid != sid:
                await process(msg_sid, subject, reply, data, headers)
                return
            arrived.append(_Message(subject, reply, data, _status(headers)))
            if not wakeup.is_set():
                wakeup.set()

        nc._process_msg = process_msg  # type: ignore[method-assign,assignment]

        def take(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            arrived.append(_Message(subject, reply, data, _status(headers)))
            if not wakeup.is_set():
                wakeup.set()

        parser = getattr(nc, "_ps", None)
        if isinstance(parser, nats.protocol.parser.Parser):
            parser.parse = _fast_parse(parser, sid, take, process_msg)  # type: ignore[method-assign,assignment]
            self.fast_parse = True
        return True

    async def _request_more(self) -> None:
        """Keep a batch or more asked for: up to two pull requests open at once."""
        requests, now = self._requests, time.monotonic()
        while requests and requests[0][1] < now:  # lost with a connection: nothing comes
            requests.popleft()
        if len(requests) >= 2 or sum(r[0] for r in requests) >= self.batch:
            return
        expires = self.fetch_timeout
        request = {"batch": self.batch, "expires": int(expires * 1e9)}
        assert self._nc is not None
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        requests.append([self.batch, now + expires + 1.0])

    def _take_arrived(self) -> list[_Message]:
        """The messages that arrived (up to a batch), minus the servers' status messages."""
        arrived, requests = self._arrived, self._requests
        messages: list[_Message] = []
        while arrived and len(messages) < self.batch:
            msg = arrived.popleft()
            status = msg.status
            if status is None:
                messages.append(msg)
                if requests:
                    requests[0][0] -= 1
                    if requests[0][0] <= 0:
                        requests.popleft()
            elif status != b"100" and requests:  # 408 expired, 409 ...: the oldest is done
                requests.popleft()
        if not arrived:
            self._wakeup.clear()
        return messages

    async def _pull(self) -> list[_Message]:
        await self._request_more()
        if not self._arrived:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.fetch_timeout):
                    await self._wakeup.wait()
        messages = self._take_arrived()
        await self._request_more()  # the next batch comes while this one is written
        return messages

    async def _next_batch(self) -> list[_Message]:
        sub = self._sub
        try:
            if self.durable is not None:
                return await self._pull()
            messages = [self._ordered(await sub.next_msg(timeout=self.fetch_timeout))]
            while len(messages) < self.batch and sub.pending_msgs > 0:
                messages.append(self._ordered(await sub.next_msg(timeout=self.fetch_timeout)))
            return messages
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError):
            return []
        except nats.errors.Error as exc:  # e.g. a pull request while reconnecting
            _logger.info("pull from %s failed, retrying: %r", self.stream, exc)
            return []
        except nats.js.errors.APIError as exc:  # e.g. the server restarting: try again
            _logger.info("fetch from %s failed, retrying: %r", self.stream, exc)
            return []

    def _ordered(self, msg: nats.aio.msg.Msg) -> _Message:
        """A message of the ordered consumer, its consumer sequence noted."""
        self._last_sequence = msg.metadata.sequence.consumer
        return _Message(msg.subject.encode(), msg.reply.encode(), msg.data, None)

    def _more(self, messages: list[_Message]) -> bool:
        """Whether more messages are surely on their way after ``messages``.

        The reply subject of a JetStream message says how many messages the
        consumer still had pending when it was sent: a short batch is not the
        end of the stream when that is not zero. In doubt, False (``run``
        then asks the server).
        """
        if self._arrived:
            return True
        if not messages:
            return False
        try:
            metadata = nats.aio.msg.Msg.Metadata._from_reply(messages[-1].reply.decode())
        except (nats.errors.Error, ValueError, IndexError):
            return False
        return metadata.num_pending > 0

    async def _idle(self) -> bool:
        try:
            if self.durable is not None:
                if self._arrived:
                    return False
                info = await self._js.consumer_info(self.stream, self.durable)
            else:
                info = await self._sub.consumer_info()
        except (nats.errors.Error, TimeoutError):
            return False
        if self.durable is None:  # pushed messages may still be on their way
            delivered = info.delivered.consumer_seq if info.delivered else 0
            return bool(info.num_pending == 0 and self._last_sequence >= delivered)
        return bool(info.num_pending == 0 and (info.num_ack_pending or 0) == 0)

    async def _publish(self, bus: EventBus, messages: list[_Message]) -> _Published:
        """Publish the batch's new events on ``bus`` (not flushed yet)."""
        self._received += len(messages)
        fresh: list[tuple[Event, bytes]] = []
        batch_ids: set[str] = set()
        seen, valid_sessions = self._seen, self._valid_sessions
        for msg, decoded in zip(messages, _decode_all(messages), strict=True):
            try:
                if isinstance(decoded, EventDecodeError):
                    raise decoded
                event = decoded
                if event.session_id not in valid_sessions:
                    validate_session_id(event.session_id)
                    if len(valid_sessions) >= _MAX_VALID_SESSIONS:
                        valid_sessions.clear()
                    valid_sessions.add(event.session_id)
            except (EventDecodeError, InvalidNameError) as exc:
                _logger.warning(
                    "dropping a message of %s that is not an event: %s",
                    msg.subject.decode(errors="replace"),
                    exc,
                )
                self._invalid += 1
                continue
            if event.id in seen or event.id in batch_ids or event.id in self._in_flight:
                self._duplicates += 1
            elif (self.sessions is not None and event.session_id not in self.sessions) or (
                self.types is not None and event.event_type not in self.types
            ):
                self._filtered += 1
            else:
                batch_ids.add(event.id)
                fresh.append((event, msg.data))
        published: list[Event] = []
        for event, data in fresh:
            try:
                # the payload is the line (as JetStreamSink sends it): stored as received,
                # not encoded again; one without its id (derived here) is encoded again
                if b'"' + event.id.encode() + b'"' in data:
                    await bus.publish_line(event, data)
                else:
                    await bus.publish(event)
            except EventEncodeError as exc:  # decodes, but publishing refuses it (too deep...)
                _logger.warning(
                    "dropping an event of %s that cannot be published: %s", self.stream, exc
                )
                self._invalid += 1
            else:
                published.append(event)
        self._in_flight.update(event.id for event in published)
        return _Published([msg.reply for msg in messages], published)

    async def _settle(self, bus: EventBus, batches: list[_Published]) -> None:
        """Flush the batches' events (one ``flush`` for all), then ack their messages."""
        try:
            await bus.flush()
        except BaseException:
            self._in_flight.clear()  # not written: taken again if delivered again
            raise
        for batch in batches:
            published = batch.events
            self._in_flight.difference_update(event.id for event in published)
            self._published += len(published)
            self.remember(event.id for event in published)
        if self.durable is None:
            return
        if self._ack_all:  # the last message's ack acks every one before it
            replies = batches[-1].replies[-1:]
        else:
            replies = [reply for batch in batches for reply in batch.replies]
        nc = self._nc
        assert nc is not None
        try:
            for reply in replies:
                await nc.publish(reply.decode(), _ACK)
                self._acks += 1
            await nc.flush(timeout=max(1, round(self.ack_wait)))
        except (nats.errors.Error, TimeoutError) as exc:  # redelivered, then dropped by id
            _logger.info(
                "acks to %s may be lost (%r); they come back and are dropped", self.stream, exc
            )
