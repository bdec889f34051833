"""One summary row per session of a workspace, for ``Workspace.sessions``.

A row comes from the session's ``run_summary`` artifact (kept by
:class:`~sinks.artifacts.ArtifactSink`) when it has one, else from its
``events.jsonl`` (tallied like ``ArtifactSink`` does, and kept between calls
so that only the growth of a log is read again). Rows hold JSON values only.
"""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime
from typing import Any, Final

from .._layout import ARTIFACTS_DIR, LOG_FILE_NAME, resolve_inside
from .._lines import iter_growth, open_log
from ..artifacts._query import SessionArtifactQuery, SessionSummary
from ..artifacts._summary import RUN_SUMMARY_KEY, Tally

__all__: list[str] = []

ROW_KEYS: Final = (
    "session_id",
    "status",
    "phase",
    "tasks_completed",
    "tasks_failed",
    "llm_calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "started_at",
    "ended_at",
    "duration_s",
    "event_count",
    "error",
)
_COUNTS: Final = (
    "tasks_completed",
    "tasks_failed",
    "llm_calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "total_tokens",
    "event_count",
)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def empty_row(session_id: str, error: str | None = None) -> dict[str, Any]:
    """A row with nothing known but the id (and why)."""
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(dict.fromkeys(_COUNTS, 0))
    row["cost_usd"] = 0.0
    row["session_id"] = session_id
    row["error"] = error
    return row


def row_from(session_id: str, run: dict[str, Any], error: str | None) -> dict[str, Any]:
    """A row from a ``run_summary``-shaped mapping, every value checked."""
    row = empty_row(session_id, error)
    row["status"] = _text(run.get("status"))
    row["phase"] = _text(run.get("phase"))
    for key in _COUNTS:
        row[key] = _int(run.get(key))
    row["cost_usd"] = _number(run.get("cost_usd")) or 0.0
    row["started_at"] = _text(run.get("started_at"))
    row["ended_at"] = _text(run.get("ended_at"))
    row["duration_s"] = _number(run.get("duration_s"))
    return row


class _Tallied:
    __slots__ = ("end", "ident", "tally")

    def __init__(self, session_id: str, ident: tuple[int, int]) -> None:
        self.ident = ident
        self.end = 0
        self.tally = Tally(session_id)


_Made = tuple[dict[str, Any], float | None] | None  # a row and its start, as row() returns

SETTLED_NS: Final = 2_000_000_000
"""A session's row is reused only if its files are older than this (2 s, in ns)."""


class SessionRows:
    """Makes the rows; remembers each log-only session's tally between calls.

    Not thread-safe: the caller holds a lock.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.query = SessionArtifactQuery(root)
        self._tallies: dict[str, _Tallied] = {}
        self._made: dict[str, tuple[tuple[Any, ...], _Made]] = {}

    def row(self, session_id: str) -> tuple[dict[str, Any], float | None] | None:
        """Return the row of a valid session id and its start (epoch seconds).

        ``None`` for a directory holding neither a log nor an artifact. A row is
        made again only when its files changed (their ``stat`` says so): a list
        of 10,000 sessions costs a few ``stat`` calls per session.
        """
        key = self._fingerprint(session_id)
        if key is not None:
            kept = self._made.get(session_id)
            if kept is not None and kept[0] == key:
                return None if kept[1] is None else (dict(kept[1][0]), kept[1][1])
        made = self._row(session_id)
        if key is not None:
            self._made[session_id] = (key, made)
            return None if made is None else (dict(made[0]), made[1])
        self._made.pop(session_id, None)
        return made

    def _fingerprint(self, session_id: str) -> tuple[Any, ...] | None:
        """What the files of a session look like (``None``: not sure, make the row).

        Files changed in the last :data:`SETTLED_NS` are not trusted to look
        different after a change (a timestamp's granularity, a reused inode):
        their session's row is made every time.
        """
        directory = os.path.join(self.root, session_id)
        recent = time.time_ns() - SETTLED_NS
        parts: list[Any] = []
        for path in (
            directory,
            os.path.join(directory, LOG_FILE_NAME),
            os.path.join(directory, ARTIFACTS_DIR),
            os.path.join(directory, ARTIFACTS_DIR, RUN_SUMMARY_KEY + ".json"),
        ):
            try:
                status = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                parts.append(None)
                continue
            except OSError:
                return None
            if max(status.st_mtime_ns, status.st_ctime_ns) > recent:
                return None
            parts.append(
                (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_mode)
            )
        if parts[0] is None:
            return None
        return tuple(parts)

    def _row(self, session_id: str) -> tuple[dict[str, Any], float | None] | None:
        try:
            summary = self.query.get_session_summary(session_id)
        except OSError as exc:
            return empty_row(session_id, f"cannot read the session: {exc}"), None
        log = os.path.join(self.root, session_id, LOG_FILE_NAME)
        created = summary["created_at"]
        run = _run_summary(summary)
        if run is not None:
            return row_from(session_id, run, summary["error"]), created
        try:
            tally = self._tally(session_id, log)
        except OSError as exc:
            return empty_row(session_id, f"cannot read {log}: {exc}"), created
        if tally is None:
            if not summary["artifacts"]:
                return None
            row = empty_row(session_id, summary["error"])
        else:
            run_summary = tally.summary()
            row = row_from(
                session_id,
                {key: getattr(run_summary, key) for key in ROW_KEYS if key != "error"},
                summary["error"],
            )
        if row["started_at"] is None and created is not None:
            row["started_at"] = datetime.fromtimestamp(created, UTC).isoformat()
        return row, created

    def _tally(self, session_id: str, log: str) -> Tally | None:
        """The session's tally brought up to date, ``None`` if it has no log.

        :raises UnsafeSymlinkError: if the log leads out of the root (never read)
        """
        resolve_inside(self.root, log)
        try:
            status = os.stat(log)
        except (FileNotFoundError, NotADirectoryError):
            self._tallies.pop(session_id, None)
            return None
        if not stat.S_ISREG(status.st_mode):
            raise IsADirectoryError(f"{log} is not a file")
        ident = (status.st_dev, status.st_ino)
        tallied = self._tallies.get(session_id)
        if tallied is None or tallied.ident != ident or status.st_size < tallied.end:
            tallied = self._tallies[session_id] = _Tallied(session_id, ident)
        if status.st_size > tallied.end:
            fd = open_log(log, self.root)
            if fd is None:
                return None
            try:
                for growth in iter_growth(fd, tallied.end):
                    for event in growth.events:
                        tallied.tally.apply(event)
                    tallied.end = growth.end
            finally:
                os.close(fd)
        return tallied.tally


def _run_summary(summary: SessionSummary) -> dict[str, Any] | None:
    """The run_summary's values, if the session has a readable one."""
    if not summary["has_run_summary"] or summary["error"] is not None:
        return None
    return dict(summary)
