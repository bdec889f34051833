"""The data layer the app reads: :class:`sinks.workspace.Workspace`, as a Protocol."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sinks.index import UnknownEventIdError
from sinks.jsonl import UnsafeSymlinkError
from sinks.workspace import (
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidTimeError,
    SessionNotFoundError,
    UnknownEventTypeError,
)
from sinks.workspace import Workspace as FilesWorkspace

from .._event import Event
from .._names import InvalidNameError
from .._query import EventQuery

__all__ = ["Workspace", "message_of", "open_workspace", "status_of"]


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


def open_workspace(root: str | os.PathLike[str]) -> Workspace:
    """The data layer over ``root``: :class:`sinks.workspace.Workspace`."""
    workspace: Workspace = FilesWorkspace(root)
    return workspace


def status_of(error: BaseException) -> int | None:
    """The HTTP status for an error of the data layer, or ``None`` if it is a server fault."""
    if isinstance(error, SessionNotFoundError | ArtifactNotFoundError):
        return 404
    if isinstance(error, ArtifactTooLargeError):
        return 413
    if isinstance(error, UnsafeSymlinkError):
        return 403
    if isinstance(
        error, InvalidNameError | InvalidTimeError | UnknownEventIdError | UnknownEventTypeError
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
