"""An alias of :mod:`sinks.index`, the in-memory query index, under its former name.

``from sinks.memory import EventIndex`` keeps working; new code imports
from :mod:`sinks.index` (or :mod:`sinks`).
"""

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
