"""The exceptions of the session coordinator, its instrumentation and patch applier.

A :class:`SessionError` raised while a session runs ends it as ``FAILED``
(``session_failed`` is its last event); :meth:`SessionCoordinator.run` then
returns the failed session instead of raising. Agents see these errors from
their context (a failed command, a blocked or rejected diff) and may let
them fail the attempt::

    EventBusError
    ├── PhaseError (RuntimeError)            a step was called in the wrong phase
    ├── UsageNotReportedError (RuntimeError) an ``llm_call`` block ended without usage
    ├── InvalidCommandError (ValueError)     a control command's fields do not make one
    ├── SessionLogNotFoundError (LookupError) a command to a session that has no log
    └── SessionError                         ends the session FAILED
        ├── PlanError (ValueError)           the plan's task graph is invalid
        ├── GateBlockedError                 a gate blocked the plan or a diff
        ├── PatchError (ValueError)          a diff does not apply to the workspace
        ├── CommandFailedError               a command exited non-zero
        ├── ClarificationUnavailableError    a question was asked with no clarifier
        ├── HumanTimeoutError                nobody answered a question or approval in time
        ├── TasksFailedError                 tasks of the graph failed (others skipped)
        └── VerificationFailedError          a verifier's command failed
"""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import EventBusError

__all__ = [
    "ClarificationUnavailableError",
    "CommandFailedError",
    "GateBlockedError",
    "HumanTimeoutError",
    "InvalidCommandError",
    "PatchError",
    "PhaseError",
    "PlanError",
    "SessionError",
    "SessionLogNotFoundError",
    "TasksFailedError",
    "UsageNotReportedError",
    "VerificationFailedError",
]


class SessionError(EventBusError):
    """Base class of the errors that end a session as ``FAILED``."""


class PhaseError(EventBusError, RuntimeError):
    """Raised when a coordinator step is called on a session in the wrong phase."""

    def __init__(self, session_id: str, action: str, phase: str, expected: str) -> None:
        self.session_id = session_id
        self.phase = phase
        self.expected = expected
        super().__init__(
            f"cannot {action} session {session_id!r}: it is in phase {phase}, expected "
            f"{expected}; run the steps in order (start_session, plan, execute, verify) "
            "or call run()"
        )


class PlanError(SessionError, ValueError):
    """Raised when a plan cannot be executed: its task graph is invalid."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"invalid plan: {reason}; task ids must be unique, dependencies must name "
            "tasks of the plan without cycles, and every role needs an agent"
        )


class GateBlockedError(SessionError):
    """Raised when a gate decides ``block`` on the plan or on a task's diff."""

    def __init__(self, gate: str, subject: str, reason: str) -> None:
        self.gate = gate
        self.subject = subject
        self.reason = reason
        super().__init__(f"gate {gate!r} blocked {subject}: {reason or 'no reason given'}")


class PatchError(SessionError, ValueError):
    """Raised when a unified diff cannot be applied; no file was changed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"cannot apply diff to {path!r}: {reason}; "
            "make the diff against the file's current content"
        )


class CommandFailedError(SessionError):
    """Raised by ``AgentContext.run_command(..., check=True)`` when a command fails."""

    def __init__(self, command: Sequence[str], exit_code: int, output: str = "") -> None:
        self.command = tuple(command)
        self.exit_code = exit_code
        self.output = output
        last = output.strip().splitlines()[-1:] if output.strip() else []
        detail = f": {last[0]}" if last else ""
        super().__init__(f"command {' '.join(self.command)!r} exited with {exit_code}{detail}")


class ClarificationUnavailableError(SessionError):
    """Raised when an agent asks a question and the coordinator has no clarifier."""

    def __init__(self, question: str) -> None:
        self.question = question
        super().__init__(
            f"cannot ask {question!r}: the coordinator has no clarifier; "
            "pass clarifier=... to SessionCoordinator"
        )


class TasksFailedError(SessionError):
    """Raised at the end of execution when tasks failed (their dependents were skipped)."""

    def __init__(self, failed: Sequence[str], skipped: Sequence[str]) -> None:
        self.failed = tuple(failed)
        self.skipped = tuple(skipped)
        skipped_text = f"; skipped: {', '.join(self.skipped)}" if self.skipped else ""
        super().__init__(
            f"{len(self.failed)} task(s) failed: {', '.join(self.failed)}{skipped_text}"
        )


class VerificationFailedError(SessionError):
    """Raised when a verifier's command exits non-zero."""

    def __init__(self, verifier: str, command: Sequence[str], exit_code: int) -> None:
        self.verifier = verifier
        self.command = tuple(command)
        self.exit_code = exit_code
        super().__init__(
            f"verifier {verifier!r} failed: {' '.join(self.command)!r} exited with {exit_code}"
        )


class UsageNotReportedError(EventBusError, RuntimeError):
    """Raised when an ``llm_call`` block ends normally without ``call.set_usage(...)``."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"the llm_call to {model!r} ended without call.set_usage(...): report the "
            "response's token usage before leaving the block"
        )


class InvalidCommandError(EventBusError, ValueError):
    """Raised when a control command's fields do not make a command (see ``Command``)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid command: {problem}")


class SessionLogNotFoundError(EventBusError, LookupError):
    """Raised when a command is sent to a session that has no log (yet) in the workspace."""

    def __init__(self, session_id: str, root: str) -> None:
        self.session_id = session_id
        self.root = root
        super().__init__(
            f"no session {session_id!r} in the workspace {root!r} (it has no events.jsonl); "
            "check the session id and the workspace directory"
        )


class HumanTimeoutError(SessionError):
    """Raised when nobody answered a question or decided an approval in time (no default)."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(
            f"nobody answered {what} within {timeout:g}s; give the HumanClarifier or "
            "HumanGate a longer timeout or a default"
        )
