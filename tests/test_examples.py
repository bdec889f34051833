"""Every example runs, so none rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """The example exits 0 and writes its session under the given workspace."""
    result = subprocess.run(
        [sys.executable, str(script), "--workspace", str(tmp_path / "workspaces")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "workspaces").glob("*/events.jsonl"))


def test_quickstart_run_twice_makes_two_sessions(tmp_path: Path) -> None:
    """Each run is a session of its own: none gets a second session_started or doubled tokens."""
    script = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
    workspace = tmp_path / "workspaces"
    for _ in range(2):
        subprocess.run(
            [sys.executable, str(script), "--workspace", str(workspace)],
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
            check=True,
        )
    logs = sorted(workspace.glob("*/events.jsonl"))
    assert len(logs) == 2
    for log in logs:
        types = [json.loads(line)["event_type"] for line in log.read_text().splitlines()]
        assert types.count("session_started") == 1, log
        assert types.count("session_completed") == 1, log
