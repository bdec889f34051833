"""An alias of :mod:`sinks.index`, the in-memory query index, under its former name.

``from sinks.memory import EventIndex`` keeps working; new code imports
from :mod:`sinks.index` (or :mod:`sinks`). A package rather than a module
file only so that version control follows ``sinks/memory.py`` to its new
place, ``sinks/index/_index.py``.
"""

from ..index import (
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
    "EventIndex",
    "EventIndexError",
    "IndexArgumentError",
    "LocationRequiredError",
    "StaleLogError",
    "TokenUsage",
    "UnknownEventIdError",
    "UsageField",
]
