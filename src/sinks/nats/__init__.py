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

**Commands.** :class:`CommandForwarder` (run by ``eventbus relay``) publishes
each command appended to an inbox of the aggregator's workspace to
``control.{session}`` of the stream :data:`CONTROL_STREAM` (``Nats-Msg-Id`` =
the command id); :class:`CommandReceiver` (run by ``eventbus demo --nats``)
consumes its session's commands with a durable consumer into the local
inbox, where the coordinator applies each at most once. The outcomes come
back as events.

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

from ._common import (
    DEFAULT_SERVERS,
    AsyncioOnlyError,
    JetStreamError,
    NatsUnavailableError,
    StreamConfigError,
    decode_token,
    encode_token,
    subject_for,
)
from ._control import CONTROL_STREAM, CommandForwarder, CommandReceiver
from ._sink import JetStreamSink, PublishNotAcknowledgedError
from ._source import ConsumerConfigError, JetStreamSource, SourceStats, Start

__all__ = [
    "CONTROL_STREAM",
    "DEFAULT_SERVERS",
    "AsyncioOnlyError",
    "CommandForwarder",
    "CommandReceiver",
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

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
