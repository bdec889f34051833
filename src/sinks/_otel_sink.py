"""The :class:`OtelSink` and the exporter wrapper that reports failed exports."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.to_thread
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from eventbus import Event, EventsLostError

from ._otel_spans import PreparedIds, SpanBuilder

__all__ = ["DEFAULT_TIMEOUT", "OtelSink", "traces_url"]

_TRACES_PATH: Final = "/v1/traces"
_QUEUE: Final = 4096  # spans the batch processor holds; the sink flushes at half
DEFAULT_TIMEOUT: Final = 4.0
"""Seconds one OTLP export may take, retries included, unless the caller or
``OTEL_EXPORTER_OTLP_TIMEOUT`` says otherwise: below the bus's ``close_timeout``
(5 s), so that closing with an unreachable endpoint reports the lost events
instead of being abandoned."""
_TIMEOUT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for ``endpoint``: a base URL gets ``/v1/traces``.

    ``http://localhost:6006`` -> ``http://localhost:6006/v1/traces``; a URL
    with another path is used as it is.
    """
    scheme, sep, rest = endpoint.partition("://")
    host, slash, path = rest.partition("/")
    if not sep or not host:
        raise ValueError(
            f"the OTLP endpoint must be an http(s) URL such as http://localhost:4318, "
            f"got {endpoint!r}"
        )
    if not slash or not path.strip("/"):
        return f"{scheme}://{host}{_TRACES_PATH}"
    return endpoint


class _ReportingExporter(SpanExporter):
    """Delegates to the real exporter and remembers what it failed to export.

    The batch processor runs it in its worker thread and only logs a failed
    export; the sink reads :attr:`failed` to raise it on the bus's path.
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.events: dict[int, int] = {}  # span id -> how many events it holds
        self.failed = 0  # events in spans that failed to export
        self.failed_spans = 0
        self.exported = 0  # events in spans the exporter accepted
        self.reason = ""
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        events = sum(
            self.events.pop(span.context.span_id, 1) if span.context else 1 for span in spans
        )
        try:
            result = self.exporter.export(spans)
        except Exception as exc:
            self._fail(len(spans), events, f"{type(self.exporter).__name__} raised {exc!r}")
            raise
        if result is not SpanExportResult.SUCCESS:
            self._fail(
                len(spans),
                events,
                f"{type(self.exporter).__name__} reported a failed export "
                "(the opentelemetry logger says why)",
            )
        else:
            with self._lock:
                self.exported += events
        return result

    def _fail(self, spans: int, events: int, reason: str) -> None:
        with self._lock:
            self.failed += events
            self.failed_spans += spans
            self.reason = self.reason or reason

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class OtelSink:
    """A sink that exports sessions as OpenTelemetry traces (GenAI and OpenInference).

    :param endpoint: the OTLP/HTTP receiver, a base URL (``http://localhost:6006``)
        or the traces URL (``.../v1/traces``). ``None``: the SDK's default
        (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
        else ``http://localhost:4318/v1/traces``).
    :param exporter: a span exporter to use instead of OTLP/HTTP (e.g. the
        SDK's ``InMemorySpanExporter`` in tests); excludes ``endpoint``.
    :param headers: HTTP headers for the OTLP exporter (e.g. an API key).
    :param timeout: seconds one OTLP export may take, retries included
        (``None``: ``OTEL_EXPORTER_OTLP_TIMEOUT`` if set, else
        :data:`DEFAULT_TIMEOUT`, 4 s).
    :param service_name: the resource's ``service.name``.
    :param project: the Phoenix project the traces go to (the resource
        attribute ``openinference.project.name``); ``None``: Phoenix's default.
    :param resource_attributes: more resource attributes.
    :param name: the sink's name in the bus's stats and errors.
    :param schedule_delay: seconds the batch processor waits before
        exporting ended spans (``None``: the SDK's default, 5 s).
    :raises ValueError: ``endpoint`` and ``exporter`` are both given, or
        ``endpoint`` is not a URL.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        exporter: SpanExporter | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        service_name: str = "eventbus",
        project: str | None = None,
        resource_attributes: Mapping[str, str | int | float | bool] | None = None,
        name: str = "otel",
        schedule_delay: float | None = None,
    ) -> None:
        if exporter is not None and endpoint is not None:
            raise ValueError("give OtelSink an endpoint or an exporter, not both")
        if exporter is None:
            url = None if endpoint is None else traces_url(endpoint)
            if timeout is None and not any(map(os.environ.get, _TIMEOUT_VARIABLES)):
                timeout = DEFAULT_TIMEOUT
            exporter = OTLPSpanExporter(endpoint=url, headers=headers, timeout=timeout)
            self.where = f"the OTLP endpoint {url or 'set by OTEL_EXPORTER_OTLP_*'}"
        else:
            self.where = f"the span exporter {type(exporter).__name__}"
        self.name = name
        attributes: dict[str, Any] = {"service.name": service_name}
        if project is not None:
            attributes["openinference.project.name"] = project
        attributes.update(resource_attributes or {})
        self._exporter = _ReportingExporter(exporter)
        self._processor = BatchSpanProcessor(
            self._exporter,
            max_queue_size=_QUEUE,
            schedule_delay_millis=None if schedule_delay is None else schedule_delay * 1000,
        )
        ids = PreparedIds()
        self._provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=Resource.create(attributes),
            id_generator=ids,
            span_limits=SpanLimits(
                max_span_attributes=1024,
                max_events=SpanLimits.UNSET,
                max_event_attributes=1024,
            ),
        )
        self._provider.add_span_processor(self._processor)
        tracer = self._provider.get_tracer("eventbus.sinks.otel")
        self._builder = SpanBuilder(tracer, ids, self._ended)
        self._pending = 0  # spans ended since the last flush
        self._reported = 0  # failed events already raised
        self._done: tuple[int, str, str, int] | None = None  # (len, first, last, converted)
        self._closed = False

    def __repr__(self) -> str:
        return f"OtelSink({self.where!r})"

    @property
    def exported(self) -> int:
        """How many events are in spans the exporter accepted (the backend has them)."""
        return self._exporter.exported

    @property
    def open_spans(self) -> int:
        """How many spans have started and not ended yet."""
        return self._builder.open_spans

    def _ended(self, span_id: int, events: int) -> None:
        self._exporter.events[span_id] = events
        self._pending += 1

    async def write(self, events: Sequence[Event]) -> None:
        """Turn ``events`` into spans; ended spans are queued for export.

        Spans are exported in the background by the SDK's batch processor;
        when it has queued half its capacity the sink waits for an export
        (backpressure, never a dropped span). A retried batch (the same
        events) is not converted twice.

        :raises EventsLostError: an export failed since the last call (the
            spans it held, counted in events, are lost).
        """
        self._raise_if_lost()
        if not events:
            return
        batch = (len(events), events[0].id, events[-1].id)
        start = 0
        if self._done is not None and self._done[:3] == batch:
            start = self._done[3]
        for index in range(start, len(events)):
            self._builder.add(events[index])
            self._done = (*batch, index + 1)
            if self._pending >= _QUEUE // 2:
                await self.flush()
        self._raise_if_lost()

    async def export(self, events: Iterable[Event]) -> int:
        """Convert ``events`` (e.g. read from a log) as :meth:`write` does; return how many."""
        count = 0
        for event in events:
            self._builder.add(event)
            count += 1
            if self._pending >= _QUEUE // 2:
                await self.flush()
        self._raise_if_lost()
        return count

    async def flush(self) -> None:
        """Export every ended span now (in a worker thread) and wait for it.

        :raises EventsLostError: an export failed.
        """
        self._pending = 0
        await anyio.to_thread.run_sync(self._processor.force_flush, abandon_on_cancel=True)
        self._raise_if_lost()

    async def aclose(self) -> None:
        """End the spans still open (marked ``eventbus.unfinished``), export all, shut down.

        :raises EventsLostError: an export failed.
        """
        if self._closed:
            return
        self._closed = True
        self._builder.finish()
        await anyio.to_thread.run_sync(self._provider.shutdown, abandon_on_cancel=True)
        self._raise_if_lost()

    def _raise_if_lost(self) -> None:
        failed = self._exporter.failed
        if failed > self._reported:
            lost, self._reported = failed - self._reported, failed
            raise EventsLostError(lost, self.where, self._exporter.reason)
