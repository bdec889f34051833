"""`SessionCoordinator`: runs agent sessions and publishes what happens as events.

A session goes IDEA -> PLAN_REVIEW -> EXECUTION -> VERIFICATION -> COMPLETE,
or ends FAILED or ABORTED. :meth:`SessionCoordinator.run` does it all; the
steps are also separate calls (:meth:`~SessionCoordinator.start_session`,
:meth:`~SessionCoordinator.plan`, :meth:`~SessionCoordinator.execute`,
:meth:`~SessionCoordinator.verify`), possibly made by different coordinators
on different buses, as the seed's coordinator did.

Every event carries the session id and the current phase (and the task id
and agent role inside a task). Events outside tasks point (``parent_id``) to
``session_started``; a task's events to its ``task_started``; an LLM
response to its request. A session's last event is ``session_completed``,
``session_failed`` (a :class:`SessionError`: failed tasks, a blocking gate,
failed verification, an invalid plan; or any other exception, which then
propagates) or ``session_aborted`` (cancellation, which then propagates; or
an ``abort`` command, whose ``control_applied`` follows it).

Control (``pause``, ``resume``, ``abort``, ``answer``, ``approve``,
``reject``) is described on :class:`SessionCoordinator`; the commands, the
inbox and the people-facing clarifier and gate are in ``_commands`` and
``_control``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from .._bus import EventBus, RetryPolicy
from .._event import Event, EventType, parent_scope
from .._names import InvalidNameError, validate_name, validate_session_id
from .._redact import DEFAULT_MAX_TEXT_CHARS, Redactor, redact_secrets
from ._commands import CONTROL_FILE_NAME, LOG_FILE_NAME, Command
from ._context import Agent, AgentContext
from ._control import (
    CommandOutcome,
    HumanClarifier,
    HumanGate,
    _InboxReader,
    _SessionControl,
    read_outcomes,
)
from ._errors import (
    ClarificationUnavailableError,
    GateBlockedError,
    PhaseError,
    PlanError,
    SessionError,
    TasksFailedError,
    VerificationFailedError,
)
from ._instrument import Emitter, ModelPrice
from ._patch import PatchResult, UnifiedDiffApplier
from ._session import (
    AgentResult,
    ClarificationRequest,
    Clarifier,
    CommandResult,
    Gate,
    GateCheck,
    GateResult,
    ModelClient,
    ModelRequest,
    ModelRouter,
    ModelUsage,
    PatchApplier,
    Plan,
    Session,
    SessionPhase,
    TaskSpec,
    TaskStatus,
    Verifier,
    new_session_id,
)

__all__ = ["SessionCoordinator", "estimate_tokens"]

logger = logging.getLogger("eventbus")

_OUTPUT_LIMIT = 4000
_OUTPUT_KEEP = 64 * 1024  # bytes of a command's output held while it runs
_RUN_SUMMARY = "run_summary"
_DIFF_TARGET = re.compile(r"^\+\+\+ (?:b/)?([^\t\n]+)", re.MULTILINE)
_NOT_RETRIED = (GateBlockedError, ClarificationUnavailableError)


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters per token), used for ``llm_request_sent``
    when no ``token_counter`` is given; responses report the real usage."""
    return max(1, math.ceil(len(text) / 4))


class SessionCoordinator:
    """Runs sessions through the protocols it is given and publishes their events on ``bus``.

    :param bus: a running :class:`EventBus`; the coordinator never subscribes
        or closes it. Give it sinks (a JSONL log, an artifact store) to keep
        the events.
    :param workspace_root: sessions live in ``{workspace_root}/{session_id}``.
    :param agents: the agent of each role (the planner's role is
        ``planner_role``; every task's role needs one).
    :param model_client: answers model calls with text and token usage.
    :param router: picks the model per role.
    :param gates: evaluated on the plan and on every diff.
    :param patch_applier: applies diffs (default: :class:`UnifiedDiffApplier`).
    :param verifiers: run in the VERIFICATION phase; all must pass.
    :param clarifier: answers agents' questions (without one, asking raises).
    :param prices: per model; adds ``cost_usd`` to LLM responses.
    :param max_concurrency: how many tasks run at once.
    :param task_retry: how a failed task is retried (default: 2 retries,
        no delay). Gate blocks are never retried.
    :param token_counter: counts a prompt's tokens for ``llm_request_sent``.
    :param planner_role: the role whose agent makes the plan.
    :param abort_timeout: how long, shielded, publishing the end of a
        cancelled task or session may take before it is given up (and logged).
    :param redact: masks secrets in the prompts and responses captured in
        LLM events (``metadata["messages"]``, ``metadata["response"]``).
    :param max_text_chars: how many characters of each captured string an
        LLM event keeps (``None``: all); the full redacted text is saved as
        an artifact (see :class:`Emitter`).
    :param control: a workspace root: while :meth:`run` runs a session, it reads
        the session's inbox, ``{control}/{session_id}/control.jsonl``, where
        :func:`submit_command` (the CLI, the web API) appends commands from any
        process, and applies each (see :meth:`apply_command`). Give it the root
        the session's :class:`~sinks.jsonl.JsonlSink` writes to: the outcomes
        already in the log are never applied twice, also after a restart.
    :param control_poll: how often, in seconds, the inbox is checked (one ``fstat``).

    **Control.** A session run by :meth:`run` takes commands (:meth:`pause`,
    :meth:`resume`, :meth:`abort`, :meth:`answer`, :meth:`approve`,
    :meth:`reject`, or any :class:`Command` through :meth:`apply_command`),
    each applied at most once per ``command_id``. Pause: model calls and
    commands already running finish, nothing new starts (a task waits at its
    next model call or command, a new task before it starts); answers and
    approvals are still taken. Abort: in-flight model calls and commands are
    cancelled (each command runs in its own process group, which is killed),
    and the session ends ``session_aborted`` with the reason. Questions and
    approvals wait for a person with :class:`HumanClarifier` and :class:`HumanGate`.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        workspace_root: str | PathLike[str],
        agents: Mapping[str, Agent],
        model_client: ModelClient,
        router: ModelRouter,
        gates: Sequence[Gate] = (),
        patch_applier: PatchApplier | None = None,
        verifiers: Sequence[Verifier] = (),
        clarifier: Clarifier | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        max_concurrency: int = 4,
        task_retry: RetryPolicy | None = None,
        token_counter: Callable[[str], int] = estimate_tokens,
        planner_role: str = "planner",
        abort_timeout: float = 5.0,
        redact: Redactor = redact_secrets,
        max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
        control: str | PathLike[str] | None = None,
        control_poll: float = 0.02,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if control_poll <= 0:
            raise ValueError(f"control_poll must be > 0, got {control_poll}")
        self._control_root = None if control is None else os.fspath(control)
        self._control_poll = control_poll
        self._controls: dict[str, _SessionControl] = {}
        self.bus = bus
        self.workspace_root = Path(workspace_root)
        self._agents = dict(agents)
        self._model_client = model_client
        self._router = router
        self._gates = tuple(gates)
        self._patch_applier: PatchApplier = patch_applier or UnifiedDiffApplier()
        self._verifiers = tuple(verifiers)
        self._clarifier = clarifier
        self._prices = dict(prices or {})
        self._max_concurrency = max_concurrency
        self._task_retry = task_retry or RetryPolicy(retries=2, initial_delay=0.0)
        self._token_counter = token_counter
        self._planner_role = planner_role
        self._abort_timeout = abort_timeout
        self._redact = redact
        self._max_text_chars = max_text_chars
        self._sessions: dict[str, Session] = {}
        self._emitters: dict[str, Emitter] = {}
        self._real_workspaces: dict[Path, str] = {}

    # --- sessions -----------------------------------------------------------------

    def _inside(self, workspace: Path, relative: str) -> Path | None:
        """``workspace / relative`` with its symlinks followed; None if it leads outside.

        The workspace's real path is resolved once (once it exists); below it,
        a plain relative path costs one ``lstat`` per part, and only a path
        with a symlink, ``..`` or an absolute part takes the full resolution.
        """
        root = self._real_workspaces.get(workspace)
        if root is None:
            root = os.path.realpath(workspace)
            if os.path.isdir(root):
                self._real_workspaces[workspace] = root
        plain = _plain_join(root, relative)
        target = Path(plain) if plain is not None else (Path(root) / relative).resolve()
        return target if target.is_relative_to(root) else None

    def get_session(self, session_id: str) -> Session:
        """The session with this id, started by or given to this coordinator."""
        try:
            return self._sessions[session_id]
        except KeyError:
            raise KeyError(f"no session {session_id!r} in this coordinator") from None

    @property
    def sessions(self) -> list[Session]:
        """The sessions this coordinator has handled, oldest first."""
        return list(self._sessions.values())

    def emitter(self, session: Session) -> Emitter:
        """The :class:`Emitter` of ``session`` on this coordinator's bus."""
        emitter = self._emitters.get(session.session_id)
        if emitter is None:
            self._sessions.setdefault(session.session_id, session)
            emitter = Emitter(
                self.bus,
                session.session_id,
                phase=session.phase.value,
                on_event=session.record,
                shield_timeout=self._abort_timeout,
                redact=self._redact,
                max_text_chars=self._max_text_chars,
            )
            self._emitters[session.session_id] = emitter
        return emitter

    async def run(
        self, idea: str, *, plan: Plan | None = None, session_id: str | None = None
    ) -> Session:
        """Run a whole session for ``idea`` and return it, in a terminal phase.

        Without ``plan``, the planner agent makes one. A failure (see
        :class:`SessionError`) ends the session FAILED and is returned, not
        raised; other exceptions and cancellation propagate after
        ``session_failed`` / ``session_aborted`` is published.
        """
        session = await self.start_session(idea, session_id=session_id)
        control = self._controls[session.session_id]
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                if self._control_root is not None:
                    await group.start(self._watch_inbox, session, control)
                try:
                    with anyio.CancelScope() as control.work:
                        await self.plan(session, plan)
                        if session.phase is SessionPhase.PLAN_REVIEW:
                            await self.execute(session)
                        if session.phase is SessionPhase.EXECUTION:
                            await self.verify(session)
                except Exception as exc:  # raised as itself below, not in an exception group
                    error = exc
                control.work = None
                if control.abort is not None:
                    await self._decide(session, control, _fields(control.abort), None, shield=True)
                group.cancel_scope.cancel()
        finally:
            control.ended.set()
        if error is not None:
            raise error
        return session

    async def start_session(self, idea: str, *, session_id: str | None = None) -> Session:
        """Create a session in phase IDEA and emit ``session_started``."""
        session_id = validate_session_id(session_id or new_session_id())
        if session_id in self._sessions:
            raise ValueError(f"session {session_id!r} already exists in this coordinator")
        session = Session(session_id, idea, self.workspace_root / session_id)
        self._controls[session_id] = _SessionControl()
        await anyio.Path(session.workspace).mkdir(parents=True, exist_ok=True)
        emitter = self.emitter(session)
        started = await emitter.session_event(
            EventType.SESSION_STARTED, idea=idea, workspace=str(session.workspace)
        )
        session.started_event_id = started.id
        return session

    async def plan(self, session: Session, plan: Plan | None = None) -> Session:
        """IDEA -> PLAN_REVIEW: make the plan (the planner agent, unless ``plan`` is
        given), publish ``build_spec`` and ``task_graph``, and let the gates review it."""
        return await self._step(session, "plan", SessionPhase.IDEA, self._plan, plan)

    async def execute(self, session: Session) -> Session:
        """PLAN_REVIEW -> EXECUTION: run the task graph (dependencies, bounded
        concurrency, retries); dependents of a failed task are skipped."""
        return await self._step(session, "execute", SessionPhase.PLAN_REVIEW, self._execute, None)

    async def verify(self, session: Session) -> Session:
        """EXECUTION -> VERIFICATION -> COMPLETE: run every verifier's commands."""
        return await self._step(session, "verify", SessionPhase.EXECUTION, self._verify, None)

    async def _step(
        self,
        session: Session,
        action: str,
        expected: SessionPhase,
        body: Callable[[Session, Emitter, Plan | None], Awaitable[None]],
        plan: Plan | None,
    ) -> Session:
        if session.phase is not expected:
            raise PhaseError(session.session_id, action, session.phase.value, expected.value)
        emitter = self.emitter(session)
        with parent_scope(session.started_event_id):
            try:
                await body(session, emitter, plan)
            except SessionError as exc:
                await self._end_failed(session, emitter, exc)
            except Exception as exc:
                await self._end_failed(session, emitter, exc)
                raise
            except BaseException as exc:
                await self._end_aborted(session, emitter, exc)
                raise
        return session

    async def _transition(self, session: Session, emitter: Emitter, phase: SessionPhase) -> None:
        session.phase = phase
        await emitter.transition(phase.value)

    async def _end_failed(self, session: Session, emitter: Emitter, exc: Exception) -> None:
        session.error = str(exc) or repr(exc)
        await self._transition(session, emitter, SessionPhase.FAILED)
        await emitter.session_event(
            EventType.SESSION_FAILED,
            message=f"Session failed: {session.session_id}: {session.error}",
            error_type=type(exc).__name__,
            error=session.error,
            **session.summary(),
        )

    async def _end_aborted(self, session: Session, emitter: Emitter, exc: BaseException) -> None:
        session.error = "aborted" if isinstance(exc, anyio.get_cancelled_exc_class()) else repr(exc)
        control = self._controls.get(session.session_id)
        by: dict[str, Any] = {}
        if control is not None and control.abort is not None:
            command = control.abort
            session.error = command.reason or f"aborted by {command.actor}"
            by = {"actor": command.actor, "command_id": command.command_id}
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self._abort_timeout
            roles = {task.id: task.role for task in session.plan.tasks} if session.plan else {}
            for task_id in session.tasks_with(TaskStatus.PENDING):
                session.task_status[task_id] = TaskStatus.SKIPPED
                await emitter.task_event(
                    EventType.TASK_SKIPPED,
                    task_id,
                    role=roles.get(task_id),
                    reason="session aborted",
                    message=f"Task skipped: {task_id} (session aborted)",
                )
            await self._transition(session, emitter, SessionPhase.ABORTED)
            await emitter.session_event(
                EventType.SESSION_ABORTED,
                message=f"Session aborted: {session.session_id}: {session.error}",
                reason=session.error,
                **by,
                **session.summary(),
            )
        if scope.cancelled_caught:
            logger.error("session %s: could not publish its abort in time", session.session_id)

    # --- IDEA and PLAN_REVIEW --------------------------------------------------------

    async def _plan(self, session: Session, emitter: Emitter, plan: Plan | None) -> None:
        if plan is None:
            plan = await self._make_plan(session, emitter)
        tasks = _ordered(plan, self._agents)
        session.plan = plan
        session.task_status = {task.id: TaskStatus.PENDING for task in plan.tasks}
        await self._save_artifact(
            session, emitter, "build_spec", {"idea": session.idea, **plan.spec}
        )
        await self._save_artifact(session, emitter, "task_graph", _graph(session, tasks))
        await self._transition(session, emitter, SessionPhase.PLAN_REVIEW)
        await self._run_gates(
            session,
            emitter,
            GateCheck(stage="plan", session_id=session.session_id, plan=plan),
            "the plan",
        )

    async def _make_plan(self, session: Session, emitter: Emitter) -> Plan:
        planner = self._agents.get(self._planner_role)
        if planner is None:
            raise PlanError(f"no plan was given and there is no {self._planner_role!r} agent")
        task = TaskSpec(
            id="plan",
            role=self._planner_role,
            title="Plan the session",
            description=session.idea,
        )
        context = AgentContext(self, session, emitter, task, attempt=1)
        async with emitter.agent(self._planner_role) as call:
            result = await planner.run(task, context)
            call.set_result(summary=result.summary)
        if context._blocked is not None:
            raise context._blocked
        if result.plan is None:
            raise PlanError(f"the {self._planner_role!r} agent returned no plan")
        return result.plan

    async def _run_gates(
        self, session: Session, emitter: Emitter, check: GateCheck, subject: str
    ) -> None:
        blocked: GateBlockedError | None = None
        control = self._controls.get(session.session_id)
        for gate in self._gates:
            if isinstance(gate, HumanGate) and gate.asks(check) and control is not None:
                result = await self._ask_approval(session, emitter, control, gate, check, subject)
            else:
                result = await gate.evaluate(check)
                await emitter.gate(
                    gate.name, result.decision, reason=result.reason, stage=check.stage
                )
            if result.decision == "block" and blocked is None:
                blocked = GateBlockedError(gate.name, subject, result.reason)
        if blocked is not None:
            raise blocked

    async def _ask_approval(
        self,
        session: Session,
        emitter: Emitter,
        control: _SessionControl,
        gate: HumanGate,
        check: GateCheck,
        subject: str,
    ) -> GateResult:
        """Log ``approval_requested``, wait for a person's decision, log the gate's event."""
        control.approvals += 1
        request_id = f"r{control.approvals}"
        task_id = check.task.id if check.task is not None else None
        what = _approval_subject(check, subject)
        await emitter.emit(
            Event(
                event_type=EventType.APPROVAL_REQUESTED,
                session_id=session.session_id,
                message=f"Approval requested ({gate.name}): {what}",
                task_id=task_id,
                metadata={
                    "request_id": request_id,
                    "subject": what,
                    "stage": check.stage,
                    "gate": gate.name,
                    "task": task_id,
                },
            )
        )

        def deliver(command: Command) -> bool:
            return gate.deliver(
                session.session_id,
                request_id,
                approved=command.kind == "approve",
                actor=command.actor,
                reason=command.reason,
            )

        with control.request("approval", request_id) as waiting:
            waiting.deliver = deliver
            result = await gate.evaluate(msgspec.structs.replace(check, request_id=request_id))
            await emitter.gate(
                gate.name,
                result.decision,
                reason=result.reason,
                stage=check.stage,
                request_id=request_id,
                **waiting.answered_by(),
            )
        return result

    # --- EXECUTION -----------------------------------------------------------------

    async def _execute(self, session: Session, emitter: Emitter, _: Plan | None) -> None:
        assert session.plan is not None
        tasks = _ordered(session.plan, self._agents)
        await self._transition(session, emitter, SessionPhase.EXECUTION)
        await emitter.note(
            "Task graph enqueued for execution",
            tasks=len(tasks),
            max_concurrency=self._max_concurrency,
        )
        for task in tasks:
            await emitter.task_event(
                EventType.TASK_SCHEDULED,
                task.id,
                role=task.role,
                title=task.title,
                depends_on=list(task.depends_on),
            )
        done = {task.id: anyio.Event() for task in tasks}
        limiter = anyio.CapacityLimiter(self._max_concurrency)
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(self._run_node, session, emitter, task, done, limiter)
        await self._save_artifact(session, emitter, "task_graph", _graph(session, tasks))
        failed = session.tasks_with(TaskStatus.FAILED)
        if failed:
            raise TasksFailedError(failed, session.tasks_with(TaskStatus.SKIPPED))

    async def _run_node(
        self,
        session: Session,
        emitter: Emitter,
        task: TaskSpec,
        done: dict[str, anyio.Event],
        limiter: anyio.CapacityLimiter,
    ) -> None:
        try:
            for dependency in task.depends_on:
                await done[dependency].wait()
            blocking = [
                dependency
                for dependency in task.depends_on
                if session.task_status[dependency] is not TaskStatus.COMPLETED
            ]
            if blocking:
                session.task_status[task.id] = TaskStatus.SKIPPED
                await emitter.task_event(
                    EventType.TASK_SKIPPED,
                    task.id,
                    role=task.role,
                    message=f"Task skipped: {task.id} (depends on {', '.join(blocking)})",
                    reason="dependency did not complete",
                    blocked_by=blocking,
                )
                return
            async with limiter:
                await self._until_resumed(session.session_id)  # paused: no task starts
                await self._run_task(session, emitter, task)
        finally:
            done[task.id].set()

    async def _run_task(self, session: Session, emitter: Emitter, task: TaskSpec) -> None:
        session.task_status[task.id] = TaskStatus.RUNNING
        delays = self._task_retry.delays()
        try:
            async with emitter.task(task.id, role=task.role, title=task.title) as span:
                attempt = 1
                while True:
                    span.set_result(attempts=attempt)
                    try:
                        result = await self._attempt(session, emitter, task, attempt)
                    except _NOT_RETRIED:
                        raise
                    except Exception as exc:
                        if attempt > len(delays):
                            raise
                        delay = delays[attempt - 1]
                        await span.retrying(exc, attempt=attempt, delay_s=delay)
                        if delay > 0:
                            await anyio.sleep(delay)
                        attempt += 1
                        continue
                    span.set_result(summary=result.summary)
                    break
        except Exception as exc:
            # Reported by the span's task_failed event; the graph goes on.
            session.task_status[task.id] = TaskStatus.FAILED
            session.errors[task.id] = str(exc) or repr(exc)
            return
        except BaseException:
            session.task_status[task.id] = TaskStatus.FAILED
            session.errors[task.id] = "cancelled"
            raise
        session.task_status[task.id] = TaskStatus.COMPLETED
        session.results[task.id] = result

    async def _attempt(
        self, session: Session, emitter: Emitter, task: TaskSpec, attempt: int
    ) -> AgentResult:
        context = AgentContext(self, session, emitter, task, attempt=attempt)
        async with emitter.agent(task.role, attempt=attempt) as call:
            result = await self._agents[task.role].run(task, context)
            call.set_result(summary=result.summary)
        if context._blocked is not None:
            raise context._blocked
        return result

    # --- VERIFICATION ---------------------------------------------------------------

    async def _verify(self, session: Session, emitter: Emitter, _: Plan | None) -> None:
        await self._transition(session, emitter, SessionPhase.VERIFICATION)
        failure: VerificationFailedError | None = None
        report: list[dict[str, Any]] = []
        for verifier in self._verifiers:
            async with emitter.verification(verifier.name) as span:
                for command in verifier.commands(session.workspace):
                    result = await self._run_command(emitter, command, session.workspace, ".")
                    report.append(
                        {
                            "verifier": verifier.name,
                            "command": shlex.join(result.command),
                            "exit_code": result.exit_code,
                            "duration_s": result.duration_s,
                        }
                    )
                    if not result.ok:
                        span.fail(f"{shlex.join(result.command)} exited with {result.exit_code}")
                        failure = failure or VerificationFailedError(
                            verifier.name, result.command, result.exit_code
                        )
                        break
                span.set_result(commands=len(report))
        await self._save_artifact(
            session,
            emitter,
            "verification_report",
            {"passed": failure is None, "commands": report},
        )
        if failure is not None:
            raise failure
        await self._transition(session, emitter, SessionPhase.COMPLETE)
        await emitter.session_event(EventType.SESSION_COMPLETED, **session.summary())

    # --- control -------------------------------------------------------------------------

    async def apply_command(self, session_id: str, command: Command) -> CommandOutcome:
        """Apply ``command`` to session ``session_id`` now; return what became of it.

        A command is applied at most once per ``command_id``: sent again, it
        returns the first outcome and logs nothing. One that does not apply now
        (an unknown or settled target, ``resume`` when not paused, a session
        that has ended) is rejected with a reason and changes nothing. The
        effect's event (``session_paused``, ``clarification_answered``, a gate's
        event, ``session_aborted``) is published before ``control_applied``.
        An ``abort`` returns once the session has ended.

        :raises KeyError: this coordinator has no session ``session_id``.
        """
        session = self.get_session(session_id)
        control = self._controls[session_id]
        outcome = await self._take(session, control, command)
        if outcome is None:  # an abort: its outcome is logged once the session has ended
            await control.ended.wait()
            outcome = control.decided.get(command.command_id) or CommandOutcome(
                command_id=command.command_id,
                kind=command.kind,
                status="rejected",
                reason="the session was cancelled before the abort was applied",
            )
        return outcome

    async def pause(
        self, session_id: str, *, reason: str | None = None, actor: str = "api"
    ) -> CommandOutcome:
        """Pause the session: what runs finishes, nothing new starts (see the class)."""
        return await self.apply_command(
            session_id, Command(kind="pause", reason=reason, actor=actor)
        )

    async def resume(
        self, session_id: str, *, reason: str | None = None, actor: str = "api"
    ) -> CommandOutcome:
        """Resume a paused session."""
        return await self.apply_command(
            session_id, Command(kind="resume", reason=reason, actor=actor)
        )

    async def abort(
        self, session_id: str, *, reason: str | None = None, actor: str = "api"
    ) -> CommandOutcome:
        """Abort the session now; return once it has ended ``session_aborted``."""
        return await self.apply_command(
            session_id, Command(kind="abort", reason=reason, actor=actor)
        )

    async def answer(
        self, session_id: str, question_id: str, text: str, *, actor: str = "api"
    ) -> CommandOutcome:
        """Answer the question ``question_id`` waiting for a person (a :class:`HumanClarifier`)."""
        return await self.apply_command(
            session_id, Command(kind="answer", target=question_id, text=text, actor=actor)
        )

    async def approve(
        self, session_id: str, request_id: str, *, reason: str | None = None, actor: str = "api"
    ) -> CommandOutcome:
        """Approve the request ``request_id`` waiting for a person (a :class:`HumanGate`)."""
        return await self.apply_command(
            session_id, Command(kind="approve", target=request_id, reason=reason, actor=actor)
        )

    async def reject(
        self, session_id: str, request_id: str, *, reason: str | None = None, actor: str = "api"
    ) -> CommandOutcome:
        """Reject the request ``request_id``: the gate blocks, with ``reason`` in its event."""
        return await self.apply_command(
            session_id, Command(kind="reject", target=request_id, reason=reason, actor=actor)
        )

    async def _take(
        self, session: Session, control: _SessionControl, command: Command
    ) -> CommandOutcome | None:
        """Apply ``command`` once; ``None`` for an abort under way (logged when it is done)."""
        async with control.lock:
            known = control.decided.get(command.command_id)
            if known is not None:
                return known
            if control.abort is not None and control.abort.command_id == command.command_id:
                return None
            running = control.work is not None and not session.phase.is_terminal
            if command.kind == "abort" and running:
                assert control.work is not None
                control.abort = command
                control.work.cancel()
                return None
            reason = await self._apply(session, control, command)
            return await self._decide(session, control, _fields(command), reason)

    async def _apply(
        self, session: Session, control: _SessionControl, command: Command
    ) -> str | None:
        """Carry ``command`` out; ``None`` if it applied, else why not (nothing changed)."""
        if session.phase.is_terminal:
            return f"the session has ended ({session.phase.value})"
        kind = command.kind
        by = {"actor": command.actor, "command_id": command.command_id}
        if kind == "abort":
            return "the session is not run by SessionCoordinator.run(): cancel the step instead"
        if kind in ("pause", "resume"):
            if control.paused is (kind == "pause"):
                return (
                    "the session is already paused"
                    if control.paused
                    else "the session is not paused"
                )
            control.paused = kind == "pause"
            if control.paused:
                control.resumed = anyio.Event()
            else:
                control.resumed.set()
            verb = "paused" if control.paused else "resumed"
            await self.emitter(session).emit(
                Event(
                    event_type=EventType.SESSION_PAUSED
                    if control.paused
                    else EventType.SESSION_RESUMED,
                    session_id=session.session_id,
                    message=f"Session {verb} by {command.actor}"
                    + (f": {command.reason}" if command.reason else ""),
                    metadata={"reason": command.reason, **by},
                )
            )
            return None
        assert command.target is not None
        answer = kind == "answer"
        noun = "question" if answer else "approval request"
        request = control.waiting.get(command.target)
        if request is None or request.kind != ("clarification" if answer else "approval"):
            if command.target in control.settled:
                return f"{noun} {command.target!r} is already {'answered' if answer else 'decided'}"
            return f"no {noun} {command.target!r} is waiting for a person"
        request.command = command
        if not request.deliver(command):
            request.command = None
            return f"{noun} {command.target!r} is no longer waiting (its time ran out)"
        await request.recorded.wait()  # the answer's event comes first
        return None

    async def _decide(
        self,
        session: Session,
        control: _SessionControl,
        fields: dict[str, Any],
        rejected: str | None,
        *,
        shield: bool = False,
    ) -> CommandOutcome:
        """Record and publish a command's outcome: ``control_applied``, or
        ``control_rejected`` with the reason it was ``rejected``."""
        metadata = {**fields, "reason": fields["reason"] if rejected is None else rejected}
        outcome = CommandOutcome(
            command_id=metadata["command_id"],
            kind=metadata["kind"],
            status="applied" if rejected is None else "rejected",
            reason=metadata["reason"],
        )
        control.decided[outcome.command_id] = outcome
        target = f" {metadata['target']}" if metadata["target"] else ""
        await self.emitter(session).emit(
            Event(
                event_type=EventType.CONTROL_APPLIED
                if rejected is None
                else EventType.CONTROL_REJECTED,
                session_id=session.session_id,
                message=f"Command {outcome.kind}{target} from {metadata['actor']} "
                + ("applied" if rejected is None else f"rejected: {rejected}"),
                metadata=metadata,
            ),
            shield=shield,
        )
        return outcome

    async def _watch_inbox(
        self,
        session: Session,
        control: _SessionControl,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply the commands of the session's inbox: those there now, then each new one."""
        assert self._control_root is not None
        directory = os.path.join(self._control_root, session.session_id)
        logged = await anyio.to_thread.run_sync(
            read_outcomes, os.path.join(directory, LOG_FILE_NAME)
        )
        for command_id, outcome in logged.items():
            control.decided.setdefault(command_id, outcome)
        reader = _InboxReader(os.path.join(directory, CONTROL_FILE_NAME))
        try:
            with parent_scope(session.started_event_id):
                await self._take_lines(session, control, reader)
                task_status.started()
                while True:
                    await anyio.sleep(self._control_poll)
                    await self._take_lines(session, control, reader)
        finally:
            reader.close()

    async def _take_lines(
        self, session: Session, control: _SessionControl, reader: _InboxReader
    ) -> None:
        for item in reader.read():
            if isinstance(item, Command):
                await self._take(session, control, item)
                continue
            fields, problem = item  # no command: rejected if it has an id to answer to
            command_id = fields.get("command_id")
            if not isinstance(command_id, str) or not command_id or command_id in control.decided:
                logger.warning("session %s: skipped a command: %s", session.session_id, problem)
                continue
            target, actor = fields.get("target"), fields.get("actor")
            seen = {
                "command_id": command_id,
                "kind": str(fields.get("kind")),
                "target": target if isinstance(target, str) else None,
                "actor": actor if isinstance(actor, str) else "unknown",
                "reason": None,
            }
            async with control.lock:
                await self._decide(session, control, seen, f"invalid command: {problem}")

    async def _until_resumed(self, session_id: str) -> None:
        control = self._controls.get(session_id)
        if control is not None:
            await control.until_resumed()

    # --- what agents do (through AgentContext) ----------------------------------------

    async def _complete(
        self,
        session: Session,
        emitter: Emitter,
        context: AgentContext,
        prompt: str,
        system: str | None,
    ) -> str:
        await self._until_resumed(session.session_id)  # paused: the call waits
        task_id, _ = emitter.current_task()
        route = self._router.route(context.role, context.task if task_id is not None else None)
        await emitter.model_routed(route.model, role=context.role, reason=route.reason or None)
        price = self._prices.get(route.model)
        prompt_tokens = self._token_counter(prompt if system is None else system + "\n" + prompt)
        request = ModelRequest(
            model=route.model,
            prompt=prompt,
            role=context.role,
            session_id=session.session_id,
            system=system,
            task_id=task_id,
        )
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        async with emitter.llm_call(
            model=route.model,
            role=context.role,
            prompt_tokens=prompt_tokens,
            price=price,
            messages=messages,
        ) as call:
            response = await self._model_client.complete(request)
            call.set_response(response.text)
            call.set_usage(
                prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens,
                cached_tokens=response.cached_tokens,
            )
        usage = session.usage.setdefault(route.model, ModelUsage())
        usage.calls += 1
        usage.prompt_tokens += response.prompt_tokens
        usage.completion_tokens += response.completion_tokens
        usage.cost_usd += call.cost_usd or 0.0
        return response.text

    async def _ask(
        self, session: Session, emitter: Emitter, context: AgentContext, question: str
    ) -> str:
        if self._clarifier is None:
            raise ClarificationUnavailableError(question)
        session.questions += 1
        question_id = f"q{session.questions}"
        await emitter.clarification(question, question_id=question_id, role=context.role)
        task_id, _ = emitter.current_task()
        request = ClarificationRequest(
            question=question,
            question_id=question_id,
            session_id=session.session_id,
            role=context.role,
            task_id=task_id,
        )
        clarifier = self._clarifier
        control = self._controls.get(session.session_id)
        if control is None or not isinstance(clarifier, HumanClarifier):
            answer = await clarifier.answer(request)
            await emitter.clarification(
                question, answer, question_id=question_id, role=context.role
            )
            if control is not None:
                control.settled.add(question_id)
            return answer

        def deliver(command: Command) -> bool:
            return clarifier.deliver(session.session_id, question_id, command.text or "")

        with control.request("clarification", question_id) as waiting:
            waiting.deliver = deliver
            answer = await clarifier.answer(request)
            await emitter.clarification(
                question,
                answer,
                question_id=question_id,
                role=context.role,
                **waiting.answered_by(),
            )
        return answer

    async def _apply_diff(
        self, session: Session, emitter: Emitter, context: AgentContext, diff: str
    ) -> PatchResult:
        try:
            await self._run_gates(
                session,
                emitter,
                GateCheck(
                    stage="diff", session_id=session.session_id, task=context.task, diff=diff
                ),
                f"the diff of {context.task.id}",
            )
        except GateBlockedError as exc:
            context._blocked = exc
            raise
        try:
            result = await self._patch_applier.apply(session.workspace, diff)
        except Exception as exc:
            files = _DIFF_TARGET.findall(diff)
            await emitter.diff(
                files, applied=False, error=str(exc), diff=diff, attempt=context.attempt
            )
            raise
        await emitter.diff(
            result.files,
            added=result.added,
            removed=result.removed,
            diff=diff,
            attempt=context.attempt,
        )
        return result

    async def _run_command(
        self, emitter: Emitter, command: Sequence[str], directory: Path, cwd: str
    ) -> CommandResult:
        argv = tuple(str(part) for part in command)
        await self._until_resumed(emitter.session_id)  # paused: the command waits
        started = time.perf_counter()
        try:
            exit_code, output = await _run_process(argv, directory)
        except OSError as exc:
            exit_code, output = 127, f"{type(exc).__name__}: {exc}"
        result = CommandResult(
            command=argv,
            exit_code=exit_code,
            output=output,
            duration_s=round(time.perf_counter() - started, 6),
        )
        await emitter.command(
            shlex.join(argv), exit_code, duration_s=result.duration_s, output=output, cwd=cwd
        )
        return result

    async def _save_artifact(
        self, session: Session, emitter: Emitter, key: str, content: Any
    ) -> None:
        validate_name(key, "artifact key", ".json")
        if key == _RUN_SUMMARY:
            raise InvalidNameError("artifact key", key, "is kept by the artifact sink itself")
        updated = key in session.artifacts
        session.artifacts.add(key)
        await emitter.artifact(key, content, updated=updated)


async def _run_process(argv: tuple[str, ...], directory: Path) -> tuple[int, str]:
    """Run ``argv`` in ``directory``, in a process group of its own; return its exit code
    and the end of its output (stdout and stderr).

    If the caller is cancelled (an abort), the whole group is killed: the
    command and every process it started.
    """
    process = await anyio.open_process(
        argv,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = bytearray()
    try:
        assert process.stdout is not None
        async for chunk in process.stdout:
            output += chunk
            if len(output) > 2 * _OUTPUT_KEEP:
                del output[:-_OUTPUT_KEEP]
        exit_code = await process.wait()
    except BaseException:
        _kill_group(process)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    return exit_code, output.decode("utf-8", "replace")[-_OUTPUT_LIMIT:]


def _kill_group(process: anyio.abc.Process) -> None:
    """Kill ``process`` and the process group it leads (every process it started)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows has no process groups to kill
            process.kill()
    except ProcessLookupError:  # already gone
        pass


def _approval_subject(check: GateCheck, subject: str) -> str:
    """What a person is asked to approve, in a line."""
    if check.plan is not None:
        ids = [task.id for task in check.plan.tasks]
        shown = ", ".join(ids[:12]) + (f", ... ({len(ids) - 12} more)" if len(ids) > 12 else "")
        return f"{subject}: {len(ids)} task{'s' if len(ids) != 1 else ''} ({shown})"
    if check.diff is not None:
        files = _DIFF_TARGET.findall(check.diff)
        return f"{subject}: {', '.join(files) or 'no files'}"
    return subject


def _fields(command: Command) -> dict[str, Any]:
    """A command's fields as its outcome event's metadata holds them."""
    return {
        "command_id": command.command_id,
        "kind": command.kind,
        "target": command.target,
        "actor": command.actor,
        "reason": command.reason,
    }


def _plain_join(root: str, relative: str) -> str | None:
    """``root`` joined with ``relative`` if that crosses no symlink; None if it may.

    None for an absolute path, a ``..`` part, a symlink among the existing
    parts, or a system whose separator is not ``/``: the caller resolves those.
    """
    if os.sep != "/" or os.altsep is not None or relative.startswith("/"):
        return None
    current = root
    exists = True
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        current = os.path.join(current, part)
        if exists:
            try:
                mode = os.lstat(current).st_mode
            except OSError:  # nothing below it can be reached either
                exists = False
                continue
            if stat.S_ISLNK(mode):
                return None
    return current


def _ordered(plan: Plan, agents: Mapping[str, Agent]) -> list[TaskSpec]:
    """The plan's tasks in a dependency order (plan order among ready tasks)."""
    by_id: dict[str, TaskSpec] = {}
    for task in plan.tasks:
        if task.id in by_id:
            raise PlanError(f"task id {task.id!r} is used twice")
        by_id[task.id] = task
    if not by_id:
        raise PlanError("the plan has no tasks")
    for task in plan.tasks:
        if task.role not in agents:
            raise PlanError(f"task {task.id!r} needs a {task.role!r} agent, which is missing")
        for dependency in task.depends_on:
            if dependency == task.id:
                raise PlanError(f"task {task.id!r} depends on itself")
            if dependency not in by_id:
                raise PlanError(f"task {task.id!r} depends on unknown task {dependency!r}")
    ordered: list[TaskSpec] = []
    placed: set[str] = set()
    remaining = list(plan.tasks)
    while remaining:
        ready = [task for task in remaining if placed.issuperset(task.depends_on)]
        if not ready:
            cycle = ", ".join(task.id for task in remaining)
            raise PlanError(f"the dependencies of {cycle} form a cycle")
        ordered.extend(ready)
        placed.update(task.id for task in ready)
        remaining = [task for task in remaining if task.id not in placed]
    return ordered


def _graph(session: Session, tasks: Sequence[TaskSpec]) -> dict[str, Any]:
    return {
        "tasks": [
            {
                "id": task.id,
                "role": task.role,
                "title": task.title,
                "depends_on": list(task.depends_on),
                "status": session.task_status.get(task.id, TaskStatus.PENDING).value,
            }
            for task in tasks
        ]
    }
