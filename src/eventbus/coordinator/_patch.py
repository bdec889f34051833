"""Applying unified diffs to a workspace directory (the coordinator's patch applier).

Understands what ``diff -u``, ``git diff`` and :func:`difflib.unified_diff`
write: ``---``/``+++`` headers (``a/``/``b/`` prefixes and ``/dev/null`` for
created and deleted files), ``@@`` hunks and ``\\ No newline at end of file``.
A diff is all or nothing: every hunk of every file is checked before any
file is written, and paths may not leave the workspace.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio.to_thread
import msgspec

from ._errors import PatchError

__all__ = ["PatchResult", "UnifiedDiffApplier", "apply_unified_diff"]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a diff changed: the files (workspace-relative) and line counts."""

    files: tuple[str, ...]
    added: int = 0
    removed: int = 0


class UnifiedDiffApplier:
    """The default patch applier: applies unified diffs with :func:`apply_unified_diff`
    in a worker thread."""

    async def apply(self, workspace: Path, diff: str) -> PatchResult:
        """Apply ``diff`` to the files under ``workspace``; raise :class:`PatchError`."""
        return await anyio.to_thread.run_sync(apply_unified_diff, workspace, diff)


@dataclass
class _Hunk:
    old_start: int
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    added: int = 0
    removed: int = 0


@dataclass
class _FilePatch:
    old_path: str | None
    new_path: str | None
    hunks: list[_Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        path = self.new_path if self.new_path is not None else self.old_path
        assert path is not None
        return path


def _split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only, keeping the newlines."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _header_path(line: str, prefix: str) -> str | None:
    name = line[4:].rstrip("\r\n").split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith(prefix):
        name = name[len(prefix) :]
    return name


def _parse(diff: str) -> list[_FilePatch]:
    lines = _split_lines(diff)
    patches: list[_FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not (line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
            i += 1
            continue
        patch = _FilePatch(_header_path(line, "a/"), _header_path(lines[i + 1], "b/"))
        if patch.old_path is None and patch.new_path is None:
            raise PatchError("/dev/null", "both sides of the file header are /dev/null")
        patches.append(patch)
        i += 2
        while i < len(lines) and (match := _HUNK.match(lines[i])):
            old_len = int(match.group(2) or "1")
            new_len = int(match.group(4) or "1")
            hunk = _Hunk(int(match.group(1)))
            i += 1
            last: tuple[list[str], ...] = ()
            while i < len(lines):
                text = lines[i]
                if text.startswith("\\"):  # "\ No newline at end of file": for the last line
                    for side in last:
                        side[-1] = side[-1].removesuffix("\n")
                    i += 1
                    continue
                if len(hunk.old) >= old_len and len(hunk.new) >= new_len:
                    break
                tag, body = (text[0], text[1:]) if text != "\n" else (" ", "\n")
                if tag == " ":
                    hunk.old.append(body)
                    hunk.new.append(body)
                    last = (hunk.old, hunk.new)
                elif tag == "-":
                    hunk.old.append(body)
                    hunk.removed += 1
                    last = (hunk.old,)
                elif tag == "+":
                    hunk.new.append(body)
                    hunk.added += 1
                    last = (hunk.new,)
                else:
                    raise PatchError(patch.path, f"unexpected line in a hunk: {text.rstrip()!r}")
                i += 1
            if len(hunk.old) != old_len or len(hunk.new) != new_len:
                raise PatchError(
                    patch.path,
                    f"truncated hunk at line {hunk.old_start}: expected {old_len} old and "
                    f"{new_len} new lines, got {len(hunk.old)} and {len(hunk.new)}",
                )
            patch.hunks.append(hunk)
    if not patches:
        raise PatchError("(diff)", "no file headers ('--- a/...' then '+++ b/...') found")
    return patches


def _resolve(root: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise PatchError(name, "the path must be relative to the workspace, without '..'")
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise PatchError(name, "the path leads outside the workspace")
    return target


def _find(lines: list[str], expected: list[str], start: int, lowest: int) -> int | None:
    """The index where ``expected`` occurs, nearest to ``start`` and not before ``lowest``."""
    size = len(expected)
    last = len(lines) - size
    for offset in range(max(start - lowest, last - start, 0) + 1):
        for index in (start - offset, start + offset) if offset else (start,):
            if lowest <= index <= last and lines[index : index + size] == expected:
                return index
    return None


def _patched(patch: _FilePatch, target: Path) -> tuple[str | None, int, int]:
    """Return the new content (``None``: delete), lines added and removed."""
    if patch.old_path is None:
        if target.exists():
            raise PatchError(patch.path, "the diff creates the file but it already exists")
        old: list[str] = []
    else:
        try:
            old = _split_lines(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PatchError(patch.path, "the file does not exist") from None
    result: list[str] = []
    position = added = removed = 0
    for number, hunk in enumerate(patch.hunks, 1):
        start = hunk.old_start - 1 if hunk.old else hunk.old_start
        index = _find(old, hunk.old, max(start, 0), position)
        if index is None:
            raise PatchError(
                patch.path,
                f"hunk {number} (line {hunk.old_start}) does not match the file's content",
            )
        result.extend(old[position:index])
        result.extend(hunk.new)
        position = index + len(hunk.old)
        added += hunk.added
        removed += hunk.removed
    result.extend(old[position:])
    if patch.new_path is None:
        if result:
            raise PatchError(patch.path, "the diff deletes the file but leaves lines in it")
        return None, added, removed
    return "".join(result), added, removed


def _write(target: Path, content: str) -> None:
    """Replace ``target`` atomically, keeping its mode (a new file gets 0o666 - umask)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(temp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content.encode("utf-8"))
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def apply_unified_diff(workspace: Path, diff: str) -> PatchResult:
    """Apply ``diff`` to the files under ``workspace`` (created if missing).

    Every file and hunk is checked before anything is written; each file is
    replaced atomically. Raises :class:`PatchError` naming the file and the
    reason when the diff does not apply (then no file was changed).
    """
    workspace.mkdir(parents=True, exist_ok=True)
    planned: list[tuple[Path, str | None]] = []
    files: list[str] = []
    added = removed = 0
    for patch in _parse(diff):
        if None not in (patch.old_path, patch.new_path) and patch.old_path != patch.new_path:
            raise PatchError(patch.path, f"renames (from {patch.old_path!r}) are not supported")
        target = _resolve(workspace, patch.path)
        content, plus, minus = _patched(patch, target)
        planned.append((target, content))
        files.append(patch.path)
        added += plus
        removed += minus
    for target, content in planned:
        if content is None:
            target.unlink()
        else:
            _write(target, content)
    return PatchResult(files=tuple(files), added=added, removed=removed)


def make_unified_diff(path: str, old: str | None, new: str) -> str:
    """Return a unified diff that turns ``old`` into ``new`` at ``path``.

    ``old=None`` means the file does not exist yet (a ``/dev/null`` diff).
    What an agent hands to ``AgentContext.apply_diff`` to write a file.
    """
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            new.splitlines(keepends=True),
            "/dev/null" if old is None else f"a/{path}",
            f"b/{path}",
        )
    )
