"""Two coordinators, one aggregator, real crashes: no acknowledged event lost, none twice.

Producers (``_nats_producer.py``) publish through ``JetStreamSink`` and print
the ids each ``flush()`` acknowledged; the aggregator is ``eventbus relay``.
A producer is killed with SIGKILL mid-run, the server is restarted while the
other publishes, the aggregator is killed with SIGKILL and run again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
import pytest

from _nats_servers import PrivateServer, private_nats, stream_name
from sinks.jsonl import iter_log

__all__ = ["private_nats", "stream_name"]  # fixtures, imported for pytest

pytestmark = pytest.mark.service

PRODUCER = Path(__file__).with_name("_nats_producer.py")
BATCH = 20


@contextmanager
def _watchdog(process: subprocess.Popen[str], seconds: float) -> Iterator[None]:
    """Kill ``process`` if the block takes longer than ``seconds`` (a read would hang)."""
    timer = threading.Timer(seconds, process.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _read_acks(process: subprocess.Popen[str], lines: int | None) -> list[str]:
    """Read ``lines`` lines of acknowledged ids (None: until the process exits)."""
    assert process.stdout is not None
    ids: list[str] = []
    with _watchdog(process, 30):
        count = 0
        while lines is None or count < lines:
            line = process.stdout.readline()
            if not line:
                assert lines is None, f"producer exited early with {process.wait()}"
                break
            ids.extend(line.split())
            count += 1
    return ids


def _producer(url: str, stream: str, session_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PRODUCER), url, stream, session_id, str(BATCH)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _relay(url: str, stream: str, workspace: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "eventbus", "relay", "--nats", url),
            *("--workspace", str(workspace), "--stream", stream),
            *("--subject-prefix", stream.lower(), "--ack-wait", "1", *extra),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _command(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdin is not None
    process.stdin.write(text)
    process.stdin.flush()


async def _stream_messages(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def test_acknowledged_events_reach_the_aggregator_once_through_crashes_and_a_restart(
    private_nats: PrivateServer, stream_name: str, tmp_path: Path
) -> None:
    """Every id a producer's flush acknowledged is in the aggregator's logs, exactly once."""
    url, workspace = private_nats.url, tmp_path / "aggregator"
    relay = _relay(url, stream_name, workspace)
    a = _producer(url, stream_name, "coordinator-a")
    b = _producer(url, stream_name, "coordinator-b")
    processes = [relay, a, b]
    try:
        assert relay.stdout is not None
        with _watchdog(relay, 30):
            assert "eventbus relay:" in relay.stdout.readline()  # consuming

        # Both publish at once; A is killed mid-run, with a flush in flight.
        _command(a, "1000\n")
        _command(b, "400\n")
        acked = _read_acks(a, 5)
        a.send_signal(signal.SIGKILL)
        a.wait()
        acked += _read_acks(b, 10)

        # The server restarts while B publishes: B's writes fail, are retried, resume.
        private_nats.stop()
        private_nats.start()
        acked += _read_acks(b, 20)

        # The aggregator is killed mid-run, while B still publishes.
        assert relay.poll() is None, "the relay died during the server restart"
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        acked += _read_acks(b, 400 - 30)
        assert b.stdin is not None
        b.stdin.close()
        assert b.wait(timeout=30) == 0

        # The aggregator runs again, until it consumed everything.
        again = _relay(url, stream_name, workspace, "--until-idle")
        processes.append(again)
        with _watchdog(again, 30):
            output, _ = again.communicate()
        assert again.returncode == 0, output
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

    logged = Counter(
        event.id for path in workspace.glob("*/events.jsonl") for event, _, _ in iter_log(path)
    )
    assert [event_id for event_id, count in logged.items() if count > 1] == []
    assert set(acked) - set(logged) == set()
    assert asyncio.run(_stream_messages(url, stream_name)) == len(logged)
    assert len(acked) >= (5 + 400) * BATCH
