"""``eventbus tail``, ``query``, ``sessions`` and ``usage`` over a workspace on disk."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import factories
from eventbus import Event, EventType, encode_event
from eventbus.cli import main
from sinks.jsonl import EventLog
from sinks.workspace import Workspace

CLI = [sys.executable, "-m", "eventbus"]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def event(session: str, message: str, seconds: float, **fields: Any) -> Event:
    timestamp = T0 + timedelta(seconds=seconds)
    return factories.event(0, session, **{"message": message, "timestamp": timestamp, **fields})


def write(root: Path, *events: Event) -> None:
    for item in events:
        with EventLog(root / item.session_id / "events.jsonl") as log:
            log.append(item)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    write(
        workspace,
        event("a", "started", 0, event_type=EventType.SESSION_STARTED, phase="IDEA"),
        event("b", "started", 1, event_type=EventType.SESSION_STARTED, phase="IDEA"),
        event("a", "line one\nline two", 2, phase="PLAN", task_id="t1", agent_role="coder"),
        event(
            "a",
            "response",
            3,
            event_type=EventType.LLM_RESPONSE_RECEIVED,
            phase="PLAN",
            model="gpt-x",
            agent_role="coder",
            metadata={"prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.25},
        ),
        event("b", "done", 4, event_type=EventType.SESSION_COMPLETED, phase="COMPLETE"),
    )
    return workspace


def stored_lines(root: Path, session: str) -> list[bytes]:
    return (root / session / "events.jsonl").read_bytes().splitlines()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- query ---------------------------------------------------------------------------------


def test_query_prints_readable_lines_in_time_order(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per event: time, session, phase, task, role, type, message, tokens and cost."""
    status, out, _ = run(capsys, "query", str(root))
    lines = out.splitlines()
    assert status == 0
    assert [line.split("  ")[1] for line in lines] == ["a", "b", "a", "a", "b"]
    assert lines[2] == "2026-01-01 12:00:02.000  a  PLAN  t1  coder  info  line one line two"
    assert lines[3].endswith("llm_response_received  response  tokens=120  cost=$0.2500")


def test_query_json_prints_the_stored_lines(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json output is the logs' lines, byte for byte."""
    status, out, _ = run(capsys, "query", str(root), "--session", "a", "--json")
    assert status == 0
    assert out.encode().splitlines() == stored_lines(root, "a")


def test_query_filters_combine(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Type, phase, role, model and time filters all apply."""
    _, out, _ = run(
        capsys, "query", str(root), "--type", "info,llm_response_received", "--type", "warning",
        "--phase", "PLAN", "--role", "coder", "--since", "2026-01-01T12:00:03", "--json",
    )  # fmt: skip
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["response"]
    _, out, _ = run(capsys, "query", str(root), "--model", "gpt-x", "--until", "2026-01-01T12:00")
    assert out == ""


@pytest.mark.parametrize(
    "placement",
    [
        pytest.param(("DIR", "--type", "session_started", "session_completed"), id="dir-first"),
        pytest.param(("--type", "session_started", "session_completed", "DIR"), id="dir-last"),
        pytest.param(("--type", "session_started", "--type", "session_completed", "DIR"), id="rep"),
    ],
)
def test_several_types_follow_one_type_flag_wherever_dir_is(
    root: Path, capsys: pytest.CaptureFixture[str], placement: tuple[str, ...]
) -> None:
    """`--type T ...` takes several types, before or after DIR."""
    argv = [str(root) if part == "DIR" else part for part in placement]
    status, out, err = run(capsys, "query", *argv, "--json")
    assert (status, err) == (0, "")
    assert [json.loads(line)["event_type"] for line in out.splitlines()] == [
        "session_started",
        "session_started",
        "session_completed",
    ]


def test_query_limit_says_how_to_get_the_next_page(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit prints a page and, on stderr, the --after that continues it."""
    _, first, err = run(capsys, "query", str(root), "--limit", "3", "--json")
    assert len(first.splitlines()) == 3
    after = err.split("--after ")[1].split(")")[0]
    _, rest, err = run(capsys, "query", str(root), "--after", after, "--json")
    assert err == ""
    assert len(rest.splitlines()) == 2
    assert json.loads(first.splitlines()[-1])["id"] == after


def test_query_pages_a_seed_format_log_by_the_ids_the_index_derives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lines without ids (duplicates too): the --after hint is the indexed id, and pages on."""
    root = tmp_path / "ws"
    lines = []
    for i in range(6):
        stored = json.loads(encode_event(event("s", f"seed {i}", i // 2)))
        del stored["id"], stored["parent_id"]
        lines.append(json.dumps(stored).encode() + b"\n")
    (root / "s").mkdir(parents=True)
    (root / "s" / "events.jsonl").write_bytes(b"".join([*lines, b"\n", *lines[:2]]))
    workspace = Workspace(root)
    events, _ = workspace.events()
    assert len({e.id for e in events}) == len(events) == 8
    _, first, err = run(capsys, "query", str(root), "--limit", "3", "--json")
    after = err.split("--after ")[1].split(")")[0]
    assert after == events[2].id
    assert first.encode().splitlines() == workspace.read_lines(events[:3])
    _, rest, err = run(capsys, "query", str(root), "--after", after, "--json")
    assert err == ""
    assert rest.encode().splitlines() == workspace.read_lines(events[3:])


# --- tail ----------------------------------------------------------------------------------


def test_tail_prints_the_last_n_events(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-n N: the last N, oldest first; the default is 20."""
    _, out, _ = run(capsys, "tail", str(root), "-n", "2")
    assert [line.split("  ")[5] for line in out.splitlines()] == [
        "llm_response_received",
        "session_completed",
    ]
    _, out, _ = run(capsys, "tail", str(root))
    assert len(out.splitlines()) == 5


def test_tail_json_prints_the_stored_lines(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tail --json prints each event's line exactly as stored."""
    _, out, _ = run(capsys, "tail", str(root), "--session", "b", "--json")
    assert out.encode().splitlines() == stored_lines(root, "b")


# --- sessions and usage --------------------------------------------------------------------


def test_sessions_table_is_plain_when_piped(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Newest first; no colour codes or box drawing when stdout is not a terminal."""
    _, out, _ = run(capsys, "sessions", str(root))
    lines = out.splitlines()
    assert lines[0].split() == ["session", "status", "phase", "tasks", "ok/failed", "tokens",
                                "cost", "started", "(UTC)", "duration"]  # fmt: skip
    assert [line.split()[0] for line in lines[2:]] == ["b", "a"]
    assert lines[2].split()[1:3] == ["completed", "-"]
    assert "\x1b[" not in out
    assert "─" not in out


def test_sessions_json_is_the_api_shape(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints {"sessions": [...]}, the same summaries as the data layer."""
    _, out, _ = run(capsys, "sessions", str(root), "--json", "--since", "2026-01-01T12:00:01")
    assert json.loads(out) == {"sessions": Workspace(root).sessions(since=T0.replace(second=1))}
    assert [s["session_id"] for s in json.loads(out)["sessions"]] == ["b"]


def test_usage_json_is_the_api_object(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the usage object; the table ends with the total."""
    _, out, _ = run(capsys, "usage", str(root), "--by", "agent_role", "--json")
    assert json.loads(out) == Workspace(root).usage("agent_role")
    assert json.loads(out)["rows"][0]["key"] == "coder"
    _, out, _ = run(capsys, "usage", str(root))
    assert out.splitlines()[-1].split() == ["total", "1", "100", "20", "120", "$0.2500"]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["sessions", "{missing}"], "no workspace directory at", id="no-dir"),
        pytest.param(["query", "{root}", "--session", "zz"], "no session 'zz'", id="unknown"),
        pytest.param(["tail", "{root}", "--session", "../a"], "invalid session id", id="bad-id"),
        pytest.param(["query", "{root}", "--since", "yesterday"], "cannot read the time", id="t"),
        pytest.param(["query", "{root}", "--after", "nope"], "nope", id="unknown-after"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    root: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A user error is one line on stderr, exit status 2, no traceback."""
    filled = [arg.format(root=root, missing=root / "missing") for arg in argv]
    status, out, err = run(capsys, *filled)
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert message in err


# --- tail -f, in another process -----------------------------------------------------------


def test_tail_follow_prints_each_new_event_once_and_promptly(tmp_path: Path) -> None:
    """tail -f: new sessions, a line written in two parts, each event once, and its latency."""
    root = tmp_path / "ws"
    write(root, event("old", "stored", 0))
    with subprocess.Popen(
        [*CLI, "tail", str(root), "-f", "--json", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as tail:
        lines, printed, written, halves = _drive_tail(tail, root)
    assert lines.count(halves) == 1
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 204
    latencies = sorted((printed[i] - written[i]) * 1000 for i in written)
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"tail -f write-to-print latency over {len(latencies)} events: "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip


def _drive_tail(
    tail: subprocess.Popen[bytes], root: Path
) -> tuple[list[bytes], dict[str, float], dict[str, float], bytes]:
    """Write events while ``tail`` runs; return its lines, print and write times, the split line."""
    printed: dict[str, float] = {}
    lines: list[bytes] = []
    arrived = threading.Condition()

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            with arrived:
                lines.append(line)
                printed[json.loads(line)["id"]] = time.perf_counter()
                arrived.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(event_id: str) -> None:
        with arrived:
            assert arrived.wait_for(lambda: event_id in printed, timeout=2), (
                f"{event_id} not printed within 2 s"
            )

    try:
        with arrived:
            assert arrived.wait_for(lambda: len(lines) == 1, timeout=20)  # the stored one
        written: dict[str, float] = {}
        log = EventLog(root / "s1" / "events.jsonl")
        for i in range(200):
            new = event("s1", f"live {i}", 10 + i)
            written[new.id] = time.perf_counter()
            log.append(new)
            wait_for(new.id)
        log.close()
        made_later = event("later", "a session made after tail started", 300)
        written[made_later.id] = time.perf_counter()
        write(root, made_later)
        wait_for(made_later.id)
        halves = encode_event(event("later", "written in two parts", 301)) + b"\n"
        with open(root / "later" / "events.jsonl", "ab") as file:
            file.write(halves[:40])
            file.flush()
            marker = event("s1", "marker", 302)
            write(root, marker)
            wait_for(marker.id)
            file.write(halves[40:])
        split_id = json.loads(halves)["id"]
        wait_for(split_id)
    finally:
        tail.terminate()
        tail.wait(timeout=10)
        reader.join(timeout=10)
    return lines, printed, written, halves
