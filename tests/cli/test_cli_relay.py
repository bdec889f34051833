"""eventbus relay: the ids it remembers on start, so a batch written, not acked is not doubled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from eventbus import Event, EventType, new_event_id
from eventbus.cli._relay import _recent_ids
from sinks.jsonl import LOG_FILE_NAME, EventLog


def _log(root: Path, session_id: str, ids: list[str]) -> None:
    log = EventLog(root / session_id / LOG_FILE_NAME)
    start = datetime.now(UTC)
    with log:
        for n, ident in enumerate(ids):
            event = Event(event_type=EventType.INFO, session_id=session_id, message=str(n))
            log.append(
                msgspec.structs.replace(event, id=ident, timestamp=start + timedelta(seconds=n))
            )


def test_recent_ids_come_oldest_first_across_logs_so_the_newest_are_kept(tmp_path: Path) -> None:
    """The last events of every log, ordered by id (creation time) whatever the sessions'
    names: a source that remembers fewer keeps the newest."""
    older = [new_event_id() for _ in range(3)]
    newer = [new_event_id() for _ in range(3)]
    _log(tmp_path, "a-newer", newer)
    _log(tmp_path, "b-older", older)
    assert _recent_ids(tmp_path, 2, 10) == [*older[1:], *newer[1:]]


def test_recent_ids_are_the_newest_up_to_the_limit_however_many_logs(tmp_path: Path) -> None:
    """With more logs than the source remembers ids, the newest of all are returned."""
    ids = [new_event_id() for _ in range(40)]
    for n in range(8):
        _log(tmp_path, f"s{n}", ids[n::8])
    assert _recent_ids(tmp_path, 5, 12) == ids[-12:]
