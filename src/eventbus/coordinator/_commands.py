"""Commands to a running session, and the inbox that carries them between processes.

A person acts on a session with a :class:`Command`: ``pause``, ``resume``,
``abort``, ``answer`` (a clarification), ``approve`` or ``reject`` (an
approval). :func:`submit_command` appends it to the session's inbox, a file
beside its log::

    {root}/{session_id}/events.jsonl     the log (written by the coordinator's sinks)
    {root}/{session_id}/control.jsonl    the inbox: one command per line, append-only

Each line is one JSON object: ``{"command_id", "kind", "target", "text",
"reason", "actor", "issued_at"}`` (``issued_at`` in ISO 8601 UTC with ``Z``).
A coordinator given the root (``SessionCoordinator(..., control=root)``)
reads the inbox while it runs the session and applies each command at most
once per ``command_id``; what it did is in the log (``control_applied`` or
``control_rejected``), so any process can read the outcome back.
"""

import os
from datetime import UTC, datetime
from os import PathLike
from typing import Final, Literal, get_args

import msgspec

from .._event import _id_problem, new_event_id
from .._names import validate_session_id
from ._errors import InvalidCommandError, SessionLogNotFoundError

__all__ = [
    "COMMAND_KINDS",
    "CONTROL_FILE_NAME",
    "LOG_FILE_NAME",
    "MAX_COMMAND_BYTES",
    "Command",
    "CommandKind",
    "decode_command",
    "encode_command",
    "submit_command",
]

CONTROL_FILE_NAME: Final = "control.jsonl"
"""The name of a session's inbox in its directory (``sinks`` names it the same)."""
LOG_FILE_NAME: Final = "events.jsonl"
"""The name of a session's log in its directory (as ``sinks.LOG_FILE_NAME``)."""
MAX_COMMAND_BYTES: Final = 64 * 1024
"""The longest line a command may take in the inbox (its text included)."""

CommandKind = Literal["pause", "resume", "abort", "answer", "approve", "reject"]
"""What a :class:`Command` asks for."""
COMMAND_KINDS: Final[tuple[str, ...]] = get_args(CommandKind)

_TARGETED: Final = frozenset({"answer", "approve", "reject"})


def _now() -> datetime:
    return datetime.now(UTC)


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """One command to a session, as the inbox stores it (one JSON object per line).

    :param kind: ``pause``, ``resume``, ``abort``, ``answer``, ``approve`` or ``reject``.
    :param target: the ``question_id`` an ``answer`` answers, or the ``request_id``
        an ``approve``/``reject`` decides; ``None`` for the other kinds.
    :param text: the answer (``answer`` only, required there).
    :param reason: why (optional; a rejection's reason ends up in the gate's event,
        an abort's in ``session_aborted``).
    :param actor: who sent it (``"cli"``, a user name, ``"dashboard"``).
    :param command_id: the id that makes applying it idempotent: a command is applied
        at most once per id (default: a new unique id).
    :param issued_at: when it was issued (default: now, UTC).
    :raises InvalidCommandError: when the fields do not make a command (an unknown
        kind, an ``answer`` without target or text, a target on ``pause``, ...).
    """

    command_id: str = msgspec.field(default_factory=new_event_id)
    kind: CommandKind
    target: str | None = None
    text: str | None = None
    reason: str | None = None
    actor: str = "cli"
    issued_at: datetime = msgspec.field(default_factory=_now)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise InvalidCommandError(problem)


def _problem(command: Command) -> str | None:
    kind = command.kind
    if kind not in COMMAND_KINDS:
        return f"unknown kind {kind!r}: use one of {', '.join(COMMAND_KINDS)}"
    if not command.command_id:
        return "the command_id is empty"
    id_problem = _id_problem(command.command_id)
    if id_problem is not None:
        return f"the command_id {id_problem}"
    if not command.actor:
        return "the actor is empty"
    if kind in _TARGETED and not command.target:
        what = "question_id" if kind == "answer" else "request_id"
        return f"{kind} needs a target (the {what} it is about)"
    if kind not in _TARGETED and command.target is not None:
        return f"{kind} takes no target (got {command.target!r})"
    if kind == "answer" and not command.text:
        return "answer needs the text of the answer"
    if kind != "answer" and command.text is not None:
        return f"{kind} takes no text (give a reason instead)"
    if command.issued_at.tzinfo is None:
        return "issued_at must be timezone-aware (UTC)"
    return None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Command)


def encode_command(command: Command) -> bytes:
    """The inbox line of ``command``, newline included."""
    return _encoder.encode(command) + b"\n"


def decode_command(line: bytes | str) -> Command:
    """The command of one inbox line.

    :raises InvalidCommandError: when the line is not a valid command.
    """
    try:
        return _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise InvalidCommandError(str(exc).removeprefix("invalid command: ")) from None
    except msgspec.DecodeError as exc:
        raise InvalidCommandError(f"not a JSON command: {exc}") from None


def submit_command(root: str | PathLike[str], session_id: str, command: Command) -> Command:
    """Append ``command`` to the inbox of session ``session_id`` under ``root``; return it.

    The line is written with one ``write`` on a file opened for appending, then
    the file is synced (and the directory, if the inbox was created): once this
    returns, the command survives a crash of this process and of the machine.
    The command is only *queued*: the coordinator running the session applies
    it (or rejects it) and says so in the log. Sending the same ``command_id``
    again is harmless (it is applied at most once), and nothing is deduplicated here.

    :raises InvalidNameError: ``session_id`` cannot be a session id.
    :raises SessionLogNotFoundError: the session has no log under ``root`` (yet).
    :raises InvalidCommandError: the command's line is longer than
        :data:`MAX_COMMAND_BYTES`.
    :raises OSError: the inbox cannot be written.
    """
    validate_session_id(session_id)
    directory = os.path.join(os.fspath(root), session_id)
    if not os.path.isfile(os.path.join(directory, LOG_FILE_NAME)):
        raise SessionLogNotFoundError(session_id, os.fspath(root))
    line = encode_command(command)
    if len(line) > MAX_COMMAND_BYTES:
        raise InvalidCommandError(
            f"the command takes {len(line)} bytes, over the {MAX_COMMAND_BYTES} an inbox "
            "line may hold: shorten its text"
        )
    path = os.path.join(directory, CONTROL_FILE_NAME)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        created = True
    except FileExistsError:
        fd = os.open(path, flags)
        created = False
    try:
        written = os.write(fd, line)
        if written != len(line):  # a full disk: the reader skips the torn line
            raise OSError(f"{path}: wrote {written} of {len(line)} bytes of the command")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
    return command
