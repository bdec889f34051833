"""The bus's one-shot signal on trio, imported only when the bus runs on trio."""

from __future__ import annotations

from trio.lowlevel import Abort, Task, checkpoint, current_task, reschedule, wait_task_rescheduled

__all__ = ["TrioSignal"]


class TrioSignal:
    """A :class:`~eventbus._signal.Signal` for one waiting task, on trio's scheduler.

    What ``trio.Event`` does for one waiter, without its parking lot: ``set``
    reschedules the waiting task, ``wait`` sleeps until then (a checkpoint,
    cancellable like any other; if already set, a plain checkpoint). The
    bus's signals each have one waiter (a task and its own signal).
    """

    __slots__ = ("_is_set", "_task")

    def __init__(self) -> None:
        self._is_set = False
        self._task: Task | None = None

    def set(self) -> None:
        """Wake the waiter (no-op if already set)."""
        if self._is_set:
            return
        self._is_set = True
        task = self._task
        if task is not None:
            self._task = None
            reschedule(task)

    async def wait(self) -> None:
        """Return once :meth:`set` was called."""
        if self._is_set:
            await checkpoint()
            return
        if self._task is not None:
            raise RuntimeError("a TrioSignal has one waiter; another task is waiting on it")
        self._task = current_task()
        await wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> Abort:
        self._task = None  # cancelled: a later set() has no one to wake
        return Abort.SUCCEEDED
