"""``eventbus tail``, ``query``, ``sessions`` and ``usage`` over a workspace on disk."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import eventbus
import factories
from eventbus import Event, EventType, encode_event
from eventbus.cli import main
from sinks.jsonl import EventLog
from sinks.workspace import Workspace

CLI = [sys.executable, "-m", "eventbus"]
# A subprocess run in another directory imports the eventbus this test imported.
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(Path(eventbus.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    ),
}
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
            metadata={
                "prompt_tokens": 100,
                "cached_tokens": 60,
                "completion_tokens": 20,
                "cost_usd": 0.25,
            },
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
    assert out.splitlines()[-1].split() == ["total", "1", "100", "60", "20", "120", "$0.2500"]


def test_usage_rows_and_total_count_cached_tokens(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every usage row, the total and the table say how many prompt tokens were cached."""
    _, out, _ = run(capsys, "usage", str(root), "--by", "session_id", "--json")
    usage = json.loads(out)
    assert [row["cached_tokens"] for row in usage["rows"]] == [60]
    assert usage["total"]["cached_tokens"] == 60
    _, out, _ = run(capsys, "usage", str(root))
    assert out.splitlines()[0].split() == [
        "model", "calls", "prompt", "cached", "completion", "total", "tokens", "cost"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("short", "field"), [("role", "agent_role"), ("task", "task_id"), ("session", "session_id")]
)
def test_usage_by_the_short_name_groups_by_its_field(
    root: Path, capsys: pytest.CaptureFixture[str], short: str, field: str
) -> None:
    """--by role, task and session (the names of the query flags) group by agent_role, ..."""
    status, out, err = run(capsys, "usage", str(root), "--by", short, "--json")
    assert (status, err) == (0, "")
    assert json.loads(out) == Workspace(root).usage(field)
    assert json.loads(out)["by"] == field
    _, out, _ = run(capsys, "usage", str(root), "--by", short)
    assert out.split()[0] == field


# --- DIR: ./workspaces by default ----------------------------------------------------------


@pytest.mark.parametrize("command", ["tail", "query", "sessions", "usage"])
def test_dir_defaults_to_the_demos_workspaces(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Without DIR, each command reads ./workspaces, where `eventbus demo` writes."""
    monkeypatch.chdir(root.parent)
    root.rename("workspaces")
    status, out, err = run(capsys, command, "--json")
    assert (status, err) == (0, "")
    assert out.strip()
    assert run(capsys, command, "workspaces", "--json") == (0, out, "")
    with pytest.raises(SystemExit, match="0"):
        main([command, "--help"])
    assert "default: ./workspaces" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["sessions", "--json"], '{"sessions":[]}\n', id="sessions"),
        pytest.param(["query", "--json"], "", id="query"),
        pytest.param(["tail", "--json"], "", id="tail"),
        pytest.param(["usage", "--json"], None, id="usage"),
    ],
)
def test_a_missing_default_workspace_has_no_sessions(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    expected: str | None,
) -> None:
    """No ./workspaces yet: an empty answer, exit 0, not an error."""
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, *argv)
    assert (status, err) == (0, "")
    if expected is None:
        assert json.loads(out)["rows"] == []
    else:
        assert out == expected
    assert not (tmp_path / "workspaces").exists()


def test_serve_also_defaults_to_workspaces_and_says_how_to_make_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eventbus serve` without DIR serves ./workspaces; missing, one line says what to do."""
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "serve")
    assert (status, out) == (2, "")
    assert err == (
        "eventbus serve: no workspace directory at 'workspaces': give DIR, or run "
        "'eventbus demo' first (it writes ./workspaces)\n"
    )


# --- event types ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["query", "tail"])
def test_an_unknown_type_is_refused_listing_the_known_ones(
    root: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """--type bogus exits 2 naming the flag and the known types, instead of printing nothing."""
    status, out, err = run(capsys, command, str(root), "--type", "info,bogus")
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"eventbus {command}: --type bogus: no such event type")
    assert "known types: " in err
    assert "llm_response_received" in err.split("known types: ")[1]


def test_a_type_a_newer_producer_wrote_is_accepted(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A type this version does not know but a log holds is a valid --type, even where absent."""
    write(root, event("a", "from the future", 5, event_type="kind_from_v9"))
    status, out, err = run(capsys, "query", str(root), "--type", "kind_from_v9", "--json")
    assert (status, err) == (0, "")
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["from the future"]
    status, out, err = run(capsys, "tail", str(root), "--session", "b", "--type", "kind_from_v9")
    assert (status, out, err) == (0, "", "")
    _, out, _ = run(capsys, "query", str(root), "--type", "kind_from_v9", "--phase", "X")
    assert out == ""


def test_an_unknown_after_speaks_of_the_flag(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--after with no such event says which flag, and where ids come from, not library advice."""
    status, _, err = run(capsys, "query", str(root), "--after", "nonsense")
    assert status == 2
    assert err == (
        "eventbus query: --after nonsense: no event with that id in the workspace; take an "
        "id from `eventbus query --json` (or the --after that the previous page printed)\n"
    )


# --- bad input ---------------------------------------------------------------------------


def test_every_read_command_answers_when_a_line_and_a_run_summary_nest_too_deep(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No RecursionError traceback: the deep line is skipped, the deep summary reported."""
    line = encode_event(event("a", "x", 5))[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    with (root / "a" / "events.jsonl").open("ab") as file:
        file.write(line + b"\n")
    (root / "b" / "artifacts").mkdir()
    (root / "b" / "artifacts" / "run_summary.json").write_bytes(b"[" * 3000 + b"]" * 3000)
    for command in ("query", "tail", "usage", "sessions"):
        status, out, err = run(capsys, command, str(root), "--json")
        assert (command, status, err) == (command, 0, "")
        assert out
    _, out, _ = run(capsys, "query", str(root), "--json")
    assert len(out.splitlines()) == 5
    _, out, _ = run(capsys, "sessions", str(root), "--json")
    rows = {row["session_id"]: row for row in json.loads(out)["sessions"]}
    assert "nested too deep" in rows["b"]["error"]
    assert rows["a"]["error"] is None


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


async def _line(stream: BufferedByteReceiveStream) -> bytes:
    return await stream.receive_until(b"\n", 1 << 20)


@pytest.mark.anyio
@pytest.mark.parametrize("exists", [True, False], ids=["dir-exists", "default-dir-missing"])
async def test_tail_follow_waits_for_a_session_that_has_not_started(
    tmp_path: Path, exists: bool
) -> None:
    """tail -f --session X, started before X (even before ./workspaces): X's events come out."""
    root = tmp_path / "workspaces"
    if exists:
        root.mkdir()
    argv = [*CLI, "tail", "-f", "--session", "late", "--json", *([str(root)] if exists else [])]
    tail = await anyio.open_process(argv, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert tail.stdout is not None
    assert tail.stderr is not None
    async with tail:
        try:
            with anyio.fail_after(30):
                err = BufferedByteReceiveStream(tail.stderr)
                while b": waiting for the " not in await _line(err):
                    pass  # the follower runs, and waits (for the directory, or the session)
                first = event("late", "the first event", 0)
                write(root, first)
                line = await _line(BufferedByteReceiveStream(tail.stdout))
            assert json.loads(line)["id"] == first.id
            assert tail.returncode is None
        finally:
            tail.terminate()


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


# --- a log linked outside the workspace ----------------------------------------------------


@pytest.fixture
def linked(root: Path, tmp_path: Path) -> Path:
    """``evil/events.jsonl -> ../../outside/events.jsonl``, beside sessions a and b."""
    write(tmp_path / "outside", event("evil", "SECRET", 5))
    (root / "evil").mkdir()
    (root / "evil" / "events.jsonl").symlink_to(Path("..", "..", "outside", "evil", "events.jsonl"))
    return root


@pytest.mark.parametrize("command", ["query", "tail"])
def test_query_and_tail_skip_a_log_linked_outside_and_report_it(
    linked: Path, command: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Over every session the linked-out log is not printed; a warning names the link."""
    with caplog.at_level("WARNING", logger="sinks.workspace"):
        status, out, _ = run(capsys, command, str(linked), "--json")
    assert status == 0
    assert [json.loads(line)["session_id"] for line in out.splitlines()] == list("abaab")
    assert "evil/events.jsonl is a symlink" in caplog.text


@pytest.mark.parametrize("command", ["query", "tail", "usage"])
def test_a_session_whose_log_leads_outside_is_refused_in_one_line(
    linked: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--session evil`` exits 2 with one line naming the link and what to do."""
    status, out, err = run(capsys, command, str(linked), "--session", "evil")
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert "evil/events.jsonl is a symlink" in err
    assert "replace the link by what it points to" in err
