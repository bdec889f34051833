"""Listing sessions with summaries: the seed's ArtifactStore sketch vs ``sinks.artifacts``.

Creates a workspace of 1,000 sessions (``build_spec``, ``task_graph`` and
``run_summary`` each) in a temporary directory, then times, on the same files
in the same run:

- ``query_sessions_by_date()`` alone;
- ``query_sessions_by_date()`` plus ``get_session_summary()`` of every session
  (what a "list sessions with summaries" page does with the seed's API);
- ``query_session_summaries()``, the one-pass equivalent (ours only).

Each figure is the best of several runs (warm file cache). Run it with
``python benchmarks/bench_artifacts.py [SESSIONS]``.

With ``--sink``, it times :class:`ArtifactSink` writing the events of
``eventbus demo``'s 50-task session (no processes) into a new workspace, in
batches of 1, 16 and 85 events (85: about the batches the sink gets in
``bench_coordinator``), with and without fsync: the wall time and the CPU
time (every thread, the kernel's share included) of a ``write``, median of
the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from eventbus import Event, EventBus, MemorySink
from eventbus.coordinator._demo_agents import IDEA, build_demo_coordinator
from sinks.artifacts import ArtifactSink, ArtifactStore, RunSummary, SessionArtifactQuery

REPEATS = 9


# --- the seed's sketch (VF-130), copied as the baseline ----------------------------------


class SeedArtifactStore:
    """The seed's ArtifactStore, with json save/load (its "existing methods")."""

    def __init__(self, artifacts_path: str):
        self.artifacts_path = Path(artifacts_path)
        self.artifacts_path.mkdir(parents=True, exist_ok=True)

    def save_artifact(self, key: str, data: dict[str, Any] | list[Any]) -> None:
        with open(self.artifacts_path / f"{key}.json", "w") as f:
            json.dump(data, f, indent=2)

    def load_artifact(self, key: str) -> Any:
        path = self.artifacts_path / f"{key}.json"
        if not path.exists():
            return None
        with open(path) as f:
            return json.load(f)

    def list_artifacts(self) -> list[str]:
        return [f.stem for f in self.artifacts_path.glob("*.json")]

    def artifact_exists(self, key: str) -> bool:
        return (self.artifacts_path / f"{key}.json").exists()

    def get_artifact_metadata(self, key: str) -> dict[str, Any]:
        path = self.artifacts_path / f"{key}.json"
        if not path.exists():
            return {}
        stat = path.stat()
        return {
            "key": key,
            "size_bytes": stat.st_size,
            "modified_at": stat.st_mtime,
            "path": str(path),
        }


class SeedSessionArtifactQuery:
    """The seed's SessionArtifactQuery, as sketched."""

    def __init__(self, workspace_root: Path):
        self.workspace_root = workspace_root

    def list_sessions(self) -> list[str]:
        return [d.name for d in self.workspace_root.iterdir() if d.is_dir()]

    def query_sessions_by_date(
        self, start_date: float | None = None, end_date: float | None = None
    ) -> list[dict[str, Any]]:
        sessions = []
        for session_id in self.list_sessions():
            store = SeedArtifactStore(str(self.workspace_root / session_id / "artifacts"))
            metadata = store.get_artifact_metadata("build_spec")
            if not metadata:
                continue
            created_at = metadata["modified_at"]
            if start_date and created_at < start_date:
                continue
            if end_date and created_at > end_date:
                continue
            sessions.append(
                {
                    "session_id": session_id,
                    "created_at": created_at,
                    "artifacts": store.list_artifacts(),
                }
            )
        return sorted(sessions, key=lambda s: s["created_at"], reverse=True)

    def get_session_summary(self, session_id: str) -> dict[str, Any]:
        store = SeedArtifactStore(str(self.workspace_root / session_id / "artifacts"))
        summary: dict[str, Any] = {
            "session_id": session_id,
            "has_build_spec": store.artifact_exists("build_spec"),
            "has_concept": store.artifact_exists("concept"),
            "has_task_graph": store.artifact_exists("task_graph"),
            "has_run_summary": store.artifact_exists("run_summary"),
            "artifacts": store.list_artifacts(),
        }
        if summary["has_run_summary"]:
            run_summary = store.load_artifact("run_summary")
            if run_summary:
                summary["status"] = run_summary.get("status")
                summary["files_generated"] = len(run_summary.get("files_generated", []))
        return summary


# --- the workload ---------------------------------------------------------------------------


def populate(root: Path, sessions: int) -> None:
    """Write ``sessions`` sessions, each with a build_spec, a task_graph and a run_summary."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for index in range(sessions):
        session_id = f"session-{index:05d}"
        store = ArtifactStore(root / session_id / "artifacts", durable=False)
        store.save_artifact("build_spec", {"name": session_id, "stack": ["python"], "goals": 3})
        store.save_artifact(
            "task_graph",
            {"tasks": [{"id": f"t{i}", "deps": [f"t{i - 1}"] if i else []} for i in range(8)]},
        )
        began = start + timedelta(minutes=index)
        summary = RunSummary(
            session_id=session_id,
            status="completed",
            phase="COMPLETE",
            started_at=began.isoformat(),
            ended_at=(began + timedelta(seconds=90)).isoformat(),
            duration_s=90.0,
            event_count=120,
            tasks_completed=8,
            completed_task_ids=[f"t{i}" for i in range(8)],
            files_generated=[f"src/module_{i}.py" for i in range(12)],
            llm_calls=16,
            prompt_tokens=24_000,
            completion_tokens=8_000,
            total_tokens=32_000,
            cost_usd=0.42,
        )
        store.save_artifact("run_summary", summary)


def best_of(function: Callable[[], object]) -> float:
    """The fastest of ``REPEATS`` timed calls, in seconds."""
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def listing(sessions: int) -> None:
    """Build the workspace, time each approach, print seconds and ratios."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        populate(root, sessions)
        seed = SeedSessionArtifactQuery(root)
        ours = SessionArtifactQuery(root)

        def seed_with_summaries() -> None:
            for entry in seed.query_sessions_by_date():
                seed.get_session_summary(entry["session_id"])

        def ours_with_summaries() -> None:
            for entry in ours.query_sessions_by_date():
                ours.get_session_summary(entry["session_id"])

        assert len(ours.query_session_summaries()) == sessions
        assert len(seed.query_sessions_by_date()) == sessions

        rows = [
            ("query_sessions_by_date", best_of(seed.query_sessions_by_date),
             best_of(ours.query_sessions_by_date)),
            ("query + get_session_summary each", best_of(seed_with_summaries),
             best_of(ours_with_summaries)),
            ("query_session_summaries (one pass)", None, best_of(ours.query_session_summaries)),
        ]  # fmt: skip
        print(f"{sessions} sessions, best of {REPEATS} runs")
        print(f"{'operation':<36} {'seed (s)':>10} {'ours (s)':>10} {'seed/ours':>10}")
        seed_full = rows[1][1]
        for name, seed_time, our_time in rows:
            baseline = seed_time if seed_time is not None else seed_full
            label = "-" if seed_time is None else f"{seed_time:.4f}"
            ratio = f"{baseline / our_time:.2f}x" if baseline is not None else "-"
            print(f"{name:<36} {label:>10} {our_time:>10.4f} {ratio:>10}")
        print("(the one-pass ratio is against the seed's query + summary of each session)")


# --- the sink ---------------------------------------------------------------------------------


async def demo_events() -> list[Event]:
    """The events of the demo's 50-task session (no processes)."""
    recorder = MemorySink("recorder")
    with tempfile.TemporaryDirectory() as directory:
        async with EventBus() as bus:
            bus.subscribe(recorder)
            coordinator = build_demo_coordinator(
                bus, Path(directory), tasks=50, run_commands=False, max_concurrency=4
            )
            await coordinator.run(IDEA)
            await bus.flush()
    return list(recorder.events)


async def sink_writes(
    events: Sequence[Event], size: int, durable: bool
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each ``write`` of ``events``, ``size`` at a time, into a new root."""
    times = []
    with tempfile.TemporaryDirectory() as directory:
        sink = ArtifactSink(directory, durable=durable)
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            wall, cpu = time.perf_counter(), time.process_time()
            await sink.write(batch)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        await sink.aclose()
    return times


async def sink(repeats: int) -> None:
    """Time ``ArtifactSink.write`` on the demo session's events."""
    events = await demo_events()
    print(f"ArtifactSink.write, the demo session's {len(events)} events, median of {repeats} runs")
    print(f"{'batch':>6} {'fsync':>6} {'writes':>7} {'wall/write':>11} {'CPU/write':>10} "
          f"{'wall/event':>11} {'CPU/event':>10}")  # fmt: skip
    for durable in (True, False):
        for size in (1, 16, 85):
            runs = [await sink_writes(events, size, durable) for _ in range(repeats)]
            wall = statistics.median(sum(w for w, _ in run) for run in runs)
            cpu = statistics.median(sum(c for _, c in run) for run in runs)
            writes = len(runs[0])
            print(
                f"{size:>6} {'on' if durable else 'off':>6} {writes:>7}"
                f" {wall / writes * 1e6:>9.0f}us {cpu / writes * 1e6:>8.0f}us"
                f" {wall / len(events) * 1e6:>9.1f}us {cpu / len(events) * 1e6:>8.1f}us"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", type=int, nargs="?", default=1000)
    parser.add_argument("--sink", action="store_true", help="time ArtifactSink.write instead")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    if args.sink:
        anyio.run(sink, args.repeats)
    else:
        listing(args.sessions)


if __name__ == "__main__":
    main()
