"""What an agent works with: :class:`AgentContext`, and the :class:`Agent` protocol itself.

An agent does its task through its context (model calls, questions, diffs,
commands, artifacts); the coordinator that made the context carries each out
and emits it. The context sees its coordinator only through the few calls
listed in ``_Coordinator``, so this module does not import the coordinator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ._errors import CommandFailedError, GateBlockedError
from ._instrument import Emitter
from ._patch import PatchResult
from ._session import AgentResult, CommandResult, Session, SessionPhase, TaskSpec

__all__ = ["Agent", "AgentContext"]


class Agent(Protocol):
    """Does the tasks of one role (planner, coder, reviewer, tester, ...).

    It works through ``context``: model calls, questions, diffs, commands and
    artifacts made there are emitted as events. An exception fails the
    attempt (the task is retried per the coordinator's policy).
    """

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        """Do ``task``; the planner returns the plan in :attr:`AgentResult.plan`."""
        ...


class _Coordinator(Protocol):
    """What an :class:`AgentContext` asks of the coordinator that made it."""

    def _inside(self, workspace: Path, relative: str) -> Path | None: ...

    async def _complete(
        self,
        session: Session,
        emitter: Emitter,
        context: AgentContext,
        prompt: str,
        system: str | None,
    ) -> str: ...

    async def _ask(
        self, session: Session, emitter: Emitter, context: AgentContext, question: str
    ) -> str: ...

    async def _apply_diff(
        self, session: Session, emitter: Emitter, context: AgentContext, diff: str
    ) -> PatchResult: ...

    async def _run_command(
        self, emitter: Emitter, command: Sequence[str], directory: Path, cwd: str
    ) -> CommandResult: ...

    async def _save_artifact(
        self, session: Session, emitter: Emitter, key: str, content: Any
    ) -> None: ...


class AgentContext:
    """What an agent can do while it runs; everything done here is emitted.

    ``task`` is the task being done (for the planner, a synthetic ``plan``
    task that is not part of the graph); ``attempt`` counts from 1.
    """

    __slots__ = ("_blocked", "_coordinator", "_emitter", "_session", "attempt", "role", "task")

    def __init__(
        self,
        coordinator: _Coordinator,
        session: Session,
        emitter: Emitter,
        task: TaskSpec,
        *,
        attempt: int,
    ) -> None:
        self._coordinator = coordinator
        self._session = session
        self._emitter = emitter
        self.task = task
        self.role = task.role
        self.attempt = attempt
        self._blocked: GateBlockedError | None = None

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._session.session_id

    @property
    def idea(self) -> str:
        """The session's idea (what the user asked for)."""
        return self._session.idea

    @property
    def workspace(self) -> Path:
        """The directory diffs are applied to and commands run in."""
        return self._session.workspace

    @property
    def phase(self) -> SessionPhase:
        """The session's current phase."""
        return self._session.phase

    def read_text(self, path: str) -> str | None:
        """The content of ``path`` (relative to the workspace), or ``None`` if absent."""
        target = self._coordinator._inside(self.workspace, path)
        if target is None:
            raise ValueError(f"{path!r} is outside the workspace")
        try:
            return target.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    async def complete(self, prompt: str, *, system: str | None = None) -> str:
        """Ask the model the router chooses for this role; return its text.

        Emits ``model_routed``, ``llm_request_sent`` and ``llm_response_received``
        (with token usage and, given a price, ``cost_usd``).
        """
        return await self._coordinator._complete(self._session, self._emitter, self, prompt, system)

    async def ask(self, question: str) -> str:
        """Ask the clarifier ``question``; emits ``clarification_requested`` and ``_answered``.

        Raises :class:`ClarificationUnavailableError` without a clarifier.
        """
        return await self._coordinator._ask(self._session, self._emitter, self, question)

    async def apply_diff(self, diff: str) -> PatchResult:
        """Submit a unified diff: the gates evaluate it (``gate_*`` events), then the
        patch applier applies it (``diff_applied`` or ``diff_failed``).

        Raises :class:`GateBlockedError` (the task then fails without retry)
        or :class:`PatchError`.
        """
        return await self._coordinator._apply_diff(self._session, self._emitter, self, diff)

    async def run_command(
        self, command: Sequence[str], *, check: bool = True, cwd: str = "."
    ) -> CommandResult:
        """Run ``command`` in the workspace (``cwd`` relative to it); emits ``command_executed``.

        With ``check``, a non-zero exit raises :class:`CommandFailedError`.
        """
        directory = self._coordinator._inside(self.workspace, cwd)
        if directory is None:
            raise ValueError(f"cwd {cwd!r} is outside the workspace")
        result = await self._coordinator._run_command(self._emitter, command, directory, cwd)
        if check and not result.ok:
            raise CommandFailedError(result.command, result.exit_code, result.output)
        return result

    async def save_artifact(self, key: str, content: Any) -> None:
        """Publish JSON ``content`` as artifact ``key`` (``artifact_created``, or
        ``artifact_updated`` if the session has one with that key).

        Raises :class:`InvalidNameError` for a key that cannot name a file, or
        ``run_summary`` (which the artifact sink keeps).
        """
        await self._coordinator._save_artifact(self._session, self._emitter, key, content)
