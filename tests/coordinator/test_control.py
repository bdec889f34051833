"""SessionCoordinator under control: pause, resume, abort, answers and approvals.

Commands come in process (``coordinator.pause(...)``) or through the session's
inbox (``submit_command``); each is applied at most once per id, and every
outcome is an event in the log, after the event of its effect.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _polling import poll_until
from eventbus import Event, EventBus, EventType
from eventbus.coordinator import (
    Agent,
    AgentContext,
    AgentResult,
    Command,
    CommandOutcome,
    Gate,
    HumanClarifier,
    HumanGate,
    HumanTimeoutError,
    ModelRequest,
    ModelResponse,
    Plan,
    Session,
    SessionCoordinator,
    SessionPhase,
    StaticRouter,
    TaskSpec,
    make_unified_diff,
    submit_command,
)
from sinks.jsonl import EventLog, JsonlSink

pytestmark = pytest.mark.anyio

ET = EventType
PLAN = Plan(tasks=(TaskSpec(id="t1", role="worker"),))
WAIT = 10  # seconds any step of a test may take before it fails


# --- fakes ----------------------------------------------------------------------------


class Recorder:
    """A sink keeping every event; :meth:`wait_for` waits until one matches."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    async def write(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self._changed.set()
        self._changed = anyio.Event()

    async def aclose(self) -> None:
        """Nothing to release."""

    def of(self, event_type: EventType, **metadata: Any) -> list[Event]:
        return [
            event
            for event in self.events
            if event.event_type is event_type
            and all(event.metadata.get(key) == value for key, value in metadata.items())
        ]

    async def wait_for(self, event_type: EventType, **metadata: Any) -> Event:
        with anyio.fail_after(WAIT):
            while not self.of(event_type, **metadata):
                await self._changed.wait()
        return self.of(event_type, **metadata)[0]

    async def wait_count(self, event_type: EventType, count: int) -> None:
        with anyio.fail_after(WAIT):
            while len(self.of(event_type)) < count:
                await self._changed.wait()

    def index(self, event_type: EventType, **metadata: Any) -> int:
        (found,) = self.of(event_type, **metadata)
        return self.events.index(found)

    def types(self) -> list[EventType]:
        return [event.event_type for event in self.events]


class Model:
    """A model whose calls can be held: with ``release`` set, calls wait for it (only the
    calls of the role ``hold``, if given)."""

    def __init__(self, hold: str | None = None) -> None:
        self.calls = 0
        self.entered = anyio.Event()
        self.release: anyio.Event | None = None
        self.cancelled = False
        self.hold = hold

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.hold is not None and request.role != self.hold:
            return ModelResponse(text="ok", prompt_tokens=10, completion_tokens=2)
        self.entered.set()
        if self.release is not None:
            try:
                await self.release.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled = True
                raise
        await anyio.lowlevel.checkpoint()
        return ModelResponse(text="ok", prompt_tokens=10, completion_tokens=2)


class Planner:
    def __init__(self, question: str | None = None, calls: int = 2) -> None:
        self.question = question
        self.calls = calls
        self.answer: str | None = None

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete("plan it")
        if self.question is not None:
            self.answer = await context.ask(self.question)
        for _ in range(self.calls - 1):
            await context.complete("plan it again")
        return AgentResult(summary="planned", plan=PLAN)


class Worker:
    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = command

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"do {task.id}")
        if self.command is not None:
            await context.run_command(self.command)
        return AgentResult(summary="done")


class Run:
    """A coordinator on a bus with a JSONL log and a recorder, reading its inbox."""

    def __init__(self, coordinator: SessionCoordinator, recorder: Recorder, root: Path) -> None:
        self.coordinator = coordinator
        self.recorder = recorder
        self.root = root
        self.session: Session | None = None
        self.done = anyio.Event()

    async def run(self, session_id: str = "s1") -> None:
        try:
            self.session = await self.coordinator.run("an idea", session_id=session_id)
        finally:
            self.done.set()

    async def finished(self) -> Session:
        with anyio.fail_after(WAIT):
            await self.done.wait()
        assert self.session is not None
        return self.session

    def submit(self, **fields: Any) -> Command:
        return submit_command(self.root, "s1", Command(**fields))

    def log(self) -> list[Event]:
        return EventLog(self.root / "s1" / "events.jsonl").get_events()


@asynccontextmanager
async def running(
    root: Path,
    *,
    model: Model | None = None,
    planner: Planner | None = None,
    worker: Agent | None = None,
    gates: Sequence[Gate] = (),
    clarifier: HumanClarifier | None = None,
    start: bool = True,
) -> AsyncIterator[Run]:
    """Run a session ``s1`` under ``root`` in the background (unless ``start`` is false)."""
    recorder = Recorder()
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(root))
        bus.subscribe(recorder)
        coordinator = SessionCoordinator(
            bus,
            workspace_root=root,
            agents={"planner": planner or Planner(), "worker": worker or Worker()},
            model_client=model or Model(),
            router=StaticRouter("m"),
            gates=gates,
            clarifier=clarifier,
            control=root,
            control_poll=0.005,
        )
        run = Run(coordinator, recorder, root)
        async with anyio.create_task_group() as group:
            if start:
                group.start_soon(run.run)
            yield run
            with anyio.fail_after(WAIT):
                await run.done.wait()


def outcomes(events: Sequence[Event], command_id: str) -> list[Event]:
    return [
        event
        for event in events
        if event.event_type in (ET.CONTROL_APPLIED, ET.CONTROL_REJECTED)
        and event.metadata["command_id"] == command_id
    ]


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            return file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # pragma: no cover - no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


async def poll(check: Callable[[], bool], what: str) -> None:
    """Wait (at most WAIT seconds) until ``check()`` holds: for what another process does."""
    with anyio.fail_after(WAIT):
        await poll_until(check)
    assert check(), what


# --- pause and resume ---------------------------------------------------------------


class TestPause:
    async def test_a_running_call_finishes_and_the_next_waits_until_resumed(
        self, tmp_path: Path
    ) -> None:
        """Paused, the model call under way ends; the task's next call waits for resume."""
        model = Model()
        model.release = anyio.Event()
        async with running(tmp_path, model=model) as run:
            with anyio.fail_after(WAIT):
                await model.entered.wait()
            paused = await run.coordinator.pause("s1", reason="coffee", actor="ana")
            assert paused == CommandOutcome(
                command_id=paused.command_id, kind="pause", status="applied", reason="coffee"
            )
            model.release.set()
            await run.recorder.wait_for(ET.LLM_RESPONSE_RECEIVED)
            await anyio.wait_all_tasks_blocked()
            assert model.calls == 1  # the planner's second call waits
            assert (await run.coordinator.resume("s1")).status == "applied"
            session = await run.finished()
        assert session.phase is SessionPhase.COMPLETE
        assert model.calls == 3
        recorder = run.recorder
        pause_at = recorder.index(ET.SESSION_PAUSED)
        assert recorder.events[pause_at].metadata["actor"] == "ana"
        assert pause_at < recorder.index(ET.CONTROL_APPLIED, command_id=paused.command_id)
        requests = [i for i, kind in enumerate(recorder.types()) if kind is ET.LLM_REQUEST_SENT]
        assert requests[1] > recorder.index(ET.SESSION_RESUMED)

    async def test_a_task_waits_at_its_next_command_while_paused(self, tmp_path: Path) -> None:
        """The model call under way ends; the command after it starts only once resumed."""
        model = Model(hold="worker")
        model.release = anyio.Event()
        marker = tmp_path / "ran"
        worker = Worker([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
        async with running(tmp_path, model=model, worker=worker) as run:
            with anyio.fail_after(WAIT):
                await model.entered.wait()  # the worker's call is under way
            await run.coordinator.pause("s1")
            model.release.set()
            await run.recorder.wait_count(ET.LLM_RESPONSE_RECEIVED, 3)  # the call ended
            await anyio.wait_all_tasks_blocked()
            assert not marker.exists()
            assert not run.recorder.of(ET.COMMAND_EXECUTED)
            await run.coordinator.resume("s1")
        assert marker.exists()
        assert run.recorder.index(ET.SESSION_RESUMED) < run.recorder.index(ET.COMMAND_EXECUTED)

    async def test_a_pause_while_paused_and_a_resume_while_running_are_rejected(
        self, tmp_path: Path
    ) -> None:
        """They do not apply now: rejected with the reason, nothing changes."""
        model = Model()
        model.release = anyio.Event()
        async with running(tmp_path, model=model) as run:
            with anyio.fail_after(WAIT):
                await model.entered.wait()
            resumed = await run.coordinator.resume("s1")
            assert (resumed.status, resumed.reason) == ("rejected", "the session is not paused")
            await run.coordinator.pause("s1")
            again = await run.coordinator.pause("s1")
            assert (again.status, again.reason) == ("rejected", "the session is already paused")
            model.release.set()
            await run.coordinator.resume("s1")
        assert len(run.recorder.of(ET.SESSION_PAUSED)) == 1
        assert len(run.recorder.of(ET.SESSION_RESUMED)) == 1
        rejected = run.recorder.of(ET.CONTROL_REJECTED, command_id=again.command_id)
        assert rejected[0].metadata["reason"] == "the session is already paused"

    async def test_answers_are_taken_while_paused(self, tmp_path: Path) -> None:
        """A person answers a paused session's question; the task goes on once resumed."""
        model = Model()
        planner = Planner(question="Which Python?")
        async with running(
            tmp_path, model=model, planner=planner, clarifier=HumanClarifier()
        ) as run:
            await run.recorder.wait_for(ET.CLARIFICATION_REQUESTED)
            await run.coordinator.pause("s1")
            answered = await run.coordinator.answer("s1", "q1", "3.12", actor="ana")
            assert answered.status == "applied"
            assert planner.answer == "3.12"
            await anyio.wait_all_tasks_blocked()
            assert model.calls == 1  # the planner's next call waits for resume
            await run.coordinator.resume("s1")
        answer = run.recorder.of(ET.CLARIFICATION_ANSWERED)[0]
        assert (answer.metadata["answer"], answer.metadata["actor"]) == ("3.12", "ana")
        assert run.recorder.index(ET.CLARIFICATION_ANSWERED) < run.recorder.index(
            ET.CONTROL_APPLIED, command_id=answered.command_id
        )


# --- answers and approvals ---------------------------------------------------------


class TestAnswer:
    async def test_an_unknown_or_settled_question_is_rejected(self, tmp_path: Path) -> None:
        planner = Planner(question="Which Python?")
        async with running(tmp_path, planner=planner, clarifier=HumanClarifier()) as run:
            await run.recorder.wait_for(ET.CLARIFICATION_REQUESTED)
            unknown = await run.coordinator.answer("s1", "q9", "x")
            assert unknown.reason == "no question 'q9' is waiting for a person"
            await run.coordinator.answer("s1", "q1", "3.12")
            twice = await run.coordinator.answer("s1", "q1", "3.13")
            assert twice.reason == "question 'q1' is already answered"
        assert planner.answer == "3.12"
        assert len(run.recorder.of(ET.CLARIFICATION_ANSWERED)) == 1

    async def test_a_question_nobody_answers_takes_the_default_after_the_timeout(
        self, tmp_path: Path
    ) -> None:
        planner = Planner(question="Which Python?")
        clarifier = HumanClarifier(timeout=0.01, default="any")
        async with running(tmp_path, planner=planner, clarifier=clarifier) as run:
            pass
        assert planner.answer == "any"
        assert (await run.finished()).phase is SessionPhase.COMPLETE

    async def test_a_question_nobody_answers_without_a_default_fails_the_session(
        self, tmp_path: Path
    ) -> None:
        planner = Planner(question="Which Python?")
        async with running(
            tmp_path, planner=planner, clarifier=HumanClarifier(timeout=0.01)
        ) as run:
            pass
        session = await run.finished()
        assert session.phase is SessionPhase.FAILED
        (failed,) = run.recorder.of(ET.SESSION_FAILED)
        assert failed.metadata["error_type"] == HumanTimeoutError.__name__
        assert "nobody answered question 'q1' within 0.01s" in failed.metadata["error"]


class TestApproval:
    async def test_an_approved_plan_is_executed(self, tmp_path: Path) -> None:
        """approval_requested names the request; the gate's event the decision and who."""
        async with running(tmp_path, gates=[HumanGate()]) as run:
            requested = await run.recorder.wait_for(ET.APPROVAL_REQUESTED)
            assert requested.metadata["request_id"] == "r1"
            assert requested.metadata["stage"] == "plan"
            assert requested.metadata["subject"] == "the plan: 1 task (t1)"
            approved = await run.coordinator.approve("s1", "r1", actor="ana")
            assert approved.status == "applied"
        assert (await run.finished()).phase is SessionPhase.COMPLETE
        (gate,) = run.recorder.of(ET.GATE_EVALUATED)
        assert (gate.metadata["request_id"], gate.metadata["actor"]) == ("r1", "ana")
        assert run.recorder.index(ET.GATE_EVALUATED) < run.recorder.index(
            ET.CONTROL_APPLIED, command_id=approved.command_id
        )

    async def test_a_diff_can_need_an_approval_too(self, tmp_path: Path) -> None:
        """HumanGate(stages=("diff",)): the plan passes; the task's diff waits for a person."""

        class Writer:
            async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
                await context.apply_diff(make_unified_diff("a.txt", None, "a\n"))
                return AgentResult(summary="wrote")

        async with running(tmp_path, worker=Writer(), gates=[HumanGate(stages=("diff",))]) as run:
            requested = await run.recorder.wait_for(ET.APPROVAL_REQUESTED)
            assert (requested.task_id, requested.metadata["stage"]) == ("t1", "diff")
            assert requested.metadata["subject"] == "the diff of t1: a.txt"
            await run.coordinator.approve("s1", "r1")
        assert (await run.finished()).phase is SessionPhase.COMPLETE
        assert (tmp_path / "s1" / "project" / "a.txt").read_text() == "a\n"

    async def test_a_rejected_plan_is_not_executed(self, tmp_path: Path) -> None:
        """The gate blocks with the reason; the session fails; no task starts."""
        async with running(tmp_path, gates=[HumanGate()]) as run:
            await run.recorder.wait_for(ET.APPROVAL_REQUESTED)
            rejected = await run.coordinator.reject("s1", "r1", reason="too big", actor="ana")
            assert rejected.status == "applied"
            again = await run.coordinator.approve("s1", "r1")
        session = await run.finished()
        assert session.phase is SessionPhase.FAILED
        (blocked,) = run.recorder.of(ET.GATE_BLOCKED)
        assert blocked.metadata["reason"] == "rejected by ana: too big"
        assert blocked.metadata["request_id"] == "r1"
        assert not run.recorder.of(ET.TASK_STARTED)
        assert again.status == "rejected"
        assert again.reason in (
            "approval request 'r1' is already decided",
            "the session has ended (FAILED)",
        )


# --- abort ---------------------------------------------------------------------------


CHILD = (
    "import subprocess, sys\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "open('child.pid', 'w').write(str(child.pid))\n"
    "child.wait()\n"
)


class TestAbort:
    async def test_abort_kills_a_running_commands_process_group(self, tmp_path: Path) -> None:
        """The command and the ``sleep`` it started are killed; the session ends aborted."""
        worker = Worker([sys.executable, "-c", CHILD])
        async with running(tmp_path, worker=worker) as run:
            pid_file = tmp_path / "s1" / "project" / "child.pid"
            await poll(lambda: pid_file.exists() and pid_file.read_text() != "", "started")
            child = int(pid_file.read_text())
            outcome = await run.coordinator.abort("s1", reason="stop now", actor="ana")
            assert outcome.status == "applied"
            await poll(lambda: process_gone(child), f"the child {child} is gone")
        session = await run.finished()
        assert session.phase is SessionPhase.ABORTED
        ended = run.recorder.of(ET.SESSION_ABORTED)[0]
        assert (ended.metadata["reason"], ended.metadata["actor"]) == ("stop now", "ana")
        assert run.recorder.index(ET.SESSION_ABORTED) < run.recorder.index(
            ET.CONTROL_APPLIED, command_id=outcome.command_id
        )

    async def test_abort_cancels_an_in_flight_model_call(self, tmp_path: Path) -> None:
        model = Model()
        model.release = anyio.Event()  # never set: the call would wait forever
        async with running(tmp_path, model=model) as run:
            with anyio.fail_after(WAIT):
                await model.entered.wait()
            outcome = await run.coordinator.abort("s1", reason="wrong idea")
        assert model.cancelled
        assert outcome == CommandOutcome(
            command_id=outcome.command_id, kind="abort", status="applied", reason="wrong idea"
        )
        assert (await run.finished()).error == "wrong idea"

    async def test_commands_to_an_ended_session_are_rejected_and_ids_keep_their_outcome(
        self, tmp_path: Path
    ) -> None:
        async with running(tmp_path) as run:
            await run.finished()
            first = await run.coordinator.pause("s1")
            command = Command(kind="pause", command_id="p-1")
            assert (await run.coordinator.apply_command("s1", command)).status == "rejected"
            again = await run.coordinator.apply_command("s1", command)
        assert (first.status, first.reason) == ("rejected", "the session has ended (COMPLETE)")
        assert again.status == "rejected"
        assert len(outcomes(run.recorder.events, "p-1")) == 1


# --- the inbox -----------------------------------------------------------------------


class TestInbox:
    async def test_a_command_queued_before_the_coordinator_runs_is_applied_when_it_starts(
        self, tmp_path: Path
    ) -> None:
        """An accepted pause waits in the inbox; the coordinator applies it on start."""
        (tmp_path / "s1").mkdir()
        (tmp_path / "s1" / "events.jsonl").write_bytes(b"")
        model = Model()
        submit_command(tmp_path, "s1", Command(kind="pause", command_id="p1"))
        async with running(tmp_path, model=model) as run:
            await run.recorder.wait_for(ET.CONTROL_APPLIED, command_id="p1")
            await anyio.wait_all_tasks_blocked()
            assert model.calls == 0
            run.submit(kind="resume", command_id="r1")
            await run.recorder.wait_for(ET.CONTROL_APPLIED, command_id="r1")
        assert (await run.finished()).phase is SessionPhase.COMPLETE
        assert run.recorder.index(ET.SESSION_PAUSED) < run.recorder.index(
            ET.CONTROL_APPLIED, command_id="p1"
        )

    async def test_a_command_delivered_twice_is_applied_once_also_after_a_restart(
        self, tmp_path: Path
    ) -> None:
        """Two identical lines: one outcome; a new coordinator on the same log applies neither."""
        (tmp_path / "s1").mkdir()
        (tmp_path / "s1" / "events.jsonl").write_bytes(b"")
        pause = Command(kind="pause", command_id="p1")
        submit_command(tmp_path, "s1", pause)
        submit_command(tmp_path, "s1", pause)
        async with running(tmp_path) as run:
            await run.recorder.wait_for(ET.CONTROL_APPLIED, command_id="p1")
            run.submit(kind="resume", command_id="r1")
        assert (await run.finished()).phase is SessionPhase.COMPLETE
        assert len(outcomes(run.log(), "p1")) == 1
        async with running(tmp_path) as restarted:  # the same session, a new coordinator
            pass
        assert (await restarted.finished()).phase is SessionPhase.COMPLETE
        assert not restarted.recorder.of(ET.SESSION_PAUSED)
        assert len(outcomes(restarted.log(), "p1")) == 1
        assert len(outcomes(restarted.log(), "r1")) == 1

    async def test_an_inbox_line_that_is_no_command_is_rejected_by_its_id(
        self, tmp_path: Path
    ) -> None:
        model = Model()
        model.release = anyio.Event()
        async with running(tmp_path, model=model) as run:
            with anyio.fail_after(WAIT):
                await model.entered.wait()
            inbox = anyio.Path(tmp_path / "s1" / "control.jsonl")
            await inbox.write_bytes(
                b'{"command_id": "bad-1", "kind": "pause", "target": "q1"}\nnot json\n'
            )
            rejected = await run.recorder.wait_for(ET.CONTROL_REJECTED, command_id="bad-1")
            model.release.set()
        assert rejected.metadata["reason"] == "invalid command: pause takes no target (got 'q1')"
        assert (await run.finished()).phase is SessionPhase.COMPLETE
