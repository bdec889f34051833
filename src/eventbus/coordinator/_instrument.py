"""Instrumentation: an :class:`Emitter` makes correct emission the easy path.

An emitter publishes one session's events on a bus and stamps each with the
session id, the current phase and, inside :meth:`Emitter.task`, the task id
and agent role. Its blocks emit an opening event on entry and exactly one
closing event on exit, whatever happens inside::

    async with emitter.task("t1", role="coder") as task:
        async with emitter.llm_call(model="m", role="coder", prompt_tokens=120) as call:
            response = await client.complete(...)
            call.set_usage(completion_tokens=response.completion_tokens)

==================  ========================  =========================  =======================
block               entry                     normal exit                exception / cancellation
==================  ========================  =========================  =======================
``task``            ``task_started``          ``task_completed``         ``task_failed``
``agent``           ``agent_invoked``         ``agent_response``         ``error``
``llm_call``        ``llm_request_sent``      ``llm_response_received``  ``error``
``verification``    ``verification_started``  ``verification_passed``    ``verification_failed``
==================  ========================  =========================  =======================

Closing events carry ``duration_s``; failure events also ``error_type``,
``error`` and ``cancelled``. On cancellation (or another ``BaseException``)
the closing event is published from a shielded scope, bounded by the
emitter's ``shield_timeout``, and the exception then propagates unchanged.
If publishing the closing event of a failure itself fails, that is logged and
the original exception propagates.

Parent ids follow :func:`~eventbus.parent_scope`: events inside a ``task``
block point to its ``task_started`` (the closing event too), events inside a
``verification`` block to its ``verification_started``, and an LLM response
(or failure) to its request. An ``agent`` block opens no parent scope (the
agent's events belong to the enclosing task); it only stamps its role on
events that have none.

An ``llm_call`` given ``messages`` (and :meth:`LLMCall.set_response`) puts
the prompt and the answer in its events: ``metadata["messages"]`` (a list of
``{"role": str, "content": str}``) on the request, ``metadata["response"]``
on the response (or the ``error`` event). Each string is first passed
through the emitter's ``redact`` hook (:func:`~eventbus.coordinator.redact_secrets` by
default), then cut to ``max_text_chars`` characters followed by
``…[truncated N chars; full text in artifact KEY]``; the event then has
``metadata["truncated"][field] = {"chars": N, "total_chars": M, "artifact":
KEY}`` and, just before it, an ``artifact_created`` event publishes the full
redacted text (the message list, or the response string) under ``KEY``
(``llm-{event id}-messages`` or ``llm-{event id}-response``). Without text,
none of this work is done.
"""

from __future__ import annotations

import abc
import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec

from .._bus import EventBus
from .._event import Event, EventType, parent_scope
from .._factories import (
    GateDecision,
    create_agent_event,
    create_artifact_event,
    create_clarification_event,
    create_command_event,
    create_diff_event,
    create_gate_event,
    create_llm_request_event,
    create_llm_response_event,
    create_model_routed_event,
    create_phase_transition_event,
    create_session_event,
    create_task_event,
    create_verification_event,
)
from .._redact import (
    DEFAULT_MAX_TEXT_CHARS,
    Redactor,
    capture_messages,
    capture_text,
    redact_secrets,
)
from ._errors import UsageNotReportedError

__all__ = ["AgentSpan", "Emitter", "LLMCall", "ModelPrice", "TaskSpan", "VerificationSpan"]

logger = logging.getLogger("eventbus")


# (emitter, task id, agent role) of the innermost ``task`` or ``agent`` block.
_current_task: contextvars.ContextVar[tuple[Emitter, str | None, str | None] | None] = (
    contextvars.ContextVar("eventbus_current_task", default=None)
)


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True):
    """A model's prices in USD per million tokens.

    Cached prompt tokens cost ``cached_input_per_mtok`` (the input price when
    it is ``None``).
    """

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Return the cost in USD of one call with this usage."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else self.cached_input_per_mtok
        )
        micro = (
            (prompt_tokens - cached) * self.input_per_mtok
            + cached * cached_rate
            + completion_tokens * self.output_per_mtok
        )
        return round(micro / 1_000_000, 10)


class Emitter:
    """Publishes one session's events on ``bus``, stamped with their context.

    :param bus: a running :class:`~eventbus.EventBus`.
    :param session_id: the session every event belongs to.
    :param phase: the current phase, stamped on events that have none;
        :meth:`transition` changes it.
    :param on_event: called with each event once it is published (the
        coordinator derives the legacy ``session.logs`` from it).
    :param shield_timeout: how long publishing a closing event may take
        after a cancellation, shielded, before it is given up (and logged).
    :param redact: masks secrets in the prompts and responses that LLM
        events capture, before they are published. If it raises (or returns
        no string), the whole string is replaced by ``[REDACTED: the redact
        hook raised ...]`` and an error is logged (with the exception's type
        only): the raw text never leaves the process.
    :param max_text_chars: how many characters of each captured string an
        event keeps (``None``: no cap); the full text goes to an artifact.
    """

    __slots__ = (
        "_bus",
        "_max_text_chars",
        "_on_event",
        "_redact",
        "_session_id",
        "_shield_timeout",
        "phase",
    )

    def __init__(
        self,
        bus: EventBus,
        session_id: str,
        *,
        phase: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        shield_timeout: float = 5.0,
        redact: Redactor = redact_secrets,
        max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
    ) -> None:
        if shield_timeout < 0:
            raise ValueError(f"shield_timeout must be >= 0, got {shield_timeout}")
        if max_text_chars is not None and max_text_chars < 0:
            raise ValueError(f"max_text_chars must be >= 0 or None, got {max_text_chars}")
        self._redact = redact
        self._max_text_chars = max_text_chars
        self._bus = bus
        self._session_id = session_id
        self._on_event = on_event
        self._shield_timeout = shield_timeout
        self.phase = phase

    @property
    def bus(self) -> EventBus:
        """The bus events are published on."""
        return self._bus

    @property
    def session_id(self) -> str:
        """The session every event belongs to."""
        return self._session_id

    def current_task(self) -> tuple[str | None, str | None]:
        """Return ``(task_id, agent_role)`` of the enclosing :meth:`task` block (the role
        also of an :meth:`agent` block), or ``None`` for what is unknown."""
        context = _current_task.get()
        if context is None or context[0] is not self:
            return None, None
        return context[1], context[2]

    def stamp(self, event: Event) -> Event:
        """Return ``event`` with the current phase, task id and role where it has none."""
        updates: dict[str, Any] = {}
        if event.phase is None and self.phase is not None:
            updates["phase"] = self.phase
        task_id, role = self.current_task()
        if event.task_id is None and task_id is not None:
            updates["task_id"] = task_id
        if event.agent_role is None and role is not None:
            updates["agent_role"] = role
        return msgspec.structs.replace(event, **updates) if updates else event

    async def emit(self, event: Event, *, shield: bool = False) -> Event:
        """Stamp ``event`` (see :meth:`stamp`), publish it and return what was published.

        With ``shield``, publishing is protected from cancellation for at
        most ``shield_timeout`` seconds (then it is given up and logged).
        """
        event = self.stamp(event)
        if shield:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + self._shield_timeout
                await self._bus.publish(event)
            if scope.cancelled_caught:
                logger.error(
                    "could not publish %s (%s) within %ss after a cancellation",
                    event.event_type.value,
                    event.id,
                    self._shield_timeout,
                )
                return event
        else:
            await self._bus.publish(event)
        if self._on_event is not None:
            self._on_event(event)
        return event

    # --- point events ---------------------------------------------------------

    async def transition(self, new_phase: str, **metadata: Any) -> Event:
        """Move to ``new_phase`` and emit the ``phase_transition`` from the current one."""
        if self.phase is None:
            raise ValueError(
                "the emitter has no current phase to transition from: "
                "create it with Emitter(bus, session_id, phase=...)"
            )
        event = create_phase_transition_event(self._session_id, self.phase, new_phase, **metadata)
        self.phase = new_phase
        return await self.emit(event)

    async def session_event(
        self, event_type: EventType, *, message: str | None = None, **metadata: Any
    ) -> Event:
        """Emit a session lifecycle event (started, completed, failed or aborted)."""
        return await self.emit(
            create_session_event(
                self._session_id, event_type, phase=self.phase, message=message, **metadata
            )
        )

    async def task_event(
        self,
        event_type: EventType,
        task_id: str,
        *,
        role: str | None = None,
        message: str | None = None,
        **metadata: Any,
    ) -> Event:
        """Emit a task event outside a :meth:`task` block (``task_scheduled``, ``task_skipped``)."""
        return await self.emit(
            create_task_event(
                self._session_id,
                event_type,
                task_id,
                phase=self.phase,
                agent_role=role,
                message=message,
                **metadata,
            )
        )

    async def note(
        self, message: str, *, level: EventType = EventType.INFO, **metadata: Any
    ) -> Event:
        """Emit a generic ``info`` (or ``warning``/``error``) event."""
        return await self.emit(
            Event(
                event_type=level,
                session_id=self._session_id,
                message=message,
                phase=self.phase,
                metadata=metadata,
            )
        )

    async def model_routed(
        self, model: str, *, role: str, reason: str | None = None, **metadata: Any
    ) -> Event:
        """Emit ``model_routed``: ``model`` was chosen for ``role``."""
        task_id, _ = self.current_task()
        return await self.emit(
            create_model_routed_event(
                self._session_id,
                model,
                role,
                reason=reason,
                task_id=task_id,
                phase=self.phase,
                **metadata,
            )
        )

    async def gate(
        self, gate: str, decision: GateDecision, *, reason: str = "", **metadata: Any
    ) -> Event:
        """Emit a gate's decision: ``gate_evaluated``, ``gate_warned`` or ``gate_blocked``."""
        return await self.emit(
            create_gate_event(
                self._session_id, gate, decision, reason=reason, phase=self.phase, **metadata
            )
        )

    async def diff(
        self,
        files: Sequence[str],
        *,
        applied: bool = True,
        error: str | None = None,
        diff: str | None = None,
        **metadata: Any,
    ) -> Event:
        """Emit ``diff_applied`` (or ``diff_failed`` with ``error``).

        :param diff: the diff's text, put in ``metadata["diff"]`` redacted and
            capped like an LLM call's prompt: cut to ``max_text_chars``, the
            full redacted text then saved first as the artifact ``diff-{event id}``
            (an ``artifact_created`` event whose ``parent_id`` is the diff's
            event) and ``metadata["truncated"]["diff"]`` saying so.
        """
        event = create_diff_event(
            self._session_id,
            files,
            applied=applied,
            error=error,
            phase=self.phase,
            **metadata,
        )
        if diff is not None:
            key = f"diff-{event.id}"
            shown, truncated, full = capture_text(diff, self._redact, self._max_text_chars, key)
            captured: dict[str, Any] = {**event.metadata, "diff": shown}
            if truncated is not None:
                captured["truncated"] = {**captured.get("truncated", {}), "diff": truncated}
            event = msgspec.structs.replace(event, metadata=captured)
            if truncated is not None:
                artifact = create_artifact_event(
                    event.session_id,
                    key,
                    full,
                    phase=event.phase,
                    task_id=event.task_id,
                    source_event_id=event.id,
                    field="diff",
                )
                await self.emit(msgspec.structs.replace(artifact, parent_id=event.id))
        return await self.emit(event)

    async def command(
        self,
        command: Sequence[str] | str,
        exit_code: int,
        *,
        duration_s: float | None = None,
        output: str = "",
        **metadata: Any,
    ) -> Event:
        """Emit ``command_executed``."""
        return await self.emit(
            create_command_event(
                self._session_id,
                command,
                exit_code,
                duration_s=duration_s,
                output=output,
                phase=self.phase,
                **metadata,
            )
        )

    async def artifact(
        self, key: str, content: Any, *, updated: bool = False, **metadata: Any
    ) -> Event:
        """Emit ``artifact_created`` (or ``artifact_updated``) with JSON ``content``."""
        return await self.emit(
            create_artifact_event(
                self._session_id, key, content, updated=updated, phase=self.phase, **metadata
            )
        )

    async def clarification(
        self,
        question: str,
        answer: str | None = None,
        *,
        question_id: str | None = None,
        role: str | None = None,
        **metadata: Any,
    ) -> Event:
        """Emit ``clarification_requested`` (or ``clarification_answered`` with ``answer``)."""
        return await self.emit(
            create_clarification_event(
                self._session_id,
                question,
                answer,
                question_id=question_id,
                agent_role=role,
                phase=self.phase,
                **metadata,
            )
        )

    # --- blocks -----------------------------------------------------------------

    def task(self, task_id: str, *, role: str | None = None, **metadata: Any) -> TaskSpan:
        """A block around a task: ``task_started``, then ``task_completed`` or ``task_failed``.

        Events inside get the task id and role, and point to ``task_started``.
        """
        return TaskSpan(self, task_id, role, metadata)

    def agent(self, role: str, *, model: str | None = None, **metadata: Any) -> AgentSpan:
        """A block around an agent's work: ``agent_invoked``, then ``agent_response``
        (or an ``error`` event)."""
        return AgentSpan(self, role, model, metadata)

    def llm_call(
        self,
        *,
        model: str,
        role: str,
        prompt_tokens: int,
        price: ModelPrice | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        **metadata: Any,
    ) -> LLMCall:
        """A block around one model call: ``llm_request_sent``, then
        ``llm_response_received`` with the usage given to :meth:`LLMCall.set_usage`
        (and ``cost_usd`` when ``price`` is given), or an ``error`` event.

        ``messages`` (``{"role": ..., "content": ...}`` each) is the prompt,
        captured redacted and capped in ``llm_request_sent`` (see the module
        docstring); give the answer to :meth:`LLMCall.set_response`.

        Leaving the block normally without reporting usage raises
        :class:`UsageNotReportedError` (after emitting the ``error`` event).
        """
        return LLMCall(self, model, role, prompt_tokens, price, messages, metadata)

    def verification(self, verifier: str, **metadata: Any) -> VerificationSpan:
        """A block around a verifier: ``verification_started``, then
        ``verification_passed``, or ``verification_failed`` on an exception or
        after :meth:`VerificationSpan.fail`."""
        return VerificationSpan(self, verifier, metadata)


def _is_cancellation(exc: BaseException) -> bool:
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[1] is None
    return False


def _failure(exc: BaseException, duration_s: float) -> dict[str, Any]:
    cancelled = _is_cancellation(exc)
    return {
        "duration_s": duration_s,
        "error_type": type(exc).__name__,
        "error": "cancelled" if cancelled else (str(exc) or repr(exc)),
        "cancelled": cancelled,
    }


class _Span(abc.ABC):
    """An ``async with`` block that emits an opening and one closing event."""

    __slots__ = ("_emitter", "_metadata", "_opened", "_result", "_scopes", "_t0")

    def __init__(self, emitter: Emitter, metadata: dict[str, Any]) -> None:
        self._emitter = emitter
        self._metadata = metadata
        self._result: dict[str, Any] = {}
        self._opened: Event | None = None
        self._scopes: list[AbstractContextManager[None]] = []
        self._t0 = 0.0

    @property
    def event(self) -> Event:
        """The opening event (available inside the block)."""
        if self._opened is None:
            raise RuntimeError(f"{type(self).__name__} has not been entered: use 'async with'")
        return self._opened

    @property
    def id(self) -> str:
        """The opening event's id: the ``parent_id`` of the events it causes."""
        return self.event.id

    def set_result(self, **metadata: Any) -> None:
        """Add JSON ``metadata`` to the closing event (also to a failure event)."""
        self._result.update(metadata)

    # Subclasses define the events.

    @abc.abstractmethod
    def _open(self) -> Event: ...

    @abc.abstractmethod
    def _close(self, duration_s: float) -> Event: ...

    @abc.abstractmethod
    def _fail(self, duration_s: float, exc: BaseException) -> Event: ...

    def _enter_scopes(self) -> Iterator[AbstractContextManager[None]]:
        return iter(())

    def _check(self) -> BaseException | None:
        return None

    def _take_companions(self) -> list[Event]:
        """Events to publish just before the one last built (an LLM call's artifacts)."""
        return []

    async def __aenter__(self) -> Self:
        if self._opened is not None:
            raise RuntimeError(f"{type(self).__name__} blocks cannot be re-entered")
        opening = self._open()
        for companion in self._take_companions():
            await self._emitter.emit(companion)
        self._opened = await self._emitter.emit(opening)
        self._t0 = time.perf_counter()
        for scope in self._enter_scopes():
            scope.__enter__()
            self._scopes.append(scope)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration_s = round(time.perf_counter() - self._t0, 6)
        error = self._check() if exc is None else None
        failure = exc if exc is not None else error
        try:
            closing = (
                self._close(duration_s) if failure is None else self._fail(duration_s, failure)
            )
        finally:
            while self._scopes:
                self._scopes.pop().__exit__(None, None, None)
        companions = self._take_companions()
        if exc is None:
            for companion in companions:
                await self._emitter.emit(companion)
            await self._emitter.emit(closing)
        else:
            for event in (*companions, closing):
                try:
                    await self._emitter.emit(event, shield=not isinstance(exc, Exception))
                except Exception:
                    logger.exception(
                        "could not publish %s for %r; the original exception propagates",
                        event.event_type.value,
                        exc,
                    )
        if error is not None:
            raise error


class TaskSpan(_Span):
    """The block of :meth:`Emitter.task`; ``retrying`` emits ``task_retrying``."""

    __slots__ = ("role", "task_id")

    def __init__(
        self, emitter: Emitter, task_id: str, role: str | None, metadata: dict[str, Any]
    ) -> None:
        super().__init__(emitter, metadata)
        self.task_id = task_id
        self.role = role

    async def retrying(
        self, error: BaseException | str, *, attempt: int, delay_s: float = 0.0, **metadata: Any
    ) -> Event:
        """Emit ``task_retrying`` after failed attempt ``attempt`` (the next is ``attempt + 1``)."""
        text = error if isinstance(error, str) else (str(error) or repr(error))
        data: dict[str, Any] = {
            "attempt": attempt,
            "next_attempt": attempt + 1,
            "delay_s": delay_s,
            "error": text,
            **metadata,
        }
        if not isinstance(error, str):
            data["error_type"] = type(error).__name__
        return await self._emitter.emit(
            self._event(
                EventType.TASK_RETRYING,
                f"Retrying task: {self.task_id} (attempt {attempt} failed: {text})",
                data,
            )
        )

    def _event(self, event_type: EventType, message: str | None, data: dict[str, Any]) -> Event:
        return create_task_event(
            self._emitter.session_id,
            event_type,
            self.task_id,
            phase=self._emitter.phase,
            agent_role=self.role,
            message=message,
            **data,
        )

    def _open(self) -> Event:
        return self._event(EventType.TASK_STARTED, None, self._metadata)

    def _enter_scopes(self) -> Iterator[AbstractContextManager[None]]:
        yield parent_scope(self.event.id)
        yield _task_scope(self._emitter, self.task_id, self.role)

    def _close(self, duration_s: float) -> Event:
        return self._event(
            EventType.TASK_COMPLETED, None, {"duration_s": duration_s, **self._result}
        )

    def _fail(self, duration_s: float, exc: BaseException) -> Event:
        data = {**self._result, **_failure(exc, duration_s)}
        verb = "cancelled" if data["cancelled"] else "failed"
        return self._event(
            EventType.TASK_FAILED, f"Task {verb}: {self.task_id} ({data['error']})", data
        )


@contextmanager
def _task_scope(emitter: Emitter, task_id: str | None, role: str | None) -> Iterator[None]:
    token = _current_task.set((emitter, task_id, role))
    try:
        yield
    finally:
        _current_task.reset(token)


class AgentSpan(_Span):
    """The block of :meth:`Emitter.agent`."""

    __slots__ = ("model", "role")

    def __init__(
        self, emitter: Emitter, role: str, model: str | None, metadata: dict[str, Any]
    ) -> None:
        super().__init__(emitter, metadata)
        self.role = role
        self.model = model

    def _open(self) -> Event:
        task_id, _ = self._emitter.current_task()
        return create_agent_event(
            self._emitter.session_id,
            self.role,
            task_id=task_id,
            phase=self._emitter.phase,
            model=self.model,
            **self._metadata,
        )

    def _enter_scopes(self) -> Iterator[AbstractContextManager[None]]:
        task_id, _ = self._emitter.current_task()
        yield _task_scope(self._emitter, task_id, self.role)

    def _close(self, duration_s: float) -> Event:
        task_id, _ = self._emitter.current_task()
        return create_agent_event(
            self._emitter.session_id,
            self.role,
            response=True,
            task_id=task_id,
            phase=self._emitter.phase,
            model=self.model,
            duration_s=duration_s,
            invocation_id=self.id,
            **self._result,
        )

    def _fail(self, duration_s: float, exc: BaseException) -> Event:
        data = {
            "operation": "agent",
            "invocation_id": self.id,
            **self._result,
            **_failure(exc, duration_s),
        }
        return Event(
            event_type=EventType.ERROR,
            session_id=self._emitter.session_id,
            message=f"Agent {self.role} failed: {data['error']}",
            phase=self._emitter.phase,
            agent_role=self.role,
            model=self.model,
            metadata=data,
        )


class LLMCall(_Span):
    """The block of :meth:`Emitter.llm_call`; report usage with :meth:`set_usage`
    and the answer's text with :meth:`set_response`."""

    __slots__ = (
        "_companions",
        "_messages",
        "_response",
        "_usage",
        "model",
        "price",
        "prompt_tokens",
        "role",
    )

    def __init__(
        self,
        emitter: Emitter,
        model: str,
        role: str,
        prompt_tokens: int,
        price: ModelPrice | None,
        messages: Sequence[Mapping[str, Any]] | None,
        metadata: dict[str, Any],
    ) -> None:
        super().__init__(emitter, metadata)
        self.model = model
        self.role = role
        self.prompt_tokens = prompt_tokens
        self.price = price
        self._messages = messages
        self._response: str | None = None
        self._companions: list[Event] = []
        self._usage: tuple[int, int, int | None] | None = None

    def set_response(self, text: str) -> None:
        """Capture the response ``text`` in ``llm_response_received`` (or the
        ``error`` event), redacted and capped like the prompt."""
        self._response = text

    def _take_companions(self) -> list[Event]:
        companions, self._companions = self._companions, []
        return companions

    def _capture(self, event: Event, field: str, value: Any) -> Event:
        """``event`` with ``value`` (messages or response text) captured in ``metadata[field]``;
        when it was cut, the full text's artifact event becomes a companion."""
        emitter = self._emitter
        key = f"llm-{event.id}-{field}"
        capture = capture_messages if field == "messages" else capture_text
        captured: tuple[Any, dict[str, Any] | None, Any] = capture(
            value, emitter._redact, emitter._max_text_chars, key
        )
        shown, truncated, full = captured
        metadata = {**event.metadata, field: shown}
        if truncated is not None:
            metadata["truncated"] = {**metadata.get("truncated", {}), field: truncated}
            artifact = create_artifact_event(
                event.session_id,
                key,
                full,
                phase=event.phase,
                task_id=event.task_id,
                source_event_id=event.id,
                field=field,
            )
            self._companions.append(msgspec.structs.replace(artifact, parent_id=event.id))
        return msgspec.structs.replace(event, metadata=metadata)

    def set_usage(
        self,
        *,
        completion_tokens: int,
        prompt_tokens: int | None = None,
        cached_tokens: int | None = None,
    ) -> None:
        """Report the response's token usage (``prompt_tokens`` defaults to the request's)."""
        prompt = self.prompt_tokens if prompt_tokens is None else prompt_tokens
        for name, value in (("completion_tokens", completion_tokens), ("prompt_tokens", prompt)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self._usage = (prompt, completion_tokens, cached_tokens)

    @property
    def cost_usd(self) -> float | None:
        """The call's cost once usage is reported and a price is known, else ``None``."""
        if self._usage is None or self.price is None:
            return None
        prompt, completion, cached = self._usage
        return self.price.cost(prompt, completion, cached or 0)

    def _open(self) -> Event:
        task_id, _ = self._emitter.current_task()
        event = create_llm_request_event(
            self._emitter.session_id,
            self.model,
            self.role,
            self.prompt_tokens,
            task_id,
            phase=self._emitter.phase,
            **self._metadata,
        )
        if self._messages is None:
            return event
        return self._capture(event, "messages", self._messages)

    def _enter_scopes(self) -> Iterator[AbstractContextManager[None]]:
        yield parent_scope(self.event.id)

    def _check(self) -> BaseException | None:
        return UsageNotReportedError(self.model) if self._usage is None else None

    def _close(self, duration_s: float) -> Event:
        assert self._usage is not None
        prompt, completion, cached = self._usage
        task_id, _ = self._emitter.current_task()
        event = create_llm_response_event(
            self._emitter.session_id,
            self.model,
            self.role,
            prompt,
            completion,
            task_id,
            phase=self._emitter.phase,
            cached_tokens=cached,
            cost_usd=self.cost_usd,
            duration_s=duration_s,
            parent_id=self.id,
            **self._result,
        )
        if self._response is None:
            return event
        return self._capture(event, "response", self._response)

    def _fail(self, duration_s: float, exc: BaseException) -> Event:
        data = {"operation": "llm_call", **self._result, **_failure(exc, duration_s)}
        event = Event(
            event_type=EventType.ERROR,
            session_id=self._emitter.session_id,
            message=f"LLM call to {self.model} for {self.role} failed: {data['error']}",
            phase=self._emitter.phase,
            agent_role=self.role,
            model=self.model,
            metadata=data,
            parent_id=self.id,
        )
        if self._response is None:
            return event
        return self._capture(event, "response", self._response)


class VerificationSpan(_Span):
    """The block of :meth:`Emitter.verification`; :meth:`fail` marks it failed."""

    __slots__ = ("_reason", "verifier")

    def __init__(self, emitter: Emitter, verifier: str, metadata: dict[str, Any]) -> None:
        super().__init__(emitter, metadata)
        self.verifier = verifier
        self._reason: str | None = None

    def fail(self, reason: str) -> None:
        """End the block with ``verification_failed`` (with ``reason``) instead of passed."""
        self._reason = reason

    @property
    def failed(self) -> bool:
        """Whether :meth:`fail` was called."""
        return self._reason is not None

    def _event(self, event_type: EventType, data: dict[str, Any]) -> Event:
        return create_verification_event(
            self._emitter.session_id,
            event_type,
            verifier=self.verifier,
            phase=self._emitter.phase,
            **data,
        )

    def _open(self) -> Event:
        return self._event(EventType.VERIFICATION_STARTED, self._metadata)

    def _enter_scopes(self) -> Iterator[AbstractContextManager[None]]:
        yield parent_scope(self.event.id)

    def _close(self, duration_s: float) -> Event:
        data = {"duration_s": duration_s, **self._result}
        if self._reason is None:
            return self._event(EventType.VERIFICATION_PASSED, data)
        return self._event(EventType.VERIFICATION_FAILED, {"reason": self._reason, **data})

    def _fail(self, duration_s: float, exc: BaseException) -> Event:
        return self._event(
            EventType.VERIFICATION_FAILED, {**self._result, **_failure(exc, duration_s)}
        )
