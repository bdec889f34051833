"""Token usage of a workspace's logs, tallied per log and read on from where it stopped.

``Workspace.usage`` answers from a :class:`UsageTally`: for each log, the
responses read so far are folded into *cells*, one per (session, model,
role, task, phase, UTC day), each holding the sums the answer needs (see
:class:`Cell`). A later answer reads only what the logs gained since (a log
whose identity changed, or that shrank, is read again from its start), so
asking again costs a ``stat`` per log, and the first answer one pass over
the lines holding the response type, decoding only those.

What a response counts for is :mod:`sinks._usage`'s rule set, exactly as
:func:`~._usage.usage_table` applies it to events: the same answer, from
far less than the events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from operator import attrgetter, methodcaller
from typing import Any, Final, TypeAlias, cast

from eventbus import Event, EventDecodeError, as_utc, decode_event, decode_events

from .._lines import line_runs, open_log
from .._segments import log_stat
from .._usage import RESPONSE, given_cost_column, token_column
from ._usage import Group, day_of, groups_table

__all__: list[str] = []

CellKey: TypeAlias = tuple[str, str | None, str | None, str | None, str | None, str]
"""(session_id, model, agent_role, task_id, phase, UTC day ``YYYY-MM-DD``)."""

Cell: TypeAlias = list[Any]
"""``[responses, prompt, completion, total, cached, picodollars given, responses with a
given cost, then of the responses without one: count, prompt, completion, cached,
latest timestamp]`` (the last five price them when the table knows the model)."""

_KEY_FIELDS: Final = {
    "session_id": 0,
    "model": 1,
    "agent_role": 2,
    "task_id": 3,
    "phase": 4,
    "day": 5,
}
_NEEDLE: Final = b'"' + RESPONSE.value.encode() + b'"'  # the type as a JSON string
_ZERO: Final = timedelta(0)
_ANSWERS: Final = 64  # answers kept while the logs do not change
_FIELDS: Final = tuple(map(attrgetter, ("session_id", "model", "agent_role", "task_id", "phase")))
_get_metadata = attrgetter("metadata")
_get_timestamp = attrgetter("timestamp")
_get_tzinfo = attrgetter("tzinfo")


class _Log:
    """What was tallied of one log: its identity, where reading goes on, its cells."""

    __slots__ = ("cells", "end", "ident")

    def __init__(self, ident: tuple[int, int]) -> None:
        self.ident = ident
        self.end = 0
        self.cells: dict[CellKey, Cell] = {}


class UsageTally:
    """The usage cells of every log read so far, kept current by :meth:`table`.

    Thread-safe: one thread reads the logs at a time; another asking meanwhile
    waits for that read and then reads only what is left (the read of a
    large workspace is done once, not once per asker).
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()
        # answers, kept while no log they read changed: (by, session) -> (state, answer)
        self._answers: dict[tuple[str, str | None], tuple[Any, dict[str, Any]]] = {}

    def clear(self) -> None:
        """Forget every tally (the next answer reads the logs again)."""
        with self._lock:
            self._logs = {}
            self._answers = {}

    def refresh(self, paths: Iterable[str]) -> None:
        """Read what the logs at ``paths`` gained since they were last read."""
        with self._lock:
            for path in paths:
                self._refresh(path)

    def table(self, paths: Sequence[str], by: str, session_id: str | None) -> dict[str, Any]:
        """The answer of ``Workspace.usage``: the responses of ``paths``, grouped by ``by``.

        With ``session_id``, only responses of that session count.
        """
        field = _KEY_FIELDS[by]
        groups: dict[str | None, Group] = {}
        with self._lock:
            for path in paths:
                self._refresh(path)
            logs = self._logs
            state = [(path, log.ident, log.end) for path in paths if (log := logs.get(path))]
            kept = self._answers.get((by, session_id))
            if kept is not None and kept[0] == state:
                return _copy(kept[1])
            for path in paths:
                log = self._logs.get(path)
                if log is None:
                    continue
                for key, cell in log.cells.items():
                    if session_id is not None and key[0] != session_id:
                        continue
                    value = key[field]
                    group = groups.get(value)
                    if group is None:
                        group = groups[value] = Group()
                    group.add_cell(key[1], key[5], cell)
            answer = groups_table(groups, by)
            if len(self._answers) >= _ANSWERS:
                self._answers.clear()
            self._answers[by, session_id] = (state, answer)
        return _copy(answer)

    def _refresh(self, path: str) -> None:
        status = log_stat(path)
        if status is None:
            self._logs.pop(path, None)
            return
        ident, size = status
        log = self._logs.get(path)
        if log is None or log.ident != ident or size < log.end:
            log = self._logs[path] = _Log(ident)
        elif size == log.end:
            return
        fd = open_log(path, self._root)
        if fd is None:  # refused (reported by open_log), or gone
            self._logs.pop(path, None)
            return
        try:
            for data, cut, start in line_runs(fd, log.end):
                if data is not None:  # (None: a line over MAX_LINE_BYTES, corrupt)
                    responses = _responses(data[:cut])
                    if responses:
                        _add(log.cells, responses)
                log.end = start + cut
        finally:
            fd.close()


def _copy(answer: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``answer`` the caller may change."""
    return {
        "by": answer["by"],
        "rows": [dict(row) for row in answer["rows"]],
        "total": dict(answer["total"]),
    }


def _responses(data: bytes) -> list[Event]:
    """The responses among the complete lines ``data``: only lines naming the type decoded.

    A line may spell the type with a ``\\u`` escape: such lines are decoded too.
    Lines that are not events are passed over, as every reader does.
    """
    find, rfind = data.find, data.rfind
    needles = [_NEEDLE]
    if find(b"\\") >= 0 and b"\\u" in data:  # (one byte is a quick search)
        needles.append(b"\\u")
    ends: dict[int, int] = {}  # where each kept line begins -> where it ends
    for needle in needles:
        at = find(needle)
        while at >= 0:
            end = find(b"\n", at)  # data ends with a newline
            ends[rfind(b"\n", 0, at) + 1] = end
            at = find(needle, end)
    begins = sorted(ends) if len(needles) > 1 else list(ends)
    kept = [data[begin : ends[begin]] for begin in begins]
    if not kept:
        return []
    try:  # at once; if a line is not an event, line by line below
        events = decode_events(b"\n".join(kept))
    except EventDecodeError:
        events = []
        for line in kept:
            try:
                events.append(decode_event(line))
            except EventDecodeError:
                continue
    return [event for event in events if event.event_type == RESPONSE]


def _add(cells: dict[CellKey, Cell], responses: list[Event]) -> None:
    """Fold ``responses`` into ``cells``, a column and a run of equal keys at a time."""
    metadata = list(map(_get_metadata, responses))
    prompts, completions, totals, cached = (
        token_column(metadata, key)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
    )
    if None in totals:  # a response without a valid total: prompt + completion
        totals = [
            p + c if t is None else t for p, c, t in zip(prompts, completions, totals, strict=True)
        ]
    costs = given_cost_column(metadata)
    stamps = list(map(_get_timestamp, responses))
    columns = [list(map(get, responses)) for get in _FIELDS]
    keys = list(zip(*columns, _days(responses, stamps), strict=True))
    start = 0
    for key, run in groupby(keys):  # consecutive responses share their key, mostly
        end = start + sum(1 for _ in run)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None]
        cell[0] += end - start
        cell[1] += sum(prompts[start:end])
        cell[2] += sum(completions[start:end])
        cell[3] += sum(totals[start:end])
        cell[4] += sum(cached[start:end])
        given = costs[start:end]
        if None not in given:
            cell[5] += sum(cast("list[int]", given))
            cell[6] += end - start
        else:
            for i in range(start, end):
                cost = costs[i]
                if cost is not None:
                    cell[5] += cost
                    cell[6] += 1
                elif key[1]:  # no given cost, a model: the price table may price it
                    cell[7] += 1
                    cell[8] += prompts[i]
                    cell[9] += completions[i]
                    cell[10] += cached[i]
                    stamp = as_utc(stamps[i])
                    if cell[11] is None or stamp > cell[11]:
                        cell[11] = stamp
        start = end


def _days(responses: list[Event], stamps: list[datetime]) -> list[str]:
    """Each response's UTC date, ``YYYY-MM-DD`` (as :func:`~._usage.day_of` gives it)."""
    zones = set(map(_get_tzinfo, stamps))
    if not zones <= {UTC, None} and not all(
        zone.utcoffset(None) == _ZERO for zone in zones if zone
    ):
        # some not in UTC: one by one
        return list(map(day_of, responses))
    dates: list[date] = list(map(methodcaller("date"), stamps))
    names = {when: when.isoformat() for when in set(dates)}
    return list(map(names.__getitem__, dates))
