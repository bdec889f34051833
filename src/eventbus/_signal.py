"""One-shot signals for the bus's own wake-ups, cheaper than ``anyio.Event``.

The bus makes one each time a task goes to sleep (an idle sink task, a
listener's reader, a publisher waiting for space), so what it costs is paid
per event on the live path. ``anyio.Event()`` looks up the running backend
on every creation and wraps the backend's event; a bare ``asyncio`` future
is several times cheaper to make and wakes its waiter with one callback
(``benchmarks/bench_bus.py`` measures the live path). Cancellation is the
backend's own: anyio's cancel scopes cancel an asyncio task waiting on a
future like any other await.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

__all__ = ["Signal", "Waiters", "running_trio", "signal_factory"]


class Signal(Protocol):
    """Set once; ``await signal.wait()`` returns once it is set."""

    def set(self) -> None:
        """Wake the waiter (no-op if already set)."""

    def wait(self) -> Awaitable[object]:
        """Return an awaitable that completes once the signal is set."""


class _FutureSignal:
    """A :class:`Signal` on an asyncio future (a waiter's cancellation cancels the future)."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def wait(self) -> Awaitable[None]:
        return self._future  # awaited as it is: no coroutine to create


def signal_factory() -> Callable[[], Signal]:
    """Return the cheapest way to make signals in the running event loop.

    On asyncio: futures of the running loop; on trio: a signal on trio's
    scheduler for one waiter (``trio.Event`` without its parking lot); on
    anything else: ``anyio.Event``. Each signal has one waiting task.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return functools.partial(_FutureSignal, loop)
    if running_trio():
        from ._trio_signal import TrioSignal

        return TrioSignal
    return anyio.Event


def running_trio() -> bool:
    """Whether the calling task runs on trio."""
    try:
        import trio
    except ImportError:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class Waiters(list[Any]):
    """The tasks waiting for one thing to happen, each with its own signal.

    A list, so that "is anyone waiting?" is a C-level truth test. One signal
    per waiter, not one shared: on asyncio, cancelling a task that awaits a
    future cancels the future, which would wake every other waiter with a
    cancellation that is not theirs. On asyncio the signals are bare
    futures of the running loop (``futures`` is true), made and set without
    a Python call: a listener's reader waits once per event. Elsewhere they
    are :class:`Signal` objects from :func:`signal_factory`.
    """

    __slots__ = ("_make", "futures")

    def __init__(self) -> None:
        super().__init__()
        self._make: Callable[[], Any] | None = None
        self.futures = False

    async def wait(self) -> None:
        """Wait until :meth:`wake` is called (signals are made in the caller's event loop)."""
        signal = self.add()
        try:
            await (signal if self.futures else signal.wait())
        except BaseException:
            self.discard(signal)
            raise

    def add(self) -> Any:
        """Return a new signal, already waiting here: what :meth:`wait` does, for a caller
        that awaits it itself (one coroutine less per wait): ``await signal`` if
        :attr:`futures`, else ``await signal.wait()``. If that raises (a
        cancellation), the caller must :meth:`discard` the signal."""
        make: Callable[[], Any] | None = self._make
        if make is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                make = signal_factory()
            else:
                make = functools.partial(asyncio.Future, loop=loop)
                self.futures = True
            self._make = make
        signal: Any = make()
        self.append(signal)
        return signal

    def discard(self, signal: object) -> None:
        """Forget ``signal`` if it was not woken (its waiter was cancelled)."""
        if signal in self:
            self.remove(signal)

    def wake(self) -> None:
        """Wake every task waiting now."""
        if len(self) == 1:  # the usual case: one reader, one flusher
            signal = self.pop()
            if not self.futures:
                signal.set()
            elif not signal.done():  # a future is done if its waiter was cancelled
                signal.set_result(None)
            return
        signals = self.copy()
        self.clear()
        for signal in signals:
            if not self.futures:
                signal.set()
            elif not signal.done():
                signal.set_result(None)
