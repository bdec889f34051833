"""sinks.otel against a real Arize Phoenix: a demo session, live and from its log.

Phoenix runs from its own virtual environment (it pins web packages this
project's tests rely on): ``EVENTBUS_PHOENIX`` names its ``python`` or its
``phoenix`` executable, else ``.venv-phoenix/bin/python`` at the repository
root is used. Without either the tests skip, or fail when
``EVENTBUS_REQUIRE_PHOENIX=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import Event, EventBus, EventType
from eventbus.cli import main
from eventbus.coordinator._demo_agents import IDEA, build_demo_coordinator
from sinks.jsonl import LOG_FILE_NAME, JsonlSink, iter_log
from sinks.otel import OtelSink, span_id_for, trace_id_for

pytestmark = pytest.mark.service

SESSION = "phoenix-live"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STARTUP_TIMEOUT = 90  # seconds; about 15 here (database migrations)
REPO = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    if os.environ.get("EVENTBUS_REQUIRE_PHOENIX") == "1":
        pytest.fail(f"{reason} (EVENTBUS_REQUIRE_PHOENIX=1 requires it)")
    pytest.skip(reason)


def _command() -> list[str]:
    given = os.environ.get("EVENTBUS_PHOENIX")
    path = Path(given) if given else REPO / ".venv-phoenix" / "bin" / "python"
    if not path.is_file():
        _unavailable(
            f"no Phoenix: {path} does not exist; set EVENTBUS_PHOENIX to Phoenix's python or "
            "phoenix executable, or run: python3 -m venv .venv-phoenix && "
            ".venv-phoenix/bin/pip install arize-phoenix"
        )
    if path.name.startswith("python"):
        return [str(path), "-m", "phoenix.server.main", "serve"]
    return [str(path), "serve"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Phoenix server on free ports with its own database; yields its URL."""
    command = _command()
    directory = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(_free_port()),
        "PHOENIX_WORKING_DIR": str(directory),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_LOG_MIGRATIONS": "false",
        "PHOENIX_LOGGING_LEVEL": "warning",
        "PHOENIX_DB_LOGGING_LEVEL": "warning",
    }
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    output: list[str] = []
    watchdog = threading.Timer(STARTUP_TIMEOUT, process.kill)  # a server that never gets ready
    watchdog.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the banner comes once the app is built
            output.append(line)
            if "up and running" in line:
                break
        else:
            pytest.fail(
                f"Phoenix exited with {process.wait()} before it was ready:\n{''.join(output)}"
            )
    finally:
        watchdog.cancel()
    drain = threading.Thread(target=process.stdout.read, daemon=True)
    drain.start()  # keeps the pipe from filling up
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(transport=httpx.HTTPTransport(retries=5)) as client:
        client.get(f"{url}/healthz", timeout=10).raise_for_status()  # retries until it listens
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        drain.join()
        process.stdout.close()


async def spans_of(
    url: str, project: str, trace_id: int, count: int | None = None
) -> list[dict[str, Any]]:
    """The trace's spans in ``project``, once Phoenix has stored ``count`` (or any) of them.

    Phoenix inserts what it receives in the background, so this asks again
    (every 0.1 s, for at most 30 s) until they are there.
    """
    params: dict[str, str | int] = {"limit": 1000, "trace_id": f"{trace_id:032x}"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        with anyio.fail_after(30):
            while True:
                response = await client.get(f"/v1/projects/{project}/spans", params=params)
                if response.status_code != 404:  # the project exists once a span is stored
                    response.raise_for_status()
                    data: list[dict[str, Any]] = response.json()["data"]
                    if data and (count is None or len(data) >= count):
                        return data
                await anyio.sleep(0.1)  # polling another process's database, nothing of ours


def demo_run(
    workspace: Path, session_id: str, url: str | None = None, project: str | None = None
) -> tuple[list[Event], InMemorySpanExporter]:
    """Run the demo session, exported live to Phoenix when ``url`` is given and to memory.

    Returns the session's logged events and the in-memory exporter.
    """
    local = InMemorySpanExporter()

    async def run() -> None:
        async with EventBus() as bus:
            bus.subscribe(JsonlSink(workspace))
            if url is not None:
                bus.subscribe(OtelSink(url, project=project))
            bus.subscribe(OtelSink(exporter=local, name="local"))
            coordinator = build_demo_coordinator(bus, workspace, tasks=4, max_concurrency=2)
            session = await coordinator.run(IDEA, session_id=session_id)
            assert session.phase.value == "COMPLETE"

    anyio.run(run)
    log = workspace / session_id / LOG_FILE_NAME
    return [event for event, _, _ in iter_log(log)], local


def _ns(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(microseconds=1) * 1000


def shape(span: dict[str, Any]) -> tuple[Any, ...]:
    """A span as Phoenix returns it: what two exports of a session must agree on."""
    return (
        span["context"]["trace_id"],
        span["context"]["span_id"],
        span["parent_id"],
        span["name"],
        _ns(span["start_time"]),
        _ns(span["end_time"]),
        span["status_code"],
    )


def local_shape(span: ReadableSpan) -> tuple[Any, ...]:
    """The same for a span of the in-memory exporter."""
    assert span.context is not None
    return (
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
        None if span.parent is None else f"{span.parent.span_id:016x}",
        span.name,
        span.start_time,
        span.end_time,
        span.status.status_code.name,
    )


@pytest.fixture(scope="module")
def live(
    phoenix: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Event], list[dict[str, Any]]]:
    """The demo session exported live to the project "live": (workspace, log, Phoenix's spans)."""
    workspace = tmp_path_factory.mktemp("workspace")
    events, local = demo_run(workspace, SESSION, phoenix, "live")
    expected = sorted(map(local_shape, local.get_finished_spans()))
    spans = anyio.run(spans_of, phoenix, "live", trace_id_for(SESSION), len(expected))
    assert sorted(map(shape, spans)) == expected  # what the SDK made is what Phoenix stored
    return workspace, events, spans


def test_a_live_session_is_one_trace_whose_tree_follows_parent_ids(
    live: tuple[Path, list[Event], list[dict[str, Any]]],
) -> None:
    """Phoenix holds one trace for the session; each span's parent is its start event's parent."""
    _, events, spans = live
    by_id = {event.id: event for event in events}
    assert {span["context"]["trace_id"] for span in spans} == {f"{trace_id_for(SESSION):032x}"}
    roots = [span for span in spans if span["parent_id"] is None]
    assert [root["name"] for root in roots] == [f"session {SESSION}"]
    span_ids = {span["context"]["span_id"] for span in spans}
    for span in spans:
        start = by_id[span["attributes"]["eventbus.event_id"]]
        assert span["context"]["span_id"] == f"{span_id_for(start.id):016x}"
        if span["parent_id"] is not None:
            assert start.parent_id is not None
            assert span["parent_id"] == f"{span_id_for(start.parent_id):016x}"
            assert span["parent_id"] in span_ids
    kinds = {span["name"].split(" ")[0]: span["span_kind"] for span in spans}
    assert kinds["chat"] == "LLM"
    assert kinds["invoke_agent"] == "AGENT"
    assert kinds["command"] == "TOOL"


def test_token_totals_in_phoenix_equal_the_log(
    live: tuple[Path, list[Event], list[dict[str, Any]]],
) -> None:
    """The LLM spans' prompt and completion tokens add up to the log's responses."""
    _, events, spans = live
    responses = [e for e in events if e.event_type is EventType.LLM_RESPONSE_RECEIVED]
    llm = [span for span in spans if span["span_kind"] == "LLM"]
    assert len(llm) == len(responses)
    for key, attribute in (
        ("prompt_tokens", "llm.token_count.prompt"),
        ("completion_tokens", "llm.token_count.completion"),
        ("total_tokens", "llm.token_count.total"),
    ):
        logged = sum(event.metadata[key] for event in responses)
        assert logged > 0
        assert sum(span["attributes"][attribute] for span in llm) == logged


def test_export_otel_of_a_log_stores_the_trace_a_live_export_makes(
    phoenix: str, tmp_path: Path
) -> None:
    """A session exported from its log by the CLI is, in Phoenix, the trace its live export made."""
    events, local = demo_run(tmp_path, "phoenix-replayed")
    argv = ["export-otel", str(tmp_path), "--endpoint", phoenix, "--project", "replayed"]
    assert main(argv) == 0
    expected = sorted(map(local_shape, local.get_finished_spans()))
    trace_id = trace_id_for("phoenix-replayed")
    replayed = anyio.run(spans_of, phoenix, "replayed", trace_id, len(expected))
    assert sorted(map(shape, replayed)) == expected
    assert len(events) > len(expected) > 20


def test_exporting_a_session_again_adds_no_span(
    phoenix: str, live: tuple[Path, list[Event], list[dict[str, Any]]]
) -> None:
    """A second export to the same project is idempotent: the trace keeps its spans, once each."""
    workspace, _, spans = live

    async def marker() -> None:  # exported after the session: once it is stored, so is that
        async with EventBus() as bus:
            bus.subscribe(JsonlSink(workspace))
            await bus.publish(
                Event(event_type=EventType.SESSION_STARTED, session_id="marker", message="m")
            )

    anyio.run(marker)
    argv = ["export-otel", str(workspace), "--endpoint", phoenix, "--project", "live"]
    assert main([*argv, "--session", SESSION, "--session", "marker"]) == 0
    anyio.run(spans_of, phoenix, "live", trace_id_for("marker"))
    again = anyio.run(spans_of, phoenix, "live", trace_id_for(SESSION))
    assert sorted(span["context"]["span_id"] for span in again) == sorted(
        span["context"]["span_id"] for span in spans
    )
