"""Control while a session runs: people answering and approving, pause and abort.

:class:`HumanClarifier` and :class:`HumanGate` wait for a person: an
``answer`` command for a question, an ``approve`` / ``reject`` command for an
approval. The :class:`SessionCoordinator` routes commands to them (from
:meth:`~SessionCoordinator.apply_command` in process, or from the session's
inbox, ``control.jsonl``, when it is given ``control=root``) and logs every
outcome (``control_applied`` / ``control_rejected``).

The rest is the coordinator's bookkeeping per session (``_SessionControl``)
and the reader of an inbox another process appends to (``_InboxReader``).
"""

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

import anyio
import msgspec

from .._event import EventType
from .._factories import GateDecision
from ._commands import Command, decode_command
from ._errors import HumanTimeoutError, InvalidCommandError
from ._session import ClarificationRequest, GateCheck, GateResult, GateStage

__all__ = ["CommandOutcome", "HumanClarifier", "HumanGate"]

logger = logging.getLogger("eventbus")

CommandStatus = Literal["applied", "rejected"]


class CommandOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a coordinator did with a command: ``applied``, or ``rejected`` and why.

    The same as ``sinks.workspace.Workspace.command_status`` reads back from the log.
    """

    command_id: str
    kind: str
    status: CommandStatus
    reason: str | None = None


class _Waiters:
    """Values a person delivers, awaited by key (session id, question or request id)."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], tuple[anyio.Event, list[Any]]] = {}

    @contextmanager
    def waiting(self, key: tuple[str, str]) -> Iterator[tuple[anyio.Event, list[Any]]]:
        slot: tuple[anyio.Event, list[Any]] = (anyio.Event(), [])
        self._waiting[key] = slot
        try:
            yield slot
        finally:
            del self._waiting[key]

    def deliver(self, key: tuple[str, str], value: Any) -> bool:
        slot = self._waiting.get(key)
        if slot is None or slot[0].is_set():
            return False
        slot[1].append(value)
        slot[0].set()
        return True


class HumanClarifier:
    """A :class:`Clarifier` whose answers come from a person (``answer`` commands).

    The question waits until someone answers it (``eventbus control DIR SESSION
    answer QUESTION_ID TEXT``, the dashboard, or
    :meth:`SessionCoordinator.answer`); the session goes on meanwhile where it can.

    :param timeout: how long a question may wait, in seconds (``None``: forever).
    :param default: the answer when nobody answered within ``timeout``; without
        one, the asking task fails with :class:`HumanTimeoutError`.
    """

    def __init__(self, *, timeout: float | None = None, default: str | None = None) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout}")
        self.timeout = timeout
        self.default = default
        self._waiters = _Waiters()

    async def answer(self, request: ClarificationRequest) -> str:
        """Wait for a person's answer to ``request`` (or the default after the timeout).

        :raises HumanTimeoutError: nobody answered in time and there is no default.
        """
        with self._waiters.waiting((request.session_id, request.question_id)) as (done, value):
            with anyio.move_on_after(self.timeout if self.timeout is not None else float("inf")):
                await done.wait()
            if value:
                return str(value[0])
        if self.default is not None:
            return self.default
        assert self.timeout is not None
        raise HumanTimeoutError(f"question {request.question_id!r}", self.timeout)

    def deliver(self, session_id: str, question_id: str, answer: str) -> bool:
        """Hand ``answer`` to the question waiting; ``False`` if none waits (any more)."""
        return self._waiters.deliver((session_id, question_id), answer)


class HumanGate:
    """A :class:`Gate` that waits for a person to ``approve`` or ``reject``.

    At each of its ``stages`` the coordinator logs ``approval_requested`` (with
    a ``request_id``) and waits for the decision; an approval passes, a
    rejection blocks (the plan is not executed, the session ends failed) with
    the person's reason in the gate's event. Other stages pass without asking.

    :param name: the gate's name in events.
    :param stages: what needs approval: ``"plan"``, ``"diff"`` or both.
    :param timeout: how long a request may wait, in seconds (``None``: forever).
    :param default: the decision when nobody decided within ``timeout``
        (``"pass"``, ``"warn"`` or ``"block"``); without one, the session fails
        with :class:`HumanTimeoutError`.
    """

    def __init__(
        self,
        name: str = "approval",
        *,
        stages: tuple[GateStage, ...] = ("plan",),
        timeout: float | None = None,
        default: GateDecision | None = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout}")
        self.name = name
        self.stages = tuple(stages)
        self.timeout = timeout
        self.default: GateDecision | None = default
        self._waiters = _Waiters()

    def asks(self, check: GateCheck) -> bool:
        """Whether ``check`` needs a person's decision (its stage is one of :attr:`stages`)."""
        return check.stage in self.stages

    async def evaluate(self, check: GateCheck) -> GateResult:
        """Wait for the decision on ``check`` (its ``request_id`` names the request).

        :raises ValueError: ``check`` has no ``request_id`` (the coordinator sets it).
        :raises HumanTimeoutError: nobody decided in time and there is no default.
        """
        if not self.asks(check):
            return GateResult(reason=f"{check.stage} needs no approval")
        if check.request_id is None:
            raise ValueError("HumanGate needs check.request_id: run it in a SessionCoordinator")
        with self._waiters.waiting((check.session_id, check.request_id)) as (done, value):
            with anyio.move_on_after(self.timeout if self.timeout is not None else float("inf")):
                await done.wait()
            if value:
                result: GateResult = value[0]
                return result
        if self.default is not None:
            assert self.timeout is not None
            return GateResult(
                decision=self.default,
                reason=f"nobody decided within {self.timeout:g}s: {self.default} by default",
            )
        assert self.timeout is not None
        raise HumanTimeoutError(f"approval request {check.request_id!r}", self.timeout)

    def deliver(
        self, session_id: str, request_id: str, *, approved: bool, actor: str, reason: str | None
    ) -> bool:
        """Hand a decision to the request waiting; ``False`` if none waits (any more)."""
        verb = "approved" if approved else "rejected"
        result = GateResult(
            decision="pass" if approved else "block",
            reason=f"{verb} by {actor}" + (f": {reason}" if reason else ""),
        )
        return self._waiters.deliver((session_id, request_id), result)


# --- the coordinator's bookkeeping ------------------------------------------------------


class _Request:
    """A question or approval that waits for a person."""

    __slots__ = ("command", "deliver", "kind", "recorded")

    def __init__(self, kind: Literal["clarification", "approval"]) -> None:
        self.kind = kind
        self.deliver: Callable[[Command], bool] = lambda _: False  # hands a command's answer on
        self.command: Command | None = None  # the command that answered it
        self.recorded = anyio.Event()  # set once its answer's event is published

    def answered_by(self) -> dict[str, Any]:
        """Metadata naming who answered (for the answer's or the gate's event)."""
        if self.command is None:
            return {}
        return {"actor": self.command.actor, "command_id": self.command.command_id}


class _SessionControl:
    """What a coordinator knows of one session's control: paused, waiting, decided."""

    def __init__(self) -> None:
        self.paused = False
        self.resumed = anyio.Event()
        self.waiting: dict[str, _Request] = {}  # by question or request id
        self.settled: set[str] = set()  # question and request ids answered or decided
        self.decided: dict[str, CommandOutcome] = {}  # by command id
        self.lock = anyio.Lock()
        self.work: anyio.CancelScope | None = None  # the session's work, while run() runs
        self.abort: Command | None = None
        self.ended = anyio.Event()  # run() has finished (after an abort: its outcome is logged)
        self.approvals = 0

    async def until_resumed(self) -> None:
        """Return at once unless paused; else when resumed."""
        while self.paused:
            await self.resumed.wait()

    @contextmanager
    def request(self, kind: Literal["clarification", "approval"], key: str) -> Iterator[_Request]:
        """Register ``key`` as waiting for a person while the block runs."""
        request = self.waiting[key] = _Request(kind)
        try:
            yield request
        finally:
            del self.waiting[key]
            self.settled.add(key)
            request.recorded.set()


# --- the inbox ------------------------------------------------------------------------

_OUTCOME_TYPES: Final = (EventType.CONTROL_APPLIED.value, EventType.CONTROL_REJECTED.value)


class _Outcome(msgspec.Struct):
    event_type: str
    metadata: dict[str, Any] = {}


_outcome_decoder = msgspec.json.Decoder(_Outcome)


def _segments(log_path: str) -> list[str]:
    """The log's sealed segments in order, then its live file (``sinks._segments``' layout:
    ``events.000001.jsonl``, ... ``events.jsonl``; the coordinator does not import ``sinks``)."""
    directory, name = os.path.split(log_path)
    stem, _, suffix = name.rpartition(".")
    sealed = re.compile(re.escape(stem) + r"\.\d{6}\." + re.escape(suffix)).fullmatch
    try:
        names = sorted(entry for entry in os.listdir(directory) if sealed(entry))
    except FileNotFoundError:
        names = []
    return [os.path.join(directory, entry) for entry in names] + [log_path]


def read_outcomes(log_path: str) -> dict[str, CommandOutcome]:
    """The outcomes of commands a log (every segment) already holds (the first per id)."""
    found: dict[str, CommandOutcome] = {}
    lines: list[bytes] = []
    read: set[tuple[int, int]] = set()
    for segment in _segments(log_path):
        try:
            with open(segment, "rb") as file:
                status = os.fstat(file.fileno())
                if (status.st_dev, status.st_ino) in read:  # the live file being sealed
                    continue
                read.add((status.st_dev, status.st_ino))
                lines += file.read().split(b"\n")[:-1]
        except FileNotFoundError:
            continue
    for line in lines:
        if b'"control_' not in line:
            continue
        try:
            outcome = _outcome_decoder.decode(line)
        except msgspec.DecodeError:
            continue
        command_id = outcome.metadata.get("command_id")
        if outcome.event_type in _OUTCOME_TYPES and isinstance(command_id, str):
            applied = outcome.event_type == EventType.CONTROL_APPLIED.value
            reason = outcome.metadata.get("reason")
            found.setdefault(
                command_id,
                CommandOutcome(
                    command_id=command_id,
                    kind=str(outcome.metadata.get("kind")),
                    status="applied" if applied else "rejected",
                    reason=reason if isinstance(reason, str) else None,
                ),
            )
    return found


_loose_decoder = msgspec.json.Decoder(dict[str, Any])


class _InboxReader:
    """Reads the complete lines appended to an inbox since the last call (one fstat each)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._offset = 0
        self._partial = b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> list[Command | tuple[dict[str, Any], str]]:
        """New commands, in order; a line that is no command as ``(fields, problem)``."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return []
        data = os.pread(self._fd, size - self._offset, self._offset)
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        found: list[Command | tuple[dict[str, Any], str]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                found.append(decode_command(line))
            except InvalidCommandError as exc:
                try:
                    fields = _loose_decoder.decode(line)
                except msgspec.DecodeError:
                    logger.warning("skipped a line of %s that is not JSON: %s", self.path, exc)
                    continue
                found.append((fields, exc.problem))
        return found
