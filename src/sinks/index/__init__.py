"""The in-memory query index: :class:`EventIndex`, a sink that answers queries without scanning.

Subscribe an :class:`EventIndex` to a bus and it indexes the events of every
session it receives. It answers the seed's ``get_events`` filters (plus
``session_id`` and ``model``), ``get_latest``, ``count``, a paged
:meth:`EventIndex.query` and token/cost aggregates (:class:`TokenUsage`), each
at a cost in proportion to what it returns, not to how many events it holds.

Order. Results come in *time order*: by ``timestamp``, and events with equal
timestamps by ``id`` (ids sort by creation). The order depends only on the
events, never on when they arrived, so an index rebuilt from the JSONL logs
(:meth:`EventIndex.from_workspace`) answers every query exactly like the live
one, an event that arrives late takes its place in time, and a paging cursor
(``after=``) means the same in both.

How. Each event gets a row (its position). For each field, and for each
(session, type) pair, the index keeps *postings*: per value, the positions of
the events holding it, in time order. A query walks the smallest candidate
list (a posting cut to the time range by bisection, or the time order of all
events) and checks the other conditions on that list only; with a ``limit`` it
stops once the page is full. Events normally arrive in time order, so keeping
postings current is an append per posting; a late event is inserted in place
(the time order is then held in chunks, so the insert copies a chunk at most,
never the whole order; a posting moves its entries newer than the event with
one memmove), and many late ones (or a rebuild) are appended and sorted once. An event the
index holds (same id and timestamp) is skipped: an event in order cannot be
one, so only late ones are checked. Token usage is kept per response and
folded into per-session, -model, -role and -task totals when read.

Memory. By default events are held in memory, compactly: the newest 32,768
to 65,536 as the :class:`~eventbus.Event` objects given (what a live
dashboard asks for again and again; indexing them is an append), older ones
encoded 32,768 at a time (field values as small codes, the id as 16 bytes,
the message as UTF-8, metadata and parent id as msgpack: about 210 bytes an
event all told at 1M small events, against about 600 as objects; about 1 µs
an event) and decoded when a query returns them; the last 16,384
to 32,768 decoded are kept for the pages asked for again. An event whose
metadata would not read back equal (a tuple, a set, NaN, a datetime ...) or
whose id is not 32 lowercase hex digits is kept as given. Queries return
events equal to those added. ``max_events`` bounds the count: the oldest
events (in time order) are evicted and counted, and their rows compacted away
in batches. ``low_memory=True`` holds no events at all, only where each one is
in its JSONL log, the postings and interned field values; queries read the
events they return back from the logs.

Loading. :meth:`EventIndex.add_log` indexes a log's complete lines from a byte
offset (again later, for what it gained); :meth:`EventIndex.from_workspace`
and ``sinks.workspace.Workspace`` load through it.

Errors::

    EventBusError
    └── EventIndexError
        ├── IndexArgumentError (ValueError)
        ├── UnknownEventIdError (LookupError)
        ├── LocationRequiredError
        └── StaleLogError

An :class:`EventIndex` is not thread-safe: use it from one thread (the bus's
event loop, or the thread that owns it).
"""

from ._index import (
    EventIndex,
    EventIndexError,
    IndexArgumentError,
    LocationRequiredError,
    StaleLogError,
    TokenUsage,
    UnknownEventIdError,
    UsageField,
)

__all__ = [
    "EventIndex",
    "EventIndexError",
    "IndexArgumentError",
    "LocationRequiredError",
    "StaleLogError",
    "TokenUsage",
    "UnknownEventIdError",
    "UsageField",
]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
