"""Shared fixtures: every async test runs on asyncio and on trio (anyio's plugin)."""

from __future__ import annotations

import pytest


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The backend each ``@pytest.mark.anyio`` test runs on."""
    return str(request.param)
