"""The artifacts' files: names, atomic writes, reads and listings.

Shared by the store, the query and the sink of :mod:`sinks.artifacts` (see
its docstring for the guarantees). An artifact ``key`` is the file
``{key}.json``; a temporary file is ``.<random>.tmp``, never a valid key.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from eventbus import is_valid_name, validate_name

ARTIFACTS_DIR = "artifacts"
"""The name of a session's artifacts directory."""
SUFFIX = ".json"
"""The suffix of an artifact's file name."""
_TEMP_SUFFIX = ".tmp"


def check_key(key: str) -> str:
    """Return ``key`` if it can name an artifact file.

    :raises InvalidNameError: naming the problem otherwise
    :raises TypeError: if ``key`` is not a str
    """
    return validate_name(key, "artifact key", SUFFIX)


def fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` durable (renames, creations, deletions)."""
    if os.name != "posix":  # Windows cannot open a directory; NTFS journals its entries
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(path: str, durable: bool) -> None:
    """Create ``path`` and its missing parents; fsync each parent that gained an entry."""
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it
            os.mkdir(directory)
        if durable:
            fsync_directory(os.path.dirname(directory) or ".")


def _open_temp(directory: str) -> tuple[int, str]:
    """Create a new temporary file in ``directory``; return its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = os.path.join(directory, f".{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue


def write_atomic(directory: str, filename: str, data: bytes, durable: bool) -> None:
    """Replace ``directory/filename`` by ``data`` all at once, even across a crash.

    The data goes to a temporary file in the same directory, is flushed and
    (when ``durable``) fsynced, then renamed over the target; the directory
    is fsynced so the rename itself survives a power loss.
    """
    try:
        fd, temp = _open_temp(directory)
    except FileNotFoundError:
        _make_directory(directory, durable)
        fd, temp = _open_temp(directory)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temp, os.path.join(directory, filename))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        fsync_directory(directory)


def read_bytes(path: str) -> bytes | None:
    """Return the file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def list_keys(directory: str) -> list[str]:
    """Return the sorted keys of the artifacts in ``directory``, skipping anything else."""
    try:
        with os.scandir(directory) as entries:
            names = [
                entry.name for entry in entries if entry.name.endswith(SUFFIX) and entry.is_file()
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = [name[: -len(SUFFIX)] for name in names]
    keys = [key for key in keys if is_valid_name(key, SUFFIX)]
    keys.sort()
    return keys
