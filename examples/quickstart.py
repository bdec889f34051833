"""Quick start: publish a realistic burst of events and see what each sink got.

Run: ``python examples/quickstart.py [--workspace DIR]`` (default ``workspaces``).

It wires one bus to three subscribers, the shape every deployment has:

1. a JSONL log per session (``sinks.JsonlSink``): ``DIR/{session}/events.jsonl``;
2. an in-memory query index (``sinks.EventIndex``) for dashboards;
3. a live listener, the way an SSE stream or a terminal UI follows a session.

Then it publishes a small agent session's worth of events and prints what
each subscriber saw. Each run is a new session (its id says when it ran), so
running it again adds a session to the workspace rather than a second run to
the first one's log.
"""

from __future__ import annotations

import argparse
import itertools
import secrets
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import anyio

from eventbus import (
    Event,
    EventBus,
    EventQuery,
    EventType,
    Gap,
    create_llm_request_event,
    create_llm_response_event,
    create_phase_transition_event,
    create_session_event,
    create_task_event,
    parent_scope,
)
from sinks import EventIndex, JsonlSink

ROLES = {"plan": "planner", "code": "coder", "review": "reviewer", "test": "tester"}


def new_session_id() -> str:
    """A session id of its own for each run: the UTC time and a random suffix."""
    return f"quickstart-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


async def run_session(bus: EventBus, session: str) -> None:
    """Publish what a small session emits: phases, tasks, LLM calls with usage."""
    # Every publish is awaited: it returns as soon as the bus has the event
    # (it only waits if a lossless sink is a whole buffer behind).
    await bus.publish(create_session_event(session, EventType.SESSION_STARTED, phase="IDEA"))
    phases = ["IDEA", "PLAN_REVIEW", "EXECUTION", "VERIFICATION", "COMPLETE"]
    for old, new in itertools.pairwise(phases):
        await bus.publish(create_phase_transition_event(session, old, new))
        if new != "EXECUTION":
            continue
        for number, (task, role) in enumerate(ROLES.items(), start=1):
            task_id = f"task-{number}-{task}"
            started = create_task_event(
                session, EventType.TASK_STARTED, task_id, phase=new, agent_role=role
            )
            await bus.publish(started)
            # Events created inside parent_scope point at the task's start.
            with parent_scope(started.id):
                request = create_llm_request_event(
                    session, "gpt-4o", role, 400 * number, task_id, phase=new
                )
                await bus.publish(request)
                await bus.publish(
                    create_llm_response_event(
                        session, "gpt-4o", role, 400 * number, 150 * number, task_id,
                        phase=new, cost_usd=0.001 * number, parent_id=request.id,
                    )
                )  # fmt: skip
                await bus.publish(
                    create_task_event(
                        session, EventType.TASK_COMPLETED, task_id, phase=new, agent_role=role
                    )
                )
    await bus.publish(create_session_event(session, EventType.SESSION_COMPLETED, phase="COMPLETE"))


async def main(workspace: Path) -> None:
    session = new_session_id()
    index = EventIndex()
    live: list[Event | Gap] = []

    async with EventBus() as bus:
        # Step 1: lossless sinks. The bus hands them batches and retries failures.
        bus.subscribe(JsonlSink(workspace, durability="flush"))
        bus.subscribe(index)

        # Step 2: a live listener for this session only. It is lossy: if it
        # fell behind it would get a Gap marker, and publish would never wait.
        async with bus.listen(EventQuery(session_id=session), buffer=1000) as events:

            async def follow() -> None:
                async for item in events:
                    live.append(item)
                    if isinstance(item, Event) and item.event_type == "session_completed":
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await run_session(bus, session)

        # Step 3: flush returns once every lossless sink has written everything
        # published so far: the JSONL lines are now in the file.
        await bus.flush()
        stats = bus.stats()

    # Leaving the block drained and closed the sinks. What did each see?
    log_path = workspace / session / "events.jsonl"
    lines = log_path.read_bytes().count(b"\n")
    print(f"session:        {session}")
    print(f"published:      {stats.published} events")
    print(f"JSONL log:      {lines} lines in {log_path}")
    print(f"index:          {index.count()} events; by type:")
    for event_type, count in sorted(
        Counter(e.event_type.value for e in index.get_events()).items()
    ):
        print(f"                  {event_type:<24}{count}")
    usage = index.usage(session_id=session)
    print(f"                tokens {usage.total_tokens} (prompt {usage.prompt_tokens}, "
          f"completion {usage.completion_tokens}), cost ${usage.cost_usd:.4f}")  # fmt: skip
    print(f"live listener:  {sum(isinstance(i, Event) for i in live)} events, "
          f"{sum(i.missed for i in live if isinstance(i, Gap))} missed")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Publish a burst of events to three sinks.")
    parser.add_argument("--workspace", type=Path, default=Path("workspaces"))
    anyio.run(main, parser.parse_args().workspace)
