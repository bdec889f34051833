"""The bus's one-shot signals and waiter lists, on each backend's own primitives."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from eventbus import Event, EventBus
from eventbus._signal import Waiters, signal_factory
from factories import event as ev

pytestmark = pytest.mark.anyio


async def test_a_signal_set_before_its_wait_returns_at_once() -> None:
    """``set`` then ``wait``: the wait returns without anyone setting it again."""
    signal = signal_factory()()
    signal.set()
    signal.set()  # setting twice is a no-op
    with anyio.fail_after(5):
        await signal.wait()


async def test_a_cancelled_waiter_is_forgotten_and_the_others_are_woken() -> None:
    """A waiter cancelled while waiting leaves the list; ``wake`` wakes the others."""
    waiters = Waiters()
    woken: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def wait(name: str) -> None:
        with anyio.CancelScope() as scopes[name]:
            await waiters.wait()
            woken.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "first")
        tg.start_soon(wait, "second")
        await wait_all_tasks_blocked()
        assert len(waiters) == 2
        scopes["first"].cancel()
        await wait_all_tasks_blocked()
        assert len(waiters) == 1
        waiters.wake()
    assert woken == ["second"]


async def test_a_listener_whose_reader_was_cancelled_still_delivers() -> None:
    """Cancelling a reader mid-wait, then publishing, neither fails nor loses the event."""
    async with EventBus() as bus, bus.listen(buffer=10) as events:
        async with anyio.create_task_group() as tg:
            tg.start_soon(events.__anext__)  # nothing published: it waits
            await wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        await bus.publish(ev(1))
        with anyio.fail_after(5):
            item = await events.__anext__()
        assert isinstance(item, Event)
        assert item.message == "1"


async def test_a_trio_signal_has_one_waiter(anyio_backend: str) -> None:
    """On trio a signal wakes one task: a second waiter is refused, not left hanging."""
    if anyio_backend != "trio":
        pytest.skip("trio's signal only")
    signal = signal_factory()()

    async def wait() -> None:
        await signal.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_all_tasks_blocked()
        with anyio.fail_after(5), pytest.raises(RuntimeError, match="one waiter"):
            await signal.wait()
        signal.set()
