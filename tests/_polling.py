"""Waiting for what another process or thread changes, where there is nothing to wait on.

A subprocess writing a file, a kernel counter, another thread's counter: no
anyio event can say when they change, so these poll, briefly, under a
deadline that fails the test with what it was waiting for. Everything within
one event loop waits on events instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

__all__ = ["poll_until", "wait_until"]

_STEP = 0.01  # seconds between looks


async def poll_until(check: Callable[[], bool]) -> None:
    """Return once ``check()`` holds (the caller's ``fail_after`` bounds the wait)."""
    while not check():  # noqa: ASYNC110 - changed elsewhere: nothing to wait on
        await anyio.sleep(_STEP)


def wait_until(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Return once ``check()`` holds; fail naming ``what`` after ``timeout`` seconds.

    For synchronous tests (a subprocess's files).
    """
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(_STEP)
