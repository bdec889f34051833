"""``eventbus relay``: the aggregator, consuming a JetStream stream into a local workspace.

``eventbus relay --nats URL --workspace DIR [--durable NAME]`` consumes the
stream that coordinators publish to with :class:`sinks.nats.JetStreamSink`
into ``JsonlSink`` (``DIR/{session_id}/events.jsonl``), an ``EventIndex``
(rebuilt from those logs first) and ``ArtifactSink`` under ``DIR``. Each
batch is acked once those sinks flushed it; on start, the last events of
every log are remembered so that a batch written but not acked before a
crash is not written twice. It runs until interrupted, or with
``--until-idle`` until nothing is left to consume. ``--serve [--port P]``
serves the dashboard over the relay's workspace meanwhile (as ``eventbus
serve``, from a thread of its own: clients never slow the consumer).

Commands given on the aggregator (``eventbus control DIR SESSION ...``, the
dashboard, the API) land in the sessions' inboxes under DIR; the relay
forwards each to the machine running the session over JetStream
(:class:`sinks.nats.CommandForwarder`, stream ``EVENTBUS_CONTROL``), whose
``eventbus demo --nats`` appends it to its own inbox; the outcome comes back
as events in the session's log.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import anyio

from .._bus import EventBus
from ._common import CommandError, Subparsers, import_extra, port, seconds
from ._serve import bind, check_token, dashboard

__all__ = ["add_parser", "relay", "run"]

_COMMAND = "eventbus relay"
_REMEMBER = 100_000  # event ids kept to drop redeliveries (the newest of the logs' on start)


def add_parser(subparsers: Subparsers) -> None:
    """Add ``eventbus relay`` to ``subparsers``."""
    relay_parser = subparsers.add_parser(
        "relay",
        help="consume a NATS JetStream stream of events into a workspace (the aggregator)",
        description=(
            "Consume the events that coordinators publish to NATS JetStream (JetStreamSink) "
            "into DIR/{session_id}/events.jsonl, an index and the artifact store, acking each "
            "batch once it is written; forward the commands given on DIR (eventbus control, the "
            "API) to the machines running the sessions (stream EVENTBUS_CONTROL). Needs the nats "
            "extra: pip install 'eventbus[nats]'."
        ),
    )
    relay_parser.add_argument(
        "--nats", required=True, metavar="URL", help="the NATS server, e.g. nats://127.0.0.1:4222"
    )
    relay_parser.add_argument(
        "--workspace", required=True, type=Path, metavar="DIR", help="the workspace root"
    )
    relay_parser.add_argument(
        "--durable",
        default="aggregator",
        metavar="NAME",
        help="the durable consumer, whose position the server keeps (default: aggregator)",
    )
    relay_parser.add_argument("--stream", default="EVENTS", help="the stream (default: EVENTS)")
    relay_parser.add_argument(
        "--subject-prefix", default="events", help="the subjects' prefix (default: events)"
    )
    relay_parser.add_argument(
        "--ack-wait",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="when the server redelivers a batch that was not acked (default: 30)",
    )
    relay_parser.add_argument(
        "--until-idle",
        action="store_true",
        help="stop once every message of the stream is consumed, instead of waiting for more",
    )
    relay_parser.add_argument(
        "--serve",
        action="store_true",
        help="also serve the dashboard and the API over this bus (needs the web extra)",
    )
    relay_parser.add_argument(
        "--host", default="127.0.0.1", help="with --serve: the address (default: 127.0.0.1)"
    )
    relay_parser.add_argument(
        "--port", type=port, default=8000, help="with --serve: the port (default: 8000)"
    )
    relay_parser.add_argument(
        "--token", default=None, help="with --serve: the token the API requires (see serve)"
    )
    relay_parser.set_defaults(
        run=run, interrupted="the batch being written was not acked; the next run takes it again"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``eventbus relay``; return 0 when it stops (``--until-idle``)."""
    import_extra("nats", extra="nats", command=_COMMAND)
    if args.serve:
        import_extra("uvicorn", extra="web", command=f"{_COMMAND} --serve")
        check_token(args.host, args.token)
        args.socket = bind(args.host, args.port)  # a port in use: refused before consuming
    root: Path = args.workspace
    if root.exists() and not root.is_dir():
        raise CommandError(f"workspace {root} is not a directory: pass --workspace a directory")
    root.mkdir(parents=True, exist_ok=True)
    status: int = anyio.run(relay, args, sys.stdout, backend="asyncio")
    return status


def _recent_ids(root: Path, per_log: int, limit: int = _REMEMBER) -> list[str]:
    """The ids of the last ``per_log`` events of every log under ``root``: the newest
    ``limit`` of them, oldest first.

    Event ids sort by creation time, so these are the ones most recently
    written: those that may have been written but not acked before a crash.
    """
    from sinks.jsonl import LOG_FILE_NAME, EventLog

    ids: list[str] = []
    for path in root.glob(f"*/{LOG_FILE_NAME}"):
        ids.extend(event.id for event in EventLog(path).get_latest(per_log))
        if len(ids) > 2 * limit:  # bounded, however many logs there are
            ids.sort()
            del ids[:-limit]
    ids.sort()
    return ids[-limit:]


async def relay(args: argparse.Namespace, out: TextIO) -> int:
    """Consume the stream into the workspace until interrupted (or idle with ``--until-idle``)."""
    from sinks.artifacts import ArtifactSink
    from sinks.index import EventIndex
    from sinks.jsonl import JsonlSink
    from sinks.nats import CommandForwarder, JetStreamSource

    root: Path = args.workspace
    index = EventIndex.from_workspace(root)
    source = JetStreamSource(
        args.nats,
        stream=args.stream,
        durable=args.durable,
        subject_prefix=args.subject_prefix,
        ack_wait=args.ack_wait,
        remember=_REMEMBER,
    )
    # A consumer made by the source delivers at most 4 x batch messages unacked.
    source.remember(_recent_ids(root, 4 * source.batch, _REMEMBER))
    async with EventBus() as bus, source, AsyncExitStack() as stack:
        bus.subscribe(JsonlSink(root))
        bus.subscribe(index)
        bus.subscribe(ArtifactSink(root))
        if args.serve:
            await stack.enter_async_context(
                dashboard(
                    root,
                    host=args.host,
                    port=args.port,
                    sock=getattr(args, "socket", None),
                    token=args.token,
                    out=out,
                )
            )
        print(
            f"{_COMMAND}: stream {args.stream} at {args.nats} -> {root} "
            f"(durable consumer {args.durable!r}, {len(index)} events already there)",
            file=out,
            flush=True,
        )
        forwarder = await stack.enter_async_context(CommandForwarder(root, args.nats))
        async with anyio.create_task_group() as group:  # commands out, events in
            group.start_soon(forwarder.run)
            await source.run(bus, until_idle=args.until_idle)
            group.cancel_scope.cancel()
    stats = source.stats()
    print(
        f"{_COMMAND}: {stats.published} events written, {stats.duplicates} duplicates dropped, "
        f"{stats.invalid} invalid messages, {forwarder.forwarded} commands forwarded",
        file=out,
        flush=True,
    )
    return 0
