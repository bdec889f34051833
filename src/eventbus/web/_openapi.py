"""The API's OpenAPI 3.1 description, kept by hand beside the routes (a test checks they agree)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_schema"]


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "description": "A session id (a directory name under the workspace root).",
    "schema": {"type": "string"},
}
_TIME = "ISO 8601 (naive means UTC) or an age: 30s, 10m, 2h, 1d."
_FILTERS = [
    _query("type", "Event types: repeat the parameter or separate with commas."),
    _query("phase", "Only events of this phase."),
    _query("task_id", "Only events of this task."),
    _query("agent_role", "Only events of this agent role."),
    _query("model", "Only events of this model."),
    _query("since", "Only events at or after this time. " + _TIME),
    _query("until", "Only events at or before this time. " + _TIME),
]
_STREAM = [
    *_FILTERS,
    _query("last_event_id", "Resume after this event id (as the Last-Event-ID header does)."),
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this event id: every later event, from the log, then live.",
        "schema": {"type": "string"},
    },
]
_ERRORS = {
    "400": {"description": 'A parameter is not valid: {"error": message}.'},
    "401": {"description": 'A token is required: {"error": message}.'},
}
_SSE = {
    "description": (
        "text/event-stream: one message per event (id: event id, data: its JSON line); "
        "'event: gap' with data {\"missed\": n} when a slow client lost events; "
        "a comment line every 15 s."
    ),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


def _get(summary: str, parameters: list[dict[str, Any]], ok: dict[str, Any], **extra: Any) -> Any:
    responses = {"200": ok, **_ERRORS, **extra}
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


_PATHS: dict[str, Any] = {
    "/": _get(
        "The dashboard (HTML).",
        [],
        {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
    ),
    "/api/sessions": _get(
        'Every session, newest first: {"sessions": [summary, ...]}.',
        [
            _query("since", "Sessions started at or after this time. " + _TIME),
            _query("until", "Sessions started at or before this time. " + _TIME),
        ],
        _json("The sessions."),
    ),
    "/api/sessions/{session_id}": _get(
        "One session's summary and its artifact keys.",
        [_SESSION_ID],
        _json("The summary."),
        **{"404": {"description": 'No such session: {"error": message}.'}},
    ),
    "/api/sessions/{session_id}/events": _get(
        'A page of a session\'s events: {"events": [event, ...], "next": id or null}.',
        [
            _SESSION_ID,
            *_FILTERS,
            _query("after", "Start after this event id (the previous page's next)."),
            _query("limit", "Events per page, 1 to 10000 (default 100).", {"type": "integer"}),
        ],
        _json("The page."),
        **{"404": {"description": 'No such session: {"error": message}.'}},
    ),
    "/api/sessions/{session_id}/stream": _get(
        "Server-Sent Events of one session.", [_SESSION_ID, *_STREAM], _SSE
    ),
    "/api/stream": _get(
        "Server-Sent Events of every session.",
        [_query("session_id", "Only this session."), *_STREAM],
        _SSE,
    ),
    "/api/usage": _get(
        "LLM calls, tokens (prompt, cached, completion, total) and cost: "
        '{"by", "rows": [...], "total": {...}}.',
        [
            _query(
                "by",
                "Group by this field (default model); role, task and session are short "
                "for agent_role, task_id and session_id (the answer's by names the field).",
                {
                    "type": "string",
                    "enum": [
                        "model",
                        "agent_role",
                        "task_id",
                        "session_id",
                        "phase",
                        "role",
                        "task",
                        "session",
                    ],
                },
            ),
            _query("session_id", "Only this session."),
        ],
        _json("The usage object."),
    ),
    "/openapi.json": _get("This description.", [], _json("OpenAPI 3.1.")),
}


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    from .. import __version__

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventbus",
            "version": __version__,
            "description": (
                "Sessions, events, token usage and live streams of an eventbus workspace. "
                "When the server has a token, send 'Authorization: Bearer <token>' "
                "(or ?token=<token>) on every /api route."
            ),
        },
        "paths": _PATHS,
    }
