"""Server-Sent Events through a real uvicorn server: message format, resume, gaps, heartbeats."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from _web_server import serving
from eventbus import Event, EventBus, EventQuery, EventType, encode_event
from eventbus.web import create_app
from factories import event
from sinks.jsonl import EventLog, JsonlSink

SESSION = "s1"


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn serves on asyncio only."""
    return "asyncio"


@asynccontextmanager
async def live(
    root: Path, *, log: bool = True, **options: Any
) -> AsyncIterator[tuple[EventBus, str, httpx.AsyncClient]]:
    """A running bus (logging to ``root`` unless ``log=False``), its app served, a client."""
    async with EventBus() as bus:
        if log:
            bus.subscribe(JsonlSink(root))
        app = create_app(root, bus=bus, **options)
        async with serving(app) as url, httpx.AsyncClient(timeout=10) as client:
            yield bus, url, client


class Message(dict[str, str]):
    """One SSE message: its fields (``id``, ``event``, ``data``); comments under ``":"``."""


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    """The messages of an SSE response, as they arrive."""
    message = Message()
    async for line in response.aiter_lines():
        if not line:
            if message:
                yield message
            message = Message()
            continue
        field, _, value = line.partition(":")
        message[field or ":"] = value.removeprefix(" ")


@pytest.mark.anyio
async def test_each_event_is_one_message_with_its_id_and_stored_json_line(tmp_path: Path) -> None:
    """A live event arrives as ``id:`` + ``data:`` (its line in the log), with no ``event:``."""
    async with (
        live(tmp_path) as (bus, url, client),
        client.stream("GET", f"{url}/api/sessions/{SESSION}/stream") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        await bus.publish(published := event(1))
        with anyio.fail_after(5):
            received = await anext(aiter(messages(response)))
        await bus.flush()
    stored = (tmp_path / SESSION / "events.jsonl").read_text().splitlines()
    assert received == {"id": published.id, "data": stored[0]}


@pytest.mark.anyio
@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_while_publishing_sends_every_id_once_in_order(
    tmp_path: Path, via: str
) -> None:
    """Reconnecting with Last-Event-ID while events are published: none missed, none twice."""
    total = 3000
    published: list[str] = []
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        app = create_app(tmp_path, bus=bus, listener_buffer=total)
        async with serving(app) as url, httpx.AsyncClient(timeout=10) as client:
            stream_url = f"{url}/api/sessions/{SESSION}/stream"
            first_seen = anyio.Event()
            received: list[str] = []

            async def publish_all() -> None:
                for n in range(total):
                    published.append((item := event(n)).id)
                    await bus.publish(item)
                    if n % 50 == 0:
                        await anyio.lowlevel.checkpoint()  # let the server run meanwhile

            async with anyio.create_task_group() as tg:
                async with client.stream("GET", stream_url) as response:
                    tg.start_soon(publish_all)
                    async for message in messages(response):
                        received.append(message["id"])
                        if len(received) == 100:
                            break
                first_seen.set()
                # Reconnect at once, while the publisher is still going.
                last = received[-1]
                headers = {"Last-Event-ID": last} if via == "header" else {}
                params = {"last_event_id": last} if via == "query" else {}
                with anyio.fail_after(20):
                    async with client.stream(
                        "GET", stream_url, headers=headers, params=params
                    ) as response:
                        async for message in messages(response):
                            assert "event" not in message, f"unexpected {message}"
                            received.append(message["id"])
                            if len(received) >= total or message["id"] == published[-1]:
                                break
    assert received == published


@pytest.mark.anyio
async def test_resume_replays_the_log_after_the_given_id(tmp_path: Path) -> None:
    """Last-Event-ID from a past session returns the stored events after it, then live ones."""
    with EventLog(tmp_path / SESSION / "events.jsonl") as log:
        stored = [event(n) for n in range(10)]
        for item in stored:
            log.append(item)
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        async with serving(create_app(tmp_path, bus=bus)) as url, httpx.AsyncClient() as client:
            headers = {"Last-Event-ID": stored[3].id}
            path = f"{url}/api/sessions/{SESSION}/stream"
            async with client.stream("GET", path, headers=headers) as response:
                received = []
                with anyio.fail_after(5):
                    async for message in messages(response):
                        received.append(message["id"])
                        if len(received) == 6:
                            await bus.publish(live := event(10))
                        if len(received) == 7:
                            break
    assert received == [item.id for item in stored[4:]] + [live.id]


@pytest.mark.anyio
async def test_a_client_that_falls_behind_gets_a_gap_with_the_number_missed(
    tmp_path: Path,
) -> None:
    """Events dropped for a slow client become ``event: gap`` with ``{"missed": n}``."""
    async with (
        live(tmp_path, log=False, listener_buffer=5) as (bus, url, client),
        client.stream("GET", f"{url}/api/stream") as response,
    ):
        burst = [event(n) for n in range(50)]
        await anyio.wait_all_tasks_blocked()  # the stream is listening
        for item in burst:  # one batch for the listener: 45 over its buffer
            bus.publish_nowait(item)
        received = []
        with anyio.fail_after(5):
            async for message in messages(response):
                received.append(message)
                if len(received) == 6:
                    break
    assert received[0] == {"event": "gap", "data": '{"missed": 45}'}
    assert [m["id"] for m in received[1:]] == [item.id for item in burst[45:]]


@pytest.mark.anyio
async def test_a_stalled_client_never_slows_the_publisher(tmp_path: Path) -> None:
    """With a client that reads nothing, publishing 20k large events still never waits on it."""
    async with EventBus(buffer=64) as bus:
        app = create_app(tmp_path, bus=bus, listener_buffer=10)
        async with serving(app) as url:
            host, port = url.removeprefix("http://").split(":")
            async with await anyio.connect_tcp(host, int(port)) as stalled:
                await stalled.send(f"GET /api/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                await stalled.receive()  # the response has started; now read nothing more
                payload = "x" * 2000
                with anyio.fail_after(20):
                    for n in range(20_000):
                        bus.publish_nowait(
                            Event(
                                event_type=EventType.INFO,
                                session_id=SESSION,
                                message=f"{n}",
                                metadata={"payload": payload},
                            )
                        )
                        if n % 16 == 0:  # let the bus deliver (to the listener)
                            await anyio.lowlevel.checkpoint()
    # publish_nowait would have raised BusFullError had the listener held the buffer.
    assert bus.stats().published == 20_000


@pytest.mark.anyio
async def test_an_idle_stream_gets_comment_heartbeats(tmp_path: Path) -> None:
    """With nothing to send, the stream still sends a comment line every heartbeat."""
    async with (
        live(tmp_path, heartbeat=0.05) as (_, url, client),
        client.stream("GET", f"{url}/api/stream") as response,
    ):
        with anyio.fail_after(5):
            first = await anext(aiter(messages(response)))
    assert list(first) == [":"]


@pytest.mark.anyio
async def test_all_sessions_stream_keeps_only_the_requested_types(tmp_path: Path) -> None:
    """``/api/stream?type=...`` sends matching events of every session and nothing else."""
    params = {"type": "task_started,task_completed"}
    async with (
        live(tmp_path) as (bus, url, client),
        client.stream("GET", f"{url}/api/stream", params=params) as response,
    ):
        await anyio.wait_all_tasks_blocked()
        items = [
            event(0, "a", EventType.TASK_STARTED),
            event(1, "b", EventType.INFO),
            event(2, "b", EventType.TASK_COMPLETED),
        ]
        for item in items:
            await bus.publish(item)
        received = []
        with anyio.fail_after(5):
            async for message in messages(response):
                received.append(json.loads(message["data"]))
                if len(received) == 2:
                    break
    assert [(e["session_id"], e["event_type"]) for e in received] == [
        ("a", "task_started"),
        ("b", "task_completed"),
    ]


@pytest.mark.anyio
async def test_without_a_bus_the_stream_follows_the_files(tmp_path: Path) -> None:
    """``eventbus serve DIR`` mode: events another writer appends reach the client."""
    app = create_app(tmp_path)
    with EventLog(tmp_path / SESSION / "events.jsonl") as log:
        log.append(seen := event(0))
        log.append(missed := event(1))
        async with serving(app) as url, httpx.AsyncClient() as client:
            path = f"{url}/api/sessions/{SESSION}/stream"
            async with client.stream("GET", path, headers={"Last-Event-ID": seen.id}) as response:
                received: list[str] = []
                with anyio.fail_after(10):
                    async for message in messages(response):
                        received.append(message["id"])
                        if len(received) == 1:
                            log.append(written := event(2))
                        if len(received) == 2:
                            break
    assert received == [missed.id, written.id]


@pytest.mark.anyio
async def test_500_file_clients_of_one_session_each_get_every_event_once_in_order(
    tmp_path: Path,
) -> None:
    """Past inotify's 128 instances: every stream of ``serve DIR`` shares one watcher."""
    clients, total = 500, 20
    first = event(-1)
    written = [event(n) for n in range(total)]
    with EventLog(tmp_path / SESSION / "events.jsonl") as log:
        log.append(first)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with (
            serving(create_app(tmp_path)) as url,
            httpx.AsyncClient(timeout=30, limits=limits) as client,
        ):
            path = f"{url}/api/sessions/{SESSION}/stream"
            connected = 0
            all_connected = anyio.Event()
            received: list[list[str]] = []

            async def follow() -> None:
                nonlocal connected
                ids: list[str] = []
                received.append(ids)
                headers = {"Last-Event-ID": first.id}  # resume: none missed while connecting
                async with client.stream("GET", path, headers=headers) as response:
                    assert response.status_code == 200
                    connected += 1
                    if connected == clients:
                        all_connected.set()
                    async for message in messages(response):
                        if "id" in message:
                            ids.append(message["id"])
                        if len(ids) == total:
                            break

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    for _ in range(clients):
                        group.start_soon(follow)
                    for item in written[: total // 2]:  # while the clients connect
                        log.append(item)
                    await all_connected.wait()
                    for item in written[total // 2 :]:
                        log.append(item)
    expected = [item.id for item in written]
    assert len(received) == clients
    assert all(ids == expected for ids in received)


class OneShotWorkspace:
    """A data layer whose stream of one session yields ``found`` once, then waits forever."""

    def __init__(self, found: list[tuple[Event, bytes]]) -> None:
        self.found = found

    def events(self, query: EventQuery, **_: object) -> tuple[list[Event], str | None]:
        return [], None

    def read_lines(self, events: Sequence[Event]) -> list[bytes]:
        return [encode_event(item) for item in events]

    async def follow_batches(
        self, query: EventQuery, **_: object
    ) -> AsyncGenerator[list[tuple[Event, bytes]], None]:
        yield self.found
        await anyio.sleep_forever()


def with_id(item: Event, event_id: str) -> Event:
    """``item`` with an id the codec may refuse (set past the constructor's checks)."""
    msgspec.structs.force_setattr(item, "id", event_id)
    return item


@pytest.mark.anyio
@pytest.mark.parametrize("breaks", ["\n", "\r", "\r\n", "\x00"], ids=["lf", "cr", "crlf", "nul"])
async def test_an_id_holding_a_line_break_is_never_written(
    tmp_path: Path, breaks: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Such an event is left out (a warning names it): no forged field reaches the client."""
    # "evil" and "forged" cannot occur in a generated (hex) id
    bad = with_id(event(0), f"evil{breaks}event: forged{breaks}data: x")
    good = event(1)
    stored = msgspec.json.encode(bad)  # as a writer that checks nothing would store it
    workspace = OneShotWorkspace([(bad, stored), (good, encode_event(good))])
    app = create_app(workspace)  # type: ignore[arg-type]  # a stand-in data layer
    raw = b""
    async with (
        serving(app) as url,
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{url}/api/sessions/{SESSION}/stream") as response,
    ):
        with anyio.fail_after(5):
            async for chunk in response.aiter_raw():
                raw += chunk
                if good.id.encode() in raw:
                    break
    assert b"forged" not in raw
    assert b"evil" not in raw
    assert raw.count(b"id: ") == 1
    (warning,) = [r for r in caplog.records if r.name == "eventbus.web"]
    assert warning.levelno == logging.WARNING
    assert repr(bad.id) in warning.getMessage()


@pytest.mark.anyio
async def test_a_stored_line_holding_a_carriage_return_is_sent_on_one_line(
    tmp_path: Path,
) -> None:
    """JSON whitespace another writer left (``\\r``) would split the data field: re-encoded."""
    item = event(0)
    stored = encode_event(item).replace(b'","', b'",\r"')
    assert json.loads(stored) == json.loads(encode_event(item))
    workspace = OneShotWorkspace([(item, stored)])
    app = create_app(workspace)  # type: ignore[arg-type]  # a stand-in data layer
    async with (
        serving(app) as url,
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{url}/api/sessions/{SESSION}/stream") as response,
    ):
        with anyio.fail_after(5):
            received = await anext(aiter(messages(response)))
    assert received == {"id": item.id, "data": encode_event(item).decode()}
