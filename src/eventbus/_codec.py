"""Encoding and decoding events: one JSON object per line, via msgspec.

One encoder and one decoder are made once and reused. The bus encodes each
event exactly once, when it is published, and hands sinks an
:class:`EventBatch` that carries those bytes: a sink that needs JSON calls
:func:`encode_jsonl` and never re-encodes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import msgspec

from ._errors import EventDecodeError, EventEncodeError
from ._event import Event, _parent_id

__all__ = [
    "EventBatch",
    "decode_event",
    "decode_events",
    "encode_event",
    "encode_jsonl",
    "encoded_lines",
]

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_decoder = msgspec.json.Decoder(Event)
_decode = _decoder.decode
_decode_lines = _decoder.decode_lines
# Decoding never inherits a parent id from the caller's context (see
# ``parent_scope``): an event stored without ``parent_id`` had none.


def encode_event(event: Event) -> bytes:
    """Return ``event`` as one line of compact JSON, without the trailing newline.

    Newlines and other line separators inside strings are escaped or kept
    inside the string, so the result never contains a ``\\n`` byte.
    Raises :class:`EventEncodeError` naming the metadata key that holds a
    value JSON cannot represent.
    """
    try:
        return _encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _explain_encode_error(event, exc) from exc


def _explain_encode_error(event: Event, exc: Exception) -> EventEncodeError:
    path, reason = _find_unencodable(event.metadata, "metadata")
    if not path:  # not in metadata: a field of the wrong type
        path, reason = "the event", str(exc)
    return EventEncodeError(event.id, str(event.event_type.value), path, reason)


def _find_unencodable(value: Any, path: str) -> tuple[str, str]:
    """Return (path, reason) of the first value that JSON cannot hold, or ("", "")."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unencodable(item, f"{path}[{key!r}]")
            if found[0]:
                return found
        return "", ""
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]")
            if found[0]:
                return found
        return "", ""
    try:
        _encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return path, f"holds a value of type {type(value).__name__!r} that JSON cannot hold ({exc})"
    return "", ""


def decode_event(data: bytes | bytearray | memoryview | str) -> Event:
    """Decode one JSON line into an :class:`Event`.

    An unknown ``event_type`` is kept (see :class:`EventType`). Raises
    :class:`EventDecodeError` saying where the line is invalid.
    """
    try:
        if _parent_id.get() is None:
            return _decode(data)
        return contextvars.Context().run(_decode, data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from exc


def decode_events(data: bytes | bytearray | memoryview) -> list[Event]:
    """Decode newline-delimited JSON (every line complete and valid) into events.

    Fast path for whole chunks of a log; raises :class:`EventDecodeError` on
    the first invalid line, so callers that tolerate corruption fall back to
    :func:`decode_event` line by line.
    """
    try:
        if _parent_id.get() is None:
            return _decode_lines(data)
        return contextvars.Context().run(_decode_lines, data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from exc


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
