"""A writer killed at any moment leaves the old or the new artifact, never a partial one.

A child process (``_artifact_writer.py``) overwrites one artifact with large,
self-checking versions and reports each step of each save on stdout; the
parent kills it with SIGKILL after a given line, so every kill lands at a
known point, with no sleeps.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sinks.artifacts import ArtifactStore, SessionArtifactQuery

WRITER = Path(__file__).with_name("_artifact_writer.py")
REPEAT = 128 * 1024  # each version is about 1 MiB of JSON
STEPS_PER_SAVE = 6  # begin, half-written, fsync, replace, fsync-dir, saved
ROUNDS = 12

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is a POSIX signal")


def is_complete(data: Any) -> bool:
    """Whether ``data`` is one whole version as the writer makes it."""
    if not isinstance(data, dict):
        return False
    version = data.get("version")
    return (
        isinstance(version, int)
        and data.get("tail") == version
        and data.get("blob") == f"{version:08d}" * REPEAT
    )


def kill_writer(
    artifacts: Path, first: int, *, after_lines: int = 0, pause: tuple[str, int] | None = None
) -> list[tuple[str, int]]:
    """Start a writer at version ``first``; SIGKILL it after ``after_lines`` lines.

    With ``pause``, the writer stops at that (step, version) and is killed
    once it reported it. Returns every (step, version) it reported.
    """
    wanted = f"{pause[0]} {pause[1]}\n".encode() if pause else None
    extra = [pause[0], str(pause[1])] if pause else []
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(artifacts), str(first), str(REPEAT), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    lines: list[bytes] = []
    while len(lines) < after_lines if wanted is None else wanted not in lines:
        line = child.stdout.readline()
        if not line:
            _, err = child.communicate()
            pytest.fail(f"the writer exited early: {err.decode()}")
        lines.append(line)
        if pause and int(line.split()[1]) > pause[1]:
            child.kill()
            child.communicate()
            pytest.fail(f"the writer went past {pause} without stopping there")
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL
    steps = [line.split() for line in [*lines, *rest.splitlines()]]
    return [(step.decode(), int(version)) for step, version in steps]


def temp_files(directory: Path) -> list[str]:
    """The temporary files a killed writer left in ``directory``."""
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_writer_killed_at_random_steps_leaves_a_complete_version(tmp_path: Path) -> None:
    """After each kill, the artifact is the last saved version or the one in flight."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    artifacts = tmp_path / "workspace" / "s1" / "artifacts"
    store = ArtifactStore(artifacts)
    current: int | None = None
    first = 0
    for round_ in range(ROUNDS):
        steps = kill_writer(artifacts, first, after_lines=rng.randint(1, 3 * STEPS_PER_SAVE))
        begun = [version for step, version in steps if step == "begin"]
        saved = [version for step, version in steps if step == "saved"]
        data = store.load_artifact("blob")
        where = f"round {round_}, seed {seed}, steps {steps[-4:]}"
        if data is None:
            assert current is None, where
            assert not saved, where
        else:
            assert is_complete(data), f"partial artifact ({where})"
            assert data["version"] in {saved[-1] if saved else current, begun[-1]}, where
            current = data["version"]
        assert store.list_artifacts() == ([] if current is None else ["blob"]), where
        first = begun[-1] + 1
    assert current is not None, f"no version was ever saved (seed {seed})"


@pytest.mark.parametrize(
    ("step", "survivor", "leaves_temp"),
    [
        pytest.param("begin", 0, False, id="before-writing"),
        pytest.param("half-written", 0, True, id="mid-write"),
        pytest.param("fsync", 0, True, id="temp-complete"),
        pytest.param("replace", 0, True, id="before-rename"),
        pytest.param("fsync-dir", 1, False, id="after-rename"),
    ],
)
def test_writer_killed_at_each_step_leaves_old_or_new_and_listings_ignore_temp(
    tmp_path: Path, step: str, survivor: int, leaves_temp: bool
) -> None:
    """Killed at a given step of saving version 1, the store holds version 0 or 1, whole."""
    workspace = tmp_path / "workspace"
    artifacts = workspace / "s1" / "artifacts"
    steps = kill_writer(artifacts, 0, pause=(step, 1))
    assert steps[-1] == (step, 1)
    data = ArtifactStore(artifacts).load_artifact("blob")
    assert is_complete(data)
    assert data["version"] == survivor
    assert bool(temp_files(artifacts)) is leaves_temp
    query = SessionArtifactQuery(workspace)
    assert query.get_session_artifacts("s1") == ["blob"]
    assert query.get_session_summary("s1")["artifacts"] == ["blob"]
    assert [s["artifacts"] for s in query.query_sessions_by_date()] == [["blob"]]
