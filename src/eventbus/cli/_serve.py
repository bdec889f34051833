"""``eventbus serve [DIR]``: the HTTP/SSE API and the dashboard over a workspace, with uvicorn.

Binds 127.0.0.1 by default; any other address needs a token (``--token`` or
``EVENTBUS_TOKEN``), which every ``/api`` request must then carry.
``--read-only`` refuses commands (the control routes' POST answers 403). The port
is bound before anything is printed: a port in use is one line on stderr
(exit status 2), and the URL printed is always this server's. ``demo
--serve`` and ``relay --serve`` use :func:`dashboard`, which serves from a
thread of its own, so that clients never slow the coordinator's event loop.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import anyio
import anyio.to_thread

from sinks.workspace import Workspace

from ._common import CommandError, Subparsers, import_extra, port, positive

logger = logging.getLogger("eventbus.cli")

__all__ = ["add_parser", "bind", "check_token", "dashboard", "url_for"]

TOKEN_VARIABLE = "EVENTBUS_TOKEN"
#: The longest :func:`dashboard` waits for its server's thread to stop.
_STOP_SECONDS = 5.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_token(host: str, token: str | None) -> str | None:
    """The token to require: ``token``, else ``$EVENTBUS_TOKEN``, else none.

    :raises CommandError: ``host`` is not a loopback address and there is no token.
    """
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    if token is None and not _is_loopback(host):
        raise CommandError(
            f"serving on {host} would open the API to the network without a token: "
            f"pass --token TOKEN or set {TOKEN_VARIABLE} (or bind 127.0.0.1)"
        )
    return token


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds one), for the server to listen on.

    :raises CommandError: the port is in use, or the address cannot be bound.
    """
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it a response written in two parts waits ~40 ms (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise CommandError(
                f"port {port} on {host} is in use: pass --port with a free port (0: any)"
            ) from None
        raise CommandError(
            f"cannot listen on {host} port {port}: {error.strerror or error}"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int, token: str | None) -> str:
    """The dashboard's URL (with ``?token=`` when there is one)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if shown in ("0.0.0.0", "[::]"):
        shown = "127.0.0.1"
    query = f"?token={quote(token, safe='')}" if token else ""
    return f"http://{shown}:{port}/{query}"


def add_parser(subparsers: Subparsers) -> None:
    """Add ``eventbus serve``."""
    serve = subparsers.add_parser(
        "serve",
        help="serve the HTTP/SSE API and the live dashboard over a workspace",
        description="Serve DIR/{session_id}/events.jsonl as a JSON API (/api/..., "
        "described at /openapi.json), Server-Sent Events that follow the logs, and a "
        "dashboard at /, from which a person can pause, resume, abort, answer and "
        "approve running sessions (unless --read-only). Binds 127.0.0.1 unless told "
        f"otherwise; any other address needs a token (--token or ${TOKEN_VARIABLE}).",
    )
    serve.add_argument(
        "workspace",
        type=Path,
        nargs="?",
        default=Path("workspaces"),
        metavar="DIR",
        help="the workspace root (default: ./workspaces, where 'eventbus demo' writes)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address (default: 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8000, help="the port (default: 8000)")
    serve.add_argument(
        "--token",
        default=None,
        help=f"require this token on /api (default: ${TOKEN_VARIABLE}, if set)",
    )
    serve.add_argument(
        "--max-events",
        type=positive,
        default=None,
        metavar="N",
        help="index at most the newest N events; older ones are answered from the logs "
        "(slower, the same answers) (default: every event)",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="take no commands: POST /api/sessions/ID/commands answers 403; the "
        "dashboard lists what sessions wait for, without buttons",
    )
    serve.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    token = check_token(args.host, args.token)
    if not args.workspace.is_dir():
        raise CommandError(
            f"no workspace directory at {str(args.workspace)!r}: give DIR, or run "
            "'eventbus demo' first (it writes ./workspaces)"
        )
    uvicorn = import_extra("uvicorn", extra="web", command="eventbus serve")
    web = import_extra("eventbus.web", extra="web", command="eventbus serve")
    sock = bind(args.host, args.port)
    workspace = Workspace(args.workspace, max_events=args.max_events)
    # Build the query index while the server runs: until it is built, requests
    # are answered from the logs (index-free) instead of waiting for it.
    threading.Thread(
        target=_warm, args=(workspace,), name="eventbus index warm-up", daemon=True
    ).start()
    app = web.create_app(workspace, token=token, read_only=args.read_only)
    print(f"eventbus serve: {url_for(args.host, sock.getsockname()[1], token)}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


@asynccontextmanager
async def dashboard(
    workspace: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
    token: str | None = None,
    out: TextIO = sys.stdout,
) -> AsyncIterator[str]:
    """Serve the API and dashboard over ``workspace`` during the block; yield the URL.

    The server runs in a thread with an event loop of its own, and its
    streams follow the workspace's files (as ``eventbus serve`` does): its
    clients never run on the caller's event loop, so however many there are
    they do not delay the coordinator publishing there. A stream is joined
    to the log on event ids (no gap, no duplicate); an event reaches it once
    a sink wrote it to the log (within a few tens of milliseconds).

    The URL is printed to ``out`` once the port is bound, before the block
    starts. On leaving the block the server stops; to serve on until Ctrl-C,
    ``await anyio.sleep_forever()`` inside the block.

    :param sock: a socket :func:`bind` made for ``host``, to listen on instead
        of binding ``port`` (the caller then knows early that the port is free).
    :raises CommandError: as :func:`check_token` and :func:`bind`.
    """
    token = check_token(host, token)
    uvicorn: Any = import_extra("uvicorn", extra="web", command="eventbus --serve")
    web: Any = import_extra("eventbus.web", extra="web", command="eventbus --serve")
    if sock is None:
        sock = bind(host, port)
    config = uvicorn.Config(
        web.create_app(workspace, token=token),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="eventbus dashboard", daemon=True
    )
    url = url_for(host, sock.getsockname()[1], token)
    thread.start()
    print(f"dashboard: {url}", file=out, flush=True)
    try:
        yield url
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):  # streams get 1 s to end, then are cancelled
            await anyio.to_thread.run_sync(thread.join, _STOP_SECONDS)
        sock.close()


def _warm(workspace: Workspace) -> None:
    """Index the workspace's logs (in a thread); a failure is logged, requests retry it."""
    try:
        workspace.build_index()
    except Exception:
        logger.exception("building the index of %s failed", workspace.root)
