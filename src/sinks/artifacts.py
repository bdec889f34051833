"""The artifact store: each session's JSON artifacts, written atomically, and its sink.

A workspace holds one directory per session::

    {workspace_root}/{session_id}/events.jsonl           the JSONL sink's log
    {workspace_root}/{session_id}/artifacts/{key}.json   this module's artifacts

:class:`ArtifactStore` saves and loads one session's artifacts;
:class:`SessionArtifactQuery` lists, dates and summarises the sessions of a
workspace; :class:`ArtifactSink` is a bus sink that saves the artifacts
announced by ``artifact_created``/``artifact_updated`` events and keeps each
session's ``run_summary`` artifact (a :class:`RunSummary`) current.

Trust:

- **Atomic writes.** An artifact is written to a temporary file in its own
  directory, flushed and fsynced, renamed over the old one with
  ``os.replace``, and the directory is fsynced. A crash at any moment leaves
  the old or the new artifact, never an empty or partial one. Temporary files
  are named ``.<random>.tmp``: a crash may leave one behind, and no listing
  ever shows it (keys cannot start with a dot).
- **Names are validated.** Artifact keys and session ids are single file
  names: :class:`InvalidNameError` is raised for anything else, before any
  file is touched, so nothing is read or written outside the root.
- **Corruption is contained.** A damaged artifact raises
  :class:`CorruptArtifactError` from ``load_artifact`` and never breaks a
  listing or a summary.
- **Dates come from content.** A session's creation time is its recorded
  start (``run_summary.started_at``, the first event of ``events.jsonl``);
  file modification times are only the last resort, so copying or touching
  files does not reorder sessions.

Errors::

    EventBusError
    ├── InvalidNameError (ValueError)
    ├── CorruptArtifactError (ValueError)
    └── ArtifactEncodeError (TypeError)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import anyio.to_thread
import msgspec

from eventbus import (
    Event,
    EventBusError,
    EventType,
    InvalidNameError,
    as_utc,
    is_valid_name,
    validate_name,
)

__all__ = [
    "ARTIFACTS_DIR",
    "RUN_SUMMARY_KEY",
    "ArtifactEncodeError",
    "ArtifactSink",
    "ArtifactStore",
    "CorruptArtifactError",
    "RunSummary",
    "SessionArtifactQuery",
    "SessionInfo",
    "SessionSummary",
]

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
"""The name of a session's artifacts directory."""
RUN_SUMMARY_KEY = "run_summary"
"""The key of the :class:`RunSummary` artifact that :class:`ArtifactSink` keeps."""
_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"
_FIRST_LINE_LIMIT = 64 * 1024

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


# --- errors -------------------------------------------------------------------------


class CorruptArtifactError(EventBusError, ValueError):
    """Raised by ``load_artifact`` when an artifact file does not hold valid JSON."""

    def __init__(self, key: str, path: str, reason: str) -> None:
        self.key = key
        self.path = path
        self.reason = reason
        super().__init__(
            f"artifact {key!r} is corrupt: {path} is not valid JSON ({reason}); "
            "restore the file, or delete it with delete_artifact()"
        )


class ArtifactEncodeError(EventBusError, TypeError):
    """Raised by ``save_artifact`` when the data cannot be encoded as JSON; nothing is written."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"cannot save artifact {key!r}: {reason}; an artifact must be JSON data "
            "(dicts with str keys, lists, str, int, float, bool, None)"
        )


# --- names --------------------------------------------------------------------------


def _check_name(name: str, kind: str, suffix: str) -> str:
    return validate_name(name, kind, suffix)


def _check_key(key: str) -> str:
    return _check_name(key, "artifact key", _SUFFIX)


def _check_session_id(session_id: str) -> str:
    return _check_name(session_id, "session id", "")


# --- files --------------------------------------------------------------------------


def _fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` durable (renames, creations, deletions)."""
    if os.name != "posix":  # Windows cannot open a directory; NTFS journals its entries
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(path: str, durable: bool) -> None:
    """Create ``path`` and its missing parents; fsync each parent that gained an entry."""
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it
            os.mkdir(directory)
        if durable:
            _fsync_directory(os.path.dirname(directory) or ".")


def _open_temp(directory: str) -> tuple[int, str]:
    """Create a new temporary file in ``directory``; return its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = os.path.join(directory, f".{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue


def _write_atomic(directory: str, filename: str, data: bytes, durable: bool) -> None:
    """Replace ``directory/filename`` by ``data`` all at once, even across a crash.

    The data goes to a temporary file in the same directory, is flushed and
    (when ``durable``) fsynced, then renamed over the target; the directory
    is fsynced so the rename itself survives a power loss.
    """
    try:
        fd, temp = _open_temp(directory)
    except FileNotFoundError:
        _make_directory(directory, durable)
        fd, temp = _open_temp(directory)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temp, os.path.join(directory, filename))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_directory(directory)


def _read_bytes(path: str) -> bytes | None:
    """Return the file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _list_keys(directory: str) -> list[str]:
    """Return the sorted keys of the artifacts in ``directory``, skipping anything else."""
    try:
        with os.scandir(directory) as entries:
            names = [
                entry.name for entry in entries if entry.name.endswith(_SUFFIX) and entry.is_file()
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = [name[: -len(_SUFFIX)] for name in names]
    keys = [key for key in keys if is_valid_name(key, _SUFFIX)]
    keys.sort()
    return keys


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
        try:
            return as_utc(datetime.fromisoformat(value)).timestamp()
        except ValueError:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _Timestamped(msgspec.Struct):
    timestamp: datetime


_first_event_decoder = msgspec.json.Decoder(_Timestamped)


def _first_event_time(log_path: str) -> float | None:
    """Return the timestamp of the first complete event line of a JSONL log, or None."""
    try:
        with open(log_path, "rb") as file:
            head = file.read(_FIRST_LINE_LIMIT)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    end = head.find(b"\n")
    if end <= 0:  # empty, or a first line still being written
        return None
    try:
        return as_utc(_first_event_decoder.decode(head[:end]).timestamp).timestamp()
    except (msgspec.DecodeError, ValueError):
        return None


# --- the store ----------------------------------------------------------------------


class ArtifactStore:
    """One session's artifacts: JSON documents stored as ``{artifacts_path}/{key}.json``.

    The directory is created by the first save. Every write is atomic (see
    the module docstring); ``durable=False`` skips the fsyncs: a crash of
    the process still leaves the old or the new artifact, but a power loss
    may lose recent saves. Keys are validated (:class:`InvalidNameError`).
    Each method has an ``a``-prefixed twin that runs it in a worker thread,
    so a large artifact never blocks the event loop.

    :param artifacts_path: the directory of the artifacts
    :param durable: fsync every write (the default)
    """

    def __init__(self, artifacts_path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.artifacts_path = Path(artifacts_path)
        self.durable = durable
        self._dir = os.fspath(self.artifacts_path)

    def artifact_path(self, key: str) -> Path:
        """Return where the artifact ``key`` is stored (whether or not it exists).

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        """
        return self.artifacts_path / (_check_key(key) + _SUFFIX)

    def _path(self, key: str) -> str:
        return os.path.join(self._dir, _check_key(key) + _SUFFIX)

    def save_artifact(self, key: str, data: Any) -> None:
        """Save ``data`` (JSON) as the artifact ``key``, replacing any previous version atomically.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises ArtifactEncodeError: if ``data`` cannot be encoded as JSON
        """
        filename = _check_key(key) + _SUFFIX
        try:
            encoded = _encoder.encode(data)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ArtifactEncodeError(key, str(exc)) from exc
        _write_atomic(self._dir, filename, encoded + b"\n", self.durable)

    def load_artifact(self, key: str) -> Any:
        """Return the artifact ``key`` decoded from JSON, or ``None`` if there is none.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises CorruptArtifactError: if the file does not hold valid JSON
        """
        path = self._path(key)
        data = _read_bytes(path)
        if data is None:
            return None
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise CorruptArtifactError(key, path, str(exc)) from exc

    def list_artifacts(self) -> list[str]:
        """Return the keys of the stored artifacts, sorted; temporary files are never listed."""
        return _list_keys(self._dir)

    def artifact_exists(self, key: str) -> bool:
        """Return whether the artifact ``key`` is stored.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        """
        try:
            return stat.S_ISREG(os.stat(self._path(key)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def get_artifact_metadata(self, key: str) -> dict[str, Any]:
        """Return ``key``, ``size_bytes``, ``modified_at`` (epoch seconds) and ``path``.

        Returns ``{}`` when the artifact does not exist.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        """
        path = self._path(key)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        if not stat.S_ISREG(info.st_mode):
            return {}
        return {
            "key": key,
            "size_bytes": info.st_size,
            "modified_at": info.st_mtime,
            "path": path,
        }

    def delete_artifact(self, key: str) -> bool:
        """Delete the artifact ``key``; return whether there was one.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        """
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        if self.durable:
            _fsync_directory(self._dir)
        return True

    async def asave_artifact(self, key: str, data: Any) -> None:
        """:meth:`save_artifact` in a worker thread; cancelling waits for the write to end."""
        await anyio.to_thread.run_sync(self.save_artifact, key, data)

    async def aload_artifact(self, key: str) -> Any:
        """:meth:`load_artifact` in a worker thread."""
        return await anyio.to_thread.run_sync(self.load_artifact, key)

    async def alist_artifacts(self) -> list[str]:
        """:meth:`list_artifacts` in a worker thread."""
        return await anyio.to_thread.run_sync(self.list_artifacts)

    async def aartifact_exists(self, key: str) -> bool:
        """:meth:`artifact_exists` in a worker thread."""
        return await anyio.to_thread.run_sync(self.artifact_exists, key)

    async def aget_artifact_metadata(self, key: str) -> dict[str, Any]:
        """:meth:`get_artifact_metadata` in a worker thread."""
        return await anyio.to_thread.run_sync(self.get_artifact_metadata, key)

    async def adelete_artifact(self, key: str) -> bool:
        """:meth:`delete_artifact` in a worker thread."""
        return await anyio.to_thread.run_sync(self.delete_artifact, key)

    def __repr__(self) -> str:
        return f"ArtifactStore({self._dir!r})"


# --- queries across sessions ----------------------------------------------------------


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
    ``files_generated`` (a count) ``0`` without a ``run_summary``. ``error``
    describes a corrupt ``run_summary`` (the rest is still reported). The
    optional keys are copied from a ``run_summary`` that has them.
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

    :param workspace_root: the directory holding one directory per session
    """

    def __init__(self, workspace_root: str | os.PathLike[str]) -> None:
        self.workspace_root = Path(workspace_root)
        self._root = os.fspath(self.workspace_root)

    def _session_dir(self, session_id: str) -> str:
        return os.path.join(self._root, _check_session_id(session_id))

    def store(self, session_id: str, *, durable: bool = True) -> ArtifactStore:
        """Return the :class:`ArtifactStore` of ``session_id``'s artifacts.

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        """
        return ArtifactStore(
            os.path.join(self._session_dir(session_id), ARTIFACTS_DIR), durable=durable
        )

    def list_sessions(self) -> list[str]:
        """Return the ids of the sessions in the workspace, sorted."""
        try:
            with os.scandir(self._root) as entries:
                names = [entry.name for entry in entries if entry.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        sessions = [name for name in names if is_valid_name(name)]
        sessions.sort()
        return sessions

    def get_session_artifacts(self, session_id: str) -> list[str]:
        """Return the keys of ``session_id``'s artifacts, sorted (``[]`` for no session).

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        """
        return _list_keys(os.path.join(self._session_dir(session_id), ARTIFACTS_DIR))

    def get_session_created_at(self, session_id: str) -> float | None:
        """Return when ``session_id`` started (epoch seconds), or ``None`` if unknown.

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        """
        return self._scan(self._session_dir(session_id)).created_at

    def query_sessions_by_date(
        self,
        start_date: float | datetime | None = None,
        end_date: float | datetime | None = None,
    ) -> list[SessionInfo]:
        """Return the sessions created between ``start_date`` and ``end_date``, newest first.

        Bounds are inclusive epoch seconds (or datetimes; naive ones are UTC);
        ``None`` leaves that side open. Sessions without a date are left out.
        Each entry is a :class:`SessionInfo` (``session_id``, ``created_at``,
        ``artifacts``, ``created_from``).
        """
        start = _as_epoch(start_date, "start_date")
        end = _as_epoch(end_date, "end_date")
        found: list[SessionInfo] = []
        for session_id in self.list_sessions():
            scan = self._scan(os.path.join(self._root, session_id))
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

        Reads the ``run_summary`` artifact once; a corrupt one is reported in
        ``error`` and the rest of the summary is still filled in.

        :raises InvalidNameError: if ``session_id`` is not a valid session id
        """
        return self._summarise(session_id, self._scan(self._session_dir(session_id)))

    def query_session_summaries(
        self,
        start_date: float | datetime | None = None,
        end_date: float | datetime | None = None,
    ) -> list[SessionSummary]:
        """Like :meth:`query_sessions_by_date`, but each entry is the session's full summary.

        One pass over each session: cheaper than calling
        :meth:`get_session_summary` for every entry of the date query.
        """
        start = _as_epoch(start_date, "start_date")
        end = _as_epoch(end_date, "end_date")
        found: list[SessionSummary] = []
        for session_id in self.list_sessions():
            scan = self._scan(os.path.join(self._root, session_id))
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

    def _scan(self, session_dir: str) -> _Scan:
        """List a session's artifacts, read its run_summary and date it, tolerating damage."""
        artifacts_dir = os.path.join(session_dir, ARTIFACTS_DIR)
        keys = _list_keys(artifacts_dir)
        run_summary: Any = None
        error: str | None = None
        created: float | None = None
        source: str | None = None
        if RUN_SUMMARY_KEY in keys:
            path = os.path.join(artifacts_dir, RUN_SUMMARY_KEY + _SUFFIX)
            data = _read_bytes(path)
            if data is not None:
                try:
                    run_summary = _decoder.decode(data)
                except msgspec.DecodeError as exc:
                    error = str(CorruptArtifactError(RUN_SUMMARY_KEY, path, str(exc)))
            if isinstance(run_summary, dict):
                created = _parse_time(run_summary.get("started_at"))
                source = "run_summary" if created is not None else None
        if created is None:
            created = _first_event_time(os.path.join(session_dir, "events.jsonl"))
            source = "events" if created is not None else None
        if created is None and keys:
            created, source = _oldest_mtime(artifacts_dir, keys)
        return _Scan(keys, run_summary, error, created, source)

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


def _oldest_mtime(artifacts_dir: str, keys: list[str]) -> tuple[float | None, str | None]:
    """Date a session by file times: build_spec's, else its oldest artifact's."""
    ordered = ["build_spec"] if "build_spec" in keys else keys
    times: list[float] = []
    for key in ordered:
        with contextlib.suppress(OSError):  # deleted meanwhile: date by the others
            times.append(os.stat(os.path.join(artifacts_dir, key + _SUFFIX)).st_mtime)
    if not times:
        return None, None
    return min(times), "build_spec_mtime" if ordered != keys else "artifact_mtime"


# --- the run summary --------------------------------------------------------------------


class RunSummary(msgspec.Struct, kw_only=True):
    """The ``run_summary`` artifact that :class:`ArtifactSink` keeps for each session.

    Times are ISO 8601 strings in UTC. ``started_at`` is the
    ``session_started`` event's time (or the first event seen);
    ``duration_s`` runs to ``ended_at``, or to the latest event while the
    session is ``"running"``. A task counts once, under its latest outcome
    (``task_completed`` or ``task_failed``). Token counts and ``cost_usd``
    add up the ``llm_response_received`` events. Decode a loaded artifact
    with ``msgspec.convert(data, RunSummary)``.
    """

    session_id: str = ""
    status: str = "running"
    phase: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    updated_at: str | None = None
    event_count: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    completed_task_ids: list[str] = []
    failed_task_ids: list[str] = []
    files_generated: list[str] = []
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0


_END_STATUS = {
    EventType.SESSION_COMPLETED: "completed",
    EventType.SESSION_FAILED: "failed",
    EventType.SESSION_ABORTED: "aborted",
}
_summary_decoder = msgspec.json.Decoder(RunSummary)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _amount(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _iso_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


class _Tally:
    """A session's running totals; turned into a :class:`RunSummary` after each batch."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.status = "running"
        self.phase: str | None = None
        self.started: datetime | None = None
        self.ended: datetime | None = None
        self.latest: datetime | None = None
        self.event_count = 0
        self.completed: set[str] = set()
        self.failed: set[str] = set()
        self.files: set[str] = set()
        self.llm_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0
        self.cached_tokens = 0
        self.cost_usd = 0.0
        self.errors = 0

    @classmethod
    def resume(cls, summary: RunSummary) -> _Tally:
        tally = cls(summary.session_id)
        tally.status = summary.status
        tally.phase = summary.phase
        tally.started = _iso_time(summary.started_at)
        tally.ended = _iso_time(summary.ended_at)
        tally.latest = _iso_time(summary.updated_at)
        tally.event_count = summary.event_count
        tally.completed = set(summary.completed_task_ids)
        tally.failed = set(summary.failed_task_ids) - tally.completed
        tally.files = set(summary.files_generated)
        tally.llm_calls = summary.llm_calls
        tally.prompt_tokens = summary.prompt_tokens
        tally.completion_tokens = summary.completion_tokens
        tally.total_tokens = summary.total_tokens
        tally.cached_tokens = summary.cached_tokens
        tally.cost_usd = summary.cost_usd
        tally.errors = summary.errors
        return tally

    def copy(self) -> _Tally:
        twin = copy.copy(self)
        twin.completed = set(self.completed)
        twin.failed = set(self.failed)
        twin.files = set(self.files)
        return twin

    def apply(self, event: Event) -> None:
        self.event_count += 1
        moment = event.timestamp
        if self.started is None:
            self.started = moment
        if self.latest is None or moment > self.latest:
            self.latest = moment
        kind = event.event_type
        metadata = event.metadata
        if kind is EventType.LLM_RESPONSE_RECEIVED:
            prompt = _count(metadata.get("prompt_tokens"))
            completion = _count(metadata.get("completion_tokens"))
            total = metadata.get("total_tokens")
            self.llm_calls += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.total_tokens += _count(total) if total is not None else prompt + completion
            self.cached_tokens += _count(metadata.get("cached_tokens"))
            self.cost_usd += _amount(metadata.get("cost_usd"))
        elif kind is EventType.TASK_COMPLETED:
            if event.task_id is not None:
                self.completed.add(event.task_id)
                self.failed.discard(event.task_id)
        elif kind is EventType.TASK_FAILED:
            if event.task_id is not None:
                self.failed.add(event.task_id)
                self.completed.discard(event.task_id)
        elif kind is EventType.DIFF_APPLIED:
            files = metadata.get("files")
            if isinstance(files, list):
                self.files.update(name for name in files if isinstance(name, str))
        elif kind is EventType.PHASE_TRANSITION:
            phase = event.phase or metadata.get("new_phase")
            if isinstance(phase, str):
                self.phase = phase
        elif kind is EventType.SESSION_STARTED:
            self.started = moment
            self.status = "running"
            self.ended = None
        elif kind in _END_STATUS:
            self.status = _END_STATUS[kind]
            self.ended = moment
        elif kind is EventType.ERROR:
            self.errors += 1

    def summary(self) -> RunSummary:
        until = self.ended or self.latest
        duration = None
        if self.started is not None and until is not None:
            duration = round(max((until - self.started).total_seconds(), 0.0), 6)
        return RunSummary(
            session_id=self.session_id,
            status=self.status,
            phase=self.phase,
            started_at=self.started.isoformat() if self.started else None,
            ended_at=self.ended.isoformat() if self.ended else None,
            duration_s=duration,
            updated_at=self.latest.isoformat() if self.latest else None,
            event_count=self.event_count,
            tasks_completed=len(self.completed),
            tasks_failed=len(self.failed),
            completed_task_ids=sorted(self.completed),
            failed_task_ids=sorted(self.failed),
            files_generated=sorted(self.files),
            llm_calls=self.llm_calls,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            cached_tokens=self.cached_tokens,
            cost_usd=round(self.cost_usd, 10),
            errors=self.errors,
        )


# --- the sink ---------------------------------------------------------------------------

_ARTIFACT_TYPES = frozenset({EventType.ARTIFACT_CREATED, EventType.ARTIFACT_UPDATED})


@dataclass
class _BatchResult:
    """What a batch changed; the sink applies it once the batch is on disk."""

    tallies: dict[str, _Tally] = field(default_factory=dict)
    saved: int = 0
    skipped_artifacts: int = 0
    skipped_events: int = 0


class ArtifactSink:
    """A bus sink that persists artifacts and keeps each session's ``run_summary`` current.

    For every batch, in a worker thread, per session:

    - ``artifact_created``/``artifact_updated`` events with ``metadata["key"]``
      and ``metadata["content"]`` (as :func:`eventbus.create_artifact_event`
      builds them) save the content as that artifact (the last version in
      the batch wins). Events without content are only counted.
    - the session's :class:`RunSummary` is updated from every event and
      saved once, atomically, as the ``run_summary`` artifact. A dashboard
      reading it mid-session sees the totals up to the last flushed batch.

    When ``write`` returns, the batch is on disk (fsynced unless
    ``durable=False``). When it raises, nothing was counted, so the bus's
    retry of the same batch does not count events twice.

    Bad input never stops the sink: an artifact event whose key is not a
    valid artifact key (or is ``"run_summary"``, which the sink owns) is
    skipped, counted in :attr:`skipped_artifacts` and logged; an event whose
    session id cannot be a directory name is skipped, counted in
    :attr:`skipped_events` and logged. Nothing is written outside the root.

    The totals of up to ``max_cached_sessions`` sessions are kept in memory;
    a session that ended or fell out of the cache resumes from its
    ``run_summary`` on disk, as does a session continued by a new process.

    :param workspace_root: the directory holding one directory per session
    :param durable: fsync every write (the default)
    :param max_cached_sessions: how many sessions' totals stay in memory
    """

    name = "artifacts"

    def __init__(
        self,
        workspace_root: str | os.PathLike[str],
        *,
        durable: bool = True,
        max_cached_sessions: int = 1024,
    ) -> None:
        if max_cached_sessions < 1:
            raise ValueError(f"max_cached_sessions must be >= 1, got {max_cached_sessions}")
        self.workspace_root = Path(workspace_root)
        self.durable = durable
        self.max_cached_sessions = max_cached_sessions
        self._query = SessionArtifactQuery(workspace_root)
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()
        self._saved = 0
        self._skipped_artifacts = 0
        self._skipped_events = 0
        self._lock = anyio.Lock()

    @property
    def saved_artifacts(self) -> int:
        """How many artifact versions announced by events were saved (not counting summaries)."""
        return self._saved

    @property
    def skipped_artifacts(self) -> int:
        """How many artifact events carried content that was not saved (an invalid key)."""
        return self._skipped_artifacts

    @property
    def skipped_events(self) -> int:
        """How many events were ignored because their session id is not a valid name."""
        return self._skipped_events

    async def write(self, events: Sequence[Event]) -> None:
        """Save the batch's artifacts and each touched session's ``run_summary``.

        Writes run one at a time (the bus never overlaps them; a caller
        writing from several tasks waits its turn).
        """
        async with self._lock:
            result = await anyio.to_thread.run_sync(self._write_batch, events)
            self._commit(result)

    def _commit(self, result: _BatchResult) -> None:
        for session_id, tally in result.tallies.items():
            if tally.status == "running":
                self._tallies[session_id] = tally
                self._tallies.move_to_end(session_id)
            else:
                self._tallies.pop(session_id, None)
        while len(self._tallies) > self.max_cached_sessions:
            self._tallies.popitem(last=False)
        self._saved += result.saved
        self._skipped_artifacts += result.skipped_artifacts
        self._skipped_events += result.skipped_events

    async def aclose(self) -> None:
        """Forget the cached totals; everything was already saved by ``write``."""
        self._tallies.clear()

    def _write_batch(self, events: Sequence[Event]) -> _BatchResult:
        """Runs in a worker thread; must not change the sink's state (see ``write``)."""
        result = _BatchResult()
        pending: dict[str, dict[str, Any]] = {}
        stores: dict[str, ArtifactStore] = {}
        rejected: set[str] = set()
        for event in events:
            session_id = event.session_id
            tally = result.tallies.get(session_id)
            if tally is None:
                if session_id in rejected:
                    result.skipped_events += 1
                    continue
                try:
                    stores[session_id] = self._query.store(session_id, durable=self.durable)
                except (InvalidNameError, TypeError) as exc:
                    rejected.add(session_id)
                    result.skipped_events += 1
                    logger.warning(
                        "artifact sink skipped the events of a session (first: %s): %s",
                        event.id,
                        exc,
                    )
                    continue
                tally = self._tally_for(session_id, stores[session_id])
                result.tallies[session_id] = tally
                pending[session_id] = {}
            tally.apply(event)
            if event.event_type in _ARTIFACT_TYPES and "content" in event.metadata:
                key = event.metadata.get("key")
                problem = _artifact_key_problem(key)
                if problem is not None:
                    result.skipped_artifacts += 1
                    logger.warning(
                        "artifact sink skipped the content of event %s (session %r): %s",
                        event.id,
                        session_id,
                        problem,
                    )
                    continue
                assert isinstance(key, str)
                pending[session_id][key] = event.metadata["content"]
        for session_id, tally in result.tallies.items():
            store = stores[session_id]
            for key, content in pending[session_id].items():
                store.save_artifact(key, content)
                result.saved += 1
            store.save_artifact(RUN_SUMMARY_KEY, tally.summary())
        return result

    def _tally_for(self, session_id: str, store: ArtifactStore) -> _Tally:
        """Return a copy of the session's totals, from the cache or resumed from disk."""
        cached = self._tallies.get(session_id)
        if cached is not None:
            return cached.copy()
        data = _read_bytes(os.fspath(store.artifact_path(RUN_SUMMARY_KEY)))
        if data is None:
            return _Tally(session_id)
        try:
            summary = _summary_decoder.decode(data)
        except msgspec.DecodeError as exc:
            logger.warning(
                "artifact sink cannot resume session %r from its run_summary (%s); "
                "counting from scratch",
                session_id,
                exc,
            )
            return _Tally(session_id)
        summary.session_id = session_id
        return _Tally.resume(summary)

    def __repr__(self) -> str:
        return f"ArtifactSink({os.fspath(self.workspace_root)!r})"


def _artifact_key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"metadata['key'] must be a str, got {type(key).__name__}"
    if key == RUN_SUMMARY_KEY:
        return "the key 'run_summary' is reserved for the summary the sink keeps"
    try:
        validate_name(key, "artifact key", _SUFFIX)
    except InvalidNameError as exc:
        return str(exc)
    return None
