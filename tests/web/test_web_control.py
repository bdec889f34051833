"""The control routes in-process (httpx's ASGI transport): pending, commands, their guards."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import factories
from eventbus import Event, EventType
from eventbus.coordinator import Command, submit_command
from eventbus.web import create_app
from sinks.jsonl import EventLog

LIVE = "live"
ENDED = "ended"
PAUSE = {"kind": "pause"}


def _write(root: Path, session_id: str, *events: Event) -> None:
    with EventLog(root / session_id / "events.jsonl") as log:
        for event in events:
            log.append(event)


def _event(i: int, session_id: str, event_type: EventType, **fields: Any) -> Event:
    return factories.event(i, session_id, event_type, seconds=i, **fields)


def _outcome(i: int, command_id: str, *, applied: bool, reason: str | None = None) -> Event:
    kind = EventType.CONTROL_APPLIED if applied else EventType.CONTROL_REJECTED
    metadata = {"command_id": command_id, "kind": "pause", "target": None, "actor": "cli"}
    return _event(i, LIVE, kind, metadata={**metadata, "reason": reason})


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """``live`` waits for an answer (q1) and an approval (r1) and has decided two commands;
    ``ended`` has completed."""
    _write(
        tmp_path,
        LIVE,
        _event(0, LIVE, EventType.SESSION_STARTED),
        _event(
            1,
            LIVE,
            EventType.CLARIFICATION_REQUESTED,
            task_id="plan",
            agent_role="planner",
            metadata={"question_id": "q1", "question": "Which licence?"},
        ),
        _event(
            2,
            LIVE,
            EventType.APPROVAL_REQUESTED,
            metadata={"request_id": "r1", "subject": "the plan (3 tasks)"},
        ),
        _outcome(3, "done-1", applied=True),
        _outcome(4, "no-1", applied=False, reason="the session is not paused"),
    )
    for command_id in ("done-1", "no-1"):
        submit_command(tmp_path, LIVE, Command(kind="pause", command_id=command_id))
    _write(
        tmp_path,
        ENDED,
        _event(0, ENDED, EventType.SESSION_STARTED),
        _event(1, ENDED, EventType.SESSION_COMPLETED),
    )
    return tmp_path


def _client(app: Any, base_url: str = "http://127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=base_url)


@pytest.fixture
async def client(workspace: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_app(workspace)) as client:
        yield client


def _inbox(root: Path, session_id: str = LIVE) -> list[dict[str, Any]]:
    lines = (root / session_id / "control.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


# --- GET /api/sessions/{id}/pending -------------------------------------------------------


@pytest.mark.anyio
async def test_pending_lists_the_open_question_and_approval(client: httpx.AsyncClient) -> None:
    """``{"pending": [...]}``: what ``Workspace.pending`` returns, oldest first."""
    response = await client.get(f"/api/sessions/{LIVE}/pending")
    assert response.status_code == 200
    assert response.json() == {
        "pending": [
            {
                "kind": "clarification",
                "id": "q1",
                "task_id": "plan",
                "role": "planner",
                "text": "Which licence?",
            },
            {
                "kind": "approval",
                "id": "r1",
                "task_id": None,
                "role": None,
                "text": "the plan (3 tasks)",
            },
        ]
    }
    assert "x-eventbus-read-only" not in response.headers


@pytest.mark.anyio
async def test_an_ended_session_has_nothing_pending(client: httpx.AsyncClient) -> None:
    """Once a session has ended it waits for nothing."""
    response = await client.get(f"/api/sessions/{ENDED}/pending")
    assert (response.status_code, response.json()) == (200, {"pending": []})


# --- POST /api/sessions/{id}/commands -----------------------------------------------------


@pytest.mark.anyio
async def test_a_command_is_queued_in_the_inbox_with_actor_api(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """202 ``{"command_id", "status": "queued"}``; the inbox holds it, the actor is ``api``."""
    response = await client.post(
        f"/api/sessions/{LIVE}/commands",
        json={"kind": "answer", "target": "q1", "text": "MIT", "command_id": "a-1"},
    )
    assert response.status_code == 202
    assert response.json() == {"command_id": "a-1", "status": "queued"}
    last = _inbox(workspace)[-1]
    assert {k: last[k] for k in ("command_id", "kind", "target", "text", "actor")} == {
        "command_id": "a-1",
        "kind": "answer",
        "target": "q1",
        "text": "MIT",
        "actor": "api",
    }


@pytest.mark.anyio
async def test_a_command_without_id_gets_one_and_the_actor_header_names_the_sender(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """The answer's ``command_id`` is the one queued; ``X-Eventbus-Actor`` is its actor."""
    response = await client.post(
        f"/api/sessions/{LIVE}/commands",
        json={"kind": "reject", "target": "r1", "reason": "too broad"},
        headers={"X-Eventbus-Actor": "alice"},
    )
    assert response.status_code == 202
    command_id = response.json()["command_id"]
    last = _inbox(workspace)[-1]
    assert (last["command_id"], last["actor"], last["reason"]) == (command_id, "alice", "too broad")
    status = await client.get(f"/api/sessions/{LIVE}/commands/{command_id}")
    assert status.json() == {
        "command_id": command_id,
        "kind": "reject",
        "status": "queued",
        "reason": None,
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("command_id", "outcome"),
    [
        pytest.param("done-1", {"status": "applied", "reason": None}, id="applied"),
        pytest.param(
            "no-1", {"status": "rejected", "reason": "the session is not paused"}, id="rejected"
        ),
    ],
)
async def test_repeating_a_decided_command_answers_200_with_its_outcome(
    client: httpx.AsyncClient, workspace: Path, command_id: str, outcome: dict[str, Any]
) -> None:
    """A client unsure whether its command went through may send it again: nothing is
    appended, the answer is the outcome."""
    before = _inbox(workspace)
    response = await client.post(
        f"/api/sessions/{LIVE}/commands", json={**PAUSE, "command_id": command_id}
    )
    assert response.status_code == 200
    assert response.json() == {"command_id": command_id, "kind": "pause", **outcome}
    assert _inbox(workspace) == before


@pytest.mark.anyio
async def test_repeating_a_queued_command_is_202_and_not_appended_twice(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """The same id sent twice while it waits: one line in the inbox."""
    body = {**PAUSE, "command_id": "p-2"}
    first = await client.post(f"/api/sessions/{LIVE}/commands", json=body)
    again = await client.post(f"/api/sessions/{LIVE}/commands", json=body)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == {"command_id": "p-2", "status": "queued"}
    assert [line["command_id"] for line in _inbox(workspace)].count("p-2") == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"{not json", "the body is not a command", id="not-json"),
        pytest.param(b'["pause"]', "the body is not a command", id="not-an-object"),
        pytest.param(b"{}", "the body is not a command", id="no-kind"),
        pytest.param(b'{"kind": "pause", "colour": 1}', "colour", id="unknown-field"),
        pytest.param(b'{"kind": 3}', "the body is not a command", id="kind-not-text"),
        pytest.param(b'{"kind": "explode"}', "unknown kind 'explode'", id="unknown-kind"),
        pytest.param(b'{"kind": "answer", "text": "x"}', "answer needs a target", id="no-target"),
        pytest.param(b'{"kind": "answer", "target": "q1"}', "answer needs the text", id="no-text"),
        pytest.param(b'{"kind": "pause", "target": "q1"}', "pause takes no target", id="target"),
        pytest.param(b'{"kind": "pause", "command_id": ""}', "command_id is empty", id="empty-id"),
    ],
)
async def test_a_body_that_is_no_command_is_400_saying_why(
    client: httpx.AsyncClient, workspace: Path, content: bytes, message: str
) -> None:
    """Nothing is queued; the error names the problem."""
    before = _inbox(workspace)
    response = await client.post(
        f"/api/sessions/{LIVE}/commands",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert _inbox(workspace) == before


@pytest.mark.anyio
async def test_an_actor_in_the_body_wins_over_the_header(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """``{"actor": ...}`` names the sender too (for clients that cannot set headers)."""
    response = await client.post(
        f"/api/sessions/{LIVE}/commands",
        json={**PAUSE, "actor": "bob"},
        headers={"X-Eventbus-Actor": "alice"},
    )
    assert response.status_code == 202
    assert _inbox(workspace)[-1]["actor"] == "bob"


@pytest.mark.anyio
async def test_an_actor_header_with_control_characters_is_400(client: httpx.AsyncClient) -> None:
    """The actor goes into the log: it must be printable."""
    response = await client.post(
        f"/api/sessions/{LIVE}/commands", json=PAUSE, headers={"X-Eventbus-Actor": "a\tb"}
    )
    assert response.status_code == 400
    assert "X-Eventbus-Actor" in response.json()["error"]


@pytest.mark.anyio
async def test_a_body_over_64_kib_is_413(client: httpx.AsyncClient) -> None:
    """An answer's text is bounded like the inbox's lines."""
    text = "x" * (64 * 1024)
    response = await client.post(
        f"/api/sessions/{LIVE}/commands", json={"kind": "answer", "target": "q1", "text": text}
    )
    assert response.status_code == 413
    assert "at most 65536 bytes" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio: httpx's unread body warns
async def test_a_streamed_body_over_64_kib_is_413(client: httpx.AsyncClient) -> None:
    """Without Content-Length (chunked), reading stops at the bound."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"kind": "answer", "target": "q1", "text": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post(
        f"/api/sessions/{LIVE}/commands",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413


@pytest.mark.anyio
async def test_a_command_to_an_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    """No session, no inbox: nothing is created."""
    response = await client.post("/api/sessions/missing/commands", json=PAUSE)
    assert response.status_code == 404
    assert "no session 'missing'" in response.json()["error"]


@pytest.mark.anyio
async def test_a_command_to_an_ended_session_is_409(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """An ended session takes no more commands; its inbox is not written."""
    response = await client.post(f"/api/sessions/{ENDED}/commands", json=PAUSE)
    assert response.status_code == 409
    assert f"session {ENDED!r} has ended" in response.json()["error"]
    assert not (workspace / ENDED / "control.jsonl").exists()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "content"),
    [
        pytest.param(
            {"Content-Type": "application/x-www-form-urlencoded"}, b"kind=pause", id="form"
        ),
        pytest.param({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--", id="multipart"),
        pytest.param({"Content-Type": "text/plain"}, b'{"kind": "pause"}', id="text-plain"),
        pytest.param({}, b'{"kind": "pause"}', id="no-content-type"),
    ],
)
async def test_a_body_not_sent_as_json_is_415(
    client: httpx.AsyncClient, workspace: Path, headers: dict[str, str], content: bytes
) -> None:
    """What a page of another site can post without a preflight is refused, and not read."""
    before = _inbox(workspace)
    response = await client.post(f"/api/sessions/{LIVE}/commands", content=content, headers=headers)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["error"]
    assert _inbox(workspace) == before


@pytest.mark.anyio
async def test_json_with_a_charset_is_accepted(client: httpx.AsyncClient) -> None:
    """``application/json; charset=utf-8`` is JSON."""
    response = await client.post(
        f"/api/sessions/{LIVE}/commands",
        content=b'{"kind": "pause"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 202


# --- GET /api/sessions/{id}/commands/{command_id} ----------------------------------------


@pytest.mark.anyio
async def test_a_commands_state_is_applied_rejected_or_queued(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """The outcome the log holds, else ``queued`` while it waits in the inbox."""
    submit_command(workspace, LIVE, Command(kind="resume", command_id="waiting"))
    answers = {
        command_id: (await client.get(f"/api/sessions/{LIVE}/commands/{command_id}")).json()
        for command_id in ("done-1", "no-1", "waiting")
    }
    assert answers == {
        "done-1": {"command_id": "done-1", "kind": "pause", "status": "applied", "reason": None},
        "no-1": {
            "command_id": "no-1",
            "kind": "pause",
            "status": "rejected",
            "reason": "the session is not paused",
        },
        "waiting": {"command_id": "waiting", "kind": "resume", "status": "queued", "reason": None},
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            f"/api/sessions/{LIVE}/commands/never-sent", "no command 'never-sent'", id="cmd"
        ),
        pytest.param("/api/sessions/missing/commands/done-1", "no session 'missing'", id="session"),
        pytest.param("/api/sessions/missing/pending", "no session 'missing'", id="pending"),
    ],
)
async def test_an_unknown_command_or_session_is_404(
    client: httpx.AsyncClient, url: str, message: str
) -> None:
    """The error says which of the two is unknown."""
    response = await client.get(url)
    assert response.status_code == 404
    assert message in response.json()["error"]


# --- who may act ------------------------------------------------------------------------

CONTROL_ROUTES = [
    ("GET", f"/api/sessions/{LIVE}/pending"),
    ("POST", f"/api/sessions/{LIVE}/commands"),
    ("GET", f"/api/sessions/{LIVE}/commands/done-1"),
]


@pytest.mark.anyio
async def test_with_a_token_every_control_route_wants_it(workspace: Path) -> None:
    """401 without the token (nothing queued); with it, the routes answer."""
    async with _client(create_app(workspace, token="s3cret")) as client:
        for method, url in CONTROL_ROUTES:
            response = await client.request(method, url, json=PAUSE)
            assert response.status_code == 401, url
            assert "token" in response.json()["error"], url
        assert [line["command_id"] for line in _inbox(workspace)] == ["done-1", "no-1"]
        bearer = {"Authorization": "Bearer s3cret"}
        answers = [
            (await client.request(method, url, json=PAUSE, headers=bearer)).status_code
            for method, url in CONTROL_ROUTES
        ]
    assert answers == [200, 202, 200]


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["attacker.com", "attacker.com:8000", "localhost.evil"])
async def test_without_a_token_a_foreign_host_is_403_on_every_control_route(
    client: httpx.AsyncClient, workspace: Path, host: str
) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 can neither read nor act."""
    for method, url in CONTROL_ROUTES:
        response = await client.request(method, url, json=PAUSE, headers={"Host": host})
        assert response.status_code == 403, url
        assert f"Host: {host}" in response.json()["error"], url
    assert [line["command_id"] for line in _inbox(workspace)] == ["done-1", "no-1"]


@pytest.mark.anyio
async def test_a_command_from_a_page_of_another_origin_is_403(
    client: httpx.AsyncClient, workspace: Path
) -> None:
    """A browser's POST says where it comes from: another site's ``Origin`` is refused,
    the server's own (its dashboard) is accepted."""
    url = f"/api/sessions/{LIVE}/commands"
    refused = {
        origin: (await client.post(url, json=PAUSE, headers={"Origin": origin})).status_code
        for origin in ("http://attacker.com", "http://127.0.0.1:9", "null", "file://")
    }
    assert refused == dict.fromkeys(refused, 403)
    foreign = await client.post(url, json=PAUSE, headers={"Origin": "http://attacker.com"})
    assert "Origin: http://attacker.com" in foreign.json()["error"]
    for own in ("http://127.0.0.1", "https://127.0.0.1"):  # https: behind a TLS proxy
        response = await client.post(url, json=PAUSE, headers={"Origin": own})
        assert response.status_code == 202, own


@pytest.mark.anyio
async def test_a_cors_origin_may_send_commands(workspace: Path) -> None:
    """An origin given in ``cors_origins`` passes the preflight and the Origin check."""
    origin = "http://dashboards.example"
    url = f"/api/sessions/{LIVE}/commands"
    async with _client(create_app(workspace, cors_origins=[origin])) as client:
        preflight = await client.options(
            url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-eventbus-actor",
            },
        )
        response = await client.post(url, json=PAUSE, headers={"Origin": origin})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert response.status_code == 202


@pytest.mark.anyio
async def test_a_read_only_server_refuses_commands_and_still_shows_what_is_pending(
    workspace: Path,
) -> None:
    """``create_app(read_only=True)`` (``serve --read-only``): POST is 403, reads answer,
    and ``/pending`` says the server is read-only (the dashboard then shows no buttons)."""
    async with _client(create_app(workspace, read_only=True)) as client:
        refused = await client.post(f"/api/sessions/{LIVE}/commands", json=PAUSE)
        pending = await client.get(f"/api/sessions/{LIVE}/pending")
        state = await client.get(f"/api/sessions/{LIVE}/commands/done-1")
    assert refused.status_code == 403
    assert "read-only" in refused.json()["error"]
    assert [line["command_id"] for line in _inbox(workspace)] == ["done-1", "no-1"]
    assert (pending.status_code, state.status_code) == (200, 200)
    assert pending.headers["x-eventbus-read-only"] == "true"


@pytest.mark.anyio
async def test_serve_read_only_builds_a_read_only_app(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eventbus serve DIR --read-only`` serves an app whose commands answer 403."""
    import uvicorn

    from eventbus.cli import main

    served: list[Any] = []

    def run(server: uvicorn.Server, sockets: list[Any]) -> None:  # instead of serving
        served.append(server.config.app)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.delenv("EVENTBUS_TOKEN", raising=False)
    assert main(["serve", str(workspace), "--read-only", "--port", "0"]) == 0
    async with _client(served[0]) as client:
        response = await client.post(f"/api/sessions/{LIVE}/commands", json=PAUSE)
    assert response.status_code == 403


# --- the OpenAPI document -----------------------------------------------------------------


@pytest.mark.anyio
async def test_openapi_describes_the_control_routes_and_their_statuses(
    client: httpx.AsyncClient,
) -> None:
    """The three routes, the command's body schema and every status the POST answers."""
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    assert set(paths["/api/sessions/{session_id}/pending"]) == {"get"}
    assert set(paths["/api/sessions/{session_id}/commands/{command_id}"]) == {"get"}
    post = paths["/api/sessions/{session_id}/commands"]["post"]
    assert set(post["responses"]) == {
        "200", "202", "400", "401", "403", "404", "409", "413", "415"
    }  # fmt: skip
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Command"}
    command = document["components"]["schemas"]["Command"]
    assert command["properties"]["kind"]["enum"] == [
        "pause", "resume", "abort", "answer", "approve", "reject"
    ]  # fmt: skip
    assert command["required"] == ["kind"]
