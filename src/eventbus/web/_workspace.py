"""The data layer the app reads: :class:`sinks.workspace.Workspace`, as a Protocol.

The one write is :func:`submit`: a command appended to a session's inbox with
:func:`eventbus.coordinator.submit_command`, which the coordinator running the
session reads.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sinks.index import UnknownEventIdError
from sinks.jsonl import UnsafeSymlinkError
from sinks.workspace import (
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidTimeError,
    SessionNotFoundError,
    UnknownCommandError,
    UnknownEventTypeError,
)
from sinks.workspace import Workspace as FilesWorkspace

from .._event import Event
from .._names import InvalidNameError
from .._query import EventQuery
from ..coordinator import Command, InvalidCommandError, SessionLogNotFoundError, submit_command
from ._params import ApiError

__all__ = ["Workspace", "message_of", "open_workspace", "status_of", "submit"]


class Workspace(Protocol):
    """What the app needs from a workspace root (``DIR/{session_id}/events.jsonl``)."""

    def sessions(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]: ...

    def session(self, session_id: str) -> dict[str, Any]: ...

    def events(
        self, query: EventQuery, *, session_id: str | None, after: str | None, limit: int
    ) -> tuple[list[Event], str | None]: ...

    def read_lines(self, events: Sequence[Event]) -> list[bytes]: ...

    def latest(
        self, n: int, query: EventQuery | None = None, *, session_id: str | None = None
    ) -> list[Event]: ...

    def artifact(self, session_id: str, key: str) -> bytes: ...

    def check_types(self, types: Iterable[str] | None, *, seen: Iterable[str] = ()) -> None: ...

    def usage(self, by: str, *, session_id: str | None) -> dict[str, Any]: ...

    def follow_batches(
        self,
        query: EventQuery,
        *,
        session_id: str | None,
        after: str | None,
        from_start: bool,
    ) -> AsyncGenerator[list[tuple[Event, bytes]], None]: ...

    # --- control ----------------------------------------------------------------------

    @property
    def root(self) -> Path: ...

    def pending(self, session_id: str) -> list[dict[str, Any]]: ...

    def command_status(self, session_id: str, command_id: str) -> dict[str, Any]: ...

    def session_ended(self, session_id: str) -> bool: ...


def open_workspace(root: str | os.PathLike[str]) -> Workspace:
    """The data layer over ``root``: :class:`sinks.workspace.Workspace`."""
    workspace: Workspace = FilesWorkspace(root)
    return workspace


def status_of(error: BaseException) -> int | None:
    """The HTTP status for an error of the data layer, or ``None`` if it is a server fault."""
    if isinstance(
        error,
        SessionNotFoundError
        | SessionLogNotFoundError
        | UnknownCommandError
        | ArtifactNotFoundError,
    ):
        return 404
    if isinstance(error, ArtifactTooLargeError):
        return 413
    if isinstance(error, UnsafeSymlinkError):
        return 403
    if isinstance(
        error,
        InvalidNameError
        | InvalidTimeError
        | UnknownEventIdError
        | UnknownEventTypeError
        | InvalidCommandError,
    ):
        return 400
    return None


def message_of(error: BaseException, position: str = "after") -> str:
    """The message of a data-layer error in the API's terms: parameters, not arguments.

    :param position: the parameter that carried ``after`` (``after``,
        ``last_event_id`` or ``Last-Event-ID``), for an unknown event id.
    """
    if isinstance(error, UnknownEventIdError):
        if position == "Last-Event-ID":
            return (
                f"Last-Event-ID {error.event_id!r}: no event with that id in the workspace; "
                "reconnect without it, or with the id of an event a stream sent"
            )
        return (
            f"parameter {position}={error.event_id!r}: no event with that id in the workspace; "
            "take an id from GET /api/sessions/{session_id}/events (an event's id, or next)"
        )
    if isinstance(error, UnknownEventTypeError):
        return (
            f"parameter type={','.join(error.types)!r}: no such event type in this version or "
            f"in the workspace's logs; known types: {', '.join(error.known)}"
        )
    return " ".join(str(error).split())


def submit(
    workspace: Workspace, session_id: str, fields: dict[str, Any], actor: str
) -> tuple[int, dict[str, Any]]:
    """Append a command to the session's inbox; the HTTP status and body to answer.

    A ``command_id`` already decided answers 200 with its outcome; one already
    queued is not appended again (202); otherwise the command is appended (202).

    :param fields: the body's ``kind``, ``target``, ``text``, ``reason`` and
        ``command_id`` (``None`` when not given).
    :raises InvalidCommandError: the fields make no command (400).
    :raises SessionNotFoundError: no such session, or it has no log yet (404).
    :raises ApiError: 409 if the session has ended.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    command = Command(**given, actor=actor)
    if "command_id" in given:
        try:
            status = workspace.command_status(session_id, command.command_id)
        except UnknownCommandError:
            pass
        else:
            if status["status"] == "queued":
                return 202, {"command_id": command.command_id, "status": "queued"}
            return 200, status
    if workspace.session_ended(session_id):
        raise ApiError(
            409,
            f"session {session_id!r} has ended: it takes no more commands "
            f"(GET /api/sessions/{session_id} says how it ended)",
        )
    submit_command(workspace.root, session_id, command)
    return 202, {"command_id": command.command_id, "status": "queued"}
