"""One token and cost rule set: the index, the run summary and the workspace add up alike.

Every place that sums LLM usage (``EventIndex.usage``, ``ArtifactSink``'s
``run_summary``, ``Workspace.usage`` with and without an index, and the rows of
``Workspace.sessions``) reads a response's amounts by the same rules, so they
agree for any mix of responses: negative, huge, missing, float, boolean or
text amounts included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import Event, EventType
from sinks import ArtifactSink, EventIndex, JsonlSink, RunSummary, Workspace

_MISSING = object()
_TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")

amounts = st.one_of(
    st.just(_MISSING),
    st.none(),
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # negative and huge
    st.floats(allow_nan=False, allow_infinity=False),  # huge ones included; JSON has no NaN
    st.floats(min_value=0, max_value=1000),
    st.booleans(),
    st.text(max_size=2),
)
responses = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2"]),
        st.sampled_from(["m1", "m2", None]),
        st.fixed_dictionaries(dict.fromkeys((*_TOKEN_KEYS, "cost_usd"), amounts)),
    ),
    max_size=12,
)


def _events(drawn: list[tuple[str, str | None, dict[str, Any]]]) -> list[Event]:
    events = []
    for number, (session_id, model, values) in enumerate(drawn):
        metadata = {key: value for key, value in values.items() if value is not _MISSING}
        events.append(
            Event(
                event_type=EventType.LLM_RESPONSE_RECEIVED,
                session_id=session_id,
                message=f"response {number}",
                model=model,
                metadata=metadata,
            )
        )
    return events


def _totals(calls: int, prompt: int, completion: int, total: int, cost: float) -> dict[str, Any]:
    return {
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cost_usd": cost,
    }


def _summed(rows: list[dict[str, Any]], calls: str) -> dict[str, Any]:
    picos = sum(round(row["cost_usd"] * 10**12) for row in rows)
    return _totals(
        sum(row[calls] for row in rows),
        sum(row["prompt_tokens"] for row in rows),
        sum(row["completion_tokens"] for row in rows),
        sum(row["total_tokens"] for row in rows),
        picos / 10**12,
    )


async def _write(root: Path, events: list[Event], artifacts: bool) -> None:
    sinks: list[Any] = [JsonlSink(root)]
    if artifacts:
        sinks.append(ArtifactSink(root))
    for sink in sinks:
        await sink.write(events)
        await sink.aclose()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses)
def test_run_summary_index_and_workspace_totals_agree(
    drawn: list[tuple[str, str | None, dict[str, Any]]],
) -> None:
    """Whatever the responses hold, every place reports the same calls, tokens and cost."""
    events = _events(drawn)
    index = EventIndex()
    index.add(events)
    usage = index.usage()
    expected = _totals(
        usage.responses,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cost_usd,
    )
    with tempfile.TemporaryDirectory() as directory:
        with_artifacts, logs_only = Path(directory, "a"), Path(directory, "b")
        anyio.run(_write, with_artifacts, events, True)
        anyio.run(_write, logs_only, events, False)

        summaries = [
            msgspec.json.decode(path.read_bytes(), type=RunSummary)
            for path in sorted(with_artifacts.glob("*/artifacts/run_summary.json"))
        ]
        assert _summed([msgspec.to_builtins(s) for s in summaries], "llm_calls") == expected
        assert sum(s.cached_tokens for s in summaries) == usage.cached_tokens

        for root in (with_artifacts, logs_only):
            for indexed in (True, False):
                with Workspace(root, index=indexed) as workspace:
                    answer = workspace.usage("session_id")
                    assert answer["total"] == expected
                    assert _summed(answer["rows"], "calls") == expected
                    assert _summed(workspace.sessions(), "llm_calls") == expected


def test_a_negative_prompt_count_counts_as_zero_everywhere(tmp_path: Path) -> None:
    """The issue's example: ``prompt_tokens=-100`` is 0, and the total is the other 23."""
    events = _events([("s1", "m1", {"prompt_tokens": -100, "completion_tokens": 23})])
    anyio.run(_write, tmp_path, events, True)
    with Workspace(tmp_path) as workspace:
        assert workspace.usage()["total"]["total_tokens"] == 23
        assert workspace.sessions()[0]["total_tokens"] == 23
        assert workspace.sessions()[0]["prompt_tokens"] == 0
