"""sinks: where the bus's events go; one subpackage per part.

- :mod:`sinks.jsonl`: ``EventLog`` (one session's append-only JSONL file, the
  seed's API) and ``JsonlSink`` (routes every session to
  ``{workspace}/{session_id}/events.jsonl``).
- :mod:`sinks.index`: ``EventIndex``, an in-memory query index over every
  session it receives, with token and cost aggregates (``sinks.memory`` is
  its former name, kept as an alias).
- :mod:`sinks.artifacts`: ``ArtifactStore``, ``SessionArtifactQuery`` and
  ``ArtifactSink`` (artifacts and a live ``run_summary`` per session).
- :mod:`sinks.workspace`: ``Workspace``, read-only queries over a workspace
  that another process writes (sessions, events, usage, live follow): the
  data layer of the CLI and the web API.
- :mod:`sinks.nats` (extra ``nats``) and :mod:`sinks.otel` (extra ``otel``):
  import them by their module; they need their extra.

Shared by the parts: ``sinks._layout`` (a workspace's file names, paths that
stay inside it), ``sinks._lines`` (the one complete-line reader of the logs)
and ``sinks._usage`` (the one rule set for token and cost totals).

Every sink follows :class:`eventbus.Sink`; this package imports the core of
``eventbus``, never its coordinator, and ``eventbus`` never imports it.
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
from .index import (
    EventIndex,
    EventIndexError,
    IndexArgumentError,
    LocationRequiredError,
    StaleLogError,
    TokenUsage,
    UnknownEventIdError,
    UsageField,
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

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
