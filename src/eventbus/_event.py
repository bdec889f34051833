"""The event model: :class:`EventType`, :class:`Event` and event ids."""

import contextvars
import enum
import hashlib
import itertools
import operator
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

from ._errors import EventDecodeError

__all__ = [
    "MAX_ID_LENGTH",
    "Event",
    "EventType",
    "current_parent_id",
    "new_event_id",
    "parent_scope",
]


class EventType(enum.StrEnum):
    """Every kind of event the coordinator emits.

    Members compare and hash equal to their string values. A value this
    version does not know (written by a newer producer) becomes a pseudo-member
    that keeps its string unchanged: ``EventType("new_kind").value ==
    "new_kind"``, so unknown events load, query and re-encode unchanged.
    """

    # Phase transitions
    PHASE_TRANSITION = "phase_transition"

    # Session lifecycle
    SESSION_STARTED = "session_started"
    SESSION_COMPLETED = "session_completed"
    SESSION_FAILED = "session_failed"
    SESSION_ABORTED = "session_aborted"

    # Task execution
    TASK_SCHEDULED = "task_scheduled"
    TASK_STARTED = "task_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    TASK_RETRYING = "task_retrying"
    TASK_SKIPPED = "task_skipped"

    # Agent operations
    AGENT_INVOKED = "agent_invoked"
    AGENT_RESPONSE = "agent_response"
    LLM_REQUEST_SENT = "llm_request_sent"
    LLM_RESPONSE_RECEIVED = "llm_response_received"
    MODEL_ROUTED = "model_routed"

    # Gates and policies
    GATE_EVALUATED = "gate_evaluated"
    GATE_BLOCKED = "gate_blocked"
    GATE_WARNED = "gate_warned"

    # Workspace operations
    DIFF_APPLIED = "diff_applied"
    DIFF_FAILED = "diff_failed"
    COMMAND_EXECUTED = "command_executed"

    # Verification
    VERIFICATION_STARTED = "verification_started"
    VERIFICATION_PASSED = "verification_passed"
    VERIFICATION_FAILED = "verification_failed"

    # Artifacts
    ARTIFACT_CREATED = "artifact_created"
    ARTIFACT_UPDATED = "artifact_updated"

    # Clarifications
    CLARIFICATION_REQUESTED = "clarification_requested"
    CLARIFICATION_ANSWERED = "clarification_answered"

    # Control: commands from a person, and what they did
    CONTROL_APPLIED = "control_applied"
    CONTROL_REJECTED = "control_rejected"
    SESSION_PAUSED = "session_paused"
    SESSION_RESUMED = "session_resumed"
    APPROVAL_REQUESTED = "approval_requested"

    # Generic
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def is_known(self) -> bool:
        """``False`` for a type this version does not know (a newer producer's)."""
        return self._name_ in type(self).__members__

    @classmethod
    def _missing_(cls, value: object) -> "EventType | None":
        if not isinstance(value, str) or not value:
            return None
        member = _unknown_types.get(value)
        if member is None:
            member = str.__new__(cls, value)
            member._name_ = value.upper()
            member._value_ = value
            if len(_unknown_types) < _MAX_CACHED_UNKNOWN_TYPES:
                _unknown_types[value] = member
        return member


_MAX_CACHED_UNKNOWN_TYPES = 1024
_unknown_types: dict[str, EventType] = {}


# --- Event ids ------------------------------------------------------------
#
# UUIDv7 layout (RFC 9562) written as 32 hex digits: 48 bits of Unix
# milliseconds, the version nibble 7, 12 random bits fixed per process, the
# variant bits 10, 30 random bits fixed per process and a 32-bit counter.
# Ids sort by creation time across processes, and strictly by creation order
# within one process (the millisecond never steps back; the counter breaks
# ties). The random part (42 bits per process) keeps processes apart.

_time_ns = time.time_ns
# The counter, as 8 hex digits wrapping at 2**32, all in C (each next() is
# atomic under the GIL, so threads never share a value): the last 2 digits
# come from a table, the first 6 are formatted once per 256 ids.
_LOW_DIGITS: Final = tuple(f"{low:02x}" for low in range(256))
_high_digits = map("{:06x}".format, itertools.chain.from_iterable(itertools.repeat(range(1 << 24))))
_hex_counter: Iterator[str] = itertools.chain.from_iterable(
    map(
        map,
        itertools.repeat(operator.add),
        map(itertools.repeat, _high_digits, itertools.repeat(256)),
        itertools.repeat(_LOW_DIGITS),
    )
)
# [the first nanosecond after the current millisecond, id prefix for that millisecond]
_id_state: list[Any] = [0, ""]


def _random_bits() -> tuple[int, int]:
    """(version nibble + 12 random bits, variant bits + 30 random bits): fixed per process."""
    bits = int.from_bytes(os.urandom(6), "big")
    return 0x7000 | (bits >> 30) & 0xFFF, (0b10 << 30) | (bits & 0x3FFFFFFF)


_version_and_rand_a, _variant_and_node = _random_bits()


def _reseed_after_fork() -> None:
    global _version_and_rand_a, _variant_and_node
    _version_and_rand_a, _variant_and_node = _random_bits()
    _id_state[0] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def new_event_id() -> str:
    """Return a new unique, time-sortable event id (a UUIDv7 as 32 hex digits)."""
    state = _id_state
    now = _time_ns()
    if now >= state[0]:  # a later millisecond (the clock stepping back keeps the prefix)
        ms = now // 1_000_000
        state[0] = (ms + 1) * 1_000_000
        state[1] = f"{ms:012x}{_version_and_rand_a:04x}{_variant_and_node:08x}"
    prefix: str = state[1]
    return prefix + next(_hex_counter)


# --- What an id may hold ----------------------------------------------------------
#
# An id is written after ``id:`` in server-sent events and used as a key: one
# holding a line break could forge SSE fields, a huge one bloats every index.
# Publishing and decoding refuse both (see ``_codec``); the length is checked
# by msgspec while decoding (the ``Meta`` below; a ``pattern`` there would
# double the cost of decoding, so ``_codec`` looks for control characters).

MAX_ID_LENGTH: Final = 256
"""The most characters an event's ``id`` or ``parent_id`` may hold."""

CONTROL_CHARACTERS: Final = "\x00-\x1f\x7f-\x9f"
"""The characters no id may hold (a regex class): Unicode's control characters (Cc)."""

_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
_control = re.compile(f"[{CONTROL_CHARACTERS}]").search


def _id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an ``id`` or ``parent_id``, or ``None``."""
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long, over the {MAX_ID_LENGTH} (MAX_ID_LENGTH)"
    found = _control(value)
    if found is not None:
        return (
            f"holds the control character {found.group()!r} "
            f"(ids hold no control characters and at most MAX_ID_LENGTH characters)"
        )
    return None


# --- Causality --------------------------------------------------------------

_parent_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventbus_parent_id", default=None
)


def current_parent_id() -> str | None:
    """Return the id that events created now get as ``parent_id`` by default."""
    return _parent_id.get()


@contextmanager
def parent_scope(parent_id: str | None) -> Iterator[None]:
    """Make events created inside the block default to ``parent_id``.

    Scopes nest and follow ``contextvars`` rules, so they are safe across
    tasks: a task started inside the block inherits the parent.
    """
    token = _parent_id.set(parent_id)
    try:
        yield
    finally:
        _parent_id.reset(token)


# --- Defaults, and what decoding does with a field a line lacks ---------------------
#
# ``timestamp`` and ``id`` default to now and a new id when an event is made.
# A stored line that lacks them must not get those: a missing timestamp makes
# the line corrupt, and a missing id is derived from the line (see
# ``derived_event_id``), the same on every load. So decoding runs with
# ``_missing`` set (in the decoding call's own context, which also keeps
# ``parent_scope`` out) and an item pushed on ``_decodings``; there the
# factories return the sentinels below and count how often they did. The count
# is 0 for lines this library wrote, and then nothing more is done. While no
# decoding runs in any thread (``_decodings`` empty: the common case), the
# factories do not read the context variable.

_missing: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "eventbus_missing", default=None
)
_decodings: list[None] = []  # one item per decoding in progress, in any thread
MISSING_TIMESTAMP: Final = datetime(1, 1, 1, tzinfo=UTC)  # compared by identity
MISSING_ID: Final = "\x00missing id"  # compared by identity
_now = datetime.now  # bound once (see _codec: a method of an imported name)


def _default_timestamp() -> datetime:
    if _decodings:
        missing = _missing.get()
        if missing is not None:
            missing[0] += 1
            return MISSING_TIMESTAMP
    return _now(UTC)


def _default_id() -> str:
    if _decodings:
        missing = _missing.get()
        if missing is not None:
            missing[0] += 1
            return MISSING_ID
    return new_event_id()


def derived_event_id(line: bytes, offset: int, timestamp: datetime) -> str:
    """Return the id of a stored event whose line has none (the seed's format).

    Shaped like :func:`new_event_id` (so it sorts by time): the timestamp's
    Unix milliseconds, then a BLAKE2b hash of the line's bytes (without the
    newline) and its byte offset. The same line at the same place always gets
    the same id; equal lines at two places get two ids.
    """
    digest = hashlib.blake2b(line, digest_size=10, person=offset.to_bytes(8, "big", signed=True))
    bits = int.from_bytes(digest.digest(), "big")  # 80 bits
    ms = max(0, (timestamp - _EPOCH) // _MILLISECOND) & 0xFFFF_FFFF_FFFF
    high = 0x7000 | (bits >> 68)  # version 7, 12 bits
    low = (0b10 << 62) | (bits & ((1 << 62) - 1))  # variant 10, 62 bits
    return f"{ms:012x}{high:04x}{low:016x}"


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One structured event: what happened, when, in which session and where.

    ``Event(event_type=..., session_id=..., message=...)`` is complete:
    ``timestamp`` defaults to now (UTC), ``id`` to a new UUIDv7, and
    ``parent_id`` to the enclosing :func:`parent_scope`. A naive timestamp is
    taken as UTC; an aware one is converted to UTC. Field types and
    ``metadata`` (JSON values only) are checked when the event is published
    or encoded (see :class:`EventEncodeError`), and so are the limits that
    decoding applies too: ``id`` and ``parent_id`` hold no control character
    and at most :data:`MAX_ID_LENGTH` characters, ``metadata`` nests at most
    ``MAX_METADATA_DEPTH`` deep, the encoded event is at most
    ``MAX_LINE_BYTES`` long. Decoding a stored line never
    stamps it with the time it is read: a line without ``timestamp`` is
    invalid, and one without ``id`` gets an id derived from the line and its
    place in the log (see :func:`decode_events`). Events are immutable:
    do not mutate ``metadata`` after publishing. For speed, events are not
    tracked by the cyclic garbage collector (``gc=False``): never put an event
    inside its own metadata.
    """

    event_type: EventType
    session_id: str
    message: str
    timestamp: datetime = msgspec.field(default_factory=_default_timestamp)
    phase: str | None = None
    task_id: str | None = None
    agent_role: str | None = None
    model: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    id: _Id = msgspec.field(default_factory=_default_id)
    parent_id: _Id | None = msgspec.field(default_factory=_parent_id.get)

    def __post_init__(self) -> None:
        timestamp = self.timestamp
        try:
            utc = timestamp.tzinfo is UTC
        except AttributeError:  # not a datetime (free when it is one)
            utc = False
        if not utc:
            if not isinstance(timestamp, datetime):
                raise EventDecodeError(
                    f"timestamp must be a datetime, got {type(timestamp).__name__}"
                )
            timestamp = (
                timestamp.replace(tzinfo=UTC)
                if timestamp.tzinfo is None
                else timestamp.astimezone(UTC)
            )
            msgspec.structs.force_setattr(self, "timestamp", timestamp)
        if type(self.event_type) is not EventType:
            try:
                event_type = EventType(self.event_type)
            except ValueError:
                raise EventDecodeError(
                    f"event_type must be a non-empty string, got {self.event_type!r}"
                ) from None
            msgspec.structs.force_setattr(self, "event_type", event_type)

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a dict of JSON values (the seed's shape, plus ids).

        ``timestamp`` is an ISO 8601 string with its UTC offset.
        """
        return {
            "event_type": self.event_type.value,
            "timestamp": self.timestamp.isoformat(),
            "session_id": self.session_id,
            "message": self.message,
            "phase": self.phase,
            "task_id": self.task_id,
            "agent_role": self.agent_role,
            "model": self.model,
            "metadata": self.metadata,
            "id": self.id,
            "parent_id": self.parent_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Event":
        """Build an event from :meth:`to_dict`'s shape (or the seed's, without ids).

        ``timestamp`` is required (as in the seed). A dict without ``id`` gets
        a new one each time, since a dict has no place in a log to derive one
        from (lines of a log do: see :func:`~eventbus.decode_events`); one
        without ``parent_id`` has none.

        :raises EventDecodeError: naming the bad or missing field when the
            dict does not describe an event (ids included: see :class:`Event`).
        """
        if "parent_id" not in data:
            data = {**data, "parent_id": None}  # never inherit a parent when loading
        missing = [0]
        token = _missing.set(missing)
        _decodings.append(None)
        try:
            event = msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise EventDecodeError(str(exc)) from exc
        finally:
            _decodings.pop()
            _missing.reset(token)
        if missing[0]:
            if event.timestamp is MISSING_TIMESTAMP:
                raise EventDecodeError("Object missing required field `timestamp`")
            msgspec.structs.force_setattr(event, "id", new_event_id())
        for field in ("id", "parent_id"):
            value = getattr(event, field)
            problem = None if value is None else _id_problem(value)
            if problem is not None:
                raise EventDecodeError(f"{field} {problem} - at `$.{field}`")
        return event
