"""The live path: one event at a time, ``await publish(e); await flush()``, against pyee.

Run: ``python benchmarks/bench_live.py [--events N] [--backend B] [--clock cpu]
[--breakdown] [--profile]``.

A coordinator awaits each event between LLM calls and a dashboard shows it
as it happens, so here every event is published and waited for before the
next one is built. All figures come from one process and run (the ratios
compare like with like); each contender gets the same events:

- ``pyee``: an ``AsyncIOEventEmitter`` whose async handler appends the event
  to a list and writes its JSON line to a file (``os.write``: in the OS, as
  ``JsonlSink``'s "flush" mode); the publisher emits and awaits the handler.
- ``pyee, same work``: the work of the full bus's three subscribers in one
  async handler: it writes the JSON line (``os.write``), adds the event to an
  ``EventIndex`` (``index.add([event])``) and puts it on an ``asyncio.Queue``
  (bounded, 1000) that a reader task drains (a dashboard); the publisher
  emits and awaits the handler. Every event must reach the reader and the
  index. The line is encoded by msgspec alone: pyee checks nothing, where
  the bus refuses what JSON cannot hold (``EventEncodeError``).
- ``bus, no-op sink``: ``await publish(e); await flush()``, one sink whose
  ``write`` does nothing.
- ``bus, JsonlSink + EventIndex + listener``: ``JsonlSink`` ("flush"), an
  ``EventIndex`` and a listener whose task reads every event (a dashboard).

pyee is asyncio-only: with ``--backend trio`` the bus runs on trio and both
pyee contenders still on asyncio (each run is its own event loop).

``--clock cpu`` times each run by this process's CPU time instead of the
wall clock: on a machine shared with other work, what others run then
disturbs the figures less (the bus's file I/O runs on the event loop on
this path, or in a worker thread of this process, counted too).

``--against DIR`` compares the full bus's ratio to pyee doing the same
work with another source tree's (a git worktree of an older commit): in
alternating subprocesses (``--repeats`` per tree), each timing both
contenders ``--rounds`` times (5,000 events, CPU time) and taking the ratio
of their best runs; it prints the median and range of those ratios. Best
runs and many processes keep a shared machine's noise out of the figure
better than one run's medians.

``--profile`` prints where the full bus round trip spends its time
(cProfile, own time). ``--breakdown`` adds the bus with one part at a time
and each sink's own ``write`` of a batch of one, called directly (no bus),
to show what each part adds. The targets: the no-op bus at least pyee's
rate; the full bus at least the rate of pyee doing the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
from _against import print_ratios, ratios_by_tree

from eventbus import Event, EventBatch, EventBus, EventType, encode_event
from sinks import JsonlSink
from sinks.index import EventIndex

MODELS = ["gpt-4o", "claude-sonnet", "llama-70b"]

# What a run's time is measured with: the wall clock, or with --clock cpu this
# process's CPU time (all its threads), which other processes on a shared
# machine disturb less.
clock = time.perf_counter
ROLES = ["planner", "coder", "reviewer", "tester"]


def fields_for(i: int) -> dict[str, Any]:
    """The content of the i-th event: the same for every contender."""
    prompt = 100 + i % 900
    return {
        "session_id": "sess-live",
        "message": f"LLM response from {MODELS[i % 3]} for {ROLES[i % 4]}",
        "phase": "EXECUTION",
        "task_id": f"task-{i % 50:03d}",
        "agent_role": ROLES[i % 4],
        "model": MODELS[i % 3],
        "metadata": {"prompt_tokens": prompt, "completion_tokens": 2 * prompt},
    }


async def run_pyee(n: int, tmp: Path) -> float:
    from pyee.asyncio import AsyncIOEventEmitter

    emitter = AsyncIOEventEmitter()
    received: list[Event] = []
    encoder = msgspec.json.Encoder()
    fd = os.open(tmp / "pyee.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    @emitter.on("event")
    async def handler(event: Event) -> None:
        received.append(event)
        os.write(fd, encoder.encode(event) + b"\n")
        waiter.set_result(None)

    contents = [fields_for(i) for i in range(n)]
    kind = EventType.LLM_RESPONSE_RECEIVED
    start = clock()
    for content in contents:
        waiter = loop.create_future()
        emitter.emit("event", Event(event_type=kind, **content))
        await waiter
    elapsed = clock() - start
    os.close(fd)
    assert len(received) == n
    return elapsed


async def run_pyee_same_work(n: int, tmp: Path) -> float:
    """pyee doing the full bus's work: the JSON line, an ``EventIndex``, a queue to a reader."""
    from pyee.asyncio import AsyncIOEventEmitter

    emitter = AsyncIOEventEmitter()
    index = EventIndex()
    queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=1000)
    encoder = msgspec.json.Encoder()
    path = tmp / f"pyee-same-{time.perf_counter_ns()}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    shown = Shown()

    async def reader() -> None:
        while await queue.get() is not None:
            shown.received += 1

    @emitter.on("event")
    async def handler(event: Event) -> None:
        os.write(fd, encoder.encode(event) + b"\n")
        index.add([event])
        await queue.put(event)
        waiter.set_result(None)

    reading = asyncio.create_task(reader())
    contents = [fields_for(i) for i in range(n)]
    kind = EventType.LLM_RESPONSE_RECEIVED
    start = clock()
    for content in contents:
        waiter = loop.create_future()
        emitter.emit("event", Event(event_type=kind, **content))
        await waiter
    elapsed = clock() - start
    await queue.put(None)
    await reading
    os.close(fd)
    assert shown.received == n
    assert len(index) == n
    return elapsed


class NoopSink:
    """A sink that accepts every batch and does nothing."""

    name = "noop"

    async def write(self, events: Sequence[Event]) -> None:
        """Accept ``events``."""

    async def aclose(self) -> None:
        """Nothing to close."""


class Shown:
    """What the dashboard's listener task received."""

    received = 0


async def listen(bus: EventBus, *, task_status: anyio.abc.TaskStatus[Shown]) -> None:
    """A dashboard: read every live event as it comes."""
    shown = Shown()
    async with bus.listen(buffer=1000) as listener:
        task_status.started(shown)
        async for _ in listener:
            shown.received += 1


FULL = ("jsonl", "index", "listener")


async def run_bus(
    n: int, tmp: Path, *, full: bool, profile: bool = False, parts: Sequence[str] = ()
) -> float:
    """``await publish(e); await flush()`` per event; ``parts`` (default: ``FULL`` if
    ``full``, else a no-op sink) picks the subscribers: jsonl, index, listener, noop."""
    parts = parts or (FULL if full else ("noop",))
    full = "listener" in parts  # then every event must reach the dashboard
    contents = [fields_for(i) for i in range(n)]
    kind = EventType.LLM_RESPONSE_RECEIVED
    index = EventIndex()
    async with EventBus() as bus, anyio.create_task_group() as tg:
        if "jsonl" in parts:
            bus.subscribe(JsonlSink(tmp / f"bus-{time.perf_counter_ns()}", durability="flush"))
        if "index" in parts:
            bus.subscribe(index)
        if "noop" in parts:
            bus.subscribe(NoopSink())
        if full:
            listener = await tg.start(listen, bus)
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        start = clock()
        for content in contents:
            await bus.publish(Event(event_type=kind, **content))
            await bus.flush()
        elapsed = clock() - start
        if profiler is not None:
            profiler.disable()
            print_profile(profiler)
        if full:
            await anyio.wait_all_tasks_blocked()
            assert listener.received == n
            tg.cancel_scope.cancel()
    if "index" in parts:
        assert len(index) == n
    return elapsed


async def run_direct(n: int, tmp: Path, which: str) -> float:
    """A sink's own cost: ``await sink.write(batch of one)`` per event, no bus."""
    kind = EventType.LLM_RESPONSE_RECEIVED
    events = [Event(event_type=kind, **fields_for(i)) for i in range(n)]
    batches = [EventBatch([event], [encode_event(event)]) for event in events]
    sink: JsonlSink | EventIndex
    sink = (
        JsonlSink(tmp / f"direct-{time.perf_counter_ns()}", durability="flush")
        if which == "jsonl"
        else EventIndex()
    )
    await sink.write(batches[0])  # opens the log
    start = clock()
    for one in batches[1:]:
        await sink.write(one)
    elapsed = clock() - start
    await sink.aclose()
    return elapsed * n / (n - 1)


def best_ratio(n: int, rounds: int, backend: str) -> float:
    """In this process: the full bus's best run against pyee doing the same work's best
    (pyee's time over the bus's: above 1.0 the bus is quicker), by CPU time."""
    global clock
    clock = time.process_time
    pyee: list[float] = []
    bus: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for _ in range(rounds):
            pyee.append(asyncio.run(run_pyee_same_work(n, tmp)))
            bus.append(anyio.run(lambda: run_bus(n, tmp, full=True), backend=backend))
    return min(pyee) / min(bus)


def against(tree: Path, n: int, repeats: int, rounds: int, backend: str) -> None:
    """:func:`best_ratio` from this tree and from ``tree``, in alternating subprocesses."""
    arguments = [f"--events={n}", f"--rounds={rounds}", f"--backend={backend}"]
    ratios = ratios_by_tree(__file__, tree, arguments, repeats)
    print(
        f"\nfull bus / pyee same work (best of {rounds} runs of {n} events, CPU time), "
        f"backend {backend}, {repeats} processes per tree"
    )
    print_ratios(ratios)


def print_profile(profiler: cProfile.Profile) -> None:
    stats = pstats.Stats(profiler)
    rows = []
    total = 0.0
    for (path, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        total += entry[2]
        rows.append((entry[2], entry[1], f"{Path(path).name}:{line} {function}"))
    rows.sort(reverse=True)
    print("  where the full round trip spends its time (own time, cProfile):")
    for own, calls, where in rows[:20]:
        print(f"    {own / total:6.1%} {calls:>9}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs (--against: processes)")
    parser.add_argument("--against", type=Path, metavar="DIR", help="another source tree")
    parser.add_argument("--rounds", type=int, default=8, help="runs per process (--against)")
    parser.add_argument("--one-ratio", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="time runs by the wall clock or by this process's CPU time",
    )
    args = parser.parse_args()
    if args.one_ratio:
        print(json.dumps(best_ratio(args.events, args.rounds, args.backend)))
        return
    if args.against is not None:
        against(args.against, min(args.events, 5_000), args.repeats, args.rounds, args.backend)
        return
    global clock  # one switch for every contender
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n = args.events
    runs: dict[str, list[float]] = {
        "pyee": [],
        "pyee, same work": [],
        "bus, no-op sink": [],
        "bus, full": [],
    }
    extra: dict[str, tuple[str, ...] | str] = {}
    if args.breakdown:
        extra = {
            "bus, JsonlSink only": ("jsonl",),
            "bus, EventIndex only": ("index",),
            "bus, no-op sink + listener": ("noop", "listener"),
            "JsonlSink.write alone (no bus)": "jsonl",
            "EventIndex.write alone (no bus)": "index",
        }
        runs.update({key: [] for key in extra})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for _ in range(args.repeats):  # interleaved, so drift hits every contender alike
            runs["pyee"].append(n / asyncio.run(run_pyee(n, tmp)))
            runs["pyee, same work"].append(n / asyncio.run(run_pyee_same_work(n, tmp)))
            runs["bus, no-op sink"].append(
                n / anyio.run(lambda: run_bus(n, tmp, full=False), backend=args.backend)
            )
            runs["bus, full"].append(
                n / anyio.run(lambda: run_bus(n, tmp, full=True), backend=args.backend)
            )
            for key, what in extra.items():
                if isinstance(what, str):
                    seconds = anyio.run(run_direct, n, tmp, what, backend=args.backend)
                else:
                    run = functools.partial(run_bus, n, tmp, full=False, parts=what)
                    seconds = anyio.run(run, backend=args.backend)
                runs[key].append(n / seconds)
        if args.profile:
            anyio.run(lambda: run_bus(n, tmp, full=True, profile=True), backend=args.backend)
    pyee = statistics.median(runs["pyee"])
    same = statistics.median(runs["pyee, same work"])
    print(
        f"\none at a time, {n} events, backend {args.backend}, median of {args.repeats}, "
        f"{args.clock} clock"
    )
    print("(x pyee, x same: the median rate over pyee's, pyee same work's; pyee runs on asyncio)")
    print(f"{'contender':<52}{'events/s':>10}{'us/event':>10}{'x pyee':>8}{'x same':>8}  target")
    targets = {"bus, no-op sink": "x pyee >= 1.0", "bus, full": "x same >= 1.0"}
    names = {
        "pyee": "pyee (handler: list + JSON line)",
        "pyee, same work": "pyee, same work (line + EventIndex + queue)",
        "bus, no-op sink": "bus, no-op sink",
        "bus, full": "bus, JsonlSink + EventIndex + listener",
    }
    for key, rates in runs.items():
        rate = statistics.median(rates)
        print(
            f"{names.get(key, key):<52}{rate:>10,.0f}{1e6 / rate:>10.1f}{rate / pyee:>8.2f}"
            f"{rate / same:>8.2f}  {targets.get(key, '')}"
        )


if __name__ == "__main__":
    main()
