"""Following logs as they grow, for ``Workspace.follow_lines``.

:class:`Tail` remembers where it stopped reading each log and reads what was
appended since, complete lines only (a line written in two parts comes out
once, whole); a replaced or truncated log is read again from its start, and
an event id seen lately is not yielded twice.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Final

from eventbus import Event, EventQuery, is_valid_name

from .._layout import LOG_FILE_NAME
from .._lines import iter_growth, open_log

__all__: list[str] = []

_RECENT_IDS: Final = 65536  # ids remembered to drop an event seen twice


class Tail:
    """Reads what every log gained since the last read."""

    def __init__(
        self, root: str, ends: dict[str, tuple[tuple[int, int], int]], query: EventQuery
    ) -> None:
        self.root = root
        self.ends = dict(ends)
        self.query = query
        self.only = query.session_id
        self.recent: OrderedDict[str, None] = OrderedDict()

    def read(self, changed: set[str] | None) -> list[tuple[Event, bytes]]:
        """Read the changed logs (``None``: every log); return the new matching events."""
        paths = self._all() if changed is None else self._changed(changed)
        found: list[tuple[Event, bytes]] = []
        for path in paths:
            found.extend(self._read(path))
        if len(paths) > 1:
            found.sort(key=lambda item: (item[0].timestamp, item[0].id))
        return found

    def _all(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        if self.only is not None:
            names = [self.only] if self.only in names else []
        return [
            os.path.join(self.root, name, LOG_FILE_NAME) for name in names if is_valid_name(name)
        ]

    def _changed(self, changed: set[str]) -> list[str]:
        paths = set()
        for path in changed:
            if os.path.basename(path) == LOG_FILE_NAME:
                session = os.path.basename(os.path.dirname(path))
            else:  # a session's directory, made or replaced
                session = os.path.basename(path)
            if not is_valid_name(session) or (self.only is not None and session != self.only):
                continue
            paths.add(os.path.join(self.root, session, LOG_FILE_NAME))
        return sorted(paths)

    def _read(self, path: str) -> list[tuple[Event, bytes]]:
        fd = open_log(path, self.root)
        if fd is None:
            return []
        found: list[tuple[Event, bytes]] = []
        try:
            status = os.fstat(fd)
            ident = (status.st_dev, status.st_ino)
            known = self.ends.get(path)
            start = (
                0 if known is None or known[0] != ident or status.st_size < known[1] else known[1]
            )
            if status.st_size <= start:
                self.ends[path] = (ident, start)
                return []
            matches, recent = self.query.matches, self.recent
            for growth in iter_growth(fd, start):
                for event, line in zip(growth.events, growth.lines, strict=True):
                    if event.id in recent:
                        continue
                    recent[event.id] = None
                    if len(recent) > _RECENT_IDS:
                        recent.popitem(last=False)
                    if matches(event):
                        found.append((event, line))
                start = growth.end
            self.ends[path] = (ident, start)
        finally:
            os.close(fd)
        return found


def is_log_change(root: str, path: str) -> bool:
    """Whether a change at ``path`` can concern a log: the log, or a session's directory."""
    return os.path.basename(path) == LOG_FILE_NAME or os.path.dirname(path) == root


def load_awatch() -> Any:
    try:
        from watchfiles import awatch
    except ImportError as exc:  # pragma: no cover - the web extra is installed in tests
        raise ModuleNotFoundError(
            "following a workspace needs watchfiles: pip install 'eventbus[web]'"
        ) from exc
    return awatch
