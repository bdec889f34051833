"""``ArtifactStore``: one session's artifacts, and the errors of saving and loading them."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec

from eventbus import EventBusError

from .._layout import resolve_inside
from ._files import (
    SUFFIX,
    check_key,
    fsync_directory,
    list_keys,
    read_bytes,
    replace_atomic,
    target_is_link,
    write_atomic,
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class CorruptArtifactError(EventBusError, ValueError):
    """Raised by ``load_artifact`` when an artifact file does not hold valid JSON."""

    def __init__(self, key: str, path: str, reason: str) -> None:
        self.key = key
        self.path = path
        self.reason = reason
        super().__init__(
            f"artifact {key!r} is corrupt: {path} is not valid JSON ({reason}); "
            "restore the file, or delete it with delete_artifact()"
        )


class ArtifactEncodeError(EventBusError, TypeError):
    """Raised by ``save_artifact`` when the data cannot be encoded as JSON; nothing is written."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"cannot save artifact {key!r}: {reason}; an artifact must be JSON data "
            "(dicts with str keys, lists, str, int, float, bool, None)"
        )


def _encode(key: str, data: Any) -> bytes:
    """``data`` as the bytes of an artifact file.

    :raises ArtifactEncodeError: if ``data`` cannot be encoded as JSON
    """
    try:
        return _encoder.encode(data) + b"\n"
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise ArtifactEncodeError(key, str(exc)) from exc


def load_artifact_file(key: str, path: str) -> Any:
    """Return the artifact ``key`` stored at ``path``, decoded; ``None`` if there is no file.

    :raises CorruptArtifactError: if the file does not hold valid JSON, or JSON
        nested too deep for Python to decode
    :raises NotARegularFileError: if ``path`` is a FIFO, a device, a directory...
    """
    data = read_bytes(path)
    if data is None:
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptArtifactError(key, path, str(exc)) from exc
    except RecursionError as exc:
        raise CorruptArtifactError(key, path, "nested too deep to decode") from exc


class ArtifactStore:
    """One session's artifacts: JSON documents stored as ``{artifacts_path}/{key}.json``.

    The directory is created by the first save. Every write is atomic (see
    the module docstring); ``durable=False`` skips the fsyncs: a crash of
    the process still leaves the old or the new artifact, but a power loss
    may lose recent saves. Keys are validated (:class:`InvalidNameError`).
    Only regular files are read or replaced: a FIFO, a device or a
    directory where an artifact should be raises
    :class:`~sinks.jsonl.NotARegularFileError`, and is left in place.
    Each method has an ``a``-prefixed twin that runs it in a worker thread,
    so a large artifact never blocks the event loop.

    With ``workspace_root`` (as :meth:`SessionArtifactQuery.store` makes
    it), every method first checks that the session directory, the
    artifacts directory and the artifact file do not lead out of the root
    through a symlink: one that resolves inside the root is followed, a
    dangling one or one leading out raises
    :class:`~sinks.jsonl.UnsafeSymlinkError`, before anything is read or
    written. ``delete_artifact`` removes the entry itself (a symlink, not
    what it points to). Without ``workspace_root`` nothing is checked.

    :param artifacts_path: the directory of the artifacts
    :param durable: fsync every write (the default)
    :param workspace_root: the root that ``artifacts_path`` lies below, if any
    """

    def __init__(
        self,
        artifacts_path: str | os.PathLike[str],
        *,
        durable: bool = True,
        workspace_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.artifacts_path = Path(artifacts_path)
        self.durable = durable
        self._dir = os.fspath(self.artifacts_path)
        self._root = None if workspace_root is None else os.fspath(workspace_root)

    def _checked(self, path: str) -> str:
        """``path`` with the symlinks under the root followed, or refused (no root: unchanged)."""
        return path if self._root is None else resolve_inside(self._root, path)

    def artifact_path(self, key: str) -> Path:
        """Return where the artifact ``key`` is stored (whether or not it exists).

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        """
        return self.artifacts_path / (check_key(key) + SUFFIX)

    def _path(self, key: str) -> str:
        return os.path.join(self._dir, check_key(key) + SUFFIX)

    def save_artifact(self, key: str, data: Any) -> None:
        """Save ``data`` (JSON) as the artifact ``key``, replacing any previous version atomically.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises ArtifactEncodeError: if ``data`` cannot be encoded as JSON
        :raises NotARegularFileError: if a FIFO, a directory... is in the artifact's place
        :raises UnsafeSymlinkError: if a symlink leads out of the workspace root
        """
        path = self._checked(self._path(key))
        self._write(path, _encode(key, data))

    def _write(self, path: str, encoded: bytes) -> None:
        directory, filename = os.path.split(path)
        write_atomic(directory, filename, encoded, self.durable)

    def _save_all(self, artifacts: Mapping[str, Any]) -> None:
        """Save each of ``artifacts`` (key: data) as :meth:`save_artifact` does, in order.

        For :class:`ArtifactSink`'s batches: everything is encoded first (an
        :class:`ArtifactEncodeError` writes nothing), the directory is checked
        once, each file costs one ``lstat``, and the directory is fsynced once,
        after the last rename. An artifact file that is a symlink is checked
        and saved on its own, as :meth:`save_artifact` saves it.
        """
        files = [(check_key(key) + SUFFIX, _encode(key, data)) for key, data in artifacts.items()]
        directory = self._checked(self._dir)
        renamed = False
        for filename, encoded in files:
            target = os.path.join(directory, filename)
            if target_is_link(target):
                self._write(self._checked(os.path.join(self._dir, filename)), encoded)
                continue
            replace_atomic(directory, target, encoded, self.durable)
            renamed = True
        if renamed and self.durable:
            fsync_directory(directory)

    def load_artifact(self, key: str) -> Any:
        """Return the artifact ``key`` decoded from JSON, or ``None`` if there is none.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises CorruptArtifactError: if the file does not hold valid JSON
        :raises NotARegularFileError: if a FIFO, a directory... is in the artifact's place
        :raises UnsafeSymlinkError: if a symlink leads out of the workspace root
        """
        return load_artifact_file(key, self._checked(self._path(key)))

    def artifact_bytes(self, key: str) -> bytes | None:
        """Return the artifact ``key`` as stored (its JSON's bytes), or ``None`` if there is none.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises NotARegularFileError: if a FIFO, a directory... is in the artifact's place
        :raises UnsafeSymlinkError: if a symlink leads out of the workspace root
        """
        return self._read_bytes(key)

    def _read_bytes(self, key: str) -> bytes | None:
        """The stored bytes of the artifact ``key`` (for :class:`ArtifactSink`), checked."""
        return read_bytes(self._checked(self._path(key)))

    def list_artifacts(self) -> list[str]:
        """Return the keys of the stored artifacts, sorted; temporary files are never listed.

        Only regular files are artifacts; a symlink leading out of the
        workspace root is skipped and logged.

        :raises UnsafeSymlinkError: if the directory leads out of the workspace root
        """
        return list_keys(self._checked(self._dir), self._root)

    def artifact_exists(self, key: str) -> bool:
        """Return whether the artifact ``key`` is stored.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises UnsafeSymlinkError: if a symlink leads out of the workspace root
        """
        try:
            return stat.S_ISREG(os.stat(self._checked(self._path(key))).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def get_artifact_metadata(self, key: str) -> dict[str, Any]:
        """Return ``key``, ``size_bytes``, ``modified_at`` (epoch seconds) and ``path``.

        Returns ``{}`` when the artifact does not exist.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises UnsafeSymlinkError: if a symlink leads out of the workspace root
        """
        path = self._path(key)
        try:
            info = os.stat(self._checked(path))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        if not stat.S_ISREG(info.st_mode):
            return {}
        return {
            "key": key,
            "size_bytes": info.st_size,
            "modified_at": info.st_mtime,
            "path": path,
        }

    def delete_artifact(self, key: str) -> bool:
        """Delete the artifact ``key``; return whether there was one.

        :raises InvalidNameError: if ``key`` is not a valid artifact key
        :raises UnsafeSymlinkError: if the directory leads out of the workspace root
        """
        filename = check_key(key) + SUFFIX
        directory = self._checked(self._dir)
        try:
            os.unlink(os.path.join(directory, filename))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        if self.durable:
            fsync_directory(directory)
        return True

    async def asave_artifact(self, key: str, data: Any) -> None:
        """:meth:`save_artifact` in a worker thread; cancelling waits for the write to end."""
        await anyio.to_thread.run_sync(self.save_artifact, key, data)

    async def aload_artifact(self, key: str) -> Any:
        """:meth:`load_artifact` in a worker thread."""
        return await anyio.to_thread.run_sync(self.load_artifact, key)

    async def alist_artifacts(self) -> list[str]:
        """:meth:`list_artifacts` in a worker thread."""
        return await anyio.to_thread.run_sync(self.list_artifacts)

    async def aartifact_exists(self, key: str) -> bool:
        """:meth:`artifact_exists` in a worker thread."""
        return await anyio.to_thread.run_sync(self.artifact_exists, key)

    async def aget_artifact_metadata(self, key: str) -> dict[str, Any]:
        """:meth:`get_artifact_metadata` in a worker thread."""
        return await anyio.to_thread.run_sync(self.get_artifact_metadata, key)

    async def adelete_artifact(self, key: str) -> bool:
        """:meth:`delete_artifact` in a worker thread."""
        return await anyio.to_thread.run_sync(self.delete_artifact, key)

    def __repr__(self) -> str:
        return f"ArtifactStore({self._dir!r})"
