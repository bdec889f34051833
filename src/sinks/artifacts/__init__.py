"""The artifact store: each session's JSON artifacts, written atomically, and its sink.

A workspace holds one directory per session::

    {workspace_root}/{session_id}/events.jsonl           the JSONL sink's log
    {workspace_root}/{session_id}/artifacts/{key}.json   this module's artifacts

:class:`ArtifactStore` saves and loads one session's artifacts;
:class:`SessionArtifactQuery` lists, dates and summarises the sessions of a
workspace; :class:`ArtifactSink` is a bus sink that saves the artifacts
announced by ``artifact_created``/``artifact_updated`` events and keeps each
session's ``run_summary`` artifact (a :class:`RunSummary`) current.

Trust:

- **Atomic writes.** An artifact is written to a temporary file in its own
  directory, flushed and fsynced, renamed over the old one with
  ``os.replace``, and the directory is fsynced (once for all the files a
  sink's batch saves there). A crash at any moment leaves the old or the
  new artifact, never an empty or partial one. Temporary files are named
  ``.<unique>.tmp``: a crash may leave one behind, and no listing
  ever shows it (keys cannot start with a dot).
- **Names are validated.** Artifact keys and session ids are single file
  names that Windows, macOS and Linux can all hold, in Unicode NFC:
  :class:`InvalidNameError` is raised for anything else, before any file is
  touched.
- **Nothing outside the root.** A session directory, ``artifacts``
  directory or artifact file that is a symlink is followed only if it
  resolves inside the workspace root; one leading out (or dangling) raises
  :class:`UnsafeSymlinkError` naming the link, before anything is read or
  written, and is skipped (and logged) by the listings. A standalone
  ``ArtifactStore(path)`` has no root and checks no links.
- **Regular files only.** A FIFO, a device or a directory where an artifact
  or ``run_summary`` should be raises :class:`NotARegularFileError`, at
  once (never a hang), and is never replaced by a save.
- **Damage is contained.** A corrupt artifact raises
  :class:`CorruptArtifactError` from ``load_artifact``; neither it nor an
  unreadable ``run_summary`` or ``events.jsonl`` breaks a listing or a
  summary: the session's summary says why in ``error``.
- **One session fails alone.** :class:`ArtifactSink` saves every session
  of a batch it can and raises :class:`eventbus.PartialWriteError` for the
  others; a retry of the batch counts nothing twice.
- **Dates come from content.** A session's creation time is its recorded
  start (``run_summary.started_at``, the first event of ``events.jsonl``);
  file modification times are only the last resort, so copying or touching
  files does not reorder sessions.

Errors::

    EventBusError
    ├── InvalidNameError (ValueError)
    ├── CorruptArtifactError (ValueError)
    ├── ArtifactEncodeError (TypeError)
    ├── NotARegularFileError (OSError)      shared with sinks.jsonl
    └── UnsafeSymlinkError (OSError)        shared with sinks.jsonl
"""

from .._files import NotARegularFileError, UnsafeSymlinkError
from .._layout import ARTIFACTS_DIR
from ._query import SessionArtifactQuery, SessionInfo, SessionSummary
from ._sink import ArtifactSink
from ._store import ArtifactEncodeError, ArtifactStore, CorruptArtifactError
from ._summary import RUN_SUMMARY_KEY, RunSummary

__all__ = [
    "ARTIFACTS_DIR",
    "RUN_SUMMARY_KEY",
    "ArtifactEncodeError",
    "ArtifactSink",
    "ArtifactStore",
    "CorruptArtifactError",
    "NotARegularFileError",
    "RunSummary",
    "SessionArtifactQuery",
    "SessionInfo",
    "SessionSummary",
    "UnsafeSymlinkError",
]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
