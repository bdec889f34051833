"""Crash test: a writer killed with SIGKILL never loses an acknowledged event.

A child process (``_crash_writer.py``) publishes through ``JsonlSink`` in
``"flush"`` mode and prints each event id that ``bus.flush()`` acknowledged.
The parent kills it at a random moment, several times, each round appending
to the same log; then it checks the log.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from eventbus import Event, EventType
from sinks.jsonl import EventLog, RecoveryReport

pytestmark = pytest.mark.anyio

WRITER = Path(__file__).with_name("_crash_writer.py")
ROUNDS = 5
SESSION = "crash-session"


class Round:
    """What one killed writer acknowledged and reported."""

    def __init__(self) -> None:
        self.acks: list[str] = []
        self.recovered: list[tuple[int, int]] = []

    def take(self, line: bytes) -> None:
        kind, _, rest = line.decode().partition(" ")
        if kind == "ack":
            self.acks.append(rest)
        elif kind == "recovered":
            offset, size = rest.split()
            self.recovered.append((int(offset), int(size)))
        else:
            raise AssertionError(f"unexpected line from the writer: {line!r}")


async def run_writer_until_killed(root: Path, number: int, rng: random.Random) -> Round:
    """Start a writer; SIGKILL it after a random number of acks; collect every ack it printed."""
    result = Round()
    kill_after = rng.randint(1, 40)
    command = [sys.executable, os.fspath(WRITER), os.fspath(root), SESSION, str(number)]
    async with await anyio.open_process(
        [*command, str(rng.random())], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        try:
            while len(result.acks) < kill_after:
                result.take(await stdout.receive_until(b"\n", 1 << 20))
        except (anyio.IncompleteRead, anyio.EndOfStream):
            errors = b"".join([chunk async for chunk in process.stderr]).decode()
            pytest.fail(f"the writer exited before it was killed:\n{errors}")
        process.kill()
        rest = bytes(stdout.buffer) + b"".join([chunk async for chunk in process.stdout])
        for line in rest.split(b"\n")[:-1]:  # acks printed before the kill count too
            result.take(line)
        await process.wait()
    return result


def reader_report(log_path: Path) -> RecoveryReport:
    """What a reader sees skipped at the moment (an empty report when there is no log)."""
    return EventLog(log_path).recovery


def expected_cut(report: RecoveryReport) -> list[tuple[int, int]]:
    """The cut a new writer must report: the reader's ignored torn line, if any."""
    if report.torn_offset is None:
        return []
    return [(report.torn_offset, report.torn_bytes)]


async def test_acknowledged_events_survive_repeated_sigkill(tmp_path: Path) -> None:
    """Every acknowledged event is in the log once and in order; torn lines are cut and reported."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    log_path = tmp_path / SESSION / "events.jsonl"
    acknowledged: list[str] = []
    with anyio.fail_after(30):
        for number in range(ROUNDS):
            before = reader_report(log_path)
            assert before.corrupt_count == 0, (seed, before)
            killed = await run_writer_until_killed(tmp_path, number, rng)
            acknowledged += killed.acks
            assert killed.recovered == expected_cut(before), seed

    before = reader_report(log_path)
    with EventLog(log_path) as log:
        ids = [event.id for event in log.get_events()]
        log.append(Event(event_type=EventType.INFO, session_id=SESSION, message="after"))
        after = log.recovery
    assert (after.torn_offset, after.torn_bytes) == (before.torn_offset, before.torn_bytes), seed
    assert after.corrupt_count == 0, (seed, after)
    assert len(ids) == len(set(ids)), f"duplicated events (seed {seed})"
    position = {event_id: index for index, event_id in enumerate(ids)}
    missing = [event_id for event_id in acknowledged if event_id not in position]
    assert not missing, f"{len(missing)} acknowledged events lost (seed {seed})"
    order = [position[event_id] for event_id in acknowledged]
    assert order == sorted(order), f"acknowledged events out of order (seed {seed})"
    events = EventLog(log_path).get_events()
    assert [event.message for event in events[-1:]] == ["after"]
    assert len(events) == len(ids) + 1
    published = [(event.metadata["round"], event.metadata["index"]) for event in events[:-1]]
    assert published == sorted(published), f"events out of publish order (seed {seed})"
