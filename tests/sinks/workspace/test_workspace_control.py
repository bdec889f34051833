"""sinks.workspace: what a session waits for, and what became of a command, from its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import factories
from eventbus import Event, EventType
from eventbus.coordinator import Command, submit_command
from sinks.jsonl import EventLog
from sinks.workspace import SessionNotFoundError, UnknownCommandError, Workspace


def write(root: Path, *events: Event, session_id: str = "s1") -> None:
    with EventLog(root / session_id / "events.jsonl") as log:
        for item in events:
            log.append(item)


def ev(i: int, event_type: EventType, **fields: Any) -> Event:
    return factories.event(i, "s1", event_type, seconds=i, **fields)


def asked(i: int, question_id: str, question: str = "Which Python?") -> Event:
    return ev(
        i,
        EventType.CLARIFICATION_REQUESTED,
        task_id="plan",
        agent_role="planner",
        metadata={"question": question, "question_id": question_id},
    )


def approval(i: int, request_id: str) -> Event:
    return ev(
        i,
        EventType.APPROVAL_REQUESTED,
        metadata={"request_id": request_id, "subject": "the plan (3 tasks)", "stage": "plan"},
    )


def outcome(i: int, command_id: str, *, applied: bool, reason: str | None = None) -> Event:
    kind = EventType.CONTROL_APPLIED if applied else EventType.CONTROL_REJECTED
    metadata = {"command_id": command_id, "kind": "pause", "target": None, "actor": "cli"}
    return ev(i, kind, metadata={**metadata, "reason": reason})


@pytest.fixture(params=[True, False], ids=["indexed", "scanning"])
def indexed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class TestPending:
    def test_unanswered_questions_and_undecided_approvals_are_pending(
        self, tmp_path: Path, indexed: bool
    ) -> None:
        """A request without its answer (question_id) or gate decision (request_id) waits."""
        write(
            tmp_path,
            ev(0, EventType.SESSION_STARTED),
            asked(1, "q1"),
            asked(2, "q2", "Which licence?"),
            ev(3, EventType.CLARIFICATION_ANSWERED, metadata={"question_id": "q1", "answer": "a"}),
            approval(4, "r1"),
            approval(5, "r2"),
            ev(6, EventType.GATE_BLOCKED, metadata={"request_id": "r1", "gate": "person"}),
        )
        assert Workspace(tmp_path, index=indexed).pending("s1") == [
            {
                "kind": "clarification",
                "id": "q2",
                "task_id": "plan",
                "role": "planner",
                "text": "Which licence?",
            },
            {
                "kind": "approval",
                "id": "r2",
                "task_id": None,
                "role": None,
                "text": "the plan (3 tasks)",
            },
        ]

    @pytest.mark.parametrize(
        "end",
        [EventType.SESSION_COMPLETED, EventType.SESSION_FAILED, EventType.SESSION_ABORTED],
    )
    def test_an_ended_session_waits_for_nothing(self, tmp_path: Path, end: EventType) -> None:
        """After its terminal event, nothing is pending, and the session has ended."""
        write(tmp_path, ev(0, EventType.SESSION_STARTED), asked(1, "q1"), ev(2, end))
        workspace = Workspace(tmp_path)
        assert workspace.pending("s1") == []
        assert workspace.session_ended("s1")

    def test_a_running_session_has_not_ended(self, tmp_path: Path) -> None:
        write(tmp_path, ev(0, EventType.SESSION_STARTED))
        assert not Workspace(tmp_path).session_ended("s1")

    def test_an_unknown_session_is_not_found(self, tmp_path: Path) -> None:
        """No directory, or a directory without a log: no such session (yet)."""
        (tmp_path / "s2").mkdir()
        workspace = Workspace(tmp_path)
        for session_id in ("nope", "s2"):
            with pytest.raises(SessionNotFoundError, match=f"no session '{session_id}'"):
                workspace.pending(session_id)
            with pytest.raises(SessionNotFoundError, match=f"no session '{session_id}'"):
                workspace.session_ended(session_id)


class TestCommandStatus:
    def test_a_command_in_the_inbox_only_is_queued(self, tmp_path: Path, indexed: bool) -> None:
        write(tmp_path, ev(0, EventType.SESSION_STARTED))
        submit_command(tmp_path, "s1", Command(kind="pause", command_id="c1"))
        assert Workspace(tmp_path, index=indexed).command_status("s1", "c1") == {
            "command_id": "c1",
            "kind": "pause",
            "status": "queued",
            "reason": None,
        }

    def test_the_first_outcome_in_the_log_is_the_status(
        self, tmp_path: Path, indexed: bool
    ) -> None:
        """Applied or rejected (with the reason), from control_applied / control_rejected."""
        write(
            tmp_path,
            ev(0, EventType.SESSION_STARTED),
            outcome(1, "c1", applied=True),
            outcome(2, "c2", applied=False, reason="the session is not paused"),
            outcome(3, "c1", applied=False, reason="a second outcome is never written"),
        )
        workspace = Workspace(tmp_path, index=indexed)
        assert workspace.command_status("s1", "c1")["status"] == "applied"
        assert workspace.command_status("s1", "c2") == {
            "command_id": "c2",
            "kind": "pause",
            "status": "rejected",
            "reason": "the session is not paused",
        }

    def test_an_unknown_command_is_a_lookup_error(self, tmp_path: Path) -> None:
        write(tmp_path, ev(0, EventType.SESSION_STARTED))
        with pytest.raises(UnknownCommandError, match="no command 'c9' in session 's1'"):
            Workspace(tmp_path).command_status("s1", "c9")
        assert issubclass(UnknownCommandError, LookupError)
