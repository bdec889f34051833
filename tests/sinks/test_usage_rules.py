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

from eventbus import Event
from factories import response
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
    return [
        response(
            number,
            session_id,
            model=model,
            **{key: value for key, value in values.items() if value is not _MISSING},
        )
        for number, (session_id, model, values) in enumerate(drawn)
    ]


def _values(calls: int, row: Any) -> dict[str, Any]:
    """What every place reports: calls, the token counts, the cost."""
    get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
    return {
        "calls": calls,
        "prompt_tokens": get("prompt_tokens"),
        "completion_tokens": get("completion_tokens"),
        "cached_tokens": get("cached_tokens"),
        "total_tokens": get("total_tokens"),
        "cost_usd": get("cost_usd"),
    }


def _by_session(rows: list[dict[str, Any]], key: str, calls: str) -> dict[str, dict[str, Any]]:
    return {row[key]: _values(row[calls], row) for row in rows if row[calls]}


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
    total = _values(usage.responses, usage)
    per_session = {
        session_id: _values(found.responses, found)
        for session_id, found in index.usage_by("session_id").items()
        if session_id is not None
    }
    with tempfile.TemporaryDirectory() as directory:
        with_artifacts, logs_only = Path(directory, "a"), Path(directory, "b")
        anyio.run(_write, with_artifacts, events, True)
        anyio.run(_write, logs_only, events, False)

        summaries = [
            msgspec.json.decode(path.read_bytes(), type=RunSummary)
            for path in sorted(with_artifacts.glob("*/artifacts/run_summary.json"))
        ]
        summed = {s.session_id: _values(s.llm_calls, s) for s in summaries if s.llm_calls}
        assert summed == per_session
        assert sum(s.cached_tokens for s in summaries) == usage.cached_tokens

        for root in (with_artifacts, logs_only):
            for indexed in (True, False):
                with Workspace(root, index=indexed) as workspace:
                    answer = workspace.usage("session_id")
                    assert answer["total"].pop("cost_source") in (None, "producer")
                    assert answer["total"] == total
                    assert _by_session(answer["rows"], "key", "calls") == per_session
                    assert _by_session(workspace.sessions(), "session_id", "llm_calls") == (
                        per_session
                    )


def test_a_negative_prompt_count_counts_as_zero_everywhere(tmp_path: Path) -> None:
    """The issue's example: ``prompt_tokens=-100`` is 0, and the total is the other 23."""
    events = _events([("s1", "m1", {"prompt_tokens": -100, "completion_tokens": 23})])
    anyio.run(_write, tmp_path, events, True)
    with Workspace(tmp_path) as workspace:
        assert workspace.usage()["total"]["total_tokens"] == 23
        assert workspace.sessions()[0]["total_tokens"] == 23
        assert workspace.sessions()[0]["prompt_tokens"] == 0
