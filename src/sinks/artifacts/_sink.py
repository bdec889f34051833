"""``ArtifactSink``: the bus sink that saves announced artifacts and each ``run_summary``."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio.to_thread
import msgspec

from eventbus import Event, EventBusError, EventType, InvalidNameError, PartialWriteError

from ._files import check_key, kept_threads
from ._query import SessionArtifactQuery
from ._store import ArtifactStore
from ._summary import RUN_SUMMARY_KEY, Tally, summary_decoder

# the public module's name: the one users configure logging for
logger = logging.getLogger("sinks.artifacts")

_ARTIFACT_TYPES = frozenset({EventType.ARTIFACT_CREATED, EventType.ARTIFACT_UPDATED})
_MAX_SESSION_THREADS = 8


@dataclass
class _Session:
    """One session's share of a batch, until it is saved."""

    store: ArtifactStore
    before: Tally
    tally: Tally
    ids: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    skipped_artifacts: int = 0


@dataclass
class _BatchResult:
    """What a batch changed; the sink applies it when ``write`` ends, however it ends.

    Filled by the worker thread as each session is saved, so even an
    unexpected error or a cancellation keeps the record of what is on disk.
    """

    saved_tallies: dict[str, Tally] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    before_failed: dict[str, Tally] = field(default_factory=dict)
    counted_ids: set[str] = field(default_factory=set)
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
    ``durable=False``).

    One bad session does not stop the others: a session whose files cannot
    be read or written (its directory unwritable, a FIFO or a directory in
    the place of an artifact, a symlink leading out of the root, a full
    disk) fails alone. ``write`` saves every other session of the batch,
    then raises :class:`eventbus.PartialWriteError` mapping each failed
    session to its error (every session, when all failed); the session is
    kept in :attr:`failed_sessions` until a later write of it succeeds.

    Retries count nothing twice. When ``write`` is given the batch it was
    last given (the bus's retry: same length, same first and last event
    ids), it skips the events it already counted, those of every session it
    saved, and counts the failed sessions' events once, from their totals
    before the batch.

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
        self._tallies: OrderedDict[str, Tally] = OrderedDict()
        self._failed: dict[str, BaseException] = {}
        # Of the last write: its batch's key (length, first id, last id), the ids
        # of the events counted (saved or skipped), and the totals from before
        # it of the sessions that failed.
        self._last_batch: tuple[int, str, str] | None = None
        self._counted_ids: frozenset[str] = frozenset()
        self._before_failed: dict[str, Tally] = {}
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

    @property
    def failed_sessions(self) -> Mapping[str, BaseException]:
        """The sessions whose last write failed, each with its error (a read-only view)."""
        return MappingProxyType(self._failed)

    async def write(self, events: Sequence[Event]) -> None:
        """Save the batch's artifacts and each touched session's ``run_summary``.

        Writes run one at a time (the bus never overlaps them; a caller
        writing from several tasks waits its turn).

        :raises PartialWriteError: if some sessions could not be saved; the
            others were
        """
        if not events:
            return
        async with self._lock:
            key = (len(events), events[0].id, events[-1].id)
            if key != self._last_batch:  # not a retry: nothing of it was counted
                self._last_batch = key
                self._counted_ids = frozenset()
                self._before_failed = {}
            result = _BatchResult()
            try:
                await anyio.to_thread.run_sync(
                    self._write_batch, events, result, abandon_on_cancel=True
                )
            except anyio.get_cancelled_exc_class():
                raise  # abandoned (the bus's close_timeout): the thread may still fill result
            except BaseException:
                self._commit(result)
                raise
            self._commit(result)
        if result.failed:
            raise PartialWriteError(result.failed)

    def _commit(self, result: _BatchResult) -> None:
        for session_id, tally in result.saved_tallies.items():
            self._failed.pop(session_id, None)
            if tally.status == "running":
                self._tallies[session_id] = tally
                self._tallies.move_to_end(session_id)
            else:
                self._tallies.pop(session_id, None)
        while len(self._tallies) > self.max_cached_sessions:
            self._tallies.popitem(last=False)
        self._failed.update(result.failed)
        self._counted_ids = frozenset(result.counted_ids)  # includes those counted before
        self._before_failed = result.before_failed
        self._saved += result.saved
        self._skipped_artifacts += result.skipped_artifacts
        self._skipped_events += result.skipped_events

    async def aclose(self) -> None:
        """Forget the cached totals; everything was already saved by ``write``."""
        self._tallies.clear()

    def _write_batch(self, events: Sequence[Event], result: _BatchResult) -> None:
        """Runs in a worker thread; records in ``result`` what it saved and what failed."""
        counted_before = self._counted_ids
        sessions: dict[str, _Session] = {}
        rejected: set[str] = set()
        for event in events:
            if event.id in counted_before:  # a retry: counted by the previous write
                result.counted_ids.add(event.id)
                continue
            session_id = event.session_id
            session = sessions.get(session_id)
            if session is None:
                if session_id in rejected:
                    result.skipped_events += 1
                    result.counted_ids.add(event.id)
                    continue
                if session_id in result.failed:
                    continue
                try:
                    store = self._query.store(session_id, durable=self.durable)
                except (InvalidNameError, TypeError) as exc:
                    rejected.add(session_id)
                    result.skipped_events += 1
                    result.counted_ids.add(event.id)
                    logger.warning(
                        "artifact sink skipped the events of a session (first: %s): %s",
                        event.id,
                        exc,
                    )
                    continue
                try:
                    before = self._tally_before(session_id, store)
                except (OSError, EventBusError) as exc:
                    result.failed[session_id] = exc
                    continue
                session = sessions[session_id] = _Session(store, before, before.copy())
            session.ids.append(event.id)
            session.tally.apply(event)
            if event.event_type in _ARTIFACT_TYPES and "content" in event.metadata:
                key = event.metadata.get("key")
                problem = _artifact_key_problem(key)
                if problem is not None:
                    session.skipped_artifacts += 1
                    logger.warning(
                        "artifact sink skipped the content of event %s (session %r): %s",
                        event.id,
                        session_id,
                        problem,
                    )
                    continue
                assert isinstance(key, str)
                session.artifacts[key] = event.metadata["content"]
        saved = _save_sessions(list(sessions.values()))
        for (session_id, session), error in zip(sessions.items(), saved, strict=True):
            if error is not None:
                result.failed[session_id] = error
                result.before_failed[session_id] = session.before
                logger.warning("artifact sink could not save session %r: %s", session_id, error)
                continue
            result.saved_tallies[session_id] = session.tally
            result.counted_ids.update(session.ids)
            result.saved += len(session.artifacts)
            result.skipped_artifacts += session.skipped_artifacts

    def _tally_before(self, session_id: str, store: ArtifactStore) -> Tally:
        """The session's totals before this batch: as the failed last try left them, or current."""
        before = self._before_failed.get(session_id)
        return before.copy() if before is not None else self._tally_for(session_id, store)

    def _tally_for(self, session_id: str, store: ArtifactStore) -> Tally:
        """Return a copy of the session's totals, from the cache or resumed from disk."""
        cached = self._tallies.get(session_id)
        if cached is not None:
            return cached.copy()
        data = store._read_bytes(RUN_SUMMARY_KEY)
        if data is None:
            return Tally(session_id)
        try:
            summary = summary_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            logger.warning(
                "artifact sink cannot resume session %r from its run_summary (%s); "
                "counting from scratch",
                session_id,
                exc,
            )
            return Tally(session_id)
        summary.session_id = session_id
        return Tally.resume(summary)

    def __repr__(self) -> str:
        return f"ArtifactSink({os.fspath(self.workspace_root)!r})"


def _save_one(session: _Session) -> OSError | EventBusError | None:
    try:
        session.store._save_all({**session.artifacts, RUN_SUMMARY_KEY: session.tally.summary()})
    except (OSError, EventBusError) as exc:
        return exc
    return None


def _save_sessions(sessions: list[_Session]) -> list[OSError | EventBusError | None]:
    """Save each session's artifacts and summary; each one's error, or None, in order.

    The sessions are saved at once from a few threads (each in its own
    directory), so that their fsyncs go to the file system together.
    """
    if len(sessions) < 2:
        return [_save_one(session) for session in sessions]
    return list(_session_threads().map(_save_one, sessions))


def _session_threads() -> ThreadPoolExecutor:
    """The threads that save a batch's sessions together."""
    return kept_threads("artifact-sessions", _MAX_SESSION_THREADS)


def _artifact_key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"metadata['key'] must be a str, got {type(key).__name__}"
    if key == RUN_SUMMARY_KEY:
        return "the key 'run_summary' is reserved for the summary the sink keeps"
    try:
        check_key(key)
    except InvalidNameError as exc:
        return str(exc)
    return None
