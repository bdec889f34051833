"""The artifacts' files: names, atomic writes, reads and listings.

Shared by the store, the query and the sink of :mod:`sinks.artifacts` (see
its docstring for the guarantees). An artifact ``key`` is the file
``{key}.json``; a temporary file is ``.<unique>.tmp``, never a valid key.

Only regular files are read or replaced: a FIFO, a device or a directory
where an artifact should be raises :class:`NotARegularFileError` (reads
open with ``O_NONBLOCK``, so a FIFO never blocks). Inside a workspace,
``sinks._layout.resolve_inside`` follows symlinks that stay in the root and
refuses the others with :class:`UnsafeSymlinkError`. Both errors are shared
with :mod:`sinks.jsonl`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from eventbus import is_valid_name, validate_name

from .._files import NotARegularFileError, UnsafeSymlinkError, describe_mode, open_regular
from .._layout import check_link, report_once

logger = logging.getLogger("sinks.artifacts")

SUFFIX = ".json"
"""The suffix of an artifact's file name."""
_TEMP_SUFFIX = ".tmp"
_NONCE = secrets.token_hex(4)
_SEQUENCE = itertools.count()
_MAX_SYNC_THREADS = 16


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
    """Create a new temporary file in ``directory``; return its descriptor and path.

    The name is unique to this process (its pid, a random nonce and a
    counter), so making one costs no system call; ``O_EXCL`` still refuses
    any file already there.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        name = f".{os.getpid():x}-{_NONCE}-{next(_SEQUENCE):x}{_TEMP_SUFFIX}"
        temp = os.path.join(directory, name)
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue


def target_is_link(target: str) -> bool:
    """Whether ``target``, which a save is about to replace, is a symlink.

    False for a regular file or nothing there.

    :raises NotARegularFileError: if ``target`` is anything else (a FIFO, a
        device, a directory: something a person put there), which a save
        refuses rather than replaces
    """
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISLNK(mode):
        return True
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(target, describe_mode(mode))
    return False


def replace_atomic(directory: str, target: str, data: bytes, durable: bool) -> None:
    """Replace ``target`` (in ``directory``) by ``data``, all at once, even across a crash.

    The data goes to a temporary file in ``directory`` (created with its
    missing parents), is (when ``durable``) fsynced, then renamed over
    ``target``. The caller checks the target first and fsyncs the directory
    after: :func:`write_atomic` does both, a batch of saves fsyncs the
    directory once.
    """
    try:
        fd, temp = _open_temp(directory)
    except FileNotFoundError:
        _make_directory(directory, durable)
        fd, temp = _open_temp(directory)
    try:
        with open(fd, "wb", buffering=0) as file:
            view = memoryview(data)
            while view:
                view = view[file.write(view) :]
            if durable:
                os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def replace_all_atomic(directory: str, files: Sequence[tuple[str, bytes]], durable: bool) -> None:
    """Replace each ``(target, data)`` of ``files`` (in ``directory``) as :func:`replace_atomic`.

    Every temporary file is created, written and (when ``durable``) fsynced
    at once from a few threads, so that the file system commits them
    together (one journal commit rather than one per file) and no file
    waits for the one before; then each is renamed over its target, in
    order. A failure before the renames replaces nothing; the caller checks
    the targets first and fsyncs the directory after.
    """
    if len(files) < 2:
        for target, data in files:
            replace_atomic(directory, target, data, durable)
        return
    if not os.path.isdir(directory):
        _make_directory(directory, durable)
    staged = list(_file_threads().map(_stage, itertools.repeat((directory, durable)), files))
    try:
        for temp, _ in staged:
            if isinstance(temp, Exception):
                raise temp
        while staged:
            temp, target = staged[0]
            assert isinstance(temp, str)
            os.replace(temp, target)
            del staged[0]
    except BaseException:
        for temp, _ in staged:
            if isinstance(temp, str):
                with contextlib.suppress(OSError):
                    os.unlink(temp)
        raise


def _stage(where: tuple[str, bool], file: tuple[str, bytes]) -> tuple[str | Exception, str]:
    """Write ``file``'s data to a new temporary file of the directory, fsynced if durable.

    Returns the temporary file's path, or the error that stopped it (which
    left no file behind), with the target.
    """
    directory, durable = where
    target, data = file
    try:
        fd, temp = _open_temp(directory)
    except Exception as exc:  # handed back, raised by the caller
        return exc, target
    try:
        with open(fd, "wb", buffering=0) as out:
            view = memoryview(data)
            while view:
                view = view[out.write(view) :]
            if durable:
                os.fsync(out.fileno())
    except Exception as exc:  # handed back, raised by the caller
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return exc, target
    return temp, target


_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def kept_threads(name: str, size: int) -> ThreadPoolExecutor:
    """The pool of ``size`` threads called ``name``: made on first use, kept for the process.

    A child forked from this process makes its own (the parent's threads are not in it).
    """
    pool = _pools.get(name)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(name)
            if pool is None:
                pool = _pools[name] = ThreadPoolExecutor(size, name)
    return pool


def _forget_pools() -> None:
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _file_threads() -> ThreadPoolExecutor:
    """The threads that write and fsync a batch's files together."""
    return kept_threads("artifact-files", _MAX_SYNC_THREADS)


def write_atomic(directory: str, filename: str, data: bytes, durable: bool) -> None:
    """Replace ``directory/filename`` by ``data`` all at once, even across a crash.

    See :func:`replace_atomic`; then the directory is fsynced (when
    ``durable``) so the rename itself survives a power loss. A target that
    exists and is neither a regular file nor a symlink is refused, not
    replaced (a symlink itself is replaced).

    :raises NotARegularFileError: if the target is such a file
    """
    target = os.path.join(directory, filename)
    target_is_link(target)
    replace_atomic(directory, target, data, durable)
    if durable:
        fsync_directory(directory)


def read_bytes(path: str) -> bytes | None:
    """Return the file's bytes, or None when it does not exist.

    :raises NotARegularFileError: if ``path`` is a FIFO, a device, a directory...
        (checked without blocking)
    """
    return read_first_bytes(path, -1)


def read_first_bytes(path: str, size: int) -> bytes | None:
    """Return up to ``size`` bytes (all if negative) from the start of a file; None if none.

    :raises NotARegularFileError: if ``path`` is a FIFO, a device, a directory...
        (checked without blocking)
    """
    try:
        fd = open_regular(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    with open(fd, "rb") as file:
        return file.read(size)


def list_keys(directory: str, root: str | None = None) -> list[str]:
    """Return the sorted keys of the artifacts in ``directory``, skipping anything else.

    Only regular files (or symlinks to them) are artifacts. With ``root``,
    a symlink that :func:`resolve_inside` refuses is skipped and logged.
    """
    try:
        with os.scandir(directory) as entries:
            names = [
                entry.name
                for entry in entries
                if entry.name.endswith(SUFFIX)
                and entry.is_file()
                and (root is None or not entry.is_symlink() or stays_inside(root, entry.path))
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = [name[: -len(SUFFIX)] for name in names]
    keys = [key for key in keys if is_valid_name(key, SUFFIX)]
    keys.sort()
    return keys


def stays_inside(root: str, link: str) -> bool:
    """Return whether the symlink ``link`` may be followed; log why not when it may not."""
    try:
        check_link(root, link)
    except UnsafeSymlinkError as exc:
        report_once(logger, f"skipped a symlink in a workspace listing: {exc}")
        return False
    return True
