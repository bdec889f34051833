"""The data layer the app reads: :class:`sinks.workspace.Workspace`, as a Protocol."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from .._event import Event
from .._names import InvalidNameError
from .._query import EventQuery

__all__ = ["Workspace", "is_not_found", "open_workspace", "status_of"]


class Workspace(Protocol):
    """What the app needs from a workspace root (``DIR/{session_id}/events.jsonl``)."""

    def sessions(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]: ...

    def session(self, session_id: str) -> dict[str, Any]: ...

    def events(
        self, query: EventQuery, *, session_id: str | None, after: str | None, limit: int
    ) -> tuple[list[Event], str | None]: ...

    def usage(self, by: str, *, session_id: str | None) -> dict[str, Any]: ...

    def follow(
        self,
        query: EventQuery,
        *,
        session_id: str | None,
        after: str | None,
        from_start: bool,
    ) -> AsyncIterator[Event]: ...


def open_workspace(root: str | os.PathLike[str]) -> Workspace:
    """The data layer over ``root`` (imported here: :mod:`sinks` is wired by entry points)."""
    from sinks.workspace import Workspace as FilesWorkspace

    workspace: Workspace = FilesWorkspace(Path(root))
    return workspace


def is_not_found(error: BaseException) -> bool:
    """Whether ``error`` says a session does not exist."""
    from sinks.workspace import SessionNotFoundError

    return isinstance(error, SessionNotFoundError)


def status_of(error: BaseException) -> int | None:
    """The HTTP status for an error of the data layer, or ``None`` if it is a server fault."""
    if isinstance(error, InvalidNameError):
        return 400
    if is_not_found(error):
        return 404
    if isinstance(error, ValueError):
        return 400
    return None
