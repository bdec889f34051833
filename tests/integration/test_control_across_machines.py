"""Control across machines: commands given on the aggregator reach the producer's coordinator.

A producer (``eventbus demo --human --nats URL``) runs session ``h1`` in its
own workspace; the aggregator (``eventbus relay --serve``) consumes the
events into another. Commands are given with ``eventbus control`` on the
aggregator's workspace and through the API of ``relay --serve`` (POST
``/api/sessions/{id}/commands``): both write the aggregator's inbox; the
relay forwards them over JetStream and the outcomes come back as events.
Then the producer is killed (SIGKILL) while a command is pending, and run
again with ``--resume``: the command is applied then, once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import _polling as polling
from _nats_servers import PrivateServer, free_port, private_nats
from eventbus import Event, EventType
from sinks.jsonl import EventLog

__all__ = ["private_nats"]  # fixtures, imported for pytest

pytestmark = pytest.mark.service

CLI = [sys.executable, "-m", "eventbus"]
WAIT = 60.0  # seconds a step with subprocesses may take
SESSION = "h1"


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll what another process writes, for at most ``timeout`` seconds."""
    polling.wait_until(check, what, timeout)


def events(root: Path) -> list[Event]:
    log = root / SESSION / "events.jsonl"
    return EventLog(log).get_events() if log.exists() else []


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT, check=False)


def pending(root: Path) -> list[dict[str, Any]]:
    result = cli("control", str(root), SESSION, "pending", "--json")
    if result.returncode == 2:  # no log there yet
        return []
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def outcomes(root: Path) -> Counter[tuple[str, str]]:
    """(command id, outcome event type) of every outcome in the log."""
    return Counter(
        (str(event.metadata.get("command_id")), event.event_type.value)
        for event in events(root)
        if event.event_type in (EventType.CONTROL_APPLIED, EventType.CONTROL_REJECTED)
    )


@pytest.fixture
def machines(
    private_nats: PrivateServer, tmp_path: Path
) -> Iterator[tuple[str, Path, Path, list[subprocess.Popen[str]]]]:
    """(NATS URL, the producer's workspace, the aggregator's, the processes to stop)."""
    processes: list[subprocess.Popen[str]] = []
    producer, aggregator = tmp_path / "producer", tmp_path / "aggregator"
    try:
        yield private_nats.url, producer, aggregator, processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def start_producer(url: str, root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(*CLI, "demo", "--human", "--nats", url, "--workspace", str(root)),
            *("--session-id", SESSION, "--tasks", "2", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_relay(url: str, root: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(*CLI, "relay", "--nats", url, "--workspace", str(root), "--serve"),
            *("--port", str(port), "--ack-wait", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def post_command(port: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a command to the aggregator's API: (status, JSON answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/sessions/{SESSION}/commands",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return response.status, answer


def test_commands_on_the_aggregator_reach_the_producer_also_across_its_restart(
    machines: tuple[str, Path, Path, list[subprocess.Popen[str]]],
) -> None:
    """Answered and paused on the aggregator; a command given while the producer is down
    is applied once after its restart; the outcomes come back as events."""
    url, producer_root, aggregator_root, processes = machines
    port = free_port()
    processes.append(start_relay(url, aggregator_root, port))
    producer = start_producer(url, producer_root)
    processes.append(producer)

    # The planner's question, seen on the aggregator and answered through its API.
    wait_until(lambda: bool(pending(aggregator_root)), "the question on the aggregator")
    (question,) = pending(aggregator_root)
    assert (question["kind"], question["id"]) == ("clarification", "q1")
    wait_until(lambda: serving(port), "the aggregator's API")
    body = {"kind": "answer", "target": "q1", "text": "3.12", "command_id": "c1"}
    assert post_command(port, body) == (202, {"command_id": "c1", "status": "queued"})
    wait_until(lambda: outcomes(aggregator_root)[("c1", "control_applied")] == 1, "c1 applied")
    answer = next(
        e for e in events(aggregator_root) if e.event_type is EventType.CLARIFICATION_ANSWERED
    )
    assert (answer.metadata["answer"], answer.metadata["actor"]) == ("3.12", "api")
    unknown = cli("control", str(aggregator_root), SESSION, "approve", "r9", "--id", "c2")
    assert unknown.returncode == 2
    assert "no approval request 'r9' is waiting" in unknown.stderr
    wait_until(
        lambda: any(item["kind"] == "approval" for item in pending(aggregator_root)),
        "the plan's approval on the aggregator",
    )

    # The producer dies; a command given meanwhile waits in JetStream.
    producer.kill()
    producer.communicate(timeout=WAIT)
    queued = cli(
        "control", str(aggregator_root), SESSION, "pause", "--id", "c3", "--wait", "0", "--json"
    )
    assert queued.returncode == 0, queued.stderr
    assert not (producer_root / SESSION / "control.jsonl").read_text().count('"c3"')

    # Run again: the pending command is applied, once; its outcome reaches the aggregator.
    producer = start_producer(url, producer_root, "--resume")
    processes.append(producer)
    wait_until(lambda: outcomes(aggregator_root)[("c3", "control_applied")] == 1, "c3 applied")
    assert any(e.event_type is EventType.SESSION_PAUSED for e in events(aggregator_root))
    resumed = cli("control", str(aggregator_root), SESSION, "resume", "--id", "c4", "--json")
    assert json.loads(resumed.stdout)["status"] == "applied", resumed.stderr

    # The run again asks its question again: answered (a new command), then approved.
    wait_until(
        lambda: (
            outcomes(producer_root)[("c4", "control_applied")] == 1
            and any(item["id"] == "q1" for item in pending(aggregator_root))
        ),
        "the question asked again",
    )
    again = cli("control", str(aggregator_root), SESSION, "answer", "q1", "3.12", "--id", "c5")
    assert again.returncode == 0, again.stderr
    wait_until(
        lambda: any(item["kind"] == "approval" for item in pending(aggregator_root)),
        "the approval asked again",
    )
    approved = cli("control", str(aggregator_root), SESSION, "approve", "r1", "--id", "c6")
    assert approved.returncode == 0, approved.stderr
    out, err = producer.communicate(timeout=WAIT)
    assert producer.returncode == 0, err
    assert f"Session {SESSION}: COMPLETE" in out

    # Each command has one outcome, in both logs (the aggregator's comes from the stream).
    wait_until(lambda: outcomes(aggregator_root) == outcomes(producer_root), "the last events")
    assert outcomes(aggregator_root) == {
        ("c1", "control_applied"): 1,
        ("c2", "control_rejected"): 1,
        ("c3", "control_applied"): 1,
        ("c4", "control_applied"): 1,
        ("c5", "control_applied"): 1,
        ("c6", "control_applied"): 1,
    }
