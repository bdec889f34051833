"""examples/distributed/ and ``eventbus demo --nats``, against a real nats-server.

Two processes of ``examples/distributed/coordinator.py`` publish their
sessions to a private server at once, then ``eventbus relay --until-idle``
gathers them into one workspace; ``eventbus demo --nats`` publishes its
whole session to the stream.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from _nats_servers import PrivateServer, private_nats
from eventbus import Event, decode_event
from eventbus.cli import main
from sinks.jsonl import iter_log

__all__ = ["private_nats"]  # a fixture, imported for pytest

COORDINATOR = Path(__file__).resolve().parents[2] / "examples/distributed/coordinator.py"
#: A whole run of a process: far more than it takes, short enough to fail a hung one.
TIMEOUT = 60


def _log(path: Path) -> list[Event]:
    return [event for event, _, _ in iter_log(path)]


def _eventbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbus", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _coordinator(url: str, workspace: Path, session_id: str) -> subprocess.Popen[str]:
    """The example's coordinator, running one session in ``workspace``."""
    args = ["--nats", url, "--workspace", str(workspace), "--session-id", session_id]
    return subprocess.Popen(
        [sys.executable, str(COORDINATOR), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _stream(url: str, stream: str = "EVENTS") -> list[tuple[str, str, str]]:
    """(subject, Nats-Msg-Id, the event id in the data) of every message, in stream order."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        count = (await js.stream_info(stream)).state.messages
        messages = [await js.get_msg(stream, seq) for seq in range(1, count + 1)]
    finally:
        await nc.close()
    return [
        (
            msg.subject or "",
            (msg.headers or {}).get("Nats-Msg-Id", ""),
            decode_event(msg.data or b"").id,
        )
        for msg in messages
    ]


@pytest.mark.service
def test_two_coordinators_sessions_reach_the_aggregator_once_each_as_published(
    private_nats: PrivateServer, tmp_path: Path
) -> None:
    """The aggregator's log of each coordinator's session equals the coordinator's own log."""
    url, aggregate = private_nats.url, tmp_path / "aggregate"
    coordinators = {s: _coordinator(url, tmp_path / s, s) for s in ("machine-a", "machine-b")}
    try:
        for process in coordinators.values():  # both run at once
            out, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err
            assert "COMPLETE" in out
    finally:
        for process in coordinators.values():
            if process.poll() is None:
                process.kill()
                process.communicate()

    relay = _eventbus("relay", "--nats", url, "--workspace", str(aggregate), "--until-idle")
    assert relay.returncode == 0, relay.stderr

    assert sorted(path.name for path in aggregate.iterdir()) == ["machine-a", "machine-b"]
    published = {s: _log(tmp_path / s / s / "events.jsonl") for s in coordinators}
    gathered = {s: _log(aggregate / s / "events.jsonl") for s in coordinators}
    assert gathered == published
    assert min(len(events) for events in published.values()) > 20  # a whole session each
    ids = Counter(event.id for events in gathered.values() for event in events)
    assert [event_id for event_id, count in ids.items() if count > 1] == []
    assert len(asyncio.run(_stream(url))) == len(ids)


@pytest.mark.service
def test_demo_with_nats_publishes_every_event_of_the_session_to_the_stream(
    private_nats: PrivateServer, tmp_path: Path
) -> None:
    """Every event of the demo's log is in the stream, once, in order, under its session."""
    workspace = tmp_path / "ws"
    demo = _eventbus(
        "demo", "--nats", private_nats.url, "--workspace", str(workspace), "--tasks", "3",
        "--session-id", "demo-1",
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr

    logged = _log(workspace / "demo-1" / "events.jsonl")
    assert any(event.event_type.value == "task_retrying" for event in logged)  # a whole demo
    stored = asyncio.run(_stream(private_nats.url))
    assert stored == [
        (f"events.demo-1.{event.event_type.value}", event.id, event.id) for event in logged
    ]


def test_demo_nats_on_trio_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--nats`` with ``--backend trio`` is refused in one line, before anything is written."""
    workspace = tmp_path / "ws"
    args = ["demo", "--nats", "nats://127.0.0.1:1", "--backend", "trio", "--workspace"]
    assert main([*args, str(workspace)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "eventbus demo: --nats runs on asyncio only (nats-py): drop --backend trio"
    ]
    assert not workspace.exists()
