"""Late events: the time order in chunks answers like a sorted list, and no insert copies it."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import factories
import sinks.index._chunks
from eventbus import Event, EventQuery, EventType
from factories import T0
from sinks.index import EventIndex
from sinks.index._chunks import Chunks


def event(seconds: float, index: int) -> Event:
    """An event ``seconds`` after T0, of one of three sessions."""
    return factories.event(index, f"s{index % 3}", seconds=seconds)


class SortedModel:
    """What a time order must read like: row positions sorted by (stamp, id).

    ``ts``/``ids`` hold every row's stamp and id; ``order`` the positions in
    time order; the first ``start`` of them are evicted.
    """

    def __init__(self, rows: int = 0) -> None:
        self.ts: list[int] = [i // 2 for i in range(rows)]  # ties: two rows per stamp
        self.ids: list[str] = [f"{i % 2}" for i in range(rows)]
        self.order: list[int] = list(range(rows))
        self.start = 0

    def append(self, count: int) -> range:
        """Add ``count`` rows after every one held; return their positions."""
        first = len(self.ts)
        newest = max(self.ts, default=0)
        self.ts += [newest + 1 + i for i in range(count)]
        self.ids += ["0"] * count
        self.order += range(first, first + count)
        return range(first, first + count)

    def late(self, stamp: int, event_id: str) -> int:
        """Add a row at ``stamp`` (ties by id, never before the evicted); return its position."""
        position = len(self.ts)
        self.ts.append(stamp)
        self.ids.append(event_id)
        keys = [(self.ts[p], self.ids[p]) for p in self.order[self.start :]]
        self.order.insert(self.start + bisect_left(keys, (stamp, event_id)), position)
        return position


# Operations on a Chunks, or on one posting: ("append", how many), ("late", stamp, id) or
# ("evict", how many).
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 9)),
        st.tuples(st.just("late"), st.integers(0, 40), st.integers(0, 5)),
        st.tuples(st.just("evict"), st.integers(1, 4)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=operations,
    chunk=st.sampled_from([1, 2, 3, 4, 16]),
    start_as_range=st.integers(0, 30),
    probes=st.lists(st.integers(-1, 42), max_size=6),
)
def test_chunks_insert_read_and_bisect_like_a_sorted_list(
    steps: list[tuple[int | str, ...]], chunk: int, start_as_range: int, probes: list[int]
) -> None:
    """Inserts (ties by id, never before the evicted), appends, reads and bisects match a list."""
    rows = SortedModel(start_as_range)
    ts, ids, model = rows.ts, rows.ids, rows.order
    with mock.patch.object(sinks.index._chunks, "_CHUNK", chunk):
        order = Chunks([range(start_as_range)])
        for step in steps:
            if step[0] == "append":
                added = rows.append(int(step[1]))
                order.append_run(added.start, added.stop)
            elif step[0] == "late":
                position = rows.late(int(step[1]), str(step[2]))
                order.insort(position, rows.start, ts, ids.__getitem__)
            else:
                rows.start = min(len(model), rows.start + int(step[1]))
            assert list(order) == model
            assert len(order) == len(model)
        assert [order[i] for i in range(-len(model), len(model))] == model + model
        for lo in range(len(model) + 1):
            for hi in (lo, lo + 1, lo + 7, len(model)):
                assert list(order[lo:hi]) == model[lo:hi]
        start = rows.start
        stamps = [ts[p] for p in model[start:]]  # the evicted ones need not be in order
        for stamp in probes:
            assert order.bisect(ts, stamp, start, right=False) == start + bisect_left(stamps, stamp)
            assert order.bisect(ts, stamp, start, right=True) == start + bisect_right(stamps, stamp)
        assert all(len(piece) <= chunk + 1 for piece in order.chunks if type(piece) is array)


def test_a_late_event_into_a_large_index_leaves_the_in_order_run_uncopied() -> None:
    """The first late event cuts the in-order range around its place: only one chunk is copied."""
    index = EventIndex()
    index.add([event(i, i) for i in range(20_000)])
    index.add([event(5_000.5, 20_000)])  # late: before 15,000 events held
    chunks = index._time.order.chunks  # type: ignore[union-attr]
    copied = sum(len(piece) for piece in chunks if type(piece) is array)
    assert copied <= sinks.index._chunks._CHUNK
    assert max(len(piece) for piece in chunks) >= 14_000  # the run after it is still a range


def test_many_late_events_keep_every_query_in_time_order() -> None:
    """Late events spread over a large index (small chunks): each query equals a sorted filter."""
    early = [event(i, i) for i in range(3_000)]
    late = [event(i + 0.5, 3_000 + i) for i in range(2_999, -1, -7)]  # newest first
    with mock.patch.object(sinks.index._chunks, "_CHUNK", 64):
        index = EventIndex(max_events=2_900)
        index.add(early)
        for one in late:
            index.add([one])
        held = sorted([*early, *late], key=lambda e: (e.timestamp, e.id))[-2_900:]
        assert index.get_events() == held
        assert index.get_latest(50) == held[-50:]
        middle = T0 + timedelta(seconds=1_500)
        assert index.get_events(start_time=middle) == [e for e in held if e.timestamp >= middle]
        s1 = [e for e in held if e.session_id == "s1"]
        assert index.query(EventQuery(session_id="s1"), limit=40, after=s1[99]) == s1[100:140]
        pages, after = [], None
        while page := index.query(EventQuery(), limit=333, after=after):
            pages += page
            after = page[-1].id
        assert pages == held


@pytest.mark.parametrize("count", [0, 1, 5000])
def test_chunks_of_positions_keeps_runs_as_ranges(count: int) -> None:
    """Chunking a time order gives runs of consecutive positions back as ranges."""
    positions = [*range(count), count + 1, count]
    order = Chunks.of(positions)
    assert list(order) == positions
    assert sum(len(piece) for piece in order.chunks if type(piece) is array) <= 2048


@pytest.mark.parametrize("keep_duplicates", [False, True])
def test_a_late_event_given_again_alone_is_skipped_and_counted(keep_duplicates: bool) -> None:
    """One late event seen twice is indexed once (counted), or twice with keep_duplicates."""
    index = EventIndex(keep_duplicates=keep_duplicates)
    index.add([event(i, i) for i in range(100)])
    late = event(50.5, 100)
    assert index.add([late]) == 1
    assert index.add([late]) == (1 if keep_duplicates else 0)
    assert index.duplicates == (0 if keep_duplicates else 1)
    assert index.get_events(session_id=late.session_id).count(late) == (2 if keep_duplicates else 1)


def test_a_late_event_failing_part_way_leaves_the_index_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A MemoryError after the postings took one late event takes it back; a retry adds it once."""
    from sinks.index._postings import Postings

    index = EventIndex()
    early = [event(i, i) for i in range(100)]
    index.add(early)
    original = Postings.insert_one

    def fail_after_doing_it(self: Postings, *args: Any) -> None:
        original(self, *args)
        raise MemoryError("simulated: memory ran out mid-event")

    monkeypatch.setattr(Postings, "insert_one", fail_after_doing_it)
    late = event(50.5, 100)
    with pytest.raises(MemoryError, match="memory ran out mid-event"):
        index.add([late])
    assert index.get_events() == early
    assert index.count(session_id=late.session_id) == 33
    monkeypatch.undo()
    assert index.add([late]) == 1
    assert index.get_events() == sorted([*early, late], key=lambda e: e.timestamp)
    assert index.get_events(session_id=late.session_id)[17] == late


@pytest.mark.parametrize("step", ["postings", "usage"])
def test_a_small_batch_failing_part_way_after_a_late_event_leaves_the_index_as_before(
    monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Once the time order is in chunks, a failed batch in order is taken back from them too."""
    from sinks.index._postings import Postings
    from sinks.index._usage import UsageTable

    index = EventIndex()
    index.add([event(i, i) for i in range(100)])
    index.add([event(50.5, 100)])  # late: the time order becomes chunks
    before = index.get_events()
    batch = [
        Event(
            event_type=EventType.LLM_RESPONSE_RECEIVED,
            session_id="s1",
            message="response",
            timestamp=T0 + timedelta(seconds=200 + i),
            metadata={"prompt_tokens": 3},
            parent_id=None,
        )
        for i in range(4)
    ]
    target: Any = Postings if step == "postings" else UsageTable
    original = target.append_all if step == "postings" else target.add

    def fail_after_doing_it(self: Any, *args: Any) -> None:
        original(self, *args)
        raise MemoryError("simulated: memory ran out mid-batch")

    monkeypatch.setattr(target, "append_all" if step == "postings" else "add", fail_after_doing_it)
    with pytest.raises(MemoryError, match="mid-batch"):
        index.add(batch)
    assert index.get_events() == before
    assert index.count(session_id="s1") == 34
    assert index.usage().responses == 0
    monkeypatch.undo()
    assert index.add(batch) == 4
    assert index.get_events() == [*before, *batch]
    assert index.get_events(event_type=EventType.LLM_RESPONSE_RECEIVED, session_id="s1") == batch
    assert index.usage().prompt_tokens == 12


@settings(max_examples=300, deadline=None)
@given(
    steps=operations,  # here on one posting
    arrays=st.booleans(),
    probes=st.lists(st.integers(-1, 42), max_size=6),
)
def test_a_posting_with_late_inserts_reads_like_a_sorted_list(
    steps: list[tuple[int | str, ...]], arrays: bool, probes: list[int]
) -> None:
    """Appends, late inserts (ties by id, never before the evicted) and evictions: a sorted list."""
    from sinks.index._postings import PAIRS, Postings, cut

    rows = SortedModel()
    ts, ids, model = rows.ts, rows.ids, rows.order
    row = (EventType.INFO, "s1", None, None, None, None)
    postings = Postings(arrays=arrays)
    for step in steps:
        if step[0] == "append":
            added = rows.append(int(step[1]))
            batch = [event(0, 1)] * len(added)  # session s1, INFO, as `row`
            postings.append_all(batch, list(added))
        elif step[0] == "late":
            position = rows.late(int(step[1]), str(step[2]))
            postings.insert_one(row, ts, position, ids.__getitem__)
        else:
            k = min(len(model) - rows.start, int(step[1]))
            rows.start += k
            postings.evict([[row[0]] * k, ["s1"] * k, *[[None] * k] * 4, [("s1", row[0])] * k])
        for field, value in ((0, row[0]), (1, "s1"), (PAIRS, ("s1", row[0]))):
            found = postings.get(field, value)
            assert found is not None or not model
            if found is not None:
                assert list(found[0]) == model
                assert found[1] == rows.start
    if not model:
        return
    found = postings.get(1, "s1")
    assert found is not None
    sequence = found[0]
    assert [sequence[i] for i in range(-len(model), len(model))] == model + model
    for lo in range(len(model) + 1):
        for hi in (lo, lo + 1, lo + 7, len(model)):
            assert list(sequence[lo:hi]) == model[lo:hi]
    stamps = [ts[p] for p in model[rows.start :]]
    for stamp in probes:
        for low, high in ((stamp, None), (None, stamp), (stamp, stamp + 3)):
            lo = rows.start if low is None else rows.start + bisect_left(stamps, low)
            hi = len(model) if high is None else rows.start + bisect_right(stamps, high)
            expected = (lo, max(lo, hi))
            assert cut(sequence, rows.start, ts, (low, None, high), ids.__getitem__) == expected
