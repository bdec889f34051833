"""sinks.otel: sessions become OpenTelemetry traces (the SDK's in-memory exporter, OTLP/HTTP)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from eventbus import (
    Event,
    EventBatch,
    EventBus,
    EventsLostError,
    EventType,
    MemorySink,
    RetryPolicy,
    Sink,
    SinkFailedError,
    parent_scope,
)
from eventbus.cli import main
from eventbus.coordinator import Emitter, ModelPrice
from sinks.jsonl import JsonlSink
from sinks.otel import OtelSink, span_id_for, trace_id_for

PRICE = ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0)
T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


async def scripted_session(bus: EventBus, session_id: str) -> None:
    """A session with every kind of span and span event, emitted as the coordinator does."""
    emitter = Emitter(bus, session_id, phase="EXECUTION")
    started = await emitter.session_event(EventType.SESSION_STARTED, idea="a calculator")
    with parent_scope(started.id):
        await emitter.gate("scope", "warn", reason="large plan")
        async with emitter.task("t1", role="coder") as task:
            await task.retrying("flaky network", attempt=1)
            async with (
                emitter.agent("coder", model="m-large"),
                emitter.llm_call(
                    model="m-large",
                    role="coder",
                    prompt_tokens=120,
                    price=PRICE,
                    messages=[{"role": "user", "content": "write add()"}],
                ) as call,
            ):
                call.set_usage(completion_tokens=30)
                call.set_response("def add(a, b): return a + b")
            await emitter.diff(["app/add.py"])
            await emitter.clarification("which base?", question_id="q1")
            await emitter.clarification("which base?", "ten", question_id="q1")
            await emitter.command(["python", "-m", "py_compile", "app/add.py"], 0, duration_s=0.25)
        async with emitter.verification("unit tests") as verification:
            await emitter.command("pytest -q", 1, duration_s=0.5)
            verification.fail("pytest -q exited with 1")
        await emitter.session_event(EventType.SESSION_COMPLETED)


async def run_session(
    sink: Sink, session_id: str = "s1", *, log: Path | None = None
) -> list[Event]:
    """Run the scripted session on a bus with ``sink`` (and a JSONL log under ``log``)."""
    events = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        bus.subscribe(events)
        if log is not None:
            bus.subscribe(JsonlSink(log))
        await scripted_session(bus, session_id)
    return events.events


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def shape(span: ReadableSpan) -> tuple[Any, ...]:
    """What must be equal between two exports of the same session."""
    assert span.context is not None
    parent = None if span.parent is None else span.parent.span_id
    return (
        span.context.trace_id,
        span.context.span_id,
        parent,
        span.name,
        span.start_time,
        span.end_time,
        span.status.status_code,
        tuple(sorted(dict(span.attributes or {}).items())),
        tuple((event.name, event.timestamp) for event in span.events),
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.mark.anyio
async def test_a_session_is_one_trace_whose_tree_follows_parent_ids(
    exporter: InMemorySpanExporter,
) -> None:
    """Each span's parent is the span of its start event's parent_id; the root is the session."""
    events = await run_session(OtelSink(exporter=exporter))
    spans = exporter.get_finished_spans()
    starts = {event.id: event for event in events}
    assert {span.context.trace_id for span in spans if span.context} == {trace_id_for("s1")}
    assert sorted(span.name for span in spans) == [
        "chat m-large",
        "command pytest -q",
        "command python -m py_compile app/add.py",
        "invoke_agent coder",
        "session s1",
        "task t1",
        "verification unit tests",
    ]
    for span in spans:
        start = starts[str((span.attributes or {})["eventbus.event_id"])]
        assert span.context is not None
        assert span.context.span_id == span_id_for(start.id)
        if start.event_type is EventType.SESSION_STARTED:
            assert span.parent is None
        else:
            assert start.parent_id is not None
            assert span.parent is not None
            assert span.parent.span_id == span_id_for(start.parent_id)
    spans_by_name = by_name(spans)
    task = spans_by_name["task t1"]
    assert task.parent is not None
    assert task.parent.span_id == span_id_for(events[0].id)


@pytest.mark.anyio
async def test_llm_span_has_genai_and_openinference_attributes(
    exporter: InMemorySpanExporter,
) -> None:
    """chat {model} has usage, cost, prompt and response as Phoenix and GenAI tools read them."""
    await run_session(OtelSink(exporter=exporter))
    attributes = dict(by_name(exporter.get_finished_spans())["chat m-large"].attributes or {})
    cost = PRICE.cost(120, 30)
    assert (
        attributes
        | {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "m-large",
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 30,
            "gen_ai.usage.cost": cost,
            "openinference.span.kind": "LLM",
            "llm.token_count.prompt": 120,
            "llm.token_count.completion": 30,
            "llm.token_count.total": 150,
            "llm.cost.total": cost,
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.content": "write add()",
            "llm.output_messages.0.message.content": "def add(a, b): return a + b",
            "output.value": "def add(a, b): return a + b",
        }
        == attributes
    )


@pytest.mark.anyio
async def test_agent_span_is_invoke_agent_role(exporter: InMemorySpanExporter) -> None:
    """agent_invoked -> agent_response is an AGENT span named for the role."""
    await run_session(OtelSink(exporter=exporter))
    attributes = dict(by_name(exporter.get_finished_spans())["invoke_agent coder"].attributes or {})
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "coder"
    assert attributes["openinference.span.kind"] == "AGENT"


@pytest.mark.anyio
async def test_gates_diffs_retries_clarifications_are_span_events_of_their_span(
    exporter: InMemorySpanExporter,
) -> None:
    """Point events land on the span they belong to, at their own time."""
    events = await run_session(OtelSink(exporter=exporter))
    spans = by_name(exporter.get_finished_spans())
    assert [event.name for event in spans["session s1"].events] == ["gate_warned"]
    assert [event.name for event in spans["task t1"].events] == [
        "task_retrying",
        "diff_applied",
        "clarification_requested",
        "clarification_answered",
    ]
    gate = next(event for event in events if event.event_type is EventType.GATE_WARNED)
    recorded = spans["session s1"].events[0]
    assert (
        recorded.timestamp
        == (gate.timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    )
    assert dict(recorded.attributes or {})["eventbus.metadata.reason"] == "large plan"


@pytest.mark.anyio
async def test_failures_set_error_status_with_the_message(exporter: InMemorySpanExporter) -> None:
    """A failed verification and a failing command are ERROR with why; what passed is not."""
    await run_session(OtelSink(exporter=exporter))
    spans = by_name(exporter.get_finished_spans())
    verification = spans["verification unit tests"].status
    assert verification.status_code is StatusCode.ERROR
    assert verification.description == "pytest -q exited with 1"
    assert spans["command pytest -q"].status.status_code is StatusCode.ERROR
    assert spans["command python -m py_compile app/add.py"].status.status_code is StatusCode.UNSET
    assert spans["task t1"].status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_failed_llm_call_ends_its_span_with_error(exporter: InMemorySpanExporter) -> None:
    """The emitter's error event for a failed LLM block ends the chat span as ERROR."""
    sink = OtelSink(exporter=exporter)
    async with EventBus() as bus:
        bus.subscribe(sink)
        emitter = Emitter(bus, "s1")
        with pytest.raises(TimeoutError, match="model timed out"):
            async with emitter.llm_call(model="m", role="coder", prompt_tokens=5):
                raise TimeoutError("model timed out")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat m"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "model timed out"
    assert not (span.attributes or {}).get("eventbus.unfinished")


@pytest.mark.anyio
async def test_span_times_are_the_event_timestamps(exporter: InMemorySpanExporter) -> None:
    """A task logged an hour ago spans its events' times, not the export's."""
    started = Event(
        event_type=EventType.TASK_STARTED, session_id="s1", message="go", task_id="t", timestamp=T0
    )
    done = Event(
        event_type=EventType.TASK_COMPLETED,
        session_id="s1",
        message="done",
        task_id="t",
        timestamp=T0 + timedelta(seconds=2, microseconds=500),
        parent_id=started.id,
    )
    sink = OtelSink(exporter=exporter)
    await sink.write(EventBatch([started, done]))
    await sink.aclose()
    (span,) = exporter.get_finished_spans()
    assert span.start_time == int(T0.timestamp()) * 10**9
    assert span.end_time == span.start_time + 2_000_500_000


@pytest.mark.anyio
async def test_command_is_a_span_of_its_duration_ending_at_its_event(
    exporter: InMemorySpanExporter,
) -> None:
    """command_executed becomes a TOOL span from duration_s before the event to the event."""
    command = Event(
        event_type=EventType.COMMAND_EXECUTED,
        session_id="s1",
        message="ran",
        timestamp=T0,
        metadata={"command": "make test", "exit_code": 0, "duration_s": 1.2345671},
    )
    sink = OtelSink(exporter=exporter)
    await sink.write(EventBatch([command]))
    await sink.aclose()
    (span,) = exporter.get_finished_spans()
    assert span.name == "command make test"
    assert span.end_time == int(T0.timestamp()) * 10**9
    assert span.start_time == span.end_time - 1_234_567_000
    assert (span.attributes or {})["openinference.span.kind"] == "TOOL"


@pytest.mark.anyio
async def test_live_and_log_exports_give_the_same_trace(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The same session exported live and later from its log yields identical spans and ids."""
    await run_session(OtelSink(exporter=exporter), log=tmp_path)
    again = InMemorySpanExporter()
    from eventbus.cli._otel import export_logs

    replay = OtelSink(exporter=again)
    await export_logs(tmp_path, ["s1"], replay)
    await replay.aclose()
    live = sorted(shape(span) for span in exporter.get_finished_spans())
    assert live == sorted(shape(span) for span in again.get_finished_spans())
    assert len(live) == 7


@pytest.mark.anyio
async def test_spans_from_two_processes_of_one_session_join_one_trace(
    exporter: InMemorySpanExporter,
) -> None:
    """A sink that sees only the LLM call nests it under the task another sink exported."""
    events = await run_session(MemorySink())
    request = next(e for e in events if e.event_type is EventType.LLM_REQUEST_SENT)
    response = next(e for e in events if e.event_type is EventType.LLM_RESPONSE_RECEIVED)
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    for part, target in (
        ([e for e in events if e not in (request, response)], first),
        ([request, response], second),
    ):
        sink = OtelSink(exporter=target)
        await sink.write(EventBatch(part))
        await sink.aclose()
    (chat,) = second.get_finished_spans()
    task = by_name(first.get_finished_spans())["task t1"]
    assert chat.context is not None
    assert task.context is not None
    assert chat.context.trace_id == task.context.trace_id
    assert chat.parent is not None
    assert chat.parent.span_id == task.context.span_id


@pytest.mark.anyio
async def test_unfinished_spans_are_ended_at_close_and_marked(
    exporter: InMemorySpanExporter,
) -> None:
    """Spans whose end never came end at the session's last event, flagged and ERROR."""
    started = Event(
        event_type=EventType.SESSION_STARTED, session_id="s1", message="go", timestamp=T0
    )
    task = Event(
        event_type=EventType.TASK_STARTED,
        session_id="s1",
        message="t",
        task_id="t",
        timestamp=T0 + timedelta(seconds=1),
        parent_id=started.id,
    )
    note = Event(
        event_type=EventType.INFO,
        session_id="s1",
        message="still working",
        timestamp=T0 + timedelta(seconds=3),
        parent_id=task.id,
    )
    sink = OtelSink(exporter=exporter)
    async with EventBus() as bus:
        bus.subscribe(sink)
        for event in (started, task, note):
            await bus.publish(event)
    spans = exporter.get_finished_spans()
    assert sorted(span.name for span in spans) == ["session s1", "task t"]
    for span in spans:
        assert (span.attributes or {})["eventbus.unfinished"] is True
        assert span.status.status_code is StatusCode.ERROR
        assert span.end_time == int(T0.timestamp() + 3) * 10**9


@pytest.mark.anyio
async def test_unknown_event_type_becomes_a_span_event(exporter: InMemorySpanExporter) -> None:
    """A type from a newer producer is recorded on its span; nothing fails."""
    started = Event(event_type=EventType.TASK_STARTED, session_id="s1", message="t", task_id="t")
    novel = Event(
        event_type=EventType("budget_exceeded"),
        session_id="s1",
        message="over budget",
        parent_id=started.id,
        metadata={"limit": 5},
    )
    done = Event(
        event_type=EventType.TASK_COMPLETED,
        session_id="s1",
        message="done",
        task_id="t",
        parent_id=started.id,
    )
    sink = OtelSink(exporter=exporter)
    await sink.write(EventBatch([started, novel, done]))
    await sink.aclose()
    (span,) = exporter.get_finished_spans()
    (recorded,) = span.events
    assert recorded.name == "budget_exceeded"
    assert dict(recorded.attributes or {})["eventbus.metadata.limit"] == 5


@pytest.mark.anyio
async def test_retried_batch_is_not_converted_twice(exporter: InMemorySpanExporter) -> None:
    """The bus retries the same batch: its spans are made once."""
    events = await run_session(MemorySink())
    sink = OtelSink(exporter=exporter)
    batch = EventBatch(events)
    await sink.write(batch)
    await sink.write(batch)
    await sink.aclose()
    assert len(exporter.get_finished_spans()) == 7


class GatedExporter(SpanExporter):
    """Holds every export until ``gate`` is set, then keeps the spans."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(10)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.mark.anyio
async def test_write_waits_for_a_slow_exporter_instead_of_dropping_spans() -> None:
    """More spans than the processor's queue holds: write blocks until exports catch up."""
    exporter = GatedExporter()
    sink = OtelSink(exporter=exporter)
    commands = [
        Event(
            event_type=EventType.COMMAND_EXECUTED,
            session_id="s1",
            message="ran",
            metadata={"command": "true", "exit_code": 0},
        )
        for _ in range(6000)
    ]
    finished = False

    async def write() -> None:
        nonlocal finished
        await sink.write(EventBatch(commands))
        finished = True

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            assert not finished  # waiting for the exporter, not dropping
            exporter.gate.set()
        await sink.aclose()
    assert len(exporter.spans) == 6000


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.anyio
async def test_unreachable_endpoint_raises_events_lost_on_flush() -> None:
    """A real connection refused: the spans it could not send are reported, counted in events."""
    sink = OtelSink(f"http://127.0.0.1:{closed_port()}", timeout=0.2)
    started = Event(event_type=EventType.TASK_STARTED, session_id="s1", message="t", task_id="t")
    done = Event(
        event_type=EventType.TASK_COMPLETED,
        session_id="s1",
        message="done",
        task_id="t",
        parent_id=started.id,
    )
    await sink.write(EventBatch([started, done]))
    with pytest.raises(EventsLostError, match=r"2 acknowledged events could not be written"):
        await sink.flush()
    await sink.aclose()  # reported once


@pytest.mark.anyio
async def test_unreachable_endpoint_fails_the_sink_on_the_bus() -> None:
    """Through the bus: the sink is failed, its lost events counted, the others unaffected."""
    kept = MemorySink()
    with pytest.raises(SinkFailedError, match="sink 'otel' failed"):  # noqa: PT012
        async with EventBus(retry=RetryPolicy(retries=1, initial_delay=0)) as bus:
            bus.subscribe(OtelSink(f"http://127.0.0.1:{closed_port()}", timeout=0.2))
            bus.subscribe(kept)
            await scripted_session(bus, "s1")
    assert bus.stats().lost == len(kept.events)


# --- the CLI ---------------------------------------------------------------------------------


class Receiver:
    """A minimal OTLP/HTTP receiver: decodes each request's spans."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []  # trace, span, parent, name
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans += [
                            (s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name)
                            for s in scope.spans
                        ]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    thread.join()


@pytest.fixture
def logged(tmp_path: Path) -> Path:
    """A workspace with the scripted session logged twice, as s1 and s2."""

    async def log() -> None:
        async with EventBus() as bus:
            bus.subscribe(JsonlSink(tmp_path))
            await scripted_session(bus, "s1")
            await scripted_session(bus, "s2")

    anyio.run(log)
    return tmp_path


def test_export_otel_sends_each_session_as_one_trace_idempotently(
    logged: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every session becomes its own trace; a second export sends exactly the same spans."""
    argv = ["export-otel", str(logged), "--endpoint", receiver.url]
    assert main(argv) == 0
    first = sorted(receiver.spans)
    receiver.spans.clear()
    assert main(argv) == 0
    assert sorted(receiver.spans) == first
    assert len(first) == 14
    assert {trace for trace, *_ in first} == {f"{trace_id_for(s):032x}" for s in ("s1", "s2")}
    out = capsys.readouterr().out
    assert f"s1: 17 events, trace {trace_id_for('s1'):032x}" in out
    assert "exported 2 sessions to the OTLP endpoint" in out


def test_export_otel_session_option_sends_only_that_session(
    logged: Path, receiver: Receiver
) -> None:
    """--session ID exports that session's trace alone."""
    argv = ["export-otel", str(logged), "--session", "s2", "--endpoint", receiver.url]
    assert main(argv) == 0
    assert {trace for trace, *_ in receiver.spans} == {f"{trace_id_for('s2'):032x}"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(["--session", "nope"], "no session 'nope' in the workspace", id="session"),
        pytest.param(["--endpoint", "localhost"], "--endpoint: the OTLP endpoint must", id="url"),
        pytest.param(
            ["--endpoint", "http://127.0.0.1:{port}", "--timeout", "0.2"],
            "could not export to the OTLP endpoint http://127.0.0.1:{port}/v1/traces: "
            "34 events were not sent (",
            id="unreachable",
        ),
    ],
)
def test_export_otel_errors_are_one_line_and_exit_2(
    logged: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    """A missing session, a bad URL or an unreachable receiver: one line, exit status 2."""
    port = closed_port()
    argv = ["export-otel", str(logged), *(arg.format(port=port) for arg in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("eventbus export-otel: " + expected.format(port=port))
    assert err.count("\n") == 1


def test_demo_otel_exports_the_session_live(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """eventbus demo --otel URL sends the demo session's trace while it runs."""
    argv = ["demo", "--workspace", str(tmp_path), "--tasks", "2", "--session-id", "d1"]
    assert main([*argv, "--otel", receiver.url]) == 0
    names = {name.split(" ")[0] for trace, _, _, name in receiver.spans}
    assert {trace for trace, *_ in receiver.spans} == {f"{trace_id_for('d1'):032x}"}
    assert {"session", "task", "invoke_agent", "chat", "verification", "command"} <= names
    capsys.readouterr()


def test_core_imports_without_the_otel_extra() -> None:
    """eventbus, sinks and the CLI import without OpenTelemetry; sinks.otel names the extra."""
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import eventbus, sinks\n"
        "from eventbus.cli._main import parser\n"
        "parser()\n"
        "try:\n"
        "    import sinks.otel\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert "pip install 'eventbus[otel]'" in result.stdout
