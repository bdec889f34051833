"""The layout of a workspace: its file names, and paths that stay inside its root.

A workspace holds one directory per session::

    {root}/{session_id}/events.jsonl                 LOG_FILE_NAME: the JSONL log (its live segment)
    {root}/{session_id}/events.000001.jsonl          sealed_name(): its sealed segments, if any
    {root}/{session_id}/artifacts/{key}.json         ARTIFACTS_DIR: the artifacts
    {root}/{session_id}/control.jsonl                CONTROL_FILE_NAME: the commands' inbox

Every part of :mod:`sinks` names these files through this module.

A log may be a series of segments: ``events.000001.jsonl``,
``events.000002.jsonl``, ... (sealed: never written again), then
``events.jsonl`` (live: the writer appends there). A plain sort of the
sealed names, then ``events.jsonl``, is the read order; no reader orders
segments by time. A log never sealed is ``events.jsonl`` alone (the seed's
format). How they are written and read as one log: :mod:`sinks._segments`.

The README promises that nothing is read or written outside the workspace
root. Names are validated (``eventbus.validate_name``), so a path built
from them cannot climb out; a symlink under the root still could. A symlink
resolving inside the root is followed; a dangling one, or one resolving
outside the root (or to the root itself), raises
:class:`~sinks.jsonl.UnsafeSymlinkError` naming the link and its target.

The check guards against mistakes and workspaces copied with links in them,
not against someone racing this process with write access to the root (a
link made between the check and the open is followed).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
import threading
from typing import Final

from ._files import UnsafeSymlinkError

__all__ = [
    "ARTIFACTS_DIR",
    "CONTROL_FILE_NAME",
    "LOG_FILE_NAME",
    "MAX_SEGMENTS",
    "UnsafeSymlinkError",
    "check_link",
    "report_once",
    "resolve_inside",
    "sealed_name",
    "sealed_names",
    "segment_number",
]

LOG_FILE_NAME = "events.jsonl"
"""The name of a session's JSONL log in its directory."""

CONTROL_FILE_NAME = "control.jsonl"
"""The name of a session's inbox of control commands (written by ``submit_command``)."""

ARTIFACTS_DIR = "artifacts"
"""The name of the directory of a session's artifacts."""

SEAL_DIGITS: Final = 6
"""Digits of a sealed segment's number: a plain sort of the names is their order."""
MAX_SEGMENTS: Final = 10**SEAL_DIGITS - 1
"""The most sealed segments a log has; past this many, its live segment just grows."""


def _split(live_name: str) -> tuple[str, str]:
    stem, dot, suffix = live_name.rpartition(".")
    return (stem, f".{suffix}") if dot and stem else (live_name, "")


def sealed_name(live_name: str, number: int) -> str:
    """The name of the ``number``-th sealed segment of the log named ``live_name``.

    ``events.jsonl``, 1 -> ``events.000001.jsonl``.
    """
    stem, suffix = _split(live_name)
    return f"{stem}.{number:0{SEAL_DIGITS}d}{suffix}"


@functools.lru_cache(maxsize=64)
def _pattern(live_name: str) -> re.Pattern[str]:
    stem, suffix = _split(live_name)
    return re.compile(re.escape(stem) + r"\.(\d{" + str(SEAL_DIGITS) + "})" + re.escape(suffix))


def sealed_names(directory: str, live_name: str) -> list[str]:
    """The names of the sealed segments of the log ``live_name`` in ``directory``, in order."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if len(names) < 4 and all(len(name) != len(live_name) + SEAL_DIGITS + 1 for name in names):
        return []  # the common case, a log never sealed: no name is long enough
    match = _pattern(live_name).fullmatch
    return sorted(name for name in names if match(name))


def segment_number(live_name: str, sealed: str) -> int:
    """The number of the sealed segment named ``sealed``."""
    found = _pattern(live_name).fullmatch(sealed)
    assert found is not None
    return int(found.group(1))


_REPORTED_MAX: Final = 4096  # messages remembered; past that, the oldest may be logged again
_reported: dict[str, None] = {}
_reported_lock = threading.Lock()


def report_once(logger: logging.Logger, message: str) -> None:
    """Log the warning ``message`` unless this process already logged it.

    A server meets the same refused symlink on every request: its log says so once.
    """
    with _reported_lock:
        if message in _reported:
            return
        if len(_reported) >= _REPORTED_MAX:
            del _reported[next(iter(_reported))]
        _reported[message] = None
    logger.warning("%s", message)


def resolve_inside(root: str, path: str) -> str:
    """Return ``path`` (below ``root``) ready to use, refusing any symlink that leads out.

    Each part of ``path`` below ``root`` is checked (``root`` itself may be a
    symlink). A symlink resolving inside the root is followed: the resolved
    path is returned. A dangling symlink, or one resolving outside the root
    (or to the root itself), is refused. Without symlinks ``path`` is
    returned as it is, at the cost of one ``lstat`` per part.

    :raises UnsafeSymlinkError: naming the link and where it points
    """
    prefix = os.path.join(root, "")
    if not path.startswith(prefix):  # spelt differently ("./ws" and "ws/s1")?
        root, path = os.path.abspath(root), os.path.abspath(path)
        prefix = os.path.join(root, "")
        if not path.startswith(prefix):
            raise ValueError(f"{path!r} is not below the workspace root {root!r}")
    current = root
    linked = False
    for part in path[len(prefix) :].split(os.sep):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            break  # nothing further exists: nothing further to follow
        if stat.S_ISLNK(mode):
            check_link(root, current)
            linked = True
    return os.path.realpath(path) if linked else path


def check_link(root: str, link: str) -> None:
    """Refuse the symlink ``link`` (below ``root``) if it dangles or leads out of ``root``.

    :raises UnsafeSymlinkError: naming the link and where it points
    """
    target = os.readlink(link)
    if not os.path.exists(link):
        raise UnsafeSymlinkError(
            link,
            target,
            "which does not exist; nothing is read or written through a dangling link"
            ": remove the link or create its target inside the workspace",
        )
    real_root = os.path.realpath(root)
    real = os.path.realpath(link)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeSymlinkError(
            link,
            target,
            f"which resolves to {real}, not inside the workspace root {real_root}; "
            "nothing is read or written outside the root: replace the link by what it "
            "points to",
        )
