"""The in-memory query index: :class:`EventIndex`, a sink that answers queries without scanning.

How it orders, what it costs and what it holds are described in
:class:`EventIndex`'s module, ``sinks.index._index``. Errors::

    EventBusError
    └── EventIndexError
        ├── IndexArgumentError (ValueError)
        ├── UnknownEventIdError (LookupError)
        ├── LocationRequiredError
        └── StaleLogError
"""

from ._index import (
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
