"""The API's OpenAPI 3.1 description, kept by hand beside the routes (tests check they agree).

Every operation lists each status it can answer, each with a schema: the
pages' and the JSON bodies' shapes under ``components/schemas``, every error
as ``{"error": message}``. Clients and checkers such as schemathesis can
validate responses against it.
"""

from __future__ import annotations

from typing import Any

from .._event import MAX_ID_LENGTH
from ._control import (
    ACTOR_HEADER,
    DEFAULT_ACTOR,
    KINDS,
    MAX_BODY_BYTES,
    READ_ONLY_HEADER,
)

__all__ = ["openapi_schema"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING: dict[str, Any] = {"type": "string"}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_USAGE_KEYS = ["model", "agent_role", "task_id", "session_id", "phase", "day"]
_USAGE_BY = [*_USAGE_KEYS, "role", "task", "session"]
_TIME_TEXT = (
    "An ISO 8601 time (RFC 3339 date-time such as 2026-01-31T12:00:00Z; without an "
    "offset it means UTC), a date (2026-01-31: its midnight UTC), or a time ago: a "
    "number and a unit s, m, h, d or w (30s, 10m, 2h, 1.5d, 1w)."
)
_TIME: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdwSMHDW]\s*$"},
    ]
}
_EVENT_ID: dict[str, Any] = {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,64}$"}
_COMMAND_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "What happened and what to do.",
        "properties": {"error": _STRING},
        "required": ["error"],
    },
    "SessionSummary": {
        "type": "object",
        "description": "One session, from its run_summary artifact or its log.",
        "properties": {
            "session_id": _STRING,
            "status": _nullable(
                {"type": "string", "description": "running, completed, failed or aborted"}
            ),
            "phase": _nullable(_STRING),
            "tasks_completed": _COUNT,
            "tasks_failed": _COUNT,
            "llm_calls": _COUNT,
            "prompt_tokens": _COUNT,
            "completion_tokens": _COUNT,
            "total_tokens": _COUNT,
            "cost_usd": {"type": "number"},
            "started_at": _nullable({"type": "string", "description": "ISO 8601"}),
            "ended_at": _nullable({"type": "string", "description": "ISO 8601"}),
            "duration_s": _nullable({"type": "number"}),
            "event_count": _COUNT,
            "error": _nullable(
                {"type": "string", "description": "why part of the session cannot be read"}
            ),
        },
        "required": [
            "session_id",
            "status",
            "phase",
            "tasks_completed",
            "tasks_failed",
            "llm_calls",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost_usd",
            "started_at",
            "ended_at",
            "duration_s",
            "event_count",
            "error",
        ],
    },
    "Session": {
        "allOf": [
            _ref("SessionSummary"),
            {
                "type": "object",
                "properties": {"artifacts": {"type": "array", "items": _STRING}},
                "required": ["artifacts"],
            },
        ]
    },
    "Sessions": {
        "type": "object",
        "properties": {
            "sessions": {"type": "array", "items": _ref("SessionSummary")},
            "next": _nullable(
                {
                    "type": "string",
                    "description": "with limit or after: the 'after' of the next page; "
                    "null: the last",
                }
            ),
        },
        "required": ["sessions"],
    },
    "Event": {
        "type": "object",
        "description": (
            "An event exactly as its log line stores it (the line parsed as JSON: "
            "what 'eventbus query --json' prints), fields of newer versions included. "
            "A line stored without an id (the seed's format) has none here: 'ids' "
            "has its derived id, the one 'after', 'next' and the stream's 'id:' use."
        ),
        "properties": {
            "event_type": _STRING,
            "timestamp": {"type": "string", "format": "date-time"},
            "session_id": _STRING,
            "message": _STRING,
            "phase": _nullable(_STRING),
            "task_id": _nullable(_STRING),
            "agent_role": _nullable(_STRING),
            "model": _nullable(_STRING),
            "metadata": {"type": "object"},
            "id": _STRING,
            "parent_id": _nullable(_STRING),
        },
        "required": ["event_type", "timestamp", "session_id"],
    },
    "EventsPage": {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "ids": {
                "type": "array",
                "items": _STRING,
                "description": "each event's id, stored or (seed format) derived",
            },
            "next": _nullable(
                {"type": "string", "description": "the 'after' of the next page; null: the last"}
            ),
        },
        "required": ["events", "ids", "next"],
    },
    "UsageValues": {
        "type": "object",
        "properties": {
            "calls": _COUNT,
            "prompt_tokens": _COUNT,
            "completion_tokens": _COUNT,
            "total_tokens": _COUNT,
            "cached_tokens": _COUNT,
            "cost_usd": {"type": "number"},
            "cost_source": _nullable(
                {
                    "type": "string",
                    "enum": ["producer", "genai-prices", "mixed"],
                    "description": "where cost_usd comes from: the producers' cost_usd, "
                    "the genai-prices table (for responses without one), both; null: "
                    "no cost known",
                }
            ),
        },
        "required": [
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cost_usd",
            "cost_source",
        ],
    },
    "UsageRow": {
        "allOf": [
            {
                "type": "object",
                "properties": {"key": _nullable(_STRING)},
                "required": ["key"],
            },
            _ref("UsageValues"),
        ]
    },
    "Usage": {
        "type": "object",
        "properties": {
            "by": {"type": "string", "enum": _USAGE_KEYS},
            "rows": {"type": "array", "items": _ref("UsageRow")},
            "total": _ref("UsageValues"),
        },
        "required": ["by", "rows", "total"],
    },
    "PendingItem": {
        "type": "object",
        "description": "A question (clarification) or a request (approval) the session waits for.",
        "properties": {
            "kind": {"type": "string", "enum": ["clarification", "approval"]},
            "id": {"type": "string", "description": "the target of an answer, approve or reject"},
            "task_id": _nullable(_STRING),
            "role": _nullable(_STRING),
            "text": _STRING,
        },
        "required": ["kind", "id", "task_id", "role", "text"],
    },
    "Pending": {
        "type": "object",
        "description": "What the session waits for; empty once it has ended.",
        "properties": {"pending": {"type": "array", "items": _ref("PendingItem")}},
        "required": ["pending"],
    },
    "Command": {
        "type": "object",
        "description": (
            "A command for a running session. pause, resume and abort take no target; "
            "answer takes the clarification's id as target and the answer as text; "
            "approve and reject take the approval's id as target (reason: why). "
            "command_id (made when not given) makes repeating a command safe: it is "
            "applied at most once."
        ),
        "properties": {
            "kind": {"type": "string", "enum": list(KINDS)},
            "target": _nullable(_STRING),
            "text": _nullable(_STRING),
            "reason": _nullable(_STRING),
            "command_id": _nullable(_COMMAND_ID),
            "actor": _nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "description": f"who sends it (default: the {ACTOR_HEADER} header, "
                    f"else '{DEFAULT_ACTOR}')",
                }
            ),
        },
        "required": ["kind"],
        "additionalProperties": False,
    },
    "CommandQueued": {
        "type": "object",
        "description": "The command is in the session's inbox; GET its id for the outcome.",
        "properties": {"command_id": _STRING, "status": {"const": "queued"}},
        "required": ["command_id", "status"],
    },
    "CommandStatus": {
        "type": "object",
        "description": (
            "A command's state: queued (not yet read by the session), applied, or "
            "rejected (reason says why; a rejected command changed nothing)."
        ),
        "properties": {
            "command_id": _STRING,
            "kind": _STRING,
            "status": {"type": "string", "enum": ["queued", "applied", "rejected"]},
            "reason": _nullable(_STRING),
        },
        "required": ["command_id", "kind", "status", "reason"],
    },
    "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"]},
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or _STRING,
    }


_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "description": "A session id (a directory name under the workspace root).",
    "schema": {"type": "string", "minLength": 1},
}
_FILTERS = [
    _query("type", "Event types: repeat the parameter or separate with commas."),
    _query("phase", "Only events of this phase."),
    _query("task_id", "Only events of this task."),
    _query("agent_role", "Only events of this agent role."),
    _query("model", "Only events of this model."),
    _query("since", "Only events at or after this time. " + _TIME_TEXT, _TIME),
    _query("until", "Only events at or before this time. " + _TIME_TEXT, _TIME),
]
_STREAM = [
    *_FILTERS,
    _query(
        "last_event_id",
        "Resume after this event id (as the Last-Event-ID header does).",
        _EVENT_ID,
    ),
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this event id: every later event, from the log, then live.",
        "schema": _EVENT_ID,
    },
]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description + ': {"error": message}.',
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_SSE = {
    "description": (
        "text/event-stream: one message per event (id: event id, data: its JSON line); "
        "'event: gap' with data {\"missed\": n} when a slow client lost events; "
        "a comment line every 15 s."
    ),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_HOST = _error(
    "Without a token, a Host other than localhost or a loopback address (DNS rebinding); "
    "or a session, log or artifacts directory that is a symlink leading out of the workspace"
)
_BAD = _error("A parameter is not valid")
_NO_TOKEN = _error("The server has a token and the request does not carry it")
_NO_SESSION = _error("No such session")


def _get(
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    ok: dict[str, Any],
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    responses = {"200": ok, "403": _HOST, **(errors or {})}
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "parameters": parameters,
            "responses": dict(sorted(responses.items())),
        }
    }


def _api(
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    ok: dict[str, Any],
    *,
    missing: bool = True,
    missing_text: str | None = None,
) -> dict[str, Any]:
    """An ``/api`` route: 400 for bad parameters, 401 without the token, 404 if ``missing``."""
    not_found = _error(missing_text) if missing_text else _NO_SESSION
    errors = {"400": _BAD, "401": _NO_TOKEN, **({"404": not_found} if missing else {})}
    return _get(operation_id, summary, parameters, ok, errors)


_PATHS: dict[str, Any] = {
    "/": _get(
        "dashboard",
        "The dashboard (HTML).",
        [],
        {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
    ),
    "/favicon.ico": _get(
        "favicon",
        "The dashboard's icon (SVG).",
        [],
        {"description": "The icon.", "content": {"image/svg+xml": {"schema": {"type": "string"}}}},
    ),
    "/api/sessions": _api(
        "sessions",
        'Sessions, newest first: {"sessions": [summary, ...]}; with limit (or after), '
        'a page: {"sessions": [...], "next": id or null}.',
        [
            _query("since", "Sessions started at or after this time. " + _TIME_TEXT, _TIME),
            _query("until", "Sessions started at or before this time. " + _TIME_TEXT, _TIME),
            _query(
                "limit",
                "Sessions per page, 1 to 10000 (default: every session, and no next).",
                {"type": "integer", "minimum": 1, "maximum": 10000},
            ),
            _query(
                "after",
                "Start after this session (the previous page's next); an unknown one is a 400.",
            ),
        ],
        _json("The sessions.", "Sessions"),
        missing=False,
    ),
    "/api/sessions/{session_id}": _api(
        "session",
        "One session's summary and its artifact keys.",
        [_SESSION_ID],
        _json("The summary.", "Session"),
    ),
    "/api/sessions/{session_id}/events": _api(
        "events",
        'A page of a session\'s events: {"events": [event, ...], "ids": [id, ...], '
        '"next": id or null}.',
        [
            _SESSION_ID,
            *_FILTERS,
            _query("q", "Only events whose message holds this text (ignoring case)."),
            _query(
                "tail",
                "Only the last n matching events, oldest first (next null; not with "
                "after or q): where to start following a long session.",
                {"type": "integer", "minimum": 1, "maximum": 10000},
            ),
            _query("after", "Start after this event id (the previous page's next).", _EVENT_ID),
            _query(
                "limit",
                "Events per page, 1 to 10000 (default 100).",
                {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
            ),
        ],
        _json("The page.", "EventsPage"),
    ),
    "/api/sessions/{session_id}/artifacts/{key}": _get(
        "artifact",
        "One artifact of the session: its JSON as stored, or text/plain when it is a "
        "JSON string (a captured prompt, response or diff).",
        [
            _SESSION_ID,
            {
                "name": "key",
                "in": "path",
                "required": True,
                "description": "An artifact key, as the session's summary lists them.",
                "schema": {"type": "string", "minLength": 1},
            },
        ],
        {
            "description": "The artifact.",
            "content": {
                "application/json": {"schema": {}},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        {
            "400": _BAD,
            "401": _NO_TOKEN,
            "404": _error("No such session, or the session has no such artifact"),
            "413": _error("The artifact is larger than 16 MiB (read it from the files)"),
        },
    ),
    "/api/sessions/{session_id}/stream": _api(
        "session_stream", "Server-Sent Events of one session.", [_SESSION_ID, *_STREAM], _SSE
    ),
    "/api/stream": _api(
        "stream",
        "Server-Sent Events of every session.",
        [_query("session_id", "Only this session."), *_STREAM],
        _SSE,
    ),
    "/api/usage": _api(
        "usage",
        'LLM calls, tokens and cost: {"by", "rows": [...], "total": {...}}; a response '
        "without cost_usd is priced from the genai-prices table when it knows the model "
        "(cost_source says).",
        [
            _query(
                "by",
                "Group by this field (default model); day: the UTC date of the responses "
                "(key YYYY-MM-DD, rows in date order); role, task and session are short "
                "for agent_role, task_id and session_id (the answer's by names the field).",
                {"type": "string", "enum": _USAGE_BY, "default": "model"},
            ),
            _query("session_id", "Only this session."),
        ],
        _json("The usage object.", "Usage"),
    ),
    "/api/sessions/{session_id}/pending": _api(
        "pending",
        'What a session waits for: {"pending": [{"kind", "id", "task_id", "role", "text"}]}.',
        [_SESSION_ID],
        {
            **_json("The questions and approval requests not yet decided.", "Pending"),
            "headers": {
                READ_ONLY_HEADER: {
                    "description": "'true' when the server takes no commands (serve --read-only).",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            },
        },
    ),
    "/api/sessions/{session_id}/commands": {
        "post": {
            "operationId": "submit_command",
            "summary": (
                "Queue a command (pause, resume, abort, answer, approve, reject) in the "
                "session's inbox; the session applies or rejects it and logs the outcome."
            ),
            "description": (
                "The body must be sent as Content-Type: application/json. The actor "
                f"recorded with the command is the body's actor, else the {ACTOR_HEADER} "
                f"header, else '{DEFAULT_ACTOR}'. A request whose Origin is another site's "
                "is refused; without a token, so is any Host but localhost or a loopback "
                "address."
            ),
            "parameters": [
                _SESSION_ID,
                {
                    "name": ACTOR_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Who sends the command (1 to 64 printable characters).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Command")}},
            },
            "responses": {
                "200": _json("That command_id was already decided: its outcome.", "CommandStatus"),
                "202": _json("Queued: the session will apply or reject it.", "CommandQueued"),
                "400": _error("The body is not a command (or the actor header is not valid)"),
                "401": _NO_TOKEN,
                "403": _error(
                    "A foreign Host without a token, an Origin of another site, or a "
                    "read-only server (serve --read-only)"
                ),
                "404": _NO_SESSION,
                "409": _error("The session has ended: it takes no more commands"),
                "413": _error(f"The body is larger than {MAX_BODY_BYTES} bytes"),
                "415": _error("The body is not sent as Content-Type: application/json"),
            },
        }
    },
    "/api/sessions/{session_id}/commands/{command_id}": _api(
        "command",
        'One command\'s state: {"command_id", "kind", "status", "reason"}.',
        [
            _SESSION_ID,
            {
                "name": "command_id",
                "in": "path",
                "required": True,
                "description": "The id POST .../commands answered (or the one it was sent).",
                "schema": _COMMAND_ID,
            },
        ],
        _json("queued, applied or rejected (with the reason).", "CommandStatus"),
        missing_text="No such session, or no command with that id in it",
    ),
    "/openapi.json": _get("openapi", "This description.", [], _json("OpenAPI 3.1.", "OpenAPI")),
}

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's token: 'Authorization: Bearer <token>'.",
    },
    "token": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The server's token as ?token=<token> (for EventSource, which "
        "cannot send headers).",
    },
}


def openapi_schema(*, token: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route.

    :param token: whether the server wants a token: every ``/api`` operation then
        requires one of the security schemes (without one, none does).
    """
    from .. import __version__

    paths = _PATHS
    if token:
        security: list[dict[str, list[str]]] = [{"bearer": []}, {"token": []}]
        paths = {
            path: {
                method: {**operation, "security": security} for method, operation in item.items()
            }
            if path.startswith("/api")
            else item
            for path, item in _PATHS.items()
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventbus",
            "version": __version__,
            "description": (
                "Sessions, events, token usage and live streams of an eventbus workspace, "
                "and commands for its running sessions. "
                "When the server has a token, send 'Authorization: Bearer <token>' "
                "(or ?token=<token>) on every /api route. Without a token the server "
                "answers only requests whose Host is localhost or a loopback address."
            ),
        },
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }
