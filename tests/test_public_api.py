"""The public surface: what each public module exports is what exists, and changes on purpose."""

from __future__ import annotations

import importlib
import typing

import pytest

# Every public module's ``__all__``, as released. A test fails when one changes: add
# or remove a name here in the same change, so every change of the API is deliberate.
SNAPSHOT: dict[str, list[str]] = {
    "eventbus": [
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
    ],
    "eventbus.coordinator": [
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
    ],
    "eventbus.cli": [
        "main",
    ],
    "eventbus.web": [
        "create_app",
    ],
    "sinks": [
        "ARTIFACTS_DIR",
        "CONTROL_FILE_NAME",
        "LOG_FILE_NAME",
        "RUN_SUMMARY_KEY",
        "USAGE_ALIASES",
        "USAGE_KEYS",
        "ArtifactEncodeError",
        "ArtifactSink",
        "ArtifactStore",
        "CorruptArtifactError",
        "CorruptLogError",
        "Durability",
        "EventIndex",
        "EventIndexError",
        "EventLog",
        "IndexArgumentError",
        "InvalidTimeError",
        "JsonlSink",
        "JsonlSinkStats",
        "LocationRequiredError",
        "LogLockedError",
        "NotARegularFileError",
        "RecoveryReport",
        "RunSummary",
        "SessionArtifactQuery",
        "SessionInfo",
        "SessionNotFoundError",
        "SessionSummary",
        "StaleLogError",
        "TokenUsage",
        "UnknownCommandError",
        "UnknownEventIdError",
        "UnknownEventTypeError",
        "UnsafeSymlinkError",
        "UsageField",
        "Workspace",
        "WrittenCallback",
        "iter_log",
        "parse_time",
    ],
    "sinks.jsonl": [
        "LOG_FILE_NAME",
        "CorruptLogError",
        "Durability",
        "EventLog",
        "JsonlSink",
        "JsonlSinkStats",
        "LogLockedError",
        "NotARegularFileError",
        "RecoveryReport",
        "UnsafeSymlinkError",
        "WrittenCallback",
        "iter_log",
    ],
    "sinks.index": [
        "EventIndex",
        "EventIndexError",
        "IndexArgumentError",
        "LocationRequiredError",
        "StaleLogError",
        "TokenUsage",
        "UnknownEventIdError",
        "UsageField",
    ],
    "sinks.artifacts": [
        "ARTIFACTS_DIR",
        "RUN_SUMMARY_KEY",
        "ArtifactEncodeError",
        "ArtifactSink",
        "ArtifactStore",
        "CorruptArtifactError",
        "NotARegularFileError",
        "RunSummary",
        "SessionArtifactQuery",
        "SessionInfo",
        "SessionSummary",
        "UnsafeSymlinkError",
    ],
    "sinks.workspace": [
        "CONTROL_FILE_NAME",
        "MAX_ARTIFACT_BYTES",
        "USAGE_ALIASES",
        "USAGE_KEYS",
        "ArtifactNotFoundError",
        "ArtifactTooLargeError",
        "InvalidTimeError",
        "SessionNotFoundError",
        "UnknownCommandError",
        "UnknownEventTypeError",
        "Workspace",
        "parse_time",
    ],
    "sinks.memory": [
        "EventIndex",
        "EventIndexError",
        "IndexArgumentError",
        "LocationRequiredError",
        "StaleLogError",
        "TokenUsage",
        "UnknownEventIdError",
        "UsageField",
    ],
    "sinks.nats": [
        "DEFAULT_SERVERS",
        "AsyncioOnlyError",
        "ConsumerConfigError",
        "JetStreamError",
        "JetStreamSink",
        "JetStreamSource",
        "NatsUnavailableError",
        "PublishNotAcknowledgedError",
        "SourceStats",
        "Start",
        "StreamConfigError",
        "decode_token",
        "encode_token",
        "subject_for",
    ],
    "sinks.otel": [
        "DEFAULT_TIMEOUT",
        "OtelSink",
        "span_id_for",
        "trace_id_for",
        "traces_url",
    ],
}

PUBLIC_MODULES = list(SNAPSHOT)


def _isort_style(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each alphabetical (ruff's RUF022)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def _exported_classes() -> list[tuple[str, str, type]]:
    found = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type):
                found.append((module_name, name, value))
    return found


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_matches_the_snapshot(module_name: str) -> None:
    """A public module exports exactly the names of its snapshot."""
    assert list(importlib.import_module(module_name).__all__) == SNAPSHOT[module_name]


@pytest.mark.parametrize("package", ["eventbus", "eventbus.coordinator", "sinks"])
def test_all_lists_exactly_the_public_names(package: str) -> None:
    """__all__ is sorted, complete, and every name in it exists."""
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_style)
    public = {name for name in vars(module) if not name.startswith("_")}
    public -= {"annotations"}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert set(exported) == public - submodules
    for name in exported:
        assert getattr(module, name) is not None


@pytest.mark.parametrize(
    ("module_name", "name", "cls"),
    [pytest.param(*found, id=f"{found[0]}.{found[1]}") for found in _exported_classes()],
)
def test_exported_classes_name_their_public_module(module_name: str, name: str, cls: type) -> None:
    """An exported class's ``__module__`` is a public module that exports it."""
    assert not any(part.startswith("_") for part in cls.__module__.split("."))
    assert getattr(importlib.import_module(cls.__module__), cls.__name__) is cls
    typing.get_type_hints(cls)  # its annotations still resolve from there


def test_the_core_exports_one_concern() -> None:
    """The coordinator's names are not in ``eventbus.__all__``."""
    import eventbus
    import eventbus.coordinator

    assert not set(eventbus.__all__) & set(eventbus.coordinator.__all__)


def test_moved_coordinator_names_resolve_from_eventbus() -> None:
    """Each name that moved to ``eventbus.coordinator`` is still found on ``eventbus``."""
    import eventbus
    import eventbus.coordinator

    assert set(eventbus.coordinator.__all__) >= eventbus._MOVED_TO_COORDINATOR
    for name in eventbus._MOVED_TO_COORDINATOR:
        assert getattr(eventbus, name) is getattr(eventbus.coordinator, name)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        eventbus.NoSuchName  # noqa: B018


def test_sinks_memory_is_an_alias_of_sinks_index() -> None:
    """``sinks.memory`` is the index under its former name."""
    import sinks.index
    import sinks.memory

    for name in sinks.memory.__all__:
        assert getattr(sinks.memory, name) is getattr(sinks.index, name)


def test_errors_form_one_hierarchy() -> None:
    """Every exception eventbus and its coordinator raise derives from EventBusError."""
    import eventbus
    import eventbus.coordinator

    errors = [
        value
        for module in (eventbus, eventbus.coordinator)
        for value in map(module.__dict__.get, module.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert len(errors) >= 16
    assert all(issubclass(error, eventbus.EventBusError) for error in errors)
