"""Debug visibility: LLM events carry the prompt and the response, redacted and capped."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from eventbus import (
    Event,
    EventBus,
    EventType,
    MemorySink,
    create_llm_request_event,
    create_llm_response_event,
    encode_event,
)
from eventbus.coordinator import (
    AgentContext,
    AgentResult,
    Emitter,
    ModelRequest,
    ModelResponse,
    Plan,
    Redactor,
    SessionCoordinator,
    StaticRouter,
    TaskSpec,
    redact_secrets,
)
from eventbus.coordinator._demo_agents import IDEA, build_demo_coordinator
from sinks.artifacts import ArtifactSink, SessionArtifactQuery

# Fake secrets, built so that no scanner mistakes this file for a leak.
OPENAI_KEY = "sk-proj-" + "Ab3" * 12
ANTHROPIC_KEY = "sk-ant-api03-" + "Xy9_" * 10
BEARER = "eyJhbGciOiJIUzI1NiJ9." + "Zm9v" * 6
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, BEARER)


@asynccontextmanager
async def recording(
    redact: Redactor = redact_secrets,
) -> AsyncIterator[tuple[Emitter, MemorySink]]:
    """A running bus with a MemorySink and an emitter for session ``s1``."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        yield Emitter(bus, "s1", phase="EXECUTION", redact=redact), sink
        await bus.flush()


def all_bytes(root: Path) -> bytes:
    """Every file under ``root``, concatenated."""
    return b"".join(path.read_bytes() for path in root.rglob("*") if path.is_file())


def of_type(events: list[Event], event_type: EventType) -> list[Event]:
    return [event for event in events if event.event_type is event_type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"key {OPENAI_KEY} here", "key [REDACTED] here", id="openai"),
        pytest.param(f"{ANTHROPIC_KEY}", "[REDACTED]", id="anthropic"),
        pytest.param("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED]", id="aws"),
        pytest.param("ghp_" + "a1" * 18, "[REDACTED]", id="github"),
        pytest.param("github_pat_11AB" + "c" * 30, "[REDACTED]", id="github-pat"),
        pytest.param("xoxb-1234567890-" + "q" * 12, "[REDACTED]", id="slack"),
        pytest.param("AIza" + "B" * 35, "[REDACTED]", id="google"),
        pytest.param(
            f"Authorization: Bearer {BEARER}", "Authorization: Bearer [REDACTED]", id="header"
        ),
        pytest.param(f"use Bearer {BEARER} now", "use Bearer [REDACTED] now", id="bearer"),
        pytest.param("password=hunter2; next", "password=[REDACTED]; next", id="password"),
        pytest.param('"api_key": "a b c", "n": 1', '"api_key": "[REDACTED]", "n": 1', id="json"),
        pytest.param("OPENAI_API_KEY='xyz'", "OPENAI_API_KEY='[REDACTED]'", id="env"),
        pytest.param(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nafter",
            "[REDACTED PRIVATE KEY]\nafter",
            id="private-key",
        ),
        pytest.param("prompt_tokens: 120, max_tokens=100", None, id="token-counts"),
        pytest.param("see task-abcdefghijklmnopqrstuvwxyz", None, id="task-id"),
    ],
)
def test_redact_secrets_masks_common_secret_patterns(text: str, expected: str | None) -> None:
    """The default hook masks each common secret shape and leaves ordinary text alone."""
    assert redact_secrets(text) == (text if expected is None else expected)


@pytest.mark.anyio
async def test_llm_call_events_carry_redacted_messages_and_response() -> None:
    """The request carries the messages and the response event the text, secrets masked."""
    async with recording() as (emitter, sink):
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Call it with {OPENAI_KEY} and Bearer {BEARER}"},
        ]
        async with emitter.llm_call(
            model="m", role="coder", prompt_tokens=10, messages=messages
        ) as call:
            call.set_response(f"Done; I used {ANTHROPIC_KEY}.")
            call.set_usage(completion_tokens=5)
    (request,) = of_type(sink.events, EventType.LLM_REQUEST_SENT)
    (response,) = of_type(sink.events, EventType.LLM_RESPONSE_RECEIVED)
    assert request.metadata["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Call it with [REDACTED] and Bearer [REDACTED]"},
    ]
    assert response.metadata["response"] == "Done; I used [REDACTED]."
    assert "truncated" not in request.metadata
    assert "truncated" not in response.metadata


@pytest.mark.anyio
async def test_long_text_is_cut_marked_and_saved_whole_and_redacted_as_artifact(
    tmp_path: Path,
) -> None:
    """A field over the cap is cut and marked; the artifact file holds the full redacted text."""
    prompt = f"head {OPENAI_KEY} " + "x" * 300 + f" tail Authorization: Bearer {BEARER}"
    answer = "y" * 150 + f" {ANTHROPIC_KEY}"
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        bus.subscribe(ArtifactSink(tmp_path, durable=False))
        emitter = Emitter(bus, "s1", phase="EXECUTION", max_text_chars=100)
        messages = [{"role": "user", "content": prompt}]
        async with emitter.llm_call(
            model="m", role="coder", prompt_tokens=10, messages=messages
        ) as call:
            call.set_response(answer)
            call.set_usage(completion_tokens=5)
        await bus.flush()

    artifact_events = of_type(sink.events, EventType.ARTIFACT_CREATED)
    (request,) = of_type(sink.events, EventType.LLM_REQUEST_SENT)
    (response,) = of_type(sink.events, EventType.LLM_RESPONSE_RECEIVED)
    full_prompt = redact_secrets(prompt)
    full_answer = redact_secrets(answer)
    prompt_key = f"llm-{request.id}-messages"
    answer_key = f"llm-{response.id}-response"
    cut_prompt = len(full_prompt) - 100
    assert request.metadata["messages"][0]["content"] == (
        f"{full_prompt[:100]}…[truncated {cut_prompt} chars; full text in artifact {prompt_key}]"
    )
    assert request.metadata["truncated"] == {
        "messages": {"chars": cut_prompt, "total_chars": len(full_prompt), "artifact": prompt_key}
    }
    assert response.metadata["truncated"]["response"]["artifact"] == answer_key
    assert response.metadata["response"].startswith(full_answer[:100] + "…[truncated ")
    # Each artifact is announced just before the event that refers to it.
    assert [e.metadata["key"] for e in artifact_events] == [prompt_key, answer_key]
    assert sink.events.index(artifact_events[0]) == sink.events.index(request) - 1
    assert all(e.parent_id in (request.id, response.id) for e in artifact_events)

    artifacts = SessionArtifactQuery(tmp_path).store("s1")
    assert artifacts.artifact_path(prompt_key).is_file()
    assert artifacts.load_artifact(prompt_key) == [{"role": "user", "content": full_prompt}]
    assert artifacts.load_artifact(answer_key) == full_answer
    on_disk = all_bytes(tmp_path)
    published = b"".join(encode_event(event) for event in sink.events)
    for secret in SECRETS:
        assert secret.encode() not in on_disk
        assert secret.encode() not in published


@pytest.mark.anyio
async def test_custom_redact_hook_replaces_the_default() -> None:
    """A redact hook given to the emitter is what masks the captured text."""
    async with recording(redact=lambda text: text.replace("tiger", "***")) as (emitter, sink):
        messages = [{"role": "user", "content": f"tiger {OPENAI_KEY}"}]
        async with emitter.llm_call(
            model="m", role="coder", prompt_tokens=1, messages=messages
        ) as call:
            call.set_response("a tiger")
            call.set_usage(completion_tokens=1)
    (request,) = of_type(sink.events, EventType.LLM_REQUEST_SENT)
    (response,) = of_type(sink.events, EventType.LLM_RESPONSE_RECEIVED)
    assert request.metadata["messages"][0]["content"] == f"*** {OPENAI_KEY}"
    assert response.metadata["response"] == "a ***"


@pytest.mark.anyio
async def test_raising_redact_hook_masks_the_whole_field_and_logs_without_the_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises never leaks the raw text: the field is masked whole and it is logged."""

    def broken(text: str) -> str:
        raise ValueError(f"cannot parse {text}")

    with caplog.at_level(logging.ERROR, logger="eventbus"):
        async with recording(redact=broken) as (emitter, sink):
            messages = [{"role": "user", "content": f"use {OPENAI_KEY}"}]
            async with emitter.llm_call(
                model="m", role="coder", prompt_tokens=1, messages=messages
            ) as call:
                call.set_response(f"used {OPENAI_KEY}")
                call.set_usage(completion_tokens=1)
    (request,) = of_type(sink.events, EventType.LLM_REQUEST_SENT)
    (response,) = of_type(sink.events, EventType.LLM_RESPONSE_RECEIVED)
    masked = "[REDACTED: the redact hook raised ValueError]"
    assert request.metadata["messages"] == [{"role": "user", "content": masked}]
    assert response.metadata["response"] == masked
    assert "the redact hook raised ValueError" in caplog.text
    assert OPENAI_KEY not in caplog.text


@pytest.mark.anyio
async def test_failed_call_error_event_carries_the_response() -> None:
    """When the block fails after the answer came, the error event keeps the (redacted) answer."""

    async def parse(emitter: Emitter) -> None:
        async with emitter.llm_call(model="m", role="coder", prompt_tokens=1) as call:
            call.set_response(f"{{broken json with {OPENAI_KEY}")
            raise ValueError("unparsable answer")

    async with recording() as (emitter, sink):
        with pytest.raises(ValueError, match="unparsable"):
            await parse(emitter)
    (error,) = of_type(sink.events, EventType.ERROR)
    assert error.metadata["response"] == "{broken json with [REDACTED]"


@pytest.mark.anyio
async def test_call_without_text_does_no_redaction_work() -> None:
    """Without messages or a response the hook is never called and no text keys appear."""
    calls: list[str] = []

    def counting(text: str) -> str:
        calls.append(text)
        return text

    async with (
        recording(redact=counting) as (emitter, sink),
        emitter.llm_call(model="m", role="coder", prompt_tokens=1) as call,
    ):
        call.set_usage(completion_tokens=1)
    assert calls == []
    for event in sink.events:
        assert not {"messages", "response", "truncated"} & set(event.metadata)


def test_helpers_redact_captured_text_by_default() -> None:
    """The event helpers put messages and response in metadata, masked by redact_secrets."""
    request = create_llm_request_event(
        "s1", "m", "coder", 1, messages=[{"role": "user", "content": OPENAI_KEY, "name": "u"}]
    )
    response = create_llm_response_event("s1", "m", "coder", 1, 1, response=f"x {OPENAI_KEY}")
    assert request.metadata["messages"] == [{"role": "user", "content": "[REDACTED]"}]
    assert response.metadata["response"] == "x [REDACTED]"


class _EchoModel:
    async def complete(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(text=f"echo: {request.prompt}", prompt_tokens=3, completion_tokens=2)


class _Coder:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete("a" * 40 + " tiger", system="be brief")
        return AgentResult(summary="ok")


@pytest.mark.anyio
async def test_coordinator_applies_its_redact_hook_and_cap(tmp_path: Path) -> None:
    """SessionCoordinator's ``redact`` and ``max_text_chars`` reach the LLM events it emits."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        coordinator = SessionCoordinator(
            bus,
            workspace_root=tmp_path,
            agents={"coder": _Coder()},
            model_client=_EchoModel(),
            router=StaticRouter("m"),
            redact=lambda text: text.replace("tiger", "***"),
            max_text_chars=30,
        )
        plan = Plan(tasks=(TaskSpec(id="t1", role="coder"),))
        await coordinator.run("idea", plan=plan)
        await bus.flush()
    (request,) = of_type(sink.events, EventType.LLM_REQUEST_SENT)
    system, user = request.metadata["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"].startswith("a" * 30 + "…[truncated 14 chars")
    (artifact,) = [
        e for e in of_type(sink.events, EventType.ARTIFACT_CREATED) if e.parent_id == request.id
    ]
    assert artifact.metadata["content"][1]["content"] == "a" * 40 + " ***"


@pytest.mark.anyio
async def test_demo_session_llm_events_carry_messages_and_response(tmp_path: Path) -> None:
    """Every LLM call of the demo's offline agents shows its prompt and its answer."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        coordinator = build_demo_coordinator(bus, tmp_path, tasks=2, run_commands=False)
        await coordinator.run(IDEA)
        await bus.flush()
    requests = of_type(sink.events, EventType.LLM_REQUEST_SENT)
    responses = of_type(sink.events, EventType.LLM_RESPONSE_RECEIVED)
    assert len(requests) == len(responses) >= 3
    for request in requests:
        roles = [message["role"] for message in request.metadata["messages"]]
        assert roles == ["system", "user"]
        assert all(message["content"] for message in request.metadata["messages"])
    assert all(response.metadata["response"] for response in responses)
    assert msgspec.json.decode(encode_event(responses[0]))["metadata"]["response"]


# --- diffs -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_diff_event_carries_the_diff_redacted() -> None:
    """``diff_applied`` holds the diff's text, secrets masked; a short one makes no artifact."""
    diff = f"--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-old\n+KEY = '{OPENAI_KEY}'\n"
    async with recording() as (emitter, sink):
        await emitter.diff(["x.py"], added=1, removed=1, diff=diff)
    (event,) = sink.events
    assert event.event_type == EventType.DIFF_APPLIED
    assert event.metadata["diff"] == redact_secrets(diff)
    assert OPENAI_KEY not in event.metadata["diff"]
    assert "truncated" not in event.metadata


@pytest.mark.anyio
async def test_a_long_diff_is_cut_and_saved_whole_as_an_artifact(tmp_path: Path) -> None:
    """Over ``max_text_chars`` the diff is cut and marked like a prompt; the full redacted
    text is the artifact ``diff-{event id}``, announced just before, its child."""
    diff = "--- a/x.py\n+++ b/x.py\n" + "".join(f"+line {n}\n" for n in range(100))
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        bus.subscribe(ArtifactSink(tmp_path, durable=False))
        emitter = Emitter(bus, "s1", phase="EXECUTION", max_text_chars=50)
        await emitter.diff(["x.py"], applied=False, error="hunk 1 failed", diff=diff)
        await bus.flush()
    artifact, event = sink.events
    key = f"diff-{event.id}"
    assert event.event_type == EventType.DIFF_FAILED
    assert event.metadata["diff"] == (
        f"{diff[:50]}…[truncated {len(diff) - 50} chars; full text in artifact {key}]"
    )
    assert event.metadata["truncated"] == {
        "diff": {"chars": len(diff) - 50, "total_chars": len(diff), "artifact": key}
    }
    assert (artifact.event_type, artifact.parent_id) == (EventType.ARTIFACT_CREATED, event.id)
    store = SessionArtifactQuery(tmp_path).store("s1")
    assert store.load_artifact(key) == diff


@pytest.mark.anyio
async def test_the_demo_s_diff_events_carry_their_diffs(tmp_path: Path) -> None:
    """Every ``diff_applied`` of the demo session has a non-empty unified diff."""
    sink = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(sink)
        coordinator = build_demo_coordinator(bus, tmp_path, tasks=2, run_commands=False)
        await coordinator.run(IDEA)
        await bus.flush()
    diffs = of_type(sink.events, EventType.DIFF_APPLIED)
    assert diffs
    assert all(event.metadata["diff"].startswith("---") for event in diffs)
