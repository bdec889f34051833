"""The dashboard in headless Chromium while a session publishes on an in-process bus."""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from _polling import poll_until
from _web_server import serving
from eventbus import (
    Event,
    EventBus,
    EventType,
    create_llm_request_event,
    create_llm_response_event,
    create_session_event,
    create_task_event,
)
from eventbus.web import create_app
from sinks.jsonl import JsonlSink
from sinks.workspace import Workspace

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SESSION = "browser-session"


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn and Playwright's async API run on asyncio."""
    return "asyncio"


def _keep_screenshot(png: bytes, tmp_path: Path) -> None:
    """Keep the screenshot under tmp_path, and in $EVENTBUS_ARTIFACTS_DIR when it is set."""
    (tmp_path / "dashboard.png").write_bytes(png)
    artifacts = os.environ.get("EVENTBUS_ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / "dashboard.png").write_bytes(png)


_STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$"


def _feed_times(timestamps: list[str]) -> list[str]:
    """The feed's time cells, newest first: UTC, to the ms, dated on top and where the date
    changes from the row above."""
    shown: list[str] = []
    above: str | None = None
    for iso in timestamps:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
        clock = f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}"
        date = f"{moment:%Y-%m-%d}"
        shown.append(clock if date == above else f"{date} {clock}")
        above = date
    return shown


@pytest.mark.anyio
async def test_dashboard_follows_a_running_session_live(tmp_path: Path) -> None:
    """Feed, task grid and chart update as events are published; totals equal the log's."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect

    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))

        async def publish(*events: object) -> None:
            for event in events:
                await bus.publish(event)  # type: ignore[arg-type]
            await bus.flush()

        stored = [
            create_session_event(SESSION, EventType.SESSION_STARTED, phase="EXECUTION"),
            *(
                create_task_event(SESSION, EventType.TASK_SCHEDULED, f"t{n}", agent_role="coder")
                for n in (1, 2, 3)
            ),
        ]
        await publish(*stored)
        async with (
            serving(create_app(tmp_path, bus=bus)) as url,
            playwright_api.async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            # The sessions list shows the session; its link opens the session view.
            await page.goto(f"{url}/")
            row = page.locator(f'[data-testid="session-row"][data-session-id="{SESSION}"]')
            await expect(row).to_have_count(1)
            await row.get_by_role("link").click()
            tasks = page.locator('[data-testid="task-row"]')
            await expect(tasks).to_have_count(3)
            await expect(page.locator('[data-testid="event-row"]')).to_have_count(4)
            # Its stream starts after the last stored event, though every one of them was
            # read first by the view's partial read (task and session types): nothing
            # published from now on can fall between the reads and the stream.
            with anyio.fail_after(10):
                await poll_until(
                    lambda: any("/stream" in url and SESSION in url for url in requests)
                )
            stream = next(url for url in requests if "/stream" in url and SESSION in url)
            assert f"last_event_id={stored[-1].id}" in stream
            # Times in UTC to the millisecond; the top row (the newest) has the date.
            times = page.locator('[data-testid="event-row"] td:first-child')
            await expect(times.first).to_have_text(re.compile(_STAMP))
            await expect(times.nth(1)).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))

            # Live: a task runs, calls two models, completes; the view follows.
            request = create_llm_request_event(
                SESSION, "model-a", "coder", 12, "t1", messages=[{"role": "user", "content": "hi"}]
            )
            await publish(
                create_task_event(SESSION, EventType.TASK_STARTED, "t1", agent_role="coder"),
                request,
                create_llm_response_event(
                    SESSION,
                    "model-a",
                    "coder",
                    12,
                    30,
                    "t1",
                    cost_usd=0.0042,
                    parent_id=request.id,
                    response="hello there",
                ),
                create_llm_response_event(
                    SESSION, "model-b", "coder", 100, 7, "t1", cost_usd=0.0100
                ),
                create_task_event(SESSION, EventType.TASK_COMPLETED, "t1", agent_role="coder"),
                create_task_event(SESSION, EventType.TASK_STARTED, "t2", agent_role="coder"),
            )
            await expect(page.locator('[data-task-id="t1"]')).to_have_attribute(
                "data-status", "completed"
            )
            await expect(page.locator('[data-task-id="t2"]')).to_have_attribute(
                "data-status", "running"
            )
            await expect(page.locator('[data-testid="event-row"]')).to_have_count(10)
            chart = page.locator('[data-testid="usage-chart"] canvas')
            await expect(chart).to_have_count(1)
            await expect(page.locator("#llm-calls")).to_contain_text("hello there")

            await publish(
                create_llm_response_event(
                    SESSION, "model-a", "tester", 50, 50, "t2", cost_usd=0.0011
                ),
                create_task_event(SESSION, EventType.TASK_FAILED, "t2", agent_role="coder"),
                create_task_event(SESSION, EventType.TASK_SKIPPED, "t3", agent_role="coder"),
                create_session_event(SESSION, EventType.SESSION_FAILED, phase="FAILED"),
            )
            await expect(page.locator('[data-task-id="t3"]')).to_have_attribute(
                "data-status", "skipped"
            )
            total = Workspace(tmp_path).usage("model", session_id=SESSION)["total"]
            await expect(page.get_by_test_id("total-tokens")).to_have_text(
                str(total["total_tokens"])
            )
            cost = float(await page.get_by_test_id("total-cost").inner_text())
            assert cost == pytest.approx(total["cost_usd"], abs=1e-6)

            # An event dated tomorrow, then one of today: the date shows where it changes.
            tomorrow = datetime.now(UTC) + timedelta(days=1)
            await publish(
                Event(event_type=EventType.INFO, session_id=SESSION, message="tomorrow",
                      timestamp=tomorrow),
                Event(event_type=EventType.INFO, session_id=SESSION, message="today"),
            )  # fmt: skip
            await expect(page.locator('[data-testid="event-row"]')).to_have_count(16)
            rows = await page.locator('[data-testid="event-row"]').evaluate_all(
                "rows => rows.map((r) => [r.dataset.timestamp, r.cells[0].textContent])"
            )
            assert [text for _, text in rows] == _feed_times([iso for iso, _ in rows])
            assert sum(bool(re.match(_STAMP, text)) for _, text in rows) == 3

            _keep_screenshot(await page.screenshot(full_page=True), tmp_path)
            await browser.close()
    assert errors == []
    assert all(request.startswith(url) for request in requests), requests
