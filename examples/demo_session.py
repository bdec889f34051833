"""A whole agent session, offline, step by step: what ``eventbus demo`` does.

Run it::

    python examples/demo_session.py --workspace workspaces

A planner asks one question and plans six tasks; a coder writes two modules
through unified diffs (the second one has a typo on its first attempt, which
its compile check catches: the task is retried), a tester writes and runs a
test per module, a reviewer records a review. Every step is an event on the
bus; two sinks keep them: ``{workspace}/{session_id}/events.jsonl`` and the
artifacts beside it. At the end the log is read back from disk and
summarised.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel

from eventbus import Event, EventBus, EventQuery, EventType
from eventbus.coordinator import (
    AgentContext,
    AgentResult,
    ClarificationRequest,
    CommandVerifier,
    GateCheck,
    GateResult,
    ModelPrice,
    ModelRequest,
    ModelResponse,
    Plan,
    SessionCoordinator,
    StaticRouter,
    TaskSpec,
    make_unified_diff,
)
from sinks.artifacts import ArtifactSink
from sinks.jsonl import EventLog, JsonlSink

# --- 1. A model client -----------------------------------------------------------
# The coordinator calls models through a ModelClient: a request in, text and
# token usage out. This one needs no network and always answers the same way,
# so two runs use the same tokens. A real one would call an API here.


class OfflineModel:
    async def complete(self, request: ModelRequest) -> ModelResponse:
        await anyio.lowlevel.checkpoint()  # let other tasks run, as a real call would
        return ModelResponse(
            text=f"{request.role} says: ok",
            prompt_tokens=len(request.prompt) // 4 + 1,
            completion_tokens=40 + len(request.prompt) % 60,
        )


# Prices per million tokens: responses then carry cost_usd.
PRICES = {
    "sim-large": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0),
    "sim-small": ModelPrice(input_per_mtok=0.25, output_per_mtok=1.25),
}
# The router picks a model per role (planner and reviewer get the large one).
ROUTER = StaticRouter("sim-small", {"planner": "sim-large", "reviewer": "sim-large"})


# --- 2. The agents, one per role --------------------------------------------------
# An agent gets its task and an AgentContext. Everything it does through the
# context is emitted: context.complete() (model_routed, llm_request_sent,
# llm_response_received with usage), context.ask() (clarification_*),
# context.apply_diff() (gate_* then diff_applied/diff_failed),
# context.run_command() (command_executed), context.save_artifact().

MODULES = {
    "add": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n    return a + b\n',
    "greet": ('def greet(name: str) -> str:\n    """Say hello."""\n    return f"Hello, {name}!"\n'),
}
CHECKS = {"add": ("add(2, 3)", "5"), "greet": ('greet("bus")', '"Hello, bus!"')}


class Planner:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"Plan: {context.idea}")
        version = await context.ask("Which Python version?")  # the clarifier answers
        tasks = [TaskSpec(id="scaffold", role="coder", metadata={"kind": "scaffold"})]
        for module in MODULES:
            impl = f"impl-{module}"
            tasks.append(
                TaskSpec(
                    id=impl,
                    role="coder",
                    title=f"Implement {module}",
                    depends_on=("scaffold",),
                    metadata={"kind": "impl", "module": module},
                )
            )
            tasks.append(
                TaskSpec(
                    id=f"test-{module}",
                    role="tester",
                    title=f"Test {module}",
                    depends_on=(impl,),
                    metadata={"module": module},
                )
            )
        tasks.append(
            TaskSpec(
                id="review",
                role="reviewer",
                title="Review the code",
                depends_on=tuple(f"impl-{module}" for module in MODULES),
            )
        )
        # The plan: the task graph, and a build spec (published as an artifact).
        spec = {"package": "mini", "python": version, "modules": list(MODULES)}
        return AgentResult(summary="6 tasks", plan=Plan(tasks=tuple(tasks), spec=spec))


class Coder:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"Write code for {task.id}")
        if task.metadata["kind"] == "scaffold":
            for path in ("app/__init__.py", "tests/__init__.py"):
                await context.apply_diff(make_unified_diff(path, None, '"""Package."""\n'))
            return AgentResult(summary="scaffolded")
        module = task.metadata["module"]
        source = MODULES[module]
        if module == "greet" and context.attempt == 1:
            source = source.replace(":\n", "\n", 1)  # a typo: the compile check fails
        path = f"app/{module}.py"
        # Diff against what is on disk now: on the retry, that is the typo.
        await context.apply_diff(make_unified_diff(path, context.read_text(path), source))
        # A non-zero exit raises CommandFailedError: the attempt fails, the task retries.
        await context.run_command([sys.executable, "-m", "py_compile", path])
        return AgentResult(summary=f"wrote {path}")


class Tester:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        module = task.metadata["module"]
        call, expected = CHECKS[module]
        await context.complete(f"Write a test for {module}")
        test = (
            f"import unittest\n\nfrom app.{module} import {module}\n\n\n"
            "class Test(unittest.TestCase):\n"
            "    def test_example(self) -> None:\n"
            f"        self.assertEqual({call}, {expected})\n"
        )
        path = f"tests/test_{module}.py"
        await context.apply_diff(make_unified_diff(path, context.read_text(path), test))
        await context.run_command([sys.executable, "-m", "unittest", "-q", f"tests.test_{module}"])
        return AgentResult(summary=f"tested {module}")


class Reviewer:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        sources = {module: context.read_text(f"app/{module}.py") or "" for module in MODULES}
        await context.complete("Review:\n" + "\n".join(sources.values()))
        review = {
            m: "approved" if '"""' in code else "needs a docstring" for m, code in sources.items()
        }
        await context.save_artifact("review", review)  # artifact_created, with JSON content
        return AgentResult(summary="reviewed")


# --- 3. A gate and a clarifier ------------------------------------------------------
# Gates see the plan and every diff, and answer pass, warn or block. A block
# on the plan fails the session; on a diff it fails the task (no retry).


class ScopeGate:
    name = "scope"

    async def evaluate(self, check: GateCheck) -> GateResult:
        if check.diff is None:
            return GateResult(reason="plan ok")
        for line in check.diff.splitlines():
            if line.startswith("+++ b/") and not line[6:].startswith(("app/", "tests/")):
                return GateResult(decision="block", reason=f"{line[6:]} is out of scope")
        return GateResult(reason="in scope")


class Clarifier:
    async def answer(self, request: ClarificationRequest) -> str:
        return "3.11"


# --- 4. A live progress line per task -------------------------------------------------
# Any object with async write(events) and async aclose() is a sink. Subscribed
# with a query, it only receives the task outcomes.


class Progress:
    async def write(self, events: Sequence[Event]) -> None:
        for event in events:
            detail = event.metadata.get("error") or event.metadata.get("summary", "")
            print(f"  {event.event_type.value:<15} {event.task_id:<12} {detail}"[:100])

    async def aclose(self) -> None:
        pass


async def main(workspace: Path) -> int:
    # --- 5. The bus and its sinks ---------------------------------------------------
    # The bus owns a task group: sinks get events in batches while the session runs,
    # and leaving the block waits until every sink has written everything.
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(workspace))  # {workspace}/{session_id}/events.jsonl
        bus.subscribe(ArtifactSink(workspace))  # {workspace}/{session_id}/artifacts/*.json
        outcomes = [EventType.TASK_COMPLETED, EventType.TASK_RETRYING, EventType.TASK_FAILED]
        bus.subscribe(Progress(), query=EventQuery(event_type=outcomes))

        # --- 6. The coordinator --------------------------------------------------------
        coordinator = SessionCoordinator(
            bus,
            workspace_root=workspace,
            agents={
                "planner": Planner(),
                "coder": Coder(),
                "tester": Tester(),
                "reviewer": Reviewer(),
            },
            model_client=OfflineModel(),
            router=ROUTER,
            gates=[ScopeGate()],
            verifiers=[
                CommandVerifier(
                    "unit tests",
                    [sys.executable, "-m", "unittest", "discover", "-q", "-s", "tests", "-t", "."],
                )
            ],
            clarifier=Clarifier(),
            prices=PRICES,
            max_concurrency=2,  # at most two tasks at once
        )
        # run() goes IDEA -> PLAN_REVIEW -> EXECUTION -> VERIFICATION -> COMPLETE
        # (or FAILED), and returns the session.
        session = await coordinator.run("a tiny package with two functions")

    # --- 7. Read it back from disk ---------------------------------------------------
    log = EventLog(session.directory / "events.jsonl")
    print(f"\nsession {session.session_id}: {session.phase.value}, {log.count()} events")
    for event_type, count in Counter(e.event_type.value for e in log.get_events()).most_common():
        print(f"  {event_type:<24} {count:>4}")
    tokens: Counter[str] = Counter()
    for event in log.get_events(event_type=EventType.LLM_RESPONSE_RECEIVED):
        tokens[event.model or "?"] += event.metadata["total_tokens"]
    print("tokens by model:", dict(tokens))
    print("legacy log, first lines:", *session.logs[:3], sep="\n  ")
    print(f"files: {session.directory}")
    return 0 if session.phase.value == "COMPLETE" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspaces"))
    sys.exit(anyio.run(main, parser.parse_args().workspace))
