"""Names that become file names: session ids and artifact keys.

A session id names a directory (``{workspace}/{session_id}/``) and an artifact
key a file, so both must be one safe file name, on every system a workspace
may be copied to: names Windows cannot hold are refused on POSIX too, and
so are names not in Unicode NFC (two ids that look the same must be the
same session). The bus checks session ids when an event is published, so a
bad id is refused there, with a clear error, instead of failing a sink's
whole batch later.
"""

from __future__ import annotations

import functools
import unicodedata

from ._errors import EventBusError

__all__ = [
    "MAX_NAME_BYTES",
    "InvalidNameError",
    "is_valid_name",
    "validate_name",
    "validate_session_id",
]

MAX_NAME_BYTES = 255
# Windows device names, reserved with any extension ("nul.tar.gz") and with
# spaces before the dot ("CON .txt"); the superscript digits count too.
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{digit}" for digit in "123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{digit}" for digit in "123456789\u00b9\u00b2\u00b3"}
)
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')


class InvalidNameError(EventBusError, ValueError):
    """Raised when a session id or an artifact key cannot safely name a file.

    A name is valid when it is one file name that every system can hold:
    not empty, no ``/`` or ``\\``, no ``..``, no leading or trailing dot,
    printable characters only, no leading or trailing whitespace, none of
    ``< > : " | ? *``, not a Windows device name with or without an
    extension (``CON``, ``nul.txt``, ``COM1.json``, ...), in Unicode NFC
    (normalise with ``unicodedata.normalize("NFC", name)``), and at most 255
    bytes in UTF-8 (with its file suffix).
    """

    def __init__(self, kind: str, name: object, reason: str) -> None:
        self.kind = kind
        self.name = name
        self.reason = reason
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:77] + "..."
        super().__init__(
            f"invalid {kind} {shown!r}: {reason}; use a single file name that Windows, "
            "macOS and Linux can all hold (no path separators, no '..', no leading or "
            'trailing dot or space, printable characters, none of <>:"|?*, not a device '
            f"name like CON or NUL, in Unicode NFC, at most {MAX_NAME_BYTES} bytes)"
        )


def name_problem(name: str, suffix: str = "") -> str | None:
    """Return why ``name`` (stored as ``name + suffix``) is not a safe file name, or None."""
    if len(name) > MAX_NAME_BYTES:  # too long whatever else: never cache huge strings
        size = len(name.encode("utf-8", "replace")) + len(suffix)
        return f"is {size} bytes long as a file name; the limit is {MAX_NAME_BYTES}"
    return _short_name_problem(name, suffix)


@functools.lru_cache(maxsize=4096)
def _short_name_problem(name: str, suffix: str) -> str | None:
    if not name:
        return "it is empty"
    if ".." in name:
        return "contains '..'"
    if "/" in name:
        return "contains '/'"
    if "\\" in name:
        return "contains '\\'"
    if name[0] == ".":
        return "starts with '.'"
    if name[-1] == ".":
        return "ends with '.'"
    if not name.isprintable():
        bad = next(char for char in name if not char.isprintable())
        return f"contains the non-printable character {bad!r}"
    if name != name.strip():
        return "starts or ends with whitespace"
    if not _WINDOWS_FORBIDDEN.isdisjoint(name):
        bad = next(char for char in name if char in _WINDOWS_FORBIDDEN)
        return f"contains {bad!r}, which Windows does not allow in file names"
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        return "is a reserved device name on Windows (with any extension)"
    if not unicodedata.is_normalized("NFC", name):
        normal = unicodedata.normalize("NFC", name)
        return f"is not in Unicode NFC; normalise it to NFC ({normal!r}) first"
    size = len(name.encode()) + len(suffix)
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long as a file name; the limit is {MAX_NAME_BYTES}"
    return None


def is_valid_name(name: str, suffix: str = "") -> bool:
    """Return whether ``name + suffix`` is one safe file name (see :class:`InvalidNameError`)."""
    return isinstance(name, str) and name_problem(name, suffix) is None


def validate_name(name: str, kind: str = "name", suffix: str = "") -> str:
    """Return ``name`` if ``name + suffix`` is one safe file name.

    :raises InvalidNameError: naming the problem otherwise.
    :raises TypeError: if ``name`` is not a str.
    """
    if not isinstance(name, str):
        raise TypeError(f"a {kind} must be a str, got {type(name).__name__}")
    problem = name_problem(name, suffix)
    if problem is not None:
        raise InvalidNameError(kind, name, problem)
    return name


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` if it can name a session's directory.

    :raises InvalidNameError: naming the problem otherwise.
    """
    return validate_name(session_id, "session id")
