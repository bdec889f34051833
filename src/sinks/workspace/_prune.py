"""Retention: removing whole ended sessions from a workspace, oldest end first.

A session is **ended** when its log holds a terminal event
(``session_completed``, ``session_failed``, ``session_aborted``; it ended at
that event's time), or when its log has not changed for ``stale`` (it ended
at its last event's time; a session without a log at its directory's newest
change). Any other session is **running** and is never removed; so is one
whose log a writer holds locked (a :class:`~sinks.jsonl.JsonlSink` or an
:class:`~sinks.jsonl.EventLog` that appended and is not closed yet).

Removal is safe for readers and for the root: the session's directory is
first renamed to a hidden name in the root (``.pruning-{session_id}-{random}``:
no session id starts with a dot, so no reader lists it), so a reader sees the
whole session or none of it; the hidden directory is then removed without
following any symlink (a link inside a session is removed, never its target).
A session directory that is itself a symlink is not a session of this root
to remove and is left alone. Hidden directories a crashed prune left behind
are removed by the next one.
"""

import fcntl
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import msgspec

from eventbus import Event, EventDecodeError, EventQuery, EventType, decode_event, is_valid_name

from .._layout import LOG_FILE_NAME
from .._lines import READ_FLAGS, TAIL_BLOCK, complete_end
from .._segments import LogFile
from ._scan import scan_log

__all__ = ["DEFAULT_STALE", "PruneReport", "PrunedSession", "prune"]

logger = logging.getLogger("sinks.workspace")

DEFAULT_STALE: Final = timedelta(days=7)
"""How long a log without a terminal event must be unchanged for its session to be ended."""

_HIDDEN_PREFIX: Final = ".pruning-"
Status = Literal["completed", "failed", "aborted", "stale"]
_STATUS: Final[dict[str, Status]] = {
    EventType.SESSION_COMPLETED.value: "completed",
    EventType.SESSION_FAILED.value: "failed",
    EventType.SESSION_ABORTED.value: "aborted",
}
_ENDS: Final = EventQuery(event_type=list(_STATUS))


class PrunedSession(msgspec.Struct, frozen=True, kw_only=True):
    """One ended session that :func:`prune` removed (or, in a dry run, would remove).

    ``status`` is the terminal event's (``"completed"``, ``"failed"``,
    ``"aborted"``), or ``"stale"`` for a log unchanged for ``stale``;
    ``ended_at`` is when it ended; ``bytes`` the size of its files.
    """

    session_id: str
    status: Literal["completed", "failed", "aborted", "stale"]
    ended_at: datetime
    bytes: int


class PruneReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`prune` removed, in the order it removed them (oldest end first).

    ``freed`` is the sum of the removed sessions' ``bytes``; ``before`` and
    ``after`` are the workspace's size (every file under its root) before and
    after; ``errors`` maps each session that could not be removed to why (it
    is left whole, or, if removing its hidden copy failed, out of sight for
    the next prune to finish). In a dry run nothing is removed and the
    numbers say what would be.
    """

    removed: tuple[PrunedSession, ...]
    freed: int
    before: int
    after: int
    dry_run: bool = False
    errors: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """``True`` when every session chosen was removed."""
        return not self.errors


class _Found(msgspec.Struct, kw_only=True):
    session_id: str
    path: str
    bytes: int
    log: tuple[int, int, int] | None  # the log's (inode, size, mtime_ns) when classified
    ended: PrunedSession | None  # None: running


def prune(
    root: str | os.PathLike[str],
    *,
    older_than: timedelta | None = None,
    max_bytes: int | None = None,
    stale: timedelta = DEFAULT_STALE,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Remove whole ended sessions of the workspace ``root``, oldest end first.

    Which ended sessions go: with ``older_than``, those that ended more than
    that long before ``now``; with ``max_bytes``, the oldest until the
    workspace (every file under ``root``) holds at most ``max_bytes``; with
    both, those older and then more until under the size; with neither,
    every ended session. Running sessions are never removed, even when the
    workspace stays over ``max_bytes``.

    :param older_than: remove sessions that ended longer ago than this.
    :param max_bytes: remove sessions until the workspace holds at most this many bytes.
    :param stale: a log without a terminal event unchanged this long is ended (7 days).
    :param dry_run: remove nothing; report what would be removed.
    :param now: the present (default: the clock), for tests; naive is UTC.
    :raises ValueError: for a negative ``older_than``, ``max_bytes`` or ``stale``.
    :raises NotADirectoryError: if ``root`` exists and is not a directory.
    """
    if older_than is not None and older_than < timedelta(0):
        raise ValueError(f"older_than must be 0 or more, got {older_than}")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
    if stale < timedelta(0):
        raise ValueError(f"stale must be 0 or more, got {stale}")
    now = datetime.now(UTC) if now is None else _utc(now)
    top = os.fspath(root)
    if not os.path.exists(top):
        return PruneReport(removed=(), freed=0, before=0, after=0, dry_run=dry_run)
    if not os.path.isdir(top):
        raise NotADirectoryError(f"{top} is not a directory: give the workspace's root")
    if not dry_run:
        _finish_leftovers(top)
    found = list(_sessions(top, now - stale))
    total = _tree_bytes(top)
    ended = sorted(
        (item for item in found if item.ended is not None),
        key=lambda item: (_end(item), item.session_id),
    )
    chosen: list[_Found] = []
    remaining = total
    for item in ended:
        old = older_than is not None and _end(item) < now - older_than
        big = max_bytes is not None and remaining > max_bytes
        if (older_than is None and max_bytes is None) or old or big:
            chosen.append(item)
            remaining -= item.bytes
        else:
            break  # sorted by end: no later one is older; the size is reached
    removed: list[PrunedSession] = []
    errors: dict[str, str] = {}
    for item in chosen:
        assert item.ended is not None
        if not dry_run:
            problem = _remove(top, item, now - stale)
            if problem is not None:
                errors[item.session_id] = problem
                logger.warning("prune: %s not removed: %s", item.session_id, problem)
                continue
        removed.append(item.ended)
    freed = sum(session.bytes for session in removed)
    return PruneReport(
        removed=tuple(removed),
        freed=freed,
        before=total,
        after=total - freed,
        dry_run=dry_run,
        errors=errors,
    )


def _end(item: _Found) -> datetime:
    assert item.ended is not None
    return item.ended.ended_at


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sessions(root: str, stale_before: datetime) -> Iterator[_Found]:
    """Every session directory of ``root`` (symlinks left out), classified."""
    with os.scandir(root) as entries:
        names = sorted(
            entry.name
            for entry in entries
            if is_valid_name(entry.name) and entry.is_dir(follow_symlinks=False)
        )
    for name in names:
        path = os.path.join(root, name)
        try:
            yield _classify(name, path, stale_before)
        except OSError as exc:  # unreadable: not known to be ended, so kept
            logger.warning("prune: kept %s: cannot read it (%s)", name, exc)


def _classify(session_id: str, path: str, stale_before: datetime) -> _Found:
    size, newest = _tree(path)
    log_path = os.path.join(path, LOG_FILE_NAME)
    try:
        fd = os.open(log_path, READ_FLAGS | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:  # none, or a symlink (not followed)
        fd = None
    if fd is None:  # no log (or not a plain file): its directory's newest change tells
        changed = datetime.fromtimestamp(newest / 1e9, UTC)
        ended = None
        if changed < stale_before:
            ended = PrunedSession(
                session_id=session_id, status="stale", ended_at=changed, bytes=size
            )
        return _Found(session_id=session_id, path=path, bytes=size, log=None, ended=ended)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return _Found(session_id=session_id, path=path, bytes=size, log=None, ended=None)
        log = (status.st_ino, status.st_size, status.st_mtime_ns)
        running = _Found(session_id=session_id, path=path, bytes=size, log=log, ended=None)
        if _locked(fd):
            return running  # a writer holds it: running, whatever it holds
        terminal: Event | None = None
        for chunk in scan_log(log_path, path, _ENDS):
            for event, _ in chunk:
                if terminal is None or event.timestamp >= terminal.timestamp:
                    terminal = event
        if terminal is not None:
            ended = PrunedSession(
                session_id=session_id,
                status=_STATUS[terminal.event_type],
                ended_at=terminal.timestamp,
                bytes=size,
            )
        elif datetime.fromtimestamp(status.st_mtime_ns / 1e9, UTC) < stale_before:
            last = _last_event(log_path)
            changed = datetime.fromtimestamp(status.st_mtime_ns / 1e9, UTC)
            ended = PrunedSession(
                session_id=session_id,
                status="stale",
                ended_at=changed if last is None else last.timestamp,
                bytes=size,
            )
        else:
            return running
        return _Found(session_id=session_id, path=path, bytes=size, log=log, ended=ended)
    finally:
        os.close(fd)


def _locked(fd: int) -> bool:
    """Whether a writer holds the log's lock (tried without waiting, and let go)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _last_event(log_path: str) -> Event | None:
    """The last complete line of the log (across its segments) that decodes, read backwards."""
    log = LogFile.open(log_path)
    if log is None:
        return None
    with log:
        end = complete_end(log, log.size())
        window = TAIL_BLOCK
        while end > 0:
            start = max(0, end - window)
            lines = log.pread(end - start, start).split(b"\n")
            lines.pop()  # after the last newline: nothing
            if start > 0:
                lines.pop(0)  # may be a part of a line
            for line in reversed(lines):
                if line.strip():
                    try:
                        return decode_event(line)
                    except EventDecodeError:
                        continue
            if start == 0:
                return None
            window *= 2
    return None


def _tree(path: str) -> tuple[int, int]:
    """The bytes of the files under ``path`` and the newest change (ns), links not followed."""
    size = 0
    newest = os.lstat(path).st_mtime_ns
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                newest = max(newest, info.st_mtime_ns)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    size += info.st_size
    return size, newest


def _tree_bytes(path: str) -> int:
    try:
        return _tree(path)[0]
    except OSError:
        return 0


@contextmanager
def _held(log_path: str) -> Iterator[bool]:
    """Hold the log's writer lock (``False`` if a writer holds it, or no log is there)."""
    try:
        fd = os.open(log_path, READ_FLAGS | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove(root: str, item: _Found, stale_before: datetime) -> str | None:
    """Hide the session's directory under a dot name, then remove it; return what failed."""
    log_path = os.path.join(item.path, LOG_FILE_NAME)
    hidden = os.path.join(root, f"{_HIDDEN_PREFIX}{item.session_id}-{secrets.token_hex(4)}")
    with _held(log_path) as free:
        if not free:
            return "a writer opened its log meanwhile; it is running again"
        try:
            current = os.lstat(log_path)
        except FileNotFoundError:
            current = None
        seen = None if current is None else (current.st_ino, current.st_size, current.st_mtime_ns)
        if seen != item.log and item.ended is not None and item.ended.status == "stale":
            return "its log changed meanwhile; it is running again"
        try:
            if not stat.S_ISDIR(os.lstat(item.path).st_mode):
                return "it is no longer a directory"
            os.rename(item.path, hidden)
        except OSError as exc:
            return f"cannot rename it out of sight: {exc.strerror or exc}"
    try:
        shutil.rmtree(hidden)
    except OSError as exc:
        return f"hidden as {os.path.basename(hidden)} but not fully removed: {exc.strerror or exc}"
    return None


def _finish_leftovers(root: str) -> None:
    """Remove the hidden directories an interrupted prune left in ``root``."""
    with os.scandir(root) as entries:
        leftovers = [
            entry.path
            for entry in entries
            if entry.name.startswith(_HIDDEN_PREFIX) and entry.is_dir(follow_symlinks=False)
        ]
    for path in leftovers:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            logger.warning("prune: cannot remove the leftover %s: %s", path, exc)
