"""Publishing throughput and latency: the bus against the seed, a floor and peers.

Run: ``python benchmarks/bench_bus.py [--events N]``. Every figure comes from
the same process and run, so the ratios compare like with like:

- ``naive``: the seed's path: a dataclass event, and ``EventLog.append``
  opening the file, ``json.dumps``-ing one event and closing per append, plus
  an in-memory list.
- ``floor``: no bus: the same events as a lean msgspec Struct with a counter
  id, batch-encoded with ``encode_lines`` and written with one ``write`` per
  1024 events, kept in a list. CPython's limit for this work.
- ``bus awaited``: ``Event(...)`` plus ``await bus.publish`` per event, three
  subscribers: ``sinks.JsonlSink`` ("flush" mode), a memory sink, a listener.
- ``bus bursts``: the same with ``publish_nowait`` in bursts of 1000, the
  coordinator yielding between bursts (and awaiting ``publish`` when
  ``publish_nowait`` says the buffer is full).
- peers: pyee (async handler), structlog to a JSON file, bubus (awaited dispatch).

Then the publish latency with a listener that never reads, measured per call
in the first and second half of a long run: it must not grow with the stall.

``--against DIR`` compares the bursts with another source tree (a git
worktree of an older commit, e.g. ``git worktree add ../old REV``): it runs
the floor and the bursts (this module's code, importing ``eventbus`` and
``sinks`` from ``DIR/src`` or from this tree's) in alternating subprocesses,
``--repeats`` of each, and prints the medians of bursts / floor, each ratio
measured within one process. The machine's load moves both trees alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from _against import print_ratios, ratios_by_tree
from _seed import SeedEvent, SeedEventLog
from anyio.lowlevel import checkpoint

from eventbus import BusFullError, Event, EventBus, EventType, MemorySink
from sinks import JsonlSink

SESSION = "sess-0001"
MODELS = ["gpt-4o", "claude-sonnet", "llama-70b"]
ROLES = ["planner", "coder", "reviewer", "tester"]


def fields_for(i: int) -> dict[str, Any]:
    """The content of the i-th event: the same for every contender."""
    prompt = 100 + i % 900
    return {
        "session_id": SESSION,
        "message": f"LLM response from {MODELS[i % 3]} for {ROLES[i % 4]}",
        "phase": "EXECUTION",
        "task_id": f"task-{i % 50:03d}",
        "agent_role": ROLES[i % 4],
        "model": MODELS[i % 3],
        "metadata": {"prompt_tokens": prompt, "completion_tokens": 2 * prompt,
                     "total_tokens": 3 * prompt},
    }  # fmt: skip


# --- the seed's naive path ---------------------------------------------------


def run_naive(n: int, tmp: Path) -> float:
    log = SeedEventLog(tmp / "naive.jsonl")
    kind = EventType.LLM_RESPONSE_RECEIVED
    contents = [fields_for(i) for i in range(n)]
    start = time.perf_counter()
    for content in contents:
        log.append(
            SeedEvent(
                event_type=kind,
                timestamp=datetime.utcnow(),  # the seed's call
                **content,
            )
        )
    return time.perf_counter() - start


# --- the floor ------------------------------------------------------------------


class LeanEvent(msgspec.Struct, frozen=True, kw_only=True):
    event_type: str
    session_id: str
    message: str
    id: int
    phase: str | None = None
    task_id: str | None = None
    agent_role: str | None = None
    model: str | None = None
    metadata: dict[str, Any] = {}


def run_floor(n: int, tmp: Path) -> float:
    encoder = msgspec.json.Encoder()
    counter = itertools.count()
    kept: list[LeanEvent] = []
    pending: list[LeanEvent] = []
    contents = [fields_for(i) for i in range(n)]
    start = time.perf_counter()
    with open(tmp / "floor.jsonl", "wb") as f:
        for content in contents:
            event = LeanEvent(event_type="llm_response_received", id=next(counter), **content)
            kept.append(event)
            pending.append(event)
            if len(pending) == 1024:
                f.write(encoder.encode_lines(pending))
                pending.clear()
        f.write(encoder.encode_lines(pending))
    return time.perf_counter() - start


# --- the bus ----------------------------------------------------------------------


async def run_bus(n: int, tmp: Path, *, bursts: bool) -> float:
    contents = [fields_for(i) for i in range(n)]
    info = EventType.LLM_RESPONSE_RECEIVED
    memory = MemorySink()
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp / "bus", durability="flush"))
        bus.subscribe(memory)
        async with bus.listen(buffer=1000):
            start = time.perf_counter()
            if bursts:
                publish_nowait = bus.publish_nowait
                for offset in range(0, n, 1000):
                    for content in contents[offset : offset + 1000]:
                        event = Event(event_type=info, **content)
                        try:
                            publish_nowait(event)
                        except BusFullError:  # a sink is a buffer behind: wait for it
                            await bus.publish(event)
                    await checkpoint()
            else:
                publish = bus.publish
                for content in contents:
                    await publish(Event(event_type=info, **content))
            await bus.flush()
            elapsed = time.perf_counter() - start
    assert len(memory.events) == n
    return elapsed


# --- peers --------------------------------------------------------------------------


async def run_pyee(n: int) -> float:
    from pyee.asyncio import AsyncIOEventEmitter

    emitter = AsyncIOEventEmitter()
    received: list[Event] = []
    done = asyncio.Event()

    @emitter.on("event")
    async def handler(event: Event) -> None:
        received.append(event)
        if len(received) == n:
            done.set()

    contents = [fields_for(i) for i in range(n)]
    start = time.perf_counter()
    for content in contents:
        emitter.emit("event", Event(event_type=EventType.LLM_RESPONSE_RECEIVED, **content))
        await asyncio.sleep(0)
    await done.wait()
    return time.perf_counter() - start


def run_structlog(n: int, tmp: Path) -> float:
    import structlog

    with open(tmp / "structlog.jsonl", "w") as f:
        logger = structlog.wrap_logger(
            structlog.PrintLogger(f),
            processors=[structlog.processors.TimeStamper(fmt="iso"),
                        structlog.processors.JSONRenderer()],
        )  # fmt: skip
        contents = [fields_for(i) for i in range(n)]
        start = time.perf_counter()
        for content in contents:
            logger.info("llm_response_received", **content)
        return time.perf_counter() - start


async def run_bubus(n: int) -> float:
    from bubus import BaseEvent
    from bubus import EventBus as BubusBus

    class LLMResponse(BaseEvent[None]):  # type: ignore[misc]
        session_id: str
        message: str
        phase: str | None = None
        task_id: str | None = None
        agent_role: str | None = None
        model: str | None = None
        metadata: dict[str, Any] | None = None

    bus = BubusBus(max_history_size=100)
    received = 0

    async def handler(event: LLMResponse) -> None:
        nonlocal received
        received += 1

    bus.on(LLMResponse, handler)
    contents = [fields_for(i) for i in range(n)]
    start = time.perf_counter()
    for content in contents:
        await bus.dispatch(LLMResponse(**content))
    await bus.wait_until_idle()
    elapsed = time.perf_counter() - start
    await bus.stop()
    return elapsed


# --- latency --------------------------------------------------------------------------


class CountingSink:
    """An in-memory sink that keeps a count, so the heap does not grow during the run."""

    name = "counting"

    def __init__(self) -> None:
        self.count = 0

    async def write(self, events: Sequence[Event]) -> None:
        self.count += len(events)

    async def aclose(self) -> None:
        pass


async def publish_latencies(n: int, tmp: Path, *, stalled_listener: bool, jsonl: bool) -> list[int]:
    """Per-call publish latency (ns), optionally with a listener that never reads."""
    contents = [fields_for(i) for i in range(n)]
    latencies: list[int] = [0] * n
    clock = time.perf_counter_ns
    # The benchmark's own inputs (n dicts) are not the bus's: keep the cyclic
    # GC from walking them in the middle of a timed publish.
    gc.collect()
    gc.freeze()
    async with EventBus() as bus:
        bus.subscribe(CountingSink())
        if jsonl:
            bus.subscribe(JsonlSink(tmp / "latency", durability="flush"))
        async with AsyncExitStack() as stack:
            if stalled_listener:  # never read: it stalls for the whole run
                await stack.enter_async_context(bus.listen(buffer=1000))
            for i, content in enumerate(contents):
                event = Event(event_type=EventType.LLM_RESPONSE_RECEIVED, **content)
                before = clock()
                await bus.publish(event)
                latencies[i] = clock() - before
                if i % 10 == 9:
                    await checkpoint()  # a coordinator awaits its own work between events
    gc.unfreeze()
    return latencies


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def bursts_over_floor(n: int, backend: str) -> float:
    """One measurement of the bursts' rate over the floor's, in this process."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        floor = run_floor(n, tmp)
        bursts = anyio.run(lambda: run_bus(n, tmp, bursts=True), backend=backend)
    return floor / bursts


def against(tree: Path, n: int, repeats: int, backend: str) -> None:
    """Bursts / floor from this tree and from ``tree``, in alternating subprocesses."""
    arguments = [f"--events={n}", f"--backend={backend}"]
    ratios = ratios_by_tree(__file__, tree, arguments, repeats)
    print(f"\npublish_nowait bursts / floor, {n} events, backend {backend}, {repeats} runs each")
    print_ratios(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--peer-events", type=int, default=20_000)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--against", type=Path, metavar="DIR", help="another source tree")
    parser.add_argument("--repeats", type=int, default=7, help="runs per tree (--against)")
    parser.add_argument("--one-ratio", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, peer_n = args.events, args.peer_events
    if args.one_ratio:
        print(json.dumps(bursts_over_floor(n, args.backend)))
        return
    if args.against is not None:
        against(args.against, n, args.repeats, args.backend)
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rates: dict[str, float] = {}
        rates["naive (seed EventLog)"] = n / run_naive(n, tmp)
        rates["floor (lean Struct, encode_lines)"] = n / run_floor(n, tmp)
        rates["bus awaited publish, 3 subscribers"] = n / anyio.run(
            lambda: run_bus(n, tmp, bursts=False), backend=args.backend
        )
        rates["bus publish_nowait bursts, 3 subscribers"] = n / anyio.run(
            lambda: run_bus(n, tmp, bursts=True), backend=args.backend
        )
        rates["pyee, async handler"] = peer_n / asyncio.run(run_pyee(peer_n))
        rates["structlog to a JSON file"] = peer_n / run_structlog(peer_n, tmp)
        try:
            rates["bubus, awaited dispatch"] = min(peer_n, 5000) / asyncio.run(
                run_bubus(min(peer_n, 5000))
            )
        except ImportError:
            print("(bubus not installed: pip install bubus to include it)")

        naive = rates["naive (seed EventLog)"]
        floor = rates["floor (lean Struct, encode_lines)"]
        print(f"\nthroughput, {n} events ({peer_n} for peers), backend {args.backend}")
        print(f"{'contender':<44}{'events/s':>12}{'x naive':>10}{'x floor':>10}")
        for name, rate in rates.items():
            print(f"{name:<44}{rate:>12,.0f}{rate / naive:>10.2f}{rate / floor:>10.2f}")

        print("\npublish latency (us); the coordinator yields every 10 events")
        print(f"{'run':<42}{'p50':>8}{'p99':>8}{'max':>9}")
        configurations = [
            ("counting sink", False, False),
            ("counting sink + stalled listener", True, False),
            ("+ JsonlSink (I/O in a thread)", True, True),
        ]
        for title, stalled, jsonl in configurations:
            latencies = anyio.run(
                lambda: publish_latencies(n, tmp, stalled_listener=stalled, jsonl=jsonl),  # noqa: B023
                backend=args.backend,
            )
            half = len(latencies) // 2
            for label, part in (("1st half", latencies[:half]), ("2nd half", latencies[half:])):
                name = f"{title}, {label}"
                print(
                    f"{name:<42}{percentile(part, 0.5):>8.2f}{percentile(part, 0.99):>8.2f}"
                    f"{max(part) / 1000:>9.1f}"
                )


if __name__ == "__main__":
    main()
