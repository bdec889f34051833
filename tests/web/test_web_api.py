"""The JSON API in-process (httpx's ASGI transport): shapes, errors, paging, token, OpenAPI."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import httpx
import pytest
from starlette.routing import Mount, Route

from _web_server import serving
from eventbus import (
    Event,
    EventBus,
    EventType,
    create_llm_response_event,
    create_session_event,
    create_task_event,
    encode_event,
)
from eventbus.web import create_app
from sinks.jsonl import EventLog, JsonlSink
from sinks.workspace import Workspace

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
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def _stored(root: Path, session_id: str) -> list[dict[str, Any]]:
    """Each line of the session's log parsed as JSON (it is written in time order here)."""
    lines = (root / session_id / "events.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


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
        "cost_source": "producer",
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
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
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
    async with httpx.AsyncClient(transport=plain, base_url="http://127.0.0.1") as client:
        without = await client.get("/api/sessions", headers=origin)
    async with httpx.AsyncClient(transport=allowed, base_url="http://127.0.0.1") as client:
        with_cors = await client.get("/api/sessions", headers=origin)
    assert "access-control-allow-origin" not in without.headers
    assert with_cors.headers["access-control-allow-origin"] == "http://dashboards.example"


@pytest.mark.anyio
async def test_openapi_lists_every_route(workspace: Path) -> None:
    """``/openapi.json`` describes each route of the app, and no route that is not there."""
    app = create_app(workspace)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        schema = (await client.get("/openapi.json")).json()
    routes = {
        route.path: {method.lower() for method in route.methods or ()} - {"head"}
        for route in app.routes
        if isinstance(route, Route)
    }
    assert not any(isinstance(route, Mount) and route.path != "/static" for route in app.routes)
    assert {path: set(item) for path, item in schema["paths"].items()} == routes
    operations = [op for item in schema["paths"].values() for op in item.values()]
    assert all(operation["summary"] for operation in operations)


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


# --- Host: no DNS rebinding without a token ------------------------------------------------

EVERY_ROUTE = [
    "/",
    "/static/app.js",
    "/openapi.json",
    "/api/sessions",
    "/api/sessions/older",
    "/api/sessions/older/events",
    "/api/sessions/older/stream",
    "/api/stream",
    "/api/usage",
    "/api/nothing",
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "host", ["attacker.com", "attacker.com:8000", "127.0.0.1.attacker.com", "localhost.evil:80"]
)
async def test_without_a_token_a_foreign_host_is_403_on_every_route(
    client: httpx.AsyncClient, host: str
) -> None:
    """A page rebinding its name to 127.0.0.1 reads nothing: pages and API alike answer 403."""
    for url in EVERY_ROUTE:
        response = await client.get(url, headers={"Host": host})
        assert response.status_code == 403, url
        assert f"Host: {host}" in response.json()["error"], url
        assert "--token" in response.json()["error"], url


@pytest.mark.anyio
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.1:8000", "127.1.2.3:80", "localhost", "LOCALHOST:8000", "[::1]:8000"],
)
async def test_without_a_token_loopback_hosts_are_served(
    client: httpx.AsyncClient, host: str
) -> None:
    """``localhost`` and loopback addresses, with or without a port, get the API."""
    response = await client.get("/api/sessions", headers={"Host": host})
    assert response.status_code == 200
    assert len(response.json()["sessions"]) == 2


@pytest.mark.anyio
async def test_without_a_token_a_request_without_host_is_403(workspace: Path) -> None:
    """An HTTP/1.0 request without ``Host`` cannot say it is for this machine: refused."""
    app = create_app(workspace)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "method": "GET",
        "scheme": "http",
        "path": "/api/sessions",
        "raw_path": b"/api/sessions",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 403
    assert b"no Host header" in sent[1]["body"]


@pytest.mark.anyio
async def test_with_a_token_any_host_is_served(workspace: Path) -> None:
    """With a token the token is the protection: a foreign ``Host`` with it gets the API."""
    transport = httpx.ASGITransport(create_app(workspace, token="s3cret"))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboards.example") as c:
        response = await c.get("/api/sessions", headers={"Authorization": "Bearer s3cret"})
        page = await c.get("/")
    assert (response.status_code, page.status_code) == (200, 200)


@pytest.mark.anyio
async def test_allowed_hosts_are_served_beside_loopback(workspace: Path) -> None:
    """``create_app(allowed_hosts=[...])`` accepts those names (any port) and loopback;
    ``["*"]`` accepts any ``Host``."""
    transport = httpx.ASGITransport(create_app(workspace, allowed_hosts=["testserver"]))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        named = await client.get("/api/sessions")
        with_port = await client.get("/api/sessions", headers={"Host": "TestServer:8000"})
        loopback = await client.get("/api/sessions", headers={"Host": "localhost"})
        other = await client.get("/api/sessions", headers={"Host": "attacker.com"})
    assert [r.status_code for r in (named, with_port, loopback, other)] == [200, 200, 200, 403]
    transport = httpx.ASGITransport(create_app(workspace, allowed_hosts=["*"]))
    async with httpx.AsyncClient(transport=transport, base_url="http://attacker.com") as client:
        assert (await client.get("/api/sessions")).status_code == 200


# --- symlinks leading out of the workspace ------------------------------------------------


@pytest.fixture
def linked(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Beside ``older`` and ``newer``: ``evil/events.jsonl``, ``gone`` (a session
    directory) and ``arty/artifacts`` are symlinks to a directory outside the workspace."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "artifacts").mkdir()
    _write(
        outside, "evil", [create_session_event("evil", EventType.SESSION_STARTED, message="SECRET")]
    )
    (workspace / "evil").mkdir()
    (workspace / "evil" / "events.jsonl").symlink_to(outside / "evil" / "events.jsonl")
    (workspace / "gone").symlink_to(outside / "evil")
    _write(workspace, "arty", _session("arty", 200))
    (workspace / "arty" / "artifacts").symlink_to(outside / "artifacts")
    return workspace


@pytest.mark.anyio
async def test_a_log_linked_outside_is_refused_403_and_never_served(
    linked: Path, client: httpx.AsyncClient
) -> None:
    """The session's events, stream and usage answer 403; lists over all sessions skip it."""
    for url in (
        "/api/sessions/evil/events",
        "/api/sessions/evil/stream",
        "/api/usage?session_id=evil",
    ):
        response = await client.get(url)
        assert response.status_code == 403, url
        assert "leads outside the workspace" in response.json()["error"], url
    assert "SECRET" not in (await client.get("/api/usage?by=session_id")).text
    page = await client.get("/api/sessions/evil")
    assert page.json()["event_count"] == 0
    assert "symlink" in page.json()["error"]


@pytest.mark.anyio
async def test_a_session_or_artifacts_directory_linked_outside_is_403_logged_once(
    linked: Path, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a 500: 403 with ``{"error"}`` naming no server path; the log names the link once."""
    with caplog.at_level("WARNING", logger="eventbus.web"):
        for _ in range(3):
            for url in ("/api/sessions/gone", "/api/sessions/gone/events", "/api/sessions/arty"):
                response = await client.get(url)
                assert response.status_code == 403, url
                assert str(linked) not in response.json()["error"], url
    logged = [record.getMessage() for record in caplog.records]
    assert sum("gone is a symlink" in message for message in logged) == 1
    assert sum("arty/artifacts is a symlink" in message for message in logged) == 1
    listed = (await client.get("/api/sessions")).json()["sessions"]
    assert "gone" not in {row["session_id"] for row in listed}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn serves on asyncio only
async def test_the_stream_of_every_session_never_sends_a_log_linked_outside(
    linked: Path, anyio_backend: str
) -> None:
    """``/api/stream`` from the files: the replay and the live part skip the linked-out log."""
    first = _stored(linked, "older")[0]["id"]
    received: list[dict[str, Any]] = []
    async with serving(create_app(linked)) as url, httpx.AsyncClient(timeout=10) as client:
        params = {"last_event_id": first}
        async with client.stream("GET", f"{url}/api/stream", params=params) as response:
            with anyio.fail_after(10):
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    received.append(json.loads(line.removeprefix("data: ")))
                    if len(received) == 7 + 8 + 8:  # the rest of older, newer, arty
                        _write(
                            linked,
                            "later",
                            [_at(create_session_event("later", EventType.SESSION_STARTED), 999)],
                        )
                    if received[-1]["session_id"] == "later":
                        break
    assert "evil" not in {event["session_id"] for event in received}
    assert len(received) == 7 + 8 + 8 + 1


# --- the events the API serves are the stored lines -----------------------------------------


@pytest.mark.anyio
async def test_events_are_the_stored_lines_as_query_json_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each event object equals its line as JsonlSink stored it (``Z`` times, field order,
    unknown fields kept), and the page equals ``eventbus query --json``."""
    from eventbus.cli import main

    events = _session("s1", 0)
    events[2] = Event.from_dict({**events[2].to_dict(), "metadata": {"note": "é ✓", "x": 1.5}})
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        for event in events:
            await bus.publish(event)
    log = tmp_path / "s1" / "events.jsonl"
    extra = json.loads(log.read_bytes().splitlines()[0]) | {
        "id": "e-new",
        "timestamp": "2026-01-05T13:00:00Z",
        "added_later": [1],
    }
    with log.open("ab") as file:
        file.write(json.dumps(extra, separators=(",", ":")).encode() + b"\n")
    transport = httpx.ASGITransport(create_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/api/sessions/s1/events")
    served = response.json()["events"]
    assert served == _stored(tmp_path, "s1")
    assert response.json()["ids"] == [event["id"] for event in served]
    assert served[0]["timestamp"].endswith("Z")
    assert list(served[0]) == list(json.loads(log.read_bytes().splitlines()[0]))
    assert main(["query", str(tmp_path), "--session", "s1", "--json"]) == 0
    assert served == [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.anyio
async def test_a_seed_format_line_is_served_as_stored_and_pages_by_its_derived_id(
    tmp_path: Path,
) -> None:
    """A line without ``id`` is served without one; ``ids`` and ``next`` hold the ids
    the workspace derives (those ``after`` and SSE's ``id:`` use)."""
    lines = []
    for n, event in enumerate(_session("seed", 0)[:3]):
        stored = json.loads(encode_event(event))
        del stored["id"], stored["parent_id"]
        lines.append(json.dumps(stored | {"message": f"seed {n}"}).encode())
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    transport = httpx.ASGITransport(create_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        url = "/api/sessions/seed/events"
        first = (await client.get(url, params={"limit": 2})).json()
        rest = (await client.get(url, params={"limit": 2, "after": first["next"]})).json()
    assert first["events"] + rest["events"] == [json.loads(line) for line in lines]
    assert "id" not in first["events"][0]
    derived = [event.id for event in Workspace(tmp_path).events()[0]]
    assert first["ids"] + rest["ids"] == derived
    assert first["next"] == derived[1]
    assert rest["next"] is None


# --- the OpenAPI document ---------------------------------------------------------------


def _problems(
    value: Any, schema: dict[str, Any], schemas: dict[str, Any], at: str = "$"
) -> list[str]:
    """Where ``value`` breaks ``schema`` (the JSON Schema keywords the document uses)."""
    if "$ref" in schema:
        return _problems(value, schemas[schema["$ref"].rpartition("/")[2]], schemas, at)
    problems: list[str] = []
    for part in schema.get("allOf", []):
        problems += _problems(value, part, schemas, at)
    if "anyOf" in schema and all(_problems(value, s, schemas, at) for s in schema["anyOf"]):
        problems.append(f"{at}: {value!r} matches none of anyOf")
    kinds = {"string": str, "integer": int, "number": int | float, "object": dict,
             "array": list, "null": type(None), "boolean": bool}  # fmt: skip
    kind = schema.get("type")
    if kind is not None and (
        not isinstance(value, kinds[kind]) or (kind in ("integer", "number") and value is True)
    ):
        return [*problems, f"{at}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{at}: {value!r} < {schema['minimum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if schema.get("format") == "date-time":
        try:
            assert datetime.fromisoformat(value).tzinfo is not None
        except (ValueError, AssertionError):
            problems.append(f"{at}: {value!r} is not an RFC 3339 date-time")
    if isinstance(value, dict):
        problems += [f"{at}: no {key!r}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += _problems(value[key], sub, schemas, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            problems += _problems(item, schema["items"], schemas, f"{at}[{n}]")
    return problems


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.anyio
async def test_openapi_declares_bounds_times_security_and_every_error(
    client: httpx.AsyncClient,
) -> None:
    """``limit`` 1..10000, times as date-time or an age, the token's schemes, and for each
    operation every status it answers (403 everywhere, 401/400 on /api, 404 per session),
    each with a schema; every ``$ref`` resolves."""
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert all(ref.rpartition("/")[2] in schemas for ref in _refs(document))
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": ANY},
        "token": {"type": "apiKey", "in": "query", "name": "token", "description": ANY},
    }
    operations = {path: item["get"] for path, item in document["paths"].items() if "get" in item}
    events = {p["name"]: p for p in operations["/api/sessions/{session_id}/events"]["parameters"]}
    assert events["limit"]["schema"] | {"default": 100} == {
        "type": "integer", "minimum": 1, "maximum": 10000, "default": 100
    }  # fmt: skip
    for name in ("since", "until"):
        kinds = events[name]["schema"]["anyOf"]
        assert {"type": "string", "format": "date-time"} in kinds
        assert any(re.search(k.get("pattern", "^$"), "10m") for k in kinds)
    for path, operation in operations.items():
        responses = operation["responses"]
        expected = {"200", "403"} | ({"400", "401"} if path.startswith("/api") else set())
        if "{session_id}" in path or path in ("/api/stream", "/api/usage"):
            expected.add("404")
        if path.endswith("/artifacts/{key}"):
            expected.add("413")
        assert set(responses) == expected, path
        assert "security" not in operation, path
        for status, response in responses.items():
            if status != "200":
                (media,) = response["content"].values()
                assert media["schema"] == {"$ref": "#/components/schemas/Error"}, path


@pytest.mark.anyio
async def test_openapi_with_a_token_requires_bearer_or_query_token_on_api_routes(
    workspace: Path,
) -> None:
    """The document of a server with a token says every /api route wants one of the two."""
    transport = httpx.ASGITransport(create_app(workspace, token="s3cret"))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        document = (await client.get("/openapi.json")).json()
    for path, item in document["paths"].items():
        for operation in item.values():
            security = operation.get("security")
            wanted: Any = [{"bearer": []}, {"token": []}] if path.startswith("/api") else None
            assert security == wanted, path


@pytest.mark.anyio
async def test_every_json_answer_matches_its_declared_schema(
    workspace: Path, client: httpx.AsyncClient
) -> None:
    """Answers and errors alike: the status is declared for the route, the body fits it."""
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    seed = {"event_type": "info", "session_id": "older", "message": "seed", "x": 1}
    with (workspace / "older" / "events.jsonl").open("ab") as log:  # a line without id
        log.write(json.dumps(seed | {"timestamp": "2026-01-05T13:00:00Z"}).encode() + b"\n")
    live = [
        create_session_event("live", EventType.SESSION_STARTED),
        Event(
            event_type=EventType.CLARIFICATION_REQUESTED,
            session_id="live",
            message="asked",
            metadata={"question_id": "q1", "question": "Which licence?"},
        ),
        Event(
            event_type=EventType.CONTROL_REJECTED,
            session_id="live",
            message="rejected",
            metadata={"command_id": "c0", "kind": "resume", "reason": "not paused"},
        ),
    ]
    _write(workspace, "live", live)
    commands = "/api/sessions/{session_id}/commands"
    posts = [
        (commands, "/api/sessions/live/commands", {"kind": "pause", "command_id": "c1"}, {}),
        (commands, "/api/sessions/live/commands", {"kind": "resume", "command_id": "c0"}, {}),
        (commands, "/api/sessions/live/commands", {"kind": "nope"}, {}),
        (commands, "/api/sessions/live/commands", {"kind": "pause"}, {"Origin": "http://x.org"}),
        (commands, "/api/sessions/nope/commands", {"kind": "pause"}, {}),
        (commands, "/api/sessions/older/commands", {"kind": "pause"}, {}),
        (commands, "/api/sessions/older/commands", {"kind": "pause"}, {"Host": "attacker.com"}),
    ]
    for path, url, body, headers in posts:
        response = await client.post(url, json=body, headers=headers)
        declared = document["paths"][path]["post"]["responses"]
        assert str(response.status_code) in declared, url
        schema = declared[str(response.status_code)]["content"]["application/json"]["schema"]
        assert _problems(response.json(), schema, schemas) == [], (url, body)
    plain = await client.post(
        "/api/sessions/live/commands", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    declared = document["paths"][commands]["post"]["responses"]
    assert (
        _problems(plain.json(), declared["415"]["content"]["application/json"]["schema"], schemas)
        == []
    )
    pending = "/api/sessions/{session_id}/pending"
    command = "/api/sessions/{session_id}/commands/{command_id}"
    requests = [
        (pending, "/api/sessions/live/pending", {}),
        (pending, "/api/sessions/older/pending", {}),
        (pending, "/api/sessions/nope/pending", {}),
        (command, "/api/sessions/live/commands/c1", {}),
        (command, "/api/sessions/live/commands/c0", {}),
        (command, "/api/sessions/live/commands/c9", {}),
        ("/api/sessions", "/api/sessions", {}),
        ("/api/sessions", "/api/sessions?since=bad", {}),
        ("/api/sessions", "/api/sessions", {"Host": "attacker.com"}),
        ("/api/sessions/{session_id}", "/api/sessions/older", {}),
        ("/api/sessions/{session_id}", "/api/sessions/missing", {}),
        ("/api/sessions/{session_id}", "/api/sessions/.git", {}),
        ("/api/sessions/{session_id}/events", "/api/sessions/older/events?limit=20", {}),
        ("/api/sessions/{session_id}/events", "/api/sessions/older/events?limit=3", {}),
        ("/api/sessions/{session_id}/events", "/api/sessions/older/events?limit=10001", {}),
        ("/api/sessions/{session_id}/events", "/api/sessions/nope/events", {}),
        ("/api/sessions/{session_id}/stream", "/api/sessions/nope/stream", {}),
        ("/api/stream", "/api/stream?session_id=nope", {}),
        ("/api/usage", "/api/usage?by=phase", {}),
        ("/api/usage", "/api/usage?session_id=nope", {}),
        ("/openapi.json", "/openapi.json", {}),
        ("/", "/", {"Host": "attacker.com"}),
    ]
    for path, url, headers in requests:
        response = await client.get(url, headers=headers)
        declared = document["paths"][path]["get"]["responses"]
        assert str(response.status_code) in declared, url
        schema = declared[str(response.status_code)]["content"]["application/json"]["schema"]
        assert _problems(response.json(), schema, schemas) == [], url
