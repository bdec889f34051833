"""Constructors for the common events, with the seed's names and metadata keys.

Each returns an :class:`Event` stamped now (UTC). Token usage is kept in
``metadata`` under ``prompt_tokens``, ``completion_tokens`` and
``total_tokens`` (plus ``cached_tokens`` and ``cost_usd`` when known). The
prompt of an LLM request is ``metadata["messages"]`` (a list of ``{"role":
str, "content": str}``) and the text of its response
``metadata["response"]``, both passed through a redact hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._event import Event, EventType
from ._redact import Redactor, redact_messages, redact_secrets, safe_redact

__all__ = [
    "GateDecision",
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
]

GateDecision = Literal["pass", "warn", "block"]
"""A gate's verdict: go on, go on with a warning, or stop."""

_SESSION_TYPES = {
    EventType.SESSION_STARTED: "Session started",
    EventType.SESSION_COMPLETED: "Session completed",
    EventType.SESSION_FAILED: "Session failed",
    EventType.SESSION_ABORTED: "Session aborted",
}
_TASK_TYPES = {
    EventType.TASK_SCHEDULED: "Task scheduled",
    EventType.TASK_STARTED: "Executing task",
    EventType.TASK_COMPLETED: "Task completed",
    EventType.TASK_FAILED: "Task failed",
    EventType.TASK_RETRYING: "Retrying task",
    EventType.TASK_SKIPPED: "Task skipped",
}
_VERIFICATION_TYPES = {
    EventType.VERIFICATION_STARTED: "Verification started",
    EventType.VERIFICATION_PASSED: "Verification passed",
    EventType.VERIFICATION_FAILED: "Verification failed",
}
_GATE_TYPES: dict[GateDecision, EventType] = {
    "pass": EventType.GATE_EVALUATED,
    "warn": EventType.GATE_WARNED,
    "block": EventType.GATE_BLOCKED,
}


def _require(kind: str, event_type: EventType, allowed: dict[EventType, str]) -> str:
    if event_type not in allowed:
        names = ", ".join(t.value for t in allowed)
        raise ValueError(f"{kind} events are one of {names}; got {event_type!r}")
    return allowed[event_type]


def create_phase_transition_event(
    session_id: str, old_phase: str, new_phase: str, **metadata: Any
) -> Event:
    """A ``phase_transition`` from ``old_phase`` to ``new_phase`` (the event's phase)."""
    return Event(
        event_type=EventType.PHASE_TRANSITION,
        session_id=session_id,
        message=f"Phase transition: {old_phase} → {new_phase}",
        phase=new_phase,
        metadata={"old_phase": old_phase, "new_phase": new_phase, **metadata},
    )


def create_session_event(
    session_id: str,
    event_type: EventType,
    *,
    phase: str | None = None,
    message: str | None = None,
    **metadata: Any,
) -> Event:
    """A session lifecycle event: started, completed, failed or aborted."""
    default = _require("session", event_type, _SESSION_TYPES)
    return Event(
        event_type=event_type,
        session_id=session_id,
        message=message or f"{default}: {session_id}",
        phase=phase,
        metadata=metadata,
    )


def create_task_event(
    session_id: str,
    event_type: EventType,
    task_id: str,
    *,
    phase: str | None = None,
    agent_role: str | None = None,
    message: str | None = None,
    **metadata: Any,
) -> Event:
    """A task lifecycle event: scheduled, started, completed, failed, retrying or skipped."""
    default = _require("task", event_type, _TASK_TYPES)
    return Event(
        event_type=event_type,
        session_id=session_id,
        message=message or f"{default}: {task_id}",
        phase=phase,
        task_id=task_id,
        agent_role=agent_role,
        metadata=metadata,
    )


def create_agent_event(
    session_id: str,
    role: str,
    *,
    response: bool = False,
    task_id: str | None = None,
    phase: str | None = None,
    model: str | None = None,
    **metadata: Any,
) -> Event:
    """``agent_invoked`` (or ``agent_response`` when ``response``) for the agent ``role``."""
    return Event(
        event_type=EventType.AGENT_RESPONSE if response else EventType.AGENT_INVOKED,
        session_id=session_id,
        message=f"Agent {role} {'responded' if response else 'invoked'}"
        + (f" for {task_id}" if task_id else ""),
        phase=phase,
        task_id=task_id,
        agent_role=role,
        model=model,
        metadata=metadata,
    )


def create_model_routed_event(
    session_id: str,
    model: str,
    role: str,
    *,
    reason: str | None = None,
    task_id: str | None = None,
    phase: str | None = None,
    **metadata: Any,
) -> Event:
    """``model_routed``: the router chose ``model`` for the agent ``role``."""
    if reason is not None:
        metadata["reason"] = reason
    return Event(
        event_type=EventType.MODEL_ROUTED,
        session_id=session_id,
        message=f"Routed {role} to {model}",
        phase=phase,
        task_id=task_id,
        agent_role=role,
        model=model,
        metadata=metadata,
    )


def create_llm_request_event(
    session_id: str,
    model: str,
    role: str,
    prompt_tokens: int,
    task_id: str | None = None,
    *,
    phase: str | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    redact: Redactor | None = redact_secrets,
    **metadata: Any,
) -> Event:
    """``llm_request_sent`` to ``model`` for ``role``, with ``prompt_tokens`` in metadata.

    :param messages: the prompt; kept as ``metadata["messages"]``, a list of
        ``{"role": str, "content": str}`` (other keys are dropped), each
        content passed through ``redact``.
    :param redact: masks secrets in the captured text (``None``: the text is
        kept as given). If it raises or returns no string, the whole content
        becomes a ``[REDACTED: ...]`` marker and the failure is logged.
        Unlike :meth:`Emitter.llm_call`, no size cap is applied here.
    """
    if messages is not None:
        metadata["messages"] = redact_messages(messages, redact)
    return Event(
        event_type=EventType.LLM_REQUEST_SENT,
        session_id=session_id,
        message=f"LLM request to {model} for {role}",
        phase=phase,
        task_id=task_id,
        agent_role=role,
        model=model,
        metadata={"prompt_tokens": prompt_tokens, **metadata},
    )


def create_llm_response_event(
    session_id: str,
    model: str,
    role: str,
    prompt_tokens: int,
    completion_tokens: int,
    task_id: str | None = None,
    *,
    phase: str | None = None,
    cached_tokens: int | None = None,
    cost_usd: float | None = None,
    duration_s: float | None = None,
    parent_id: str | None = None,
    response: str | None = None,
    redact: Redactor | None = redact_secrets,
    **metadata: Any,
) -> Event:
    """``llm_response_received`` with token usage (and cost) in metadata.

    ``total_tokens`` is ``prompt_tokens + completion_tokens``. Pass the
    request event's id as ``parent_id`` to link the two (the instrumentation
    API does this for you).

    :param response: the response text, kept as ``metadata["response"]``
        after ``redact`` (as in :func:`create_llm_request_event`).
    """
    if response is not None:
        metadata["response"] = response if redact is None else safe_redact(redact, response)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["cached_tokens"] = cached_tokens
    if cost_usd is not None:
        usage["cost_usd"] = cost_usd
    if duration_s is not None:
        usage["duration_s"] = duration_s
    extra: dict[str, Any] = {} if parent_id is None else {"parent_id": parent_id}
    return Event(
        event_type=EventType.LLM_RESPONSE_RECEIVED,
        session_id=session_id,
        message=f"LLM response from {model} for {role}",
        phase=phase,
        task_id=task_id,
        agent_role=role,
        model=model,
        metadata={**usage, **metadata},
        **extra,
    )


def create_gate_event(
    session_id: str,
    gate: str,
    decision: GateDecision,
    *,
    reason: str = "",
    phase: str | None = None,
    task_id: str | None = None,
    **metadata: Any,
) -> Event:
    """A gate's decision: ``gate_evaluated`` (pass), ``gate_warned`` or ``gate_blocked``."""
    if decision not in _GATE_TYPES:
        raise ValueError(f"a gate decision is 'pass', 'warn' or 'block'; got {decision!r}")
    return Event(
        event_type=_GATE_TYPES[decision],
        session_id=session_id,
        message=f"Gate {gate}: {decision}" + (f" ({reason})" if reason else ""),
        phase=phase,
        task_id=task_id,
        metadata={"gate": gate, "decision": decision, "reason": reason, **metadata},
    )


def create_diff_event(
    session_id: str,
    files: Sequence[str],
    *,
    applied: bool = True,
    error: str | None = None,
    phase: str | None = None,
    task_id: str | None = None,
    agent_role: str | None = None,
    **metadata: Any,
) -> Event:
    """``diff_applied`` (or ``diff_failed`` with ``error``) touching ``files``."""
    data: dict[str, Any] = {"files": list(files), **metadata}
    if error is not None:
        data["error"] = error
    verb = "Applied diff to" if applied else "Failed to apply diff to"
    return Event(
        event_type=EventType.DIFF_APPLIED if applied else EventType.DIFF_FAILED,
        session_id=session_id,
        message=f"{verb} {len(files)} file(s)" + (f": {error}" if error else ""),
        phase=phase,
        task_id=task_id,
        agent_role=agent_role,
        metadata=data,
    )


def create_command_event(
    session_id: str,
    command: Sequence[str] | str,
    exit_code: int,
    *,
    duration_s: float | None = None,
    output: str = "",
    phase: str | None = None,
    task_id: str | None = None,
    **metadata: Any,
) -> Event:
    """``command_executed``: ``command`` ran and exited with ``exit_code``."""
    text = command if isinstance(command, str) else " ".join(command)
    data: dict[str, Any] = {"command": text, "exit_code": exit_code, **metadata}
    if duration_s is not None:
        data["duration_s"] = duration_s
    if output:
        data["output"] = output
    return Event(
        event_type=EventType.COMMAND_EXECUTED,
        session_id=session_id,
        message=f"Command exited {exit_code}: {text}",
        phase=phase,
        task_id=task_id,
        metadata=data,
    )


def create_verification_event(
    session_id: str,
    event_type: EventType,
    *,
    verifier: str = "",
    phase: str | None = None,
    task_id: str | None = None,
    message: str | None = None,
    **metadata: Any,
) -> Event:
    """A verification event: started, passed or failed."""
    default = _require("verification", event_type, _VERIFICATION_TYPES)
    return Event(
        event_type=event_type,
        session_id=session_id,
        message=message or (f"{default}: {verifier}" if verifier else default),
        phase=phase,
        task_id=task_id,
        metadata={"verifier": verifier, **metadata} if verifier else metadata,
    )


def create_artifact_event(
    session_id: str,
    key: str,
    content: Any = None,
    *,
    updated: bool = False,
    phase: str | None = None,
    task_id: str | None = None,
    **metadata: Any,
) -> Event:
    """``artifact_created`` (or ``artifact_updated``) for ``key``.

    ``content`` (JSON) goes in ``metadata["content"]``; an artifact sink
    persists it.
    """
    data: dict[str, Any] = {"key": key, **metadata}
    if content is not None:
        data["content"] = content
    return Event(
        event_type=EventType.ARTIFACT_UPDATED if updated else EventType.ARTIFACT_CREATED,
        session_id=session_id,
        message=f"Artifact {'updated' if updated else 'created'}: {key}",
        phase=phase,
        task_id=task_id,
        metadata=data,
    )


def create_clarification_event(
    session_id: str,
    question: str,
    answer: str | None = None,
    *,
    question_id: str | None = None,
    phase: str | None = None,
    task_id: str | None = None,
    agent_role: str | None = None,
    **metadata: Any,
) -> Event:
    """``clarification_requested`` (or ``clarification_answered`` when ``answer`` is given)."""
    data: dict[str, Any] = {"question": question, **metadata}
    if question_id is not None:
        data["question_id"] = question_id
    if answer is not None:
        data["answer"] = answer
    return Event(
        event_type=(
            EventType.CLARIFICATION_REQUESTED
            if answer is None
            else EventType.CLARIFICATION_ANSWERED
        ),
        session_id=session_id,
        message=f"Clarification {'requested' if answer is None else 'answered'}: {question}",
        phase=phase,
        task_id=task_id,
        agent_role=agent_role,
        metadata=data,
    )
