"""The instrumentation API: blocks emit start and one end, whatever happens inside."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from eventbus import Event, EventBus, EventType, MemorySink, parent_scope
from eventbus.coordinator import Emitter, ModelPrice, UsageNotReportedError

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def recording(phase: str | None = "EXECUTION") -> AsyncIterator[tuple[Emitter, MemorySink]]:
    """A running bus with a MemorySink and an emitter for session ``s1``."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        yield Emitter(bus, "s1", phase=phase), sink
        await bus.flush()


def types(events: Sequence[Event]) -> list[str]:
    return [event.event_type.value for event in events]


class TestTaskBlock:
    async def test_emits_started_then_completed_with_duration(self) -> None:
        async with (
            recording() as (emitter, sink),
            emitter.task("t1", role="coder", title="write") as task,
        ):
            task.set_result(files=2)
        started, completed = sink.events
        assert types(sink.events) == ["task_started", "task_completed"]
        assert (started.task_id, started.agent_role, started.phase) == ("t1", "coder", "EXECUTION")
        assert started.metadata == {"title": "write"}
        assert completed.parent_id == started.id
        assert completed.metadata["files"] == 2
        assert completed.metadata["duration_s"] >= 0

    async def test_events_inside_get_task_id_role_and_point_to_task_started(self) -> None:
        async with recording() as (emitter, sink), emitter.task("t1", role="coder") as task:
            await emitter.command("make", 0)
            await emitter.gate("size", "pass")
            await emitter.note("hello")
        started, *inside, _ = sink.events
        assert started.id == task.id
        for event in inside:
            assert (event.task_id, event.agent_role, event.parent_id) == ("t1", "coder", task.id)

    async def test_events_after_the_block_are_outside_the_task(self) -> None:
        async with recording() as (emitter, sink):
            with parent_scope("root"):
                async with emitter.task("t1", role="coder"):
                    pass
                await emitter.note("after")
        after = sink.events[-1]
        assert (after.task_id, after.agent_role, after.parent_id) == (None, None, "root")

    async def test_exception_emits_task_failed_and_propagates(self) -> None:
        async def fail(emitter: Emitter) -> None:
            async with emitter.task("t1", role="coder") as task:
                task.set_result(attempts=1)
                raise ValueError("bad input")

        async with recording() as (emitter, sink):
            with pytest.raises(ValueError, match="bad input"):
                await fail(emitter)
        started = sink.events[0]
        failed = sink.events[-1]
        assert failed.event_type is EventType.TASK_FAILED
        assert failed.parent_id == started.id
        assert failed.metadata["error"] == "bad input"
        assert failed.metadata["error_type"] == "ValueError"
        assert failed.metadata["cancelled"] is False
        assert failed.metadata["attempts"] == 1
        assert failed.metadata["duration_s"] >= 0

    async def test_cancellation_emits_task_failed_from_a_shielded_scope(self) -> None:
        entered = anyio.Event()
        async with recording() as (emitter, sink), anyio.create_task_group() as tg:

            async def run_task() -> None:
                async with emitter.task("t1", role="coder"):
                    entered.set()
                    await anyio.sleep_forever()

            tg.start_soon(run_task)
            await entered.wait()
            tg.cancel_scope.cancel()
        assert types(sink.events) == ["task_started", "task_failed"]
        failed = sink.events[-1]
        assert failed.metadata["cancelled"] is True
        assert failed.message == "Task cancelled: t1 (cancelled)"

    async def test_retrying_emits_task_retrying_inside_the_task(self) -> None:
        async with recording() as (emitter, sink), emitter.task("t1", role="coder") as task:
            await task.retrying(RuntimeError("flaky"), attempt=1, delay_s=0.5)
        retrying = sink.events[1]
        assert retrying.event_type is EventType.TASK_RETRYING
        assert retrying.parent_id == task.id
        assert retrying.metadata == {
            "attempt": 1,
            "next_attempt": 2,
            "delay_s": 0.5,
            "error": "flaky",
            "error_type": "RuntimeError",
        }

    async def test_concurrent_tasks_keep_their_own_context(self) -> None:
        async with recording() as (emitter, sink):

            async def run_task(task_id: str) -> None:
                async with emitter.task(task_id, role=f"role-{task_id}"):
                    await anyio.lowlevel.checkpoint()
                    await emitter.note(f"in {task_id}")

            async with anyio.create_task_group() as tg:
                for task_id in ("a", "b", "c"):
                    tg.start_soon(run_task, task_id)
        starts = {e.task_id: e.id for e in sink.events if e.event_type is EventType.TASK_STARTED}
        for event in sink.events:
            if event.event_type is EventType.INFO:
                assert event.message == f"in {event.task_id}"
                assert event.agent_role == f"role-{event.task_id}"
                assert event.parent_id == starts[event.task_id]

    async def test_a_block_cannot_be_entered_twice(self) -> None:
        async with recording() as (emitter, _):
            block = emitter.task("t1")
            async with block:
                pass
            with pytest.raises(RuntimeError, match="cannot be re-entered"):
                async with block:
                    pass


class TestLLMCall:
    async def test_response_points_to_request_with_usage_and_cost(self) -> None:
        price = ModelPrice(input_per_mtok=2.0, output_per_mtok=10.0)
        async with (
            recording() as (emitter, sink),
            emitter.task("t1", role="coder") as task,
            emitter.llm_call(model="m", role="coder", prompt_tokens=100, price=price) as call,
        ):
            call.set_usage(completion_tokens=50)
        _, request, response, _ = sink.events
        assert types(sink.events)[1:3] == ["llm_request_sent", "llm_response_received"]
        assert request.parent_id == task.id
        assert response.parent_id == request.id
        assert request.metadata == {"prompt_tokens": 100}
        assert (response.task_id, response.agent_role, response.model) == ("t1", "coder", "m")
        assert response.metadata["prompt_tokens"] == 100
        assert response.metadata["completion_tokens"] == 50
        assert response.metadata["total_tokens"] == 150
        assert response.metadata["cost_usd"] == pytest.approx(0.0007)
        assert response.metadata["duration_s"] >= 0

    async def test_reported_prompt_and_cached_tokens_replace_the_estimate(self) -> None:
        price = ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0, cached_input_per_mtok=0.5)
        async with (
            recording() as (emitter, sink),
            emitter.llm_call(model="m", role="planner", prompt_tokens=10, price=price) as call,
        ):
            call.set_usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=600)
        response = sink.events[-1]
        assert response.metadata["prompt_tokens"] == 1000
        assert response.metadata["cached_tokens"] == 600
        assert response.metadata["cost_usd"] == pytest.approx((400 + 300) / 1_000_000)

    async def test_without_a_price_there_is_no_cost(self) -> None:
        async with (
            recording() as (emitter, sink),
            emitter.llm_call(model="m", role="r", prompt_tokens=1) as call,
        ):
            call.set_usage(completion_tokens=1)
        assert "cost_usd" not in sink.events[-1].metadata

    async def test_failure_emits_an_error_pointing_to_the_request(self) -> None:
        async with recording() as (emitter, sink):
            with pytest.raises(ConnectionError, match="model unreachable"):
                async with emitter.llm_call(model="m", role="r", prompt_tokens=5):
                    raise ConnectionError("model unreachable")
        request, error = sink.events
        assert error.event_type is EventType.ERROR
        assert error.parent_id == request.id
        assert error.metadata["operation"] == "llm_call"
        assert error.metadata["error"] == "model unreachable"
        assert error.model == "m"

    async def test_cancellation_emits_a_cancelled_error_event(self) -> None:
        async with recording() as (emitter, sink):
            with anyio.CancelScope() as scope:
                async with emitter.llm_call(model="m", role="r", prompt_tokens=5):
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
        request, error = sink.events
        assert error.parent_id == request.id
        assert error.metadata["cancelled"] is True

    async def test_leaving_without_usage_raises_after_emitting_an_error(self) -> None:
        async with recording() as (emitter, sink):
            with pytest.raises(UsageNotReportedError, match=r"without call\.set_usage"):
                async with emitter.llm_call(model="m", role="r", prompt_tokens=5):
                    pass
        assert types(sink.events) == ["llm_request_sent", "error"]
        assert sink.events[-1].metadata["error_type"] == "UsageNotReportedError"

    async def test_negative_usage_is_refused(self) -> None:
        async with (
            recording() as (emitter, _),
            emitter.llm_call(model="m", role="r", prompt_tokens=5) as call,
        ):
            with pytest.raises(ValueError, match="completion_tokens must be >= 0"):
                call.set_usage(completion_tokens=-1)
            call.set_usage(completion_tokens=1)


class TestAgentBlock:
    async def test_emits_invoked_and_response_and_stamps_its_role(self) -> None:
        async with recording() as (emitter, sink):
            with parent_scope("root"):
                async with emitter.agent("planner", model="m") as agent:
                    await emitter.gate("scope", "warn", reason="big")
                    agent.set_result(summary="planned")
        invoked, gate, response = sink.events
        assert types(sink.events) == ["agent_invoked", "gate_warned", "agent_response"]
        assert gate.agent_role == "planner"
        assert gate.parent_id == "root"
        assert response.parent_id == "root"
        assert response.metadata["invocation_id"] == invoked.id
        assert response.metadata["summary"] == "planned"

    async def test_failure_emits_an_error_event(self) -> None:
        async with recording() as (emitter, sink):
            with pytest.raises(KeyError, match="missing"):
                async with emitter.agent("coder"):
                    raise KeyError("missing")
        invoked, error = sink.events
        assert error.event_type is EventType.ERROR
        assert error.metadata["operation"] == "agent"
        assert error.metadata["invocation_id"] == invoked.id


class TestVerificationBlock:
    async def test_passes_and_nests_commands(self) -> None:
        async with (
            recording("VERIFICATION") as (emitter, sink),
            emitter.verification("tests") as check,
        ):
            await emitter.command(["pytest", "-q"], 0)
        started, command, passed = sink.events
        assert passed.event_type is EventType.VERIFICATION_PASSED
        assert command.parent_id == check.id == started.id
        assert passed.parent_id == started.id
        assert passed.metadata["verifier"] == "tests"

    async def test_fail_ends_with_verification_failed(self) -> None:
        async with (
            recording("VERIFICATION") as (emitter, sink),
            emitter.verification("tests") as check,
        ):
            check.fail("2 tests failed")
        failed = sink.events[-1]
        assert failed.event_type is EventType.VERIFICATION_FAILED
        assert failed.metadata["reason"] == "2 tests failed"

    async def test_exception_ends_with_verification_failed(self) -> None:
        async with recording("VERIFICATION") as (emitter, sink):
            with pytest.raises(OSError, match="no such command"):
                async with emitter.verification("tests"):
                    raise OSError("no such command")
        assert sink.events[-1].event_type is EventType.VERIFICATION_FAILED


class TestEmitter:
    async def test_transition_emits_and_changes_the_phase(self) -> None:
        async with recording("IDEA") as (emitter, sink):
            await emitter.transition("PLAN_REVIEW")
            await emitter.note("reviewing")
        transition, note = sink.events
        assert transition.metadata == {"old_phase": "IDEA", "new_phase": "PLAN_REVIEW"}
        assert transition.message == "Phase transition: IDEA → PLAN_REVIEW"
        assert transition.phase == note.phase == emitter.phase == "PLAN_REVIEW"

    async def test_transition_needs_a_current_phase(self) -> None:
        async with recording(None) as (emitter, _):
            with pytest.raises(ValueError, match="no current phase"):
                await emitter.transition("IDEA")

    async def test_emit_stamps_missing_fields_only(self) -> None:
        async with recording() as (emitter, sink), emitter.task("t1", role="coder"):
            await emitter.emit(
                Event(event_type=EventType.INFO, session_id="s1", message="x", phase="OTHER")
            )
        stamped = sink.events[1]
        assert (stamped.phase, stamped.task_id, stamped.agent_role) == ("OTHER", "t1", "coder")

    async def test_on_event_sees_every_published_event_in_order(self) -> None:
        seen: list[Event] = []
        sink = MemorySink()
        async with EventBus() as bus:
            bus.subscribe(sink)
            emitter = Emitter(bus, "s1", phase="IDEA", on_event=seen.append)
            async with emitter.task("t1"):
                await emitter.artifact("spec", {"a": 1})
            await bus.flush()
        assert seen == sink.events

    async def test_a_closing_event_that_cannot_be_published_in_time_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        release = anyio.Event()

        class StuckSink:
            async def write(self, events: Sequence[Event]) -> None:
                await release.wait()

            async def aclose(self) -> None:
                pass

        entered = anyio.Event()
        async with EventBus(buffer=1) as bus:
            bus.subscribe(StuckSink())
            emitter = Emitter(bus, "s1", phase="EXECUTION", shield_timeout=0.01)
            async with anyio.create_task_group() as tg:

                async def run_task() -> None:
                    async with emitter.task("t1"):  # task_started fills the buffer
                        entered.set()
                        await anyio.sleep_forever()

                tg.start_soon(run_task)
                await entered.wait()
                with caplog.at_level(logging.ERROR, logger="eventbus"):
                    tg.cancel_scope.cancel()
            release.set()
        assert "could not publish task_failed" in caplog.text

    def test_shield_timeout_must_not_be_negative(self) -> None:
        with pytest.raises(ValueError, match="shield_timeout must be >= 0"):
            Emitter(EventBus(), "s1", shield_timeout=-1)


class TestModelPrice:
    def test_cost_counts_cached_prompt_tokens_at_the_cached_rate(self) -> None:
        price = ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3)
        assert price.cost(1000, 100, cached_tokens=400) == pytest.approx(
            (600 * 3.0 + 400 * 0.3 + 100 * 15.0) / 1_000_000
        )

    def test_cached_tokens_default_to_the_input_rate(self) -> None:
        price = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
        assert price.cost(10, 10, cached_tokens=5) == price.cost(10, 10)
