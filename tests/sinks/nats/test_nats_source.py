"""JetStreamSource against a real nats-server: every event once, acked only after the flush."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.protocol.parser
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from _nats_servers import machine_nats, machine_stream, stream_name
from eventbus import (
    MAX_METADATA_DEPTH,
    Event,
    EventBatch,
    EventBus,
    EventType,
    MemorySink,
    RetryPolicy,
    SinkFailedError,
    decode_event,
    encode_event,
)
from factories import events as _events
from sinks.jsonl import JsonlSink
from sinks.nats import ConsumerConfigError, JetStreamSink, JetStreamSource
from sinks.nats._source import _fast_parse, hooks_known

__all__ = ["machine_nats", "machine_stream", "stream_name"]  # fixtures, imported for pytest

pytestmark = pytest.mark.service


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio only (test_nats_sink.py tests the error on trio)."""
    return "asyncio"


async def _publish(url: str, stream: str, events: Sequence[Event]) -> None:
    sink = JetStreamSink(url, stream=stream, subject_prefix=stream.lower())
    try:
        await sink.write(EventBatch(events))
    finally:
        await sink.aclose()


async def _consume(url: str, stream: str, sink: MemorySink, **options: object) -> JetStreamSource:
    async with EventBus(retry=RetryPolicy(retries=0)) as bus:
        bus.subscribe(sink)
        source = JetStreamSource(url, stream=stream, subject_prefix=stream.lower(), **options)  # type: ignore[arg-type]
        async with source:
            await source.run(bus, until_idle=True)
    return source


@pytest.mark.anyio
async def test_every_stored_event_reaches_the_local_bus_in_order(
    machine_stream: tuple[str, str],
) -> None:
    """The source publishes each stored event, unknown types kept, in stream order."""
    url, stream = machine_stream
    events = [*_events(600), Event(event_type=EventType("new.kind"), session_id="s.2", message="")]
    await _publish(url, stream, events)
    sink = MemorySink()
    await _consume(url, stream, sink)
    assert sink.events == events


@pytest.mark.anyio
async def test_a_restarted_durable_source_resumes_after_what_it_acked(
    machine_stream: tuple[str, str],
) -> None:
    """A second run of the same durable consumer gets only the events published since."""
    url, stream = machine_stream
    first, later = _events(300), _events(50)
    await _publish(url, stream, first)
    await _consume(url, stream, MemorySink())
    await _publish(url, stream, later)
    sink = MemorySink()
    await _consume(url, stream, sink)
    assert sink.events == later


@pytest.mark.anyio
async def test_remembered_ids_are_dropped_as_redeliveries(machine_stream: tuple[str, str]) -> None:
    """Events whose ids the local sinks already hold (remembered) are not published again."""
    url, stream = machine_stream
    events = _events(200)
    await _publish(url, stream, events)
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        async with JetStreamSource(url, stream=stream, subject_prefix=stream.lower()) as source:
            source.remember(event.id for event in events[:120])
            await source.run(bus, until_idle=True)
    assert sink.events == events[120:]
    assert source.stats().duplicates == 120


@pytest.mark.anyio
async def test_a_new_durable_consumer_acks_each_batch_once_for_all(
    machine_stream: tuple[str, str],
) -> None:
    """The consumer the source creates acks all (one ack per batch); nothing stays pending."""
    url, stream = machine_stream
    await _publish(url, stream, _events(700))
    await _consume(url, stream, MemorySink(), batch=64)
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(stream, "aggregator")
    finally:
        await nc.close()
    assert info.config.ack_policy == AckPolicy.ALL
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert info.ack_floor.stream_seq == 700


@pytest.mark.anyio
async def test_an_existing_consumer_with_explicit_acks_gets_every_message_acked(
    machine_stream: tuple[str, str],
) -> None:
    """A durable consumer made with explicit acks (by an older version) gets one per message."""
    url, stream = machine_stream
    events = _events(300)
    await _publish(url, stream, events)
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_consumer(
            stream,
            ConsumerConfig(
                durable_name="aggregator",
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=f"{stream.lower()}.>",
            ),
        )
        sink = MemorySink()
        await _consume(url, stream, sink, batch=64)
        info = await nc.jetstream().consumer_info(stream, "aggregator")
    finally:
        await nc.close()
    assert sink.events == events
    assert info.config.ack_policy == AckPolicy.EXPLICIT
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


class _FailingSink(MemorySink):
    async def write(self, events: Sequence[Event]) -> None:
        raise OSError("disk full")


@pytest.mark.anyio
async def test_a_batch_whose_local_flush_failed_is_not_acked(
    machine_stream: tuple[str, str],
) -> None:
    """A failed local sink stops the run unacked; the next run gets the batch again."""
    url, stream = machine_stream
    events = _events(30)
    await _publish(url, stream, events)
    with pytest.raises(SinkFailedError, match="disk full"):
        await _consume(url, stream, _FailingSink(), ack_wait=1.0)
    sink = MemorySink()
    await _consume(url, stream, sink, ack_wait=1.0)
    assert sink.events == events


@pytest.mark.anyio
async def test_ordered_consumer_with_one_session_gets_only_that_session(
    machine_stream: tuple[str, str],
) -> None:
    """durable=None reads the stream live, filtered by the server to one session's subject."""
    url, stream = machine_stream
    wanted = _events(40, "run b.1")
    await _publish(url, stream, [*_events(40, "run a"), *wanted])
    sink = MemorySink()
    source = await _consume(url, stream, sink, durable=None, sessions=["run b.1"])
    assert sink.events == wanted
    assert source.filter_subject == f"{stream.lower()}.run%20b%2E1.*"


@pytest.mark.anyio
async def test_start_sequence_skips_the_earlier_messages(machine_stream: tuple[str, str]) -> None:
    """A new consumer with start=<sequence> begins at that stream sequence."""
    url, stream = machine_stream
    events = _events(20)
    await _publish(url, stream, events)
    sink = MemorySink()
    await _consume(url, stream, sink, durable=None, start=11)
    assert sink.events == events[10:]


@pytest.mark.anyio
async def test_durable_with_another_filter_is_refused(machine_stream: tuple[str, str]) -> None:
    """Reusing a durable name with other sessions says how to resolve it."""
    url, stream = machine_stream
    await _publish(url, stream, _events(1))
    await _consume(url, stream, MemorySink(), sessions=["s1"])
    with pytest.raises(ConsumerConfigError, match="pass another durable name"):
        await _consume(url, stream, MemorySink(), sessions=["s2"])


def nested(depth: int) -> Any:
    """``depth`` lists, one inside the other."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.anyio
async def test_deep_and_forged_messages_are_acked_and_dropped_and_the_rest_written(
    machine_stream: tuple[str, str],
) -> None:
    """A message nested too deep, one with a forged SSE id, one too deep to publish: each
    is logged, acked and dropped; the events around them arrive; a rerun gets nothing."""
    url, stream = machine_stream
    first, last = _events(2)
    await _publish(url, stream, [first])
    fields = json.loads(encode_event(first))
    bad = [
        json.dumps({**fields, "id": "d1"})[:-1].encode()
        + b',"x":'
        + b"[" * 2000
        + b"]" * 2000
        + b"}",
        json.dumps({**fields, "id": "x1\nevent: gap\ndata: {}"}).encode(),
        json.dumps({**fields, "id": "d3", "metadata": {"a": nested(MAX_METADATA_DEPTH)}}).encode(),
    ]
    nc = await nats.connect(url)
    try:
        for data in bad:
            await nc.jetstream().publish(f"{stream.lower()}.s1.info", data)
    finally:
        await nc.close()
    await _publish(url, stream, [last])
    sink = MemorySink()
    source = await _consume(url, stream, sink)
    assert sink.events == [first, last]
    assert (source.stats().invalid, source.stats().published) == (3, 2)
    again = MemorySink()
    await _consume(url, stream, again)
    assert again.events == []


@pytest.mark.anyio
async def test_pulled_messages_skip_nats_py_message_objects(
    machine_stream: tuple[str, str],
) -> None:
    """The messages of the pull requests go straight from nats-py's parser to the source:
    none reaches the subscription (no Msg made, no headers parsed), all are published."""
    url, stream = machine_stream
    events = _events(500)
    await _publish(url, stream, events)
    sink = MemorySink()
    source = await _consume(url, stream, sink, batch=64)
    assert sink.events == events
    if not hooks_known():
        pytest.skip("a nats-py release whose private parser the source does not take over")
    assert source.raw_messages
    assert source.fast_parse
    assert source._sub.delivered == 0


@pytest.mark.anyio
async def test_without_the_parser_hook_messages_come_through_the_subscription(
    machine_stream: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nats-py without the hook the source uses: every event still arrives, acked once."""
    url, stream = machine_stream
    events = _events(300)
    await _publish(url, stream, events)
    monkeypatch.setattr(JetStreamSource, "_take_over", lambda self, nc, sub: False)
    sink = MemorySink()
    source = await _consume(url, stream, sink, batch=64)
    assert sink.events == events
    assert not source.raw_messages
    assert source._sub.delivered >= 300
    again = MemorySink()
    await _consume(url, stream, again)
    assert again.events == []


@pytest.mark.anyio
async def test_messages_of_a_session_id_that_cannot_name_a_directory_are_dropped_each_time(
    machine_stream: tuple[str, str],
) -> None:
    """Every message whose session id is refused is dropped, however often it comes;
    the valid sessions' events around them are published."""
    url, stream = machine_stream
    first, last = _events(2)
    await _publish(url, stream, [first])
    fields = json.loads(encode_event(first))
    nc = await nats.connect(url)
    try:
        for n in range(3):
            forged = {**fields, "id": f"f{n}", "session_id": "../escape"}
            await nc.jetstream().publish(f"{stream.lower()}.s1.info", json.dumps(forged).encode())
    finally:
        await nc.close()
    await _publish(url, stream, [last])
    sink = MemorySink()
    source = await _consume(url, stream, sink)
    assert sink.events == [first, last]
    assert source.stats().invalid == 3


class _HeldSink(MemorySink):
    """A sink whose first write waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = anyio.Event()

    async def write(self, events: Sequence[Event]) -> None:
        await self.release.wait()
        await super().write(events)


@pytest.mark.anyio
async def test_batches_published_during_a_flush_are_flushed_and_acked_together(
    machine_stream: tuple[str, str],
) -> None:
    """While one batch is being written, the next ones are published; the flush after it
    covers them all and one ack (AckPolicy.ALL) acks them all. (Forty events: the
    server delivers at most four batches unacked.)"""
    url, stream = machine_stream
    events = _events(40)
    await _publish(url, stream, events)
    sink = _HeldSink()
    async with EventBus() as bus, anyio.create_task_group() as group:
        bus.subscribe(sink)

        async def release_when_all_published() -> None:
            async with bus.listen() as live:
                seen = 0
                async for _ in live:
                    seen += 1
                    if seen == len(events):
                        sink.release.set()
                        return

        group.start_soon(release_when_all_published)
        await anyio.wait_all_tasks_blocked()
        source = JetStreamSource(url, stream=stream, subject_prefix=stream.lower(), batch=10)
        with anyio.fail_after(20):
            async with source:
                await source.run(bus, until_idle=True)
    assert sink.events == events
    assert 2 <= source.stats().acks <= 3  # four batches: the first, then the rest at once


@pytest.mark.anyio
async def test_a_slow_flush_does_not_hold_back_what_arrives_meanwhile(
    machine_stream: tuple[str, str],
) -> None:
    """While a write is stuck, each event arriving alone (a batch of one) is still published
    on the bus at once, however many such batches wait for the flush."""
    url, stream = machine_stream
    events = _events(12)
    sink = _HeldSink()
    producer = JetStreamSink(url, stream=stream, subject_prefix=stream.lower())
    source = JetStreamSource(url, stream=stream, subject_prefix=stream.lower(), batch=10)
    try:
        async with EventBus() as bus, source, anyio.create_task_group() as group:
            bus.subscribe(sink)
            async with bus.listen() as live:
                group.start_soon(source.run, bus)
                arrivals = aiter(live)
                for event in events:
                    await producer.write(EventBatch([event]))
                    with anyio.fail_after(10):
                        assert await anext(arrivals) == event  # on the bus: a batch of its own
            sink.release.set()
            with anyio.fail_after(10):
                await bus.flush()
            group.cancel_scope.cancel()
    finally:
        await producer.aclose()
    assert sink.events == events


@pytest.mark.anyio
async def test_a_message_without_an_id_gets_the_id_its_own_line_derives_in_any_batch(
    machine_stream: tuple[str, str],
) -> None:
    """A line in the seed's format (no id) among others: its event gets the id derived from
    that line alone, as decode_event gives it, however the messages are batched."""
    url, stream = machine_stream
    first, last = _events(2)
    fields = json.loads(encode_event(first))
    del fields["id"]
    seed_line = json.dumps({**fields, "message": "no id"}).encode()
    await _publish(url, stream, [first])
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(f"{stream.lower()}.s1.info", seed_line)
    finally:
        await nc.close()
    await _publish(url, stream, [last])
    sink = MemorySink()
    await _consume(url, stream, sink)
    assert [event.id for event in sink.events] == [first.id, decode_event(seed_line).id, last.id]


@pytest.mark.anyio
async def test_the_relay_stores_each_payload_as_received_and_a_line_without_its_id_encoded(
    machine_stream: tuple[str, str], tmp_path: Path
) -> None:
    """A payload that holds its id (spaced, as another producer may write it) is the
    aggregator's log line byte for byte; one without an id is stored with the id derived."""
    url, stream = machine_stream
    first, second = _events(2)
    stored = json.loads(encode_event(second))
    spaced = json.dumps(stored).encode()
    del stored["id"]
    seed_line = json.dumps(stored).encode()
    await _publish(url, stream, [first])
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(f"{stream.lower()}.s1.info", spaced)
        await nc.jetstream().publish(f"{stream.lower()}.s1.info", seed_line)
    finally:
        await nc.close()
    async with EventBus(retry=RetryPolicy(retries=0)) as bus:
        bus.subscribe(JsonlSink(tmp_path))
        source = JetStreamSource(url, stream=stream, subject_prefix=stream.lower())
        async with source:
            await source.run(bus, until_idle=True)
    lines = (tmp_path / first.session_id / "events.jsonl").read_bytes().splitlines()
    derived = decode_event(seed_line)
    assert lines == [encode_event(first), spaced, encode_event(derived)]


class _Client:
    """What nats-py's parser calls on its client, recorded in one log with what is taken."""

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.log: list[tuple[object, ...]] = []

    def take(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.log.append(("take", subject, reply, data, headers))

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if sid == self.sid:
            self.take(subject, reply, data, headers)
        else:
            self.log.append(("other", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.log.append(("ping",))

    async def _process_pong(self) -> None:
        self.log.append(("pong",))


def _hmsg(subject: bytes, sid: bytes, reply: bytes, headers: bytes, data: bytes) -> bytes:
    fields = [subject, sid, *([reply] if reply else []), b"%d" % len(headers)]
    return b"HMSG %s %d\r\n%s%s\r\n" % (b" ".join(fields), len(headers + data), headers, data)


_WIRE = (
    _hmsg(
        b"_INBOX.a",
        b"7",
        b"$JS.ACK.S.c.1.1.1.1.0",
        b"NATS/1.0\r\nNats-Msg-Id: x1\r\n\r\n",
        b'{"a"}',
    )
    + b"PING\r\n"
    + b"MSG other.subject 3 5\r\nhello\r\n"
    + _hmsg(b"_INBOX.a", b"7", b"", b"NATS/1.0 408 Request Timeout\r\n\r\n", b"")
    + b"+OK\r\n"
    + b"MSG _INBOX.a 7 reply.to 3\r\nabc\r\n"
    + _hmsg(b"_INBOX.a ", b"7", b"", b"NATS/1.0\r\n\r\n", b"{}")  # two spaces: nats-py's
    + b"PONG\r\n"
)
_EXPECTED = [
    (
        "take",
        b"_INBOX.a",
        b"$JS.ACK.S.c.1.1.1.1.0",
        b'{"a"}',
        b"NATS/1.0\r\nNats-Msg-Id: x1\r\n\r\n",
    ),
    ("ping",),
    ("other", 3, b"other.subject", b"", b"hello", None),
    ("take", b"_INBOX.a", b"", b"", b"NATS/1.0 408 Request Timeout\r\n\r\n"),
    ("take", b"_INBOX.a", b"reply.to", b"abc", None),
    ("take", b"_INBOX.a", b"", b"{}", b"NATS/1.0\r\n\r\n"),
    ("pong",),
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 41, len(_WIRE)])
@pytest.mark.anyio
async def test_messages_are_cut_from_reads_of_any_size_in_order_with_the_rest(
    chunk: int,
) -> None:
    """The source's parse takes its subscription's messages (headers, statuses, no reply)
    whole however the bytes are split across reads, in order with nats-py's handling of
    everything else (other subscriptions, PING, +OK, PONG, a line it does not expect)."""
    client = _Client(7)
    parser = nats.protocol.parser.Parser(client)
    parse = _fast_parse(parser, 7, client.take, client._process_msg)
    for start in range(0, len(_WIRE), chunk):
        await parse(_WIRE[start : start + chunk])
    assert client.log == _EXPECTED
    assert not parser.buf


def test_nats_py_internals_are_hooked_only_for_releases_they_were_checked_against(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another nats-py release (its private parser may differ) takes the callback path."""
    for release, known in (("2.16.0", True), ("2.16.3", True), ("2.17.0", False), ("3.0", False)):
        monkeypatch.setattr(importlib.metadata, "version", lambda _, r=release: r)
        hooks_known.cache_clear()
        assert hooks_known() is known
    hooks_known.cache_clear()
