"""OpenTelemetry export (extra ``otel``): sessions as traces, in the tools users already run.

:class:`OtelSink` turns a bus's events into spans and sends them with the
OpenTelemetry SDK (its ``TracerProvider``, ``BatchSpanProcessor`` and the
OTLP/HTTP exporter) to any OTLP receiver: Arize Phoenix, Langfuse, Jaeger,
Grafana Tempo, Logfire, an OpenTelemetry Collector::

    async with EventBus() as bus:
        bus.subscribe(OtelSink("http://localhost:6006", project="agents"))
        ...

Past sessions are sent from their logs with ``eventbus export-otel DIR``.

**Spans.** One trace per session; its root span is the session
(``session_started`` to ``session_completed``/``_failed``/``_aborted``).
Start and end events make a span: a task (``task_started`` to
``task_completed``/``task_failed``), ``invoke_agent {role}``
(``agent_invoked`` to ``agent_response``), ``chat {model}``
(``llm_request_sent`` to ``llm_response_received``) and a verification
(``verification_started`` to ``_passed``/``_failed``); an emitter's
``error`` event ends the agent or LLM span whose block failed. A
``command_executed`` is a span of its own (its ``duration_s`` before the
event). Every other event (gates, diffs, retries, clarifications, phase
transitions, artifacts, and types this version does not know) is a span
event on the span it belongs to, or, when that span is not open here, a
zero-length span of its own. A span's parent is the span of the event's
``parent_id`` (an event without one belongs to its open task, else to its
session). Failures (``*_failed``, ``session_aborted``, an ``error`` that
ends a span, a command's non-zero exit) set the status to ERROR with the
error. Times are the events' timestamps, never the export's.

**Attributes.** LLM spans carry the OpenTelemetry GenAI attributes
(``gen_ai.operation.name`` = ``chat``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.usage.cost``) and
the OpenInference ones Phoenix reads (``openinference.span.kind`` = ``LLM``,
``llm.model_name``, ``llm.token_count.prompt``/``completion``/``total``,
``llm.cost.total``, ``llm.input_messages.*`` and ``input.value`` from
``metadata["messages"]``, ``llm.output_messages.0.*`` and ``output.value``
from ``metadata["response"]``). Every span has ``session.id`` and
``eventbus.event_id`` (its start event), scalar metadata as
``eventbus.metadata.{key}``.

**Ids.** The trace id is derived from the session id
(:func:`trace_id_for`), a span's id from its start event's id
(:func:`span_id_for`). So exporting a session twice, live or from its log,
yields the same trace (a backend keeps one span per id), and spans exported
by several processes of one session join one trace.

**Delivery.** Spans are exported when they end, in the background (the
batch processor's thread); :meth:`OtelSink.flush` exports now. A span
still open when the sink closes (a cancelled session) is ended at its
session's last event, with ``eventbus.unfinished = true`` and status ERROR.
A failed export (after the OTLP exporter's own retries) is raised by the
next ``write``, ``flush`` or ``aclose`` as :class:`~eventbus.EventsLostError`
(the bus then marks the sink failed and reports it).
"""

from __future__ import annotations

try:
    import opentelemetry.exporter.otlp.proto.http
    import opentelemetry.sdk  # noqa: F401
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sinks.otel needs opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http, "
        "which are not installed: pip install 'eventbus[otel]'"
    ) from _error

from ._sink import DEFAULT_TIMEOUT, OtelSink, traces_url
from ._spans import span_id_for, trace_id_for

__all__ = ["DEFAULT_TIMEOUT", "OtelSink", "span_id_for", "trace_id_for", "traces_url"]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
