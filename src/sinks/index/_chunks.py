"""Positions in time order as chunks, so that a late insert costs the same at any size.

The time order of an :class:`~sinks.index.EventIndex` (``sinks.index._order``)
is a ``range`` while events arrive in order. The first late event turns it
into :class:`Chunks`: the same positions as a list of chunks, each a
``range`` (a run of consecutive positions, as events in order leave them) or
an ``array`` of at most :data:`_CHUNK` positions. An insert bisects the
chunks' last entries by timestamp, then the one chunk (a long range is cut
around the place, a short piece of it becoming an array), so no step copies
more than a chunk: O(log n + chunk), never O(n). Reading by index bisects the chunks'
first indexes, which an insert makes stale from its chunk on; they are
recounted (in C, one length per chunk) on the next read by index.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, chain, islice
from operator import lt
from typing import Any, Final, TypeAlias, overload

__all__: list[str] = []

_CHUNK: Final = 2048  # the most positions an array chunk holds (then it is split in two)

Chunk: TypeAlias = "range | array[int]"


def _is_run(block: Sequence[int]) -> bool:
    """Whether ``block`` (distinct positions) is consecutive and increasing, a range."""
    return block[-1] - block[0] == len(block) - 1 and all(map(lt, block, islice(block, 1, None)))


class Chunks(Sequence[int]):
    """Distinct positions sorted by (timestamp, id), in chunks (see the module docstring).

    Reading by index and slicing behave as for a list (a slice is a ``range``
    or an ``array`` if it lies in one chunk, else a list). Timestamps are read
    through the ``ts`` sequence each method is given.
    """

    __slots__ = ("chunks", "fresh", "lasts", "size", "starts")

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self.chunks: list[Chunk] = [chunk for chunk in chunks if len(chunk)]
        self.lasts = [chunk[-1] for chunk in self.chunks]  # each chunk's newest position
        self.starts = [0] * len(self.chunks)  # each chunk's first index, right below fresh
        self.fresh = 1
        self.size = sum(map(len, self.chunks))

    @classmethod
    def of(cls, positions: Sequence[int]) -> Chunks:
        """Chunk ``positions`` (in time order): consecutive runs become ranges."""
        chunks: list[Chunk] = []
        for i in range(0, len(positions), _CHUNK):
            block = positions[i : i + _CHUNK]
            if not _is_run(block):
                chunks.append(array("q", block))
            elif chunks and type(chunks[-1]) is range and chunks[-1].stop == block[0]:
                chunks[-1] = range(chunks[-1].start, block[-1] + 1)
            else:
                chunks.append(range(block[0], block[-1] + 1))
        return cls(chunks)

    # --- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(self.chunks)

    def __repr__(self) -> str:
        return f"Chunks({self.chunks!r})"

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            lo, hi, step = index.indices(self.size)
            if step != 1:
                return list(self)[index]
            if lo >= hi:
                return []
            starts = self._starts()
            j = bisect_right(starts, lo) - 1
            k = bisect_right(starts, hi - 1, j) - 1
            if j == k:
                return self.chunks[j][lo - starts[j] : hi - starts[j]]
            return list(
                chain(
                    self.chunks[j][lo - starts[j] :],
                    chain.from_iterable(self.chunks[j + 1 : k]),
                    self.chunks[k][: hi - starts[k]],
                )
            )
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError("Chunks index out of range")
        starts = self._starts()
        j = bisect_right(starts, index) - 1
        return self.chunks[j][index - starts[j]]

    def _starts(self) -> list[int]:
        """Each chunk's first index, recounted from the first stale one."""
        starts, fresh = self.starts, self.fresh
        if fresh < len(starts):
            starts[fresh - 1 :] = accumulate(
                map(len, self.chunks[fresh - 1 : -1]), initial=starts[fresh - 1]
            )
            self.fresh = len(starts)
        return starts

    def _locate(self, index: int) -> tuple[int, int]:
        """The chunk holding entry ``index`` (0 <= index <= size) and the entry's place in it."""
        starts = self._starts()
        j = bisect_right(starts, index) - 1
        return j, index - starts[j]

    def bisect(self, ts: Sequence[Any], stamp: Any, lo: int, *, right: bool) -> int:
        """The index (from ``lo``) of the first entry stamped after ``stamp`` (``right``),
        or not before it. Entries before ``lo`` (evicted) need not be in order."""
        if lo >= self.size:
            return self.size
        j0, i0 = self._locate(lo) if lo else (0, 0)
        search = bisect_right if right else bisect_left
        key = ts.__getitem__
        j = search(self.lasts, stamp, j0, key=key)
        if j == len(self.chunks):
            return self.size
        return self._starts()[j] + search(self.chunks[j], stamp, i0 if j == j0 else 0, key=key)

    # --- changing -----------------------------------------------------------------------

    def append_run(self, first: int, stop: int) -> None:
        """Append the positions ``first`` to ``stop - 1`` (events after every one held)."""
        chunks = self.chunks
        if chunks:
            last = chunks[-1]
            if type(last) is range:
                if last.stop == first:
                    chunks[-1] = range(last.start, stop)
                    self.lasts[-1] = stop - 1
                    self.size += stop - first
                    return
            elif len(last) + stop - first <= _CHUNK:
                last.extend(range(first, stop))
                self.lasts[-1] = stop - 1
                self.size += stop - first
                return
        if self.fresh == len(self.starts):  # every start is right: so is this one
            self.fresh += 1
        chunks.append(range(first, stop))
        self.lasts.append(stop - 1)
        self.starts.append(self.size)
        self.size += stop - first

    def insort(
        self, position: int, start: int, ts: Sequence[Any], id_at: Callable[[int], str]
    ) -> None:
        """Insert ``position`` at its place in time order (ties by id), not before ``start``."""
        chunks = self.chunks
        if not chunks:
            self._replace(0, [array("q", [position])], 0)
            self.size += 1
            return
        stamp = ts[position]
        j0, i0 = self._locate(min(start, self.size)) if start else (0, 0)
        j = bisect_right(self.lasts, stamp, j0, key=ts.__getitem__)
        if j == len(chunks):
            j -= 1
            i = len(chunks[j])
        else:
            i = bisect_right(chunks[j], stamp, i0 if j == j0 else 0, key=ts.__getitem__)
        event_id = None
        while (j, i) > (j0, i0):  # back over the ties with a larger id
            if not i:
                j -= 1
                i = len(chunks[j])
            held = chunks[j][i - 1]
            if ts[held] != stamp:
                break
            if event_id is None:
                event_id = id_at(position)
            if id_at(held) < event_id:
                break
            i -= 1
        self._insert(j, i, position)

    def _insert(self, j: int, i: int, position: int) -> None:
        """Insert ``position`` at index ``i`` of chunk ``j``."""
        chunk = self.chunks[j]
        self.size += 1
        if type(chunk) is range:
            # An array of about `cut` positions around the place, ranges either side
            # (none shorter than `cut`): copying a whole chunk would cost ~20 us.
            cut = max(1, _CHUNK // 16)
            a = max(0, i - cut // 2)
            b = min(len(chunk), a + cut)
            if a < cut:
                a = 0
            if len(chunk) - b < cut:
                b = len(chunk)
            middle = array("q", chunk[a:b])
            middle.insert(i - a, position)
            self._replace(j, [chunk[:a], middle, chunk[b:]], 1)
            return
        chunk.insert(i, position)
        if len(chunk) > _CHUNK:
            half = len(chunk) // 2
            self._replace(j, [chunk[:half], chunk[half:]], 1)
            return
        self.lasts[j] = chunk[-1]
        self.fresh = min(self.fresh, j + 1)

    def _replace(self, j: int, pieces: list[Chunk], count: int) -> None:
        """Put ``pieces`` (empty ones left out) in place of ``count`` chunks from ``j``."""
        pieces = [piece for piece in pieces if len(piece)]
        self.chunks[j : j + count] = pieces
        self.lasts[j : j + count] = [piece[-1] for piece in pieces]
        self.starts[j : j + count] = [0] * len(pieces)  # the first chunk's start is 0
        self.fresh = max(1, min(self.fresh, j))
