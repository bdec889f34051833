"""The request side of the control routes: who may send a command, its body, its actor.

A server without a token is protected from other sites by its ``Host`` guard
(no DNS rebinding) and by what this module refuses before a command is read:
a body that is not ``Content-Type: application/json`` (415: a form or a
``text/plain`` post is what a page of another site can send without asking
the browser first) and an ``Origin`` that is neither this server nor one of
its CORS origins (403).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from contextlib import aclosing
from typing import Any, get_args

import msgspec
from starlette.requests import Request

from .._event import MAX_ID_LENGTH
from ..coordinator import CommandKind
from ._params import ApiError

__all__ = [
    "ACTOR_HEADER",
    "DEFAULT_ACTOR",
    "KINDS",
    "MAX_BODY_BYTES",
    "READ_ONLY_HEADER",
    "CommandBody",
    "actor_of",
    "check_origin",
    "command_id_of",
    "fields_of",
    "read_command",
]

#: The kinds of command a session takes.
KINDS: tuple[str, ...] = get_args(CommandKind)
#: The header naming who sends a command (a person, a tool), unless the body has an
#: ``actor``; without either the actor is ``api``.
ACTOR_HEADER = "X-Eventbus-Actor"
DEFAULT_ACTOR = "api"
#: Set to ``true`` on ``/pending`` answers of a read-only server (the dashboard then
#: shows no buttons).
READ_ONLY_HEADER = "X-Eventbus-Read-Only"
#: The largest command body read (an answer's text included).
MAX_BODY_BYTES = 64 * 1024
_ACTOR = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,64}$")


class CommandBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The JSON body of ``POST /api/sessions/{session_id}/commands``."""

    kind: str
    target: str | None = None
    text: str | None = None
    reason: str | None = None
    command_id: str | None = None
    actor: str | None = None


_decode = msgspec.json.Decoder(CommandBody).decode


def check_origin(request: Request, allowed: Collection[str]) -> None:
    """Refuse a request a page of another site sent (its ``Origin`` is not this server's).

    Browsers send ``Origin`` with every POST; tools usually send none, and are let through.
    Its host and port must be the request's ``Host`` (the scheme is not compared, so that
    a proxy terminating HTTPS in front of the server does not refuse its own page).

    :raises ApiError: 403.
    """
    origin = request.headers.get("origin")
    if origin is None or origin in allowed:
        return
    scheme, _, host = origin.partition("://")
    own = request.headers.get("host", "")
    if not (scheme in ("http", "https") and host and host.lower() == own.lower()):
        raise ApiError(
            403,
            f"commands from a page of another site are refused (Origin: {origin}): "
            "send them from this server's dashboard, with 'eventbus control', or "
            "from a tool that sends no Origin",
        )


async def read_command(request: Request) -> CommandBody:
    """The command a request carries as ``Content-Type: application/json``.

    The fields are checked when the command is made (:func:`submit`).

    :raises ApiError: 415 for another content type, 413 for a body over
        :data:`MAX_BODY_BYTES`, 400 for a body that is not a JSON object of
        the command's fields.
    """
    given = request.headers.get("content-type", "")
    media = given.partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(
            415,
            f"a command is a JSON body sent as 'Content-Type: application/json' "
            f"({'no Content-Type' if not given else 'Content-Type: ' + given} was sent)",
        )
    too_large = ApiError(413, f"a command body holds at most {MAX_BODY_BYTES} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise too_large
    try:
        body = _decode(bytes(raw))
    except msgspec.DecodeError as error:
        raise ApiError(
            400,
            f"the body is not a command: {error}; send "
            '{"kind": "pause"} or {"kind": "answer", "target": ID, "text": "..."}',
        ) from None
    return body


def command_id_of(parameter: str, value: str) -> str:
    """``value`` if it can be a command id: 1 to ``MAX_ID_LENGTH`` characters, none a control one.

    :raises ApiError: 400.
    """
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise ApiError(
            400,
            f"{parameter} {value!r} is not a command id: expected 1 to {MAX_ID_LENGTH} "
            "printable characters",
        )
    return value


def actor_of(request: Request, body: CommandBody) -> str:
    """Who sends the command: the body's ``actor``, else the ``X-Eventbus-Actor`` header,
    else ``api``.

    :raises ApiError: 400 if it is empty, longer than 64 characters or holds
        control characters.
    """
    given = body.actor if body.actor is not None else request.headers.get(ACTOR_HEADER)
    if given is None:
        return DEFAULT_ACTOR
    actor = given.strip()
    if not _ACTOR.match(actor):
        where = "actor" if body.actor is not None else f"header {ACTOR_HEADER}"
        raise ApiError(400, f"{where} must be 1 to 64 printable characters, got {given!r}")
    return actor


def fields_of(body: CommandBody) -> dict[str, Any]:
    """The command's fields of the body (not its actor), ``None`` for those it did not carry."""
    return {field: getattr(body, field) for field in body.__struct_fields__ if field != "actor"}
