"""Commands across machines: the aggregator's inboxes to JetStream, JetStream to a producer's inbox.

A command given on the aggregator (``eventbus control`` on its workspace,
the API of ``eventbus relay --serve``) is appended to the session's inbox
there, ``{root}/{session_id}/control.jsonl``. :class:`CommandForwarder`
(run by ``eventbus relay``) publishes each new line of every inbox of its
workspace to ``{prefix}.{session token}`` of the stream ``EVENTBUS_CONTROL``,
with ``Nats-Msg-Id`` set to the command id, so the stream stores a repeated
command once. :class:`CommandReceiver` (run by ``eventbus demo --nats``)
consumes its session's subject with a durable consumer and appends each
command to the local inbox, acking once the line is fsynced: a command
published while the producer is down waits in the stream, and one appended
twice (a crash between the append and the ack) is applied once, since the
coordinator applies each command id at most once. Its outcome comes back as
events (``control_applied``, ``control_rejected``) through the events stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self

import msgspec
import nats.aio.client
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventbus import validate_session_id

from .._layout import CONTROL_FILE_NAME
from ._common import (
    DEFAULT_SERVERS,
    JetStreamError,
    check_prefix,
    close_quietly,
    connect,
    encode_token,
    ensure_stream,
    require_asyncio,
)

__all__ = ["CONTROL_STREAM", "CommandForwarder", "CommandReceiver"]

_logger = logging.getLogger("eventbus.nats")

CONTROL_STREAM: Final = "EVENTBUS_CONTROL"
"""The stream that carries commands to the machines that run the sessions."""
_PREFIX: Final = "control"
_INACTIVE: Final = 24 * 3600.0  # seconds a session's consumer lives unused
_MAX_LINE: Final = 64 * 1024  # as eventbus.coordinator.MAX_COMMAND_BYTES

_fields = msgspec.json.Decoder(dict[str, Any])


def command_id_of(line: bytes) -> str | None:
    """The ``command_id`` of an inbox line, or None when it has none (not forwarded)."""
    try:
        fields = _fields.decode(line)
    except msgspec.DecodeError:
        return None
    command_id = fields.get("command_id")
    if isinstance(command_id, str) and command_id and command_id.isprintable():
        return command_id
    return None


async def _connected(servers: str | Sequence[str], name: str) -> nats.aio.client.Client:
    try:
        return await connect(servers, name=name, connect_timeout=5, give_up_after=10)
    except JetStreamError:
        raise
    except Exception as exc:  # pragma: no cover - connect raises NatsUnavailableError
        raise JetStreamError(f"cannot connect to NATS at {servers} ({exc!r})") from exc


class _Inbox:
    """The complete lines appended to one inbox since the last read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[bytes]:
        try:
            if os.stat(self.path).st_size <= self.offset:  # the usual case: one stat
                return []
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [line for line in lines if line.strip()]


class CommandForwarder:
    """Publishes the commands appended to a workspace's inboxes to JetStream (extra ``nats``).

    ::

        async with CommandForwarder("workspaces", servers) as forwarder:
            await forwarder.run()

    Every ``poll`` seconds each ``{root}/{session}/control.jsonl`` is read
    from where the last read ended; each new line with a ``command_id`` is
    published to ``{subject_prefix}.{session token}`` with ``Nats-Msg-Id`` =
    the command id, and the next line waits for its PubAck (a server
    restarting delays commands, it loses none). On start every inbox is
    read from its beginning: the stream drops the repeats within its
    duplicate window, the coordinator those after it (a command is applied
    at most once per id). A line without a command id is skipped and logged.

    :param root: the workspace whose inboxes are forwarded.
    :param servers: the NATS server URL(s).
    :param stream: the stream (created if missing, subjects ``{subject_prefix}.>``).
    :param subject_prefix: the subjects' first token(s).
    :param poll: seconds between two looks at the inboxes.
    :param duplicate_window: seconds over which the stream drops a repeated command id.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        servers: str | Sequence[str] = DEFAULT_SERVERS,
        *,
        stream: str = CONTROL_STREAM,
        subject_prefix: str = _PREFIX,
        poll: float = 0.05,
        duplicate_window: float = 3600.0,
    ) -> None:
        require_asyncio(type(self).__name__)
        self.root = os.fspath(root)
        self.servers = servers
        self.stream = stream
        self.subject_prefix = check_prefix(subject_prefix)
        self.poll = poll
        self.duplicate_window = duplicate_window
        self.forwarded = 0
        self.skipped = 0
        self._inboxes: dict[str, _Inbox] = {}
        self._nc: nats.aio.client.Client | None = None

    async def __aenter__(self) -> Self:
        require_asyncio(type(self).__name__)
        self._nc = await _connected(self.servers, "eventbus control forwarder")
        try:
            await ensure_stream(
                self._nc.jetstream(), self.stream, self.subject_prefix, self.duplicate_window
            )
        except BaseException:
            await self._nc.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nc, self._nc = self._nc, None
        await close_quietly(nc)

    def _new_lines(self) -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return found
        for session_id in names:
            path = os.path.join(self.root, session_id, CONTROL_FILE_NAME)
            inbox = self._inboxes.get(session_id)
            if inbox is None:
                if not os.path.isfile(path):
                    continue
                inbox = self._inboxes[session_id] = _Inbox(path)
            found.extend((session_id, line) for line in inbox.read())
        return found

    async def run(self) -> None:
        """Forward the inboxes' commands until cancelled."""
        if self._nc is None:
            raise JetStreamError("use the forwarder as 'async with CommandForwarder(...)'")
        js = self._nc.jetstream()
        while True:
            for session_id, line in await asyncio.to_thread(self._new_lines):
                command_id = command_id_of(line)
                if command_id is None or len(line) > _MAX_LINE:
                    self.skipped += 1
                    _logger.warning(
                        "not forwarding a line of %s/%s without a command id",
                        session_id,
                        CONTROL_FILE_NAME,
                    )
                    continue
                subject = f"{self.subject_prefix}.{encode_token(session_id)}"
                while True:  # until stored: a command is never dropped on the way
                    try:
                        await js.publish(
                            subject, line, stream=self.stream, headers={"Nats-Msg-Id": command_id}
                        )
                        break
                    except (nats.errors.Error, OSError, TimeoutError) as exc:
                        _logger.info("forwarding command %s failed, retrying: %r", command_id, exc)
                        await asyncio.sleep(0.5)
                self.forwarded += 1
            await asyncio.sleep(self.poll)


class CommandReceiver:
    """Appends the commands published for one session to its local inbox (extra ``nats``).

    ::

        async with CommandReceiver("workspaces", session_id, servers) as receiver:
            await receiver.run()

    A durable consumer (``durable``, by default one per session) of
    ``{subject_prefix}.{session token}``: a restarted receiver gets what it
    had not acked, including the commands published while it was down.
    Each command's line is appended to ``{root}/{session_id}/control.jsonl``
    (created if missing) and fsynced, then acked.

    :param root: the local workspace (the coordinator's ``control`` root).
    :param session_id: the session whose commands are received.
    :param servers: the NATS server URL(s).
    :param stream: the stream (created if missing).
    :param subject_prefix: the subjects' first token(s), as the forwarder's.
    :param durable: the durable consumer's name (default: from the session id).
    :param fetch_timeout: seconds one fetch waits for commands.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        session_id: str,
        servers: str | Sequence[str] = DEFAULT_SERVERS,
        *,
        stream: str = CONTROL_STREAM,
        subject_prefix: str = _PREFIX,
        durable: str | None = None,
        fetch_timeout: float = 1.0,
        duplicate_window: float = 3600.0,
    ) -> None:
        require_asyncio(type(self).__name__)
        self.root = os.fspath(root)
        self.session_id = validate_session_id(session_id)
        self.servers = servers
        self.stream = stream
        self.subject_prefix = check_prefix(subject_prefix)
        token = encode_token(session_id)
        self.subject = f"{self.subject_prefix}.{token}"
        self.durable = durable or "session-" + token.replace("%", "_")
        self.fetch_timeout = fetch_timeout
        self.duplicate_window = duplicate_window
        self.received = 0
        self._nc: nats.aio.client.Client | None = None
        self._sub: Any = None

    async def __aenter__(self) -> Self:
        require_asyncio(type(self).__name__)
        self._nc = await _connected(self.servers, "eventbus control receiver")
        try:
            js = self._nc.jetstream()
            await ensure_stream(js, self.stream, self.subject_prefix, self.duplicate_window)
            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
                deliver_policy=DeliverPolicy.ALL,
                # A day unused, the server drops it; a new one takes every command again
                # (the coordinator applies each once), so nothing depends on it but speed.
                inactive_threshold=_INACTIVE,
            )
            self._sub = await js.pull_subscribe(
                self.subject, durable=self.durable, stream=self.stream, config=config
            )
        except BaseException:
            await self._nc.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nc, self._nc = self._nc, None
        await close_quietly(nc)

    def _append(self, lines: list[bytes]) -> None:
        directory = os.path.join(self.root, self.session_id)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONTROL_FILE_NAME)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o644)
        try:
            data = b"".join(line.rstrip(b"\n") + b"\n" for line in lines)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    async def run(self) -> None:
        """Append the session's commands to its inbox until cancelled."""
        if self._nc is None:
            raise JetStreamError("use the receiver as 'async with CommandReceiver(...)'")
        while True:
            try:
                messages = await self._sub.fetch(16, timeout=self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.Error, OSError) as exc:  # the server away or restarting
                _logger.info("fetching commands failed, retrying: %r", exc)
                await asyncio.sleep(0.2)
                continue
            lines = [msg.data for msg in messages if msg.data]
            if lines:
                await asyncio.to_thread(self._append, lines)
            self.received += len(lines)
            try:
                for msg in messages:
                    await msg.ack()
                await self._nc.flush(timeout=5)
            except (
                nats.errors.Error,
                OSError,
                TimeoutError,
            ) as exc:  # delivered again, applied once
                _logger.info("acks of commands may be lost (%r)", exc)
