"""Benchmark the JSONL event log: loading a large log, and appending through the bus.

Run: ``python benchmarks/bench_eventlog.py [--events N] [--append-events M]``

1. Reading an N-event ``events.jsonl`` (default 1,000,000): the seed's naive
   loop (``json.loads`` + ``Event.from_dict`` per line) against
   ``EventLog(path)`` (msgspec ``decode_lines`` over 4 MiB chunks), plus
   ``EventLog(path, cache=False)`` and ``iter_log``. Prints ratios to the
   naive loop.
2. Appending M events through a real ``EventBus`` into a ``JsonlSink`` in
   each durability mode: events/s, batches, and fsyncs (counted by wrapping
   ``os.fsync``: "fsync" mode must cost one per batch, not one per event).

Numbers are printed, never asserted. Data goes to a temporary directory that
is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from _seed import seed_load

from eventbus import Event, EventBus, EventType, encode_jsonl
from sinks.jsonl import Durability, EventLog, JsonlSink, iter_log

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_TYPES = [
    EventType.TASK_STARTED,
    EventType.LLM_REQUEST_SENT,
    EventType.INFO,
    EventType.GATE_EVALUATED,
]


def make_events(count: int, session_id: str = "bench") -> list[Event]:
    """Realistic events: every field set, token usage in metadata."""
    return [
        Event(
            event_type=_TYPES[i % len(_TYPES)],
            session_id=session_id,
            message=f"Executing task task_{i % 97}: step {i}",
            phase="EXECUTION",
            task_id=f"task_{i % 97}",
            agent_role="coder",
            model="model-a",
            metadata={"prompt_tokens": 150 + i % 50, "completion_tokens": 300, "total_tokens": 450},
        )
        for i in range(count)
    ]


def write_log(path: Path, count: int) -> None:
    """Write ``count`` events to ``path`` in batches of 10,000."""
    with path.open("wb") as file:
        for start in range(0, count, 10_000):
            file.write(encode_jsonl(make_events(min(10_000, count - start))))


def naive_load(path: Path) -> list[Event]:
    """The same loop building this package's ``Event`` (``Event.from_dict``)."""
    events = []
    with path.open("r") as file:
        for line in file:
            if line.strip():
                events.append(Event.from_dict(json.loads(line)))  # noqa: PERF401
    return events


def best_of(repeat: int, label: str, function: Callable[[], Sized]) -> float:
    """Run ``function`` ``repeat`` times; print and return the best time.

    Each run starts after a GC; what it returns is freed after the clock
    stops, and its size must not change between runs.
    """
    times = []
    sizes = set()
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        sizes.add(len(result))
        del result
    assert len(sizes) == 1, f"{label} read different counts: {sizes}"
    print(f"  {label:<46} {min(times):8.3f} s  (best of {repeat})")
    return min(times)


def bench_read(directory: Path, count: int, repeat: int) -> None:
    """Load an N-event file each way; print times and ratios."""
    path = directory / "events.jsonl"
    write_log(path, count)
    size_mb = path.stat().st_size / 1e6
    print(f"reading {count:,} events ({size_mb:,.0f} MB)")
    seed = best_of(repeat, "seed loop (dataclass, json.loads + from_dict)", lambda: seed_load(path))
    naive = best_of(repeat, "seed loop with Event.from_dict", lambda: naive_load(path))
    cached = best_of(repeat, "EventLog(path)", lambda: EventLog(path))
    lean = best_of(repeat, "EventLog(path, cache=False)", lambda: EventLog(path, cache=False))
    log = EventLog(path, cache=False)
    latest = best_of(repeat, "  then get_latest(100) (reads the end)", lambda: log.get_latest(100))
    positioned = best_of(
        repeat, "iter_log(path) (with byte positions)", lambda: list(iter_log(path))
    )
    for name, elapsed, note in [
        ("EventLog(path)", cached, "  (the issue's target: >= 5x the seed loop)"),
        ("EventLog(path, cache=False)", lean, "  (builds a positional index: opens slower)"),
        ("iter_log(path)", positioned, ""),
    ]:
        print(
            f"  {name:<28} {seed / elapsed:5.1f}x the seed loop, "
            f"{naive / elapsed:5.1f}x the loop with Event.from_dict{note}"
        )
    print(f"  get_latest(100) without cache: {latest * 1e3:.2f} ms")
    path.unlink()


async def append_through_bus(root: Path, events: list[Event], durability: Durability) -> int:
    """Publish ``events`` through a bus into a JsonlSink; return the batches written."""
    sink = JsonlSink(root, durability=durability)
    async with EventBus() as bus:
        bus.subscribe(sink)
        for event in events:
            await bus.publish(event)
        await bus.flush()
        return sink.stats().batches


def bench_append(directory: Path, count: int) -> None:
    """Append through the bus in each durability mode; print events/s and fsyncs."""
    print(f"appending {count:,} events through EventBus -> JsonlSink (one session)")
    real_fsync = os.fsync
    fsyncs = 0

    def counting_fsync(fd: FileDescriptorLike) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    os.fsync = counting_fsync
    try:
        rates = {}
        modes: tuple[Durability, ...] = ("none", "flush", "fsync")
        anyio.run(append_through_bus, directory / "warm-up", make_events(10_000), "flush")
        for durability in modes:
            events = make_events(count, session_id=f"session-{durability}")
            fsyncs = 0
            gc.collect()
            start = time.perf_counter()
            batches = anyio.run(append_through_bus, directory, events, durability)
            elapsed = time.perf_counter() - start
            rates[durability] = count / elapsed
            print(
                f"  {durability:<6} {rates[durability]:>10,.0f} events/s  {batches:>5} batches  "
                f"{fsyncs:>5} fsyncs (the file's: {max(fsyncs - 2, 0)}; "
                f"{max(fsyncs - 2, 0) / batches:.2f} per batch)"
            )
        print(
            f"  flush runs at {rates['flush'] / rates['none']:.2f}x none, "
            f"fsync at {rates['fsync'] / rates['none']:.2f}x none"
        )
        print("  (fsync mode also fsyncs 2 directories for a new session: root and session dir)")
    finally:
        os.fsync = real_fsync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the file to read")
    parser.add_argument("--append-events", type=int, default=200_000, help="events to append")
    parser.add_argument("--repeat", type=int, default=3, help="runs per reading measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_eventlog_") as temp:
        directory = Path(temp)
        bench_read(directory, args.events, args.repeat)
        bench_append(directory, args.append_events)


if __name__ == "__main__":
    main()
