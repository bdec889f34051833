"""Bytes per event an :class:`sinks.index.EventIndex` holds, for small events.

Run: ``python benchmarks/bench_index_memory.py [--events N] [--compare TREE]``
(default 1,000,000 events; ``--compare``: this tree against another checkout,
e.g. ``git worktree add /tmp/before main``, each figure side by side).

Each measurement runs in a fresh interpreter: small events (a type, a session
of 10, a short message, a task on some) are made a batch at a time and given
to a memory-mode index through the bus path (``write``, batches of 64) or
``add`` (batches of 1024); the batches are dropped once indexed, so what
tracemalloc counts at the end is the index alone; the resident set's growth
(Linux) is measured too, in a run without tracemalloc. Numbers are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import gc, json, os, sys, tracemalloc
import anyio
from eventbus import Event, EventBatch, EventType
from sinks.index import EventIndex

count, path, rss = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "rss"
types = [EventType.TASK_STARTED, EventType.INFO, EventType.LLM_RESPONSE_RECEIVED,
         EventType.TASK_COMPLETED]

def batch(start, size):
    return [
        Event(
            event_type=types[i % 4],
            session_id=f"session-{i % 10}",
            message=f"event {i}",
            task_id=f"task-{i // 40}" if i % 3 else None,
            metadata={"total_tokens": 10} if i % 4 == 2 else {},
        )
        for i in range(start, min(count, start + size))
    ]

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

gc.collect()
if rss:
    before = resident()
else:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
index = EventIndex()
if path == "write":
    async def feed():
        for start in range(0, count, 64):
            await index.write(EventBatch(batch(start, 64)))
    anyio.run(feed)
else:
    for start in range(0, count, 1024):
        index.add(batch(start, 1024))
gc.collect()
used = (resident() if rss else tracemalloc.get_traced_memory()[0]) - before
print(json.dumps({"events": len(index), "bytes": used}))
"""


def measure(count: int, path: str, how: str, tree: Path | None = None) -> float:
    """Bytes per event, measured in a fresh interpreter (importing ``tree``'s ``src`` if given)."""
    env = None
    if tree is not None:
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(count), path, how],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    result: dict[str, int] = json.loads(out)
    return result["bytes"] / result["events"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--compare", metavar="TREE", help="a checkout to compare this tree with")
    args = parser.parse_args()
    if args.compare:
        here = Path(__file__).resolve().parent.parent
        print(f"  {'bytes/event':44} {'before':>8} {'after':>8}")
        for path in ("write", "add"):
            for how in ("tracemalloc", "rss"):
                before = measure(args.events, path, how, Path(args.compare).resolve())
                after = measure(args.events, path, how, here)
                label = f"{path} {args.events:,} small events ({how})"
                print(f"  {label:44} {before:8.0f} {after:8.0f}  ({after / before:.2f}x)")
        return
    for path in ("write", "add"):
        for how in ("tracemalloc", "rss"):
            per_event = measure(args.events, path, how)
            print(f"  {path:6} {args.events:,} small events: {per_event:6.0f} bytes/event ({how})")


if __name__ == "__main__":
    main()
