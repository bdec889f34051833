"""SSE resume by ``Last-Event-ID`` when the id is in a sealed segment of the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from _web_server import serving
from eventbus import EventBus, encode_event
from eventbus.web import create_app
from factories import event
from sinks.jsonl import JsonlSink

SESSION = "s1"


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn serves on asyncio only."""
    return "asyncio"


async def ids_of(lines: AsyncIterator[str], count: int) -> list[str]:
    """The next ``count`` message ids of an SSE stream's lines."""
    found: list[str] = []
    async for line in lines:
        if line.startswith("id:"):
            found.append(line.removeprefix("id:").strip())
            if len(found) == count:
                break
    return found


@pytest.mark.anyio
async def test_resume_from_an_id_in_an_earlier_segment_then_live(tmp_path: Path) -> None:
    """The stored events after the id, across every later segment, then live ones: each once."""
    stored = [event(n, seconds=n) for n in range(30)]
    size = 4 * (len(encode_event(stored[0])) + 1)
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path, segment_bytes=size))
        for item in stored:  # one batch each, so the sink seals every 4 events
            await bus.publish(item)
            await bus.flush()
        assert (tmp_path / SESSION / "events.000003.jsonl").exists()
        async with serving(create_app(tmp_path, bus=bus)) as url, httpx.AsyncClient() as client:
            headers = {"Last-Event-ID": stored[2].id}  # in events.000001.jsonl
            path = f"{url}/api/sessions/{SESSION}/stream"
            async with client.stream("GET", path, headers=headers) as response:
                lines = response.aiter_lines()
                with anyio.fail_after(10):
                    replayed = await ids_of(lines, 27)
                    await bus.publish(live := event(30, seconds=30))
                    more = await ids_of(lines, 1)
    assert replayed == [item.id for item in stored[3:]]
    assert more == [live.id]
