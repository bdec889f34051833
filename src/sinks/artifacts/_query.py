"""``SessionArtifactQuery``: list, date and summarise the sessions of a workspace.

Read-only, and tolerant of damage: a corrupt or unreadable ``run_summary``
or ``events.jsonl`` is reported in a summary's ``error``, a half-written
first event is ignored, and a session is dated from its content before its
file times (see :class:`SessionArtifactQuery`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import anyio.to_thread
import msgspec

from eventbus import as_utc, is_valid_name, validate_session_id

from .._files import NotARegularFileError, describe_mode
from .._layout import ARTIFACTS_DIR, LOG_FILE_NAME, report_once, resolve_inside, sealed_names
from ._files import (
    SUFFIX,
    list_keys,
    read_first_bytes,
    stays_inside,
)
from ._store import ArtifactStore, CorruptArtifactError, load_artifact_file
from ._summary import RUN_SUMMARY_KEY, parse_iso_time

# the public module's name: the one users configure logging for
logger = logging.getLogger("sinks.artifacts")

_FIRST_LINE_LIMIT = 64 * 1024


def _as_epoch(value: float | datetime | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be epoch seconds, a datetime or None, got {type(value).__name__}")


def _parse_time(value: object) -> float | None:
    """Return epoch seconds from an ISO 8601 string or a number; None if it is neither."""
    if isinstance(value, str):
        moment = parse_iso_time(value)
        return None if moment is None else moment.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _Timestamped(msgspec.Struct):
    timestamp: datetime


_first_event_decoder = msgspec.json.Decoder(_Timestamped)


def _first_event_time(log_path: str) -> float | None:
    """Return the timestamp of the first complete event line of a JSONL log, or None.

    A log written in segments starts in its first sealed segment.

    :raises OSError: if the log exists but cannot be read (a FIFO, a directory...)
    """
    directory, name = os.path.split(log_path)
    sealed = sealed_names(directory, name)
    first = os.path.join(directory, sealed[0]) if sealed else log_path
    if sealed and os.path.islink(first):  # segments are never links: not followed
        return None
    head = read_first_bytes(first, _FIRST_LINE_LIMIT)
    if head is None:
        return None
    end = head.find(b"\n")
    if end <= 0:  # empty, or a first line still being written
        return None
    try:
        return as_utc(_first_event_decoder.decode(head[:end]).timestamp).timestamp()
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None


class SessionInfo(TypedDict):
    """One entry of :meth:`SessionArtifactQuery.query_sessions_by_date`.

    ``created_from`` says where ``created_at`` (epoch seconds) came from:
    ``"run_summary"`` (its ``started_at``), ``"events"`` (the first event of
    ``events.jsonl``), ``"build_spec_mtime"`` or ``"artifact_mtime"``.
    """

    session_id: str
    created_at: float
    created_from: str
    artifacts: list[str]


class SessionSummary(TypedDict):
    """What :meth:`SessionArtifactQuery.get_session_summary` returns.

    The seed's keys always come first; ``status`` is ``None`` and
    ``files_generated`` (a count) ``0`` without a readable ``run_summary``.
    ``error`` says why the session cannot be fully read: a corrupt
    ``run_summary``, or a ``run_summary`` or ``events.jsonl`` that is not a
    regular file, cannot be opened or is a symlink leading out of the
    workspace (the rest is still reported). The optional keys are copied
    from a ``run_summary`` that has them.
    """

    session_id: str
    has_build_spec: bool
    has_concept: bool
    has_task_graph: bool
    has_run_summary: bool
    artifacts: list[str]
    status: str | None
    files_generated: int
    created_at: float | None
    created_from: str | None
    error: str | None
    phase: NotRequired[str | None]
    started_at: NotRequired[str | None]
    ended_at: NotRequired[str | None]
    duration_s: NotRequired[float | None]
    event_count: NotRequired[int]
    tasks_completed: NotRequired[int]
    tasks_failed: NotRequired[int]
    llm_calls: NotRequired[int]
    prompt_tokens: NotRequired[int]
    cached_tokens: NotRequired[int]
    completion_tokens: NotRequired[int]
    total_tokens: NotRequired[int]
    cost_usd: NotRequired[float]


_SUMMARY_EXTRAS = (
    "phase",
    "started_at",
    "ended_at",
    "duration_s",
    "event_count",
    "tasks_completed",
    "tasks_failed",
    "llm_calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
)


class _Scan(msgspec.Struct):
    """What one pass over a session directory found."""

    keys: list[str]
    run_summary: Any
    error: str | None
    created_at: float | None
    created_from: str | None


class SessionArtifactQuery:
    """Read-only queries over every session of a workspace.

    Sessions are the directories of ``workspace_root`` whose names are valid
    session ids; anything else there is ignored. A session's creation time
    is, in order of preference: the ``started_at`` recorded in its
    ``run_summary`` (written by :class:`ArtifactSink` from the
    ``session_started`` event), the timestamp of the first event in its
    ``events.jsonl``, the modification time of its ``build_spec`` artifact,
    the oldest modification time of its artifacts. A session with none of
    these (an empty directory) has no date.

    Nothing outside the root is read: a symlink under it is followed only if
    it resolves inside the root. The listings (:meth:`list_sessions`,
    :meth:`query_sessions_by_date`, :meth:`query_session_summaries`) skip a
    session whose directory or ``artifacts`` directory is a symlink leading
    out of the root (or dangling) and log a warning on the
    ``sinks.artifacts`` logger; the methods given one session id raise
    :class:`~sinks.jsonl.UnsafeSymlinkError` for it. A session whose
    ``run_summary`` or ``events.jsonl`` cannot be read (a FIFO, a
    directory, no permission, a symlink leading out) is still listed, with
    what can be read: its summary's ``error`` says why, and
    :meth:`query_sessions_by_date` logs a warning.

    :param workspace_root: the directory holding one directory per session
    """

    def __init__(self, workspace_root: str | os.PathLike[str]) -> None:
        self.workspace_root = Path(workspace_root)
        self._root = os.fspath(self.workspace_root)

    def _session_dir(self, session_id: str) -> str:
        return os.path.join(self._root, validate_session_id(session_id))

    def store(self, session_id: str, *, durable: bool = True) -> ArtifactStore:
        """Return the :class:`ArtifactStore` of ``session_id``'s artifacts.

        The store checks every path against the workspace root (see
        :class:`ArtifactStore`'s ``workspace_root``).

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        """
        return ArtifactStore(
            os.path.join(self._session_dir(session_id), ARTIFACTS_DIR),
            durable=durable,
            workspace_root=self._root,
        )

    def list_sessions(self) -> list[str]:
        """Return the ids of the sessions in the workspace, sorted by id.

        A session directory that is a symlink leading out of the root (or
        dangling) is skipped and logged.
        """
        root = self._root
        try:
            with os.scandir(root) as entries:
                names = [
                    entry.name
                    for entry in entries
                    if (not entry.is_symlink() or stays_inside(root, entry.path)) and entry.is_dir()
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []
        sessions = [name for name in names if is_valid_name(name)]
        sessions.sort()
        return sessions

    def get_session_artifacts(self, session_id: str) -> list[str]:
        """Return the keys of ``session_id``'s artifacts, sorted (``[]`` for no session).

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        :raises UnsafeSymlinkError: if a directory of the session leads out of the root
        """
        artifacts_dir = os.path.join(self._session_dir(session_id), ARTIFACTS_DIR)
        return list_keys(resolve_inside(self._root, artifacts_dir), self._root)

    def get_session_created_at(self, session_id: str) -> float | None:
        """Return when ``session_id`` started (epoch seconds), or ``None`` if unknown.

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        :raises UnsafeSymlinkError: if a directory of the session leads out of the root
        """
        return self._scan(validate_session_id(session_id)).created_at

    def query_sessions_by_date(
        self,
        start_date: float | datetime | None = None,
        end_date: float | datetime | None = None,
    ) -> list[SessionInfo]:
        """Return the sessions created between ``start_date`` and ``end_date``, newest first.

        Bounds are inclusive epoch seconds (or datetimes; naive ones are UTC);
        ``None`` leaves that side open. Sessions without a date are left out.
        Each entry is a :class:`SessionInfo` (``session_id``, ``created_at``,
        ``artifacts``, ``created_from``). A session with an unreadable
        ``run_summary`` or ``events.jsonl`` is dated by what can be read,
        and a warning is logged; one whose directories lead out of the root
        is skipped (logged).
        """
        start = _as_epoch(start_date, "start_date")
        end = _as_epoch(end_date, "end_date")
        found: list[SessionInfo] = []
        for session_id in self.list_sessions():
            scan = self._listed_scan(session_id)
            if scan is None:
                continue
            if scan.error is not None:
                logger.warning(
                    "session %r is listed by what can be read: %s", session_id, scan.error
                )
            created = scan.created_at
            if created is None or scan.created_from is None:
                continue
            if (start is not None and created < start) or (end is not None and created > end):
                continue
            found.append(
                {
                    "session_id": session_id,
                    "created_at": created,
                    "created_from": scan.created_from,
                    "artifacts": scan.keys,
                }
            )
        found.sort(key=lambda entry: (entry["created_at"], entry["session_id"]), reverse=True)
        return found

    def get_session_summary(self, session_id: str) -> SessionSummary:
        """Return a summary of ``session_id``: which artifacts it has and its run's outcome.

        Reads the ``run_summary`` artifact once; a corrupt or unreadable one
        is reported in ``error`` and the rest of the summary is still filled in.

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        :raises UnsafeSymlinkError: if a directory of the session leads out of the root
        """
        return self._summarise(session_id, self._scan(validate_session_id(session_id)))

    def query_session_summaries(
        self,
        start_date: float | datetime | None = None,
        end_date: float | datetime | None = None,
    ) -> list[SessionSummary]:
        """Like :meth:`query_sessions_by_date`, but each entry is the session's full summary.

        One pass over each session: cheaper than calling
        :meth:`get_session_summary` for every entry of the date query. A
        session that cannot be fully read is listed with its ``error`` set.
        """
        start = _as_epoch(start_date, "start_date")
        end = _as_epoch(end_date, "end_date")
        found: list[SessionSummary] = []
        for session_id in self.list_sessions():
            scan = self._listed_scan(session_id)
            if scan is None:
                continue
            created = scan.created_at
            if created is None:
                continue
            if (start is not None and created < start) or (end is not None and created > end):
                continue
            found.append(self._summarise(session_id, scan))
        found.sort(
            key=lambda entry: (entry["created_at"] or 0.0, entry["session_id"]), reverse=True
        )
        return found

    async def alist_sessions(self) -> list[str]:
        """:meth:`list_sessions` in a worker thread."""
        return await anyio.to_thread.run_sync(self.list_sessions)

    async def aget_session_artifacts(self, session_id: str) -> list[str]:
        """:meth:`get_session_artifacts` in a worker thread."""
        return await anyio.to_thread.run_sync(self.get_session_artifacts, session_id)

    async def aquery_sessions_by_date(
        self,
        start_date: float | datetime | None = None,
        end_date: float | datetime | None = None,
    ) -> list[SessionInfo]:
        """:meth:`query_sessions_by_date` in a worker thread."""
        return await anyio.to_thread.run_sync(self.query_sessions_by_date, start_date, end_date)

    async def aget_session_summary(self, session_id: str) -> SessionSummary:
        """:meth:`get_session_summary` in a worker thread."""
        return await anyio.to_thread.run_sync(self.get_session_summary, session_id)

    async def aquery_session_summaries(
        self,
        start_date: float | datetime | None = None,
        end_date: float | datetime | None = None,
    ) -> list[SessionSummary]:
        """:meth:`query_session_summaries` in a worker thread."""
        return await anyio.to_thread.run_sync(self.query_session_summaries, start_date, end_date)

    def _listed_scan(self, session_id: str) -> _Scan | None:
        """:meth:`_scan` for a listing: a session that cannot be scanned is logged, and None."""
        try:
            return self._scan(session_id)
        except OSError as exc:
            report_once(logger, f"session {session_id!r} is left out of the listing: {exc}")
            return None

    def _scan(self, session_id: str) -> _Scan:
        """List a session's artifacts, read its run_summary and date it, tolerating damage.

        :raises UnsafeSymlinkError: if the session's directory or its artifacts
            directory leads out of the root
        :raises OSError: if the artifacts directory cannot be listed
        """
        root = self._root
        session_dir = os.path.join(root, session_id)
        artifacts_dir = resolve_inside(root, os.path.join(session_dir, ARTIFACTS_DIR))
        keys = list_keys(artifacts_dir, root)
        problems: list[str] = []
        run_summary: Any = None
        created: float | None = None
        source: str | None = None
        summary_path = os.path.join(session_dir, ARTIFACTS_DIR, RUN_SUMMARY_KEY + SUFFIX)
        try:
            run_summary = load_artifact_file(RUN_SUMMARY_KEY, resolve_inside(root, summary_path))
        except CorruptArtifactError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"its run_summary cannot be read: {exc}")
        if isinstance(run_summary, dict):
            created = _parse_time(run_summary.get("started_at"))
            source = "run_summary" if created is not None else None
        try:
            log_path = resolve_inside(root, os.path.join(session_dir, LOG_FILE_NAME))
            if created is None:
                created = _first_event_time(log_path)
                source = "events" if created is not None else None
            else:  # not read: only make sure it is a file that can be
                _check_regular(log_path)
        except OSError as exc:
            problems.append(f"its {LOG_FILE_NAME} cannot be read: {exc}")
        if created is None and keys:
            created, source = _oldest_mtime(artifacts_dir, keys)
        return _Scan(keys, run_summary, "; ".join(problems) or None, created, source)

    def _summarise(self, session_id: str, scan: _Scan) -> SessionSummary:
        keys = set(scan.keys)
        summary: dict[str, Any] = {
            "session_id": session_id,
            "has_build_spec": "build_spec" in keys,
            "has_concept": "concept" in keys,
            "has_task_graph": "task_graph" in keys,
            "has_run_summary": RUN_SUMMARY_KEY in keys,
            "artifacts": scan.keys,
            "status": None,
            "files_generated": 0,
            "created_at": scan.created_at,
            "created_from": scan.created_from,
            "error": scan.error,
        }
        run = scan.run_summary
        if isinstance(run, dict):
            status = run.get("status")
            summary["status"] = status if isinstance(status, str) else None
            files = run.get("files_generated")
            if isinstance(files, list):
                summary["files_generated"] = len(files)
            elif isinstance(files, int) and not isinstance(files, bool):
                summary["files_generated"] = files
            for name in _SUMMARY_EXTRAS:
                if name in run:
                    summary[name] = run[name]
        elif run is not None and scan.error is None:
            summary["error"] = (
                f"run_summary holds a {type(run).__name__}, not an object; it was ignored"
            )
        return cast(SessionSummary, summary)

    def __repr__(self) -> str:
        return f"SessionArtifactQuery({self._root!r})"


def _check_regular(path: str) -> None:
    """Raise :class:`NotARegularFileError` if ``path`` exists and is not a regular file."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(path, describe_mode(mode))


def _oldest_mtime(artifacts_dir: str, keys: list[str]) -> tuple[float | None, str | None]:
    """Date a session by file times: build_spec's, else its oldest artifact's."""
    ordered = ["build_spec"] if "build_spec" in keys else keys
    times: list[float] = []
    for key in ordered:
        with contextlib.suppress(OSError):  # deleted meanwhile: date by the others
            times.append(os.stat(os.path.join(artifacts_dir, key + SUFFIX)).st_mtime)
    if not times:
        return None, None
    return min(times), "build_spec_mtime" if "build_spec" in keys else "artifact_mtime"
