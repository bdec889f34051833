"""The NATS JetStream bridge (extra ``nats``): several machines, one history.

:class:`JetStreamSink` publishes a bus's events to a JetStream stream;
:class:`JetStreamSource` consumes that stream into another process's bus
(``eventbus relay`` is such an aggregator). JetStream does the hard parts:
persistence, publish acknowledgements, de-duplication by message id, replay
from a sequence or a time, durable consumers.

**Subjects.** An event goes to ``{prefix}.{session}.{type}`` (``prefix``
defaults to ``events``). Session ids and event types may hold characters a
subject token cannot (``.``, ``*``, ``>``, spaces), so both tokens are
percent-encoded by :func:`encode_token`: UTF-8 bytes other than ASCII
letters, digits and ``-_~`` become ``%XX`` (``"run 1.a"`` ->
``"run%201%2Ea"``), and :func:`decode_token` reverses it. To follow one
session with the ``nats`` tool: ``nats sub "events.$(python -c 'from
sinks.nats import encode_token; print(encode_token("my session"))').>"``.

**Exactly once.** The sink sets ``Nats-Msg-Id`` to the event id, so a
retried publish is stored once (within the stream's duplicate window); the
source acks a message only after the local bus's lossless sinks flushed it,
and drops an event id it has seen (see :meth:`JetStreamSource.remember`).

**asyncio only.** nats-py runs on asyncio; on trio both classes raise
:class:`AsyncioOnlyError`. Run the bus with ``anyio.run(main,
backend="asyncio")``.

Errors::

    EventBusError
    └── JetStreamError
        ├── AsyncioOnlyError
        ├── ConsumerConfigError
        ├── NatsUnavailableError
        ├── PublishNotAcknowledgedError
        └── StreamConfigError
"""

from __future__ import annotations

try:
    import nats as _nats  # noqa: F401
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sinks.nats needs nats-py, which is not installed: pip install 'eventbus[nats]'"
    ) from _error

from ._nats_common import (
    DEFAULT_SERVERS,
    AsyncioOnlyError,
    JetStreamError,
    NatsUnavailableError,
    StreamConfigError,
    decode_token,
    encode_token,
    subject_for,
)
from ._nats_sink import JetStreamSink, PublishNotAcknowledgedError
from ._nats_source import ConsumerConfigError, JetStreamSource, SourceStats, Start

__all__ = [
    "DEFAULT_SERVERS",
    "AsyncioOnlyError",
    "ConsumerConfigError",
    "JetStreamError",
    "JetStreamSink",
    "JetStreamSource",
    "NatsUnavailableError",
    "PublishNotAcknowledgedError",
    "SourceStats",
    "Start",
    "StreamConfigError",
    "decode_token",
    "encode_token",
    "subject_for",
]
