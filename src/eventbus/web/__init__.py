"""The HTTP/SSE API and the live dashboard (an entry point: it may import :mod:`sinks`).

``create_app(workspace=DIR, bus=bus)`` returns a Starlette app: JSON under
``/api`` (see ``/openapi.json``), Server-Sent Events under ``/api/.../stream``,
the control routes (``/api/sessions/{id}/pending``, ``POST .../commands``,
``.../commands/{command_id}``: they write the session's inbox, which the
coordinator running it applies) and the dashboard at ``/``, every asset
served from this package. It needs the ``web`` extra (``pip install 'eventbus[web]'``).
"""

from __future__ import annotations

from ._app import create_app

__all__ = ["create_app"]
