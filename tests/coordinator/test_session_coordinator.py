"""SessionCoordinator: structured events for every operation of a session (VF-142).

The seed's four tests are here by name (``pytest -k event`` selects them);
the others pin the stream's shape: every listed event type, the fields each
carries, a valid order, and a coherent end for failures, blocks and
cancellation.
"""

from __future__ import annotations

import contextlib
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from eventbus import Event, EventBus, EventType, MemorySink, RetryPolicy
from eventbus.coordinator import (
    AgentContext,
    AgentResult,
    ClarificationRequest,
    CommandVerifier,
    GateBlockedError,
    GateCheck,
    GateDecision,
    GateResult,
    ModelPrice,
    ModelRequest,
    ModelResponse,
    PhaseError,
    Plan,
    Route,
    Session,
    SessionCoordinator,
    SessionPhase,
    StaticRouter,
    TaskSpec,
    TaskStatus,
    make_unified_diff,
)
from sinks.artifacts import SessionArtifactQuery
from sinks.jsonl import EventLog, JsonlSink

pytestmark = pytest.mark.anyio

ET = EventType
PRICES = {
    "large": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0),
    "small": ModelPrice(input_per_mtok=0.5, output_per_mtok=1.5),
}
PASSING = CommandVerifier("passes", [sys.executable, "-c", "pass"])
FAILING = CommandVerifier("fails", [sys.executable, "-c", "raise SystemExit(3)"])
LISTED_TYPES = {
    ET.PHASE_TRANSITION,
    ET.SESSION_STARTED,
    ET.SESSION_COMPLETED,
    ET.SESSION_FAILED,
    ET.SESSION_ABORTED,
    ET.TASK_SCHEDULED,
    ET.TASK_STARTED,
    ET.TASK_COMPLETED,
    ET.TASK_FAILED,
    ET.TASK_RETRYING,
    ET.TASK_SKIPPED,
    ET.AGENT_INVOKED,
    ET.AGENT_RESPONSE,
    ET.MODEL_ROUTED,
    ET.LLM_REQUEST_SENT,
    ET.LLM_RESPONSE_RECEIVED,
    ET.GATE_EVALUATED,
    ET.GATE_BLOCKED,
    ET.GATE_WARNED,
    ET.DIFF_APPLIED,
    ET.DIFF_FAILED,
    ET.COMMAND_EXECUTED,
    ET.VERIFICATION_STARTED,
    ET.VERIFICATION_PASSED,
    ET.VERIFICATION_FAILED,
    ET.ARTIFACT_CREATED,
    ET.ARTIFACT_UPDATED,
    ET.CLARIFICATION_REQUESTED,
    ET.CLARIFICATION_ANSWERED,
}


# --- fakes ------------------------------------------------------------------------


class FakeModel:
    """Answers every request with the same usage."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await anyio.lowlevel.checkpoint()
        return ModelResponse(text=f"ok {request.role}", prompt_tokens=100, completion_tokens=20)


class Planner:
    def __init__(self, plan: Plan, question: str | None = None, crash: bool = False) -> None:
        self.plan = plan
        self.question = question
        self.crash = crash

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"plan: {context.idea}")
        if self.question is not None:
            await context.ask(self.question)
        if self.crash:
            raise RuntimeError("planner crashed")
        return AgentResult(summary="planned", plan=self.plan)


class Worker:
    """Does any task as its metadata says; writes ``{task id}.txt`` through a diff.

    ``fail_attempts``: the first n attempts raise; ``bad_diff_attempts``: the
    first n attempts submit a diff that does not apply; ``exit_code``: run a
    command exiting with it; ``artifact``: save one; ``path``: the file to
    write; ``hang``: signal :attr:`started` and wait forever;
    ``swallow_block``: ignore a gate's block and return.
    """

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.running = 0
        self.max_running = 0

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self._work(task, context)
        finally:
            self.running -= 1

    async def _work(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        meta = task.metadata
        await context.complete(f"do {task.id}")
        if meta.get("hang"):
            self.started.set()
            await anyio.sleep_forever()
        if context.attempt <= meta.get("fail_attempts", 0):
            raise RuntimeError(f"{task.id} attempt {context.attempt} broke")
        path = meta.get("path", f"{task.id}.txt")
        if context.attempt <= meta.get("bad_diff_attempts", 0):
            await context.apply_diff(make_unified_diff(path, "stale content\n", "new\n"))
        new = make_unified_diff(path, context.read_text(path), f"by {task.role}\n")
        if meta.get("swallow_block"):
            with contextlib.suppress(GateBlockedError):
                await context.apply_diff(new)
            return AgentResult(summary="ignored the gate")
        if new:  # nothing to change when a retry finds the file already written
            await context.apply_diff(new)
        if "exit_code" in meta:
            await context.run_command(
                [sys.executable, "-c", f"raise SystemExit({meta['exit_code']})"]
            )
        if "artifact" in meta:
            await context.save_artifact(meta["artifact"], {"task": task.id})
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        return AgentResult(summary=f"did {task.id}")


class FakeGate:
    """Decides ``plan`` on plans; blocks diffs touching ``block_path``."""

    def __init__(
        self, name: str, *, plan: GateDecision = "pass", block_path: str | None = None
    ) -> None:
        self.name = name
        self.plan = plan
        self.block_path = block_path

    async def evaluate(self, check: GateCheck) -> GateResult:
        if check.stage == "plan":
            return GateResult(decision=self.plan, reason=f"plan {self.plan}")
        if self.block_path is not None and f"+++ b/{self.block_path}" in (check.diff or ""):
            return GateResult(decision="block", reason=f"{self.block_path} is off limits")
        return GateResult(reason="diff ok")


class FakeClarifier:
    async def answer(self, request: ClarificationRequest) -> str:
        await anyio.lowlevel.checkpoint()
        return f"answer to {request.question_id}"


def task(task_id: str, role: str = "coder", *depends_on: str, **metadata: Any) -> TaskSpec:
    return TaskSpec(
        id=task_id, role=role, title=f"do {task_id}", depends_on=depends_on, metadata=metadata
    )


def plan_of(*tasks: TaskSpec) -> Plan:
    return Plan(tasks=tasks, spec={"name": "demo"})


SIMPLE_PLAN = plan_of(task("t1"), task("t2", "tester", "t1"), task("t3", "reviewer", "t1"))


def make_coordinator(
    bus: EventBus,
    root: Path,
    plan: Plan,
    *,
    worker: Worker | None = None,
    question: str | None = None,
    crash: bool = False,
    **options: Any,
) -> SessionCoordinator:
    worker = worker or Worker()
    settings: dict[str, Any] = {
        "gates": [FakeGate("size")],
        "verifiers": [PASSING],
        "clarifier": FakeClarifier(),
        "prices": PRICES,
        "task_retry": RetryPolicy(retries=1, initial_delay=0.0),
        **options,
    }
    settings.setdefault("router", StaticRouter("small", {"planner": "large"}))
    return SessionCoordinator(
        bus,
        workspace_root=root,
        agents={
            "planner": Planner(plan, question, crash),
            "coder": worker,
            "tester": worker,
            "reviewer": worker,
        },
        model_client=FakeModel(),
        **settings,
    )


async def run_session(
    root: Path, plan: Plan = SIMPLE_PLAN, **options: Any
) -> tuple[Session, list[Event]]:
    """Run a session on its own bus; return it and what the bus delivered."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        session = await make_coordinator(bus, root, plan, **options).run("an idea")
        await bus.flush()
    return session, sink.events


async def run_cancelled_session(root: Path) -> tuple[Session, list[Event]]:
    """A session cancelled while ``t-hang`` runs (``t-next`` waits on it)."""
    plan = plan_of(task("t-hang", hang=True), task("t-next", "tester", "t-hang"))
    worker = Worker()
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        coordinator = make_coordinator(bus, root, plan, worker=worker)
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await coordinator.run("an idea", session_id="cancelled")

            tg.start_soon(run)
            await worker.started.wait()
            tg.cancel_scope.cancel()
        await bus.flush()
    return coordinator.get_session("cancelled"), sink.events


# --- what a coherent stream is ---------------------------------------------------------

PHASES = ["IDEA", "PLAN_REVIEW", "EXECUTION", "VERIFICATION", "COMPLETE"]
TERMINAL = {
    ET.SESSION_COMPLETED: "COMPLETE",
    ET.SESSION_FAILED: "FAILED",
    ET.SESSION_ABORTED: "ABORTED",
}


def assert_coherent(events: Sequence[Event], plan: Plan | None = None) -> None:
    """One session's stream: starts, ends once, phases in order, tasks in a valid
    order (dependencies first, every scheduled task ends once), parents first and
    as documented (task events -> task_started, LLM response -> its request)."""
    first, last = events[0], events[-1]
    assert first.event_type is ET.SESSION_STARTED
    assert first.phase == "IDEA"
    assert first.parent_id is None
    assert last.event_type in TERMINAL
    assert last.phase == TERMINAL[last.event_type]
    assert sum(event.event_type in TERMINAL for event in events) == 1
    depends = {t.id: set(t.depends_on) for t in plan.tasks} if plan else {}
    phase = "IDEA"
    by_id: dict[str, Event] = {}
    state: dict[str, str] = {}
    roles: dict[str, str | None] = {}
    starts: dict[str, str] = {}
    completed: set[str] = set()
    for event in events:
        kind, task_id = event.event_type, event.task_id
        assert event.session_id == first.session_id
        if kind is ET.PHASE_TRANSITION:
            old, new = event.metadata["old_phase"], event.metadata["new_phase"]
            assert old == phase
            assert new in ("FAILED", "ABORTED") or PHASES.index(new) == PHASES.index(old) + 1
            phase = new
        assert event.phase == phase, event
        assert event.parent_id is None or event.parent_id in by_id, event
        parent = by_id.get(event.parent_id or "")
        by_id[event.id] = event
        if kind is ET.LLM_RESPONSE_RECEIVED:
            assert parent is not None
            assert parent.event_type is ET.LLM_REQUEST_SENT
            assert (parent.task_id, parent.agent_role, parent.model) == (
                task_id,
                event.agent_role,
                event.model,
            )
        if task_id is None:
            if kind not in (ET.SESSION_STARTED, ET.LLM_RESPONSE_RECEIVED):
                assert parent is not None
                if parent.event_type is ET.VERIFICATION_STARTED:
                    assert kind in (
                        ET.COMMAND_EXECUTED,
                        ET.VERIFICATION_PASSED,
                        ET.VERIFICATION_FAILED,
                    )
                else:
                    assert parent is first, event
            continue
        if kind is ET.TASK_SCHEDULED:
            assert task_id not in state
            state[task_id] = "scheduled"
            roles[task_id] = event.agent_role
            continue
        assert event.agent_role == roles[task_id], event
        if kind is ET.TASK_SKIPPED:
            assert state[task_id] == "scheduled"
            state[task_id] = "ended"
            continue
        if kind is ET.TASK_STARTED:
            assert state[task_id] == "scheduled"
            assert depends.get(task_id, set()) <= completed
            state[task_id] = "running"
            starts[task_id] = event.id
            continue
        assert state[task_id] == "running", event
        if kind is ET.LLM_RESPONSE_RECEIVED or event.metadata.get("operation") == "llm_call":
            assert parent is not None
            assert parent.event_type is ET.LLM_REQUEST_SENT
        else:
            assert event.parent_id == starts[task_id], event
        if kind in (ET.TASK_COMPLETED, ET.TASK_FAILED):
            state[task_id] = "ended"
            if kind is ET.TASK_COMPLETED:
                completed.add(task_id)
    assert set(state.values()) <= {"ended"}
    if plan is not None:
        assert set(state) == {t.id for t in plan.tasks} or phase in ("FAILED", "ABORTED")


def of_type(events: Sequence[Event], *kinds: EventType) -> list[Event]:
    return [event for event in events if event.event_type in kinds]


def of_task(events: Sequence[Event], task_id: str) -> list[str]:
    return [event.event_type.value for event in events if event.task_id == task_id]


# --- the seed's four tests (VF-142) --------------------------------------------------


async def test_session_coordinator_emits_phase_transition_events(tmp_path: Path) -> None:
    session, events = await run_session(tmp_path)
    transitions = of_type(events, ET.PHASE_TRANSITION)
    assert [(e.metadata["old_phase"], e.metadata["new_phase"]) for e in transitions] == [
        ("IDEA", "PLAN_REVIEW"),
        ("PLAN_REVIEW", "EXECUTION"),
        ("EXECUTION", "VERIFICATION"),
        ("VERIFICATION", "COMPLETE"),
    ]
    assert all(e.phase == e.metadata["new_phase"] for e in transitions)
    assert session.phase is SessionPhase.COMPLETE
    assert "[phase_transition] Phase transition: IDEA → PLAN_REVIEW" in session.logs
    assert_coherent(events, SIMPLE_PLAN)


async def test_session_coordinator_emits_task_events(tmp_path: Path) -> None:
    _, events = await run_session(tmp_path)
    for spec in SIMPLE_PLAN.tasks:
        lifecycle = [kind for kind in of_task(events, spec.id) if kind.startswith("task_")]
        assert lifecycle == ["task_scheduled", "task_started", "task_completed"]
        for event in events:
            if event.task_id == spec.id:
                assert event.agent_role == spec.role
                assert event.phase == "EXECUTION"
    done = {e.task_id: e for e in of_type(events, ET.TASK_COMPLETED)}
    starts = {e.task_id: e for e in of_type(events, ET.TASK_STARTED)}
    for task_id, event in done.items():
        assert event.parent_id == starts[task_id].id
        assert event.metadata["attempts"] == 1
        assert event.metadata["duration_s"] >= 0
        assert event.timestamp >= starts[task_id].timestamp
    assert starts["t2"].timestamp >= done["t1"].timestamp
    assert_coherent(events, SIMPLE_PLAN)


async def test_event_log_persists_across_coordinator_calls(tmp_path: Path) -> None:
    published: list[Event] = []
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        bus.subscribe(first := MemorySink())
        coordinator = make_coordinator(bus, tmp_path, SIMPLE_PLAN)
        session = await coordinator.start_session("an idea")
        await coordinator.plan(session)
    published += first.events
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        bus.subscribe(second := MemorySink())
        coordinator = make_coordinator(bus, tmp_path, SIMPLE_PLAN)
        await coordinator.execute(session)
        await coordinator.verify(session)
    published += second.events
    log = EventLog(tmp_path / session.session_id / "events.jsonl")
    assert session.phase is SessionPhase.COMPLETE
    assert first.events[-1].phase == "PLAN_REVIEW"
    assert log.get_events() == published
    assert_coherent(log.get_events(), SIMPLE_PLAN)


async def test_get_session_events(tmp_path: Path) -> None:
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        session = await make_coordinator(bus, tmp_path, SIMPLE_PLAN).run("an idea")
    log = EventLog(tmp_path / session.session_id / "events.jsonl")
    completed = log.get_events(event_type=ET.TASK_COMPLETED)
    assert sorted(e.task_id or "" for e in completed) == ["t1", "t2", "t3"]
    t2 = log.get_events(task_id="t2")
    assert {e.task_id for e in t2} == {"t2"}
    assert {"task_started", "llm_response_received", "diff_applied", "task_completed"} <= {
        e.event_type.value for e in t2
    }
    assert {e.agent_role for e in log.get_events(agent_role="tester")} == {"tester"}
    verification = log.get_events(phase="VERIFICATION")
    assert [e.event_type for e in verification] == [
        ET.PHASE_TRANSITION,
        ET.VERIFICATION_STARTED,
        ET.COMMAND_EXECUTED,
        ET.VERIFICATION_PASSED,
        ET.ARTIFACT_CREATED,
    ]
    assert log.count(ET.PHASE_TRANSITION) == 4
    assert log.count() == len(session.logs)
    assert log.get_latest(1)[0].event_type is ET.SESSION_COMPLETED
    started = log.get_events(event_type=ET.SESSION_STARTED)[0]
    assert log.get_events(end_time=started.timestamp)[0] == started


# --- every event type, with its fields, in a valid order --------------------------------

EVERY_PATH_PLAN = plan_of(
    task("t-ok", artifact="notes"),
    task("t-flaky", fail_attempts=1),
    task("t-patch", bad_diff_attempts=1),
    task("t-cmd", "tester", "t-ok", exit_code=0),
    task("t-review", "reviewer", "t-flaky", "t-patch"),
)
FAILING_PLAN = plan_of(
    task("t-broken", fail_attempts=9),
    task("t-after", "tester", "t-broken"),
    task("t-blocked", path="secret.txt"),
    task("t-fine"),
)


async def test_sessions_exercising_every_path_emit_every_listed_event_type(
    tmp_path: Path,
) -> None:
    gates = [FakeGate("size", plan="warn"), FakeGate("scope", block_path="secret.txt")]
    ok, ok_events = await run_session(
        tmp_path, EVERY_PATH_PLAN, question="Which Python?", gates=gates
    )
    failed, failed_events = await run_session(tmp_path, FAILING_PLAN, gates=gates)
    unverified, unverified_events = await run_session(tmp_path, verifiers=[PASSING, FAILING])
    aborted, aborted_events = await run_cancelled_session(tmp_path)
    assert [ok.phase, failed.phase, unverified.phase, aborted.phase] == [
        SessionPhase.COMPLETE,
        SessionPhase.FAILED,
        SessionPhase.FAILED,
        SessionPhase.ABORTED,
    ]
    assert LISTED_TYPES - {e.event_type for e in ok_events} == {
        ET.SESSION_FAILED,
        ET.SESSION_ABORTED,
        ET.TASK_FAILED,
        ET.TASK_SKIPPED,
        ET.GATE_BLOCKED,
        ET.VERIFICATION_FAILED,
    }
    everything = ok_events + failed_events + unverified_events + aborted_events
    assert {e.event_type for e in everything} >= LISTED_TYPES
    assert_coherent(ok_events, EVERY_PATH_PLAN)
    assert_coherent(failed_events, FAILING_PLAN)
    assert_coherent(unverified_events, SIMPLE_PLAN)
    assert_coherent(aborted_events)

    for event in everything:
        assert event.phase in {phase.value for phase in SessionPhase}
    for event in of_type(everything, ET.LLM_REQUEST_SENT):
        assert event.model in PRICES
        assert event.agent_role
        assert event.metadata["prompt_tokens"] > 0
    for event in of_type(everything, ET.LLM_RESPONSE_RECEIVED):
        usage = event.metadata
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] == 120
        price = PRICES[event.model or ""]
        assert usage["cost_usd"] == pytest.approx(price.cost(100, 20))
    for event in of_type(everything, ET.MODEL_ROUTED):
        assert event.model == ("large" if event.agent_role == "planner" else "small")
    for event in of_type(everything, ET.AGENT_INVOKED, ET.AGENT_RESPONSE):
        assert event.agent_role in ("planner", "coder", "tester", "reviewer")
    for event in of_type(everything, ET.GATE_EVALUATED, ET.GATE_WARNED, ET.GATE_BLOCKED):
        assert {"gate", "decision", "reason", "stage"} <= set(event.metadata)
    for event in of_type(everything, ET.DIFF_APPLIED):
        assert event.metadata["files"]
        assert event.task_id is not None
    for event in of_type(everything, ET.DIFF_FAILED):
        assert (
            "does not match" in event.metadata["error"]
            or "does not exist" in event.metadata["error"]
        )
    for event in of_type(everything, ET.COMMAND_EXECUTED):
        assert {"command", "exit_code", "duration_s"} <= set(event.metadata)
    for event in of_type(everything, ET.ARTIFACT_CREATED, ET.ARTIFACT_UPDATED):
        assert event.metadata["key"] in {"build_spec", "task_graph", "notes", "verification_report"}
        assert "content" in event.metadata
    answered = of_type(ok_events, ET.CLARIFICATION_ANSWERED)[0]
    assert answered.metadata == {
        "question": "Which Python?",
        "question_id": "q1",
        "answer": "answer to q1",
    }
    assert answered.agent_role == "planner"
    assert of_type(ok_events, ET.ARTIFACT_UPDATED)[0].metadata["content"]["tasks"][0] == {
        "id": "t-ok",
        "role": "coder",
        "title": "do t-ok",
        "depends_on": [],
        "status": "completed",
    }


async def test_a_retried_task_starts_once_and_completes_after_its_retry(tmp_path: Path) -> None:
    _, events = await run_session(tmp_path, EVERY_PATH_PLAN)
    assert of_task(events, "t-flaky") == [
        "task_scheduled",
        "task_started",
        "agent_invoked",
        "model_routed",
        "llm_request_sent",
        "llm_response_received",
        "error",
        "task_retrying",
        "agent_invoked",
        "model_routed",
        "llm_request_sent",
        "llm_response_received",
        "gate_evaluated",
        "diff_applied",
        "agent_response",
        "task_completed",
    ]
    patch = of_task(events, "t-patch")
    assert patch.index("diff_failed") < patch.index("task_retrying") < patch.index("diff_applied")
    completed = {e.task_id: e.metadata["attempts"] for e in of_type(events, ET.TASK_COMPLETED)}
    assert completed == {"t-ok": 1, "t-flaky": 2, "t-patch": 2, "t-cmd": 1, "t-review": 1}


async def test_legacy_logs_are_derived_from_the_events(tmp_path: Path) -> None:
    session, events = await run_session(tmp_path)
    assert session.logs == [f"[{e.event_type.value}] {e.message}" for e in events]


async def test_concurrency_is_bounded_by_max_concurrency(tmp_path: Path) -> None:
    worker = Worker()
    plan = plan_of(*(task(f"t{i}") for i in range(6)))
    _, events = await run_session(tmp_path, plan, worker=worker, max_concurrency=2)
    assert worker.max_running == 2
    running = peak = 0
    for event in events:
        if event.event_type is ET.TASK_STARTED:
            running += 1
            peak = max(peak, running)
        elif event.event_type in (ET.TASK_COMPLETED, ET.TASK_FAILED):
            running -= 1
    assert peak == 2


async def test_files_are_written_to_the_session_workspace(tmp_path: Path) -> None:
    session, _ = await run_session(tmp_path)
    assert session.workspace == tmp_path / session.session_id / "project"
    assert (session.workspace / "t2.txt").read_text() == "by tester\n"
    assert stat.S_IMODE((session.workspace / "t2.txt").stat().st_mode) & 0o044


async def test_artifacts_land_beside_the_event_log(tmp_path: Path) -> None:
    from sinks.artifacts import ArtifactSink

    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        bus.subscribe(ArtifactSink(tmp_path))
        session = await make_coordinator(bus, tmp_path, SIMPLE_PLAN).run("an idea")
    store = SessionArtifactQuery(tmp_path).store(session.session_id)
    assert store.load_artifact("build_spec") == {"idea": "an idea", "name": "demo"}
    statuses = [t["status"] for t in store.load_artifact("task_graph")["tasks"]]
    assert statuses == ["completed"] * 3
    assert store.load_artifact("verification_report")["passed"] is True
    summary = store.load_artifact("run_summary")
    assert (summary["status"], summary["tasks_completed"], summary["llm_calls"]) == (
        "completed",
        3,
        4,
    )


# --- terminal events ---------------------------------------------------------------


async def test_a_failing_task_skips_its_dependents_and_fails_the_session(
    tmp_path: Path,
) -> None:
    plan = plan_of(
        task("t-broken", fail_attempts=9), task("t-after", "tester", "t-broken"), task("t-fine")
    )
    session, events = await run_session(tmp_path, plan)
    assert session.phase is SessionPhase.FAILED
    assert session.task_status == {
        "t-broken": TaskStatus.FAILED,
        "t-after": TaskStatus.SKIPPED,
        "t-fine": TaskStatus.COMPLETED,
    }
    failed = of_type(events, ET.TASK_FAILED)[0]
    assert failed.metadata["attempts"] == 2
    assert failed.metadata["error"] == "t-broken attempt 2 broke"
    assert len(of_type(events, ET.TASK_RETRYING)) == 1
    skipped = of_type(events, ET.TASK_SKIPPED)[0]
    assert skipped.metadata["blocked_by"] == ["t-broken"]
    assert not of_type(events, ET.VERIFICATION_STARTED)
    last = events[-1]
    assert last.event_type is ET.SESSION_FAILED
    assert last.metadata["error_type"] == "TasksFailedError"
    assert last.metadata["tasks"]["failed"] == 1
    assert "t-broken" in last.message
    assert_coherent(events, plan)


async def test_a_blocking_gate_on_the_plan_fails_the_session_before_execution(
    tmp_path: Path,
) -> None:
    session, events = await run_session(tmp_path, gates=[FakeGate("policy", plan="block")])
    assert session.phase is SessionPhase.FAILED
    blocked = of_type(events, ET.GATE_BLOCKED)[0]
    assert (blocked.phase, blocked.metadata["gate"]) == ("PLAN_REVIEW", "policy")
    assert not of_type(events, ET.TASK_STARTED, ET.TASK_SCHEDULED)
    assert [e.event_type for e in events[-3:]] == [
        ET.GATE_BLOCKED,
        ET.PHASE_TRANSITION,
        ET.SESSION_FAILED,
    ]
    assert events[-1].metadata["error_type"] == "GateBlockedError"
    assert "gate 'policy' blocked the plan" in (session.error or "")
    assert_coherent(events)


async def test_a_blocking_gate_on_a_diff_fails_its_task_without_retry(tmp_path: Path) -> None:
    plan = plan_of(task("t-blocked", path="secret.txt"), task("t-fine"))
    gates = [FakeGate("scope", block_path="secret.txt")]
    session, events = await run_session(tmp_path, plan, gates=gates)
    assert of_task(events, "t-blocked")[-3:] == ["gate_blocked", "error", "task_failed"]
    assert "task_retrying" not in of_task(events, "t-blocked")
    assert not (session.workspace / "secret.txt").exists()
    assert events[-1].event_type is ET.SESSION_FAILED
    assert session.task_status["t-fine"] is TaskStatus.COMPLETED
    assert_coherent(events, plan)


async def test_a_gate_block_fails_the_task_even_if_the_agent_ignores_it(
    tmp_path: Path,
) -> None:
    plan = plan_of(task("t-sneaky", path="secret.txt", swallow_block=True))
    gates = [FakeGate("scope", block_path="secret.txt")]
    session, events = await run_session(tmp_path, plan, gates=gates)
    assert of_task(events, "t-sneaky")[-3:] == ["gate_blocked", "agent_response", "task_failed"]
    assert of_type(events, ET.TASK_FAILED)[0].metadata["error_type"] == "GateBlockedError"
    assert session.phase is SessionPhase.FAILED
    assert_coherent(events, plan)


@pytest.mark.parametrize("key", ["run_summary", "../escape", ".hidden"])
async def test_an_artifact_key_that_cannot_name_a_file_fails_the_task(
    tmp_path: Path, key: str
) -> None:
    plan = plan_of(task("t1", artifact=key))
    session, events = await run_session(tmp_path, plan)
    failed = of_type(events, ET.TASK_FAILED)[0]
    assert failed.metadata["error_type"] == "InvalidNameError"
    assert not [e for e in events if e.metadata.get("key") == key]
    assert session.phase is SessionPhase.FAILED


async def test_the_router_sees_the_task_and_none_when_planning(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None]] = []

    class RecordingRouter(StaticRouter):
        def route(self, role: str, task: TaskSpec | None) -> Route:
            seen.append((role, task.id if task else None))
            return super().route(role, task)

    await run_session(tmp_path, plan_of(task("t1")), router=RecordingRouter("small"))
    assert seen == [("planner", None), ("coder", "t1")]


async def test_a_failed_verification_fails_the_session(tmp_path: Path) -> None:
    session, events = await run_session(tmp_path, verifiers=[FAILING, PASSING])
    failed = of_type(events, ET.VERIFICATION_FAILED)[0]
    assert failed.metadata["verifier"] == "fails"
    command = of_type(events, ET.COMMAND_EXECUTED)[0]
    assert command.metadata["exit_code"] == 3
    assert command.parent_id == failed.parent_id
    assert len(of_type(events, ET.VERIFICATION_PASSED)) == 1  # every verifier runs
    assert events[-1].event_type is ET.SESSION_FAILED
    assert events[-1].metadata["error_type"] == "VerificationFailedError"
    assert session.phase is SessionPhase.FAILED
    assert_coherent(events, SIMPLE_PLAN)


async def test_a_cancelled_session_ends_with_session_aborted(tmp_path: Path) -> None:
    session, events = await run_cancelled_session(tmp_path)
    assert session.phase is SessionPhase.ABORTED
    hung = of_type(events, ET.TASK_FAILED)[0]
    assert (hung.task_id, hung.metadata["cancelled"]) == ("t-hang", True)
    skipped = of_type(events, ET.TASK_SKIPPED)[0]
    assert (skipped.task_id, skipped.metadata["reason"]) == ("t-next", "session aborted")
    assert [e.event_type for e in events[-2:]] == [ET.PHASE_TRANSITION, ET.SESSION_ABORTED]
    assert events[-2].metadata == {"old_phase": "EXECUTION", "new_phase": "ABORTED"}
    assert_coherent(events)


async def test_the_stream_reloads_from_disk_equal_to_what_was_published(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))
        bus.subscribe(sink)
        session = await make_coordinator(
            bus, tmp_path, EVERY_PATH_PLAN, question="Which Python?"
        ).run("an idea")
    reloaded = EventLog(tmp_path / session.session_id / "events.jsonl").get_events()
    assert reloaded == sink.events
    assert [e.to_dict() for e in reloaded] == [e.to_dict() for e in sink.events]


# --- misuse and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "reason"),
    [
        pytest.param((task("a", "coder", "a"),), "depends on itself", id="self-dependency"),
        pytest.param((task("a", "coder", "b"), task("b", "coder", "a")), "cycle", id="cycle"),
        pytest.param((task("a", "coder", "nope"),), "unknown task 'nope'", id="unknown"),
        pytest.param((task("a"), task("a")), "used twice", id="duplicate"),
        pytest.param((task("a", "painter"),), "'painter' agent", id="missing-agent"),
        pytest.param((), "no tasks", id="empty"),
    ],
)
async def test_an_invalid_plan_fails_the_session(
    tmp_path: Path, tasks: tuple[TaskSpec, ...], reason: str
) -> None:
    session, events = await run_session(tmp_path, plan_of(*tasks))
    assert session.phase is SessionPhase.FAILED
    assert events[-1].metadata["error_type"] == "PlanError"
    assert reason in (session.error or "")
    assert_coherent(events)


async def test_asking_without_a_clarifier_fails_the_session(tmp_path: Path) -> None:
    session, events = await run_session(tmp_path, question="Which Python?", clarifier=None)
    assert session.phase is SessionPhase.FAILED
    assert "no clarifier" in (session.error or "")
    assert not of_type(events, ET.CLARIFICATION_REQUESTED)


async def test_an_unexpected_error_propagates_after_session_failed(tmp_path: Path) -> None:
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        coordinator = make_coordinator(bus, tmp_path, SIMPLE_PLAN, crash=True)
        with pytest.raises(RuntimeError, match="planner crashed"):
            await coordinator.run("an idea", session_id="crashing")
        await bus.flush()
    assert coordinator.get_session("crashing").phase is SessionPhase.FAILED
    assert sink.events[-1].event_type is ET.SESSION_FAILED
    assert sink.events[-1].metadata["error_type"] == "RuntimeError"
    assert_coherent(sink.events)


async def test_a_step_in_the_wrong_phase_raises_phase_error(tmp_path: Path) -> None:
    async with EventBus() as bus:
        coordinator = make_coordinator(bus, tmp_path, SIMPLE_PLAN)
        session = await coordinator.start_session("an idea", session_id="early")
        with pytest.raises(PhaseError, match="in phase IDEA, expected PLAN_REVIEW"):
            await coordinator.execute(session)


async def test_session_ids_must_be_safe_directory_names(tmp_path: Path) -> None:
    async with EventBus() as bus:
        coordinator = make_coordinator(bus, tmp_path, SIMPLE_PLAN)
        with pytest.raises(ValueError, match="invalid session id"):
            await coordinator.start_session("an idea", session_id="../escape")


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
async def test_agents_read_and_run_inside_the_workspace_only(tmp_path: Path) -> None:
    """Paths are followed through symlinks that stay in the workspace (itself a link here);
    anything leading out, by a link, ``..`` or an absolute path, is refused."""
    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    async with EventBus() as bus:
        coordinator = make_coordinator(bus, tmp_path / "root", SIMPLE_PLAN)
        session = await coordinator.start_session("an idea", session_id="s1")
        workspace = session.workspace
        (workspace / "app").mkdir()
        (workspace / "app" / "a.txt").write_text("a")
        (workspace / "alias.txt").symlink_to(workspace / "app" / "a.txt")
        (workspace / "linked").symlink_to(workspace / "app")
        (workspace / "out.txt").symlink_to(outside)
        (workspace / "escape").symlink_to(tmp_path)
        context = AgentContext(
            coordinator, session, coordinator.emitter(session), task("t1"), attempt=1
        )
        inside = ["app/a.txt", "./app//a.txt", "alias.txt", "linked/a.txt", "app/../app/a.txt"]
        for path in [*inside, f"{workspace}/app/a.txt"]:
            assert context.read_text(path) == "a", path
        assert context.read_text("app/missing.txt") is None
        assert context.read_text("missing/deeper.txt") is None
        for path in ["out.txt", "escape/outside.txt", "../../outside.txt", str(outside)]:
            with pytest.raises(ValueError, match="is outside the workspace"):
                context.read_text(path)
        with pytest.raises(ValueError, match="cwd 'escape' is outside the workspace"):
            await context.run_command([sys.executable, "-c", "pass"], cwd="escape")
        where = [sys.executable, "-c", "import os; print(os.getcwd())"]
        result = await context.run_command(where, cwd="linked")
        assert result.output.strip() == str((workspace / "app").resolve())
