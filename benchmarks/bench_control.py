"""Benchmark control across processes: command to ``control_applied``, and abort.

Run: ``python benchmarks/bench_control.py [--commands N] [--aborts K]``

1. ``eventbus demo --human`` runs in another process and waits for its
   question to be answered. This process (the CLI's side) appends N commands
   (pause, resume, pause, ...) with ``submit_command``, each after the
   previous one's ``control_applied`` reached the log, and times each from
   the call to the moment the outcome is read back from the log (polled
   every 0.5 ms): p50, p99 and max. The baseline is ``submit_command`` alone
   (one write and fsync, the part this process pays); the coordinator's
   inbox poll interval (20 ms) bounds the rest. Then a few ``eventbus
   control ... pause`` runs end to end (a new interpreter each, waiting for
   the outcome).
2. Abort, K times each: the demo runs a verification command that starts a
   ``sleep`` child, or a model call that takes 60 s (``--pace 60``). From
   ``submit_command(abort)`` to the command's process group gone (the child
   ``sleep`` reaped or a zombie) and to the demo's process exited.

Numbers are printed, never asserted (targets: command p99 under 200 ms,
abort under 2 s). Data goes to a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from eventbus.coordinator import Command, submit_command

CLI = [sys.executable, "-m", "eventbus"]
POLL = 0.0005


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo did not get there in time")
        time.sleep(POLL)


class LogTail:
    """The lines appended to a log since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        found = (self.partial + data).split(b"\n")
        self.partial = found.pop()
        return found

    def seen(self, *needles: bytes) -> Callable[[], bool]:
        def check() -> bool:
            return any(all(needle in line for needle in needles) for line in self.lines())

        return check


def demo(root: Path, session: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "demo", "--workspace", str(root), "--session-id", session, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            return file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:8.1f} ms"


def commands(root: Path, count: int) -> None:
    process = demo(root, "cmd", "--human", "--tasks", "1")
    tail = LogTail(root / "cmd" / "events.jsonl")
    try:
        wait_for(tail.seen(b"clarification_requested"))
        submits: list[float] = []
        applied: list[float] = []
        for i in range(count):
            command = Command(kind="pause" if i % 2 == 0 else "resume", command_id=f"c{i}")
            started = time.perf_counter()
            submit_command(root, "cmd", command)
            submits.append(time.perf_counter() - started)
            wait_for(tail.seen(b'"control_applied"', f'"c{i}"'.encode()))
            applied.append(time.perf_counter() - started)
        end_to_end = []
        for i in range(5):
            kind = "pause" if (count + i) % 2 == 0 else "resume"
            started = time.perf_counter()
            subprocess.run(
                [*CLI, "control", str(root), "cmd", kind], check=True, capture_output=True
            )
            end_to_end.append(time.perf_counter() - started)
    finally:
        process.kill()
        process.wait()
    base = statistics.median(submits)
    print(f"1. command -> control_applied in the log, {count} commands, across processes")
    print(f"   submit_command alone (write + fsync)   p50 {ms(base)}   (baseline)")
    for name, share in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        value = percentile(applied, share)
        print(f"   submit -> control_applied         {name} {ms(value)}   x{value / base:7.1f}")
    print(
        f"   'eventbus control DIR S pause' end to end (new interpreter, waits): "
        f"p50 {ms(statistics.median(end_to_end)).strip()}"
    )


CHILD = (
    "import subprocess, sys\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "child.wait()\n"
)


def aborts(root: Path, count: int) -> None:
    command_gone: list[float] = []
    command_exit: list[float] = []
    model_exit: list[float] = []
    for i in range(count):
        session = f"abort-cmd-{i}"
        marker = root / f"{session}.pid"
        verify = shlex.join([sys.executable, "-c", CHILD, str(marker)])
        process = demo(root, session, "--tasks", "1", "--verify-command", verify)
        wait_for(lambda marker=marker: marker.exists() and marker.read_text() != "")  # type: ignore[misc]
        child = int(marker.read_text())
        started = time.perf_counter()
        submit_command(root, session, Command(kind="abort", reason="benchmark"))
        wait_for(lambda child=child: gone(child))  # type: ignore[misc]
        command_gone.append(time.perf_counter() - started)
        process.wait(timeout=30)
        command_exit.append(time.perf_counter() - started)

        session = f"abort-model-{i}"
        process = demo(root, session, "--tasks", "1", "--pace", "60")
        wait_for(LogTail(root / session / "events.jsonl").seen(b"llm_request_sent"))
        started = time.perf_counter()
        submit_command(root, session, Command(kind="abort", reason="benchmark"))
        process.wait(timeout=30)
        model_exit.append(time.perf_counter() - started)
        if os.environ.get("BENCH_VERBOSE"):
            print(f"   run {i}: done")
    print(f"2. abort, {count} runs each (median / max)")
    for name, values in (
        ("running command: its process group gone", command_gone),
        ("running command: the demo process exited", command_exit),
        ("in-flight model call: the demo process exited", model_exit),
    ):
        print(f"   {name:<46} {ms(statistics.median(values))} / {ms(max(values))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--aborts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands(Path(tmp), args.commands)
        aborts(Path(tmp), args.aborts)


if __name__ == "__main__":
    main()
