"""The JSONL event log: one append-only ``events.jsonl`` file per session.

:class:`EventLog` keeps the seed's API over one file (``append``,
``get_events``, ``get_latest``, ``count``, ``clear``); :class:`JsonlSink` is
the bus sink that appends each event to
``{workspace_root}/{session_id}/events.jsonl`` (sealing it into segments
as it grows: see **Segments**); :func:`iter_log` reads a log
tolerantly, with the byte position of each event (to rebuild an index).

**Format.** One compact JSON object per event, each line ending in ``\\n``.
Lines are split on ``\\n`` only: ``\\r``, U+2028 or U+0085 inside a message
never end a line.

**Segments.** So that no file grows without bound, :class:`JsonlSink`
seals a log's live file before a batch would take it past ``segment_bytes``
(256 MiB by default; ``None``: never). A session's log is then::

    events.000001.jsonl     sealed segments: complete lines, never written again
    events.000002.jsonl
    events.jsonl            the live segment, where the writer appends

A plain sort of the sealed names, then ``events.jsonl``, is the read order
(six digits; after 999999 sealed segments the live one just grows). A log
never sealed is ``events.jsonl`` alone, the seed's format. Sealing, under
the writer's lock: the live file is hard-linked to the next sealed name,
then the live name is atomically replaced by a new empty file the writer
already holds locked, so ``events.jsonl`` never goes missing and no other
writer can take it in between (a crash in between leaves one file under
both names; readers read it once and the next writer finishes the seal).
Every reader (:class:`EventLog`, :func:`iter_log`, the index, the
``Workspace`` with or without its index, following, SSE resume, the relay,
``eventbus export-otel``) reads the segments in order as one log given the
path of ``events.jsonl``: byte offsets (``iter_log``'s, ``on_written``'s,
an index's places) are *log offsets*, counted from the start of the first
segment, so they stay valid when the segment holding them is sealed; a
reader with the live file open reads it to its end, then goes on in the
next segment. ``EventLog.clear`` removes the sealed segments too.

**Durability** (``durability=``): what an acknowledged write survives. For
:class:`JsonlSink` the acknowledgement is ``write`` returning, which is what
a returned ``await bus.flush()`` reports; for :class:`EventLog` it is
``append`` returning.

- ``"none"``: events are buffered in this process (up to 64 KiB per file) and
  written when the buffer fills or the file is closed. Nothing is guaranteed
  on a crash, and other readers may not see the events yet. An I/O error is
  not a crash: a buffer that cannot be written (full disk, EIO) raises
  :class:`~eventbus.EventsLostError` saying how many events are lost.
- ``"flush"`` (default): every batch is written to the operating system
  before the acknowledgement. Survives the process being killed; not a power
  loss or an OS crash.
- ``"fsync"``: every batch is written and ``fsync``-ed (one ``fsync`` per
  batch and file, not per event); a new file's directory is fsynced too.
  Survives power loss.

**One writer per file.** Writing takes an OS lock (``flock``) on the file,
held until the writer is closed. A second writer, in this process or
another, waits for the lock up to ``lock_timeout`` seconds (2 by default;
``EventLog(path, lock_timeout=...)``, ``JsonlSink(root, lock_timeout=...)``),
trying again with short growing waits, then gets :class:`LogLockedError`.
The wait is for locks that outlive their writer by a moment: a process
forked while a log was open (a ``multiprocessing`` pool) shares the locked
file until its fork handler closes it, so without it a log closed and opened
again at once would often be refused. ``EventLog`` waits in the calling
thread; ``JsonlSink`` waits in a worker thread, never on the event loop.
Reading never locks.

**Recovery.** A crash can leave an incomplete last line. A reader ignores it
(a live writer may be finishing it). A writer, when it opens the file, cuts
it off and reports where and how many bytes, so the next append starts on a
clean line. A corrupt line elsewhere is skipped and counted, and the lines
around it are kept; an event type this version does not know is kept. None of
this raises unless ``strict=True``, which raises :class:`CorruptLogError` at
the first problem. What was skipped is in a :class:`RecoveryReport`
(``EventLog.recovery``, ``JsonlSink.recoveries``); ``JsonlSink(on_recovery=
bus.publish_nowait)`` also puts a WARNING event on the bus.

**Files that are not logs.** Readers and writers refuse a FIFO, a device,
a socket or a directory where a log should be with
:class:`NotARegularFileError`, at once (a FIFO is opened non-blocking, so
nothing hangs). :class:`JsonlSink` refuses symlinks that would take it out of
its workspace root (:class:`UnsafeSymlinkError`); ``EventLog(path)`` writes
where the path the caller gave leads. What :class:`JsonlSink` does on each
fault (a full disk, a deleted log, one bad session, too many open files, a
fork) is listed in its docstring.

Errors::

    EventBusError
    ├── LogLockedError
    ├── CorruptLogError (ValueError)
    ├── NotARegularFileError (OSError)
    ├── UnsafeSymlinkError (OSError)
    ├── InvalidNameError (ValueError, from eventbus: a bad session id)
    ├── EventsLostError (from eventbus: a "none" buffer could not be written)
    └── PartialWriteError (from eventbus: some sessions of a batch failed)
"""

from .._files import NotARegularFileError, UnsafeSymlinkError
from .._layout import LOG_FILE_NAME
from ._log import EventLog
from ._read import CorruptLogError, RecoveryReport, iter_log
from ._sink import JsonlSink, JsonlSinkStats, WrittenCallback
from ._write import Durability, LogLockedError

__all__ = [
    "LOG_FILE_NAME",
    "CorruptLogError",
    "Durability",
    "EventLog",
    "JsonlSink",
    "JsonlSinkStats",
    "LogLockedError",
    "NotARegularFileError",
    "RecoveryReport",
    "UnsafeSymlinkError",
    "WrittenCallback",
    "iter_log",
]

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
