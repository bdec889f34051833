"""The JSON API in-process (httpx's ASGI transport): shapes, errors, paging, token, OpenAPI."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.routing import Mount, Route

from eventbus import (
    Event,
    EventType,
    create_llm_response_event,
    create_session_event,
    create_task_event,
)
from eventbus.web import create_app
from sinks.jsonl import EventLog

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _at(event: Event, seconds: float) -> Event:
    """``event`` stamped ``seconds`` after T0 (so that time order is the order written)."""
    return Event.from_dict({**event.to_dict(), "timestamp": (T0 + timedelta(seconds=seconds))})


def _write(root: Path, session_id: str, events: list[Event]) -> list[Event]:
    with EventLog(root / session_id / "events.jsonl") as log:
        for event in events:
            log.append(event)
    return events


def _session(session_id: str, start: float) -> list[Event]:
    """A small finished session: two tasks, two LLM responses on two models."""
    events = [
        create_session_event(session_id, EventType.SESSION_STARTED),
        create_task_event(session_id, EventType.TASK_STARTED, "t1", agent_role="coder"),
        create_llm_response_event(session_id, "gpt-a", "coder", 10, 5, "t1", cost_usd=0.01),
        create_task_event(session_id, EventType.TASK_COMPLETED, "t1", agent_role="coder"),
        create_task_event(session_id, EventType.TASK_STARTED, "t2", agent_role="tester"),
        create_llm_response_event(session_id, "gpt-b", "tester", 20, 2, "t2", cost_usd=0.02),
        create_task_event(session_id, EventType.TASK_FAILED, "t2", agent_role="tester"),
        create_session_event(session_id, EventType.SESSION_COMPLETED),
    ]
    return [_at(event, start + n) for n, event in enumerate(events)]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    _write(tmp_path, "older", _session("older", 0))
    _write(tmp_path, "newer", _session("newer", 100))
    return tmp_path


@pytest.fixture
async def client(workspace: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_app(workspace))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def _stored(root: Path, session_id: str) -> list[dict[str, Any]]:
    with EventLog(root / session_id / "events.jsonl") as log:
        return [event.to_dict() for event in log.get_events()]


@pytest.mark.anyio
async def test_sessions_are_listed_newest_first(client: httpx.AsyncClient) -> None:
    """``GET /api/sessions`` returns ``{"sessions": [...]}`` with the newest session first."""
    response = await client.get("/api/sessions")
    assert response.status_code == 200
    assert [row["session_id"] for row in response.json()["sessions"]] == ["newer", "older"]


@pytest.mark.anyio
async def test_one_session_is_its_summary_with_artifact_keys(client: httpx.AsyncClient) -> None:
    """``GET /api/sessions/{id}`` is the list's summary plus ``artifacts``."""
    listed = (await client.get("/api/sessions")).json()["sessions"][0]
    summary = (await client.get("/api/sessions/newer")).json()
    assert summary == {**listed, "artifacts": []}


@pytest.mark.anyio
async def test_unknown_session_is_404_with_an_error_message(client: httpx.AsyncClient) -> None:
    """An id with no session answers 404 and JSON naming what to do."""
    response = await client.get("/api/sessions/missing/events")
    assert response.status_code == 404
    assert "no session 'missing'" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize("session_id", ["%2e%2e", ".git", "a%5Cb", "con"])
async def test_a_session_id_that_is_no_name_is_400(
    client: httpx.AsyncClient, session_id: str
) -> None:
    """Ids that could leave the root or name no directory are refused with 400, never read."""
    for path in ("", "/events", "/stream"):
        response = await client.get(f"/api/sessions/{session_id}{path}")
        assert response.status_code == 400, path
        assert "invalid session id" in response.json()["error"]


@pytest.mark.anyio
async def test_pages_of_events_follow_next_through_the_whole_log(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """Following ``next`` with ``after`` returns every stored event once, as stored."""
    events: list[dict[str, Any]] = []
    after = None
    while True:
        params = {"limit": 3} | ({"after": after} if after else {})
        page = (await client.get("/api/sessions/newer/events", params=params)).json()
        events += page["events"]
        after = page["next"]
        if after is None:
            break
    assert events == _stored(workspace, "newer")


@pytest.mark.anyio
async def test_event_filters_select_by_type_task_and_model(client: httpx.AsyncClient) -> None:
    """``type`` (repeated or comma-separated), ``task_id`` and ``model`` filter the events."""
    url = "/api/sessions/older/events"
    by_type = (await client.get(url, params={"type": "task_started,task_failed"})).json()
    assert [e["event_type"] for e in by_type["events"]] == ["task_started"] * 2 + ["task_failed"]
    by_task = (await client.get(url, params={"task_id": "t2"})).json()
    assert {e["task_id"] for e in by_task["events"]} == {"t2"}
    by_model = (await client.get(url, params={"model": "gpt-b"})).json()
    assert [e["model"] for e in by_model["events"]] == ["gpt-b"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/sessions/older/events?limit=0", "limit='0'"),
        ("/api/sessions/older/events?since=yesterday", "since='yesterday'"),
        ("/api/sessions/older/events?since=1h&until=2h", "since='1h'"),
        ("/api/sessions/older/events?after=no-such-event", "no-such-event"),
        ("/api/sessions/older/events?after=bad%20id", "after='bad id'"),
        ("/api/usage?by=colour", "by='colour'"),
        ("/api/sessions?since=soon", "since='soon'"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, url: str, message: str
) -> None:
    """A parameter that cannot be used answers 400 with a message that names it."""
    response = await client.get(url)
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.anyio
async def test_usage_has_the_cli_shape_and_counts_responses(client: httpx.AsyncClient) -> None:
    """``/api/usage?by=model`` is ``{"by", "rows", "total"}`` over llm_response_received."""
    usage = (await client.get("/api/usage", params={"by": "model", "session_id": "older"})).json()
    assert usage["by"] == "model"
    rows = {row["key"]: row for row in usage["rows"]}
    assert set(rows) == {"gpt-a", "gpt-b"}
    assert rows["gpt-a"] == {
        "key": "gpt-a",
        "calls": 1,
        "prompt_tokens": 10,
        "cached_tokens": 0,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_usd": pytest.approx(0.01),
    }
    assert usage["total"]["total_tokens"] == 37
    assert usage["total"]["calls"] == 2


@pytest.fixture
async def local(workspace: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app as a browser on this machine reaches it."""
    transport = httpx.ASGITransport(create_app(workspace))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


@pytest.mark.anyio
async def test_usage_rows_and_total_have_cached_tokens(
    local: httpx.AsyncClient, workspace: Path
) -> None:
    """Every row and the total of /api/usage say how many prompt tokens were cached."""
    cached = create_llm_response_event("cached", "gpt-a", "coder", 90, 5, "t9", cached_tokens=64)
    _write(workspace, "cached", [_at(cached, 200)])
    usage = (await local.get("/api/usage", params={"by": "model"})).json()
    assert {row["key"]: row["cached_tokens"] for row in usage["rows"]} == {"gpt-a": 64, "gpt-b": 0}
    assert usage["total"]["cached_tokens"] == 64


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("short", "field"), [("role", "agent_role"), ("task", "task_id"), ("session", "session_id")]
)
async def test_usage_by_a_short_name_groups_by_its_field(
    local: httpx.AsyncClient, short: str, field: str
) -> None:
    """by=role, by=task and by=session answer as by=agent_role, ...; "by" names the field."""
    response = await local.get("/api/usage", params={"by": short})
    assert response.status_code == 200
    assert response.json() == (await local.get("/api/usage", params={"by": field})).json()
    assert response.json()["by"] == field


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "/api/sessions/older/events?type=task_started,bogus",
        "/api/stream?type=bogus",
        "/api/sessions/older/stream?type=bogus",
    ],
)
async def test_an_unknown_type_is_400_listing_the_known_ones(
    local: httpx.AsyncClient, url: str
) -> None:
    """type=bogus is refused, naming the parameter and the known types, not an empty answer."""
    with anyio.fail_after(10):  # not a stream that never sends anything
        response = await local.get(url)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("parameter type='bogus': no such event type")
    assert "task_failed" in error.split("known types: ")[1]


@pytest.mark.anyio
async def test_a_type_a_newer_producer_wrote_is_accepted(
    local: httpx.AsyncClient, workspace: Path
) -> None:
    """A type this version does not know but a log holds filters, even a session without it."""
    newer = Event(
        event_type=EventType("kind_from_v9"), session_id="older", message="from the future"
    )
    _write(workspace, "older", [_at(newer, 50)])
    url = "/api/sessions/{}/events?type=kind_from_v9"
    found = await local.get(url.format("older"))
    absent = await local.get(url.format("newer"))
    assert [e["message"] for e in found.json()["events"]] == ["from the future"]
    assert (absent.status_code, absent.json()["events"]) == (200, [])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "headers", "message"),
    [
        pytest.param(
            "/api/sessions/older/events?after=bogus",
            {},
            "parameter after='bogus': no event with that id in the workspace; take an id "
            "from GET /api/sessions/{session_id}/events",
            id="after",
        ),
        pytest.param(
            "/api/sessions/older/stream",
            {"Last-Event-ID": "bogus"},
            "Last-Event-ID 'bogus': no event with that id in the workspace; reconnect without it",
            id="last-event-id",
        ),
        pytest.param(
            "/api/stream?last_event_id=bogus",
            {},
            "parameter last_event_id='bogus': no event with that id in the workspace",
            id="last_event_id",
        ),
    ],
)
async def test_an_unknown_position_names_the_parameter_not_the_library(
    local: httpx.AsyncClient, url: str, headers: dict[str, str], message: str
) -> None:
    """An after id no log holds is a 400 in the API's terms, with no Python advice."""
    response = await local.get(url, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith(message)
    assert "pass the Event" not in error


@pytest.mark.anyio
async def test_with_a_token_every_api_route_wants_it(workspace: Path) -> None:
    """Without the token /api answers 401; a Bearer header or ``?token=`` gets in; ``/`` is open."""
    transport = httpx.ASGITransport(create_app(workspace, token="s3cret"))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for url in ("/api/sessions", "/api/sessions/older", "/api/usage", "/api/stream"):
            response = await client.get(url)
            assert response.status_code == 401, url
            assert "token" in response.json()["error"]
            wrong = await client.get(url, headers={"Authorization": "Bearer s3cre"})
            assert wrong.status_code == 401, url
        bearer = await client.get("/api/sessions", headers={"Authorization": "Bearer s3cret"})
        query = await client.get("/api/sessions", params={"token": "s3cret"})
        page = await client.get("/")
    assert (bearer.status_code, query.status_code, page.status_code) == (200, 200, 200)


@pytest.mark.anyio
async def test_cors_headers_only_for_the_origins_asked(workspace: Path) -> None:
    """No CORS header by default; ``cors_origins`` allows exactly those origins."""
    origin = {"Origin": "http://dashboards.example"}
    plain = httpx.ASGITransport(create_app(workspace))
    allowed = httpx.ASGITransport(create_app(workspace, cors_origins=["http://dashboards.example"]))
    async with httpx.AsyncClient(transport=plain, base_url="http://testserver") as client:
        without = await client.get("/api/sessions", headers=origin)
    async with httpx.AsyncClient(transport=allowed, base_url="http://testserver") as client:
        with_cors = await client.get("/api/sessions", headers=origin)
    assert "access-control-allow-origin" not in without.headers
    assert with_cors.headers["access-control-allow-origin"] == "http://dashboards.example"


@pytest.mark.anyio
async def test_openapi_lists_every_route(workspace: Path) -> None:
    """``/openapi.json`` describes each route of the app, and no route that is not there."""
    app = create_app(workspace)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        schema = (await client.get("/openapi.json")).json()
    routes = {route.path for route in app.routes if isinstance(route, Route)}
    assert not any(isinstance(route, Mount) and route.path != "/static" for route in app.routes)
    assert set(schema["paths"]) == routes
    assert all(operation["get"]["summary"] for operation in schema["paths"].values())


@pytest.mark.anyio
async def test_unknown_routes_are_404_in_json(client: httpx.AsyncClient) -> None:
    """A path the API does not have answers a JSON error pointing at /openapi.json."""
    response = await client.get("/api/nothing")
    assert response.status_code == 404
    assert "/openapi.json" in response.json()["error"]


@pytest.mark.anyio
async def test_the_dashboard_loads_every_asset_from_the_package(
    client: httpx.AsyncClient,
) -> None:
    """The page and its script and styles are served locally and name no other host."""
    page = (await client.get("/")).text
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert assets, "the page links no assets"
    for asset in assets:
        assert asset.startswith("/static/"), asset
        response = await client.get(asset)
        assert response.status_code == 200, asset
        if asset.endswith((".js", ".css")) and "vendor" not in asset:
            assert not re.search(r"https?://", response.text), asset
    vendor = (await client.get("/static/vendor/uplot/LICENSE")).text
    assert "MIT License" in vendor


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org"])
def test_serve_refuses_a_non_loopback_address_without_a_token(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eventbus serve DIR --host H`` off loopback without a token exits 2 with one line."""
    from eventbus.cli import main

    monkeypatch.delenv("EVENTBUS_TOKEN", raising=False)
    assert main(["serve", str(tmp_path), "--host", host]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "--token TOKEN or set EVENTBUS_TOKEN" in error
