"""Every example runs, so none rots."""

from __future__ import annotations

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
