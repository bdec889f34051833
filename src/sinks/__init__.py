"""sinks: where the bus's events go.

- :mod:`sinks.jsonl`: ``EventLog`` (one session's append-only JSONL file, the
  seed's API) and ``JsonlSink`` (routes every session to
  ``{workspace}/{session_id}/events.jsonl``).
- :mod:`sinks.artifacts`: ``ArtifactStore``, ``SessionArtifactQuery`` and
  ``ArtifactSink`` (artifacts and a live ``run_summary`` per session).
- :mod:`sinks.memory`: ``EventIndex``, an in-memory query index over every
  session it receives, with token and cost aggregates.

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

__all__ = [
    "ARTIFACTS_DIR",
    "LOG_FILE_NAME",
    "RUN_SUMMARY_KEY",
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
    "JsonlSink",
    "JsonlSinkStats",
    "LocationRequiredError",
    "LogLockedError",
    "NotARegularFileError",
    "RecoveryReport",
    "RunSummary",
    "SessionArtifactQuery",
    "SessionInfo",
    "SessionSummary",
    "StaleLogError",
    "TokenUsage",
    "UnknownEventIdError",
    "UnsafeSymlinkError",
    "UsageField",
    "WrittenCallback",
    "iter_log",
]
