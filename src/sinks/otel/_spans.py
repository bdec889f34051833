"""Events to spans: how :class:`~sinks.otel.OtelSink` pairs start and end events.

:class:`SpanBuilder` receives events one by one and drives an OpenTelemetry
SDK tracer: a start event opens a span (``start_span`` at the event's time,
its ids prepared by :class:`PreparedIds`), the matching end event ends it, a
command is a span of its own, and everything else becomes a span event on
the span it belongs to. No state outlives a span except, per session, the
root span's id and the time of the last event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from eventbus import Event, EventType

__all__ = ["PreparedIds", "SpanBuilder", "span_id_for", "trace_id_for"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_INT64: Final = 1 << 63
_MAX_COMMAND_IN_NAME: Final = 60

# Metadata that becomes attributes of its own (or is too large to repeat as a scalar).
_NOT_COPIED: Final = frozenset({"messages", "response", "truncated"})

_E = EventType
_SESSION_ENDS: Final = {_E.SESSION_COMPLETED, _E.SESSION_FAILED, _E.SESSION_ABORTED}
_FAILED_ENDS: Final = {
    _E.SESSION_FAILED,
    _E.SESSION_ABORTED,
    _E.TASK_FAILED,
    _E.VERIFICATION_FAILED,
    _E.ERROR,
}
# start event type -> (span kind, end event types)
_PAIRS: Final = {
    _E.TASK_STARTED: ("task", {_E.TASK_COMPLETED, _E.TASK_FAILED}),
    _E.AGENT_INVOKED: ("agent", {_E.AGENT_RESPONSE}),
    _E.LLM_REQUEST_SENT: ("llm", {_E.LLM_RESPONSE_RECEIVED}),
    _E.VERIFICATION_STARTED: ("verification", {_E.VERIFICATION_PASSED, _E.VERIFICATION_FAILED}),
}
_END_KIND: Final = {end: kind for kind, ends in _PAIRS.values() for end in ends}


def trace_id_for(session_id: str) -> int:
    """Return the trace id of a session: 128 bits of a BLAKE2b hash of its id (never 0)."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=16, person=b"eventbus.trace")
    return int.from_bytes(digest.digest(), "big") or 1


def span_id_for(event_id: str) -> int:
    """Return the span id of the span an event opens: 64 bits of a BLAKE2b hash (never 0)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8, person=b"eventbus.span")
    return int.from_bytes(digest.digest(), "big") or 1


def nanoseconds(timestamp: datetime) -> int:
    """Nanoseconds since the Unix epoch, exact to the microsecond (the event's precision)."""
    return (timestamp - _EPOCH) // _MICROSECOND * 1000


class PreparedIds(IdGenerator):
    """An id generator that returns the ids set just before each ``start_span``."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        """The span id prepared for the span being started."""
        return self.span_id

    def generate_trace_id(self) -> int:
        """The trace id prepared for the span being started (used for roots only)."""
        return self.trace_id


def _scalar(value: Any) -> str | bool | int | float | None:
    """An attribute value for a JSON value: scalars as they are, the rest as JSON."""
    if isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _event_attributes(event: Event) -> dict[str, Any]:
    """The attributes of a span event: the event's fields and its metadata."""
    attributes: dict[str, Any] = {
        "eventbus.event_id": event.id,
        "eventbus.message": event.message,
        **_fields(event),
    }
    if event.parent_id is not None:
        attributes["eventbus.parent_id"] = event.parent_id
    attributes.update(_metadata_attributes(event.metadata))
    return attributes


def _fields(event: Event) -> dict[str, str]:
    """The event's phase, task id, role and model that are set, as attributes."""
    fields = (
        ("eventbus.phase", event.phase),
        ("eventbus.task_id", event.task_id),
        ("eventbus.agent_role", event.agent_role),
        ("eventbus.model", event.model),
    )
    return {key: value for key, value in fields if value is not None}


def _metadata_attributes(metadata: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in _NOT_COPIED:
            continue
        scalar = _scalar(value)
        if scalar is not None:
            found[f"eventbus.metadata.{key}"] = scalar
    return found


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


class _Open:
    """A span this builder started and has not ended."""

    __slots__ = ("event", "key", "kind", "span")

    def __init__(self, span: Span, kind: str, event: Event, key: tuple[str, ...]) -> None:
        self.span = span
        self.kind = kind
        self.event = event
        self.key = key


class SpanBuilder:
    """Turns events into spans on ``tracer`` (whose provider uses ``ids``).

    :param on_end: called with each span's id and how many events it holds,
        just before the span ends (the exporter wrapper counts lost events with it).
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        ids: PreparedIds,
        on_end: Callable[[int, int], None],
    ) -> None:
        self._tracer = tracer
        self._ids = ids
        self._on_end = on_end
        self._open: dict[str, _Open] = {}  # start event id -> its open span
        self._by_key: dict[tuple[str, ...], list[str]] = {}  # for end events without links
        self._counts: dict[str, int] = {}  # start event id -> events the span holds so far
        self._roots: dict[str, str] = {}  # session id -> its session_started event's id
        self._last: dict[str, int] = {}  # session id -> ns of its latest event
        self._active: dict[str, int] = {}  # session id -> how many of its spans are open

    @property
    def open_spans(self) -> int:
        """How many spans are started and not yet ended."""
        return len(self._open)

    def add(self, event: Event) -> None:
        """Turn one event into (part of) a span."""
        time = nanoseconds(event.timestamp)
        event_type = event.event_type
        if event_type is _E.SESSION_STARTED:
            self._start(event, "session", (), time)
        elif event_type in _PAIRS:
            kind = _PAIRS[event_type][0]
            self._start(event, kind, self._key_of(kind, event), time)
        elif event_type is _E.COMMAND_EXECUTED:
            self._command(event, time)
        else:
            opened = self._opened_by(event)
            if opened is None:
                self._point(event, time)
            else:
                self._end(opened, event, time)
        session = event.session_id
        if session in self._active and time > self._last.get(session, 0):
            self._last[session] = time  # where its unfinished spans end

    def finish(self) -> None:
        """End every open span at its session's last event, marked unfinished."""
        for opened in list(self._open.values()):
            span = opened.span
            span.set_attribute("eventbus.unfinished", True)
            span.set_status(
                Status(
                    StatusCode.ERROR,
                    "unfinished: its end event had not arrived when the export closed",
                )
            )
            self._close(opened, self._last.get(opened.event.session_id, 0))

    # --- spans ---------------------------------------------------------------------------

    def _parent(self, event: Event, *, root: bool = False) -> Context:
        """The context to start a span of ``event`` in; prepares the trace id too."""
        session = event.session_id
        self._ids.trace_id = trace_id_for(session)
        if root:
            return Context()
        parent_id = event.parent_id
        if parent_id is None:
            parent_id = self._roots.get(session)
            if parent_id is None:
                return Context()
        parent = SpanContext(
            trace_id=self._ids.trace_id,
            span_id=span_id_for(parent_id),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(parent))

    def _begin(self, name: str, event: Event, time: int, *, root: bool = False) -> Span:
        context = self._parent(event, root=root)
        self._ids.span_id = span_id_for(event.id)
        span = self._tracer.start_span(name, context=context, start_time=time)
        assert isinstance(span, Span)
        span.set_attributes(self._span_attributes(event))
        return span

    def _start(self, event: Event, kind: str, key: tuple[str, ...], time: int) -> None:
        session = event.session_id
        if kind == "session":
            span = self._begin(f"session {session}", event, time, root=True)
            span.set_attribute("openinference.span.kind", "CHAIN")
            idea = event.metadata.get("idea")
            if isinstance(idea, str):
                span.set_attribute("input.value", idea)
            self._roots[session] = event.id
        elif kind == "task":
            span = self._begin(f"task {event.task_id}", event, time)
            span.set_attribute("openinference.span.kind", "CHAIN")
        elif kind == "agent":
            role = event.agent_role or "agent"
            span = self._begin(f"invoke_agent {role}", event, time)
            span.set_attributes(
                {
                    "openinference.span.kind": "AGENT",
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": role,
                    "agent.name": role,
                }
            )
            if event.model is not None:
                span.set_attribute("gen_ai.request.model", event.model)
        elif kind == "llm":
            span = self._begin(f"chat {event.model or 'unknown'}", event, time)
            self._llm_request(span, event)
        else:  # verification
            verifier = event.metadata.get("verifier")
            name = f"verification {verifier}" if verifier else "verification"
            span = self._begin(name, event, time)
            span.set_attribute("openinference.span.kind", "CHAIN")
        self._open[event.id] = _Open(span, kind, event, key)
        self._counts[event.id] = 1
        self._active[session] = self._active.get(session, 0) + 1
        if key:
            self._by_key.setdefault(key, []).append(event.id)

    def _end(self, opened: _Open, event: Event, time: int) -> None:
        span = opened.span
        span.set_attributes(
            {"eventbus.end_event_id": event.id, "eventbus.end_event_type": event.event_type.value}
        )
        span.set_attributes(_metadata_attributes(event.metadata))
        if opened.kind == "llm":
            self._llm_response(span, event)
        elif opened.kind == "agent" and event.event_type is _E.AGENT_RESPONSE:
            summary = event.metadata.get("summary")
            if isinstance(summary, str):
                span.set_attribute("output.value", summary)
        if event.event_type in _FAILED_ENDS:
            reason = event.metadata.get("error") or event.metadata.get("reason") or event.message
            span.set_status(Status(StatusCode.ERROR, str(reason)))
        self._counts[opened.event.id] += 1
        self._close(opened, time)

    def _close(self, opened: _Open, time: int) -> None:
        start_id = opened.event.id
        del self._open[start_id]
        if opened.key:
            waiting = self._by_key[opened.key]
            waiting.remove(start_id)
            if not waiting:
                del self._by_key[opened.key]
        session = opened.event.session_id
        if opened.kind == "session" and self._roots.get(session) == start_id:
            del self._roots[session]
        self._active[session] -= 1
        if not self._active[session]:
            del self._active[session]
            self._last.pop(session, None)  # only unfinished spans need it
        self._on_end(span_id_for(start_id), self._counts.pop(start_id))
        opened.span.end(end_time=max(time, nanoseconds(opened.event.timestamp)))

    def _command(self, event: Event, time: int) -> None:
        text = str(event.metadata.get("command", ""))
        duration = _number(event.metadata.get("duration_s"))
        # Whole microseconds, as event times are (backends store microseconds).
        start = (
            time - round(duration * 1e6) * 1000 if duration is not None and duration > 0 else time
        )
        shown = (
            text if len(text) <= _MAX_COMMAND_IN_NAME else text[: _MAX_COMMAND_IN_NAME - 1] + "…"
        )
        span = self._begin(f"command {shown}".rstrip(), self._in_task(event), start)
        span.set_attributes(
            {
                "openinference.span.kind": "TOOL",
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "command",
                "tool.name": "command",
                "process.command_line": text,
                "input.value": text,
            }
        )
        exit_code = event.metadata.get("exit_code")
        if isinstance(exit_code, int):
            span.set_attribute("process.exit_code", exit_code)
            if exit_code != 0:
                span.set_status(Status(StatusCode.ERROR, f"{text} exited with {exit_code}"))
        output = event.metadata.get("output")
        if isinstance(output, str) and output:
            span.set_attribute("output.value", output)
        self._on_end(span_id_for(event.id), 1)
        span.end(end_time=time)

    def _point(self, event: Event, time: int) -> None:
        """A span event on the span ``event`` belongs to, or a span of its own if none is open."""
        target = self._target(event)
        if target is not None:
            target.span.add_event(event.event_type.value, _event_attributes(event), time)
            self._counts[target.event.id] += 1
            return
        span = self._begin(event.event_type.value, event, time)
        span.set_attribute("eventbus.point_event", True)
        span.add_event(event.event_type.value, _event_attributes(event), time)
        self._on_end(span_id_for(event.id), 1)
        span.end(end_time=time)

    # --- pairing -----------------------------------------------------------------------

    @staticmethod
    def _key_of(kind: str, event: Event) -> tuple[str, ...]:
        """What an end event without a link is matched on: the latest open span with this key."""
        session, task = event.session_id, event.task_id or ""
        if kind == "task":
            return (kind, session, task)
        if kind == "agent":
            return (kind, session, task, event.agent_role or "")
        if kind == "llm":
            return (kind, session, task, event.agent_role or "", event.model or "")
        return (kind, session, str(event.metadata.get("verifier", "")))

    def _opened_by(self, event: Event) -> _Open | None:
        """The open span ``event`` ends, if it is an end event and its span is open."""
        event_type = event.event_type
        if event_type in _SESSION_ENDS:
            root = self._roots.get(event.session_id)
            return None if root is None else self._open.get(root)
        if event_type is _E.ERROR:
            return self._failed_call(event)
        kind = _END_KIND.get(event_type)
        if kind is None:
            return None
        link = event.metadata.get("invocation_id") if kind == "agent" else event.parent_id
        opened = self._open.get(link) if isinstance(link, str) else None
        if opened is not None and opened.kind == kind:
            return opened
        waiting = self._by_key.get(self._key_of(kind, event))
        return self._open[waiting[-1]] if waiting else None

    def _failed_call(self, event: Event) -> _Open | None:
        """The agent or LLM span an ``error`` event ends (the emitter's failure of a block)."""
        operation = event.metadata.get("operation")
        if operation == "agent":
            link = event.metadata.get("invocation_id")
            opened = self._open.get(link) if isinstance(link, str) else None
            return opened if opened is not None and opened.kind == "agent" else None
        if operation == "llm_call" and event.parent_id is not None:
            opened = self._open.get(event.parent_id)
            return opened if opened is not None and opened.kind == "llm" else None
        return None

    def _target(self, event: Event) -> _Open | None:
        """The open span a point event is recorded on."""
        if event.parent_id is not None:
            return self._open.get(event.parent_id)
        if event.task_id is not None:
            waiting = self._by_key.get(("task", event.session_id, event.task_id))
            if waiting:
                return self._open[waiting[-1]]
        root = self._roots.get(event.session_id)
        return None if root is None else self._open.get(root)

    def _in_task(self, event: Event) -> Event:
        """``event``, or for one without ``parent_id`` inside an open task, linked to it."""
        if event.parent_id is not None or event.task_id is None:
            return event
        waiting = self._by_key.get(("task", event.session_id, event.task_id))
        if not waiting:
            return event
        return _with_parent(event, waiting[-1])

    # --- attributes --------------------------------------------------------------------

    @staticmethod
    def _span_attributes(event: Event) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "session.id": event.session_id,
            "gen_ai.conversation.id": event.session_id,
            "eventbus.session_id": event.session_id,
            "eventbus.event_id": event.id,
            "eventbus.event_type": event.event_type.value,
            **_fields(event),
        }
        attributes.update(_metadata_attributes(event.metadata))
        return attributes

    @staticmethod
    def _llm_request(span: Span, event: Event) -> None:
        model = event.model or "unknown"
        span.set_attributes(
            {
                "openinference.span.kind": "LLM",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "llm.model_name": model,
            }
        )
        messages = event.metadata.get("messages")
        if not isinstance(messages, list):
            return
        shown: list[dict[str, str]] = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            role, content = str(message.get("role", "")), str(message.get("content", ""))
            prefix = f"llm.input_messages.{index}.message"
            span.set_attributes({f"{prefix}.role": role, f"{prefix}.content": content})
            shown.append({"role": role, "content": content})
        span.set_attributes(
            {
                "input.value": json.dumps({"messages": shown}, ensure_ascii=False),
                "input.mime_type": "application/json",
            }
        )

    @staticmethod
    def _llm_response(span: Span, event: Event) -> None:
        metadata = event.metadata
        usage = {
            "prompt_tokens": (
                "gen_ai.usage.input_tokens",
                "llm.token_count.prompt",
            ),
            "completion_tokens": (
                "gen_ai.usage.output_tokens",
                "llm.token_count.completion",
            ),
            "total_tokens": ("llm.token_count.total",),
            "cached_tokens": (
                "gen_ai.usage.cache_read.input_tokens",
                "llm.token_count.prompt_details.cache_read",
            ),
            "cost_usd": ("gen_ai.usage.cost", "llm.cost.total"),
        }
        for key, names in usage.items():
            value = _number(metadata.get(key))
            if value is not None:
                span.set_attributes(dict.fromkeys(names, value))
        if event.model is not None:
            span.set_attribute("gen_ai.response.model", event.model)
        response = metadata.get("response")
        if isinstance(response, str):
            span.set_attributes(
                {
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": response,
                    "output.value": response,
                    "output.mime_type": "text/plain",
                }
            )


def _with_parent(event: Event, parent_id: str) -> Event:
    return msgspec.structs.replace(event, parent_id=parent_id)
