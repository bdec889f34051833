"""eventbus: an async event bus with pluggable sinks.

Publish typed :class:`Event`\\ s onto an :class:`EventBus`; sinks (any object
with ``async write(events)`` and ``async aclose()``) receive them in batches,
listeners watch them live. See the README for the contracts.
"""

from ._bus import BusStats, EventBus, RetryPolicy, Subscription, SubscriptionStats
from ._codec import (
    EventBatch,
    decode_event,
    decode_events,
    encode_event,
    encode_jsonl,
    encoded_lines,
)
from ._errors import (
    BusClosedError,
    BusFullError,
    EventBusError,
    EventDecodeError,
    EventEncodeError,
    SinkFailedError,
)
from ._event import Event, EventType, current_parent_id, new_event_id, parent_scope
from ._helpers import (
    create_agent_event,
    create_artifact_event,
    create_clarification_event,
    create_command_event,
    create_diff_event,
    create_gate_event,
    create_llm_request_event,
    create_llm_response_event,
    create_model_routed_event,
    create_phase_transition_event,
    create_session_event,
    create_task_event,
    create_verification_event,
)
from ._listen import Gap, Listener
from ._names import InvalidNameError, is_valid_name, validate_name, validate_session_id
from ._query import EventQuery, as_utc
from ._sink import MemorySink, Sink

__all__ = [
    "BusClosedError",
    "BusFullError",
    "BusStats",
    "Event",
    "EventBatch",
    "EventBus",
    "EventBusError",
    "EventDecodeError",
    "EventEncodeError",
    "EventQuery",
    "EventType",
    "Gap",
    "InvalidNameError",
    "Listener",
    "MemorySink",
    "RetryPolicy",
    "Sink",
    "SinkFailedError",
    "Subscription",
    "SubscriptionStats",
    "as_utc",
    "create_agent_event",
    "create_artifact_event",
    "create_clarification_event",
    "create_command_event",
    "create_diff_event",
    "create_gate_event",
    "create_llm_request_event",
    "create_llm_response_event",
    "create_model_routed_event",
    "create_phase_transition_event",
    "create_session_event",
    "create_task_event",
    "create_verification_event",
    "current_parent_id",
    "decode_event",
    "decode_events",
    "encode_event",
    "encode_jsonl",
    "encoded_lines",
    "is_valid_name",
    "new_event_id",
    "parent_scope",
    "validate_name",
    "validate_session_id",
]

__version__ = "0.1.0"
