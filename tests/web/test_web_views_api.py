"""The API routes the dashboard's views read: artifacts, session pages, usage by day,
computed cost, the text filter of ``/events``."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from eventbus import (
    Event,
    EventType,
    create_llm_response_event,
    create_session_event,
)
from eventbus.web import create_app
from sinks.artifacts import ArtifactStore
from sinks.jsonl import EventLog
from sinks.workspace import MAX_ARTIFACT_BYTES, Workspace

T0 = datetime(2026, 1, 5, 23, 59, 58, tzinfo=UTC)


def _at(event: Event, seconds: float) -> Event:
    return Event.from_dict({**event.to_dict(), "timestamp": T0 + timedelta(seconds=seconds)})


def _write(root: Path, session_id: str, events: list[Event]) -> None:
    with EventLog(root / session_id / "events.jsonl") as log:
        for event in events:
            log.append(event)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Session ``s`` with responses on two UTC dates; some priced by their producer."""
    events = [
        create_session_event("s", EventType.SESSION_STARTED),
        create_llm_response_event("s", "sim-large", "coder", 10, 5, "t1", cost_usd=0.5),
        create_llm_response_event("s", "gpt-4o", "coder", 1000, 500, "t1", cached_tokens=200),
        create_llm_response_event("s", "gpt-4o", "coder", 100, 50, "t2", cost_usd=0.25),
        create_llm_response_event("s", "made-up-model", "coder", 7, 3, "t2"),
        Event(event_type=EventType.INFO, session_id="s", message="Compile FAILED in t2"),
    ]
    _write(tmp_path, "s", [_at(event, n) for n, event in enumerate(events)])
    store = ArtifactStore(tmp_path / "s" / "artifacts")
    store.save_artifact("review", {"verdict": "ok", "notes": ["a", "b"]})
    store.save_artifact("diff-1", "--- a/x.py\n+++ b/x.py\n")
    return tmp_path


@pytest.fixture
async def client(workspace: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_app(workspace))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


# --- artifacts -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_artifact_is_served_as_json(client: httpx.AsyncClient) -> None:
    """A JSON document comes back as stored, ``application/json``."""
    response = await client.get("/api/sessions/s/artifacts/review")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"verdict": "ok", "notes": ["a", "b"]}


@pytest.mark.anyio
async def test_a_text_artifact_is_served_as_text(client: httpx.AsyncClient) -> None:
    """A JSON string (a captured diff, prompt or response) comes back as ``text/plain``."""
    response = await client.get("/api/sessions/s/artifacts/diff-1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "--- a/x.py\n+++ b/x.py\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "status", "match"),
    [
        pytest.param("/api/sessions/s/artifacts/.hidden", 400, "artifact key", id="bad-key"),
        pytest.param("/api/sessions/s/artifacts/a%5Cb", 400, "artifact key", id="backslash"),
        pytest.param("/api/sessions/s/artifacts/missing", 404, "no artifact 'missing'", id="gone"),
        pytest.param("/api/sessions/nope/artifacts/review", 404, "nope", id="no-session"),
    ],
)
async def test_an_artifact_request_that_cannot_be_served_says_why(
    client: httpx.AsyncClient, url: str, status: int, match: str
) -> None:
    """A bad key is a 400, a missing artifact or session a 404, each with a message."""
    response = await client.get(url)
    assert response.status_code == status
    assert match in response.json()["error"]


@pytest.mark.anyio
async def test_an_artifact_symlink_leading_out_is_refused(
    client: httpx.AsyncClient, workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An artifact file that links outside the workspace is a 403; nothing outside is read."""
    outside = tmp_path_factory.mktemp("outside") / "secret.json"
    outside.write_text('"secret"')
    os.symlink(outside, workspace / "s" / "artifacts" / "leak.json")
    response = await client.get("/api/sessions/s/artifacts/leak")
    assert response.status_code == 403
    assert "secret" not in response.text


@pytest.mark.anyio
async def test_an_artifact_above_the_limit_is_a_413(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """An artifact larger than MAX_ARTIFACT_BYTES is refused whole (413), not cut."""
    path = workspace / "s" / "artifacts" / "huge.json"
    with path.open("wb") as file:
        file.write(b'"' + b"x" * MAX_ARTIFACT_BYTES + b'"')
    response = await client.get("/api/sessions/s/artifacts/huge")
    assert response.status_code == 413
    assert str(MAX_ARTIFACT_BYTES) in response.json()["error"]


# --- sessions, a page at a time ------------------------------------------------------------


@pytest.fixture
def many(tmp_path: Path) -> Path:
    for n in range(25):
        started = create_session_event(f"s{n:02d}", EventType.SESSION_STARTED)
        _write(tmp_path, f"s{n:02d}", [_at(started, n)])
    return tmp_path


@pytest.mark.anyio
async def test_sessions_come_a_page_at_a_time_newest_first(many: Path) -> None:
    """``limit`` and ``after`` = the previous ``next`` walk every session once, newest
    first; ``next`` is null on the last page; without ``limit`` every session comes."""
    transport = httpx.ASGITransport(create_app(many))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        every = (await client.get("/api/sessions")).json()
        assert set(every) == {"sessions"}  # the shape of `eventbus sessions --json`
        ids = [row["session_id"] for row in every["sessions"]]
        assert ids == [f"s{n:02d}" for n in reversed(range(25))]
        seen: list[str] = []
        after: str | None = None
        pages = 0
        while True:
            params = {"limit": "10"} | ({"after": after} if after else {})
            page = (await client.get("/api/sessions", params=params)).json()
            assert set(page) == {"sessions", "next"}
            seen += [row["session_id"] for row in page["sessions"]]
            pages += 1
            after = page["next"]
            if after is None:
                break
        assert (seen, pages) == (ids, 3)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": "10", "after": "nope"}, id="unknown-after"),
        pytest.param({"limit": "0"}, id="zero"),
        pytest.param({"limit": "x"}, id="not-a-number"),
    ],
)
async def test_a_bad_sessions_page_is_a_400(many: Path, params: dict[str, str]) -> None:
    """An ``after`` naming no session, or a ``limit`` that is not 1..10000, is refused."""
    transport = httpx.ASGITransport(create_app(many))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/api/sessions", params=params)
    assert response.status_code == 400
    assert "parameter" in response.json()["error"]


# --- usage by day, computed cost -----------------------------------------------------------


@pytest.mark.anyio
async def test_usage_by_day_has_a_row_per_utc_date_in_date_order(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """``by=day``: key ``YYYY-MM-DD`` of each response's UTC timestamp, the fields of every
    ``by``, rows summing to the total."""
    usage = (await client.get("/api/usage", params={"by": "day"})).json()
    by_model = (await client.get("/api/usage", params={"by": "model"})).json()
    assert usage["by"] == "day"
    assert [row["key"] for row in usage["rows"]] == ["2026-01-05", "2026-01-06"]
    assert [row["calls"] for row in usage["rows"]] == [1, 3]
    assert {frozenset(row) for row in usage["rows"]} == {frozenset(by_model["rows"][0])}
    for field in ("calls", "prompt_tokens", "completion_tokens", "cached_tokens"):
        assert sum(row[field] for row in usage["rows"]) == usage["total"][field]
    assert usage["total"] == pytest.approx(by_model["total"])


def test_usage_by_day_reads_the_same_with_or_without_the_index(workspace: Path) -> None:
    """The CLI's scanning workspace and the server's indexed one answer alike."""
    with Workspace(workspace) as indexed, Workspace(workspace, index=False) as scanning:
        assert indexed.usage("day") == scanning.usage("day")


@pytest.mark.anyio
async def test_a_response_without_cost_is_priced_from_genai_prices(
    client: httpx.AsyncClient,
) -> None:
    """gpt-4o without ``cost_usd`` gets the table's price; the producer's cost wins where
    given; an unknown model gets none; ``cost_source`` says which per row and in total."""
    genai_prices = pytest.importorskip("genai_prices")
    usage = (await client.get("/api/usage", params={"by": "task_id"})).json()
    rows = {row["key"]: row for row in usage["rows"]}
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200),
        "gpt-4o",
        genai_request_timestamp=T0 + timedelta(seconds=2),
    ).total_price
    assert rows["t1"]["cost_usd"] == pytest.approx(0.5 + float(expected))
    assert rows["t1"]["cost_source"] == "mixed"
    assert rows["t2"]["cost_usd"] == pytest.approx(0.25)  # made-up-model: no price
    assert rows["t2"]["cost_source"] == "producer"
    assert usage["total"]["cost_source"] == "mixed"
    by_model = {row["key"]: row for row in (await client.get("/api/usage")).json()["rows"]}
    assert by_model["gpt-4o"]["cost_source"] == "mixed"
    assert by_model["sim-large"]["cost_source"] == "producer"
    assert by_model["made-up-model"]["cost_source"] is None
    assert by_model["made-up-model"]["cost_usd"] == 0


def test_without_genai_prices_no_cost_is_computed(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the package is absent, costs are the producer's and cost_source never names it."""
    from sinks.workspace import _prices

    monkeypatch.setattr(_prices, "_loaded", True)
    monkeypatch.setattr(_prices, "_table", None)
    with Workspace(workspace) as reader:
        usage = reader.usage("model")
    assert usage["total"]["cost_usd"] == pytest.approx(0.75)
    assert usage["total"]["cost_source"] == "producer"
    assert {row["key"]: row["cost_source"] for row in usage["rows"]} == {
        "sim-large": "producer",
        "gpt-4o": "producer",
        "made-up-model": None,
    }


# --- the text filter -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_events_q_keeps_events_whose_message_holds_the_text(
    client: httpx.AsyncClient,
) -> None:
    """``q`` matches the message ignoring case, with the other filters, page by page."""
    page = (await client.get("/api/sessions/s/events", params={"q": "compile failed"})).json()
    assert [event["message"] for event in page["events"]] == ["Compile FAILED in t2"]
    assert page["next"] is None
    every = (await client.get("/api/sessions/s/events", params={"q": "response"})).json()
    assert len(every["events"]) == 4
    first = (
        await client.get("/api/sessions/s/events", params={"q": "response", "limit": "3"})
    ).json()
    rest = (
        await client.get("/api/sessions/s/events", params={"q": "response", "after": first["next"]})
    ).json()
    assert first["ids"] + rest["ids"] == every["ids"]
    assert rest["next"] is None
    none = (
        await client.get("/api/sessions/s/events", params={"q": "response", "type": "info"})
    ).json()
    assert none == {"events": [], "ids": [], "next": None}


def test_stored_json_lines_are_json(workspace: Path) -> None:
    """(The fixture's log is valid JSON lines: the tests above read it as the API serves it.)"""
    for line in (workspace / "s" / "events.jsonl").read_bytes().splitlines():
        json.loads(line)


@pytest.mark.anyio
async def test_events_tail_gives_the_last_events_oldest_first(client: httpx.AsyncClient) -> None:
    """``tail=n``: the last n matching events in time order, ``next`` null."""
    every = (await client.get("/api/sessions/s/events")).json()
    last = (await client.get("/api/sessions/s/events", params={"tail": "2"})).json()
    assert last["ids"] == every["ids"][-2:]
    assert last["next"] is None
    refused = await client.get("/api/sessions/s/events", params={"tail": "2", "q": "x"})
    assert refused.status_code == 400
    assert "tail" in refused.json()["error"]


def test_usage_answers_again_after_a_log_grows(workspace: Path) -> None:
    """An answer is reused only while the logs are unchanged: a new response counts."""
    with Workspace(workspace) as reader:
        first = reader.usage("day")
        assert reader.usage("day") == first
        first["rows"].clear()  # the caller's copy: the next answer is whole
        assert reader.usage("day")["rows"]
        late = create_llm_response_event("s", "sim-large", "coder", 1, 1, "t3", cost_usd=1.0)
        _write(workspace, "s", [_at(late, 10)])
        again = reader.usage("day")
    assert again["total"]["calls"] == 5
    assert again["total"]["cost_usd"] == pytest.approx(first["total"]["cost_usd"] + 1.0)
