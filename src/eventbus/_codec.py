"""Encoding and decoding events: one JSON object per line, via msgspec.

One encoder and one decoder are made once and reused. The bus encodes each
event exactly once, when it is published, and hands sinks an
:class:`EventBatch` that carries those bytes: a sink that needs JSON calls
:func:`encode_jsonl` and never re-encodes.

Limits, the same when publishing and when reading, so that what is
published always reads back:

- an ``id`` or ``parent_id`` holds at most :data:`MAX_ID_LENGTH` (256)
  characters and no control character (Unicode category Cc: U+0000-U+001F,
  U+007F-U+009F), so it can never forge a field after ``id:`` in
  server-sent events;
- ``metadata`` nests at most :data:`MAX_METADATA_DEPTH` (64) dicts and
  lists deep, itself included (decoding refuses what Python cannot recurse
  into, which is deeper still);
- an encoded event is at most :data:`MAX_LINE_BYTES` (16 MiB) long: readers
  treat a longer line as corrupt without holding it in memory.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from operator import attrgetter
from typing import Any, Final, TypeVar, overload
from uuid import UUID

import msgspec

from ._errors import EventDecodeError, EventEncodeError
from ._event import (
    MAX_ID_LENGTH,
    MISSING_ID,
    MISSING_TIMESTAMP,
    Event,
    EventType,
    _decodings,
    _id_problem,
    _missing,
    _parent_id,
    derived_event_id,
)

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_METADATA_DEPTH",
    "EventBatch",
    "decode_event",
    "decode_events",
    "encode_event",
    "encode_jsonl",
    "encoded_lines",
]

_encoder = msgspec.json.Encoder()
_encode_unchecked = _encoder.encode
_decoder = msgspec.json.Decoder(Event)
_decode = _decoder.decode
_decode_lines = _decoder.decode_lines
_T = TypeVar("_T")

MAX_METADATA_DEPTH: Final = 64
"""How deep ``metadata`` may nest: a value sits inside at most 64 dicts and lists,
``metadata`` itself included. Deeper metadata is refused at publish."""

MAX_LINE_BYTES: Final = 16 * 1024 * 1024
"""The longest encoded event (16 MiB, newline excluded). Publishing refuses a
longer one; readers skip and count a longer line as corrupt, reading it in
bounded chunks, never whole. Store large content as an artifact."""

_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError)  # RecursionError: deep nesting
_get_id = attrgetter("id")
_get_parent_id = attrgetter("parent_id")
_passed_parent: list[str | None] = [None]  # the last parent id that passed the checks


# --- encoding: what is refused ------------------------------------------------------
#
# msgspec encodes more than JSON holds, silently: NaN and infinities as null,
# int keys as strings, bytes as base64, sets as lists, dataclasses and Structs
# as objects. Such an event would not read back as it was published (or not at
# all), so it is refused. The checks run on every publish: each field's type
# first (plain attribute and type() comparisons), then msgspec encodes, then
# metadata is walked only when it holds something other than str, int, bool
# and None values under str keys.

_NONE: Final = type(None)
_FLAT: Final = frozenset({str, int, bool, _NONE})  # values needing no further look
_STR: Final = frozenset({str})
_isfinite = math.isfinite
# Leaves taken as they are (str, int) or written as strings (datetime, date,
# time, UUID, Decimal); subclasses included.
_ACCEPTED: Final = (str, int, datetime, date, time, UUID, Decimal)
_TEXT_FIELDS: Final = ("session_id", "message", "id")
_OPTIONAL_TEXT_FIELDS: Final = ("phase", "task_id", "agent_role", "model", "parent_id")


class _Refused(TypeError):
    """A field or metadata value that the checks refuse: where it is, and why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} {reason}")


def _encode(event: Event) -> bytes:
    """Encode a published event, refusing wrong field types and what JSON cannot hold.

    Raises ``_Refused`` (a ``TypeError``), or msgspec's own error, which
    :func:`_explain_encode_error` turns into an :class:`EventEncodeError`.
    """
    if (
        type(event.session_id) is not str
        or type(event.message) is not str
        or type(event.id) is not str
        or type(event.timestamp) is not datetime
        or type(event.metadata) is not dict
        or (event.phase is not None and type(event.phase) is not str)
        or (event.task_id is not None and type(event.task_id) is not str)
        or (event.agent_role is not None and type(event.agent_role) is not str)
        or (event.model is not None and type(event.model) is not str)
        or (event.parent_id is not None and type(event.parent_id) is not str)
    ):
        problem = _field_problem(event)  # str enums and dict subclasses pass
        if problem is not None:
            raise _Refused(*problem)
    # ids: those this library makes are ASCII letters and digits (bytes.isalnum is a
    # table lookup per byte, quicker than str.isprintable); any other id is looked at
    # closely. Many events share a parent: the last parent id passed is not looked at
    # again (a str never changes, so the same object is the same id).
    ident = event.id
    if not ident.encode().isalnum() or len(ident) > MAX_ID_LENGTH:
        why = _id_problem(ident)
        if why is not None:
            raise _Refused("id", why)
    parent = event.parent_id
    if parent is not None and parent is not _passed_parent[0]:
        if not parent.encode().isalnum() or len(parent) > MAX_ID_LENGTH:
            why = _id_problem(parent)
            if why is not None:
                raise _Refused("parent_id", why)
        _passed_parent[0] = parent  # threads may race here: any value stored has passed
    line = _encode_unchecked(event)
    if len(line) > MAX_LINE_BYTES:
        raise _Refused("the encoded event", _too_long(len(line)))
    metadata = event.metadata
    for key, value in metadata.items():  # flat metadata: a loop is the quickest check
        kind = type(value)
        if type(key) is not str or (
            kind not in _FLAT and (kind is not float or not _isfinite(value))
        ):
            if not _holds_json(metadata):  # nested, or refused: the full walk
                problem = _find_refused(metadata, "metadata") or ("metadata", "is refused")
                raise _Refused(*problem)
            break
    return line


def _too_long(size: int) -> str:
    return (
        f"is {size} bytes long, over the {MAX_LINE_BYTES} bytes a log line may hold "
        "(MAX_LINE_BYTES)"
    )


def encode_event(event: Event) -> bytes:
    """Return ``event`` as one line of compact JSON, without the trailing newline.

    Newlines and other line separators inside strings are escaped or kept
    inside the string, so the result never contains a ``\\n`` byte. The
    checks are those of publishing (see :class:`EventEncodeError`).

    :raises EventEncodeError: naming the field, or the path in ``metadata``,
        of a value of the wrong type or one JSON cannot hold; an ``id`` or
        ``parent_id`` with a control character or over :data:`MAX_ID_LENGTH`
        characters; ``metadata`` nested deeper than :data:`MAX_METADATA_DEPTH`;
        an encoding over :data:`MAX_LINE_BYTES`.
    """
    try:
        return _encode(event)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _explain_encode_error(event, exc) from exc


def _explain_encode_error(event: Event, exc: Exception) -> EventEncodeError:
    """The :class:`EventEncodeError` for ``exc``, raised by :func:`_encode` for ``event``."""
    if isinstance(exc, _Refused):
        path, reason = exc.path, exc.reason
    else:
        found = _field_problem(event) or _find_refused(event.metadata, "metadata")
        path, reason = found or ("the event", str(exc))
    return EventEncodeError(event.id, str(event.event_type.value), path, reason)


def _field_problem(event: Event) -> tuple[str, str] | None:
    """Return (field, reason) for the first field of a type the event cannot hold."""
    for name in _TEXT_FIELDS + _OPTIONAL_TEXT_FIELDS:
        value = getattr(event, name)
        if value is None and name in _OPTIONAL_TEXT_FIELDS:
            continue
        if not isinstance(value, str):
            expected = "a str or None" if name in _OPTIONAL_TEXT_FIELDS else "a str"
            return name, f"must be {expected}, got {_describe(value)}"
        try:
            _encode_unchecked(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return name, f"cannot be encoded ({exc})"
    if type(event.timestamp) is not datetime:  # msgspec encodes no subclass
        return "timestamp", f"must be a datetime, got {_describe(event.timestamp)}"
    if not isinstance(event.metadata, dict):
        return "metadata", f"must be a dict, got {_describe(event.metadata)}"
    if not isinstance(event.event_type, EventType):
        return "event_type", f"must be an EventType, got {_describe(event.event_type)}"
    return None


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _holds_json(metadata: dict[Any, Any]) -> bool:
    """Whether every value in ``metadata`` (nested) is JSON or converted to it as documented.

    The quick walk, without paths: :func:`_find_refused` says where, once
    this has said no.
    """
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if type(key) is not str and not isinstance(key, str):
                    return False
            items: Iterable[Any] = value.values()
        else:
            items = value  # a list or tuple
        for item in items:
            kind = type(item)
            if kind in _FLAT:
                continue
            if kind is float:
                if not _isfinite(item):
                    return False
            elif kind is list or kind is dict or isinstance(item, dict | list | tuple):
                if depth >= MAX_METADATA_DEPTH:
                    return False
                stack.append((item, depth + 1))
            elif _leaf_problem(item) is not None:
                return False
    return True


def _leaf_problem(value: Any) -> str | None:
    """Why ``value`` (not a dict, list or tuple) is refused in metadata, or ``None``."""
    if isinstance(value, Enum):
        if type(value.value) in (str, int):
            return None
        return f"is the enum member {value!r}, whose value is not a str or an int"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"is {value!r}, which JSON cannot hold (msgspec would write null)"
    if isinstance(value, _ACCEPTED) or value is None:
        return None
    kind = type(value).__name__
    return f"holds a value of type {kind!r}, which JSON cannot hold"


def _find_refused(value: Any, path: str, depth: int = 1) -> tuple[str, str] | None:
    """Return (path, reason) of the first value refused in metadata, or ``None``."""
    if isinstance(value, dict | list | tuple) and depth > MAX_METADATA_DEPTH:
        return path, (
            f"is nested deeper than the {MAX_METADATA_DEPTH} levels of dicts and lists "
            "metadata may hold (MAX_METADATA_DEPTH)"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                kind = type(key).__name__
                return path, f"has the key {key!r} of type {kind!r}; JSON keys are str"
            found = _find_refused(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_refused(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    problem = _leaf_problem(value)
    if problem is None:
        try:
            _encode_unchecked(value)
        except (TypeError, ValueError, OverflowError) as exc:
            kind = type(value).__name__
            problem = f"holds a value of type {kind!r} that cannot be encoded ({exc})"
    return None if problem is None else (path, problem)


# --- decoding: lines without timestamp or id ------------------------------------------
#
# Bound methods taken once, for the per-call cost: CPython compiles
# ``name.method()`` on a name bound by an import without its method-call
# fast path.

_push_decoding = _decodings.append
_pop_decoding = _decodings.pop
_set_missing = _missing.set
_reset_missing = _missing.reset
_current_parent_id = _parent_id.get


def _counting(decode: Callable[[Any], _T], data: Any) -> tuple[_T, int]:
    """Run ``decode(data)`` with missing timestamps and ids made sentinels; count them.

    Decoding never inherits a parent id from the caller's context (see
    ``parent_scope``): an event stored without ``parent_id`` had none.
    """
    missing = [0]
    _push_decoding(None)  # see _event: the default factories look at _missing
    try:
        if _current_parent_id() is None:
            token = _set_missing(missing)
            try:
                result = decode(data)
            finally:
                _reset_missing(token)
        else:
            result = contextvars.Context().run(_counting_in_context, decode, data, missing)
    finally:
        _pop_decoding()
    return result, missing[0]


def _counting_in_context(decode: Callable[[Any], _T], data: Any, missing: list[int]) -> _T:
    _set_missing(missing)
    return decode(data)


def _decode_reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep to decode"
    return str(exc)


def _check_ids(events: Iterable[Event]) -> None:
    """Raise :class:`EventDecodeError` for the first id or parent id publishing refuses."""
    for event in events:
        for field in ("id", "parent_id"):
            value = getattr(event, field)
            if value is not None and value is not MISSING_ID:
                problem = _id_problem(value)
                if problem is not None:
                    raise EventDecodeError(f"{field} {problem} - at `$.{field}`")


def _complete(event: Event, line: bytes, offset: int) -> Event:
    """Refuse ``event`` if its line had no timestamp; derive its id if it had none."""
    if event.timestamp is MISSING_TIMESTAMP:
        raise EventDecodeError("Object missing required field `timestamp`")
    if event.id is MISSING_ID:
        if line.endswith(b"\n"):
            line = line[:-1]
        msgspec.structs.force_setattr(event, "id", derived_event_id(line, offset, event.timestamp))
    return event


def decode_event(data: bytes | bytearray | memoryview | str, *, offset: int = 0) -> Event:
    """Decode one JSON line into an :class:`Event`.

    An unknown ``event_type`` is kept (see :class:`EventType`). A line
    without ``parent_id`` has none. A line without ``id`` (the seed's format)
    gets one derived from its bytes and ``offset`` (see
    :func:`decode_events`), the same on every decode.

    :param offset: the line's byte offset in its log.
    :raises EventDecodeError: saying where the line is invalid, also when it
        has no ``timestamp`` (a line is never stamped with the time it is read),
        when it is longer than :data:`MAX_LINE_BYTES`, nests too deep for
        Python to decode, or has an ``id`` or ``parent_id`` publishing refuses.
    """
    if len(data) > MAX_LINE_BYTES:
        raise EventDecodeError(f"the line {_too_long(len(data))}")
    try:
        event, missing = _counting(_decode, data)
    except _DECODE_ERRORS as exc:
        raise EventDecodeError(_decode_reason(exc)) from exc
    ident, parent = event.id, event.parent_id
    if not ident.encode().isalnum() or (parent is not None and not parent.encode().isalnum()):
        _check_ids((event,))
    if missing:
        line = data.encode() if isinstance(data, str) else bytes(data)
        event = _complete(event, line, offset)
    return event


def decode_events(data: bytes | bytearray | memoryview, *, offset: int = 0) -> list[Event]:
    """Decode newline-delimited JSON (every line complete and valid) into events.

    Fast path for whole chunks of a log; raises :class:`EventDecodeError` on
    the first invalid line (one without ``timestamp`` included), so callers
    that tolerate corruption fall back to :func:`decode_event` line by line.
    A line without ``id`` (the seed's format) gets one derived from its bytes
    and its byte offset in the log (``offset`` is where ``data`` starts
    there), the same on every load, and ordered by time like other ids.
    """
    try:
        events, missing = _counting(_decode_lines, data)
    except _DECODE_ERRORS as exc:
        raise EventDecodeError(_decode_reason(exc)) from exc
    # ids: one look at them all joined (the common case: ASCII letters and digits);
    # no parent id at all is the common case too (b"".isalnum() is False)
    parents = "".join(filter(None, map(_get_parent_id, events))).encode()
    if not "".join(map(_get_id, events)).encode().isalnum() or (parents and not parents.isalnum()):
        _check_ids(events)
    if not missing:
        return events
    events = []  # some line lacks a timestamp or an id: line by line, with offsets
    position = offset
    for raw in bytes(data).split(b"\n"):
        if raw.strip(b" \t\r"):
            try:
                events.append(decode_event(raw, offset=position))
            except EventDecodeError as exc:
                raise EventDecodeError(exc.reason, where=f"line at byte {position}") from exc
        position += len(raw) + 1
    return events


class EventBatch(Sequence[Event]):
    """A batch of events, as the bus hands it to sinks, with their encoded lines.

    It is a read-only sequence of :class:`Event`; ``lines[i]`` is the JSON
    encoding of ``self[i]`` (no newline), made once when it was published.
    """

    __slots__ = ("_events", "_lines")

    def __init__(self, events: Sequence[Event], lines: Sequence[bytes] | None = None) -> None:
        if lines is None:
            lines = [encode_event(event) for event in events]
        elif len(lines) != len(events):
            raise ValueError(f"{len(events)} events but {len(lines)} encoded lines")
        self._events = events
        self._lines = lines

    @property
    def lines(self) -> Sequence[bytes]:
        """The JSON encoding of each event, in order, without newlines."""
        return self._lines

    def filter(self, predicate: Callable[[Event], bool]) -> EventBatch:
        """Return the batch of events for which ``predicate`` is true."""
        keep = [i for i, event in enumerate(self._events) if predicate(event)]
        if len(keep) == len(self._events):
            return self
        return EventBatch([self._events[i] for i in keep], [self._lines[i] for i in keep])

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> EventBatch: ...
    def __getitem__(self, index: int | slice) -> Event | EventBatch:
        if isinstance(index, slice):
            return EventBatch(self._events[index], self._lines[index])
        return self._events[index]

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __repr__(self) -> str:
        return f"EventBatch({len(self._events)} events)"


def encoded_lines(events: Iterable[Event]) -> Sequence[bytes]:
    """Return the JSON line of each event, reusing the bus's encoding when there is one."""
    if isinstance(events, EventBatch):
        return events.lines
    return [encode_event(event) for event in events]


def encode_jsonl(events: Iterable[Event]) -> bytes:
    """Return the events as JSON Lines: one object per line, each ending in ``\\n``."""
    lines = encoded_lines(events)
    if not lines:
        return b""
    return b"\n".join(lines) + b"\n"
