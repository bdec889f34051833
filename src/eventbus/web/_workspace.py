"""The data layer the app reads: :class:`sinks.workspace.Workspace`, as a Protocol."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any, Protocol

from sinks.index import UnknownEventIdError
from sinks.workspace import InvalidTimeError, SessionNotFoundError
from sinks.workspace import Workspace as FilesWorkspace

from .._event import Event
from .._names import InvalidNameError
from .._query import EventQuery

__all__ = ["Workspace", "open_workspace", "status_of"]


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

    def usage(self, by: str, *, session_id: str | None) -> dict[str, Any]: ...

    def follow_lines(
        self,
        query: EventQuery,
        *,
        session_id: str | None,
        after: str | None,
        from_start: bool,
    ) -> AsyncGenerator[tuple[Event, bytes], None]: ...


def open_workspace(root: str | os.PathLike[str]) -> Workspace:
    """The data layer over ``root``: :class:`sinks.workspace.Workspace`."""
    workspace: Workspace = FilesWorkspace(root)
    return workspace


def status_of(error: BaseException) -> int | None:
    """The HTTP status for an error of the data layer, or ``None`` if it is a server fault."""
    if isinstance(error, SessionNotFoundError):
        return 404
    if isinstance(error, InvalidNameError | InvalidTimeError | UnknownEventIdError):
        return 400
    return None
