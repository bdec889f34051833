"""The ``eventbus`` command line: the demo, and failing like a Unix tool.

Exit statuses: 0 done, 1 the demo session failed, 2 a user error (one line
on stderr), 130 interrupted, 141 stdout closed by its reader.
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from _nats_servers import PrivateServer, private_nats
from eventbus import Event, EventType, SinkFailedError
from eventbus.cli import main
from eventbus.cli._common import MissingExtraError, console
from sinks.artifacts import SessionArtifactQuery
from sinks.jsonl import EventLog

__all__ = ["private_nats"]  # a fixture, imported for pytest

#: Start the command line as ``eventbus`` does, in a new interpreter.
CLI = [sys.executable, "-m", "eventbus"]


def only_session(workspace: Path) -> Path:
    (directory,) = [path for path in workspace.iterdir() if path.is_dir()]
    return directory


def test_demo_writes_events_artifacts_and_project_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = tmp_path / "workspaces"
    assert main(["demo", "--workspace", str(workspace), "--session-id", "demo-1"]) == 0
    session = workspace / "demo-1"
    assert [p.name for p in session.glob("events*")] == ["events.jsonl"]  # one segment
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
    (failed_attempt,) = log.get_events(event_type=EventType.ERROR, task_id="impl-clamp")
    assert "SyntaxError" in failed_attempt.message
    assert log.count(EventType.TASK_FAILED) == 0  # only a task failing for good logs it
    responses = log.get_events(event_type=EventType.LLM_RESPONSE_RECEIVED)
    assert len(responses) == log.count(EventType.LLM_REQUEST_SENT) > 5
    assert all(e.metadata["total_tokens"] > 0 and e.metadata["cost_usd"] > 0 for e in responses)
    assert {e.event_type for e in log.get_events(phase="VERIFICATION")} >= {
        EventType.COMMAND_EXECUTED,
        EventType.VERIFICATION_PASSED,
    }
    assert "retry   impl-clamp" in capsys.readouterr().out


def test_tasks_scale_the_plan_and_the_summary_lists_files_one_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More tasks, more files: the summary lists them one per line and counts the rest."""
    assert main(["demo", "--workspace", str(tmp_path), "--tasks", "14"]) == 0
    log = EventLog(only_session(tmp_path) / "events.jsonl")
    assert log.count(EventType.TASK_SCHEDULED) == log.count(EventType.TASK_COMPLETED) == 14
    out = capsys.readouterr().out.replace(str(tmp_path), "WORKSPACE")
    assert "[14/14] ok" in out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 120
    assert "app/clamp.py" in [line.strip() for line in lines]
    project = only_session(tmp_path) / "project"
    files = [p for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert f"({len(files)} files)" in out
    assert any(line.strip().startswith("... and ") for line in lines)


def test_demo_runs_on_trio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workspace", str(tmp_path), "--tasks", "3", "--backend", "trio"]) == 0
    assert "COMPLETE" in capsys.readouterr().out


def test_demo_runs_as_a_module(tmp_path: Path) -> None:
    """``python -m eventbus`` is the same command line as ``eventbus``."""
    result = subprocess.run(
        [*CLI, "demo", "--tasks", "2"],
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


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``eventbus --version`` prints ``eventbus <version>`` and exits 0."""
    with pytest.raises(SystemExit, match="0"):
        main(["--version"])
    assert capsys.readouterr().out == f"eventbus {version('eventbus')}\n"


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("eventbus demo: ")
    return line


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda tmp: ["--workspace", str(_file(tmp))], "is not a directory", id="file"),
        pytest.param(
            lambda tmp: ["--workspace", str(_file(tmp) / "ws")], "Not a directory", id="under-file"
        ),
        pytest.param(
            lambda tmp: ["--workspace", str(tmp / "ws"), "--session-id", "../escape"],
            "invalid session id '../escape'",
            id="session-id-path",
        ),
        pytest.param(
            lambda tmp: ["--workspace", str(tmp / "ws"), "--session-id", "two\nlines"],
            "invalid session id",
            id="session-id-newline",
        ),
    ],
)
def test_a_user_error_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], list[str]],
    expected: str,
) -> None:
    """A workspace that cannot be one, or a bad session id: one line, exit 2, nothing run."""
    assert main(["demo", *make(tmp_path)]) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "ws").exists()


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only bind mount (writes fail with EROFS, even for root)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(directory), str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("inside", [False, True], ids=["is-read-only", "under-read-only"])
def test_a_read_only_workspace_is_one_line_and_exit_2(
    read_only_dir: Path, capsys: pytest.CaptureFixture[str], inside: bool
) -> None:
    """A workspace on a read-only file system is refused before the session starts."""
    workspace = read_only_dir / "ws" if inside else read_only_dir
    assert main(["demo", "--workspace", str(workspace)]) == 2
    line = _one_error_line(capsys)
    assert f"cannot write in workspace {workspace}: Read-only file system" in line


def test_an_existing_session_id_is_refused_and_its_log_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reusing a session id never appends a second run to the old session's log."""
    log = tmp_path / "s1" / "events.jsonl"
    log.parent.mkdir()
    log.write_bytes(b'{"the": "old session"}\n')
    assert main(["demo", "--workspace", str(tmp_path), "--session-id", "s1"]) == 2
    line = _one_error_line(capsys)
    assert "session 's1' already exists" in line
    assert "--session-id" in line
    assert log.read_bytes() == b'{"the": "old session"}\n'
    assert [path.name for path in log.parent.iterdir()] == ["events.jsonl"]


def test_backend_trio_without_trio_names_the_extra(tmp_path: Path) -> None:
    """``--backend trio`` without trio installed: one line saying what to install, exit 2."""
    hide_trio = (
        "import sys, runpy; sys.modules['trio'] = None; "
        "runpy.run_module('eventbus', run_name='__main__')"
    )
    workspace = tmp_path / "ws"
    result = subprocess.run(
        [sys.executable, "-c", hide_trio, "demo", "--backend", "trio", "--workspace", workspace],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "eventbus demo: --backend trio needs trio, which is not installed: "
        "pip install 'eventbus[trio]'"
    ]
    assert not workspace.exists()


def _last_event(workspace: Path) -> EventType:
    return EventLog(only_session(workspace) / "events.jsonl").get_events()[-1].event_type


def test_a_closed_stdout_ends_the_demo_quietly_with_141(tmp_path: Path) -> None:
    """``eventbus demo | head -3``: no traceback, nothing on stderr, session aborted, 141."""
    with subprocess.Popen(
        [*CLI, "demo", "--workspace", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        head = [process.stdout.readline() for _ in range(3)]
        process.stdout.close()
        assert process.wait(timeout=60) == 141
        assert process.stderr.read() == ""
    assert head[0].startswith("eventbus demo: 8 tasks")
    assert _last_event(tmp_path) is EventType.SESSION_ABORTED


def test_a_demo_started_with_stdout_closed_runs_to_the_end(tmp_path: Path) -> None:
    """``eventbus demo >&-``: the session completes; no file takes stdout's descriptor."""
    result = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *CLI, "demo", "--tasks", "3", "--workspace", tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert _last_event(tmp_path) is EventType.SESSION_COMPLETED


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_aborts_the_session_with_one_line_and_exit_130(tmp_path: Path, backend: str) -> None:
    """SIGINT mid-session: exit 130, one line on stderr, the log ends with session_aborted."""
    with subprocess.Popen(
        [*CLI, "demo", "--workspace", str(tmp_path), "--backend", backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("-- EXECUTION"):
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines() == [
        "eventbus demo: interrupted; the session was aborted "
        "(its events.jsonl ends with session_aborted)"
    ]
    assert _last_event(tmp_path) is EventType.SESSION_ABORTED


def test_the_core_imports_neither_sinks_nor_the_extras() -> None:
    """``import eventbus`` needs no sink and no extra; the CLI imports extras lazily."""
    check = (
        "import sys, eventbus; core = set(sys.modules); import eventbus.cli; "
        "extras = {'rich', 'starlette', 'uvicorn', 'sse_starlette', 'watchfiles', 'trio'}; "
        "print(sorted({'sinks'} & core), sorted(extras & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == "[] []\n"


@pytest.fixture
def color_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A colour terminal's environment, without the variables that force colour."""
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    return monkeypatch


def _printed_on(file: io.TextIOWrapper, read_fd: int) -> str:
    console(file, command="eventbus test").print("[red]red[/red]")
    file.flush()
    return os.read(read_fd, 4096).decode()


def test_console_output_is_plain_when_piped(color_env: pytest.MonkeyPatch) -> None:
    """A command's rich output into a pipe carries no escape codes."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as pipe:
        printed = _printed_on(pipe, read_fd)
    os.close(read_fd)
    assert printed == "red\n"


@pytest.mark.parametrize(("no_color", "colored"), [("", True), ("1", False)])
def test_console_honours_no_color_on_a_terminal(
    color_env: pytest.MonkeyPatch, no_color: str, colored: bool
) -> None:
    """On a terminal, colour is used unless NO_COLOR is set (and not empty)."""
    color_env.setenv("NO_COLOR", no_color)
    main_fd, terminal_fd = os.openpty()
    try:
        with os.fdopen(terminal_fd, "w") as terminal:
            printed = _printed_on(terminal, main_fd)
    finally:
        os.close(main_fd)
    assert ("\x1b[31m" in printed) is colored
    assert "red" in printed


def test_a_command_needing_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rich installed, asking for a console says which extra to install."""
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    with pytest.raises(
        MissingExtraError, match=r"^eventbus tail needs rich, .* 'eventbus\[web\]'$"
    ):
        console(sys.stdout, command="eventbus tail")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_demo_serve_prints_the_url_first_and_serves_on_after_the_session(tmp_path: Path) -> None:
    """--serve: the URL is the first line, the API shows the live session, Ctrl-C stops it."""
    import httpx

    port = _free_port()
    with subprocess.Popen(
        [
            *CLI,
            "demo",
            "--workspace",
            str(tmp_path),
            "--tasks",
            "3",
            "--serve",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.strip() == f"dashboard: http://127.0.0.1:{port}/"
        for line in process.stdout:
            if "serving the dashboard until Ctrl-C" in line:
                break
        sessions = httpx.get(f"http://127.0.0.1:{port}/api/sessions", timeout=10).json()
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert [s["status"] for s in sessions["sessions"]] == ["completed"]
    assert "data-testid" in page.text or "<html" in page.text.lower()
    assert process.returncode == 130
    assert err.splitlines() == [
        "eventbus demo: interrupted; stopped serving the dashboard (the session had ended)"
    ]


# --- exports that fail: --otel and --nats -------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "demo", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


LIBRARY_ADVICE = ("bus.stats()", "unsubscribe", "Traceback", "the bus retries")


def test_demo_otel_to_a_closed_port_prints_the_summary_then_one_line_and_exits_1(
    tmp_path: Path,
) -> None:
    """The receiver is down: the session completes, the summary and the files are printed,
    then one line says what was not exported, why, and how to send it later; exit 1."""
    pytest.importorskip("opentelemetry.sdk")
    url = f"http://127.0.0.1:{closed_port()}"
    workspace = tmp_path / "ws"
    result = _demo(
        "--tasks", "3", "--workspace", str(workspace), "--session-id", "d1", "--otel", url
    )
    assert result.returncode == 1, result.stderr
    assert "Session d1: COMPLETE" in result.stdout
    assert "\nFiles\n" in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"eventbus demo: the OpenTelemetry export to {url} failed (Connection refused): "
    )
    events = len(EventLog(workspace / "d1" / "events.jsonl").get_events())
    assert f"{events} of the session's {events} events were not exported" in line
    assert f"eventbus export-otel {workspace} --session d1 --endpoint {url}" in line
    assert not any(advice in result.stderr for advice in LIBRARY_ADVICE)


def test_demo_nats_without_a_server_is_one_line_and_exit_2_before_any_session(
    tmp_path: Path,
) -> None:
    """No NATS server: refused at once, in one line, before a session (or a workspace) exists."""
    pytest.importorskip("nats")
    url = f"nats://127.0.0.1:{closed_port()}"
    workspace = tmp_path / "ws"
    result = _demo("--workspace", str(workspace), "--nats", url, timeout=20)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"eventbus demo: cannot connect to NATS at {url}: Connection refused; start "
        "nats-server with JetStream (nats-server -js) or fix the --nats URL "
        "(no session was started)"
    ]
    assert not workspace.exists()


@pytest.mark.service
def test_nats_server_stopped_mid_session_prints_the_summary_then_one_line_and_exits_1(
    private_nats: PrivateServer, tmp_path: Path
) -> None:
    """The server goes away during the session: the session completes and its log has every
    event; the summary is printed, then one line says what JetStream lacks; exit 1."""
    workspace = tmp_path / "ws"
    args = ["--tasks", "3", "--workspace", str(workspace), "--session-id", "d1"]
    slow = ["--pace", "0.2"]  # so that the session outlasts the server
    with subprocess.Popen(
        [*CLI, "demo", *args, *slow, "--nats", private_nats.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("-- EXECUTION"):
                private_nats.stop()
                break
        out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert "Session d1: COMPLETE" in out
    assert "\nFiles\n" in out
    (line,) = err.splitlines()
    assert line.startswith(f"eventbus demo: publishing to NATS at {private_nats.url} failed (")
    log = workspace / "d1" / "events.jsonl"
    assert f"events are not in JetStream stream 'EVENTS'; all are in {log}" in line
    assert not any(advice in err for advice in LIBRARY_ADVICE)
    assert EventLog(log).count(EventType.SESSION_COMPLETED) == 1


def test_demo_otel_with_a_bad_url_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL that is not one is refused before the session, naming the option."""
    pytest.importorskip("opentelemetry.sdk")
    workspace = tmp_path / "ws"
    assert main(["demo", "--workspace", str(workspace), "--otel", "localhost"]) == 2
    assert _one_error_line(capsys).startswith(
        "eventbus demo: --otel: the OTLP endpoint must be an http(s) URL"
    )
    assert not workspace.exists()


def test_a_failed_sink_reaching_main_is_one_line_without_python_advice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that ends with SinkFailedError: one line naming the sink and its error, exit 2,
    and none of the error's advice about the Python API."""

    def fail(args: object) -> int:
        raise SinkFailedError(
            [("jsonl", OSError(28, "No space left on device"))],
            [("nats", "s1", TimeoutError("no PubAck"))],
        )

    monkeypatch.setattr("eventbus.cli._demo.run", fail)
    assert main(["demo"]) == 2
    assert _one_error_line(capsys) == (
        "eventbus demo: sink 'jsonl' failed: [Errno 28] No space left on device; "
        "sink 'nats' could not write session 's1': no PubAck"
    )


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        pytest.param("serve", lambda ws: [str(ws)], id="serve"),
        pytest.param("demo", lambda ws: ["--workspace", str(ws), "--serve"], id="demo-serve"),
        pytest.param(
            "relay",
            lambda ws: ["--nats", "nats://127.0.0.1:9", "--workspace", str(ws), "--serve"],
            id="relay-serve",
        ),
    ],
)
def test_a_port_in_use_is_one_line_naming_it_exit_2_and_no_url(
    tmp_path: Path, command: str, arguments: Callable[[Path], list[str]]
) -> None:
    """The port is bound before any URL is printed, a session started or a stream consumed."""
    import socket

    workspace = tmp_path / "ws"
    if command == "serve":
        workspace.mkdir()
    with socket.socket() as holder:  # another server holds the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [*CLI, command, *arguments(workspace), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"eventbus {command}: port {port} on 127.0.0.1 is in use: "
        "pass --port with a free port (0: any)"
    ]
    if command != "serve":
        assert not workspace.exists()  # no session started, nothing consumed


def _refusing_inotify() -> list[str]:
    """A command prefix running in a user namespace where the kernel refuses every inotify."""
    prefix = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"',
        "sh",
    ]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if probe.returncode != 0:
        pytest.skip(f"cannot limit inotify in a user namespace: {probe.stderr.decode().strip()}")
    return prefix


def test_serve_polls_the_logs_when_the_kernel_refuses_a_watcher(tmp_path: Path) -> None:
    """No inotify instance to be had: one warning line, and streams still get new events."""
    import httpx

    log = EventLog(tmp_path / "s1" / "events.jsonl")
    log.append(Event(event_type=EventType.INFO, session_id="s1", message="stored"))
    command = [*_refusing_inotify(), *CLI, "serve", str(tmp_path), "--port", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        url = process.stdout.readline().split()[-1]
        with httpx.stream("GET", f"{url}api/sessions/s1/stream", timeout=10) as reply:
            ready, _, _ = select.select([process.stderr], [], [], 10)  # the follower is on
            assert ready, "no warning within 10 s"
            warning = process.stderr.readline()
            written = [
                Event(event_type=EventType.INFO, session_id="s1", message=f"new {n}")
                for n in range(2)
            ]
            for event in written:
                log.append(event)
            ids = (line for line in reply.iter_lines() if line.startswith("id: "))
            received = [next(ids) for _ in written]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    log.close()
    assert received == [f"id: {event.id}" for event in written]
    assert warning.startswith(f"cannot watch {tmp_path} for changes (")
    assert "Too many open files" in warning
    assert warning.rstrip().endswith("polling its logs every 100 ms instead")
    assert err.splitlines() == ["eventbus serve: interrupted"]


def test_the_bound_socket_is_tcp_so_responses_are_not_delayed() -> None:
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets made with IPPROTO_TCP."""
    import socket

    from eventbus.cli._serve import bind

    with bind("127.0.0.1", 0) as sock:
        assert (sock.family, sock.proto) == (socket.AF_INET, socket.IPPROTO_TCP)


@pytest.mark.anyio
async def test_the_dashboard_serves_from_its_own_thread_while_the_callers_loop_is_blocked(
    tmp_path: Path,
) -> None:
    """demo/relay --serve: clients are served by another event loop, never the coordinator's."""
    import httpx

    from eventbus.cli._serve import dashboard

    out = io.StringIO()
    async with dashboard(tmp_path, port=0, out=out) as url:
        # A blocking call on this loop: only a server on another loop can answer it.
        response = httpx.get(f"{url}api/sessions", timeout=10)  # noqa: ASYNC210
    assert response.json() == {"sessions": []}
    assert out.getvalue() == f"dashboard: {url}\n"


def test_serve_with_max_events_answers_every_event_from_a_bounded_index(tmp_path: Path) -> None:
    """--max-events N: the index holds N events; the rest are answered from the logs."""
    import httpx

    events = [
        Event(event_type=EventType.INFO, session_id="s1", message=f"event {n}") for n in range(7)
    ]
    with EventLog(tmp_path / "s1" / "events.jsonl") as log:
        for event in events:
            log.append(event)
    command = [*CLI, "serve", str(tmp_path), "--port", "0", "--max-events", "2"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        first = httpx.get(f"{url}api/sessions/s1/events?limit=4", timeout=30).json()
        rest = httpx.get(
            f"{url}api/sessions/s1/events?limit=4&after={first['next']}", timeout=30
        ).json()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert first["ids"] + rest["ids"] == [event.id for event in events]
    assert rest["next"] is None
