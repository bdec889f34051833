"""Reading a workspace that another process writes: sessions, events, usage, live follow.

:class:`Workspace` is the data layer of the ``eventbus`` CLI and of the web
API; what it reads, what it costs and its errors are described in its
module, ``sinks.workspace._workspace``.
"""

from .._layout import CONTROL_FILE_NAME
from ._workspace import (
    MAX_ARTIFACT_BYTES,
    USAGE_ALIASES,
    USAGE_KEYS,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidTimeError,
    SessionNotFoundError,
    UnknownCommandError,
    UnknownEventTypeError,
    Workspace,
    parse_time,
)

__all__ = [
    "CONTROL_FILE_NAME",
    "MAX_ARTIFACT_BYTES",
    "USAGE_ALIASES",
    "USAGE_KEYS",
    "ArtifactNotFoundError",
    "ArtifactTooLargeError",
    "InvalidTimeError",
    "SessionNotFoundError",
    "UnknownCommandError",
    "UnknownEventTypeError",
    "Workspace",
    "parse_time",
]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
