"""Session ids and artifact keys become file names: hostile ones are refused."""

from __future__ import annotations

import unicodedata

import pytest

from eventbus import InvalidNameError, is_valid_name, validate_name, validate_session_id


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("", "it is empty", id="empty"),
        pytest.param("..", "contains '..'", id="dotdot"),
        pytest.param("a/../../b", "contains '..'", id="traversal"),
        pytest.param("/etc/passwd", "contains '/'", id="absolute"),
        pytest.param("a\\b", "contains '\\'", id="backslash"),
        pytest.param(".env", "starts with '.'", id="leading-dot"),
        pytest.param("name.", "ends with '.'", id="trailing-dot"),
        pytest.param("a\x00b", "non-printable", id="nul"),
        pytest.param("a\u2028b", "non-printable", id="line-separator"),
        pytest.param(" padded ", "whitespace", id="whitespace"),
        pytest.param("CON", "reserved device name", id="windows-device"),
        pytest.param("x" * 256, "256 bytes", id="too-long"),
    ],
)
def test_hostile_names_are_refused_naming_the_problem(name: str, reason: str) -> None:
    """Each refusal says what is wrong with the name."""
    with pytest.raises(InvalidNameError, match="invalid session id") as info:
        validate_session_id(name)
    assert reason in str(info.value)
    assert not is_valid_name(name)


def test_the_suffix_counts_toward_the_length() -> None:
    """A key that fits alone may not fit with '.json'."""
    assert validate_name("k" * 250, "artifact key") == "k" * 250
    with pytest.raises(InvalidNameError, match="255 bytes"):
        validate_name("k" * 251, "artifact key", ".json")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("con.txt", "reserved device name", id="device-with-extension"),
        pytest.param("NUL.tar.gz", "reserved device name", id="device-with-two-extensions"),
        pytest.param("COM1.json", "reserved device name", id="com-port"),
        pytest.param("lpt\u00b9", "reserved device name", id="superscript-port"),
        pytest.param("CON .txt", "reserved device name", id="device-space-before-dot"),
        pytest.param("CONIN$", "reserved device name", id="console-input"),
        pytest.param("run:1", "contains ':'", id="colon"),
        pytest.param("what?", "contains '?'", id="question-mark"),
        pytest.param("a*b", "contains '*'", id="star"),
        pytest.param("a<b", "contains '<'", id="less-than"),
        pytest.param("a>b", "contains '>'", id="greater-than"),
        pytest.param("a|b", "contains '|'", id="pipe"),
        pytest.param('say"hi"', "contains '\"'", id="double-quote"),
        pytest.param("name .", "ends with '.'", id="trailing-space-dot"),
        pytest.param("name ", "whitespace", id="trailing-space"),
    ],
)
def test_names_windows_cannot_hold_are_refused(name: str, reason: str) -> None:
    """A workspace copied to Windows must keep every session and artifact."""
    with pytest.raises(InvalidNameError, match="invalid artifact key") as info:
        validate_name(name, "artifact key", ".json")
    assert reason in str(info.value)
    assert not is_valid_name(name)


def test_non_nfc_name_is_refused_and_told_to_normalise() -> None:
    """Two ids that look the same ('é' composed or not) cannot be two sessions."""
    decomposed = unicodedata.normalize("NFD", "sessão-é")
    with pytest.raises(InvalidNameError, match="not in Unicode NFC; normalise it to NFC"):
        validate_session_id(decomposed)
    assert validate_session_id(unicodedata.normalize("NFC", decomposed)) == "sessão-é"


@pytest.mark.parametrize(
    "name", ["session-1", "2026-01-01_run.3", "sessão", "x" * 255, "CONSOLE", "com10", "a.con"]
)
def test_ordinary_names_are_accepted(name: str) -> None:
    """Dots inside, dashes, non-ASCII letters and names merely starting like a device are fine."""
    assert validate_session_id(name) == name


def test_non_string_names_are_a_type_error() -> None:
    """Only strings name files."""
    with pytest.raises(TypeError, match="a session id must be a str, got int"):
        validate_session_id(3)  # type: ignore[arg-type]
