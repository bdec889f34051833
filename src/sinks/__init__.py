"""sinks: where the bus's events go.

- :mod:`sinks.jsonl`: ``EventLog`` (one session's append-only JSONL file, the
  seed's API) and ``JsonlSink`` (routes every session to
  ``{workspace}/{session_id}/events.jsonl``).
- :mod:`sinks.artifacts`: ``ArtifactStore``, ``SessionArtifactQuery`` and
  ``ArtifactSink`` (artifacts and a live ``run_summary`` per session).
- :mod:`sinks.memory`: ``EventIndex``, an in-memory query index over every
  session it receives, with token and cost aggregates.
- :mod:`sinks.workspace`: ``Workspace``, read-only queries over a workspace
  that another process writes (sessions, events, usage, live follow): the
  data layer of the CLI and the web API.
- :mod:`sinks.nats` (extra ``nats``) and :mod:`sinks.otel` (extra ``otel``):
  import them by their module; they need their extra.

Every sink follows :class:`eventbus.Sink`; this package imports ``eventbus``,
never the reverse.
"""

from .artifacts import (
    ARTIFACTS_DIR,
    RUN_SUMMARY_KEY,
    ArtifactEncodeError,
    ArtifactSink,
    ArtifactStore,
    CorruptArtifactError,
    RunSummary,
    SessionArtifactQuery,
    SessionInfo,
    SessionSummary,
)
from .jsonl import (
    LOG_FILE_NAME,
    CorruptLogError,
    Durability,
    EventLog,
    JsonlSink,
    JsonlSinkStats,
    LogLockedError,
    NotARegularFileError,
    RecoveryReport,
    UnsafeSymlinkError,
    WrittenCallback,
    iter_log,
)
from .memory import (
    EventIndex,
    EventIndexError,
    IndexArgumentError,
    LocationRequiredError,
    StaleLogError,
    TokenUsage,
    UnknownEventIdError,
    UsageField,
)
from .workspace import (
    USAGE_ALIASES,
    USAGE_KEYS,
    InvalidTimeError,
    SessionNotFoundError,
    UnknownEventTypeError,
    Workspace,
    parse_time,
)

__all__ = [
    "ARTIFACTS_DIR",
    "LOG_FILE_NAME",
    "RUN_SUMMARY_KEY",
    "USAGE_ALIASES",
    "USAGE_KEYS",
    "ArtifactEncodeError",
    "ArtifactSink",
    "ArtifactStore",
    "CorruptArtifactError",
    "CorruptLogError",
    "Durability",
    "EventIndex",
    "EventIndexError",
    "EventLog",
    "IndexArgumentError",
    "InvalidTimeError",
    "JsonlSink",
    "JsonlSinkStats",
    "LocationRequiredError",
    "LogLockedError",
    "NotARegularFileError",
    "RecoveryReport",
    "RunSummary",
    "SessionArtifactQuery",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionSummary",
    "StaleLogError",
    "TokenUsage",
    "UnknownEventIdError",
    "UnknownEventTypeError",
    "UnsafeSymlinkError",
    "UsageField",
    "Workspace",
    "WrittenCallback",
    "iter_log",
    "parse_time",
]
