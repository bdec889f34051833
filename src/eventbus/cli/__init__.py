"""The ``eventbus`` command line (an entry point: it may import :mod:`sinks`).

``eventbus COMMAND ...`` or ``python -m eventbus COMMAND ...``; see
:mod:`eventbus.cli._main` for the exit statuses.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
