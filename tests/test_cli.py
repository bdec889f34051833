"""`eventbus demo`: an offline session that leaves its events, artifacts and files on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eventbus import EventType
from eventbus.cli import main
from sinks.artifacts import SessionArtifactQuery
from sinks.jsonl import EventLog


def only_session(workspace: Path) -> Path:
    (directory,) = [path for path in workspace.iterdir() if path.is_dir()]
    return directory


def test_demo_writes_events_artifacts_and_project_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = tmp_path / "workspaces"
    assert main(["demo", "--workspace", str(workspace), "--session-id", "demo-1"]) == 0
    session = workspace / "demo-1"
    log = EventLog(session / "events.jsonl")
    events = log.get_events()
    assert events[0].event_type is EventType.SESSION_STARTED
    assert events[-1].event_type is EventType.SESSION_COMPLETED
    assert log.count(EventType.TASK_COMPLETED) == 8
    store = SessionArtifactQuery(workspace).store("demo-1")
    assert {"build_spec", "task_graph", "run_summary", "verification_report"} <= set(
        store.list_artifacts()
    )
    summary = store.load_artifact("run_summary")
    assert (summary["status"], summary["tasks_completed"]) == ("completed", 8)
    assert summary["cost_usd"] > 0
    project = session / "project"
    assert (project / "app" / "clamp.py").is_file()
    assert (project / "tests" / "test_clamp.py").is_file()
    assert "`app/slugify.py`" in (project / "README.md").read_text()
    out = capsys.readouterr().out
    assert "[8/8] ok" in out
    assert "Tokens and cost by model" in out
    assert "Events by type" in out
    assert str(session / "events.jsonl") in out


def test_demo_retries_one_task_once_and_uses_tokens_on_every_llm_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--workspace", str(tmp_path), "--tasks", "5"]) == 0
    log = EventLog(only_session(tmp_path) / "events.jsonl")
    (retry,) = log.get_events(event_type=EventType.TASK_RETRYING)
    assert retry.task_id == "impl-clamp"
    assert "SyntaxError" in retry.metadata["error"]
    (completed,) = log.get_events(event_type=EventType.TASK_COMPLETED, task_id="impl-clamp")
    assert completed.metadata["attempts"] == 2
    responses = log.get_events(event_type=EventType.LLM_RESPONSE_RECEIVED)
    assert len(responses) == log.count(EventType.LLM_REQUEST_SENT) > 5
    assert all(e.metadata["total_tokens"] > 0 and e.metadata["cost_usd"] > 0 for e in responses)
    assert {e.event_type for e in log.get_events(phase="VERIFICATION")} >= {
        EventType.COMMAND_EXECUTED,
        EventType.VERIFICATION_PASSED,
    }
    assert "retry   impl-clamp" in capsys.readouterr().out


def test_tasks_scales_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workspace", str(tmp_path), "--tasks", "14"]) == 0
    log = EventLog(only_session(tmp_path) / "events.jsonl")
    assert log.count(EventType.TASK_SCHEDULED) == log.count(EventType.TASK_COMPLETED) == 14
    assert "[14/14] ok" in capsys.readouterr().out


def test_demo_runs_on_trio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workspace", str(tmp_path), "--tasks", "3", "--backend", "trio"]) == 0
    assert "COMPLETE" in capsys.readouterr().out


def test_demo_runs_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "demo", "--tasks", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "workspaces").glob("*/events.jsonl"))


def test_a_task_count_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["demo", "--tasks", "0"])
    assert "expected at least 1, got 0" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main([])
    assert "required" in capsys.readouterr().err
