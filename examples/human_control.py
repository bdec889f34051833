"""A session that waits for a person, who answers and approves through the workspace.

Run it::

    python examples/human_control.py --workspace workspaces

The planner asks a question and the plan needs an approval: a
``HumanClarifier`` and a ``HumanGate`` make the session wait for a person.
The "person" here is a task of this script that acts only through files, as
``eventbus control`` does from another process: it reads what is pending
from the log (``Workspace.pending``) and appends commands to the session's
inbox (``submit_command``); the coordinator, given ``control=root``, reads
the inbox, applies each command once and logs the outcome.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread

from eventbus import EventBus, EventType
from eventbus.coordinator import (
    AgentContext,
    AgentResult,
    Command,
    HumanClarifier,
    HumanGate,
    ModelRequest,
    ModelResponse,
    Plan,
    SessionCoordinator,
    StaticRouter,
    TaskSpec,
    submit_command,
)
from sinks.jsonl import EventLog, JsonlSink
from sinks.workspace import Workspace

SESSION = f"human-{secrets.token_hex(3)}"  # a new session on every run


# --- 1. Agents and a model that need no network ----------------------------------


class Model:
    async def complete(self, request: ModelRequest) -> ModelResponse:
        await anyio.lowlevel.checkpoint()
        return ModelResponse(text="ok", prompt_tokens=12, completion_tokens=3)


class Planner:
    """Asks which Python to target (a person answers), then plans one task."""

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"Plan: {context.idea}")
        python = await context.ask("Which Python version should the code target?")
        plan = Plan(tasks=(TaskSpec(id="hello", role="coder", title=f"Hello for {python}"),))
        return AgentResult(summary="planned", plan=plan)


class Coder:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"Write: {task.title}")
        return AgentResult(summary="written")


# --- 2. The person: reads what is pending, answers through the inbox -------------------


async def person(root: Path) -> None:
    workspace = Workspace(root, index=False)
    done: set[str] = set()
    while len(done) < 2:  # one question, one approval
        await anyio.sleep(0.02)  # a person polls; the dashboard follows the log instead
        if not (root / SESSION / "events.jsonl").exists():
            continue
        for item in await anyio.to_thread.run_sync(workspace.pending, SESSION):
            if item["id"] in done:
                continue
            if item["kind"] == "clarification":  # answer the question by its id
                command = Command(kind="answer", target=item["id"], text="3.12", actor="ana")
            else:  # approve the plan by its request id
                command = Command(kind="approve", target=item["id"], reason="small", actor="ana")
            print(f"ana: {command.kind} {item['id']} ({item['text']})")
            await anyio.to_thread.run_sync(submit_command, root, SESSION, command)
            done.add(item["id"])


# --- 3. The coordinator reads the inbox (control=root) while it runs the session -------


async def main(root: Path) -> None:
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(root))
        coordinator = SessionCoordinator(
            bus,
            workspace_root=root,
            agents={"planner": Planner(), "coder": Coder()},
            model_client=Model(),
            router=StaticRouter("offline"),
            clarifier=HumanClarifier(timeout=60),
            gates=[HumanGate(timeout=60)],
            control=root,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(person, root)
            session = await coordinator.run("a greeting", session_id=SESSION)
        print(f"session {session.session_id}: {session.phase.value}")

    # --- 4. The log says what happened, and who did it ------------------------------
    for event in EventLog(root / SESSION / "events.jsonl").get_events():
        if event.event_type in (
            EventType.CLARIFICATION_ANSWERED,
            EventType.APPROVAL_REQUESTED,
            EventType.GATE_EVALUATED,
            EventType.CONTROL_APPLIED,
        ):
            print(f"  {event.event_type.value:<24} {event.message}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workspace", type=Path, default=Path("workspaces"))
    root = parser.parse_args().workspace
    root.mkdir(parents=True, exist_ok=True)
    anyio.run(main, root)
