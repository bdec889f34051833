"""Benchmark the in-memory query index against the seed's list comprehensions.

Run: ``python benchmarks/bench_index.py [--events N]`` (default 1,000,000), or
``python benchmarks/bench_index.py --demo [--sessions S]`` for the demo session alone, or
``python benchmarks/bench_index.py --compare TREE [--rounds R]`` for this tree against
another checkout (``git worktree add /tmp/before main``), side by side in one run.

Builds N realistic events (8 interleaved sessions, ~30 event types, tasks of
40 events, roles, models, token usage on LLM events), then prints, from one run:

1. per query: the seed's ``get_events`` (a list comprehension per filter, over
   the same events as the seed's dataclass, ``_seed.SeedEvent``) and
   :class:`sinks.index.EventIndex`, the time of each and their ratio, next to
   the issue's target;
2. the cost of keeping the index current, per event (``add`` and the bus's
   ``write``), and where it goes (a profile of ``add``); and in the demo
   session (``eventbus demo``'s coordinator, its small batches): each
   ``write`` timed live, then the same batches replayed into a fresh index;
3. bytes per indexed event (tracemalloc) in memory and low-memory mode, the
   cost of rebuilding from a workspace of JSONL logs, and low-memory queries
   (which read their events back from the logs).

With ``--compare``, each round runs the same measurements once per tree, each in
a fresh interpreter importing that tree's ``src`` (in turn, so both see the same
load), and the medians of the rounds are printed with their ratios (this tree
over the other): indexing cost per event (``add`` in batches of 1024, ``write``
of the bus's batches of 64 with their encoded lines, ``write`` of one event at a
time as the live path does) and each query's time, in CPU time of the process
(``time.process_time``: steadier than wall time on a shared machine), warm
(median of repeats) and on its first call.

Numbers are printed, never asserted. Logs go to a temporary directory that is
removed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence, Sized
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any

import anyio
from _seed import SeedEvent, seed_get_events

from eventbus import (
    Event,
    EventBatch,
    EventBus,
    EventQuery,
    EventType,
    decode_events,
    encode_event,
    encode_jsonl,
)
from eventbus.coordinator._demo_agents import IDEA, build_demo_coordinator
from sinks.index import EventIndex, TokenUsage

T = EventType
# One task's events: 40, ~30 types, two LLM responses (5% of all events).
SCRIPT = [
    T.TASK_SCHEDULED, T.TASK_STARTED, T.AGENT_INVOKED, T.MODEL_ROUTED, T.LLM_REQUEST_SENT,
    T.LLM_RESPONSE_RECEIVED, T.AGENT_RESPONSE, T.GATE_EVALUATED, T.DIFF_APPLIED,
    T.COMMAND_EXECUTED, T.COMMAND_EXECUTED, T.INFO, T.LLM_REQUEST_SENT,
    T.LLM_RESPONSE_RECEIVED, T.AGENT_RESPONSE, T.DIFF_APPLIED, T.COMMAND_EXECUTED,
    T.VERIFICATION_STARTED, T.VERIFICATION_PASSED, T.ARTIFACT_CREATED, T.ARTIFACT_UPDATED,
    T.GATE_WARNED, T.INFO, T.WARNING, T.TASK_COMPLETED, T.PHASE_TRANSITION,
    T.CLARIFICATION_REQUESTED, T.CLARIFICATION_ANSWERED, T.GATE_BLOCKED, T.DIFF_FAILED,
    T.TASK_RETRYING, T.TASK_FAILED, T.VERIFICATION_FAILED, T.ERROR, T.TASK_SKIPPED,
    T.SESSION_STARTED, T.INFO, T.COMMAND_EXECUTED, T.INFO, T.TASK_COMPLETED,
]  # fmt: skip
AGENT_TYPES = {T.AGENT_INVOKED, T.AGENT_RESPONSE, T.MODEL_ROUTED}
LLM_TYPES = {T.LLM_REQUEST_SENT, T.LLM_RESPONSE_RECEIVED, T.MODEL_ROUTED}
NO_TASK = {T.PHASE_TRANSITION, T.SESSION_STARTED}
SESSIONS = 8
ROLES = ["planner", "coder", "reviewer", "tester", "fixer", "writer"]
MODELS = ["gpt-4o", "claude-sonnet", "gemini-pro", "llama-70b"]
PHASES = ["IDEA", "PLAN_REVIEW", "EXECUTION", "VERIFICATION", "COMPLETE"]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
NUDGE = timedelta(microseconds=50)  # between two events, 100 us apart
FIELD_GETTERS = [
    attrgetter(name)
    for name in ("timestamp", "event_type", "session_id", "phase", "task_id", "agent_role", "model")
]


def make_events(count: int) -> list[Event]:
    """``count`` events of 8 sessions, interleaved, in time order (100 us apart)."""
    events = []
    for i in range(count):
        session, j = i % SESSIONS, i // SESSIONS
        task, step = divmod(j, len(SCRIPT))
        event_type = SCRIPT[step]
        metadata: dict[str, Any] = {}
        if event_type in (T.LLM_REQUEST_SENT, T.LLM_RESPONSE_RECEIVED):
            prompt, completion = 500 + j % 300, 200 + j % 100
            metadata = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cost_usd": (prompt * 3 + completion * 15) / 1e6,
            }
        events.append(
            Event(
                event_type=event_type,
                session_id=f"session-{session}",
                message=f"{event_type.value} for task {task}",
                timestamp=T0 + timedelta(microseconds=100 * i),
                phase=PHASES[min(j * len(PHASES) * 2 // (count // SESSIONS + 1), 4)],
                task_id=None if event_type in NO_TASK else f"s{session}-task-{task}",
                agent_role=ROLES[task % len(ROLES)]
                if event_type in AGENT_TYPES | LLM_TYPES
                else None,
                model=MODELS[(task + session) % len(MODELS)] if event_type in LLM_TYPES else None,
                metadata=metadata,
                parent_id=None,
            )
        )
    return events


def as_seed_events(events: list[Event]) -> list[SeedEvent]:
    """The same events as the seed's dataclass, for its list comprehensions."""
    return [
        SeedEvent(
            event_type=e.event_type,
            timestamp=e.timestamp,
            session_id=e.session_id,
            message=e.message,
            phase=e.phase,
            task_id=e.task_id,
            agent_role=e.agent_role,
            model=e.model,
            metadata=e.metadata,
        )
        for e in events
    ]


def seed_usage(events: list[SeedEvent]) -> dict[str, float]:
    """Token totals summed from the responses' metadata, as a dashboard would."""
    totals = dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"), 0.0)
    for event in events:
        for key in totals:
            totals[key] += event.metadata.get(key, 0)
    return totals


def seed_usage_by_model(events: list[SeedEvent]) -> dict[str | None, dict[str, float]]:
    by_model: dict[str | None, list[SeedEvent]] = {}
    for event in seed_get_events(events, event_type=T.LLM_RESPONSE_RECEIVED):
        by_model.setdefault(event.model, []).append(event)
    return {model: seed_usage(members) for model, members in by_model.items()}


def size(result: object) -> str:
    """How many events (or groups, or responses) a query's result stands for."""
    if isinstance(result, int):
        return str(result)
    if isinstance(result, TokenUsage):
        return str(result.responses)
    if isinstance(result, Sized):
        return str(len(result))
    return "-"


def timed(
    call: Callable[[], object],
    *,
    budget: float = 0.3,
    least: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds of ``call`` over at least ``least`` runs or ``budget`` seconds."""
    runs: list[float] = []
    begin = time.perf_counter()
    while len(runs) < least or (time.perf_counter() - begin < budget and len(runs) < 10_000):
        start = clock()
        call()
        runs.append(clock() - start)
    return statistics.median(runs)


def show(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds * 1e6:8.2f} us"


def index_queries(
    index: EventIndex, events: list[Event], seeds: list[SeedEvent]
) -> list[tuple[str, str, Callable[[], object], Callable[[], object]]]:
    """(name, target, index query, seed equivalent) for the issue's queries and a few more."""
    middle = events[len(events) // 2]
    task = middle.task_id or "none"
    session = middle.session_id
    last_1pct = events[len(events) * 99 // 100].timestamp
    after = index.query(EventQuery(task_id=task), limit=20)[-1].id
    rare = T.TASK_FAILED
    response = T.LLM_RESPONSE_RECEIVED
    return [
        (
            "one task, page of 100",
            "< 10 us",
            lambda: index.query(EventQuery(task_id=task), limit=100),
            lambda: seed_get_events(seeds, task_id=task)[:100],
        ),
        (
            "one task, next page (after=id)",
            "",
            lambda: index.query(EventQuery(task_id=task), limit=100, after=after),
            lambda: seed_get_events(seeds, task_id=task)[20:120],
        ),
        (
            "latest 100 of one type",
            "< 10 us",
            lambda: index.get_latest(100, EventQuery(event_type=rare)),
            lambda: seed_get_events(seeds, event_type=rare)[-100:],
        ),
        (
            "type + session (get_events)",
            "< 2 ms",
            lambda: index.get_events(event_type=response, session_id=session),
            lambda: seed_get_events(seeds, event_type=response, session_id=session),
        ),
        (
            "time range: last 1%",
            "< 50 us",
            lambda: index.get_events(start_time=last_1pct),
            lambda: seed_get_events(seeds, start_time=last_1pct),
        ),
        (
            "latest 100 (get_latest)",
            "",
            lambda: index.get_latest(100),
            lambda: seeds[-100:],
        ),
        (
            "count of one type",
            "",
            lambda: index.count(response),
            lambda: len(seed_get_events(seeds, event_type=response)),
        ),
        (
            "usage by model (kept current)",
            "",
            lambda: index.usage_by("model"),
            lambda: seed_usage_by_model(seeds),
        ),
        (
            "usage of the last 1% of time",
            "",
            lambda: index.usage(EventQuery(start_time=last_1pct)),
            lambda: seed_usage(seed_get_events(seeds, event_type=response, start_time=last_1pct)),
        ),
    ]


def compare_queries(
    index: EventIndex, events: list[Event], seeds: list[SeedEvent], *, seed: bool
) -> None:
    print(f"  {'query':32} {'hits':>6} {'seed':>11} {'index':>11} {'x seed':>8}  target")
    for name, target, query, baseline in index_queries(index, events, seeds):
        hits = size(query())
        fast = timed(query)
        if seed:
            slow = timed(baseline, budget=0.5, least=3)
            ratio = f"{slow / fast:8.0f}"
            seed_time = show(slow)
        else:
            ratio, seed_time = "", ""
        print(f"  {name:32} {hits:>6} {seed_time:>11} {show(fast):>11} {ratio:>8}  {target}")


def indexing_cost(events: list[Event]) -> EventIndex:
    batch = 1024
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    gc.collect()
    index = EventIndex()
    start = time.perf_counter()
    for chunk in batches:
        index.add(chunk)
    add_cost = (time.perf_counter() - start) / len(events)

    written = EventIndex()
    gc.collect()

    async def feed(index: EventIndex) -> None:
        for chunk in batches:
            await index.write(chunk)

    start = time.perf_counter()
    anyio.run(feed, written)
    write_cost = (time.perf_counter() - start) / len(events)
    gc.collect()
    start = time.perf_counter()
    for chunk in batches:
        for getter in FIELD_GETTERS:
            list(map(getter, chunk))
    reading = (time.perf_counter() - start) / len(events)
    print(
        f"  add(), batches of {batch}:  {add_cost * 1e6:.2f} us/event  (target < 0.5 us)\n"
        f"  write() (the bus path):    {write_cost * 1e6:.2f} us/event\n"
        f"  of which reading the 7 fields indexed, a column each: {reading * 1e6:.2f} us/event"
    )
    del written
    gc.collect()
    one = EventIndex()
    sample = events[: min(len(events), 100_000)]
    start = time.perf_counter()
    for event in sample:
        one.add((event,))
    single = (time.perf_counter() - start) / len(sample)
    print(
        f"  add(), one event a call:   {single * 1e6:.2f} us/event"
        f"  ({single / add_cost:.1f}x a 1024-batch's per event; target <= 3x)"
    )
    late = EventIndex()
    for i in range(0, len(events) - 2000, batch):
        late.add(events[i : min(i + batch, len(events) - 2000)])
    tail = events[len(events) - 2000 :]
    late.add(tail[1000:])
    took = []
    for event in tail[:1000]:  # late: older than the newest held
        start = time.perf_counter()
        late.add((event,))
        took.append(time.perf_counter() - start)
    print(
        f"  a late event, inserted:    {statistics.mean(took) * 1e6:.2f} us/event, the worst "
        f"{max(took) * 1e6:,.0f} us (into {len(late):,} held; in order: {single * 1e6:.2f} us)"
    )
    took = []
    for event in events[17 :: max(1, len(events) // 300)][:300]:  # later than a random share
        fields = {**event.to_dict(), "timestamp": event.timestamp + NUDGE}
        del fields["id"]  # a new event
        older = Event(**fields)
        start = time.perf_counter()
        late.add((older,))
        took.append(time.perf_counter() - start)
    print(
        f"  a late event of any age:   {statistics.mean(took) * 1e6:.2f} us/event, the worst "
        f"{max(took) * 1e6:,.0f} us (a list insert per posting: grows with the newer entries)"
    )
    profile_add(batches[: max(1, len(batches) // 5)])
    return index


class TimedIndex(EventIndex):
    """An :class:`EventIndex` that times each ``write`` and keeps the batches it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self.batches: list[Sequence[Event]] = []

    async def write(self, events: Sequence[Event]) -> None:
        """Index ``events``, timed; keep the batch (after the timing) for a replay."""
        start = time.perf_counter()
        await super().write(events)
        self.seconds += time.perf_counter() - start
        self.batches.append(events)  # the bus's batches are not changed after a write


async def demo_session(tasks: int, run_commands: bool) -> TimedIndex:
    """Run ``eventbus demo``'s session with a :class:`TimedIndex` subscribed; return it."""
    index = TimedIndex()
    with tempfile.TemporaryDirectory() as directory:
        async with EventBus() as bus:
            bus.subscribe(index)
            coordinator = build_demo_coordinator(
                bus, Path(directory), tasks=tasks, run_commands=run_commands, max_concurrency=4
            )
            session = await coordinator.run(IDEA)
        assert session.phase.value == "COMPLETE", session.error
    return index


async def replayed(batches: list[Sequence[Event]], repeats: int) -> float:
    """Median seconds of writing ``batches`` into a fresh index, each ``write`` timed."""
    runs = []
    for _ in range(repeats):
        index = EventIndex()
        total = 0.0
        for batch in batches:
            start = time.perf_counter()
            await index.write(batch)
            total += time.perf_counter() - start
        runs.append(total)
    return statistics.median(runs)


def demo_cost(sessions: int, tasks: int = 50) -> None:
    """Target (2): keeping the index current in the demo session costs < 4 us per event.

    Each session's ``write`` calls are timed as the bus makes them (their
    total over the session's events); then that session's batches are
    written again into a fresh index (warm: its code and data in the cache).
    """
    for run_commands in (False, True):
        live: list[float] = []
        replay: list[float] = []
        sizes: list[int] = []
        for _ in range(sessions):
            index = anyio.run(demo_session, tasks, run_commands)
            events = sum(map(len, index.batches))
            live.append(index.seconds / events)
            replay.append(anyio.run(replayed, index.batches, 50) / events)
            sizes.extend(map(len, index.batches))
        what = "real commands" if run_commands else "no processes"
        print(
            f"  demo session ({tasks} tasks, {what}; {events} events in batches of "
            f"{statistics.median(sizes):.0f} (median), median of {sessions} sessions):\n"
            f"    write() timed live:      {statistics.median(live) * 1e6:5.2f} us/event"
            f"  (min {min(live) * 1e6:.2f}; target < 4 us)\n"
            f"    its batches replayed:    {statistics.median(replay) * 1e6:5.2f} us/event"
            f"  (warm, into a fresh index)"
        )


def profile_add(batches: list[list[Event]]) -> None:
    profiler = cProfile.Profile()
    index = EventIndex()
    profiler.enable()
    for chunk in batches:
        index.add(chunk)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    total = 0.0
    for (_, _, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        own = entry[2]
        total += own
        rows.append((own, function))
    rows.sort(reverse=True)
    print("  where add() spends its time (own time, cProfile):")
    for own, function in rows[:6]:
        print(f"    {own / total:6.1%}  {function}")


def bytes_per_event(build: Callable[[], EventIndex]) -> tuple[float, EventIndex]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = build()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / max(1, len(index)), index


def lookup_bytes(index: EventIndex, event_id: str) -> float:
    """Bytes per event of the id lookup that a first ``after=<id>`` builds."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index.query(EventQuery(), limit=1, after=event_id)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / len(index)


def event_size(events: list[Event]) -> float:
    """Bytes per Event decoded from JSON (its strings, datetime and metadata its own)."""
    data = encode_jsonl(events[:20_000])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = decode_events(data)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / len(held)


def write_workspace(root: Path, events: list[Event]) -> None:
    by_session: dict[str, list[Event]] = {}
    for event in events:
        by_session.setdefault(event.session_id, []).append(event)
    for session_id, members in by_session.items():
        path = root / session_id / "events.jsonl"
        path.parent.mkdir(parents=True)
        path.write_bytes(encode_jsonl(members))


# --- this tree against another, side by side ------------------------------------------

_SINGLES = 100_000  # events written one at a time (the live path)


def _indexing(events: list[Event], lines: list[bytes]) -> tuple[EventIndex, dict[str, float]]:
    """CPU seconds per event of add (1024s), write (the bus's 64s, lines included), write of one."""
    clock = time.process_time
    cost: dict[str, float] = {}
    batches = [events[i : i + 1024] for i in range(0, len(events), 1024)]
    gc.collect()
    added = EventIndex()
    start = clock()
    for chunk in batches:
        added.add(chunk)
    cost["add(), batches of 1024"] = (clock() - start) / len(events)
    bus_batches = [
        EventBatch(events[i : i + 64], lines[i : i + 64]) for i in range(0, len(events), 64)
    ]
    singles = [EventBatch(events[i : i + 1], lines[i : i + 1]) for i in range(_SINGLES)]

    async def feed(index: EventIndex, chunks: list[EventBatch]) -> float:
        start = clock()
        for chunk in chunks:
            await index.write(chunk)
        return clock() - start

    del added
    gc.collect()
    written = EventIndex()
    cost["write(), bus batches of 64"] = anyio.run(feed, written, bus_batches) / len(events)
    gc.collect()
    one = EventIndex()
    cost["write(), one event a call"] = anyio.run(feed, one, singles) / len(singles)
    del one
    gc.collect()
    return written, cost


def _child(count: int) -> None:
    """Measure this interpreter's ``sinks`` and print the figures as JSON (see :func:`compare`)."""
    events = make_events(count)
    lines = [encode_event(event) for event in events]
    index, cost = _indexing(events, lines)
    queries: dict[str, float] = {}
    first: dict[str, float] = {}
    for name, _, query, _ in index_queries(index, events, []):
        start = time.process_time()
        query()
        first[name] = time.process_time() - start
        queries[name] = timed(query, clock=time.process_time)
    print(json.dumps({"indexing": cost, "queries": queries, "first": first}))


def compare(reference: str, count: int, rounds: int) -> None:
    """Print this tree's figures against ``reference``'s (a checkout), medians of ``rounds``.

    The trees take turns going first, round by round.
    """
    here = Path(__file__).resolve().parent
    trees = {"before": Path(reference).resolve(), "after": here.parent}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    for round_ in range(rounds):
        order = list(trees.items())
        for name, tree in order if round_ % 2 == 0 else reversed(order):  # either goes first
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(here)])}
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--events", str(count)],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            runs[name].append(json.loads(out))
            print(f"  round {round_ + 1}/{rounds}: {name} ({tree}) measured", flush=True)

    def median(name: str, part: str, key: str) -> float:
        return statistics.median(run[part][key] for run in runs[name])

    print(f"\nindexing {count:,} events, CPU us/event (medians of {rounds} rounds)")
    print(f"  {'':32} {'before':>9} {'after':>9} {'after/before':>13}")
    for key in runs["after"][0]["indexing"]:
        before, after = median("before", "indexing", key), median("after", "indexing", key)
        print(f"  {key:32} {before * 1e6:9.2f} {after * 1e6:9.2f} {after / before:12.2f}x")
    print(f"\nqueries over {count:,} events, CPU time (warm: median of repeats; first call)")
    print(
        f"  {'query':32} {'before':>11} {'after':>11} {'ratio':>7}"
        f"   {'first: before':>13} {'after':>11} {'ratio':>7}"
    )
    for key in runs["after"][0]["queries"]:
        warm = median("before", "queries", key), median("after", "queries", key)
        cold = median("before", "first", key), median("after", "first", key)
        print(
            f"  {key:32} {show(warm[0]):>11} {show(warm[1]):>11} {warm[1] / warm[0]:6.2f}x"
            f"   {show(cold[0]):>13} {show(cold[1]):>11} {cold[1] / cold[0]:6.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--demo", action="store_true", help="only the demo session's cost")
    parser.add_argument("--sessions", type=int, default=5, help="demo sessions (default 5)")
    parser.add_argument("--compare", metavar="TREE", help="a checkout to compare this tree with")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.events)
        return
    if args.compare:
        compare(args.compare, args.events, args.rounds)
        return
    if args.demo:
        print("keeping the index current in the demo session")
        demo_cost(args.sessions)
        return
    count = args.events
    print(f"building {count:,} events ...")
    events = make_events(count)

    print("\n1. keeping the index current")
    index = indexing_cost(events)
    demo_cost(args.sessions)

    print(f"\n2. queries over {count:,} events, memory mode, against the seed's scans")
    compare_queries(index, events, as_seed_events(events), seed=True)

    print("\n3. memory")
    per_event = event_size(events)
    del index
    gc.collect()
    overhead, built = bytes_per_event(lambda: _built(events))
    lookup = lookup_bytes(built, events[len(events) // 2].id)
    del built
    gc.collect()
    print(f"  an Event held in memory:          {per_event:7.0f} bytes")
    print(f"  memory mode, allocated by the index: {overhead:4.0f} bytes/event (the events it")
    print("    keeps as given are the benchmark's too, so not counted: see bench_index_memory.py)")
    print(f"    + once after=<id> is used:      {lookup:7.0f} bytes/event (the id lookup)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_workspace(root, events)
        low_bytes, low = bytes_per_event(lambda: EventIndex.from_workspace(root, low_memory=True))
        print(f"  low-memory mode:                  {low_bytes:7.0f} bytes/event (target < 150)")
        low_lookup = lookup_bytes(low, events[len(events) // 2].id)
        print(f"    + once after=<id> is used:      {low_lookup:7.0f} bytes/event (the id lookup)")

        print("\n4. rebuilding from a workspace of JSONL logs")
        for low_memory in (False, True):
            start = time.perf_counter()
            rebuilt = EventIndex.from_workspace(root, low_memory=low_memory)
            took = time.perf_counter() - start
            mode = "low-memory" if low_memory else "memory"
            print(f"  {mode:10} {took:6.2f} s  ({took / len(rebuilt) * 1e6:.2f} us/event)")
            del rebuilt
            gc.collect()

        print("\n5. queries in low-memory mode (events read back from the logs)")
        compare_queries(low, events, [], seed=False)
        low.close()


def _built(events: list[Event]) -> EventIndex:
    index = EventIndex()
    for i in range(0, len(events), 1024):
        index.add(events[i : i + 1024])
    return index


if __name__ == "__main__":
    main()
