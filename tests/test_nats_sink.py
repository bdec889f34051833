"""JetStreamSink against a real nats-server: what it stores, once, and how it refuses."""

from __future__ import annotations

import string
from typing import Any

import anyio
import nats
import nats.js.api
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _nats_servers import free_port, machine_nats, machine_stream, stream_name
from eventbus import Event, EventBatch, EventBus, EventType, RetryPolicy, SinkFailedError
from sinks.nats import (
    AsyncioOnlyError,
    JetStreamSink,
    JetStreamSource,
    NatsUnavailableError,
    PublishNotAcknowledgedError,
    StreamConfigError,
    decode_token,
    encode_token,
    subject_for,
)

__all__ = ["machine_nats", "machine_stream", "stream_name"]  # fixtures, imported for pytest

pytestmark = pytest.mark.service


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio only (trio is tested below for its error)."""
    return "asyncio"


def _events(count: int, session_id: str = "s1") -> list[Event]:
    return [
        Event(event_type=EventType.INFO, session_id=session_id, message=f"m{i}")
        for i in range(count)
    ]


async def _stored(url: str, stream: str) -> list[nats.aio.msg.Msg]:
    """Every message of the stream, read with an ordered consumer."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
        with anyio.fail_after(10):
            return [await sub.next_msg(timeout=5) for _ in range(total)]
    finally:
        await nc.close()


@given(st.text(min_size=1))
def test_subject_tokens_are_valid_and_decode_to_the_text(text: str) -> None:
    """Any text becomes one subject token (no '.', '*', '>', whitespace) that decodes back."""
    token = encode_token(text)
    assert token
    assert set(token) <= set(string.ascii_letters + string.digits + "-_~%")
    assert decode_token(token) == text


@pytest.mark.anyio
async def test_each_event_is_stored_once_on_its_subject_with_its_id(
    machine_stream: tuple[str, str],
) -> None:
    """After flush every event is in the stream: its JSON line, its subject, Nats-Msg-Id = id."""
    url, stream = machine_stream
    prefix = stream.lower()
    unknown = Event(event_type=EventType("new.kind"), session_id="s2", message="unknown type")
    events = [*_events(3, "run 1.a"), unknown]
    async with EventBus() as bus:
        bus.subscribe(JetStreamSink(url, stream=stream, subject_prefix=prefix))
        for event in events:
            await bus.publish(event)
        await bus.flush()
        stored = await _stored(url, stream)
    assert [msg.data for msg in stored] == list(EventBatch(events).lines)
    assert [msg.headers and msg.headers["Nats-Msg-Id"] for msg in stored] == [e.id for e in events]
    assert stored[0].subject == f"{prefix}.run%201%2Ea.info"
    assert stored[-1].subject == subject_for(prefix, "s2", "new.kind") == f"{prefix}.s2.new%2Ekind"


@pytest.mark.anyio
async def test_a_repeated_batch_is_stored_once(machine_stream: tuple[str, str]) -> None:
    """Writing the same batch again (a retry) adds nothing: the stream drops the duplicate ids."""
    url, stream = machine_stream
    sink = JetStreamSink(url, stream=stream, subject_prefix=stream.lower())
    batch = EventBatch(_events(500))
    try:
        await sink.write(batch)
        await sink.write(batch)
    finally:
        await sink.aclose()
    assert len(await _stored(url, stream)) == 500
    assert (sink.acknowledged, sink.duplicates) == (1000, 500)


@pytest.mark.anyio
async def test_batch_larger_than_the_ack_window_is_fully_acknowledged(
    machine_stream: tuple[str, str],
) -> None:
    """With a window of 8 pending acks, a batch of 1000 is written whole, in order."""
    url, stream = machine_stream
    sink = JetStreamSink(url, stream=stream, subject_prefix=stream.lower(), window=8)
    events = _events(1000)
    try:
        await sink.write(EventBatch(events))
    finally:
        await sink.aclose()
    stored = await _stored(url, stream)
    assert [msg.headers and msg.headers["Nats-Msg-Id"] for msg in stored] == [e.id for e in events]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "problem"),
    [
        pytest.param(
            {"storage": nats.js.api.StorageType.MEMORY, "duplicate_window": 120},
            "keeps messages in memory",
            id="memory-storage",
        ),
        pytest.param(
            {"duplicate_window": 1}, "de-duplicates message ids over 1 s", id="short-dedup-window"
        ),
    ],
)
async def test_an_existing_stream_that_does_not_fit_is_refused(
    machine_stream: tuple[str, str], config: dict[str, Any], problem: str
) -> None:
    """A stream of that name in memory storage, or forgetting ids sooner than a retried
    batch may take, is not used: the error says what to fix."""
    url, stream = machine_stream
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(name=stream, subjects=[f"{stream.lower()}.>"], **config)
    finally:
        await nc.close()
    sink = JetStreamSink(url, stream=stream, subject_prefix=stream.lower())
    try:
        with pytest.raises(StreamConfigError, match=problem):
            await sink.write(EventBatch(_events(1)))
    finally:
        await sink.aclose()


@pytest.mark.anyio
async def test_unreachable_server_fails_the_sink_after_the_bus_retries() -> None:
    """No server: write raises, the bus retries, then flush reports the sink failed."""
    sink = JetStreamSink(f"nats://127.0.0.1:{free_port()}", ack_timeout=0.5)
    with pytest.raises(SinkFailedError, match=r"cannot connect to nats://127\.0\.0\.1"):  # noqa: PT012
        async with EventBus(retry=RetryPolicy(retries=1, initial_delay=0)) as bus:
            bus.subscribe(sink)
            await bus.publish(_events(1)[0])
            await bus.flush()


@pytest.mark.anyio
async def test_write_raises_when_the_server_cannot_be_reached() -> None:
    """Written directly, the sink raises PublishNotAcknowledgedError naming the server."""
    url = f"nats://127.0.0.1:{free_port()}"
    sink = JetStreamSink(url, ack_timeout=0.5)
    with pytest.raises(PublishNotAcknowledgedError, match="1 of 1 events were not acknowledged"):
        await sink.write(EventBatch(_events(1)))
    await sink.aclose()


@pytest.mark.anyio
async def test_connect_without_a_server_refuses_at_once_saying_why() -> None:
    """connect() gives up when the server refuses, well before ack_timeout, naming the reason."""
    url = f"nats://127.0.0.1:{free_port()}"
    sink = JetStreamSink(url, ack_timeout=30)
    with anyio.fail_after(10), pytest.raises(NatsUnavailableError, match="Connection refused"):
        await sink.connect()
    await sink.aclose()


@pytest.mark.anyio
async def test_connect_creates_the_stream_before_any_write(
    machine_stream: tuple[str, str],
) -> None:
    """After connect() the stream exists, and the first write goes over that connection."""
    url, stream = machine_stream
    sink = JetStreamSink(url, stream=stream, subject_prefix=stream.lower())
    try:
        await sink.connect()
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()
        assert info.config.subjects == [f"{stream.lower()}.>"]
        await sink.write(EventBatch(_events(2)))
        assert sink.acknowledged == 2
    finally:
        await sink.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_both_classes_say_nats_py_needs_asyncio() -> None:
    """On trio, making a sink or a source raises an error naming the limitation and the fix."""
    with pytest.raises(AsyncioOnlyError, match="nats-py runs on asyncio only; run this bus with"):
        JetStreamSink()
    with pytest.raises(AsyncioOnlyError, match="JetStreamSource cannot run on trio"):
        JetStreamSource()
