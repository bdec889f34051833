"""``ArtifactSink``: the bus sink that saves announced artifacts and each ``run_summary``."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec

from eventbus import Event, EventType, InvalidNameError

from ._artifact_files import check_key, read_bytes
from ._artifact_query import SessionArtifactQuery
from ._artifact_store import ArtifactStore
from ._artifact_summary import RUN_SUMMARY_KEY, Tally, summary_decoder

# the public module's name: the one users configure logging for
logger = logging.getLogger("sinks.artifacts")

_ARTIFACT_TYPES = frozenset({EventType.ARTIFACT_CREATED, EventType.ARTIFACT_UPDATED})


@dataclass
class _BatchResult:
    """What a batch changed; the sink applies it once the batch is on disk."""

    tallies: dict[str, Tally] = field(default_factory=dict)
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
        self._tallies: OrderedDict[str, Tally] = OrderedDict()
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

    def _tally_for(self, session_id: str, store: ArtifactStore) -> Tally:
        """Return a copy of the session's totals, from the cache or resumed from disk."""
        cached = self._tallies.get(session_id)
        if cached is not None:
            return cached.copy()
        data = read_bytes(os.fspath(store.artifact_path(RUN_SUMMARY_KEY)))
        if data is None:
            return Tally(session_id)
        try:
            summary = summary_decoder.decode(data)
        except msgspec.DecodeError as exc:
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
