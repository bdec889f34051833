"""What the JetStream sink and source share: subjects, errors, the connection, the stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import quote, unquote

import nats
import nats.aio.client
import nats.errors
import nats.js
import sniffio
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from eventbus import EventBusError

_logger = logging.getLogger("eventbus.nats")

__all__ = [
    "DEFAULT_SERVERS",
    "AsyncioOnlyError",
    "JetStreamError",
    "NatsUnavailableError",
    "StreamConfigError",
    "check_prefix",
    "connect",
    "decode_token",
    "encode_token",
    "ensure_stream",
    "require_asyncio",
    "subject_for",
]

#: The server both classes connect to unless told otherwise.
DEFAULT_SERVERS = "nats://127.0.0.1:4222"

_SAFE = "-_~"  # with ASCII letters and digits: kept as they are in a subject token


class JetStreamError(EventBusError):
    """Base class of the errors of :mod:`sinks.nats`."""


class AsyncioOnlyError(JetStreamError):
    """Raised when a JetStream class is used on a backend other than asyncio (trio).

    nats-py, the client underneath, runs on asyncio only.
    """

    def __init__(self, what: str, backend: str) -> None:
        self.what = what
        self.backend = backend
        super().__init__(
            f"{what} cannot run on {backend}: nats-py runs on asyncio only; run this bus "
            "with anyio's asyncio backend (anyio.run(main, backend='asyncio'))"
        )


class NatsUnavailableError(JetStreamError):
    """Raised when no NATS server accepts a connection (see :meth:`JetStreamSink.connect`).

    ``reason`` says what the last attempt met (``Connection refused``, a name
    that does not resolve, no answer in time).
    """

    def __init__(self, servers: str | Sequence[str], reason: str) -> None:
        self.servers = servers
        self.reason = reason
        where = servers if isinstance(servers, str) else ", ".join(servers)
        super().__init__(
            f"cannot connect to NATS at {where}: {reason}; start nats-server with "
            "JetStream (nats-server -js) or pass the right URL"
        )


def describe_error(error: BaseException) -> str:
    """A short reason for a failed connection: ``Connection refused`` rather than a repr."""
    if isinstance(error, OSError):
        if error.errno is not None and error.errno > 0:
            return os.strerror(error.errno)
        if error.strerror:
            return error.strerror
    return str(error) or type(error).__name__


class StreamConfigError(JetStreamError):
    """Raised when the stream exists but cannot hold the events as this module needs."""

    def __init__(self, stream: str, problem: str) -> None:
        self.stream = stream
        self.problem = problem
        super().__init__(
            f"JetStream stream {stream!r} exists but {problem}; fix it with "
            f"'nats stream edit {stream}', or pass another stream name"
        )


def require_asyncio(what: str) -> None:
    """Raise :class:`AsyncioOnlyError` when called inside an async library other than asyncio."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library != "asyncio":
        raise AsyncioOnlyError(what, library)


def encode_token(text: str) -> str:
    """Return ``text`` as one valid NATS subject token, reversibly (see :func:`decode_token`).

    The UTF-8 bytes are percent-encoded, except ASCII letters, digits and
    ``-_~``: ``"run 1.a*"`` becomes ``"run%201%2Ea%2A"``. So ``.``, ``*``,
    ``>``, spaces and every non-ASCII character are encoded, and an id made
    of letters, digits, ``-`` and ``_`` reads as itself.
    """
    return quote(text, safe=_SAFE).replace(".", "%2E")


def decode_token(token: str) -> str:
    """Return the text that :func:`encode_token` turned into ``token``."""
    return unquote(token, errors="strict")


def subject_for(prefix: str, session_id: str, event_type: str) -> str:
    """Return the subject of an event: ``{prefix}.{session token}.{event type token}``."""
    return f"{prefix}.{encode_token(session_id)}.{encode_token(event_type)}"


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a literal subject (dot-separated tokens, no wildcard)."""
    tokens = prefix.split(".")
    if not prefix or any(
        not token or token in ("*", ">") or any(c.isspace() for c in token) for token in tokens
    ):
        raise ValueError(
            f"invalid subject prefix {prefix!r}: use dot-separated tokens without spaces "
            "or wildcards, e.g. 'events' or 'team.events'"
        )
    return prefix


def _covers(pattern: str, prefix: str) -> bool:
    """Whether a stream subject ``pattern`` takes every subject ``{prefix}.<...>``."""
    literal = prefix.split(".")
    for i, token in enumerate(pattern.split(".")):
        if token == ">":
            return True
        if i >= len(literal) or token not in ("*", literal[i]):
            return False
    return False


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    connect_timeout: float,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    give_up_after: float | None = None,
    fail_fast: bool = False,
) -> nats.aio.client.Client:
    """Connect to NATS, reconnecting for ever after a drop (callers bound their waits).

    :param give_up_after: seconds without a connection after which to raise
        :class:`NatsUnavailableError` with the last attempt's error (``None``: the
        caller bounds the wait).
    :param fail_fast: give up as soon as each server failed once (refused, say),
        instead of trying again until ``give_up_after``.
    :raises NatsUnavailableError: gave up, saying what the last attempt met.
    """
    kwargs: dict[str, object] = {}
    if on_disconnect is not None:
        kwargs["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        kwargs["reconnected_cb"] = on_reconnect

    server_list = [servers] if isinstance(servers, str) else list(servers)
    failures: list[BaseException] = []  # while connecting for the first time
    every_server_failed = asyncio.Event()
    connecting: asyncio.Task[nats.aio.client.Client] | None = None

    async def log_error(error: Exception) -> None:  # nats-py's default logs a traceback
        _logger.info("nats (%s): %r", name, error)
        if connecting is not None and not connecting.done():
            failures.append(error)
            if fail_fast and len(failures) >= len(server_list):
                every_server_failed.set()

    connecting = asyncio.ensure_future(
        _connect(server_list, name, connect_timeout, log_error, kwargs)
    )
    gave_up = asyncio.ensure_future(every_server_failed.wait())
    try:
        async with asyncio.timeout(give_up_after):
            await asyncio.wait({connecting, gave_up}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        reason = f"no connection within {give_up_after:g} s"
        if failures:
            reason += f" ({describe_error(failures[-1])})"
        raise NatsUnavailableError(servers, reason) from None
    finally:
        for task in (connecting, gave_up):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if not connecting.cancelled() and connecting.exception() is None:
        return connecting.result()
    error = connecting.exception() if not connecting.cancelled() else None
    last = error or (failures[-1] if failures else None)
    raise NatsUnavailableError(
        servers, describe_error(last) if last is not None else "no server answered"
    ) from error


async def _connect(
    server_list: list[str],
    name: str,
    connect_timeout: float,
    log_error: Callable[[Exception], Awaitable[None]],
    kwargs: dict[str, object],
) -> nats.aio.client.Client:
    return await nats.connect(
        server_list,
        name=name,
        connect_timeout=max(1, round(connect_timeout)),
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        error_cb=log_error,
        skip_subject_validation=True,
        **kwargs,
    )


async def close_quietly(nc: nats.aio.client.Client | None) -> None:
    """Close ``nc`` within 5 s if open; a server already gone is no error (nothing was lost)."""
    if nc is not None and not nc.is_closed:
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await nc.close()


async def ensure_stream(
    js: nats.js.JetStreamContext,
    stream: str,
    prefix: str,
    duplicate_window: float,
) -> None:
    """Create ``stream`` (``{prefix}.>``, file storage) or check that the existing one fits.

    :raises StreamConfigError: the stream exists but does not take ``{prefix}.>``,
        keeps messages in memory, or de-duplicates over less than ``duplicate_window``.
    """
    subject = f"{prefix}.>"
    config = StreamConfig(
        name=stream,
        subjects=[subject],
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
    )
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:  # created at the same moment by another process
            info = await js.stream_info(stream)
    existing = info.config
    if not any(_covers(pattern, prefix) for pattern in existing.subjects or ()):
        raise StreamConfigError(
            stream, f"does not take the subjects {subject!r} (it takes {existing.subjects})"
        )
    if StorageType(existing.storage or StorageType.FILE) is not StorageType.FILE:
        raise StreamConfigError(stream, "keeps messages in memory, not in files")
    if existing.duplicate_window < duplicate_window - 1e-6:
        raise StreamConfigError(
            stream,
            f"de-duplicates message ids over {existing.duplicate_window:g} s, less than "
            f"the {duplicate_window:g} s a retried batch may take",
        )
