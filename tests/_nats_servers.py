"""Real nats-servers for the JetStream tests: the machine's, and private ones a test can restart.

A missing server skips the test with the reason, except when
``EVENTBUS_REQUIRE_NATS=1`` (``.ci/run`` sets it): then it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MACHINE_URL = "nats://127.0.0.1:4222"


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when EVENTBUS_REQUIRE_NATS=1."""
    if os.environ.get("EVENTBUS_REQUIRE_NATS") == "1":
        pytest.fail(f"{reason} (EVENTBUS_REQUIRE_NATS=1 requires it)")
    pytest.skip(reason)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateServer:
    """A nats-server with JetStream on a free port and its own store, stoppable and restartable."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        """Start the server and return once it accepts clients."""
        binary = shutil.which("nats-server")
        assert binary is not None
        process = subprocess.Popen(
            [binary, "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.process = process
        watchdog = threading.Timer(10, process.kill)  # a server that never gets ready
        watchdog.start()
        try:
            assert process.stderr is not None
            for line in process.stderr:
                if "Server is ready" in line:
                    break
            else:
                raise RuntimeError(f"nats-server exited with {process.wait()} before it was ready")
        finally:
            watchdog.cancel()
        self._drain = threading.Thread(target=process.stderr.read, daemon=True)
        self._drain.start()  # keeps the pipe from filling up

    def stop(self) -> None:
        """Stop the server (SIGTERM: JetStream closes its store) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        if self._drain is not None:
            self._drain.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


@pytest.fixture
def machine_nats() -> str:
    """The URL of the machine's nats-server (127.0.0.1:4222)."""
    if not _listening(4222):
        unavailable("no nats-server on 127.0.0.1:4222 (start one with: nats-server -js)")
    return MACHINE_URL


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateServer]:
    """A private nats-server that the test may stop and restart."""
    if shutil.which("nats-server") is None:
        unavailable("nats-server is not installed (apt-get install nats-server)")
    server = PrivateServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream_name() -> str:
    """A stream name (and subject prefix) no other test uses."""
    return f"T{uuid.uuid4().hex[:12].upper()}"


async def _delete_stream(url: str, stream: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def machine_stream(machine_nats: str, stream_name: str) -> Iterator[tuple[str, str]]:
    """(URL, stream name) on the machine's server; the stream is deleted afterwards.

    Use the lower-cased stream name as the subject prefix, so tests never share subjects.
    """
    yield machine_nats, stream_name
    import asyncio

    asyncio.run(_delete_stream(machine_nats, stream_name))
