"""CommandForwarder and CommandReceiver against a real nats-server: inbox to stream to inbox."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import nats
import pytest

from _nats_servers import machine_nats, machine_stream, stream_name
from _polling import poll_until
from eventbus.coordinator import Command, submit_command
from sinks.nats import CommandForwarder, CommandReceiver

__all__ = ["machine_nats", "machine_stream", "stream_name"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio only."""
    return "asyncio"


def _commands(root: Path, session_id: str) -> list[Command]:
    """The commands of a session's inbox, in order."""
    lines = (root / session_id / "control.jsonl").read_bytes().splitlines()
    return [msgspec.json.decode(line, type=Command) for line in lines]


def _session(root: Path, session_id: str) -> None:
    (root / session_id).mkdir(parents=True)
    (root / session_id / "events.jsonl").write_bytes(b"")


async def _stored(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


async def _forward(root: Path, url: str, stream: str, until: int) -> CommandForwarder:
    async with (
        CommandForwarder(root, url, stream=stream, subject_prefix=stream.lower()) as forwarder,
        anyio.create_task_group() as group,
    ):
        group.start_soon(forwarder.run)
        with anyio.fail_after(10):
            await poll_until(lambda: forwarder.forwarded + forwarder.skipped >= until)
        group.cancel_scope.cancel()
    return forwarder


async def _receive(root: Path, url: str, stream: str, session_id: str, until: int) -> int:
    async with (
        CommandReceiver(
            root, session_id, url, stream=stream, subject_prefix=stream.lower()
        ) as receiver,
        anyio.create_task_group() as group,
    ):
        group.start_soon(receiver.run)
        with anyio.fail_after(10):
            await poll_until(lambda: receiver.received >= until)
        group.cancel_scope.cancel()
    return receiver.received


async def test_each_command_reaches_its_sessions_remote_inbox_once(
    machine_stream: tuple[str, str], tmp_path: Path
) -> None:
    """Two sessions' inboxes forwarded; a repeated command id is stored once; each
    session's receiver appends its own commands, in order."""
    url, stream = machine_stream
    aggregator, producer = tmp_path / "aggregator", tmp_path / "producer"
    _session(aggregator, "s1")
    _session(aggregator, "s.2")
    pause = submit_command(aggregator, "s1", Command(kind="pause", command_id="c1"))
    submit_command(aggregator, "s1", pause)  # sent twice: stored once
    answer = submit_command(
        aggregator, "s.2", Command(kind="answer", target="q1", text="yes", command_id="c2")
    )
    with (aggregator / "s1" / "control.jsonl").open("ab") as inbox:
        inbox.write(b'{"kind": "pause"}\n')  # no command id: not forwarded
    forwarder = await _forward(aggregator, url, stream, until=4)
    assert (forwarder.forwarded, forwarder.skipped) == (3, 1)
    assert await _stored(url, stream) == 2
    assert await _receive(producer, url, stream, "s1", until=1) == 1
    assert await _receive(producer, url, stream, "s.2", until=1) == 1
    assert _commands(producer, "s1") == [pause]
    assert _commands(producer, "s.2") == [answer]


async def test_a_restarted_receiver_gets_what_was_sent_while_it_was_down(
    machine_stream: tuple[str, str], tmp_path: Path
) -> None:
    """Acked commands are not appended again; those published meanwhile are."""
    url, stream = machine_stream
    aggregator, producer = tmp_path / "aggregator", tmp_path / "producer"
    _session(aggregator, "s1")
    submit_command(aggregator, "s1", Command(kind="pause", command_id="c1"))
    await _forward(aggregator, url, stream, until=1)
    assert await _receive(producer, url, stream, "s1", until=1) == 1
    submit_command(aggregator, "s1", Command(kind="resume", command_id="c2"))
    await _forward(aggregator, url, stream, until=2)  # a new forwarder sends c1 again: deduped
    assert await _receive(producer, url, stream, "s1", until=1) == 1
    assert [command.command_id for command in _commands(producer, "s1")] == ["c1", "c2"]
