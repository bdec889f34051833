"""eventbus.coordinator: commands and the inbox they travel through (``submit_command``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventbus import InvalidNameError
from eventbus.coordinator import (
    Command,
    InvalidCommandError,
    SessionLogNotFoundError,
    submit_command,
)
from eventbus.coordinator._commands import decode_command


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A workspace with session ``s1``, whose log exists."""
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "events.jsonl").write_bytes(b"")
    return tmp_path


def inbox_lines(root: Path, session_id: str = "s1") -> list[dict[str, object]]:
    text = (root / session_id / "control.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


class TestCommand:
    def test_a_command_gets_an_id_an_actor_and_a_utc_time(self) -> None:
        """Without them, ``command_id`` is new and unique and ``issued_at`` is now, in UTC."""
        first, second = Command(kind="pause"), Command(kind="pause")
        assert first.command_id != second.command_id
        assert first.actor == "cli"
        assert first.issued_at.utcoffset() is not None

    @pytest.mark.parametrize(
        ("fields", "match"),
        [
            pytest.param({"kind": "zap"}, "unknown kind 'zap'", id="unknown-kind"),
            pytest.param({"kind": "answer", "text": "x"}, "answer needs a target", id="no-target"),
            pytest.param({"kind": "answer", "target": "q1"}, "needs the text", id="no-text"),
            pytest.param({"kind": "approve"}, "approve needs a target", id="approve-no-target"),
            pytest.param({"kind": "pause", "target": "q1"}, "pause takes no target", id="target"),
            pytest.param(
                {"kind": "reject", "target": "r1", "text": "no"}, "takes no text", id="text"
            ),
            pytest.param({"kind": "abort", "command_id": ""}, "command_id is empty", id="empty-id"),
            pytest.param({"kind": "abort", "command_id": "a\nb"}, "control character", id="id"),
            pytest.param({"kind": "abort", "actor": ""}, "actor is empty", id="no-actor"),
        ],
    )
    def test_fields_that_make_no_command_are_refused(
        self, fields: dict[str, str], match: str
    ) -> None:
        """Each kind takes the target and text it needs, and no other."""
        with pytest.raises(InvalidCommandError, match=match):
            Command(**fields)  # type: ignore[arg-type]

    def test_an_inbox_line_that_is_no_command_is_refused_on_decode(self) -> None:
        """The coordinator reads the inbox through the same checks."""
        with pytest.raises(InvalidCommandError, match="pause takes no target"):
            decode_command(b'{"kind": "pause", "target": "q1"}')
        with pytest.raises(InvalidCommandError, match="not a JSON command"):
            decode_command(b"{not json")


class TestSubmitCommand:
    def test_one_line_per_command_with_every_field(self, root: Path) -> None:
        """The inbox holds ``{"command_id", "kind", "target", "text", "reason", "actor",
        "issued_at"}``, issued_at in ISO 8601 UTC with Z."""
        sent = submit_command(
            root, "s1", Command(kind="answer", target="q1", text="3.12", actor="ana")
        )
        (line,) = inbox_lines(root)
        assert list(line) == [
            "command_id", "kind", "target", "text", "reason", "actor", "issued_at"
        ]  # fmt: skip
        assert line["command_id"] == sent.command_id
        assert (line["kind"], line["target"], line["text"], line["actor"]) == (
            "answer", "q1", "3.12", "ana"
        )  # fmt: skip
        assert line["reason"] is None
        assert str(line["issued_at"]).endswith("Z")
        assert decode_command(json.dumps(line)) == sent

    def test_the_same_command_twice_is_appended_twice(self, root: Path) -> None:
        """The sender does not deduplicate: the coordinator applies an id at most once."""
        command = Command(kind="pause", command_id="c-1")
        submit_command(root, "s1", command)
        submit_command(root, "s1", command)
        assert [line["command_id"] for line in inbox_lines(root)] == ["c-1", "c-1"]

    def test_a_session_without_a_log_is_refused(self, root: Path) -> None:
        """No log, no session to command: nothing is written."""
        (root / "s2").mkdir()
        with pytest.raises(SessionLogNotFoundError, match="no session 's2'"):
            submit_command(root, "s2", Command(kind="pause"))
        assert not (root / "s2" / "control.jsonl").exists()
        with pytest.raises(SessionLogNotFoundError, match="no session 'nope'"):
            submit_command(root, "nope", Command(kind="pause"))

    def test_a_bad_session_id_is_refused(self, root: Path) -> None:
        """The id names a directory: nothing outside the workspace is touched."""
        with pytest.raises(InvalidNameError, match="invalid session id"):
            submit_command(root, "../s1", Command(kind="pause"))

    def test_a_command_too_long_for_one_line_is_refused(self, root: Path) -> None:
        """One write per command: its line has a bound."""
        with pytest.raises(InvalidCommandError, match="shorten its text"):
            submit_command(root, "s1", Command(kind="answer", target="q1", text="x" * 70_000))
        assert not (root / "s1" / "control.jsonl").exists()
