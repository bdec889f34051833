"""The session model and the small protocols the :class:`SessionCoordinator` drives.

Everything a session touches goes through one of these protocols, so a test,
the offline demo or a production deployment plugs in its own: an
:class:`Agent` per role, a :class:`ModelClient` (text and token usage), a
:class:`ModelRouter`, :class:`Gate`\\ s, a :class:`PatchApplier`,
:class:`Verifier`\\ s and a :class:`Clarifier`.
"""

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from .._event import Event
from .._factories import GateDecision
from ._patch import PatchResult

__all__ = [
    "AgentResult",
    "ClarificationRequest",
    "Clarifier",
    "CommandResult",
    "CommandVerifier",
    "Gate",
    "GateCheck",
    "GateResult",
    "ModelClient",
    "ModelRequest",
    "ModelResponse",
    "ModelRouter",
    "ModelUsage",
    "PatchApplier",
    "Plan",
    "Route",
    "Session",
    "SessionPhase",
    "StaticRouter",
    "TaskSpec",
    "TaskStatus",
    "Verifier",
]

PROJECT_DIR = "project"


class SessionPhase(enum.StrEnum):
    """The phases of a session, in order; the last three are terminal."""

    IDEA = "IDEA"
    PLAN_REVIEW = "PLAN_REVIEW"
    EXECUTION = "EXECUTION"
    VERIFICATION = "VERIFICATION"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def is_terminal(self) -> bool:
        """Whether the session has ended in this phase."""
        return self in (SessionPhase.COMPLETE, SessionPhase.FAILED, SessionPhase.ABORTED)


class TaskStatus(enum.StrEnum):
    """Where a task of the graph stands."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One task of a plan: ``role`` names the agent that does it; it starts once
    every task in ``depends_on`` has completed (and is skipped if one failed)."""

    id: str
    role: str
    title: str = ""
    description: str = ""
    depends_on: tuple[str, ...] = ()
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A planner's output: the task graph and the build spec (JSON)."""

    tasks: tuple[TaskSpec, ...]
    spec: dict[str, Any] = msgspec.field(default_factory=dict)


class AgentResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent returns: a summary, and for the planner the :class:`Plan`."""

    summary: str = ""
    plan: Plan | None = None


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One call to a model, as the coordinator hands it to the :class:`ModelClient`."""

    model: str
    prompt: str
    role: str
    session_id: str
    system: str | None = None
    task_id: str | None = None


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer and its token usage."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A router's choice of model (and why)."""

    model: str
    reason: str = ""


GateStage = Literal["plan", "diff"]


class GateCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What a gate evaluates: the plan (stage ``plan``) or a task's diff (``diff``).

    ``request_id`` names the approval request when the gate asks a person
    (a :class:`HumanGate`); the coordinator sets it, ``None`` otherwise.
    """

    stage: GateStage
    session_id: str
    plan: Plan | None = None
    task: TaskSpec | None = None
    diff: str | None = None
    request_id: str | None = None


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    """A gate's decision: ``pass``, ``warn`` (go on) or ``block`` (stop)."""

    decision: GateDecision = "pass"
    reason: str = ""


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """A finished command: its exit code and (the end of) its combined output."""

    command: tuple[str, ...]
    exit_code: int
    output: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """Whether it exited with 0."""
        return self.exit_code == 0


class ClarificationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A question an agent asks, as the :class:`Clarifier` receives it."""

    question: str
    question_id: str
    session_id: str
    role: str | None = None
    task_id: str | None = None


class ModelClient(Protocol):
    """Calls a model: returns its text and the token usage."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer ``request``."""
        ...


class ModelRouter(Protocol):
    """Chooses the model for a role's call."""

    def route(self, role: str, task: TaskSpec | None) -> Route:
        """Return the model for ``role`` working on ``task`` (``None``: planning)."""
        ...


class Gate(Protocol):
    """A policy check on the plan and on every diff: pass, warn or block."""

    @property
    def name(self) -> str:
        """The gate's name in events."""
        ...

    async def evaluate(self, check: GateCheck) -> GateResult:
        """Decide on ``check``."""
        ...


class PatchApplier(Protocol):
    """Applies a unified diff to a session's workspace directory."""

    async def apply(self, workspace: Path, diff: str) -> PatchResult:
        """Apply ``diff`` under ``workspace``; raise :class:`PatchError` if it does not apply."""
        ...


class Verifier(Protocol):
    """A final check of the workspace: commands that must all exit with 0."""

    @property
    def name(self) -> str:
        """The verifier's name in events."""
        ...

    def commands(self, workspace: Path) -> Sequence[Sequence[str]]:
        """The commands to run (in ``workspace``), in order."""
        ...


class Clarifier(Protocol):
    """Answers agents' clarification questions (a human, a policy, a script)."""

    async def answer(self, request: ClarificationRequest) -> str:
        """Return the answer to ``request.question``."""
        ...


class StaticRouter:
    """A :class:`ModelRouter` with a fixed model per role and a default."""

    def __init__(self, default: str, by_role: Mapping[str, str] | None = None) -> None:
        self.default = default
        self.by_role = dict(by_role or {})

    def route(self, role: str, task: TaskSpec | None) -> Route:
        """The role's model, or the default."""
        if role in self.by_role:
            return Route(model=self.by_role[role], reason=f"model for role {role}")
        return Route(model=self.default, reason="default model")


class CommandVerifier:
    """A :class:`Verifier` that runs fixed commands in the workspace."""

    def __init__(self, name: str, *commands: Sequence[str]) -> None:
        if not commands:
            raise ValueError(f"verifier {name!r} needs at least one command")
        self.name = name
        self._commands = [tuple(command) for command in commands]

    def commands(self, workspace: Path) -> Sequence[Sequence[str]]:
        """The commands given to the constructor."""
        return self._commands


@dataclass
class ModelUsage:
    """Token usage and cost of one model over a session."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def new_session_id() -> str:
    """A new session id: the UTC time and a random suffix (sorts by creation time)."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class Session:
    """A session's state, kept by the coordinator (the seed's ``Session``).

    ``logs`` holds the legacy strings, ``"[event_type] message"``, one per
    event the coordinator emitted for the session, derived from the events.
    ``directory`` is ``{workspace_root}/{session_id}`` (where the sinks put
    ``events.jsonl`` and ``artifacts/``); agents' files go to ``workspace``,
    its ``project`` subdirectory.
    """

    session_id: str
    idea: str
    directory: Path
    phase: SessionPhase = SessionPhase.IDEA
    logs: list[str] = field(default_factory=list)
    plan: Plan | None = None
    task_status: dict[str, TaskStatus] = field(default_factory=dict)
    results: dict[str, AgentResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    artifacts: set[str] = field(default_factory=set)
    error: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_event_id: str | None = None
    questions: int = 0

    @property
    def workspace(self) -> Path:
        """The directory agents' diffs are applied to and commands run in."""
        return self.directory / PROJECT_DIR

    def record(self, event: Event) -> None:
        """Append the legacy log line of ``event`` to :attr:`logs`."""
        self.logs.append(f"[{event.event_type.value}] {event.message}")

    def tasks_with(self, status: TaskStatus) -> list[str]:
        """The ids of the tasks in ``status``, in plan order."""
        return [task_id for task_id, value in self.task_status.items() if value is status]

    def summary(self) -> dict[str, Any]:
        """Counts, usage and duration so far, as JSON (the terminal events' metadata)."""
        prompt = sum(usage.prompt_tokens for usage in self.usage.values())
        completion = sum(usage.completion_tokens for usage in self.usage.values())
        return {
            "tasks": {
                "total": len(self.task_status),
                **{status.value: len(self.tasks_with(status)) for status in TaskStatus},
            },
            "usage": {
                "llm_calls": sum(usage.calls for usage in self.usage.values()),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cost_usd": round(sum(usage.cost_usd for usage in self.usage.values()), 10),
            },
            "duration_s": round((datetime.now(UTC) - self.started_at).total_seconds(), 6),
        }
