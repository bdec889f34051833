"""The seed's naive implementation, as the work package sketches it: the baseline.

``SeedEvent`` is the seed's dataclass (``to_dict``/``from_dict``) and
``SeedEventLog`` its ``EventLog``: every ``append`` opens the file, writes one
``json.dumps`` line and closes it; loading parses line by line; queries are
list comprehensions over every event. Benchmarks compare against it in the
same run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from eventbus import EventType


@dataclass
class SeedEvent:
    """The seed's ``Event`` dataclass."""

    event_type: EventType
    timestamp: datetime
    session_id: str
    message: str
    phase: str | None = None
    task_id: str | None = None
    agent_role: str | None = None
    model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The seed's ``Event.to_dict``."""
        return {
            "event_type": self.event_type.value,
            "timestamp": self.timestamp.isoformat(),
            "session_id": self.session_id,
            "message": self.message,
            "phase": self.phase,
            "task_id": self.task_id,
            "agent_role": self.agent_role,
            "model": self.model,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedEvent:
        """The seed's ``Event.from_dict``."""
        return cls(
            event_type=EventType(data["event_type"]),
            timestamp=datetime.fromisoformat(data["timestamp"]),
            session_id=data["session_id"],
            message=data["message"],
            phase=data.get("phase"),
            task_id=data.get("task_id"),
            agent_role=data.get("agent_role"),
            model=data.get("model"),
            metadata=data.get("metadata", {}),
        )


class SeedEventLog:
    """The seed's ``EventLog``: append opens, writes one line and closes the file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._events: list[SeedEvent] = []
        if log_path.exists():
            self._events = seed_load(log_path)

    def append(self, event: SeedEvent) -> None:
        """The seed's ``append``, verbatim."""
        with open(self.log_path, "a") as f:
            f.write(json.dumps(event.to_dict()) + "\n")
        self._events.append(event)


def seed_load(path: Path) -> list[SeedEvent]:
    """The seed's ``EventLog._load_events``: text lines, ``json.loads``, ``from_dict``."""
    events = []
    with path.open("r") as file:
        for line in file:
            if line.strip():
                event = SeedEvent.from_dict(json.loads(line))
                events.append(event)
    return events


def seed_get_events(
    events: list[SeedEvent],
    event_type: EventType | list[EventType] | None = None,
    phase: str | None = None,
    task_id: str | None = None,
    agent_role: str | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    session_id: str | None = None,
) -> list[SeedEvent]:
    """The seed's ``EventLog.get_events``, verbatim (plus a session filter in its style)."""
    if event_type:
        if isinstance(event_type, EventType):
            event_type = [event_type]
        events = [e for e in events if e.event_type in event_type]
    if session_id:
        events = [e for e in events if e.session_id == session_id]
    if phase:
        events = [e for e in events if e.phase == phase]
    if task_id:
        events = [e for e in events if e.task_id == task_id]
    if agent_role:
        events = [e for e in events if e.agent_role == agent_role]
    if start_time:
        events = [e for e in events if e.timestamp >= start_time]
    if end_time:
        events = [e for e in events if e.timestamp <= end_time]
    return events
