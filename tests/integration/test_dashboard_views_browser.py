"""The dashboard's views in headless Chromium: the trace, the event detail, artifacts,
the per-model table, a 400-task session, the server-side task filter, not found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _web_server import serving
from eventbus import (
    Event,
    EventType,
    create_llm_request_event,
    create_llm_response_event,
    create_session_event,
    create_task_event,
)
from eventbus.web import create_app
from sinks.jsonl import EventLog
from sinks.workspace import Workspace

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
DEMO = "demo-session"
BIG = "big-session"


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn and Playwright's async API run on asyncio."""
    return "asyncio"


def _keep_screenshot(png: bytes, name: str, tmp_path: Path) -> None:
    """Keep the screenshot under tmp_path, and in $EVENTBUS_ARTIFACTS_DIR when it is set."""
    (tmp_path / name).write_bytes(png)
    artifacts = os.environ.get("EVENTBUS_ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / name).write_bytes(png)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        await browser.close()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's 8-task session (one compile fails, then is retried), run by the CLI."""
    root = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "demo", "--workspace", str(root),
         "--session-id", DEMO],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return root


def _log(root: Path, session_id: str) -> list[dict[str, Any]]:
    lines = (root / session_id / "events.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def _expect() -> Any:
    return pytest.importorskip("playwright.async_api").expect


@pytest.mark.anyio
async def test_trace_has_every_task_agent_and_model_call_and_marks_failures(
    demo_root: Path, browser: Any, tmp_path: Path
) -> None:
    """Once loaded, every task, ``agent_invoked`` and model call (request and response as
    one node) has a ``trace-node``, collapsed or not; failed ones say so; the failures
    button opens the way to them."""
    expect = _expect()
    events = _log(demo_root, DEMO)
    assert len(events) < 1000
    async with serving(create_app(demo_root)) as url:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{url}/#/sessions/{DEMO}")
        await expect(page.locator('#session-view[data-state="loaded"]')).to_have_count(1)
        nodes = page.locator('[data-testid="trace-node"]')
        tasks = {event["task_id"] for event in events if event["event_type"] == "task_started"}
        for task_id in tasks:
            task = nodes.and_(page.locator(f'[data-kind="task"][data-task="{task_id}"]'))
            await expect(task).to_have_count(1)
        for event in events:
            if event["event_type"] in ("agent_invoked", "llm_request_sent"):
                node = nodes.and_(page.locator(f'[data-event-id="{event["id"]}"]'))
                await expect(node).to_have_count(1)
        responses = [e for e in events if e["event_type"] == "llm_response_received"]
        requests = [e for e in events if e["event_type"] == "llm_request_sent"]
        assert len(responses) == len(requests)
        assert await nodes.and_(page.locator('[data-kind="llm"]')).count() == len(requests)
        failed_command = next(
            e for e in events
            if e["event_type"] == "command_executed" and e["metadata"]["exit_code"] != 0
        )  # fmt: skip
        command = nodes.and_(page.locator(f'[data-event-id="{failed_command["id"]}"]'))
        await expect(command).to_have_attribute("data-status", "failed")
        await expect(command).to_be_visible()  # its parents are opened: failures stand out
        await expect(command).to_contain_text("py_compile")
        # The failures button reveals and selects a failed node.
        await page.get_by_test_id("next-failure").click()
        selected = page.locator('[data-testid="trace-node"].selected')
        await expect(selected).to_have_attribute("data-status", "failed")
        await expect(selected).to_be_visible()
        # The search keeps the matching nodes (and their parents) in view.
        await page.get_by_test_id("trace-search").fill("py_compile")
        await expect(command).to_be_visible()
        await expect(nodes.and_(page.locator('[data-kind="gate"]')).first).to_be_hidden()
        await page.get_by_test_id("trace-search").fill("")
        _keep_screenshot(await page.screenshot(full_page=True), "dashboard-trace.png", tmp_path)
    assert errors == []


@pytest.mark.anyio
async def test_event_detail_shows_the_failing_compile_command_s_output(
    demo_root: Path, browser: Any, tmp_path: Path
) -> None:
    """Selecting the failing ``py_compile`` (feed or trace) shows its SyntaxError output."""
    expect = _expect()
    events = _log(demo_root, DEMO)
    failed = next(
        e for e in events
        if e["event_type"] == "command_executed" and e["metadata"]["exit_code"] != 0
    )  # fmt: skip
    output = failed["metadata"]["output"]
    assert "SyntaxError" in output
    async with serving(create_app(demo_root)) as url:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(f"{url}/#/sessions/{DEMO}")
        await expect(page.locator('#session-view[data-state="loaded"]')).to_have_count(1)
        detail = page.get_by_test_id("event-detail")
        await page.locator(f'[data-testid="event-row"][data-event-id="{failed["id"]}"]').click()
        await expect(detail).to_contain_text("SyntaxError")
        await expect(detail).to_contain_text("exit code 1")
        assert output.strip() in (await detail.inner_text())
        # A diff_applied event shows its diff.
        diff = next(e for e in events if e["event_type"] == "diff_applied")
        await page.locator(f'[data-testid="event-row"][data-event-id="{diff["id"]}"]').click()
        await expect(detail.locator("pre.diff")).to_contain_text("+++")
        # The same command from the trace.
        await page.locator('[data-testid="trace-node"][data-kind="session"]').click()
        await page.evaluate(
            "id => document.querySelector(`[data-testid=trace-node][data-event-id='${id}']`)"
            ".click()",
            failed["id"],
        )
        await expect(detail).to_contain_text("SyntaxError")
        _keep_screenshot(await page.screenshot(full_page=True), "dashboard-detail.png", tmp_path)


@pytest.mark.anyio
async def test_artifacts_panel_and_per_model_table(
    demo_root: Path, browser: Any, tmp_path: Path
) -> None:
    """Every artifact is a row that opens it; each model is a row; the totals are the log's."""
    expect = _expect()
    with Workspace(demo_root) as workspace:
        keys = workspace.session(DEMO)["artifacts"]
        usage = workspace.usage("model", session_id=DEMO)
    async with serving(create_app(demo_root)) as url:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(f"{url}/#/sessions/{DEMO}")
        await expect(page.locator('#session-view[data-state="loaded"]')).to_have_count(1)
        rows = page.locator('[data-testid="artifact-row"]')
        await expect(rows).to_have_count(len(keys))
        await page.locator('[data-testid="artifact-row"][data-key="task_graph"]').click()
        await expect(page.get_by_test_id("event-detail")).to_contain_text('"tasks"')

        models = page.locator('[data-testid="model-row"]')
        await expect(models).to_have_count(len(usage["rows"]))
        for row in usage["rows"]:
            shown = page.locator(f'[data-testid="model-row"][data-model="{row["key"]}"]')
            await expect(shown.locator('[data-field="calls"]')).to_have_text(str(row["calls"]))
        total = page.get_by_test_id("model-total")
        for field in ("calls", "prompt_tokens", "completion_tokens", "cached_tokens",
                      "total_tokens"):  # fmt: skip
            text = await total.locator(f'[data-field="{field}"]').inner_text()
            assert int(text.replace(",", "")) == usage["total"][field]
        cost = float(await total.locator('[data-field="cost_usd"]').inner_text())
        assert cost == pytest.approx(usage["total"]["cost_usd"], abs=1e-6)
        await expect(page.get_by_test_id("total-tokens")).to_have_text(
            str(usage["total"]["total_tokens"])
        )
        await expect(page.locator('[data-testid="usage-chart"] canvas')).to_have_count(1)
        await expect(page.locator('[data-testid="cost-chart"] canvas')).to_have_count(1)
        _keep_screenshot(await page.screenshot(full_page=True), "dashboard-cost.png", tmp_path)

        await page.goto(f"{url}/#/usage")
        await expect(page.locator('[data-testid="usage-row"]')).to_have_count(
            len(Workspace(demo_root).usage("day")["rows"])
        )
        _keep_screenshot(await page.screenshot(full_page=True), "dashboard-usage.png", tmp_path)


def _big_session(root: Path, tasks: int = 400) -> dict[str, int]:
    """A 400-task session: each task scheduled, started, one model call, completed."""
    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    n = 0

    def at(event: Event) -> Event:
        nonlocal n
        n += 1
        return Event.from_dict({**event.to_dict(), "timestamp": t0 + timedelta(milliseconds=n)})

    per_task: dict[str, int] = {}
    with EventLog(root / BIG / "events.jsonl") as log:
        log.append(at(create_session_event(BIG, EventType.SESSION_STARTED, phase="EXECUTION")))
        for i in range(tasks):
            task = f"t{i:04d}"
            role = ("coder", "tester", "reviewer")[i % 3]
            request = create_llm_request_event(BIG, "gpt-4o", role, 100, task)
            for event in (
                create_task_event(BIG, EventType.TASK_SCHEDULED, task, agent_role=role),
                create_task_event(BIG, EventType.TASK_STARTED, task, agent_role=role),
                request,
                create_llm_response_event(BIG, "gpt-4o", role, 100, 40, task, parent_id=request.id),
                create_task_event(BIG, EventType.TASK_COMPLETED, task, agent_role=role),
            ):
                log.append(at(event))
            per_task[task] = 5
        log.append(at(create_session_event(BIG, EventType.SESSION_COMPLETED)))
    return per_task


@pytest.mark.anyio
async def test_a_400_task_session_keeps_a_short_page_that_scrolls_in_regions(
    tmp_path: Path, browser: Any
) -> None:
    """At 1400x900 the loaded page is at most 2,700 px tall; scrolling the task grid's own
    region brings every task row into view; filtering by task asks the server."""
    expect = _expect()
    per_task = _big_session(tmp_path)
    async with serving(create_app(tmp_path)) as url:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(f"{url}/#/sessions/{BIG}")
        await expect(page.locator('#session-view[data-state="loaded"]')).to_have_count(1)
        rows = page.locator('[data-testid="task-row"]')
        await expect(rows).to_have_count(400)
        height = await page.evaluate("document.documentElement.scrollHeight")
        assert height <= 2700, height
        grid = page.get_by_test_id("task-grid")
        box = await grid.bounding_box()
        assert box is not None
        seen: set[str] = set()
        for _ in range(200):
            seen |= set(
                await grid.evaluate(
                    """grid => {
                        const region = grid.getBoundingClientRect();
                        return [...grid.querySelectorAll('[data-testid=task-row]')]
                          .filter(r => { const b = r.getBoundingClientRect();
                                         return b.bottom > region.top && b.top < region.bottom; })
                          .map(r => r.dataset.taskId);
                    }"""
                )
            )
            done = await grid.evaluate(
                "g => { const end = g.scrollTop + g.clientHeight >= g.scrollHeight - 1;"
                " g.scrollTop += g.clientHeight * 0.8; return end; }"
            )
            if done:
                break
        assert seen == set(per_task)
        assert await page.evaluate("document.documentElement.scrollHeight") == height
        _keep_screenshot(await page.screenshot(full_page=True), "dashboard-400-tasks.png", tmp_path)

        # The task filter: only that task's events, read from the server.
        await page.get_by_test_id("filter-task").select_option("t0123")
        shown = page.locator('[data-testid="event-row"]')
        await expect(shown).to_have_count(per_task["t0123"])
        ids = await shown.evaluate_all("rows => rows.map(r => r.dataset.task)")
        assert set(ids) == {"t0123"}
        assert any("task_id=t0123" in request for request in requests)


@pytest.mark.anyio
async def test_an_unknown_session_is_a_not_found_page(tmp_path: Path, browser: Any) -> None:
    """A session the workspace does not have shows "not found", not an empty skeleton;
    the page has a favicon."""
    expect = _expect()
    async with serving(create_app(tmp_path)) as url:
        page = await browser.new_page()
        await page.goto(f"{url}/#/sessions/no-such-session")
        await expect(page.get_by_test_id("not-found")).to_be_visible()
        await expect(page.get_by_test_id("not-found")).to_contain_text("no-such-session")
        await expect(page.locator("#session-view")).to_be_hidden()
        icon = await page.request.get(f"{url}/favicon.ico")
        assert icon.status == 200
        assert icon.headers["content-type"].startswith("image/svg")


@pytest.mark.anyio
async def test_a_long_session_s_feed_has_no_cap_and_its_trace_reads_a_task_when_opened(
    tmp_path: Path, browser: Any
) -> None:
    """A 6,002-event session: scrolling the feed's region reads page after page up to the
    last event (no 5,000 cap); opening a task's node reads that task's events."""
    expect = _expect()
    _big_session(tmp_path, tasks=1200)
    count = len((tmp_path / BIG / "events.jsonl").read_bytes().splitlines())
    assert count > 5000
    async with serving(create_app(tmp_path)) as url:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(f"{url}/#/sessions/{BIG}")
        await expect(page.locator('#session-view[data-state="loaded"]')).to_have_count(1)
        rows = page.locator('[data-testid="event-row"]')
        feed = page.get_by_test_id("feed")
        for _ in range(100):
            shown = await rows.count()
            if shown >= count:
                break
            await feed.evaluate("f => { f.scrollTop = f.scrollHeight; }")
            await expect(rows).not_to_have_count(shown)
        await expect(rows).to_have_count(count)
        await expect(page.locator("#feed-end")).to_contain_text("end of the log")

        task = page.locator('[data-testid="trace-node"][data-kind="task"][data-task="t0500"]')
        await task.locator(".twisty").click()
        call = page.locator('[data-testid="trace-node"][data-kind="llm"][data-task="t0500"]')
        await expect(call).to_have_count(1)
        await expect(call).to_be_visible()
