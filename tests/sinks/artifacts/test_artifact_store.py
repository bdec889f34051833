"""ArtifactStore and SessionArtifactQuery: the seed's API, names, corruption, dates."""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sinks.artifacts._files
from eventbus import Event, EventBusError, EventType, InvalidNameError, encode_jsonl
from sinks.artifacts import (
    ArtifactEncodeError,
    ArtifactStore,
    CorruptArtifactError,
    RunSummary,
    SessionArtifactQuery,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The workspace root, with an ``outside`` sibling that must never change."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text('{"keep": true}')
    return tmp_path / "workspace"


def make_store(root: Path, session_id: str = "s1") -> ArtifactStore:
    """An artifacts store of one session, without fsync (tests do not lose power)."""
    return ArtifactStore(root / session_id / "artifacts", durable=False)


def make_session(root: Path, session_id: str, *, started: float | None, **artifacts: Any) -> None:
    """A session whose run_summary records ``started`` (epoch seconds), plus ``artifacts``."""
    store = make_store(root, session_id)
    if started is not None:
        started_at = datetime.fromtimestamp(started, UTC).isoformat()
        store.save_artifact("run_summary", RunSummary(session_id=session_id, started_at=started_at))
    for key, data in artifacts.items():
        store.save_artifact(key, data)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its content."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# --- the seed's tests -----------------------------------------------------------------


def test_list_artifacts(root: Path) -> None:
    """Every saved key is listed once, sorted; nothing else in the directory is."""
    store = make_store(root)
    for key in ["task_graph", "build_spec", "concept"]:
        store.save_artifact(key, {"key": key})
    store.save_artifact("concept", {"version": 2})
    (store.artifacts_path / "notes.txt").write_text("not an artifact")
    (store.artifacts_path / "folder.json").mkdir()
    assert store.list_artifacts() == ["build_spec", "concept", "task_graph"]


def test_artifact_exists(root: Path) -> None:
    """Exists is true exactly for saved, not deleted, artifacts."""
    store = make_store(root)
    assert not store.artifact_exists("build_spec")
    store.save_artifact("build_spec", {"name": "demo"})
    assert store.artifact_exists("build_spec")
    assert not store.artifact_exists("concept")


def test_get_artifact_metadata(root: Path) -> None:
    """Metadata gives the key, the file's size, mtime and path; {} when absent."""
    store = make_store(root)
    store.save_artifact("build_spec", {"name": "demo", "files": ["a.py"]})
    meta = store.get_artifact_metadata("build_spec")
    path = store.artifacts_path / "build_spec.json"
    assert meta == {
        "key": "build_spec",
        "size_bytes": path.stat().st_size,
        "modified_at": path.stat().st_mtime,
        "path": str(path),
    }
    assert store.get_artifact_metadata("missing") == {}


def test_delete_artifact(root: Path) -> None:
    """Delete returns True once and False after; the artifact is gone."""
    store = make_store(root)
    store.save_artifact("concept", {"idea": "x"})
    assert store.delete_artifact("concept") is True
    assert store.delete_artifact("concept") is False
    assert store.load_artifact("concept") is None
    assert store.list_artifacts() == []


def test_list_sessions(root: Path) -> None:
    """Sessions are the directories with valid session ids, sorted."""
    for session_id in ["s2", "s1", "s3"]:
        make_session(root, session_id, started=T0, build_spec={})
    (root / ".trash").mkdir()
    (root / "README.txt").write_text("not a session")
    (root / "bad\nname").mkdir()
    assert SessionArtifactQuery(root).list_sessions() == ["s1", "s2", "s3"]


def test_get_session_artifacts(root: Path) -> None:
    """A session's artifacts are listed; an unknown session has none and is not created."""
    make_session(root, "s1", started=None, build_spec={}, concept={})
    query = SessionArtifactQuery(root)
    assert query.get_session_artifacts("s1") == ["build_spec", "concept"]
    assert query.get_session_artifacts("unknown") == []
    assert not (root / "unknown").exists()


def test_query_sessions_by_date(root: Path) -> None:
    """Sessions come newest first, filtered by inclusive bounds on their start."""
    for index, session_id in enumerate(["old", "mid", "new"]):
        make_session(root, session_id, started=T0 + index * HOUR, build_spec={})
    query = SessionArtifactQuery(root)

    everything = query.query_sessions_by_date()
    assert [s["session_id"] for s in everything] == ["new", "mid", "old"]
    assert everything[0] == {
        "session_id": "new",
        "created_at": T0 + 2 * HOUR,
        "created_from": "run_summary",
        "artifacts": ["build_spec", "run_summary"],
    }
    assert [s["session_id"] for s in query.query_sessions_by_date(T0 + HOUR)] == ["new", "mid"]
    assert [s["session_id"] for s in query.query_sessions_by_date(None, T0 + HOUR)] == [
        "mid",
        "old",
    ]
    bounds = (datetime.fromtimestamp(T0 + HOUR, UTC), datetime.fromtimestamp(T0 + HOUR, UTC))
    assert [s["session_id"] for s in query.query_sessions_by_date(*bounds)] == ["mid"]


def test_get_session_summary(root: Path) -> None:
    """The summary has the seed's keys, filled from the artifacts and the run_summary."""
    summary = RunSummary(
        session_id="s1",
        status="completed",
        started_at=datetime.fromtimestamp(T0, UTC).isoformat(),
        files_generated=["a.py", "b.py"],
        total_tokens=450,
        cost_usd=0.25,
    )
    make_session(root, "s1", started=None, build_spec={}, task_graph={}, run_summary=summary)
    result = SessionArtifactQuery(root).get_session_summary("s1")
    assert {key: result[key] for key in list(result)[:8]} == {  # type: ignore[literal-required]
        "session_id": "s1",
        "has_build_spec": True,
        "has_concept": False,
        "has_task_graph": True,
        "has_run_summary": True,
        "artifacts": ["build_spec", "run_summary", "task_graph"],
        "status": "completed",
        "files_generated": 2,
    }
    assert result["created_at"] == T0
    assert result["error"] is None
    assert result.get("total_tokens") == 450
    assert result.get("cost_usd") == 0.25


def test_session_summary_without_run_summary_has_no_status(root: Path) -> None:
    """Without a run_summary, status is None and no files are counted (the seed's shape)."""
    make_session(root, "s1", started=None, build_spec={})
    result = SessionArtifactQuery(root).get_session_summary("s1")
    assert result["status"] is None
    assert result["files_generated"] == 0
    assert result["has_run_summary"] is False


# --- round trips and writes ---------------------------------------------------------------


def test_save_then_load_round_trips_json(root: Path) -> None:
    """What is saved loads back equal; a missing key loads as None."""
    store = make_store(root)
    data = {"name": "demo", "nested": {"list": [1, 2.5, None, True, "é"]}}
    store.save_artifact("build_spec", data)
    assert store.load_artifact("build_spec") == data
    assert store.load_artifact("concept") is None


def test_save_replaces_previous_version_and_leaves_no_temp_file(root: Path) -> None:
    """A second save replaces the first, and only the artifact's file remains."""
    store = make_store(root)
    store.save_artifact("concept", {"version": 1})
    store.save_artifact("concept", {"version": 2})
    assert store.load_artifact("concept") == {"version": 2}
    assert os.listdir(store.artifacts_path) == ["concept.json"]


def test_durable_save_writes_the_same_file(root: Path) -> None:
    """The default (fsyncing) store writes what the fast one writes."""
    store = ArtifactStore(root / "s1" / "artifacts")
    store.save_artifact("concept", {"idea": "x"})
    assert store.load_artifact("concept") == {"idea": "x"}
    assert store.delete_artifact("concept") is True


def test_store_creates_its_directory_only_on_first_save(root: Path) -> None:
    """Constructing or reading a store never creates directories."""
    store = make_store(root)
    assert store.list_artifacts() == []
    assert not store.artifact_exists("x")
    assert not root.exists()
    store.save_artifact("x", [])
    assert store.artifacts_path.is_dir()


def test_unencodable_data_is_refused_and_nothing_is_written(root: Path) -> None:
    """Data JSON cannot hold raises ArtifactEncodeError naming the key; no file appears."""
    store = make_store(root)
    with pytest.raises(ArtifactEncodeError, match=r"cannot save artifact 'bad'"):
        store.save_artifact("bad", {"value": object()})
    assert not root.exists()


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("résumé", id="unicode"),
        pytest.param("build spec v2", id="inner-spaces"),
        pytest.param("a.b.c", id="dots"),
        pytest.param("x" * 250, id="255-bytes-with-suffix"),
        pytest.param("CONFIG", id="starts-like-a-device"),
    ],
)
def test_unusual_but_safe_keys_round_trip(root: Path, key: str) -> None:
    """Keys that are single, printable file names are accepted and listed."""
    store = make_store(root)
    store.save_artifact(key, {"key": key})
    assert store.load_artifact(key) == {"key": key}
    assert store.list_artifacts() == [key]


# --- hostile names ----------------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param("", "it is empty", id="empty"),
    pytest.param("..", "contains '..'", id="dotdot"),
    pytest.param("../x", "contains '..'", id="parent"),
    pytest.param("a/../../b", "contains '..'", id="traversal"),
    pytest.param("..\\..\\x", "contains '..'", id="windows-traversal"),
    pytest.param("a/b", "contains '/'", id="slash"),
    pytest.param("/etc/passwd", "contains '/'", id="absolute"),
    pytest.param("C:\\Windows\\x", "contains '\\'", id="backslash"),
    pytest.param(".hidden", "starts with '.'", id="leading-dot"),
    pytest.param(".", "starts with '.'", id="dot"),
    pytest.param("trailing.", "ends with '.'", id="trailing-dot"),
    pytest.param("a\x00b", "non-printable character '\\x00'", id="nul"),
    pytest.param("line\nbreak", "non-printable character '\\n'", id="newline"),
    pytest.param("tab\tx", "non-printable character '\\t'", id="tab"),
    pytest.param("del\x7f", "non-printable character '\\x7f'", id="del"),
    pytest.param("ls\u2028x", "non-printable character '\\u2028'", id="line-separator"),
    pytest.param("ps\u2029x", "non-printable character '\\u2029'", id="paragraph-separator"),
    pytest.param("txt\u202egnp", "non-printable character '\\u202e'", id="bidi-override"),
    pytest.param(" ", "starts or ends with whitespace", id="space-only"),
    pytest.param(" padded ", "starts or ends with whitespace", id="padded"),
    pytest.param("CON", "reserved device name", id="windows-con"),
    pytest.param("nul.txt", "reserved device name", id="windows-nul"),
    pytest.param("x" * 300, "bytes long as a file name", id="too-long"),
    pytest.param("é" * 130, "bytes long as a file name", id="too-long-utf8"),
]

KEY_METHODS = [
    pytest.param(lambda store, key: store.save_artifact(key, {"evil": True}), id="save"),
    pytest.param(ArtifactStore.load_artifact, id="load"),
    pytest.param(ArtifactStore.artifact_exists, id="exists"),
    pytest.param(ArtifactStore.get_artifact_metadata, id="metadata"),
    pytest.param(ArtifactStore.delete_artifact, id="delete"),
    pytest.param(ArtifactStore.artifact_path, id="path"),
]

SESSION_METHODS = [
    pytest.param(SessionArtifactQuery.get_session_artifacts, id="artifacts"),
    pytest.param(SessionArtifactQuery.get_session_summary, id="summary"),
    pytest.param(SessionArtifactQuery.get_session_created_at, id="created_at"),
    pytest.param(lambda query, session_id: query.store(session_id), id="store"),
]


@pytest.mark.parametrize("call", KEY_METHODS)
@pytest.mark.parametrize(("name", "reason"), HOSTILE_NAMES)
def test_hostile_artifact_key_is_refused_and_nothing_changes(
    root: Path,
    tmp_path: Path,
    name: str,
    reason: str,
    call: Callable[[ArtifactStore, str], object],
) -> None:
    """Each key method raises InvalidNameError naming the bad part; no file changes."""
    store = make_store(root, "victim")
    store.save_artifact("build_spec", {"ok": True})
    before = tree(tmp_path)
    with pytest.raises(InvalidNameError, match=rf"invalid artifact key .*{re.escape(reason)}"):
        call(store, name)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("call", SESSION_METHODS)
@pytest.mark.parametrize(("name", "reason"), HOSTILE_NAMES)
def test_hostile_session_id_is_refused_and_nothing_changes(
    root: Path,
    tmp_path: Path,
    name: str,
    reason: str,
    call: Callable[[SessionArtifactQuery, str], object],
) -> None:
    """Each session method raises InvalidNameError naming the bad part; no file changes."""
    make_session(root, "victim", started=T0, build_spec={})
    before = tree(tmp_path)
    with pytest.raises(InvalidNameError, match=rf"invalid session id .*{re.escape(reason)}"):
        call(SessionArtifactQuery(root), name)
    assert tree(tmp_path) == before


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "reason"), HOSTILE_NAMES[:12])
async def test_hostile_key_is_refused_by_async_twins(root: Path, name: str, reason: str) -> None:
    """The async twins validate keys exactly like the sync methods."""
    store = make_store(root)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.asave_artifact(name, {}),
        lambda: store.aload_artifact(name),
        lambda: store.aartifact_exists(name),
        lambda: store.aget_artifact_metadata(name),
        lambda: store.adelete_artifact(name),
    ]
    for call in calls:
        with pytest.raises(InvalidNameError, match=re.escape(reason)):
            await call()
    assert not await anyio.Path(root).exists()


def test_invalid_name_message_names_the_bad_part() -> None:
    """The message quotes the name and says what is wrong with it."""
    store = ArtifactStore("unused")
    with pytest.raises(InvalidNameError, match=r"^invalid artifact key '\.\./x': contains '\.\.'"):
        store.load_artifact("../x")


def test_invalid_name_error_is_a_value_error() -> None:
    """Existing ``except ValueError`` code catches invalid names."""
    assert issubclass(InvalidNameError, ValueError)
    assert issubclass(InvalidNameError, EventBusError)


def test_non_string_key_is_a_type_error(root: Path) -> None:
    """A key that is not a str is a TypeError, not a path."""
    with pytest.raises(TypeError, match=r"artifact key must be a str, got (Posix|Windows)Path"):
        make_store(root).load_artifact(Path("x"))  # type: ignore[arg-type]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(max_size=260))
def test_any_key_is_refused_or_stays_inside_the_root(tmp_path: Path, key: str) -> None:
    """For any text, saving either raises InvalidNameError or writes directly in the root."""
    artifacts = tmp_path / "ws" / "s" / "artifacts"
    store = ArtifactStore(artifacts, durable=False)
    try:
        store.save_artifact(key, 1)
    except InvalidNameError:
        return
    assert (artifacts / f"{key}.json").parent == artifacts
    assert store.load_artifact(key) == 1
    assert key in store.list_artifacts()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]
    assert store.delete_artifact(key)


# --- corruption and stray files ------------------------------------------------------------


def test_corrupt_artifact_raises_an_error_naming_the_file(root: Path) -> None:
    """Bad JSON raises CorruptArtifactError with the key and the file's path."""
    store = make_store(root)
    store.save_artifact("concept", {})
    path = store.artifacts_path / "concept.json"
    path.write_bytes(b'{"idea": "trunc')
    with pytest.raises(
        CorruptArtifactError, match=r"artifact 'concept' is corrupt: .*concept\.json"
    ):
        store.load_artifact("concept")


def test_corrupt_artifact_does_not_break_listings(root: Path) -> None:
    """A corrupt artifact is still listed, exists, and has metadata."""
    store = make_store(root)
    store.save_artifact("concept", {})
    (store.artifacts_path / "concept.json").write_bytes(b"\x00\x00")
    assert store.list_artifacts() == ["concept"]
    assert store.artifact_exists("concept")
    assert store.get_artifact_metadata("concept")["size_bytes"] == 2


def test_corrupt_run_summary_is_reported_and_the_rest_summarised(root: Path) -> None:
    """The summary names the corrupt run_summary in ``error`` and still lists artifacts."""
    make_session(root, "s1", started=T0, build_spec={})
    (root / "s1" / "artifacts" / "run_summary.json").write_text("{not json")
    query = SessionArtifactQuery(root)
    summary = query.get_session_summary("s1")
    assert summary["has_build_spec"] is True
    assert summary["status"] is None
    assert summary["error"] is not None
    assert "run_summary.json is not valid JSON" in summary["error"]
    assert [s["session_id"] for s in query.query_sessions_by_date()] == ["s1"]


def test_stray_temp_files_are_ignored_by_every_listing(root: Path) -> None:
    """Leftovers of a crashed write (``.<random>.tmp``) never show up as artifacts."""
    make_session(root, "s1", started=T0, build_spec={})
    artifacts = root / "s1" / "artifacts"
    (artifacts / ".3f9a2b1c4d5e6f70.tmp").write_bytes(b'{"partial": ')
    (artifacts / ".build_spec.json").write_bytes(b"{}")
    (root / ".0123456789abcdef.tmp").write_bytes(b"")
    query = SessionArtifactQuery(root)
    assert make_store(root).list_artifacts() == ["build_spec", "run_summary"]
    assert query.list_sessions() == ["s1"]
    assert query.get_session_artifacts("s1") == ["build_spec", "run_summary"]
    assert query.query_sessions_by_date()[0]["artifacts"] == ["build_spec", "run_summary"]
    assert query.get_session_summary("s1")["artifacts"] == ["build_spec", "run_summary"]


# --- dates ---------------------------------------------------------------------------------


def test_touching_files_does_not_reorder_sessions(root: Path) -> None:
    """Dates come from the recorded start, so reversing every mtime changes nothing."""
    for index, session_id in enumerate(["a", "b", "c"]):
        make_session(root, session_id, started=T0 + index * HOUR, build_spec={}, task_graph={})
    query = SessionArtifactQuery(root)
    before = query.query_sessions_by_date()
    for index, session_id in enumerate(["a", "b", "c"]):
        for path in (root / session_id).rglob("*"):
            os.utime(path, (T0 - index * HOUR, T0 - index * HOUR))
    after = query.query_sessions_by_date()
    assert [s["session_id"] for s in after] == ["c", "b", "a"]
    assert after == before


def test_session_without_run_summary_is_dated_by_its_first_event(root: Path) -> None:
    """The first line of events.jsonl dates a session; touching the log changes nothing."""
    for index, session_id in enumerate(["a", "b"]):
        make_session(root, session_id, started=None, build_spec={})
        event = Event(
            event_type=EventType.SESSION_STARTED,
            session_id=session_id,
            message="started",
            timestamp=datetime.fromtimestamp(T0 + index * HOUR, UTC),
        )
        log = root / session_id / "events.jsonl"
        log.write_bytes(encode_jsonl([event]))
        os.utime(log, (T0 - index * HOUR, T0 - index * HOUR))
        os.utime(root / session_id / "artifacts" / "build_spec.json", (T0 + 9 * HOUR,) * 2)
    found = SessionArtifactQuery(root).query_sessions_by_date()
    assert [(s["session_id"], s["created_at"], s["created_from"]) for s in found] == [
        ("b", T0 + HOUR, "events"),
        ("a", T0, "events"),
    ]


def test_session_with_only_artifacts_falls_back_to_build_spec_mtime(root: Path) -> None:
    """Without a recorded start, the seed's rule applies: build_spec's modification time."""
    make_session(root, "s1", started=None, build_spec={}, concept={})
    os.utime(root / "s1" / "artifacts" / "build_spec.json", (T0, T0))
    os.utime(root / "s1" / "artifacts" / "concept.json", (T0 - HOUR, T0 - HOUR))
    (entry,) = SessionArtifactQuery(root).query_sessions_by_date()
    assert (entry["created_at"], entry["created_from"]) == (T0, "build_spec_mtime")


def test_session_without_anything_to_date_is_left_out(root: Path) -> None:
    """An empty session directory is listed but has no date, so date queries skip it."""
    (root / "empty").mkdir(parents=True)
    query = SessionArtifactQuery(root)
    assert query.list_sessions() == ["empty"]
    assert query.query_sessions_by_date() == []
    assert query.get_session_created_at("empty") is None


def test_query_session_summaries_returns_full_summaries_newest_first(root: Path) -> None:
    """One pass gives each dated session's summary, in the date query's order."""
    for index, session_id in enumerate(["a", "b", "c"]):
        make_session(root, session_id, started=T0 + index * HOUR, build_spec={})
    summaries = SessionArtifactQuery(root).query_session_summaries(start_date=T0 + HOUR)
    assert [(s["session_id"], s["has_build_spec"]) for s in summaries] == [("c", True), ("b", True)]


# --- async twins ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_twins_match_the_sync_methods(root: Path) -> None:
    """Each ``a``-method does what its sync twin does, off the event loop."""
    store = make_store(root)
    await store.asave_artifact("build_spec", {"big": "x" * 100_000})
    assert await store.aartifact_exists("build_spec")
    assert await store.aload_artifact("build_spec") == {"big": "x" * 100_000}
    assert await store.alist_artifacts() == ["build_spec"]
    assert (await store.aget_artifact_metadata("build_spec"))["key"] == "build_spec"
    query = SessionArtifactQuery(root)
    assert await query.alist_sessions() == ["s1"]
    assert await query.aget_session_artifacts("s1") == ["build_spec"]
    assert (await query.aget_session_summary("s1"))["has_build_spec"] is True
    assert [s["session_id"] for s in await query.aquery_sessions_by_date()] == ["s1"]
    assert [s["session_id"] for s in await query.aquery_session_summaries()] == ["s1"]
    assert await store.adelete_artifact("build_spec") is True


def test_a_batch_of_files_is_written_from_several_threads_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """replace_all_atomic writes (and fsyncs) its files together: no file waits for the one
    before it to be created (two creations meet at a barrier, which one thread never passes)."""
    barrier = threading.Barrier(2, timeout=10)
    open_temp = sinks.artifacts._files._open_temp

    def meeting(directory: str) -> tuple[int, str]:
        barrier.wait()
        return open_temp(directory)

    monkeypatch.setattr(sinks.artifacts._files, "_open_temp", meeting)
    files = [(str(tmp_path / f"a{n}.json"), b"[%d]" % n) for n in range(2)]
    sinks.artifacts._files.replace_all_atomic(str(tmp_path), files, durable=True)
    assert sorted(os.listdir(tmp_path)) == ["a0.json", "a1.json"]
    assert (tmp_path / "a1.json").read_bytes() == b"[1]"


def test_a_batch_with_a_file_that_cannot_be_written_replaces_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file of a batch fails: no target is replaced and no temporary file is left."""
    for n in range(3):
        (tmp_path / f"a{n}.json").write_bytes(b"old")
    open_temp = sinks.artifacts._files._open_temp
    calls = itertools.count()
    lock = threading.Lock()

    def failing_second(directory: str) -> tuple[int, str]:
        with lock:
            call = next(calls)
        if call == 1:
            raise OSError(28, "No space left on device")
        return open_temp(directory)

    monkeypatch.setattr(sinks.artifacts._files, "_open_temp", failing_second)
    files = [(str(tmp_path / f"a{n}.json"), b"new") for n in range(3)]
    with pytest.raises(OSError, match="No space left"):
        sinks.artifacts._files.replace_all_atomic(str(tmp_path), files, durable=True)
    assert sorted(os.listdir(tmp_path)) == ["a0.json", "a1.json", "a2.json"]
    assert {(tmp_path / f"a{n}.json").read_bytes() for n in range(3)} == {b"old"}
