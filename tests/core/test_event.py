"""The event model: fields, defaults, timestamps, ids, unknown types, helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import msgspec
import pytest

from eventbus import (
    Event,
    EventDecodeError,
    EventType,
    create_agent_event,
    create_artifact_event,
    create_clarification_event,
    create_command_event,
    create_diff_event,
    create_gate_event,
    create_llm_request_event,
    create_llm_response_event,
    create_model_routed_event,
    create_phase_transition_event,
    create_session_event,
    create_task_event,
    create_verification_event,
    current_parent_id,
    decode_event,
    encode_event,
    new_event_id,
    parent_scope,
)

CONTROL_TYPES = [
    "control_applied",
    "control_rejected",
    "session_paused",
    "session_resumed",
    "approval_requested",
]

SEED_TYPES = [
    "phase_transition",
    "session_started",
    "session_completed",
    "session_failed",
    "session_aborted",
    "task_scheduled",
    "task_started",
    "task_completed",
    "task_failed",
    "task_retrying",
    "task_skipped",
    "agent_invoked",
    "agent_response",
    "llm_request_sent",
    "llm_response_received",
    "model_routed",
    "gate_evaluated",
    "gate_blocked",
    "gate_warned",
    "diff_applied",
    "diff_failed",
    "command_executed",
    "verification_started",
    "verification_passed",
    "verification_failed",
    "artifact_created",
    "artifact_updated",
    "clarification_requested",
    "clarification_answered",
    "info",
    "warning",
    "error",
]


class TestEventType:
    def test_holds_every_seed_type(self) -> None:
        """Every type the seed lists exists, with the seed's value, and the control types."""
        assert {t.value for t in EventType} == set(SEED_TYPES) | set(CONTROL_TYPES)
        assert len(EventType) >= 30

    def test_members_hash_and_compare_like_their_strings(self) -> None:
        """Plain strings find members in sets and dicts, and vice versa."""
        assert str(EventType.TASK_STARTED) == "task_started"
        assert EventType.TASK_STARTED.value == "task_started"
        assert "task_started" in {EventType.TASK_STARTED}
        assert EventType.TASK_STARTED in {"task_started"}

    def test_unknown_value_becomes_a_pseudo_member_keeping_its_string(self) -> None:
        """A newer producer's type is an EventType with its value unchanged."""
        unknown = EventType("deployment_rolled_back")
        assert isinstance(unknown, EventType)
        assert unknown.value == "deployment_rolled_back"
        assert not unknown.is_known
        assert EventType.INFO.is_known

    def test_empty_type_is_rejected(self) -> None:
        """An empty string is not an event type."""
        with pytest.raises(ValueError, match="is not a valid EventType"):
            EventType("")


class TestEvent:
    def test_three_fields_make_a_complete_event(self) -> None:
        """timestamp, id and parent_id default; the rest are None or empty."""
        before = datetime.now(UTC)
        event = Event(event_type=EventType.INFO, session_id="s1", message="hello")
        assert before <= event.timestamp <= datetime.now(UTC)
        assert event.timestamp.tzinfo is UTC
        assert event.metadata == {}
        assert (event.phase, event.task_id, event.agent_role, event.model) == (None,) * 4
        assert event.parent_id is None
        assert uuid.UUID(event.id).version == 7

    def test_is_frozen_and_keyword_only(self) -> None:
        """Events are immutable and built by keyword."""
        event = Event(event_type=EventType.INFO, session_id="s", message="m")
        with pytest.raises(AttributeError, match="immutable"):
            event.message = "changed"  # type: ignore[misc]
        with pytest.raises(TypeError, match="positional"):
            Event(EventType.INFO, "s", "m")  # type: ignore[call-arg]

    def test_naive_timestamp_is_taken_as_utc(self) -> None:
        """The seed passes datetime.utcnow(): it means UTC."""
        naive = datetime(2026, 1, 2, 3, 4, 5)
        event = Event(event_type=EventType.INFO, session_id="s", message="m", timestamp=naive)
        assert event.timestamp == naive.replace(tzinfo=UTC)
        assert event.timestamp.tzinfo is UTC

    def test_aware_timestamp_is_converted_to_utc(self) -> None:
        """Another offset is converted, the instant kept."""
        paris = datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
        event = Event(event_type=EventType.INFO, session_id="s", message="m", timestamp=paris)
        assert event.timestamp == paris
        assert event.timestamp.tzinfo is UTC
        assert event.timestamp.hour == 3

    def test_string_event_type_becomes_the_member(self) -> None:
        """event_type="info" is stored as EventType.INFO."""
        event = Event(event_type="info", session_id="s", message="m")  # type: ignore[arg-type]
        assert event.event_type is EventType.INFO

    def test_non_string_event_type_is_rejected(self) -> None:
        """An event type must be a non-empty string."""
        with pytest.raises(EventDecodeError, match="event_type must be a non-empty string"):
            Event(event_type=3, session_id="s", message="m")  # type: ignore[arg-type]

    def test_ids_are_unique_and_sort_by_creation(self) -> None:
        """Ids made in sequence are distinct and increase."""
        ids = [new_event_id() for _ in range(10_000)]
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids)

    def test_ids_embed_the_creation_millisecond(self) -> None:
        """The first 48 bits are the Unix time in milliseconds (UUIDv7)."""
        before = datetime.now(UTC).timestamp() * 1000
        ms = int(new_event_id()[:12], 16)
        after = datetime.now(UTC).timestamp() * 1000
        assert before - 1 <= ms <= after + 1

    def test_the_counter_part_counts_up_by_one(self) -> None:
        """The last 32 bits of consecutive ids count up (carrying across every digit)."""
        counters = [int(new_event_id()[24:], 16) for _ in range(5000)]
        assert counters == list(range(counters[0], counters[0] + 5000))

    def test_forked_children_make_different_ids(self) -> None:
        """Two processes never share the random part of their ids."""
        code = "from eventbus import new_event_id; print(new_event_id())"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        outputs = {
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
            ).stdout.strip()[12:28]
            for _ in range(2)
        }
        assert len(outputs) == 2


class _PausingZone(tzinfo):
    """UTC, but the first look at its offset signals ``inside`` and waits for ``release``."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def utcoffset(self, dt: datetime | None) -> timedelta:
        self.inside.set()
        self.release.wait()
        return timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str:
        return "UTC, pausing"


def test_events_made_while_another_thread_decodes_get_real_defaults() -> None:
    """A decoding in progress elsewhere never gives a new event the decoding's sentinels."""
    zone = _PausingZone()
    decoded: list[Event] = []
    seed = {"event_type": "info", "session_id": "s", "message": "m"}
    thread = threading.Thread(
        target=lambda: decoded.append(
            Event.from_dict({**seed, "timestamp": datetime(2026, 1, 1, tzinfo=zone)})
        )
    )
    thread.start()
    try:
        assert zone.inside.wait(timeout=30)  # the other thread is inside from_dict
        made = Event(event_type=EventType.INFO, session_id="s", message="m")
    finally:
        zone.release.set()
        thread.join()
    assert made.timestamp.year >= 2026
    assert len(made.id) == 32
    assert made.id != decoded[0].id
    assert decoded[0].timestamp == datetime(2026, 1, 1, tzinfo=UTC)


class TestParentScope:
    def test_events_inside_a_scope_get_its_parent(self) -> None:
        """parent_id defaults to the enclosing scope, which nests and restores."""
        with parent_scope("p1"):
            assert Event(event_type="info", session_id="s", message="m").parent_id == "p1"  # type: ignore[arg-type]
            with parent_scope("p2"):
                assert current_parent_id() == "p2"
            assert current_parent_id() == "p1"
        assert current_parent_id() is None

    def test_decoding_does_not_inherit_the_scope(self) -> None:
        """A stored event without parent_id had none, whatever the reader's context."""
        line = (
            b'{"event_type":"info","timestamp":"2026-01-01T00:00:00",'
            b'"session_id":"s","message":"m"}'
        )
        with parent_scope("reader"):
            assert decode_event(line).parent_id is None
            assert Event.from_dict(msgspec.json.decode(line)).parent_id is None


class TestDicts:
    def test_to_dict_has_the_seed_shape_plus_ids(self) -> None:
        """to_dict gives JSON values: the type's value and an ISO timestamp."""
        event = create_llm_request_event("s1", "gpt-4", "coder", 150, task_id="t1")
        data = event.to_dict()
        assert set(data) == {
            "event_type", "timestamp", "session_id", "message", "phase", "task_id",
            "agent_role", "model", "metadata", "id", "parent_id",
        }  # fmt: skip
        assert data["event_type"] == "llm_request_sent"
        assert datetime.fromisoformat(data["timestamp"]) == event.timestamp
        assert Event.from_dict(data) == event

    def test_from_dict_reads_the_seeds_format(self) -> None:
        """A dict written by the seed (naive ISO time, no ids) loads."""
        seed = {
            "event_type": "task_started",
            "timestamp": "2026-03-04T05:06:07.123456",
            "session_id": "s1",
            "message": "Executing task: t1",
            "phase": "EXECUTION",
            "task_id": "t1",
            "agent_role": None,
            "model": None,
            "metadata": {"description": "d", "role": "coder"},
        }
        event = Event.from_dict(seed)
        assert event.event_type is EventType.TASK_STARTED
        assert event.timestamp == datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
        assert event.metadata == {"description": "d", "role": "coder"}

    def test_from_dict_names_the_bad_field(self) -> None:
        """A dict that is not an event says which field is wrong."""
        with pytest.raises(EventDecodeError, match=r"\$\.timestamp"):
            Event.from_dict({"event_type": "info", "timestamp": "yesterday",
                             "session_id": "s", "message": "m"})  # fmt: skip
        with pytest.raises(EventDecodeError, match="missing required field `session_id`"):
            Event.from_dict({"event_type": "info", "message": "m"})

    def test_unknown_type_survives_to_dict_and_back(self) -> None:
        """An unknown type is kept through from_dict, to_dict and encoding."""
        data = Event(event_type="info", session_id="s", message="m").to_dict()  # type: ignore[arg-type]
        data["event_type"] = "quantum_leap"
        event = Event.from_dict(data)
        assert event.to_dict()["event_type"] == "quantum_leap"
        assert b'"event_type":"quantum_leap"' in encode_event(event)


class TestHelpers:
    def test_phase_transition(self) -> None:
        """The seed's message, the new phase, both phases in metadata."""
        event = create_phase_transition_event("s", "IDEA", "PLAN_REVIEW")
        assert event.event_type is EventType.PHASE_TRANSITION
        assert event.message == "Phase transition: IDEA → PLAN_REVIEW"
        assert event.phase == "PLAN_REVIEW"
        assert event.metadata == {"old_phase": "IDEA", "new_phase": "PLAN_REVIEW"}

    def test_llm_response_carries_usage_and_cost(self) -> None:
        """Token usage uses the seed's keys; total is the sum."""
        event = create_llm_response_event(
            "s", "gpt-4", "coder", 150, 300, task_id="t", cost_usd=0.02, cached_tokens=10,
            parent_id="req",
        )  # fmt: skip
        assert event.metadata == {
            "prompt_tokens": 150, "completion_tokens": 300, "total_tokens": 450,
            "cached_tokens": 10, "cost_usd": 0.02,
        }  # fmt: skip
        assert (event.model, event.agent_role, event.task_id) == ("gpt-4", "coder", "t")
        assert event.parent_id == "req"

    @pytest.mark.parametrize(
        ("event", "event_type", "fields"),
        [
            pytest.param(
                create_session_event("s", EventType.SESSION_STARTED, phase="IDEA"),
                EventType.SESSION_STARTED, {"phase": "IDEA"}, id="session",
            ),
            pytest.param(
                create_task_event("s", EventType.TASK_FAILED, "t1", agent_role="coder", error="x"),
                EventType.TASK_FAILED, {"task_id": "t1", "agent_role": "coder"}, id="task",
            ),
            pytest.param(
                create_agent_event("s", "planner", response=True, task_id="t1"),
                EventType.AGENT_RESPONSE, {"agent_role": "planner"}, id="agent",
            ),
            pytest.param(
                create_model_routed_event("s", "m1", "coder", reason="cheap"),
                EventType.MODEL_ROUTED, {"model": "m1"}, id="routed",
            ),
            pytest.param(
                create_gate_event("s", "lint", "block", reason="style"),
                EventType.GATE_BLOCKED, {}, id="gate-block",
            ),
            pytest.param(
                create_gate_event("s", "lint", "warn"), EventType.GATE_WARNED, {}, id="gate-warn",
            ),
            pytest.param(
                create_gate_event("s", "lint", "pass"),
                EventType.GATE_EVALUATED, {}, id="gate-pass",
            ),
            pytest.param(
                create_diff_event("s", ["a.py"], applied=False, error="conflict"),
                EventType.DIFF_FAILED, {}, id="diff",
            ),
            pytest.param(
                create_command_event("s", ["pytest", "-q"], 0, duration_s=1.5),
                EventType.COMMAND_EXECUTED, {}, id="command",
            ),
            pytest.param(
                create_verification_event("s", EventType.VERIFICATION_PASSED, verifier="pytest"),
                EventType.VERIFICATION_PASSED, {}, id="verification",
            ),
            pytest.param(
                create_artifact_event("s", "build_spec", {"name": "x"}, updated=True),
                EventType.ARTIFACT_UPDATED, {}, id="artifact",
            ),
            pytest.param(
                create_clarification_event("s", "Which DB?", "Postgres"),
                EventType.CLARIFICATION_ANSWERED, {}, id="clarification",
            ),
        ],
    )  # fmt: skip
    def test_each_helper_builds_its_event(
        self, event: Event, event_type: EventType, fields: dict[str, Any]
    ) -> None:
        """Each helper sets the type, the context fields, and encodes."""
        assert event.event_type is event_type
        assert event.session_id == "s"
        for name, value in fields.items():
            assert getattr(event, name) == value
        assert decode_event(encode_event(event)) == event

    def test_helpers_refuse_a_type_of_another_kind(self) -> None:
        """create_task_event only builds task events."""
        with pytest.raises(ValueError, match="task events are one of"):
            create_task_event("s", EventType.GATE_BLOCKED, "t1")
        with pytest.raises(ValueError, match="gate decision is 'pass', 'warn' or 'block'"):
            create_gate_event("s", "lint", "maybe")  # type: ignore[arg-type]
