"""eventbus: an async event bus with pluggable sinks.

Publish typed :class:`Event`\\ s onto an :class:`EventBus`; sinks (any object
with ``async write(events)`` and ``async aclose()``) receive them in batches,
listeners watch them live. See the README for the contracts.

This package is the core: the event model, its codec, queries, names, the
bus, listeners, the :class:`Sink` protocol, :class:`MemorySink`, the errors
and the seed's ``create_*_event`` helpers. The reference coordinator that
drives sessions is :mod:`eventbus.coordinator`; the sinks are the
:mod:`sinks` package. Importing ``eventbus`` loads neither.
"""

import importlib as _importlib
from typing import Any as _Any

from ._bus import BusStats, EventBus, RetryPolicy, Subscription, SubscriptionStats
from ._codec import (
    MAX_LINE_BYTES,
    MAX_METADATA_DEPTH,
    EventBatch,
    decode_event,
    decode_events,
    encode_event,
    encode_jsonl,
    encoded_lines,
)
from ._errors import (
    BusClosedError,
    BusFullError,
    EventBusError,
    EventDecodeError,
    EventEncodeError,
    EventsLostError,
    PartialWriteError,
    SinkFailedError,
)
from ._event import (
    MAX_ID_LENGTH,
    Event,
    EventType,
    current_parent_id,
    new_event_id,
    parent_scope,
)
from ._factories import (
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
)
from ._listen import Gap, Listener
from ._names import InvalidNameError, is_valid_name, validate_name, validate_session_id
from ._query import EventQuery, as_utc
from ._sink import MemorySink, Sink

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_LINE_BYTES",
    "MAX_METADATA_DEPTH",
    "BusClosedError",
    "BusFullError",
    "BusStats",
    "Event",
    "EventBatch",
    "EventBus",
    "EventBusError",
    "EventDecodeError",
    "EventEncodeError",
    "EventQuery",
    "EventType",
    "EventsLostError",
    "Gap",
    "InvalidNameError",
    "Listener",
    "MemorySink",
    "PartialWriteError",
    "RetryPolicy",
    "Sink",
    "SinkFailedError",
    "Subscription",
    "SubscriptionStats",
    "as_utc",
    "create_agent_event",
    "create_artifact_event",
    "create_clarification_event",
    "create_command_event",
    "create_diff_event",
    "create_gate_event",
    "create_llm_request_event",
    "create_llm_response_event",
    "create_model_routed_event",
    "create_phase_transition_event",
    "create_session_event",
    "create_task_event",
    "create_verification_event",
    "current_parent_id",
    "decode_event",
    "decode_events",
    "encode_event",
    "encode_jsonl",
    "encoded_lines",
    "is_valid_name",
    "new_event_id",
    "parent_scope",
    "validate_name",
    "validate_session_id",
]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj

__version__ = "0.1.0"

# What ``eventbus`` exported before the coordinator moved to its own package;
# resolved by ``__getattr__`` below (tests pin it to ``eventbus.coordinator.__all__``).
_MOVED_TO_COORDINATOR = frozenset(
    (
        "DEFAULT_MAX_TEXT_CHARS",
        "REDACTED",
        "Agent",
        "AgentContext",
        "AgentResult",
        "AgentSpan",
        "ClarificationRequest",
        "ClarificationUnavailableError",
        "Clarifier",
        "CommandFailedError",
        "CommandResult",
        "CommandVerifier",
        "Emitter",
        "Gate",
        "GateBlockedError",
        "GateCheck",
        "GateDecision",
        "GateResult",
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
    )
)


def __getattr__(name: str) -> _Any:
    """Resolve the names that moved to :mod:`eventbus.coordinator`, on first use.

    ``from eventbus import SessionCoordinator`` keeps working; the import of
    the coordinator happens only then, so ``import eventbus`` stays the core.
    """
    if name in _MOVED_TO_COORDINATOR:
        return getattr(_importlib.import_module("eventbus.coordinator"), name)
    raise AttributeError(f"module 'eventbus' has no attribute {name!r}")
