"""Reading a workspace that another process writes: sessions, events, usage, live follow.

A workspace is the directory a :class:`~sinks.jsonl.JsonlSink` and an
:class:`~sinks.artifacts.ArtifactSink` write to::

    {root}/{session_id}/events.jsonl             (after its sealed segments, if any:
                                                 events.000001.jsonl, ...)
    {root}/{session_id}/artifacts/run_summary.json

:class:`Workspace` answers the questions of the ``eventbus`` CLI and of the
web API from those files, never writing, never locking (but for
:meth:`Workspace.prune`, which removes whole ended sessions)::

    workspace = Workspace("workspaces")
    workspace.sessions()                                   # newest first
    events, next_id = workspace.events(EventQuery(event_type="task_failed"), limit=100)
    workspace.usage("model")                   # {"by": "model", "rows": [...], "total": {...}}
    async for event in workspace.follow(session_id="s1"):  # stored events, then live ones
        ...

Every answer is read from the logs as they are when it is asked: events
appended since the last call are read (only the growth of each log), new
sessions are found, a log that was replaced is read again.

**Cost.** ``Workspace(root)`` builds, at its first query of events, an
in-memory index of every log (a low-memory :class:`~sinks.index.EventIndex`,
holding where each line is rather than the event)
and keeps it current: later queries cost in proportion to their answer plus
what was appended since. That suits a server. ``Workspace(root,
index=False)`` holds nothing and answers each query by reading the logs once,
decoding only the fields queries filter on and then only the matching events:
a selective query costs less than loading the logs with ``EventLog``. That
suits a one-off command (the CLI). ``Workspace(root, max_events=N)`` indexes
only the newest N events and reads the logs for the part of an answer
older than those (same answers, slower); :meth:`Workspace.build_index`
builds the index in the calling thread while other threads' queries are
answered from the logs (``eventbus serve`` answers at once that way).
:meth:`Workspace.usage` needs no index, in every mode: it keeps, per log,
sums per (session, model, role, task, phase, day) of the responses read so
far, and reads on from where it stopped (a log replaced or cleared is read
again); the first answer reads only the lines naming the response type.

**Threads.** The methods block on the disk: from async code, call them in a
worker thread (``anyio.to_thread.run_sync``). A :class:`Workspace` is safe
to share between threads. :meth:`Workspace.follow` is async.

Errors::

    EventBusError
    ├── SessionNotFoundError (LookupError)
    ├── UnknownCommandError (LookupError: a command id neither the inbox nor the log holds)
    ├── ArtifactNotFoundError (LookupError)
    ├── ArtifactTooLargeError (ValueError)
    ├── InvalidTimeError (ValueError)
    ├── UnknownEventTypeError (ValueError: a type neither this version nor any log knows)
    ├── InvalidNameError (ValueError, from eventbus: a bad session id)
    ├── UnknownEventIdError (LookupError, from sinks.index: an ``after`` id no log holds)
    └── UnsafeSymlinkError (OSError, from sinks.jsonl: the session asked for, or its
        log, is a symlink leading out of the root)

**Symlinks.** Nothing outside the root is read: a session directory or an
``events.jsonl`` that is a symlink is followed only if it resolves inside the
root. One leading out (or dangling) is skipped by every query over all
sessions, including following (a warning on the ``sinks.workspace`` logger,
once per link), and refused with :class:`~sinks.jsonl.UnsafeSymlinkError` by
a query given that session; :meth:`Workspace.sessions` lists such a session
with ``error`` saying why.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.to_thread
import msgspec

from eventbus import (
    Event,
    EventBusError,
    EventQuery,
    EventType,
    as_utc,
    validate_session_id,
)

from .._layout import (
    CONTROL_FILE_NAME,
    LOG_FILE_NAME,
    UnsafeSymlinkError,
    report_once,
    resolve_inside,
)
from .._lines import complete_end, iter_growth, open_log, read_places
from .._segments import log_stat
from ..index import EventIndex, UnknownEventIdError
from ._follow import ChangeHub, Tail, check_watchfiles
from ._prune import DEFAULT_STALE, PruneReport, prune
from ._scan import Key, Keyed, decode_keyed, find_key, key_of, scan_keys, scan_log, types_in_logs
from ._sessions import SessionRows
from ._tally import UsageTally

__all__ = [
    "MAX_ARTIFACT_BYTES",
    "USAGE_ALIASES",
    "USAGE_KEYS",
    "ArtifactNotFoundError",
    "ArtifactTooLargeError",
    "InvalidTimeError",
    "SessionNotFoundError",
    "UnknownCommandError",
    "UnknownEventTypeError",
    "Workspace",
    "parse_time",
]

USAGE_KEYS: Final = ("model", "agent_role", "task_id", "session_id", "phase", "day")
"""What :meth:`Workspace.usage` can group by (``day``: the responses' UTC dates)."""

USAGE_ALIASES: Final = {"role": "agent_role", "task": "task_id", "session": "session_id"}
"""Short names :meth:`Workspace.usage` also takes for ``by`` (its answer names the field)."""

MAX_ARTIFACT_BYTES: Final = 16 * 1024 * 1024
"""The largest artifact :meth:`Workspace.artifact` reads (16 MiB)."""

logger = logging.getLogger("sinks.workspace")

_REMEMBERED: Final = 10_000  # lines of the last scanned answer kept for read_lines
_PAGE: Final = 1000  # events per page when follow replays the stored ones
_GIVE_WAY: Final = 0.2  # the longest the build waits, between chunks, for queries to finish
_RESPONSE: Final = EventType.LLM_RESPONSE_RECEIVED
_BUILTIN_TYPES: Final = frozenset(kind.value for kind in EventType)
_ENDS: Final = (EventType.SESSION_COMPLETED, EventType.SESSION_FAILED, EventType.SESSION_ABORTED)
_GATES: Final = (EventType.GATE_EVALUATED, EventType.GATE_WARNED, EventType.GATE_BLOCKED)
_OUTCOMES: Final = (EventType.CONTROL_APPLIED, EventType.CONTROL_REJECTED)
_PENDING_QUERY: Final = EventQuery(
    event_type=[
        EventType.CLARIFICATION_REQUESTED,
        EventType.CLARIFICATION_ANSWERED,
        EventType.APPROVAL_REQUESTED,
        *_GATES,
        *_ENDS,
    ]
)
_inbox_line: Final = msgspec.json.Decoder(dict[str, Any])


# --- errors ---------------------------------------------------------------------------


class SessionNotFoundError(EventBusError, LookupError):
    """Raised when a workspace has no session with the id asked for."""

    def __init__(self, session_id: str, root: str) -> None:
        self.session_id = session_id
        self.root = root
        super().__init__(
            f"no session {session_id!r} in the workspace {root!r}; "
            "list its sessions with 'eventbus sessions' or GET /api/sessions"
        )


class UnknownCommandError(EventBusError, LookupError):
    """Raised when neither a session's inbox nor its log holds a command with the id asked for."""

    def __init__(self, session_id: str, command_id: str) -> None:
        self.session_id = session_id
        self.command_id = command_id
        super().__init__(
            f"no command {command_id!r} in session {session_id!r}: it was never sent "
            "to this session's inbox; check the command id and the session id"
        )


class ArtifactNotFoundError(EventBusError, LookupError):
    """Raised when a session has no artifact with the key asked for."""

    def __init__(self, session_id: str, key: str) -> None:
        self.session_id = session_id
        self.key = key
        super().__init__(
            f"session {session_id!r} has no artifact {key!r}: its artifacts are listed "
            "by GET /api/sessions/{session_id} (eventbus sessions --json)"
        )


class ArtifactTooLargeError(EventBusError, ValueError):
    """Raised when an artifact is larger than :data:`MAX_ARTIFACT_BYTES` (served whole or not)."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(
            f"artifact {key!r} is {size} bytes, more than the {limit} served: "
            "read it from the workspace's files"
        )


class InvalidTimeError(EventBusError, ValueError):
    """Raised by :func:`parse_time` for a time it cannot read."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(
            f"cannot read the time {text!r}: give an ISO 8601 time such as "
            "2026-01-31T12:00:00 (no offset means UTC) or 2026-01-31, or a time "
            "ago such as 30s, 10m, 2h, 3d or 1w"
        )


class UnknownEventTypeError(EventBusError, ValueError):
    """Raised when a query names an event type that neither this version nor any log knows.

    ``types`` are the unknown types asked for; ``known`` lists every type the
    workspace knows: this version's :class:`~eventbus.EventType` values and
    the types its logs hold (written by a newer producer).
    """

    def __init__(self, types: Sequence[str], known: Sequence[str]) -> None:
        self.types = tuple(types)
        self.known = tuple(known)
        names = ", ".join(repr(kind) for kind in self.types)
        super().__init__(
            f"no event type {names} in this version or in the workspace's logs; "
            f"known types: {', '.join(self.known)}"
        )


# --- times -----------------------------------------------------------------------------

_RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """Return the moment ``text`` names, as an aware UTC datetime.

    ``text`` is an ISO 8601 time (``2026-01-31T12:00:00``, ``...Z``,
    ``...+02:00``, or a date; without an offset it is UTC), or a time ago:
    a number and a unit, ``s``, ``m``, ``h``, ``d`` or ``w`` (``30s``,
    ``10m``, ``2h``, ``3d``, ``1.5h``), counted back from ``now`` (default:
    the current time).

    :raises InvalidTimeError: if ``text`` is neither.
    """
    match = _RELATIVE.fullmatch(text)
    if match is not None:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        base = datetime.now(UTC) if now is None else as_utc(now)
        try:
            return base - timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidTimeError(text) from None
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise InvalidTimeError(text) from None


# --- the workspace ---------------------------------------------------------------------


class _Log:
    """One session's log as the index has read it."""

    __slots__ = ("end", "ident", "path")

    def __init__(self, path: str, ident: tuple[int, int]) -> None:
        self.path = path
        self.ident = ident
        self.end = 0  # just after the last complete line indexed


class Workspace:
    """Read-only queries over the sessions of a workspace directory.

    :param root: the directory holding one directory per session (it may
        not exist yet: it then has no sessions).
    :param index: keep an index of every log, built by the first query of
        events (about one log load) and kept current: later queries cost in
        proportion to their answer. ``False``: hold nothing, and answer each
        query by reading the logs once, decoding only the events that match
        (cheaper than one log load): the choice for a one-off command.
    :param max_events: index at most this many events, the newest (in time
        order); ``None``: every event. The events the index drops are still
        answered, from the logs: a query whose answer may hold some (a page
        before the newest ``max_events``, ``after=`` one of them) reads the
        logs as with ``index=False`` for that part. Answers are
        the same as without a bound, only slower.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        index: bool = True,
        max_events: int | None = None,
    ) -> None:
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be >= 1 or None, got {max_events!r}")
        self.root = Path(root)
        self.indexed = index
        self.max_events = max_events
        self._building = False  # build_index() is building the index in another thread
        self._root = os.path.abspath(root)
        self._answered: dict[str, bytes] = {}  # the lines of the last answer, by event id
        self._lock = threading.RLock()
        self._index: EventIndex | None = None
        self._logs: dict[str, _Log] = {}
        self._rows = SessionRows(self._root)
        self._tally = UsageTally(self._root)  # token usage, read on from where it stopped
        self._asking = 0  # queries reading the logs meanwhile: the build gives way to them
        self._quiet = threading.Condition()
        self._started = 0.0  # when the build began (time.monotonic())
        self._yielded = 0.0  # how long it has waited for queries
        self._hub: ChangeHub | None = None

    def __repr__(self) -> str:
        return f"Workspace({os.fspath(self.root)!r})"

    def close(self) -> None:
        """Forget the index and close the logs it keeps open; the next query rebuilds it."""
        with self._lock:
            if self._index is not None:
                self._index.close()
            self._index = None
            self._logs = {}
        self._tally.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def build_index(self) -> None:
        """Build the index now, in the calling thread, without holding up queries.

        Until it is built, queries (from other threads) are answered by reading
        the logs, as with ``index=False``: slower on a large workspace, but at
        once, where they would otherwise wait for the whole build. ``eventbus
        serve`` calls this in a thread as it starts. Does nothing with
        ``index=False``, or if the index is built or being built.
        """
        if not self.indexed:
            return
        with self._lock:
            if self._index is not None or self._building:
                return
            self._building = True
        built: tuple[EventIndex, dict[str, _Log]] | None = None
        try:
            # Usage first (about a tenth of the build, not giving way: usage asked
            # meanwhile waits for it), then answered at once while the index is built.
            self._tally.refresh(self._log_paths(None))
            built = self._new_index()
        finally:
            with self._lock:
                self._building = False
                if built is not None:
                    if self._index is None:
                        self._index, self._logs = built
                    else:  # a query built one meanwhile
                        built[0].close()

    # --- sessions -----------------------------------------------------------------------

    def session_ids(self) -> list[str]:
        """Return the ids of the sessions (directories with a valid name), sorted."""
        return self._rows.query.list_sessions()

    def sessions(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Return one summary per session, newest first.

        Each summary holds JSON values under ``session_id``, ``status``
        (``"running"``, ``"completed"``, ``"failed"``, ``"aborted"``, or
        ``None`` if unknown), ``phase``, ``tasks_completed``, ``tasks_failed``,
        ``llm_calls``, ``prompt_tokens``, ``completion_tokens``,
        ``total_tokens``, ``cost_usd``, ``started_at`` and ``ended_at`` (ISO
        8601 or ``None``), ``duration_s``, ``event_count`` and ``error`` (why
        part of the session could not be read, else ``None``). They come from
        the session's ``run_summary`` artifact, or from its log when it has
        none. An unreadable session is listed with ``error`` set.

        :param since: only sessions started at or after this time (naive is UTC).
        :param until: only sessions started at or before this time.
        """
        start = None if since is None else as_utc(since).timestamp()
        end = None if until is None else as_utc(until).timestamp()
        found: list[tuple[float, str, dict[str, Any]]] = []
        with self._lock:
            for session_id in self.session_ids():
                made = self._rows.row(session_id)
                if made is None:
                    continue
                row, created = made
                if (start is not None or end is not None) and created is None:
                    continue
                if (start is not None and created is not None and created < start) or (
                    end is not None and created is not None and created > end
                ):
                    continue
                found.append((created if created is not None else float("-inf"), session_id, row))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [row for _, _, row in found]

    def session(self, session_id: str) -> dict[str, Any]:
        """Return the summary of one session (as :meth:`sessions`) plus ``"artifacts"``.

        ``artifacts`` lists the keys of its artifacts, sorted.

        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session.
        :raises UnsafeSymlinkError: if its directory or its ``artifacts`` directory
            leads out of the root.
        """
        self._check_session(session_id)
        with self._lock:
            made = self._rows.row(session_id)
            artifacts = self._rows.query.get_session_artifacts(session_id)
        if made is None:
            raise SessionNotFoundError(session_id, os.fspath(self.root))
        return {**made[0], "artifacts": artifacts}

    def artifact(self, session_id: str, key: str) -> bytes:
        """Return the artifact ``key`` of a session as stored: its JSON's bytes.

        :raises InvalidNameError: if ``session_id`` or ``key`` cannot be one.
        :raises SessionNotFoundError: if the workspace has no such session.
        :raises ArtifactNotFoundError: if the session has no artifact ``key``.
        :raises ArtifactTooLargeError: if it is larger than :data:`MAX_ARTIFACT_BYTES`.
        :raises UnsafeSymlinkError: if the session, its ``artifacts`` directory or
            the artifact is a symlink leading out of the root.
        """
        self._check_session(session_id)
        store = self._rows.query.store(session_id)
        found = store.get_artifact_metadata(key)
        if not found:
            raise ArtifactNotFoundError(session_id, key)
        if found["size_bytes"] > MAX_ARTIFACT_BYTES:
            raise ArtifactTooLargeError(key, found["size_bytes"], MAX_ARTIFACT_BYTES)
        data = store.artifact_bytes(key)
        if data is None:  # removed in between
            raise ArtifactNotFoundError(session_id, key)
        if len(data) > MAX_ARTIFACT_BYTES:  # grew in between
            raise ArtifactTooLargeError(key, len(data), MAX_ARTIFACT_BYTES)
        return data

    # --- events -------------------------------------------------------------------------

    def events(
        self,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> tuple[list[Event], str | None]:
        """Return the events matching ``query``, in time order (ties by id), a page at a time.

        Returns ``(events, next)``: ``next`` is the id to pass as ``after``
        for the following page, or ``None`` when this page is the last.

        :param query: the filters (``None``: every event).
        :param session_id: only this session's events (it may also be in ``query``).
        :param after: only events after the event with this id (in time order).
        :param limit: at most this many events (>= 1); ``None``: all.
        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session.
        :raises UnknownEventIdError: if no log holds an event with id ``after``.
        :raises UnsafeSymlinkError: if that session or its log leads out of the root.
        """
        if not self._use_index():
            found, next_id = self.event_lines(
                query, session_id=session_id, after=after, limit=limit
            )
            return [event for event, _ in found], next_id
        query = self._query(query, session_id)
        _check_limit(limit)
        with self._lock:
            events, lines = self._indexed(query, after, None if limit is None else limit + 1)
        self._remember_lines(lines)
        if limit is not None and len(events) > limit:
            del events[limit:]
            return events, events[-1].id
        return events, None

    def event_lines(
        self,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> tuple[list[tuple[Event, bytes]], str | None]:
        """Like :meth:`events`, with each event's line as stored (without the newline)."""
        query = self._query(query, session_id)
        _check_limit(limit)
        more = None if limit is None else limit + 1
        if self._use_index():
            with self._lock:
                events, lines = self._indexed(query, after, more)
            self._remember_lines(lines)
            found = list(zip(events, self.read_lines(events), strict=True))
        else:
            found = self._scan(query, after, first=more)
            del found[len(found) if more is None else more :]
            self._remember(found)
        if limit is not None and len(found) > limit:
            del found[limit:]
            return found, found[-1][0].id
        return found, None

    def latest(
        self, n: int, query: EventQuery | None = None, *, session_id: str | None = None
    ) -> list[Event]:
        """Return the last ``n`` events matching ``query`` in time order, oldest first.

        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session.
        """
        return [event for event, _ in self.latest_lines(n, query, session_id=session_id)]

    def latest_lines(
        self, n: int, query: EventQuery | None = None, *, session_id: str | None = None
    ) -> list[tuple[Event, bytes]]:
        """Like :meth:`latest`, with each event's line as stored (without the newline)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        query = self._query(query, session_id)
        if self._use_index():
            with self._lock:
                events, lines = self._indexed_latest(n, query)
            self._remember_lines(lines)
            found = list(zip(events, self.read_lines(events), strict=True))
        else:
            found = self._scan(query, None, last=n)[-n:] if n else []
            self._remember(found)
        return found

    def read_lines(self, events: Sequence[Event]) -> list[bytes]:
        """Return each event's line exactly as its log stores it (without the newline).

        The events must have come from this workspace (:meth:`events`,
        :meth:`latest`): printing the lines prints the logs' bytes. With
        ``index=False`` the lines of the last answer (up to 10,000) are at
        hand; others need the index, which is then built.

        :raises UnknownEventIdError: for an event no log holds.
        """
        answered = self._answered
        if answered and all(event.id in answered for event in events):
            return [answered[event.id] for event in events]
        if not self._use_index():
            return self._scan_lines(events)
        with self._lock:
            index = self._current(refresh=False)
            if not index.evicted:
                return read_places(self._places(index, events), self._root)
            lines: list[bytes | None] = [None] * len(events)
            places, held = [], []
            for i, event in enumerate(events):
                line = answered.get(event.id)
                if line is not None:
                    lines[i] = line
                    continue
                try:
                    places.append(index.locate(event.id))
                except UnknownEventIdError:  # dropped by the bound: read below
                    continue
                held.append(i)
        for i, line in zip(held, read_places(places, self._root), strict=True):
            lines[i] = line
        missing = [events[i] for i, line in enumerate(lines) if line is None]
        found = iter(self._scan_lines(missing))
        return [next(found) if line is None else line for line in lines]

    # --- event types ------------------------------------------------------------------

    def event_types(self) -> list[str]:
        """Return the event types the logs hold, sorted.

        With the index this costs next to nothing; with ``index=False`` it
        reads the logs once, decoding only each line's type.
        """
        if self._use_index():
            with self._lock:
                index = self._current()
                if not index.evicted:
                    return index.event_types()
        return sorted(types_in_logs(self._log_paths(None), self._root))

    def check_types(self, types: Iterable[str] | None, *, seen: Iterable[str] = ()) -> None:
        """Refuse event types that neither this version nor any log of the workspace knows.

        A value of :class:`~eventbus.EventType` always passes; another type
        passes if a log holds an event of that type (written by a newer
        producer). A query for a misspelt type would otherwise answer nothing,
        successfully. Only types outside :class:`~eventbus.EventType` and
        ``seen`` make the logs be read (see :meth:`event_types`).

        :param types: the types asked for (``None``: every type, which passes).
        :param seen: types known to be in the logs, e.g. those of an answer
            just read: check after the query, and a type it found costs nothing.
        :raises UnknownEventTypeError: naming the unknown types and listing the known ones.
        """
        if types is None:
            return
        rest = {str(kind) for kind in types} - _BUILTIN_TYPES - {str(kind) for kind in seen}
        if not rest:
            return
        present = set(self.event_types())
        unknown = rest - present
        if unknown:
            raise UnknownEventTypeError(sorted(unknown), sorted(_BUILTIN_TYPES | present))

    # --- usage --------------------------------------------------------------------------

    def usage(self, by: str = "model", *, session_id: str | None = None) -> dict[str, Any]:
        """Return LLM calls, tokens and cost per value of ``by``, and in total.

        Only ``llm_response_received`` events count (see
        :class:`~sinks.index.TokenUsage`). The result is::

            {"by": "model",
             "rows": [{"key": "gpt-4o", "calls": 3, "prompt_tokens": 1200,
                       "cached_tokens": 800, "completion_tokens": 300,
                       "total_tokens": 1500, "cost_usd": 0.02,
                       "cost_source": "producer"}, ...],
             "total": {"calls": ..., "prompt_tokens": ..., "cached_tokens": ...,
                       "completion_tokens": ..., "total_tokens": ..., "cost_usd": ...,
                       "cost_source": ...}}

        ``cached_tokens`` is the part of ``prompt_tokens`` the provider served
        from its prompt cache (0 when responses do not say).

        Rows come most expensive first (then most tokens, then by key);
        responses without a value of ``by`` are under the key ``None``. With
        ``by="day"`` there is a row per UTC date of the responses' timestamps
        (key ``"YYYY-MM-DD"``), in date order.

        **Cost.** A response's ``cost_usd`` (the producer's) always wins. A
        response without one is priced from the ``genai-prices`` table (the
        ``web`` extra; imported only then) by its model, tokens and date;
        a model the table does not know (the demo's ``sim-*`` models) gets
        no computed cost. Every row and the total say where their cost
        came from in ``cost_source``: ``"producer"`` (only given costs),
        ``"genai-prices"`` (only computed ones), ``"mixed"``, or ``None``
        (no cost known: without ``genai-prices``, never ``"genai-prices"``).

        :param by: ``"model"``, ``"agent_role"``, ``"task_id"``, ``"session_id"``,
            ``"phase"`` or ``"day"``, or a short name of :data:`USAGE_ALIASES` (``"role"``,
            ``"task"``, ``"session"``); the answer's ``"by"`` is the field's name.
        :param session_id: count only this session's responses.
        :raises ValueError: if ``by`` is not one of those.
        :raises SessionNotFoundError: if the workspace has no such session.
        """
        by = USAGE_ALIASES.get(by, by)
        if by not in USAGE_KEYS:
            names = ", ".join([*USAGE_KEYS, *USAGE_ALIASES])
            raise ValueError(f"cannot group usage by {by!r}: use one of {names}")
        query = self._query(EventQuery(event_type=_RESPONSE), session_id)
        # (not a query the build gives way to: while the build tallies, this waits for it)
        return self._tally.table(self._log_paths(query.session_id), by, query.session_id)

    # --- control ------------------------------------------------------------------------

    def pending(self, session_id: str) -> list[dict[str, Any]]:
        """Return what session ``session_id`` waits for from a person, oldest first.

        Each item is ``{"kind": "clarification" | "approval", "id", "task_id",
        "role", "text"}``: a ``clarification_requested`` without its
        ``clarification_answered`` (``id`` is its ``metadata.question_id``,
        ``text`` the question), or an ``approval_requested`` without the gate
        event deciding it (``id`` is its ``metadata.request_id``, ``text``
        what is to be approved). A session that has ended waits for nothing: ``[]``.

        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session (or it
            has no log yet).
        """
        events = self._session_events(session_id, _PENDING_QUERY)
        waiting: dict[tuple[str, object], dict[str, Any]] = {}
        for event in events:
            kind = event.event_type
            metadata = event.metadata
            if kind in _ENDS:
                return []
            if kind is EventType.CLARIFICATION_ANSWERED:
                waiting.pop(("clarification", metadata.get("question_id")), None)
            elif kind in _GATES:
                waiting.pop(("approval", metadata.get("request_id")), None)
            else:
                asked = kind is EventType.CLARIFICATION_REQUESTED
                item_kind = "clarification" if asked else "approval"
                key = metadata.get("question_id" if asked else "request_id")
                if isinstance(key, str):
                    waiting[item_kind, key] = {
                        "kind": item_kind,
                        "id": key,
                        "task_id": event.task_id,
                        "role": event.agent_role,
                        "text": str(
                            metadata.get("question" if asked else "subject", event.message)
                        ),
                    }
        return list(waiting.values())

    def prune(
        self,
        *,
        older_than: timedelta | None = None,
        max_bytes: int | None = None,
        stale: timedelta = DEFAULT_STALE,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PruneReport:
        """Remove whole ended sessions, oldest end first: :func:`sinks.workspace.prune`.

        The index is rebuilt at the next query (unless nothing was removed).
        """
        report = prune(
            self._root,
            older_than=older_than,
            max_bytes=max_bytes,
            stale=stale,
            dry_run=dry_run,
            now=now,
        )
        if report.removed and not dry_run:
            self.close()
        return report

    def session_ended(self, session_id: str) -> bool:
        """Whether session ``session_id`` has ended (its log holds ``session_completed``,
        ``session_failed`` or ``session_aborted``): it takes no more commands.

        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session (or no log yet).
        """
        return bool(self._session_events(session_id, EventQuery(event_type=list(_ENDS))))

    def command_status(self, session_id: str, command_id: str) -> dict[str, Any]:
        """Return what became of command ``command_id`` sent to session ``session_id``.

        The answer is ``{"command_id", "kind", "status", "reason"}``: ``status``
        is ``"applied"`` or ``"rejected"`` (with the ``reason``) once the log
        holds the coordinator's ``control_applied`` or ``control_rejected`` for
        it (the first, if the command was sent more than once), else
        ``"queued"`` while it waits in the session's inbox (``reason`` ``None``).

        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session (or no log yet).
        :raises UnknownCommandError: if neither the inbox nor the log holds the command.
        """
        for event in self._session_events(session_id, EventQuery(event_type=list(_OUTCOMES))):
            metadata = event.metadata
            if metadata.get("command_id") == command_id:
                applied = event.event_type is EventType.CONTROL_APPLIED
                return {
                    "command_id": command_id,
                    "kind": metadata.get("kind"),
                    "status": "applied" if applied else "rejected",
                    "reason": metadata.get("reason"),
                }
        for command in self._inbox(session_id):
            if command.get("command_id") == command_id:
                return {
                    "command_id": command_id,
                    "kind": command.get("kind"),
                    "status": "queued",
                    "reason": None,
                }
        raise UnknownCommandError(session_id, command_id)

    def _session_events(self, session_id: str, query: EventQuery) -> list[Event]:
        """The events of one session (which must have a log) matching ``query``, in time order."""
        self._check_session(session_id, log=True)
        if not os.path.isfile(os.path.join(self._root, session_id, LOG_FILE_NAME)):
            raise SessionNotFoundError(session_id, os.fspath(self.root))
        events, _ = self.events(query, session_id=session_id)
        return events

    def _inbox(self, session_id: str) -> list[dict[str, Any]]:
        """The commands of a session's inbox (complete lines that decode to an object)."""
        path = resolve_inside(self._root, os.path.join(self._root, session_id, CONTROL_FILE_NAME))
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return []
        found = []
        for line in data.split(b"\n")[:-1]:
            try:
                found.append(_inbox_line.decode(line))
            except msgspec.DecodeError:  # a torn or foreign line: the coordinator skips it too
                continue
        return found

    # --- following ----------------------------------------------------------------------

    async def follow(
        self,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        after: str | None = None,
        from_start: bool = True,
        stop_event: anyio.Event | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Yield the stored events, then each new event as it is written, forever.

        Like :meth:`follow_lines`, yielding the events only.
        """
        async with aclosing(
            self.follow_lines(
                query,
                session_id=session_id,
                after=after,
                from_start=from_start,
                stop_event=stop_event,
            )
        ) as lines:
            async for event, _ in lines:
                yield event

    async def follow_lines(
        self,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        after: str | None = None,
        from_start: bool = True,
        stop_event: anyio.Event | None = None,
        wait_for_session: bool = False,
    ) -> AsyncGenerator[tuple[Event, bytes], None]:
        """Yield ``(event, line)`` for the stored events, then for each new one as it is written.

        ``line`` is the event's line as stored, without the newline. First
        the stored events matching ``query`` in time order: all of them, or
        those after the event with id ``after``, or none if ``from_start``
        is false. Then every new matching event of every session, including
        sessions created later, in the order they are found (each wake-up's
        events sorted by time), usually within a few tens of milliseconds of
        the write. Nothing is missed or yielded twice across the switch from
        stored to new events. Only complete lines are read: a line written in
        two parts comes out once, whole. Needs ``watchfiles`` (the ``web`` extra).

        Every follower of one :class:`Workspace` shares one file watcher (one
        inotify instance, however many follow), which runs while any follows;
        a follower waiting for a change costs nothing. When the kernel
        refuses a watcher, the logs are polled every 100 ms instead (a
        warning on the ``sinks.workspace`` logger says so).

        Runs until cancelled, until ``stop_event`` is set, or until the
        caller stops iterating (``async with contextlib.aclosing(...)``
        detaches it at once).

        :param wait_for_session: if the session ``session_id`` does not exist
            yet, wait for it and yield its events once it starts (instead of
            raising :class:`SessionNotFoundError`).
        :raises InvalidNameError: if ``session_id`` cannot be a session id.
        :raises SessionNotFoundError: if the workspace has no such session.
        :raises UnknownEventIdError: if no log holds an event with id ``after``.
        :raises UnsafeSymlinkError: if that session or its log leads out of the root.
        :raises FileNotFoundError: if the workspace directory does not exist.
        """
        batches = self.follow_batches(
            query,
            session_id=session_id,
            after=after,
            from_start=from_start,
            stop_event=stop_event,
            wait_for_session=wait_for_session,
        )
        async with aclosing(batches):
            async for batch in batches:
                for item in batch:
                    yield item

    async def follow_batches(
        self,
        query: EventQuery | None = None,
        *,
        session_id: str | None = None,
        after: str | None = None,
        from_start: bool = True,
        stop_event: anyio.Event | None = None,
        wait_for_session: bool = False,
    ) -> AsyncGenerator[list[tuple[Event, bytes]], None]:
        """Like :meth:`follow_lines`, a list at a time (never empty).

        A page of stored events (up to 1000), or the new events one change
        of the logs brought: what a caller can write at once (a stream
        sends each list as one chunk). Raises as :meth:`follow_lines`.
        """
        query = self._query(query, session_id, must_exist=not wait_for_session)
        check_watchfiles()
        if not await anyio.Path(self._root).is_dir():
            raise FileNotFoundError(f"no workspace directory at {os.fspath(self.root)!r}")
        if not self._use_index() and (from_start or after is not None):
            ends = await anyio.to_thread.run_sync(self._complete_ends, query.session_id)
            stored = await anyio.to_thread.run_sync(self._scan, query, after, ends)
            for start in range(0, len(stored), _PAGE):
                yield stored[start : start + _PAGE]
            del stored
        elif from_start or after is not None:
            ends = await anyio.to_thread.run_sync(self._snapshot)
            cursor: str | Event | None = after
            while True:
                page, last = await anyio.to_thread.run_sync(self._replay_page, query, cursor, ends)
                if page:
                    yield page
                if last is None:
                    break
                cursor = last
        else:
            ends = await anyio.to_thread.run_sync(self._complete_ends, query.session_id)
        hub = self._change_hub()
        tail = Tail(self._root, ends, query, hub.reads)
        async with hub.bell() as bell:
            # What was written between the snapshot and the watcher's start.
            if found := await anyio.to_thread.run_sync(tail.read, None):
                yield found
            while (changed := await bell.changes(stop_event)) is not None:
                if found := await anyio.to_thread.run_sync(tail.read, changed):
                    yield found

    # --- internals ----------------------------------------------------------------------

    def _change_hub(self) -> ChangeHub:
        """The workspace's one file watcher, shared by every follower."""
        with self._lock:
            if self._hub is None:
                self._hub = ChangeHub(self._root)
            return self._hub

    def _remember(self, found: list[tuple[Event, bytes]]) -> None:
        """Keep the lines of a scan's answer for :meth:`read_lines` (if it is not huge)."""
        self._answered = (
            {event.id: line for event, line in found} if len(found) <= _REMEMBERED else {}
        )

    def _log_paths(self, session_id: str | None) -> list[str]:
        if session_id is not None:
            return [os.path.join(self._root, session_id, LOG_FILE_NAME)]
        return [path for _, path, _, _ in self._log_files()]

    def _scan(
        self,
        query: EventQuery,
        after: str | Event | None,
        ends: dict[str, tuple[tuple[int, int], int]] | None = None,
        *,
        first: int | None = None,
        last: int | None = None,
    ) -> list[tuple[Event, bytes]]:
        """Every event matching ``query`` (after ``after``) in time order, read from the logs.

        With ``first`` (or ``last``), at least the first (last) that many of
        them, holding no more than a few times that many at once; only the
        events returned are decoded whole.
        """
        with self._asked():
            return self._scan_logs(query, after, ends, first=first, last=last)

    def _scan_logs(
        self,
        query: EventQuery,
        after: str | Event | None,
        ends: dict[str, tuple[tuple[int, int], int]] | None,
        *,
        first: int | None,
        last: int | None,
    ) -> list[tuple[Event, bytes]]:
        paths = self._log_paths(query.session_id) if ends is None else sorted(ends)
        low: Key | None = None
        if isinstance(after, Event):
            low = key_of(after)
        elif after is not None:
            low = find_key(paths, self._root, after)
            if low is None:
                raise UnknownEventIdError(after)
        if first is not None or last is not None:
            page = self._scan_page(query, paths, low, ends, first, last)
            if page is not None:
                return page
        found: list[tuple[Event, bytes]] = []
        for path in paths:
            stop = None if ends is None else ends[path][1]
            for chunk in scan_log(path, self._root, query, stop=stop):
                if low is None:
                    found += chunk
                else:
                    found += [item for item in chunk if key_of(item[0]) > low]
                if last is not None and len(found) > 4 * last + 1024:
                    found.sort(key=_item_key)
                    del found[:-last]
        found.sort(key=_item_key)
        return found

    def _scan_page(
        self,
        query: EventQuery,
        paths: list[str],
        low: Key | None,
        ends: dict[str, tuple[tuple[int, int], int]] | None,
        first: int | None,
        last: int | None,
    ) -> list[tuple[Event, bytes]] | None:
        """At least the first ``first`` (or last ``last``) events of :meth:`_scan`, decoding
        only a few times that many.

        ``None`` if one of them turns out not to be an event (the caller then
        decodes every match, which passes such lines over).
        """
        count = cast(int, first if first is not None else last)
        found: list[Keyed] = []
        for path in paths:
            stop = None if ends is None else ends[path][1]
            for chunk in scan_keys(path, self._root, query, stop=stop):
                if low is None:
                    found += chunk
                else:
                    found += [item for item in chunk if (item[0], item[1]) > low]
                if len(found) > 4 * count + 1024:
                    found.sort(key=_keyed_key)
                    if first is not None:
                        del found[count:]
                    else:
                        del found[: len(found) - count]
        found.sort(key=_keyed_key)
        return decode_keyed(found)

    def _check_session(self, session_id: str, *, log: bool = False) -> None:
        """Refuse a bad id, a missing session, and one (or, with ``log``, a log) leading out."""
        validate_session_id(session_id)
        directory = os.path.join(self._root, session_id)
        resolve_inside(self._root, os.path.join(directory, LOG_FILE_NAME) if log else directory)
        if not os.path.isdir(directory):
            raise SessionNotFoundError(session_id, os.fspath(self.root))

    def _query(
        self, query: EventQuery | None, session_id: str | None, *, must_exist: bool = True
    ) -> EventQuery:
        """``query`` restricted to ``session_id``, which is checked (a valid name of a
        session that exists, or with ``must_exist=False`` only a valid name)."""
        if query is None:
            query = EventQuery()
        elif not isinstance(query, EventQuery):
            raise TypeError(f"query must be an EventQuery or None, got {type(query).__name__}")
        if session_id is None:
            session_id = query.session_id
        elif query.session_id not in (None, session_id):
            raise ValueError(
                f"session_id {session_id!r} contradicts the query's {query.session_id!r}: "
                "give one of them"
            )
        if session_id is None:
            return query
        if must_exist:
            self._check_session(session_id, log=True)
        else:
            validate_session_id(session_id)
        return EventQuery(
            event_type=query.event_type,
            session_id=session_id,
            phase=query.phase,
            task_id=query.task_id,
            agent_role=query.agent_role,
            model=query.model,
            start_time=query.start_time,
            end_time=query.end_time,
        )

    def _current(self, *, refresh: bool = True) -> EventIndex:
        """The index, built or brought up to date with the logs (the lock is held)."""
        if self._index is None or (refresh and not self._refresh()):
            self._build()
        assert self._index is not None
        return self._index

    def _log_files(self) -> list[tuple[str, str, tuple[int, int], int]]:
        """(session id, path, identity, size) of every session's log (all its segments)."""
        found = []
        for session_id in self.session_ids():
            path = os.path.join(self._root, session_id, LOG_FILE_NAME)
            try:
                resolve_inside(self._root, path)
            except UnsafeSymlinkError as exc:  # never read: said once
                report_once(logger, f"skipped the log of session {session_id!r}: {exc}")
                continue
            status = log_stat(path)
            if status is not None:
                found.append((session_id, path, *status))
        return found

    def _build(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        self._index, self._logs = self._new_index()

    def _new_index(self) -> tuple[EventIndex, dict[str, _Log]]:
        """An index of every log, and where it read each up to (no lock needed)."""
        index = EventIndex(low_memory=True, max_events=self.max_events)
        logs = {}
        self._yielded = 0.0
        self._started = time.monotonic()
        for session_id, path, ident, _ in self._log_files():
            log = logs[session_id] = _Log(path, ident)
            fd = open_log(path, self._root)
            if fd is None:
                continue
            try:
                for growth in iter_growth(fd, 0):
                    self._give_way()
                    if growth.events:
                        index.add_located(
                            growth.events, path, growth.offsets, growth.lengths, bulk=True
                        )
                    log.end = growth.end
            finally:
                fd.close()
        index.settle()
        return index, logs

    @contextmanager
    def _asked(self) -> Iterator[None]:
        """Mark a query reading the logs: a build in another thread waits while it runs."""
        with self._quiet:
            self._asking += 1
        try:
            yield
        finally:
            with self._quiet:
                self._asking -= 1
                if not self._asking:
                    self._quiet.notify_all()

    def _give_way(self) -> None:
        """Between chunks of the build: wait while queries read the logs, up to a point.

        They share the interpreter with the build: waiting, it leaves them all
        of it, so a query answers about as fast as with no build going on.
        The build waits at most ``_GIVE_WAY`` s a chunk, and never longer in
        all than it has worked (plus ``_GIVE_WAY``): however many queries
        come, it ends in about twice the time it takes alone, at most.
        """
        with self._quiet:
            if not self._asking:
                return
            now = time.monotonic()
            worked = now - self._started - self._yielded
            allowed = min(_GIVE_WAY, worked + _GIVE_WAY - self._yielded)
            if allowed > 0:
                self._quiet.wait_for(lambda: not self._asking, allowed)
                self._yielded += time.monotonic() - now

    def _use_index(self) -> bool:
        """Whether to answer from the index (else from the logs, index-free)."""
        return self.indexed and not self._building

    def _indexed(
        self,
        query: EventQuery,
        after: str | Event | None,
        limit: int | None,
        ends: dict[str, tuple[tuple[int, int], int]] | None = None,
        *,
        index: EventIndex | None = None,
    ) -> tuple[list[Event], dict[str, bytes]]:
        """The events matching ``query`` after ``after``, up to ``limit``, in order (lock held).

        From the index; with ``max_events``, the events it dropped (all older
        than every event it holds) are read from the logs (within ``ends``, if
        given): their lines come back too, by event id.
        """
        if index is None:
            index = self._current()
        if not index.evicted:
            return index.query(query, after=after, limit=limit), {}
        if after is not None:
            try:  # an event held: every event after it is held too
                return index.query(query, after=after, limit=limit), {}
            except UnknownEventIdError:
                pass  # dropped, or in no log: the scan says which
        oldest = index.query(EventQuery(), limit=1)
        if not oldest:
            return [], {}
        horizon = key_of(oldest[0])
        if after is None and query.start_time is not None and query.start_time > horizon[0]:
            return index.query(query, limit=limit), {}
        dropped = self._dropped(query, after, horizon, ends)
        if limit is not None and len(dropped) >= limit:
            del dropped[limit:]
        events = [event for event, _ in dropped]
        lines = {event.id: line for event, line in dropped}
        if limit is None or len(events) < limit:
            events += index.query(query, limit=None if limit is None else limit - len(events))
        return events, lines

    def _dropped(
        self,
        query: EventQuery,
        after: str | Event | None,
        horizon: Key,
        ends: dict[str, tuple[tuple[int, int], int]] | None = None,
        *,
        last: int | None = None,
    ) -> list[tuple[Event, bytes]]:
        """The events matching ``query`` older than ``horizon`` (the index dropped them), from
        the logs, each (timestamp, id) once, as the index would hold them."""
        if query.start_time is not None and query.start_time > horizon[0]:
            return []
        end_time = horizon[0] if query.end_time is None else min(query.end_time, horizon[0])
        found = self._scan(_until(query, end_time), after, ends, last=last)
        unique: list[tuple[Event, bytes]] = []
        previous: Key | None = None
        for item in found:
            key = key_of(item[0])
            if key < horizon and key != previous:
                unique.append(item)
            previous = key
        return unique

    def _indexed_latest(self, n: int, query: EventQuery) -> tuple[list[Event], dict[str, bytes]]:
        """The last ``n`` events matching ``query`` (lock held), as :meth:`_indexed` finds them."""
        index = self._current()
        events = index.get_latest(n, query)
        if len(events) == n or not index.evicted:
            return events, {}
        oldest = index.query(EventQuery(), limit=1)
        if not oldest:
            return events, {}
        dropped = self._dropped(query, None, key_of(oldest[0]), last=n)[len(events) - n :]
        return [event for event, _ in dropped] + events, {e.id: line for e, line in dropped}

    def _remember_lines(self, lines: dict[str, bytes]) -> None:
        """Keep the lines of events an answer read from the logs, for :meth:`read_lines`."""
        if lines:
            self._answered = lines if len(lines) <= _REMEMBERED else {}

    def _scan_lines(self, events: Sequence[Event]) -> list[bytes]:
        """The lines of ``events`` read from their sessions' logs (no index needed)."""
        if not events:
            return []
        found: dict[Key, bytes] = {}
        by_session: dict[str, list[Event]] = {}
        for event in events:
            by_session.setdefault(event.session_id, []).append(event)
        for session_id, members in sorted(by_session.items()):
            window = EventQuery(
                session_id=session_id,
                start_time=min(event.timestamp for event in members),
                end_time=max(event.timestamp for event in members),
            )
            path = os.path.join(self._root, session_id, LOG_FILE_NAME)
            wanted = set(map(key_of, members))
            for chunk in scan_log(path, self._root, window):
                for event, line in chunk:
                    key = key_of(event)
                    if key in wanted:
                        found.setdefault(key, line)
        lines = []
        for event in events:
            stored = found.get(key_of(event))
            if stored is None:
                raise UnknownEventIdError(event.id)
            lines.append(stored)
        return lines

    def _refresh(self) -> bool:
        """Read what the logs gained; ``False`` if one was replaced or removed (rebuild)."""
        index = self._index
        assert index is not None
        seen = set()
        for session_id, path, ident, size in self._log_files():
            log = self._logs.get(session_id)
            if log is None:
                log = self._logs[session_id] = _Log(path, ident)
            elif log.ident != ident or size < log.end:
                return False
            seen.add(session_id)
            if size > log.end:
                self._read(index, log, bulk=False)
        return len(seen) == len(self._logs)

    def _read(self, index: EventIndex, log: _Log, *, bulk: bool) -> None:
        end = index.add_log(log.path, log.end, root=self._root, bulk=bulk)
        if end is not None:
            log.end = end

    def _places(self, index: EventIndex, events: Sequence[Event]) -> list[tuple[str, int, int]]:
        return [index.locate(event.id) for event in events]

    def _snapshot(self) -> dict[str, tuple[tuple[int, int], int]]:
        """Bring the index up to date; return where each log's indexed lines end."""
        with self._lock:
            self._current()
            return {log.path: (log.ident, log.end) for log in self._logs.values()}

    def _replay_page(
        self,
        query: EventQuery,
        cursor: str | Event | None,
        ends: dict[str, tuple[tuple[int, int], int]],
    ) -> tuple[list[tuple[Event, bytes]], Event | None]:
        """One page of stored events after ``cursor``, only those within the snapshot."""
        with self._lock:
            index = self._current(refresh=False)
            page, scanned = self._indexed(query, cursor, _PAGE, ends, index=index)
            places = self._places(index, [event for event in page if event.id not in scanned])
        lines = iter(read_places(places, self._root))
        at = iter(places)
        kept = []
        for event in page:
            line = scanned.get(event.id)
            if line is not None:  # read from the logs within the snapshot
                kept.append((event, line))
                continue
            line = next(lines)
            path, offset, length = next(at)
            end = ends.get(path)
            if end is not None and offset + length <= end[1]:
                kept.append((event, line))
        return kept, page[-1] if len(page) == _PAGE else None

    def _complete_ends(self, session_id: str | None) -> dict[str, tuple[tuple[int, int], int]]:
        """Where each log's last complete line ends now."""
        ends = {}
        for found_id, path, _, _ in self._log_files():
            if session_id is not None and found_id != session_id:
                continue
            fd = open_log(path, self._root)
            if fd is None:
                continue
            try:
                ends[path] = (fd.ident, complete_end(fd, fd.size()))
            finally:
                fd.close()
        return ends


def _until(query: EventQuery, end_time: datetime) -> EventQuery:
    """``query`` with ``end_time`` instead of its own."""
    return EventQuery(
        event_type=query.event_type,
        session_id=query.session_id,
        phase=query.phase,
        task_id=query.task_id,
        agent_role=query.agent_role,
        model=query.model,
        start_time=query.start_time,
        end_time=end_time,
    )


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")


_keyed_key = itemgetter(0, 1)


def _item_key(item: tuple[Event, bytes]) -> Key:
    return item[0].timestamp, item[0].id
