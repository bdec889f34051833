"""Child process of ``test_artifact_crash``: overwrite one artifact until killed.

Usage: ``python _artifact_writer.py ARTIFACTS_DIR FIRST_VERSION REPEAT [STEP VERSION]``.

Saves versions ``FIRST_VERSION, FIRST_VERSION + 1, ...`` of the artifact
``blob`` with :class:`sinks.artifacts.ArtifactStore`, each about ``8 * REPEAT``
bytes and checkable on its own (see :func:`content`). It reports every step
of every save on stdout as ``STEP VERSION`` lines, in order: ``begin``,
``half-written`` (half the bytes are in the temporary file), ``fsync`` (the
temporary file is complete), ``replace`` (about to rename it over the
artifact), ``fsync-dir`` (renamed), ``saved``. Given ``STEP VERSION``, it
stops at that step of that version, reading stdin, so the parent can kill it
at exactly that point; otherwise it never waits.
"""

from __future__ import annotations

import builtins
import os
import stat
import sys
from types import TracebackType
from typing import Any

import sinks.artifacts._files
from sinks.artifacts import ArtifactStore

MAX_VERSIONS = 100_000


def content(version: int, repeat: int) -> dict[str, object]:
    """Version ``version`` of the artifact: its number, repeated, and again at the end."""
    return {"version": version, "blob": f"{version:08d}" * repeat, "tail": version}


class Progress:
    """Reports steps on stdout and stops at the requested one."""

    def __init__(self, pause: tuple[str, int] | None) -> None:
        self.pause = pause
        self.version = -1

    def step(self, name: str) -> None:
        """Report ``name`` for the current version; wait for a kill if asked to."""
        os.write(1, f"{name} {self.version}\n".encode())
        if self.pause == (name, self.version):
            sys.stdin.readline()


class TrackedFile:
    """A binary file that reports when half of a write is done."""

    def __init__(self, file: Any, progress: Progress) -> None:
        self.file = file
        self.progress = progress

    def write(self, data: bytes) -> int:
        """Write the first half, flush it to the file, report, then write the rest."""
        half = len(data) // 2
        self.file.write(data[:half])
        self.file.flush()
        self.progress.step("half-written")
        return int(self.file.write(data[half:])) + half

    def flush(self) -> None:
        """Flush the file."""
        self.file.flush()

    def fileno(self) -> int:
        """The file's descriptor."""
        return int(self.file.fileno())

    def __enter__(self) -> TrackedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.file.close()


def instrument(progress: Progress) -> None:
    """Make the store's writes report their steps (this process only)."""
    real_open, real_fsync, real_replace = builtins.open, os.fsync, os.replace

    def tracked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_open(file, mode, *args, **kwargs)
        return TrackedFile(opened, progress) if mode == "wb" else opened

    def fsync(fd: int) -> None:
        progress.step("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        progress.step("replace")
        real_replace(src, dst)

    # setattr: these replace functions for this process only, whatever their stubs say
    setattr(sinks.artifacts._files, "open", tracked_open)  # noqa: B010
    setattr(os, "fsync", fsync)  # noqa: B010
    setattr(os, "replace", replace)  # noqa: B010


def main() -> None:
    """Save version after version, reporting each step on stdout."""
    directory, first, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pause = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else None
    progress = Progress(pause)
    instrument(progress)
    store = ArtifactStore(directory)
    for version in range(first, first + MAX_VERSIONS):
        progress.version = version
        progress.step("begin")
        store.save_artifact("blob", content(version, repeat))
        progress.step("saved")


if __name__ == "__main__":
    main()
