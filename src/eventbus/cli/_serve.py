"""``eventbus serve [DIR]``: the HTTP/SSE API and the dashboard over a workspace, with uvicorn.

Binds 127.0.0.1 by default; any other address needs a token (``--token`` or
``EVENTBUS_TOKEN``), which every ``/api`` request must then carry. ``--read-only``
refuses commands (the control routes' POST answers 403). The demo's
``--serve`` uses :func:`dashboard` to serve its own bus while the session runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

import anyio

from sinks.workspace import Workspace

from .._query import EventQuery
from ._common import CommandError, Subparsers, import_extra, port

logger = logging.getLogger("eventbus.cli")

if TYPE_CHECKING:
    from .._bus import EventBus

__all__ = ["add_parser", "check_token", "dashboard", "url_for"]

TOKEN_VARIABLE = "EVENTBUS_TOKEN"


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
    workspace = Workspace(args.workspace)
    # Build the query index while the server starts: on a large workspace the
    # first request would otherwise wait for it (about 5 EventLog loads).
    threading.Thread(
        target=_warm, args=(workspace,), name="eventbus index warm-up", daemon=True
    ).start()
    app = web.create_app(workspace, token=token, read_only=args.read_only)
    print(f"eventbus serve: {url_for(args.host, args.port, token)}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")
    return 0


@asynccontextmanager
async def dashboard(
    bus: EventBus,
    workspace: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    out: TextIO = sys.stdout,
) -> AsyncIterator[str]:
    """Serve the API and dashboard for ``bus`` (in-process) during the block; yield the URL.

    The URL is printed to ``out`` before the block starts. Runs on asyncio
    only (uvicorn's loop). On leaving the block the server stops; to serve
    on until Ctrl-C, ``await anyio.sleep_forever()`` inside the block.

    :raises CommandError: as :func:`check_token`.
    """
    token = check_token(host, token)
    uvicorn: Any = import_extra("uvicorn", extra="web", command="eventbus demo --serve")
    web: Any = import_extra("eventbus.web", extra="web", command="eventbus demo --serve")
    config = uvicorn.Config(
        web.create_app(workspace, bus=bus, token=token),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    url = url_for(host, port, token)
    print(f"dashboard: {url}", file=out, flush=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        try:
            yield url
        finally:
            server.should_exit = True


def _warm(workspace: Workspace) -> None:
    """Index the workspace's logs (in a thread); a failure is logged, requests retry it."""
    try:
        workspace.events(EventQuery(), limit=1)
    except Exception:
        logger.exception("building the index of %s failed", workspace.root)
