"""A coordinator process for the JetStream fault tests.

Usage: ``python _nats_producer.py URL STREAM SESSION_ID BATCH``. Each line
read from stdin is a number ``n``: publish ``n`` batches of ``BATCH`` events
through ``JetStreamSink``, ``flush()`` after each, then print the ids the
flush acknowledged, one line per flush (space-separated). Exits at EOF.
"""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread

from eventbus import Event, EventBus, EventType, RetryPolicy
from sinks.nats import JetStreamSink


async def main(url: str, stream: str, session_id: str, batch: int) -> None:
    sink = JetStreamSink(url, stream=stream, subject_prefix=stream.lower(), ack_timeout=1.0)
    # Generous retries: the test restarts the server while this process publishes.
    retry = RetryPolicy(retries=40, initial_delay=0.05, max_delay=0.5)
    async with EventBus(retry=retry) as bus:
        bus.subscribe(sink)
        count = 0
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            for _ in range(int(line)):
                ids = []
                for _ in range(batch):
                    event = Event(
                        event_type=EventType.INFO, session_id=session_id, message=f"event {count}"
                    )
                    count += 1
                    await bus.publish(event)
                    ids.append(event.id)
                await bus.flush()
                print(" ".join(ids), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), backend="asyncio")
