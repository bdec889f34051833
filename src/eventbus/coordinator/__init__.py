"""The reference coordinator: agent sessions that publish what happens as events.

:class:`SessionCoordinator` runs a session (phases, a task graph with
dependencies, concurrency and retries, gates, patches, verification) through
small protocols for what it drives (:class:`Agent`, :class:`ModelClient`,
:class:`Gate`, :class:`Clarifier`, :class:`PatchApplier`, :class:`Verifier`,
:class:`ModelRouter`); :class:`AgentContext` is what an agent gets to work
with. :class:`Emitter` and its spans make correct emission the easy path;
the redact hook (:func:`redact_secrets`) keeps secrets out of captured
prompts. A person controls a running session with a :class:`Command` (pause,
resume, abort, answer, approve, reject), in process or from another process
through the session's inbox (:func:`submit_command`); :class:`HumanClarifier`
and :class:`HumanGate` make questions and approvals wait for one. The errors
derive from :class:`~eventbus.EventBusError`; their hierarchy is drawn in
``eventbus.coordinator._errors``.

This package imports the core (:mod:`eventbus`); the core never imports it.
"""

from .._factories import GateDecision
from .._redact import DEFAULT_MAX_TEXT_CHARS, REDACTED, Redactor, redact_secrets
from ._commands import Command, CommandKind, submit_command
from ._context import Agent, AgentContext
from ._control import CommandOutcome, HumanClarifier, HumanGate
from ._coordinator import SessionCoordinator, estimate_tokens
from ._errors import (
    ClarificationUnavailableError,
    CommandFailedError,
    GateBlockedError,
    HumanTimeoutError,
    InvalidCommandError,
    PatchError,
    PhaseError,
    PlanError,
    SessionError,
    SessionLogNotFoundError,
    TasksFailedError,
    UsageNotReportedError,
    VerificationFailedError,
)
from ._instrument import AgentSpan, Emitter, LLMCall, ModelPrice, TaskSpan, VerificationSpan
from ._patch import PatchResult, UnifiedDiffApplier, apply_unified_diff, make_unified_diff
from ._session import (
    AgentResult,
    ClarificationRequest,
    Clarifier,
    CommandResult,
    CommandVerifier,
    Gate,
    GateCheck,
    GateResult,
    ModelClient,
    ModelRequest,
    ModelResponse,
    ModelRouter,
    ModelUsage,
    PatchApplier,
    Plan,
    Route,
    Session,
    SessionPhase,
    StaticRouter,
    TaskSpec,
    TaskStatus,
    Verifier,
)

__all__ = [
    "DEFAULT_MAX_TEXT_CHARS",
    "REDACTED",
    "Agent",
    "AgentContext",
    "AgentResult",
    "AgentSpan",
    "ClarificationRequest",
    "ClarificationUnavailableError",
    "Clarifier",
    "Command",
    "CommandFailedError",
    "CommandKind",
    "CommandOutcome",
    "CommandResult",
    "CommandVerifier",
    "Emitter",
    "Gate",
    "GateBlockedError",
    "GateCheck",
    "GateDecision",
    "GateResult",
    "HumanClarifier",
    "HumanGate",
    "HumanTimeoutError",
    "InvalidCommandError",
    "LLMCall",
    "ModelClient",
    "ModelPrice",
    "ModelRequest",
    "ModelResponse",
    "ModelRouter",
    "ModelUsage",
    "PatchApplier",
    "PatchError",
    "PatchResult",
    "PhaseError",
    "Plan",
    "PlanError",
    "Redactor",
    "Route",
    "Session",
    "SessionCoordinator",
    "SessionError",
    "SessionLogNotFoundError",
    "SessionPhase",
    "StaticRouter",
    "TaskSpan",
    "TaskSpec",
    "TaskStatus",
    "TasksFailedError",
    "UnifiedDiffApplier",
    "UsageNotReportedError",
    "VerificationFailedError",
    "VerificationSpan",
    "Verifier",
    "apply_unified_diff",
    "estimate_tokens",
    "make_unified_diff",
    "redact_secrets",
    "submit_command",
]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
