"""The app factory: one list of routes, thin handlers over the workspace's data layer."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._bus import EventBus
from .._errors import SinkFailedError
from .._event import Event
from .._names import InvalidNameError, validate_session_id
from .._query import EventQuery
from ._control import (
    ACTOR_HEADER,
    READ_ONLY_HEADER,
    actor_of,
    check_origin,
    command_id_of,
    fields_of,
    read_command,
)
from ._openapi import openapi_schema
from ._params import (
    USAGE_KEYS,
    ApiError,
    BadRequest,
    event_query,
    parse_time,
    positive_int,
)
from ._stream import LineCache, bus_stream, file_stream
from ._workspace import Workspace, message_of, open_workspace, status_of, submit

__all__ = ["create_app"]

_STATIC = Path(str(files("eventbus.web") / "static"))
_EVENT_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
#: Most events one ``/events`` page holds.
MAX_LIMIT = 10_000
#: Most sessions one ``/sessions`` page holds.
MAX_SESSIONS_LIMIT = 10_000
_TEXT_BATCH = 2000  # events read at a time when ``q`` filters on the message
_REPORTED_MAX = 4096  # refusals remembered so as to log each once

logger = logging.getLogger("eventbus.web")
_encode = msgspec.json.Encoder().encode


class _Api:
    """The handlers, bound to one workspace and (optionally) a live bus."""

    def __init__(
        self,
        workspace: Workspace,
        bus: EventBus | None,
        *,
        heartbeat: float,
        listener_buffer: int,
        send_timeout: float | None,
        read_only: bool,
        origins: Sequence[str],
    ) -> None:
        self.workspace = workspace
        self.read_only = read_only
        self.origins = frozenset(origins)
        self.bus = bus
        self.heartbeat = heartbeat
        self.listener_buffer = listener_buffer
        self.send_timeout = send_timeout
        self.lines = LineCache()
        self.reported: set[str] = set()

    async def _call(
        self, method: Callable[..., Any], *args: Any, position: str = "after", **kwargs: Any
    ) -> Any:
        """Run a (blocking) data-layer call in a worker thread; map its errors to statuses.

        ``position`` names the parameter that carried ``after``, for its error message.
        """
        try:
            return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))
        except Exception as error:
            status = status_of(error)
            if status is None:
                raise
            message = message_of(error, position)
            if status == 403:  # a symlink leading out: its paths stay in the server's log
                self._report(message)
                message = (
                    "this session is not served: a symlink in it leads outside the "
                    "workspace (the server's log names it); nothing outside the workspace "
                    "is read: replace the link by what it points to"
                )
            raise ApiError(status, message) from error

    def _report(self, message: str) -> None:
        """Log ``message`` the first time (a refused link is met on every request)."""
        if message not in self.reported:
            if len(self.reported) >= _REPORTED_MAX:
                self.reported.clear()
            self.reported.add(message)
            logger.warning("refused a request: %s", message)

    async def _check_types(self, query: EventQuery, seen: Sequence[Event] = ()) -> None:
        """Refuse a ``type`` that neither this version nor the workspace's logs know (400)."""
        if query.event_type is not None:
            types = {event.event_type.value for event in seen}
            await self._call(self.workspace.check_types, query.event_type, seen=types)

    async def sessions(self, request: Request) -> Response:
        """List the sessions, newest first: ``{"sessions": [summary, ...]}``.

        With ``limit``, a page of at most that many, and ``"next"``: the
        session id to pass as ``after`` for the next page, ``null`` on the last
        page. ``after`` starts after that session (an unknown one is a 400).
        Without ``limit`` (and ``after``), every session, as ``eventbus
        sessions --json`` prints them (no ``next``).
        """
        params = request.query_params
        since, until = params.get("since"), params.get("until")
        limit = (
            positive_int("limit", params["limit"], maximum=MAX_SESSIONS_LIMIT)
            if "limit" in params
            else None
        )
        after = params.get("after") or None
        rows = await self._call(
            self.workspace.sessions,
            parse_time("since", since) if since else None,
            parse_time("until", until) if until else None,
        )
        return JSONResponse(_sessions_page(rows, after=after, limit=limit))

    async def artifact(self, request: Request) -> Response:
        """One artifact of a session: JSON as stored, or ``text/plain`` for a JSON string."""
        session_id = _session_id(request)
        key: str = request.path_params["key"]
        data: bytes = await self._call(self.workspace.artifact, session_id, key)
        if data.lstrip()[:1] == b'"':
            text = msgspec.json.decode(data, type=str)
            return Response(text, media_type="text/plain; charset=utf-8")
        return Response(data, media_type="application/json")

    async def session(self, request: Request) -> Response:
        """One session's summary with its artifact keys."""
        summary = await self._call(self.workspace.session, _session_id(request))
        return JSONResponse(summary)

    async def events(self, request: Request) -> Response:
        """A page of a session's events: ``{"events": [...], "ids": [...], "next": id | null}``.

        Each event is its line as the log stores it (what ``eventbus query --json``
        prints), not re-encoded; ``ids`` holds each one's id, the derived one for a
        line stored without (the seed's format), as SSE's ``id:`` does.
        """
        session_id = _session_id(request)
        params = request.query_params
        query = event_query(params, session_id=session_id)
        limit = (
            positive_int("limit", params["limit"], maximum=MAX_LIMIT) if "limit" in params else 100
        )
        after = _event_id("after", params.get("after"))
        text = params.get("q") or None
        if "tail" in params:  # the last n events (a page to start live from), no next
            if after is not None or text is not None:
                raise BadRequest("tail", params["tail"], "no after or q beside it")
            tail = positive_int("tail", params["tail"], maximum=MAX_LIMIT)
            lines, ids = await self._call(
                _last_lines, self.workspace, query, session_id=session_id, n=tail
            )
            await self._check_types(query)
            body = b'{"events":[%b],"ids":%b,"next":null}' % (b",".join(lines), _encode(ids))
            return Response(body, media_type="application/json")
        lines, ids, next_id = await self._call(
            _stored_page,
            self.workspace,
            query,
            session_id=session_id,
            after=after,
            limit=limit,
            text=text,
        )
        await self._check_types(query)
        body = b'{"events":[%b],"ids":%b,"next":%b}' % (
            b",".join(lines),
            _encode(ids),
            _encode(next_id),
        )
        return Response(body, media_type="application/json")

    async def usage(self, request: Request) -> Response:
        """LLM calls, tokens and cost grouped by ``by``, over all sessions or one."""
        params = request.query_params
        by = params.get("by", "model")
        if by not in USAGE_KEYS:
            raise BadRequest("by", by, "one of " + ", ".join(USAGE_KEYS))
        session_id = params.get("session_id") or None
        if session_id is not None:
            validate_session_id(session_id)
        return JSONResponse(await self._call(self.workspace.usage, by, session_id=session_id))

    async def pending(self, request: Request) -> Response:
        """What the session waits for: ``{"pending": [{"kind", "id", "task_id", "role", ...}]}``."""
        rows = await self._call(self.workspace.pending, _session_id(request))
        headers = {READ_ONLY_HEADER: "true"} if self.read_only else None
        return JSONResponse({"pending": rows}, headers=headers)

    async def submit(self, request: Request) -> Response:
        """Queue a command in the session's inbox: 202 ``{"command_id", "status": "queued"}``.

        A ``command_id`` already decided answers 200 with its outcome (as
        :meth:`command`), so that a client may repeat a command it is unsure was sent.
        """
        session_id = _session_id(request)
        if self.read_only:
            raise ApiError(
                403,
                "this server is read-only (serve --read-only): it takes no commands; "
                "use 'eventbus control' on the workspace's machine, or a server "
                "started without --read-only",
            )
        check_origin(request, self.origins)
        body = await read_command(request)
        actor = actor_of(request, body)
        status, answer = await self._call(
            submit, self.workspace, session_id, fields_of(body), actor
        )
        return JSONResponse(answer, status_code=status)

    async def command(self, request: Request) -> Response:
        """One command's state: ``{"command_id", "kind", "status", "reason"}``."""
        session_id = _session_id(request)
        command_id = command_id_of("command id", request.path_params["command_id"])
        return JSONResponse(await self._call(self.workspace.command_status, session_id, command_id))

    async def session_stream(self, request: Request) -> Response:
        """Server-Sent Events of one session (resumes after ``Last-Event-ID``)."""
        return await self._stream(request, _session_id(request))

    async def stream(self, request: Request) -> Response:
        """Server-Sent Events of every session (``type=`` and the other filters apply)."""
        session_id = request.query_params.get("session_id") or None
        if session_id is not None:
            validate_session_id(session_id)
        return await self._stream(request, session_id)

    async def _stream(self, request: Request, session_id: str | None) -> Response:
        query = event_query(request.query_params, session_id=session_id)
        after = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        position = "Last-Event-ID" if request.headers.get("last-event-id") else "last_event_id"
        after = _event_id(position, after)
        # Refuse an unknown position or session now, while a status can still say so.
        if after is not None and self.bus is not None:
            with suppress(SinkFailedError):
                await self.bus.flush()  # the position may be an event not yet in the log
        if after is not None or (self.bus is None and session_id is not None):
            await self._call(
                self.workspace.events,
                query,
                session_id=session_id,
                after=after,
                limit=1,
                position=position,
            )
        await self._check_types(query)
        content: AsyncIterator[bytes]
        if self.bus is not None:
            content = bus_stream(
                self.bus,
                self.workspace,
                query,
                session_id=session_id,
                after=after,
                buffer=self.listener_buffer,
                cache=self.lines,
            )
        else:
            content = file_stream(self.workspace, query, session_id=session_id, after=after)
        return EventSourceResponse(
            content,
            ping=self.heartbeat,
            send_timeout=self.send_timeout,
            headers={"Cache-Control": "no-store"},
        )


def _stored_page(
    workspace: Workspace,
    query: EventQuery,
    *,
    session_id: str,
    after: str | None,
    limit: int,
    text: str | None = None,
) -> tuple[list[bytes], list[str], str | None]:
    """A page of events: their stored lines, their ids, the next page's ``after`` (or ``None``).

    With ``text``, only events whose message holds it (ignoring case): the
    matching ones are gathered from as many pages of the query as it takes.
    """
    if text is None:
        events, next_id = workspace.events(query, session_id=session_id, after=after, limit=limit)
    else:
        needle = text.casefold()
        events = []
        next_id = after
        while True:
            batch, more = workspace.events(
                query, session_id=session_id, after=next_id, limit=max(limit, _TEXT_BATCH)
            )
            for event in batch:
                if needle in event.message.casefold():
                    events.append(event)
                    if len(events) > limit:
                        break
            if len(events) > limit:
                del events[limit:]
                next_id = events[-1].id
                break
            if more is None:
                next_id = None
                break
            next_id = more
    lines = workspace.read_lines(events) if events else []
    return lines, [event.id for event in events], next_id


def _last_lines(
    workspace: Workspace, query: EventQuery, *, session_id: str, n: int
) -> tuple[list[bytes], list[str]]:
    """The last ``n`` events matching ``query`` (oldest first): their lines and ids."""
    events = workspace.latest(n, query, session_id=session_id)
    lines = workspace.read_lines(events) if events else []
    return lines, [event.id for event in events]


def _sessions_page(
    rows: list[dict[str, Any]], *, after: str | None, limit: int | None
) -> dict[str, Any]:
    """``{"sessions": rows[...], "next": id | None}``: the page after session ``after``.

    :raises BadRequest: ``after`` is no session of ``rows``.
    """
    start = 0
    if after is not None:
        for i, row in enumerate(rows):
            if row.get("session_id") == after:
                start = i + 1
                break
        else:
            raise BadRequest(
                "after", after, "the id of a listed session (the previous page's next)"
            )
    if limit is None and after is None:  # every session: ``eventbus sessions --json``'s shape
        return {"sessions": rows}
    if limit is None:
        return {"sessions": rows[start:], "next": None}
    page = rows[start : start + limit]
    more = start + limit < len(rows)
    return {"sessions": page, "next": page[-1]["session_id"] if more and page else None}


def _document(schema: dict[str, Any]) -> Callable[[Request], Awaitable[Response]]:
    async def openapi(request: Request) -> Response:
        """This API's OpenAPI 3.1 description."""
        return JSONResponse(schema)

    return openapi


def _session_id(request: Request) -> str:
    session_id: str = request.path_params["session_id"]
    validate_session_id(session_id)
    return session_id


def _event_id(parameter: str, value: str | None) -> str | None:
    if not value:
        return None
    if not _EVENT_ID.match(value):
        raise BadRequest(parameter, value, "an event id (letters, digits, '-' and '_')")
    return value


async def _index(request: Request) -> Response:
    """The dashboard (HTML; its data comes from the ``/api`` routes)."""
    return FileResponse(_STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _favicon(request: Request) -> Response:
    """The dashboard's icon (for browsers that ask before reading the page's link)."""
    return FileResponse(_STATIC / "favicon.svg", media_type="image/svg+xml")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.message)
    if isinstance(exc, HTTPException):
        message = {404: f"no route {request.url.path}: see /openapi.json"}.get(
            exc.status_code, str(exc.detail)
        )
        return _error(exc.status_code, message, exc.headers)
    if isinstance(exc, BadRequest | InvalidNameError):
        return _error(400, " ".join(str(exc).split()))
    raise exc


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback: ``localhost``, an address
    of ``127.0.0.0/8`` or ``[::1]``, with or without ``:port``."""
    name, port = host, ""
    if host.startswith("["):  # [::1] or [::1]:8000
        name, _, rest = host[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:]
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return False
    name = name.lower().removesuffix(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _HostGuard:
    """Refuses requests whose ``Host`` is not loopback (or allowed): no DNS rebinding.

    A page of another site that rebinds its name to 127.0.0.1 makes the browser
    send that name as ``Host``; answering only loopback names keeps it from
    reading the API (it is what protects a server without a token).
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    def _accepts(self, host: str | None) -> bool:
        if host is None:
            return False
        if is_loopback_host(host):
            return True
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
        return name.lower() in self.allowed or host.lower() in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # the app has no websocket route
            host = Headers(scope=scope).get("host")
            if not self._accepts(host):
                given = "no Host header" if host is None else f"Host: {host}"
                response = _error(
                    403,
                    f"this server answers only requests for localhost or a loopback "
                    f"address ({given}): open it as http://127.0.0.1:PORT/ or "
                    "http://localhost:PORT/, or start it with --token to accept other names",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _TokenGuard:
    """Refuses ``/api`` requests without the token (``Authorization: Bearer`` or ``?token=``)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api"):
            request = Request(scope)
            given = request.headers.get("authorization", "")
            scheme, _, credentials = given.partition(" ")
            if scheme.lower() != "bearer":
                credentials = request.query_params.get("token", "")
            if not hmac.compare_digest(credentials.strip().encode(), self.token):
                response = _error(
                    401,
                    "this server wants a token: send 'Authorization: Bearer <token>' "
                    "or add ?token=<token> to the URL",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    workspace: str | os.PathLike[str] | Workspace,
    *,
    bus: EventBus | None = None,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] = (),
    heartbeat: float = 15.0,
    listener_buffer: int = 1000,
    send_timeout: float | None = 30.0,
    read_only: bool = False,
) -> Starlette:
    """The HTTP/SSE API and the dashboard over a workspace root (``DIR/{session_id}/events.jsonl``).

    Commands (``POST /api/sessions/{session_id}/commands``) are appended to the
    session's inbox (``DIR/{session_id}/control.jsonl``); the coordinator running
    the session applies or rejects them and logs the outcome, whether or not it
    runs in this process. Commands are taken only as ``Content-Type:
    application/json`` and from no other site's ``Origin`` (``cors_origins`` aside).

    Serve it with uvicorn (``eventbus serve DIR`` does). Events are served as
    their logs store them. A session, log or ``artifacts`` directory that is a
    symlink leading out of the workspace is answered 403 (and logged once on
    ``eventbus.web``); streams of every session skip such a log.

    :param workspace: the workspace root, or a data layer object like
        :class:`sinks.workspace.Workspace`.
    :param bus: a running bus whose sinks write that workspace: streams then
        take live events from ``bus.listen`` (the coordinator never waits for
        a client; a slow client gets ``event: gap``). Without it, or once it is
        closed, streams follow the files.
    :param token: when set, every ``/api`` request must carry it
        (``Authorization: Bearer <token>``, or ``?token=<token>`` for EventSource);
        otherwise it is answered 401.
    :param cors_origins: origins allowed to call the API from other pages, commands
        included (none by default).
    :param allowed_hosts: without a token, every request (pages included) whose
        ``Host`` is not ``localhost`` or a loopback address (``127.0.0.1``,
        ``[::1]``, with or without ``:port``) is answered 403, so that a site
        rebinding its DNS name to this machine cannot read it; these host names
        are accepted too (``"*"``: any). With a token no ``Host`` is refused:
        the token is the protection.
    :param heartbeat: seconds between SSE comment lines that keep idle streams open.
    :param listener_buffer: events a stream's listener holds before it drops the
        oldest (and the client gets a gap).
    :param send_timeout: seconds a stalled client may block one send before it is
        disconnected (``None``: never).
    :param read_only: refuse commands (``POST .../commands`` answers 403); the
        pending list and command states stay readable.
    """
    data = open_workspace(workspace) if isinstance(workspace, str | os.PathLike) else workspace
    api = _Api(
        data,
        bus,
        heartbeat=heartbeat,
        listener_buffer=listener_buffer,
        send_timeout=send_timeout,
        read_only=read_only,
        origins=cors_origins,
    )
    session = "/api/sessions/{session_id}"
    routes = [
        Route("/", _index, name="dashboard"),
        Route("/favicon.ico", _favicon, name="favicon"),
        Route("/api/sessions", api.sessions, name="sessions"),
        Route("/api/sessions/{session_id}", api.session, name="session"),
        Route("/api/sessions/{session_id}/events", api.events, name="events"),
        Route("/api/sessions/{session_id}/artifacts/{key}", api.artifact, name="artifact"),
        Route("/api/sessions/{session_id}/stream", api.session_stream, name="session_stream"),
        Route(f"{session}/pending", api.pending, name="pending"),
        Route(f"{session}/commands", api.submit, methods=["POST"], name="commands"),
        Route(f"{session}/commands/{{command_id}}", api.command, name="command"),
        Route("/api/stream", api.stream, name="stream"),
        Route("/api/usage", api.usage, name="usage"),
        Route("/openapi.json", _document(openapi_schema(token=token is not None)), name="openapi"),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    middleware = []
    if token is None and "*" not in allowed_hosts:
        allowed = frozenset(host.lower() for host in allowed_hosts)
        middleware.append(Middleware(_HostGuard, allowed=allowed))
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Last-Event-ID", "Content-Type", ACTOR_HEADER],
            )
        )
    if token is not None:
        if not token:
            raise ValueError("token must not be empty: pass None to serve without one")
        middleware.append(Middleware(_TokenGuard, token=token))
    handlers: dict[Any, Any] = {
        ApiError: _on_api_error,
        HTTPException: _on_api_error,
        BadRequest: _on_api_error,
        InvalidNameError: _on_api_error,
    }
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
