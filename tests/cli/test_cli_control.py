"""``eventbus control``: commands from another process, their outcomes and exit statuses.

Exit statuses: 0 applied (or queued with ``--wait 0``), 2 rejected, bad input, a
session that has ended or does not exist (one line on stderr), 3 not applied in time.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import _polling as polling
import factories
from eventbus import Event, EventType
from eventbus.cli import main
from sinks.jsonl import EventLog

CLI = [sys.executable, "-m", "eventbus"]
WAIT = 30.0  # seconds a step with a subprocess may take


def write(root: Path, *events: Event, session_id: str = "s1") -> None:
    with EventLog(root / session_id / "events.jsonl") as log:
        for item in events:
            log.append(item)


def ev(i: int, event_type: EventType, **metadata: Any) -> Event:
    return factories.event(i, "s1", event_type, seconds=i, metadata=metadata)


def control(root: Path, *args: str) -> list[str]:
    return ["control", str(root), *args]


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    assert "usage:" not in text
    return lines[0]


def status_of(argv: list[str]) -> int:
    """``main``'s exit status, also when argparse exits."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(str(exit.code))


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll what another process writes, for at most ``timeout`` seconds."""
    polling.wait_until(check, what, timeout)


@pytest.fixture
def running(tmp_path: Path) -> Path:
    """A workspace whose session ``s1`` runs (its log has no end) but no coordinator reads."""
    write(
        tmp_path,
        ev(0, EventType.SESSION_STARTED),
        ev(
            1,
            EventType.CLARIFICATION_REQUESTED,
            question="Which Python?",
            question_id="q1",
        ),
    )
    return tmp_path


class TestExitStatus:
    def test_nobody_applies_it_in_time_exit_3(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Queued, but no coordinator reads the inbox: one line, exit 3."""
        assert main(control(running, "s1", "pause", "--wait", "0.1")) == 3
        captured = capsys.readouterr()
        assert "not applied within 0.1s" in one_line(captured.err)
        assert "no coordinator took it" in captured.err

    def test_wait_0_queues_and_exits_0(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(control(running, "s1", "pause", "--wait", "0", "--id", "c1", "--json")) == 0
        assert json.loads(capsys.readouterr().out) == {
            "command_id": "c1",
            "kind": "pause",
            "status": "queued",
            "reason": None,
        }
        (line,) = (running / "s1" / "control.jsonl").read_text().splitlines()
        assert json.loads(line)["actor"] == "cli"

    def test_a_rejected_command_is_one_line_and_exit_2(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The log says rejected (a resent id): the first outcome, with its reason."""
        write(
            running,
            ev(
                2,
                EventType.CONTROL_REJECTED,
                command_id="c1",
                kind="resume",
                target=None,
                actor="cli",
                reason="the session is not paused",
            ),
        )
        assert main(control(running, "s1", "resume", "--id", "c1")) == 2
        line = one_line(capsys.readouterr().err)
        assert line.endswith("rejected: resume (command c1): the session is not paused")
        assert not (running / "s1" / "control.jsonl").exists()  # decided: not sent again

    def test_a_resent_applied_command_prints_its_outcome_after_the_end(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write(
            running,
            ev(
                2,
                EventType.CONTROL_APPLIED,
                command_id="c1",
                kind="pause",
                target=None,
                actor="cli",
                reason=None,
            ),
            ev(3, EventType.SESSION_ABORTED),
        )
        assert main(control(running, "s1", "pause", "--id", "c1")) == 0
        assert capsys.readouterr().out == "applied: pause (command c1)\n"

    def test_a_session_that_has_ended_takes_no_command(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write(running, ev(2, EventType.SESSION_COMPLETED))
        assert main(control(running, "s1", "abort")) == 2
        assert "session 's1' has ended" in one_line(capsys.readouterr().err)
        assert not (running / "s1" / "control.jsonl").exists()

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            pytest.param(["nope", "pause"], "no session 'nope'", id="unknown-session"),
            pytest.param(["../s1", "pause"], "invalid session id", id="bad-session-id"),
            pytest.param(["s1", "answer", "q1"], "required: TEXT", id="missing-text"),
            pytest.param(["s1", "zap"], "invalid choice: 'zap'", id="unknown-action"),
            pytest.param(["s1", "pause", "--wait", "x"], "expected a number", id="bad-wait"),
            pytest.param(["s1", "answer", "q1", ""], "needs the text", id="empty-answer"),
            pytest.param(["s1", "pause", "--id", "a\tb"], "control character", id="bad-id"),
        ],
    )
    def test_bad_input_is_one_line_and_exit_2(
        self,
        running: Path,
        capsys: pytest.CaptureFixture[str],
        args: list[str],
        message: str,
    ) -> None:
        assert status_of(control(running, *args)) == 2
        assert message in one_line(capsys.readouterr().err)

    def test_a_session_without_a_log_is_exit_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "s1").mkdir()
        assert main(control(tmp_path, "s1", "pending")) == 2
        assert "no session 's1'" in one_line(capsys.readouterr().err)


class TestPending:
    def test_pending_json_lists_one_object_per_line(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(control(running, "s1", "pending", "--json")) == 0
        (line,) = capsys.readouterr().out.splitlines()
        assert json.loads(line) == {
            "kind": "clarification",
            "id": "q1",
            "task_id": None,
            "role": None,
            "text": "Which Python?",
        }

    def test_an_ended_session_has_nothing_pending(
        self, running: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write(running, ev(2, EventType.SESSION_FAILED))
        assert main(control(running, "s1", "pending", "--json")) == 0
        assert main(control(running, "s1", "pending")) == 0
        assert capsys.readouterr() == ("", "")


# --- with a real coordinator: the demo in another process ---------------------------------


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """``eventbus demo --human`` running in another process, session ``h1``."""
    process = subprocess.Popen(
        [*CLI, "demo", "--workspace", str(tmp_path), "--session-id", "h1", "--human", "--tasks=3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield tmp_path, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT, check=False)


def pending(root: Path) -> list[dict[str, Any]]:
    result = cli("control", str(root), "h1", "pending", "--json")
    if result.returncode == 2:  # the session has not written its log yet
        return []
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_demo_human_answered_and_approved_through_the_cli_completes(
    demo: tuple[Path, subprocess.Popen[str]],
) -> None:
    """The question and the plan's approval wait for a person, who acts from the CLI."""
    root, process = demo
    wait_until(lambda: bool(pending(root)), "the planner's question")
    (question,) = pending(root)
    assert (question["kind"], question["id"]) == ("clarification", "q1")
    assert question["role"] == "planner"
    answered = cli("control", str(root), "h1", "answer", "q1", "3.12", "--json")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["status"] == "applied"
    unknown = cli("control", str(root), "h1", "answer", "q9", "x")
    assert unknown.returncode == 2
    assert "no question 'q9' is waiting" in one_line(unknown.stderr)
    wait_until(lambda: any(item["kind"] == "approval" for item in pending(root)), "approval")
    (approval,) = pending(root)
    assert approval["id"] == "r1"
    assert approval["text"].startswith("the plan: 3 tasks")
    approved = cli("control", str(root), "h1", "approve", "r1", "--reason", "fine", "--id", "a1")
    assert (approved.returncode, approved.stdout) == (0, "applied: approve (command a1)\n")
    out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    assert "Session h1: COMPLETE" in out
    events = EventLog(root / "h1" / "events.jsonl").get_events()
    answer = next(e for e in events if e.event_type is EventType.CLARIFICATION_ANSWERED)
    assert (answer.metadata["answer"], answer.metadata["actor"]) == ("3.12", "cli")
    again = cli("control", str(root), "h1", "approve", "r1", "--id", "a1")  # after the end
    assert (again.returncode, again.stdout) == (0, "applied: approve (command a1)\n")
    assert sum(e.metadata.get("command_id") == "a1" for e in events) == 2  # gate + outcome


def test_demo_abort_through_the_cli_kills_the_verification_command(
    tmp_path: Path,
) -> None:
    """``--verify-command`` runs a slow command; abort kills it and the session ends aborted."""
    marker = tmp_path / "verify.pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    verify = shlex.join([sys.executable, "-c", script])
    process = subprocess.Popen(
        [
            *CLI,
            "demo",
            f"--workspace={tmp_path}",
            "--session-id=a1",
            "--tasks=1",
            "--verify-command",
            verify,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: marker.exists() and marker.read_text() != "", "the verify command")
        pid = int(marker.read_text())
        aborted = cli("control", str(tmp_path), "a1", "abort", "--reason", "too slow")
        assert aborted.returncode == 0, aborted.stderr
        out, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert "Session a1: ABORTED" in out
    with pytest.raises(ProcessLookupError, match="No such process"):
        os.kill(pid, 0)
    events = EventLog(tmp_path / "a1" / "events.jsonl").get_events()
    assert events[-2].event_type is EventType.SESSION_ABORTED
    assert events[-2].metadata["reason"] == "too slow"
    assert events[-1].event_type is EventType.CONTROL_APPLIED
