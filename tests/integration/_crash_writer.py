"""The child process of ``test_jsonl_crash.py``: publish until killed, printing acknowledgements.

Usage: ``python _crash_writer.py WORKSPACE SESSION_ID ROUND SEED``

One task publishes events for SESSION_ID through an ``EventBus`` into a
``JsonlSink`` in ``"flush"`` mode as fast as the bus accepts them, so the
sink is always busy writing. Another task repeatedly awaits ``bus.flush()``
and prints ``ack <event id>`` for each event that flush acknowledged (all
those published before it was called), one per line. It prints them a
random number of publishes later, so the parent, which kills this process
right after reading an ack, kills it at a moment unrelated to the write
that completed the flush. When opening the log cut a torn line, it prints
``recovered <offset> <bytes>`` first. It never stops by itself.
"""

from __future__ import annotations

import random
import sys

import anyio
import anyio.lowlevel

from eventbus import Event, EventBus, EventType
from sinks.jsonl import JsonlSink


class Publisher:
    """Publishes events forever, remembering the ids not yet acknowledged."""

    def __init__(self, bus: EventBus, session_id: str, round_number: int, seed: float) -> None:
        self.bus = bus
        self.session_id = session_id
        self.round_number = round_number
        self.rng = random.Random(seed)
        self.unacknowledged: list[str] = []
        self.published = 0

    async def run(self) -> None:
        while True:
            event = Event(
                event_type=EventType.INFO,
                session_id=self.session_id,
                message=f"round {self.round_number} event {self.published}",
                # many pages per event, so a kill can land inside a write and cut it
                metadata={
                    "round": self.round_number,
                    "index": self.published,
                    "pad": "x" * self.rng.randrange(1 << 16),
                },
            )
            await self.bus.publish(event)
            self.unacknowledged.append(event.id)
            self.published += 1
            await anyio.lowlevel.checkpoint()  # let the acknowledging task run

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` more events have been published."""
        target = self.published + count
        while self.published < target:
            await anyio.lowlevel.checkpoint()


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def announce(warning: Event) -> None:
    recovery = warning.metadata["recovery"]
    report(f"recovered {recovery['torn_offset']} {recovery['torn_bytes']}")


async def publish_until_killed(root: str, session_id: str, round_number: int, seed: float) -> None:
    async with EventBus(buffer=256) as bus, anyio.create_task_group() as group:
        bus.subscribe(JsonlSink(root, durability="flush", on_recovery=announce))
        publisher = Publisher(bus, session_id, round_number, seed)
        group.start_soon(publisher.run)
        rng = random.Random(seed + 1)
        while True:
            await publisher.wait_for(rng.randint(1, 32))
            count = len(publisher.unacknowledged)
            await bus.flush()  # acknowledges the events published before this call
            acknowledged = publisher.unacknowledged[:count]
            del publisher.unacknowledged[:count]
            await publisher.wait_for(rng.randint(1, 16))
            report("\n".join(f"ack {event_id}" for event_id in acknowledged))


if __name__ == "__main__":
    workspace, session, round_text, seed_text = sys.argv[1:]
    anyio.run(publish_until_killed, workspace, session, int(round_text), float(seed_text))
