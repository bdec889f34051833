"""Session rows are made again only when their files change."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus import EventType, create_llm_response_event, create_session_event
from sinks.jsonl import EventLog
from sinks.workspace import Workspace, _sessions


def test_a_settled_session_s_row_is_reused_until_its_log_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every file settled, a second listing reads no log; an append is seen."""
    monkeypatch.setattr(_sessions, "SETTLED_NS", 0)
    with EventLog(tmp_path / "s1" / "events.jsonl") as log:
        log.append(create_session_event("s1", EventType.SESSION_STARTED))
    reader = Workspace(tmp_path)
    first = reader.sessions()
    made: list[str] = []
    original = _sessions.SessionRows._row

    def counting(self: _sessions.SessionRows, session_id: str) -> object:
        made.append(session_id)
        return original(self, session_id)

    monkeypatch.setattr(_sessions.SessionRows, "_row", counting)
    assert reader.sessions() == first
    assert made == []
    with EventLog(tmp_path / "s1" / "events.jsonl") as log:
        log.append(create_llm_response_event("s1", "m", "coder", 3, 4, cost_usd=0.5))
    (row,) = reader.sessions()
    assert made == ["s1"]
    assert (row["llm_calls"], row["total_tokens"], row["cost_usd"]) == (1, 7, 0.5)
