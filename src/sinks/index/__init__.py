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

for _name in __all__:  # classes show their public module (in reprs, tracebacks, pickles)
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
