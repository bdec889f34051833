"""What publishing events costs the SessionCoordinator: the demo session, three ways.

Run: ``python benchmarks/bench_coordinator.py [--tasks N] [--repeats R] [--backend B]
[--per-sink] [--no-commands]``

The same demo session (``eventbus demo``'s offline agents, default 50
tasks) is run, interleaved, with:

- ``real sinks``: the demo's sinks: ``JsonlSink`` (durability "flush"),
  ``ArtifactSink`` (fsync on) and a ``MemorySink`` index;
- ``bus, no sinks``: an ``EventBus`` with no subscriber (events are still
  built, stamped and encoded: ``publish`` validates every event);
- ``no publication``: a bus whose ``publish`` returns at once (events are
  still built and stamped by the instrumentation; nothing is encoded);
- with ``--per-sink``, also each real sink alone (``JsonlSink only``...).

and twice: with the demo's real commands (py_compile, unittest: what a
session really does) and without any process (``run_commands=False``:
coordination only, where the events' share is largest). "session" is until
``coordinator.run`` returns (what the coordinator waits for); "+ drain" also
counts leaving the bus, which waits for the sinks to write everything.
Per-event cost is the difference to ``no publication``, divided by the events
of a session. Each figure is the median of the repeats. Nothing is asserted;
the last line of each table is issue 14's target: the real sinks' per-event
cost over the bare bus's, at most 2 (with its spread over the repeats, each
repeat's modes having run back to back).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from eventbus import Event, EventBus, MemorySink
from eventbus.coordinator._demo_agents import IDEA, build_demo_coordinator
from sinks.artifacts import ArtifactSink
from sinks.jsonl import JsonlSink


class UnpublishedBus(EventBus):
    """A bus whose ``publish`` drops the event: the baseline without publication."""

    async def publish(self, event: Event) -> None:
        """Drop ``event``."""


def real_sinks(bus: EventBus, root: Path) -> None:
    bus.subscribe(JsonlSink(root))
    bus.subscribe(ArtifactSink(root))
    bus.subscribe(MemorySink("index"))


def no_sinks(bus: EventBus, root: Path) -> None:
    """Subscribe nothing."""


def jsonl_only(bus: EventBus, root: Path) -> None:
    bus.subscribe(JsonlSink(root))


def artifacts_only(bus: EventBus, root: Path) -> None:
    bus.subscribe(ArtifactSink(root))


def index_only(bus: EventBus, root: Path) -> None:
    bus.subscribe(MemorySink("index"))


Mode = tuple[str, type[EventBus], Callable[[EventBus, Path], None]]
MODES: list[Mode] = [
    ("real sinks", EventBus, real_sinks),
    ("bus, no sinks", EventBus, no_sinks),
    ("no publication", UnpublishedBus, no_sinks),
]
PER_SINK: list[Mode] = [
    ("JsonlSink only", EventBus, jsonl_only),
    ("ArtifactSink only", EventBus, artifacts_only),
    ("MemorySink only", EventBus, index_only),
]


async def one_session(
    bus_type: type[EventBus],
    subscribe: Callable[[EventBus, Path], None],
    tasks: int,
    run_commands: bool,
) -> tuple[float, float, int]:
    """Return (session seconds, seconds including the drain, events published)."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        started = time.perf_counter()
        async with bus_type() as bus:
            subscribe(bus, root)
            coordinator = build_demo_coordinator(
                bus, root, tasks=tasks, run_commands=run_commands, max_concurrency=4
            )
            session = await coordinator.run(IDEA)
            ran = time.perf_counter() - started
        drained = time.perf_counter() - started
        assert session.phase.value == "COMPLETE", session.error
        return ran, drained, len(session.logs)


async def measure(tasks: int, repeats: int, run_commands: bool, modes: list[Mode]) -> None:
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _, _ in modes}
    for _ in range(repeats):
        for name, bus_type, subscribe in modes:  # interleaved, so drift hits all modes alike
            results[name].append(await one_session(bus_type, subscribe, tasks, run_commands))
    what = "real commands" if run_commands else "no processes (coordination only)"
    events = results["real sinks"][0][2]
    print(f"\n{tasks}-task demo session, {what}: {events} events per session, median of {repeats}")
    print(
        f"{'mode':<18}{'session':>10}{'min..max':>20}{'+ drain':>10}"
        f"{'vs no-pub':>11}{'per event':>11}{'ratio':>7}"
    )
    base = statistics.median(run for run, _, _ in results["no publication"])
    for name, _, _ in modes:
        runs = [run for run, _, _ in results[name]]
        session = statistics.median(runs)
        drained = statistics.median(total for _, total, _ in results[name])
        extra = session - base
        print(
            f"{name:<18}{session * 1e3:>8.1f}ms{min(runs) * 1e3:>11.1f}..{max(runs) * 1e3:.1f}ms"
            f"{drained * 1e3:>8.1f}ms{extra * 1e3:>+9.1f}ms{extra / events * 1e6:>+9.1f}us"
            f"{session / base:>7.3f}"
        )
    print(target_line(results))


def target_line(results: dict[str, list[tuple[float, float, int]]]) -> str:
    """Issue 14's target: the real sinks' per-event cost over the bare bus's (<= 2)."""
    real, bare, base = (
        [run for run, _, _ in results[name]]
        for name in ("real sinks", "bus, no sinks", "no publication")
    )
    events = results["real sinks"][0][2]
    sinks = (statistics.median(real) - statistics.median(base)) / events
    bus = (statistics.median(bare) - statistics.median(base)) / events
    line = f"target <= 2: real sinks {sinks * 1e6:+.1f}us / bare bus {bus * 1e6:+.1f}us per event"
    if bus <= 0:
        return line + ": n/a (the bare bus's cost is below the noise)"
    paired = sorted((r - b) / (n - b) for r, n, b in zip(real, bare, base, strict=True) if n > b)
    spread = f" (each repeat: {paired[0]:.1f}..{paired[-1]:.1f})" if paired else ""
    return line + f" = {sinks / bus:.1f}{spread}"


async def run(tasks: int, repeats: int, per_sink: bool, commands: bool) -> None:
    modes = MODES + PER_SINK if per_sink else MODES
    await measure(tasks, repeats, False, modes)
    if commands:
        await measure(tasks, repeats, True, modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--per-sink", action="store_true", help="also each real sink alone")
    parser.add_argument(
        "--no-commands", action="store_true", help="only the session without processes"
    )
    args = parser.parse_args()
    anyio.run(
        run, args.tasks, args.repeats, args.per_sink, not args.no_commands, backend=args.backend
    )


if __name__ == "__main__":
    main()
