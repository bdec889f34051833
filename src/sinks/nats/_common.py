"""What the JetStream sink and source share: subjects, errors, the connection, the stream."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import quote, unquote

import nats
import nats.aio.client
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
) -> nats.aio.client.Client:
    """Connect to NATS, reconnecting for ever after a drop (callers bound their waits)."""
    kwargs: dict[str, object] = {}
    if on_disconnect is not None:
        kwargs["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        kwargs["reconnected_cb"] = on_reconnect

    async def log_error(error: Exception) -> None:  # nats-py's default logs a traceback
        _logger.info("nats (%s): %r", name, error)

    server_list = [servers] if isinstance(servers, str) else list(servers)
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
