"""The storage of an :class:`~sinks.index.EventIndex` in memory mode: events, kept compact.

:class:`MemoryRows` keeps the newest rows (between :data:`WINDOW` and twice
that many) as the :class:`~eventbus.Event` objects given, so indexing a
batch costs an append and the pages a live dashboard asks for again and
again need no decoding. Older rows are encoded in bulk, :data:`WINDOW` or
more at a time, into a few bytes each:

- the field values are the :class:`~sinks.index._rows.Rows` codes (filled
  in one pass per field for the rows added since they were last needed) and
  the timestamps those of the index's time order (the datetimes given);
- the id as 16 bytes (an id of 32 lowercase hex digits, as
  :func:`~eventbus.new_event_id` makes);
- the message as UTF-8, in one buffer for all rows;
- ``metadata`` and ``parent_id``, unless ``{}`` and ``None``, as msgpack, in
  another buffer, when the types they hold read back equal (JSON's: str
  keys; str, int, bool, None, finite float, list and dict values); an event
  that would not (another id shape, metadata holding a tuple, a set, NaN,
  a datetime ...) is kept whole instead.

A query decodes the encoded rows it returns (all of them in one pass), and
keeps them, the last :data:`CACHE` to :data:`CACHE` times two decoded, in a
list by row (``None`` where not decoded), so a page asked for again costs a
list lookup per event, as when every event was held.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain, compress, islice, repeat
from math import isfinite
from operator import and_, attrgetter, eq, is_, not_
from typing import Any, Final

import msgspec

from eventbus import Event, EventType

from ._postings import Check, columns_of, increasing
from ._rows import Rows, fit

__all__: list[str] = []

WINDOW: Final = 32_768
"""The newest rows, at least this many and fewer than twice, are kept as the events given."""
CACHE: Final = 16384
"""At least this many events decoded lately are kept (at most twice as many)."""

_ID_BYTES: Final = 16
_ID_DIGITS: Final = 2 * _ID_BYTES
_NO_ID: Final = bytes(_ID_BYTES)  # in the place of the id of an event kept whole
_ENCODE_ERRORS: Final = (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError)

_encode = msgspec.msgpack.Encoder().encode
_Extra = tuple[dict[Any, Any], str | None]  # (metadata, parent_id)
_decode_extras = msgspec.msgpack.Decoder(list[_Extra]).decode
_EMPTY: Final[dict[str, Any]] = {}
_get_message = attrgetter("message")
_get_metadata = attrgetter("metadata")
_get_parent_id = attrgetter("parent_id")
_FLAT: Final = frozenset({str, int, bool, type(None)})  # read back equal and of the same type
_JSON: Final = _FLAT | {float, list, dict}
_NUMBERS: Final = _FLAT | {float}
_DICT: Final = {dict}
_STR: Final = {str}
_PARENT: Final = {str, type(None)}
_MAX_DEPTH: Final = 64
_get_id = attrgetter("id")
# Stands in for the event of a dead row until the row is dropped.
_GONE: Final = Event(event_type=EventType.INFO, session_id="", message="", id="", parent_id=None)


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _hex_ids(ids: list[str]) -> bytes | None:
    """The ids as 16 bytes each, if every one is 32 lowercase hex digits; else ``None``."""
    try:
        joined = "".join(ids)
    except TypeError:  # an id that is not a str (events given to add() are not checked)
        return None
    if len(joined) != _ID_DIGITS * len(ids) or min(map(len, ids)) != _ID_DIGITS:
        return None
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        return None
    return raw if raw.hex() == joined else None


def _exact(extras: list[_Extra]) -> bool:
    """Whether every (metadata, parent_id) reads back from msgpack equal, and of the same types.

    That is: metadata a dict with str keys holding str, int, bool, None,
    finite floats, and lists and dicts of those; parent ids str or None. (An
    int msgpack cannot hold, or a str with a lone surrogate, raises when encoded.)
    """
    metadata, parents = zip(*extras, strict=True)
    if (
        set(map(type, metadata)) != _DICT
        or not set(map(type, parents)) <= _PARENT
        or not set(map(type, chain.from_iterable(metadata))) <= _STR
    ):
        return False
    values = list(chain.from_iterable(map(dict.values, metadata)))
    kinds = set(map(type, values))
    if kinds <= _FLAT:
        return True
    if not kinds <= _JSON:
        return False
    if kinds <= _NUMBERS:  # floats are the only others: finite if their sum is
        return isfinite(sum(compress(values, map(is_, map(type, values), repeat(float)))))
    return all(map(_exact_value, (v for v in values if type(v) not in _FLAT)))


def _exact_value(value: Any, depth: int = 0) -> bool:
    """Whether a float, list or dict (and what it holds) reads back from msgpack equal."""
    kind = type(value)
    if kind is float:
        return isfinite(value)
    if depth > _MAX_DEPTH:
        return False
    if kind is list:
        items: Iterable[Any] = value
    else:
        if not set(map(type, value)) <= _STR:
            return False
        items = value.values()
    for item in items:
        kind = type(item)
        if kind not in _FLAT and (kind not in _JSON or not _exact_value(item, depth + 1)):
            return False
    return True


def _ends(ends: array[int], lengths: Iterable[int], size: int) -> array[int]:
    """``ends`` (widened if the buffer's new ``size`` needs it), extended by ``lengths``."""
    ends = fit(ends, size)
    ends.fromlist(list(islice(accumulate(lengths, initial=ends[-1]), 1, None)))
    return ends


class MemoryRows(Rows):
    """The events of an index in memory mode: the newest as given, older ones encoded.

    Rows are positions, as in the index: those before :attr:`base` are
    encoded, the rest are :attr:`young` (``young[i]`` is row ``base + i``).
    """

    def __init__(self, fields: int) -> None:
        super().__init__(fields)
        self.young: list[Event] = []
        self.full = 2 * WINDOW  # how many young rows make settle() encode the older half
        self.base = 0
        self.coded = 0  # rows whose field values are in the columns
        self.ids = bytearray()  # 16 bytes per encoded row
        self.text = bytearray()  # the messages of encoded rows, UTF-8
        self.text_ends: array[int] = array("B", [0])  # row p's message: text[ends[p]:ends[p+1]]
        self.extra = bytearray()  # msgpack (metadata, parent_id) of the rows having either
        self.extra_ends: array[int] = array("B", [0])
        self.whole: dict[int, Event] = {}  # encoded rows kept as events: they would not read back
        # By encoded row: its event if decoded lately (or kept whole), else None.
        self.decoded: list[Event | None] = []
        self.cached: array[int] = array("q")  # the rows decoded lately, oldest first

    def __len__(self) -> int:
        return self.base + len(self.young)

    # --- adding, encoding and compacting ----------------------------------------------------

    def append(
        self, events: list[Event], columns: Sequence[Sequence[Any]] | None = None
    ) -> list[list[int]] | None:
        """Add rows for ``events``: their codes now if ``columns`` (their values per field)
        are given (then return them, per field), else when first needed."""
        coded = None
        if columns is not None and self.coded == len(self):
            coded = [
                self._append_codes(field, values)
                for field, values in enumerate(columns[: len(self.columns)])
            ]
            self.coded += len(events)
        self.young.extend(events)
        return coded

    def settle(self) -> None:
        """Encode the oldest young rows once :attr:`full` are held (after a batch)."""
        if len(self.young) >= self.full:
            self._catch_up()
            self._encode(len(self.young) - WINDOW)

    def _catch_up(self) -> None:
        """Fill the codes of the rows added since they were last needed, a field at a time."""
        rows = self.base + len(self.young)
        if self.coded < rows:
            for field, values in enumerate(columns_of(self.young[self.coded - self.base :])):
                self._append_codes(field, values)
            self.coded = rows

    def _encode(self, count: int) -> None:
        """Encode the oldest ``count`` young rows (their codes filled) and let their events go."""
        events = self.young[:count]
        first = self.base
        raw = _hex_ids(list(map(_get_id, events)))
        if raw is None:
            raw = b"".join(self._raw_id(first + i, event) for i, event in enumerate(events))
        self.ids += raw
        self._encode_messages(first, events)
        self._encode_extras(first, events)
        self.decoded.extend(repeat(None, count))
        for position, event in self.whole.items():
            if position >= first:
                self.decoded[position] = event
        del self.young[:count]
        self.base += count

    def _raw_id(self, position: int, event: Event) -> bytes:
        raw = _hex_ids([event.id])
        if raw is None:
            self.whole[position] = event
            return _NO_ID
        return raw

    def _encode_messages(self, first: int, events: list[Event]) -> None:
        messages = list(map(_get_message, events))
        try:
            joined: str | None = "".join(messages)
        except TypeError:  # a message that is not a str (add() does not check events)
            joined = None
        lengths: Iterable[int]
        if joined is not None and joined.isascii():
            data = joined.encode("ascii")
            lengths = map(len, messages)
        else:
            encoded = [self._encode_text(first + i, event) for i, event in enumerate(events)]
            data = b"".join(encoded)
            lengths = map(len, encoded)
        self.text += data
        self.text_ends = _ends(self.text_ends, lengths, len(self.text))

    def _encode_text(self, position: int, event: Event) -> bytes:
        if type(event.message) is not str:
            self.whole[position] = event
            return b""
        return event.message.encode("utf-8", "surrogatepass")

    def _encode_extras(self, first: int, events: list[Event]) -> None:
        n = len(events)
        metadata = list(map(_get_metadata, events))
        parents = list(map(_get_parent_id, events))
        if set(map(type, metadata)) == _DICT and "" not in parents:  # truthiness tells
            having = list(compress(range(n), metadata))
            if any(parents):
                having = sorted({*having, *compress(range(n), parents)})
        else:  # metadata that is not a dict (add() does not check events)
            plain = map(and_, map(eq, metadata, repeat(_EMPTY)), map(is_, parents, repeat(None)))
            having = list(compress(range(n), map(not_, plain)))
        if not having:
            ends = self.extra_ends
            ends.frombytes(bytes(array(ends.typecode, [ends[-1]]) * n))
            return
        extras = [(metadata[i], parents[i]) for i in having]
        blobs: list[bytes] = []
        try:
            if _exact(extras):
                blobs = list(map(_encode, extras))
        except _ENCODE_ERRORS:
            blobs = []
        if not blobs:  # some would not read back equal: keep those whole
            blobs = [
                self._encode_extra(first + i, events[i], extra)
                for i, extra in zip(having, extras, strict=True)
            ]
        if len(having) == n:
            lengths: Iterable[int] = map(len, blobs)
        else:
            sizes = [0] * n
            for i, blob in zip(having, blobs, strict=True):
                sizes[i] = len(blob)
            lengths = sizes
        self.extra += b"".join(blobs)
        self.extra_ends = _ends(self.extra_ends, lengths, len(self.extra))

    def _encode_extra(self, position: int, event: Event, extra: _Extra) -> bytes:
        try:
            if _exact([extra]):
                return _encode(extra)
        except _ENCODE_ERRORS:
            pass  # kept whole, below
        self.whole[position] = event
        return b""

    def forget(self, positions: Iterable[int]) -> None:
        """Let the events of dead rows (evicted, duplicates) go, until :meth:`keep` drops them."""
        self._catch_up()  # their codes stay in the columns until then
        base, young = self.base, self.young
        for position in positions:
            if position >= base:
                young[position - base] = _GONE

    def truncate(self, rows: int) -> None:
        """Forget every row from ``rows`` on (a batch that failed part way: young rows)."""
        assert rows >= self.base
        del self.young[rows - self.base :]
        self.coded = min(self.coded, rows)
        super().truncate(rows)

    def keep(self, live: Sequence[int]) -> None:
        """Keep only the rows at ``live`` (increasing), renumbered from 0 (a compaction)."""
        self._catch_up()
        base = self.base
        split = bisect_left(live, base)
        old, young = live[:split], live[split:]
        self.young = [self.young[p - base] for p in young]
        whole = self.whole
        self.whole = {i: whole[p] for i, p in enumerate(old) if p in whole} if whole else {}
        ids, size = self.ids, _ID_BYTES
        self.ids = bytearray().join([ids[size * p : size * p + size] for p in old])
        self.text, self.text_ends = _kept(self.text, self.text_ends, old)
        self.extra, self.extra_ends = _kept(self.extra, self.extra_ends, old)
        self.base, self.coded = len(old), len(live)
        self.decoded = [None] * self.base
        for position, event in self.whole.items():
            self.decoded[position] = event
        self.cached = array("q")
        super().keep(live)

    # --- field values and ids ---------------------------------------------------------------

    def values_at(self, field: int, positions: Sequence[int]) -> list[Any]:
        """Return the values of ``field`` at ``positions``."""
        self._catch_up()
        return super().values_at(field, positions)

    def value_at(self, field: int, position: int) -> Any:
        """Return the value of ``field`` at ``position``."""
        if position >= self.coded:
            self._catch_up()
        return self.values[field][self.columns[field][position]]

    def holds(self, field: int, value: Any) -> bool:
        """Whether some row (live or not) was given ``value`` in ``field``."""
        self._catch_up()
        return super().holds(field, value)

    def equals(self, field: int, value: Any) -> Check:
        """A check keeping the positions whose ``field`` is ``value`` (a value held)."""
        self._catch_up()
        return super().equals(field, value)

    def one_of(self, field: int, values: frozenset[Any]) -> Check:
        """A check keeping the positions whose ``field`` is any of ``values``."""
        self._catch_up()
        return super().one_of(field, values)

    def id_at(self, position: int) -> str:
        """Return the id of the event at ``position``."""
        if position >= self.base:
            return self.young[position - self.base].id
        event = self.whole.get(position)
        if event is not None:
            return event.id
        start = _ID_BYTES * position
        return self.ids[start : start + _ID_BYTES].hex()

    def ids_at(self, positions: Iterable[int]) -> list[str]:
        """Return the ids of the events at ``positions``."""
        return list(map(self.id_at, positions))

    def _hashes(self) -> array[int]:
        hashes, base = self.hashes, self.base
        have = len(hashes)
        if have < base:  # encoded rows: their ids from the 16 bytes, a pass in C
            digits = self.ids[_ID_BYTES * have : _ID_BYTES * base].hex()
            ends = range(_ID_DIGITS, len(digits) + 1, _ID_DIGITS)
            ids = list(map(digits.__getitem__, map(slice, range(0, len(digits), _ID_DIGITS), ends)))
            for position, event in self.whole.items():
                if position >= have:
                    ids[position - have] = event.id
            hashes.fromlist(list(map(hash, ids)))
        if len(hashes) < len(self):
            hashes.fromlist(list(map(hash, map(_get_id, self.young[len(hashes) - base :]))))
        return hashes

    # --- events -------------------------------------------------------------------------------

    def events_at(self, positions: Sequence[int], ts: Sequence[Any]) -> list[Event]:
        """Return the events at ``positions`` (``ts``: the rows' timestamps), decoding as needed."""
        if not positions:
            return []
        base, young = self.base, self.young
        if type(positions) is range:
            start, stop = positions.start, positions.stop
            if start >= base:
                return young[start - base : stop - base]
            if stop > base:  # the older ones, then the young ones
                return self._older_at(range(start, base), ts) + young[: stop - base]
        elif positions[-1] >= base:
            if min(positions) >= base:
                return list(map(young.__getitem__, map((-base).__add__, positions)))
            if increasing(positions):  # the older ones, then the young ones
                split = bisect_left(positions, base)
                older = self._older_at(positions[:split], ts)
                return older + list(map(young.__getitem__, map((-base).__add__, positions[split:])))
        return self._older_at(positions, ts)

    def _older_at(self, positions: Sequence[int], ts: Sequence[Any]) -> list[Event]:
        """:meth:`events_at` for positions mostly before :attr:`base`: decoded lately, or now."""
        base, young, decoded = self.base, self.young, self.decoded
        try:
            found: list[Any] = list(map(decoded.__getitem__, positions))
        except IndexError:  # some are young (positions out of order: late events)
            found = [decoded[p] if p < base else young[p - base] for p in positions]
        if all(found):  # events are true
            return found
        missing = list(compress(range(len(found)), map(is_, found, repeat(None))))
        rows = [positions[i] for i in missing]
        events = self._decode(rows, ts)
        for i, event in zip(missing, events, strict=True):
            found[i] = event
        for position, event in zip(rows, events, strict=True):
            decoded[position] = event
        cached = self.cached
        cached.fromlist(rows)
        if len(cached) > 2 * CACHE:  # forget the oldest
            drop = len(cached) - CACHE
            for position in cached[:drop]:
                decoded[position] = None
            del cached[:drop]
        return found

    def _decode(self, rows: list[int], ts: Sequence[Any]) -> list[Event]:
        """Decode the encoded rows ``rows`` (none kept whole) into events."""
        types, sessions, phases, tasks, roles, models = (
            Rows.values_at(self, field, rows) for field in range(len(self.columns))
        )
        text, text_ends = self.text, self.text_ends
        messages = [
            text[text_ends[p] : text_ends[p + 1]].decode("utf-8", "surrogatepass") for p in rows
        ]
        extra, extra_ends = self.extra, self.extra_ends
        having = [p for p in rows if extra_ends[p + 1] != extra_ends[p]]
        extras: dict[int, _Extra] = {}
        if having:
            blobs = b"".join([extra[extra_ends[p] : extra_ends[p + 1]] for p in having])
            decoded = _decode_extras(_array_header(len(having)) + blobs)
            extras = dict(zip(having, decoded, strict=True))
        ids, size = self.ids, _ID_BYTES
        events = []
        for p, event_type, session_id, message, phase, task_id, role, model in zip(
            rows, types, sessions, messages, phases, tasks, roles, models, strict=True
        ):
            metadata, parent_id = extras.get(p) or ({}, None)
            events.append(
                Event(
                    event_type=event_type,
                    session_id=session_id,
                    message=message,
                    timestamp=ts[p],
                    phase=phase,
                    task_id=task_id,
                    agent_role=role,
                    model=model,
                    metadata=metadata,
                    id=ids[size * p : size * p + size].hex(),
                    parent_id=parent_id,
                )
            )
        return events


def _kept(data: bytearray, ends: array[int], rows: Sequence[int]) -> tuple[bytearray, array[int]]:
    """The pieces of ``data`` (row p's: ``data[ends[p]:ends[p+1]]``) of ``rows``, and their ends."""
    if not rows:
        return bytearray(), array("B", [0])
    if type(rows) is range:
        a, b = rows.start, rows.stop
        start = ends[a]
        kept = array(ends.typecode, [end - start for end in ends[a : b + 1]] or [0])
        return data[start : ends[b]], kept
    pieces = [data[ends[p] : ends[p + 1]] for p in rows]
    joined = bytearray().join(pieces)
    return joined, _ends(array("B", [0]), map(len, pieces), len(joined))
