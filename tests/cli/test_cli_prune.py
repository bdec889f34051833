"""``eventbus prune``: what it prints, what it removes, its exit statuses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import factories
from eventbus import Event, EventType
from eventbus.cli import main
from eventbus.cli._prune import human_size, parse_size
from sinks.jsonl import EventLog

DAY = 86400


def write(root: Path, session_id: str, *events: Event, days_ago: float = 0) -> None:
    path = root / session_id / "events.jsonl"
    with EventLog(path) as log:
        for event in events:
            log.append(event)
    moment = time.time() - days_ago * DAY
    os.utime(path, (moment, moment))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """``old`` completed on T0's day, ``newer`` failed a day later, ``live`` is running."""
    write(tmp_path, "old", factories.event(0, "old", EventType.SESSION_COMPLETED, seconds=0))
    write(tmp_path, "newer", factories.event(0, "newer", EventType.SESSION_FAILED, seconds=DAY))
    write(tmp_path, "live", factories.event(0, "live", EventType.SESSION_STARTED, seconds=0))
    return tmp_path


def status_of(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:
        return int(str(exit.code))


def test_prune_removes_ended_sessions_oldest_first_and_says_so(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", str(workspace)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("removed old (completed, ended 2025-01-01T12:00:00+00:00, ")
    assert lines[1].startswith("removed newer (failed, ended 2025-01-02T12:00:00+00:00, ")
    assert lines[2].startswith("removed 2 sessions, freed ")
    assert sorted(p.name for p in workspace.iterdir()) == ["live"]


def test_dry_run_prints_and_removes_nothing(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", str(workspace), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove old (completed" in out
    assert "would remove 2 sessions, freeing " in out
    assert sorted(p.name for p in workspace.iterdir()) == ["live", "newer", "old"]


def test_max_bytes_removes_until_under(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = sum(f.stat().st_size for f in workspace.rglob("*") if f.is_file())
    old = (workspace / "old" / "events.jsonl").stat().st_size
    assert main(["prune", str(workspace), "--max-bytes", str(total - old), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["session_id"] for s in report["removed"]] == ["old"]
    assert report["after"] == total - old


def test_older_than_in_days(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both sessions ended in 2025: --older-than 1 takes both, a huge one none."""
    assert main(["prune", str(workspace), "--older-than", "100000", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("nothing to remove; the workspace holds ")
    assert main(["prune", str(workspace), "--older-than", "1", "--dry-run"]) == 0
    assert "would remove 2 sessions" in capsys.readouterr().out


def test_stale_days_end_a_quiet_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "quiet", factories.event(0, "quiet", seconds=0), days_ago=3)
    assert main(["prune", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("nothing to remove")
    assert main(["prune", str(tmp_path), "--stale", "2", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would remove quiet (stale, ended 2025-01-01")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--max-bytes", "lots"], "expected a size such as 500M", id="size"),
        pytest.param(["--older-than", "-1"], "expected 0 or more days", id="days"),
    ],
)
def test_bad_input_is_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert status_of(["prune", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_file_for_the_workspace_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert main(["prune", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a directory: give the workspace's root")


def test_a_session_that_cannot_be_removed_is_one_line_and_status_1(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename

    def rename(source: str, target: str) -> None:
        if source.endswith("old"):
            raise PermissionError(13, "Permission denied")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    assert main(["prune", str(workspace)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "eventbus prune: cannot remove old: cannot rename it out of sight: Permission denied\n"
    )
    assert "removed newer (failed" in captured.out


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("4096", 4096, id="bytes"),
        pytest.param("500M", 500 * 1024**2, id="M"),
        pytest.param("2G", 2 * 1024**3, id="G"),
        pytest.param("1.5k", 1536, id="fraction"),
        pytest.param("2GiB", 2 * 1024**3, id="GiB"),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_human_size() -> None:
    assert [human_size(n) for n in (10, 1536, 3 * 1024**3)] == ["10 B", "1.5 KiB", "3.0 GiB"]
