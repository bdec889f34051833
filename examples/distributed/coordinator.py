"""One coordinator of a distributed team: its session's events go to NATS JetStream.

Run one per machine (see README.md beside this file)::

    python examples/distributed/coordinator.py --nats nats://127.0.0.1:4222 --workspace machine-a

A planner splits a small job into tasks; writer agents call a model (offline
here), write a file each through a unified diff and save an artifact. Every
step is an event on the local bus, which keeps it twice: in the local log
``{workspace}/{session_id}/events.jsonl`` and in the JetStream stream
``EVENTS`` (subjects ``events.{session}.{type}``), from which ``eventbus
relay`` gathers every coordinator's sessions into one workspace. Needs the
``nats`` extra: ``pip install 'eventbus[nats]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
import anyio.lowlevel

from eventbus import EventBus, RetryPolicy
from eventbus.coordinator import (
    AgentContext,
    AgentResult,
    ModelRequest,
    ModelResponse,
    Plan,
    SessionCoordinator,
    StaticRouter,
    TaskSpec,
    make_unified_diff,
)
from sinks.jsonl import JsonlSink
from sinks.nats import JetStreamSink

# --- 1. An offline model ------------------------------------------------------------
# The coordinator calls models through a ModelClient. This one needs no network;
# a real one would call an API here. Its usage lands in llm_response_received.


class OfflineModel:
    async def complete(self, request: ModelRequest) -> ModelResponse:
        await anyio.lowlevel.checkpoint()  # let other tasks run, as a real call would
        return ModelResponse(
            text=f"{request.role} notes on {request.task_id or 'the plan'}",
            prompt_tokens=len(request.prompt) // 4 + 1,
            completion_tokens=24,
        )


# --- 2. The agents -----------------------------------------------------------------
# The planner returns the task graph; each writer asks the model, writes its
# file through a diff (diff_applied) and saves an artifact (artifact_created).


class Planner:
    def __init__(self, tasks: int) -> None:
        self.tasks = tasks

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        await context.complete(f"Split into {self.tasks} parts: {context.idea}")
        parts = tuple(
            TaskSpec(id=f"part-{n}", role="writer", title=f"Write part {n}")
            for n in range(1, self.tasks + 1)
        )
        return AgentResult(summary=f"{self.tasks} parts", plan=Plan(tasks=parts))


class Writer:
    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        text = await context.complete(f"Write {task.title}")
        path = f"notes/{task.id}.md"
        await context.apply_diff(make_unified_diff(path, None, f"# {task.title}\n\n{text}\n"))
        await context.save_artifact(task.id, {"path": path, "words": len(text.split())})
        return AgentResult(summary=f"wrote {path}")


async def main(args: argparse.Namespace) -> int:
    # --- 3. The sink that crosses machines ------------------------------------------
    # JetStreamSink creates the stream EVENTS on first use (or checks it fits) and
    # publishes each event with its id as Nats-Msg-Id: a retried batch is stored once.
    nats = JetStreamSink(args.nats)

    # --- 4. The bus -------------------------------------------------------------------
    # A write that JetStream did not acknowledge (server down or restarting) is
    # retried with the same batch; these retries ride out a short restart.
    retry = RetryPolicy(retries=10, initial_delay=0.1, max_delay=2.0)
    async with EventBus(retry=retry) as bus:
        local = JsonlSink(args.workspace)  # this machine's own copy of its session
        bus.subscribe(local)
        bus.subscribe(nats)

        # --- 5. The session ---------------------------------------------------------------
        coordinator = SessionCoordinator(
            bus,
            workspace_root=args.workspace,  # the agents' files: {workspace}/{session_id}/
            agents={"planner": Planner(args.tasks), "writer": Writer()},
            model_client=OfflineModel(),
            router=StaticRouter("sim-small"),
            max_concurrency=2,
        )
        session = await coordinator.run("notes on a distributed team", session_id=args.session_id)

        # --- 6. Wait for the acknowledgements -----------------------------------------------
        # flush() returns once every sink wrote every event: for JetStreamSink, once
        # the stream acknowledged (stored) each one. Then the aggregator can see them.
        await bus.flush()

    print(f"session {session.session_id}: {session.phase.value}")
    print(f"  local log:  {local.path_for(session.session_id)}")
    print(f"  JetStream:  {nats.acknowledged} events acknowledged by stream {nats.stream}")
    return 0 if session.phase.value == "COMPLETE" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="the NATS server URL")
    parser.add_argument("--workspace", type=Path, default=Path("workspaces"))
    parser.add_argument("--session-id", default=None, help="default: time-based and random")
    parser.add_argument("--tasks", type=int, default=4, help="parts to write (default: 4)")
    # nats-py runs on asyncio only, so the bus does too.
    sys.exit(anyio.run(main, parser.parse_args(), backend="asyncio"))
