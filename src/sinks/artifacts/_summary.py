"""``RunSummary``, the ``run_summary`` artifact, and the running totals it is made from.

:class:`Tally` counts one session's events; :class:`ArtifactSink` turns it into
a :class:`RunSummary` after each batch, and resumes it from the saved summary.
No I/O here.
"""

from __future__ import annotations

import copy
from datetime import datetime

import msgspec

from eventbus import Event, EventType, as_utc

from .._usage import PICO, Sums, picodollars

RUN_SUMMARY_KEY = "run_summary"
"""The key of the :class:`RunSummary` artifact that :class:`ArtifactSink` keeps."""


class RunSummary(msgspec.Struct, kw_only=True):
    """The ``run_summary`` artifact that :class:`ArtifactSink` keeps for each session.

    Times are ISO 8601 strings in UTC. ``started_at`` is the
    ``session_started`` event's time (or the first event seen);
    ``duration_s`` runs to ``ended_at``, or to the latest event while the
    session is ``"running"``. A task counts once, under its latest outcome
    (``task_completed`` or ``task_failed``). ``llm_calls``, the token counts
    and ``cost_usd`` add up the ``llm_response_received`` events by the rules
    every usage total follows (see :class:`~sinks.index.TokenUsage`). Decode a loaded artifact
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
summary_decoder = msgspec.json.Decoder(RunSummary)
"""Decodes a ``run_summary`` file into a :class:`RunSummary`."""


def parse_iso_time(value: str | None) -> datetime | None:
    """Return the ISO 8601 ``value`` as an aware UTC datetime; None if it is not one."""
    if value is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


class Tally:
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
        self.usage = Sums()  # the responses' calls, tokens and picodollars
        self.errors = 0

    @classmethod
    def resume(cls, summary: RunSummary) -> Tally:
        tally = cls(summary.session_id)
        tally.status = summary.status
        tally.phase = summary.phase
        tally.started = parse_iso_time(summary.started_at)
        tally.ended = parse_iso_time(summary.ended_at)
        tally.latest = parse_iso_time(summary.updated_at)
        tally.event_count = summary.event_count
        tally.completed = set(summary.completed_task_ids)
        tally.failed = set(summary.failed_task_ids) - tally.completed
        tally.files = set(summary.files_generated)
        tally.usage = Sums(
            (
                summary.llm_calls,
                summary.prompt_tokens,
                summary.completion_tokens,
                summary.total_tokens,
                summary.cached_tokens,
                picodollars(summary.cost_usd),
            )
        )
        tally.errors = summary.errors
        return tally

    def copy(self) -> Tally:
        twin = copy.copy(self)
        twin.completed = set(self.completed)
        twin.failed = set(self.failed)
        twin.files = set(self.files)
        twin.usage = Sums(self.usage.values)
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
            self.usage.add(metadata)
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
        calls, prompt, completion, total, cached, picos = self.usage.values
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
            llm_calls=calls,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cached_tokens=cached,
            cost_usd=picos / PICO,
            errors=self.errors,
        )
