"""Artifacts stay inside the workspace, only regular files are read, and damage stays local.

Real symlinks, real FIFOs and real directories in the place of files. A FIFO
opened for reading the naive way blocks forever, so every call that meets one
runs in a thread joined with a timeout: a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import sinks._artifact_files
import sinks._jsonl_files
from eventbus import (
    Event,
    EventBatch,
    EventType,
    PartialWriteError,
    create_llm_response_event,
    create_session_event,
    encode_event,
)
from sinks import EventIndex
from sinks.artifacts import (
    ArtifactSink,
    ArtifactStore,
    NotARegularFileError,
    RunSummary,
    SessionArtifactQuery,
    UnsafeSymlinkError,
)
from sinks.workspace import Workspace

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TIMEOUT = 5.0


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the workspace that must never be read or changed."""
    (tmp_path / "outside" / "artifacts").mkdir(parents=True)
    (tmp_path / "outside" / "secret.json").write_text('{"keep": true}')
    (tmp_path / "outside" / "artifacts" / "run_summary.json").write_text('{"status": "stolen"}')
    return tmp_path / "outside"


@pytest.fixture
def root(tmp_path: Path, outside: Path) -> Path:
    """The workspace root, next to ``outside``."""
    (tmp_path / "workspace").mkdir()
    return tmp_path / "workspace"


def tree(path: Path) -> dict[str, bytes]:
    """Every regular file under ``path`` with its content."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def session(root: Path, session_id: str, *, hour: int = 0) -> ArtifactStore:
    """A session with a run_summary started at T0 + ``hour`` hours; its (unchecked) store."""
    store = ArtifactStore(root / session_id / "artifacts", durable=False)
    started = T0.replace(hour=hour).isoformat()
    store.save_artifact("run_summary", RunSummary(session_id=session_id, started_at=started))
    return store


def write_log(path: Path, hour: int = 0) -> None:
    """An events.jsonl whose first event is at T0 + ``hour`` hours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    event = create_session_event(path.parent.name, EventType.SESSION_STARTED)
    event = msgspec.structs.replace(event, timestamp=T0.replace(hour=hour))
    path.write_bytes(encode_event(event) + b"\n")


@pytest.fixture
def bounded() -> Iterator[Callable[..., Any]]:
    """Call a function in a thread for at most TIMEOUT seconds; return or raise its outcome.

    FIFOs made with :func:`fifo` are opened for writing afterwards, which
    frees a thread stuck opening one, so a hang cannot outlive the test.
    """

    def call(function: Callable[..., Any], *args: Any) -> Any:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = function(*args)
            except BaseException as exc:  # handed to the test
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(TIMEOUT)
        if thread.is_alive():
            pytest.fail(f"{getattr(function, '__name__', function)} hung on a FIFO")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    yield call
    for path in _fifos:  # unblock a reader a regression left waiting
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    _fifos.clear()


_fifos: list[Path] = []


def fifo(path: Path) -> Path:
    """Make a real FIFO at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    _fifos.append(path)
    return path


# --- symlinks ---------------------------------------------------------------------------


def test_session_directory_linked_outside_refuses_writes(root: Path, outside: Path) -> None:
    """A session directory that is a symlink out of the root is never written through."""
    (root / "s1").symlink_to(outside)
    before = tree(outside)
    store = SessionArtifactQuery(root).store("s1")
    with pytest.raises(UnsafeSymlinkError, match=r"s1 is a symlink to .*not inside the workspace"):
        store.save_artifact("concept", {"pwned": 1})
    assert tree(outside) == before


def test_artifacts_directory_linked_outside_refuses_reads(root: Path, outside: Path) -> None:
    """Neither listing nor loading reads an artifacts directory that leads out of the root."""
    (root / "s1").mkdir()
    (root / "s1" / "artifacts").symlink_to(outside)
    query = SessionArtifactQuery(root)
    with pytest.raises(UnsafeSymlinkError, match="artifacts is a symlink"):
        query.store("s1").load_artifact("secret")
    with pytest.raises(UnsafeSymlinkError, match="artifacts is a symlink"):
        query.store("s1").list_artifacts()
    with pytest.raises(UnsafeSymlinkError, match="artifacts is a symlink"):
        query.get_session_artifacts("s1")
    with pytest.raises(UnsafeSymlinkError, match="artifacts is a symlink"):
        query.get_session_summary("s1")


def test_artifact_file_linked_outside_is_refused_and_not_listed(
    root: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An artifact that is a symlink out of the root is neither read, replaced nor listed."""
    store = session(root, "s1")
    (store.artifacts_path / "secret.json").symlink_to(outside / "secret.json")
    before = tree(outside)
    checked = SessionArtifactQuery(root).store("s1")
    with pytest.raises(UnsafeSymlinkError, match=r"secret.json is a symlink"):
        checked.load_artifact("secret")
    with pytest.raises(UnsafeSymlinkError, match=r"secret.json is a symlink"):
        checked.save_artifact("secret", {"pwned": 1})
    with caplog.at_level(logging.WARNING, logger="sinks.artifacts"):
        assert checked.list_artifacts() == ["run_summary"]
    assert "secret.json is a symlink" in caplog.text
    assert tree(outside) == before


def test_dangling_symlink_error_names_the_link(root: Path, tmp_path: Path) -> None:
    """A link to nothing is refused, naming the link and its target, and nothing is created."""
    (root / "s1").mkdir()
    link = root / "s1" / "artifacts"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(UnsafeSymlinkError, match=f"{link} is a symlink to .*gone.* does not exist"):
        SessionArtifactQuery(root).store("s1").save_artifact("concept", {})
    assert not (tmp_path / "gone").exists()


def test_symlinks_inside_the_root_are_followed(root: Path) -> None:
    """A session directory linked to another directory of the root reads and writes there."""
    session(root, "real")
    (root / "alias").symlink_to(root / "real")
    store = SessionArtifactQuery(root).store("alias")
    store.save_artifact("concept", {"idea": 1})
    assert (root / "real" / "artifacts" / "concept.json").is_file()
    assert store.list_artifacts() == ["concept", "run_summary"]


def test_listings_skip_and_report_sessions_leading_outside(
    root: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A linked-out session directory or artifacts directory is left out and logged."""
    session(root, "s1")
    (root / "evil").symlink_to(outside)
    (root / "s2").mkdir()
    (root / "s2" / "artifacts").symlink_to(outside / "artifacts")
    query = SessionArtifactQuery(root)
    with caplog.at_level(logging.WARNING, logger="sinks.artifacts"):
        assert query.list_sessions() == ["s1", "s2"]
        assert [s["session_id"] for s in query.query_sessions_by_date()] == ["s1"]
        assert [s["session_id"] for s in query.query_session_summaries()] == ["s1"]
    assert "evil is a symlink" in caplog.text
    assert "session 's2' is left out of the listing" in caplog.text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sink_does_not_write_through_a_session_linked_outside(
    root: Path, outside: Path, backend: str
) -> None:
    """The linked-out session fails alone; the other session of the batch is saved."""
    (root / "s1").symlink_to(outside)
    before = tree(outside)
    sink = ArtifactSink(root, durable=False)
    batch = EventBatch([llm("s1"), llm("s2")])
    with pytest.raises(PartialWriteError, match="session 's1'"):
        anyio.run(sink.write, batch, backend=backend)
    assert tree(outside) == before
    assert isinstance(sink.failed_sessions["s1"], UnsafeSymlinkError)
    summary = SessionArtifactQuery(root).store("s2").load_artifact("run_summary")
    assert summary["event_count"] == 1


def test_event_index_from_workspace_skips_logs_leading_outside(
    root: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rebuilding an index reads no log outside the root, and says which it skipped."""
    write_log(root / "s1" / "events.jsonl")
    write_log(outside / "events.jsonl")
    (root / "evil").symlink_to(outside)
    (root / "s2").mkdir()
    (root / "s2" / "events.jsonl").symlink_to(outside / "events.jsonl")
    with caplog.at_level(logging.WARNING, logger="sinks.memory"):
        index = EventIndex.from_workspace(root)
    assert len(index) == 1
    assert "evil is a symlink" in caplog.text
    assert "events.jsonl is a symlink" in caplog.text


# --- FIFOs and directories where files should be ----------------------------------------


def llm(session_id: str) -> Any:
    """An llm_response_received event: 10 + 5 tokens, 0.25 USD."""
    return create_llm_response_event(session_id, "model-a", "coder", 10, 5, cost_usd=0.25)


def test_fifo_artifact_is_refused_by_load_without_hanging(
    root: Path, bounded: Callable[..., Any]
) -> None:
    """Loading an artifact that is a FIFO raises at once instead of waiting for a writer."""
    store = session(root, "s1")
    fifo(store.artifacts_path / "concept.json")
    with pytest.raises(NotARegularFileError, match=r"concept.json is a FIFO \(named pipe\)"):
        bounded(store.load_artifact, "concept")


def test_fifo_artifact_is_refused_by_save_and_left_in_place(root: Path) -> None:
    """Saving over a FIFO someone put there raises and leaves the FIFO alone."""
    store = session(root, "s1")
    path = fifo(store.artifacts_path / "concept.json")
    with pytest.raises(NotARegularFileError, match=r"concept.json is a FIFO"):
        store.save_artifact("concept", {"idea": 1})
    assert stat.S_ISFIFO(path.lstat().st_mode)
    assert store.list_artifacts() == ["run_summary"]


def test_directory_in_place_of_an_artifact_is_refused(root: Path) -> None:
    """A directory named like an artifact is neither read nor replaced."""
    store = session(root, "s1")
    (store.artifacts_path / "concept.json").mkdir()
    with pytest.raises(NotARegularFileError, match=r"concept.json is a directory"):
        store.load_artifact("concept")
    with pytest.raises(NotARegularFileError, match=r"concept.json is a directory"):
        store.save_artifact("concept", {})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sink_meeting_a_fifo_run_summary_fails_that_session_without_hanging(
    root: Path, bounded: Callable[..., Any], backend: str
) -> None:
    """The sink reads no FIFO: that session fails, the other one is saved."""
    fifo(root / "s1" / "artifacts" / "run_summary.json")
    sink = ArtifactSink(root, durable=False)
    batch = EventBatch([llm("s1"), llm("s2")])
    with pytest.raises(PartialWriteError, match=r"session 's1'.*FIFO"):
        bounded(lambda: anyio.run(sink.write, batch, backend=backend))
    assert set(sink.failed_sessions) == {"s1"}
    assert SessionArtifactQuery(root).store("s2").load_artifact("run_summary") is not None


# --- one unreadable session never breaks a listing --------------------------------------


def test_fifo_run_summary_is_reported_and_the_other_sessions_listed(
    root: Path, bounded: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The FIFO's session is listed, dated by its log, with ``error`` saying why."""
    session(root, "s1", hour=1)
    write_log(root / "s2" / "events.jsonl", hour=2)
    fifo(root / "s2" / "artifacts" / "run_summary.json")
    query = SessionArtifactQuery(root)
    summaries = bounded(query.query_session_summaries)
    assert [s["session_id"] for s in summaries] == ["s2", "s1"]
    assert summaries[0]["status"] is None
    assert "run_summary cannot be read" in (summaries[0]["error"] or "")
    assert "FIFO" in (summaries[0]["error"] or "")
    assert summaries[1]["error"] is None
    with caplog.at_level(logging.WARNING, logger="sinks.artifacts"):
        dated = bounded(query.query_sessions_by_date)
    assert [(s["session_id"], s["created_from"]) for s in dated] == [
        ("s2", "events"),
        ("s1", "run_summary"),
    ]
    assert "session 's2' is listed by what can be read" in caplog.text


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_unreadable_events_log_is_reported_and_the_rest_listed(
    root: Path, bounded: Callable[..., Any], kind: str
) -> None:
    """An events.jsonl that is a FIFO or a directory is named in ``error``, never a hang."""
    session(root, "s1", hour=1)
    store = ArtifactStore(root / "s2" / "artifacts", durable=False)
    store.save_artifact("build_spec", {})
    log = root / "s2" / "events.jsonl"
    if kind == "fifo":
        fifo(log)
    else:
        log.mkdir()
    summaries = bounded(SessionArtifactQuery(root).query_session_summaries)
    by_id = {s["session_id"]: s for s in summaries}
    assert set(by_id) == {"s1", "s2"}
    assert by_id["s2"]["created_from"] == "build_spec_mtime"
    assert "events.jsonl cannot be read" in (by_id["s2"]["error"] or "")
    assert by_id["s1"]["error"] is None


def test_unreadable_run_summary_permission_is_reported(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permission denied (faked: tests run as root) is one session's error, not the listing's."""
    session(root, "s1", hour=1)
    session(root, "s2", hour=2)
    write_log(root / "s2" / "events.jsonl", hour=2)
    real = sinks._jsonl_files.open_regular

    def denied(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        if os.fspath(path).endswith(os.path.join("s2", "artifacts", "run_summary.json")):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, flags, mode)

    monkeypatch.setattr(sinks._artifact_files, "open_regular", denied)
    summaries = SessionArtifactQuery(root).query_session_summaries()
    by_id = {s["session_id"]: s for s in summaries}
    assert by_id["s1"]["error"] is None
    assert "Permission denied" in (by_id["s2"]["error"] or "")


# --- the read side (sinks.workspace): a log linked outside is never read -------------------


@pytest.fixture
def linked_out(root: Path, outside: Path) -> Path:
    """``s1`` inside; ``evil/events.jsonl -> ../../outside/events.jsonl``; ``s3``'s log
    a symlink to a file elsewhere inside the root."""
    write_log(root / "s1" / "events.jsonl", hour=1)
    outside_log = outside / "events.jsonl"
    event = create_session_event("evil", EventType.SESSION_STARTED, message="SECRET")
    outside_log.write_bytes(encode_event(event) + b"\n")
    (root / "evil").mkdir()
    (root / "evil" / "events.jsonl").symlink_to(os.path.join("..", "..", "outside", "events.jsonl"))
    write_log(root / ".store" / "s3" / "events.jsonl", hour=3)
    (root / "s3").mkdir()
    (root / "s3" / "events.jsonl").symlink_to(os.path.join("..", ".store", "s3", "events.jsonl"))
    return root


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("index", [True, False], ids=["indexed", "scan"])
def test_workspace_queries_skip_a_log_linked_outside_and_say_so_once(
    linked_out: Path, caplog: pytest.LogCaptureFixture, index: bool
) -> None:
    """Every query over all sessions leaves the linked-out log unread; one warning per link."""
    workspace = Workspace(linked_out, index=index)
    with caplog.at_level(logging.WARNING, logger="sinks.workspace"):
        for _ in range(3):
            events, _ = workspace.events()
            assert sorted(e.session_id for e in events) == ["s1", "s3"]
            assert [e.session_id for e, _ in workspace.latest_lines(10)] == ["s1", "s3"]
            lines = [line for _, line in workspace.event_lines()[0]]
            assert all(b"SECRET" not in line for line in lines)
            assert workspace.usage("session_id")["total"]["calls"] == 0
    assert _warnings(caplog, "evil/events.jsonl is a symlink") == 1


@pytest.mark.parametrize("index", [True, False], ids=["indexed", "scan"])
def test_workspace_refuses_a_session_whose_log_leads_outside(linked_out: Path, index: bool) -> None:
    """Asked for that session, the workspace raises instead of reading outside the root."""
    workspace = Workspace(linked_out, index=index)
    match = r"evil/events.jsonl is a symlink to .*not inside the workspace root"
    with pytest.raises(UnsafeSymlinkError, match=match):
        workspace.events(session_id="evil")
    with pytest.raises(UnsafeSymlinkError, match=match):
        workspace.latest_lines(5, session_id="evil")
    with pytest.raises(UnsafeSymlinkError, match=match):
        workspace.usage(session_id="evil")
    assert [e.session_id for e in workspace.events(session_id="s3")[0]] == ["s3"]


def test_workspace_sessions_list_a_log_linked_outside_unread_with_its_error(
    linked_out: Path,
) -> None:
    """The session's row counts nothing from the outside log and says why."""
    rows = {row["session_id"]: row for row in Workspace(linked_out).sessions()}
    assert rows["evil"]["event_count"] == 0
    assert "events.jsonl is a symlink" in rows["evil"]["error"]
    assert rows["s3"]["event_count"] == 1


@pytest.mark.parametrize("index", [True, False], ids=["indexed", "scan"])
def test_workspace_refuses_a_session_directory_leading_outside(
    root: Path, outside: Path, index: bool
) -> None:
    """``evil -> ../outside``: not listed, and refused by name."""
    write_log(outside / "events.jsonl")
    write_log(root / "s1" / "events.jsonl")
    (root / "evil").symlink_to(outside)
    workspace = Workspace(root, index=index)
    assert [row["session_id"] for row in workspace.sessions()] == ["s1"]
    assert [e.session_id for e in workspace.events()[0]] == ["s1"]
    with pytest.raises(UnsafeSymlinkError, match=r"evil is a symlink to .*not inside"):
        workspace.events(session_id="evil")
    with pytest.raises(UnsafeSymlinkError, match=r"evil is a symlink to .*not inside"):
        workspace.session("evil")


@pytest.mark.anyio
@pytest.mark.parametrize("index", [True, False], ids=["indexed", "scan"])
async def test_follow_never_yields_a_log_linked_outside(linked_out: Path, index: bool) -> None:
    """Following every session (``tail -f``, file-mode SSE) reads the stored and new
    events of the logs inside, never the one leading out, even as it grows."""
    workspace = Workspace(linked_out, index=index)
    outside_log = linked_out.parent / "outside" / "events.jsonl"
    seen: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with contextlib.aclosing(workspace.follow_lines()) as stream:
            async for event, line in stream:
                assert b"SECRET" not in line
                seen.append(event.session_id)
                if len(seen) == 2:  # the stored ones: now grow both logs
                    grown = Event(event_type=EventType.INFO, session_id="evil", message="SECRET 2")
                    async with await anyio.open_file(outside_log, "ab") as file:
                        await file.write(encode_event(grown) + b"\n")
                    write_log(linked_out / "s4" / "events.jsonl", hour=4)
                if event.session_id == "s4":
                    break
    assert seen == ["s1", "s3", "s4"]
