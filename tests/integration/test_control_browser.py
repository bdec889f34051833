"""The dashboard's control panel in headless Chromium.

The first test plays the coordinator's part itself (it reads the inbox and
publishes the outcomes), so that each step of the page is checked against a
known answer; the others drive real ``eventbus demo --human`` sessions in
another process, as a person would: served by the API's app in this process
(as ``eventbus serve DIR`` would, following the files), or by the demo itself
(``--serve``, on its own bus).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest

from _web_server import serving
from eventbus import Event, EventBus, EventType, create_session_event
from eventbus.web import create_app
from sinks.jsonl import EventLog, JsonlSink

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SESSION = "control-session"
TIMEOUT_MS = 30_000


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn and Playwright's async API run on asyncio."""
    return "asyncio"


def keep_screenshot(png: bytes, tmp_path: Path, name: str) -> None:
    """Keep the screenshot under tmp_path, and in $EVENTBUS_ARTIFACTS_DIR when it is set."""
    (tmp_path / name).write_bytes(png)
    artifacts = os.environ.get("EVENTBUS_ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / name).write_bytes(png)


@asynccontextmanager
async def chromium_page(errors: list[str]) -> AsyncIterator[Any]:
    """A page of headless Chromium; page errors are appended to ``errors``."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield page
        finally:
            await browser.close()


async def open_session(page: Any, url: str, session_id: str) -> None:
    """Open the session's page from its row in the sessions list."""
    await page.goto(f"{url}/")
    row = page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')
    await row.get_by_role("link").click()
    await page.get_by_test_id("control-panel").wait_for()


def inbox(root: Path, session_id: str) -> list[dict[str, Any]]:
    lines = (root / session_id / "control.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def outcome(command: dict[str, Any], *, applied: bool, reason: str | None = None) -> Event:
    """The event a coordinator logs for ``command``."""
    return Event(
        event_type=EventType.CONTROL_APPLIED if applied else EventType.CONTROL_REJECTED,
        session_id=SESSION,
        message=f"{command['kind']} {'applied' if applied else 'rejected'}",
        metadata={
            "command_id": command["command_id"],
            "kind": command["kind"],
            "target": command.get("target"),
            "actor": command["actor"],
            "reason": reason,
        },
    )


@pytest.mark.anyio
async def test_the_panel_sends_each_command_and_shows_its_outcome(tmp_path: Path) -> None:
    """Answer, reject, pause: each click queues one command in the inbox (actor
    ``dashboard``), the panel shows applied or rejected with the reason as the log says,
    the pending rows follow the log, and an ended session has no buttons."""
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    errors: list[str] = []
    async with EventBus() as bus:
        bus.subscribe(JsonlSink(tmp_path))

        async def publish(*events: Event) -> None:
            for event in events:
                await bus.publish(event)
            await bus.flush()

        await publish(
            create_session_event(SESSION, EventType.SESSION_STARTED, phase="PLAN_REVIEW"),
            Event(
                event_type=EventType.CLARIFICATION_REQUESTED,
                session_id=SESSION,
                message="Which licence?",
                task_id="plan",
                agent_role="planner",
                metadata={"question_id": "q1", "question": "Which licence?"},
            ),
            Event(
                event_type=EventType.APPROVAL_REQUESTED,
                session_id=SESSION,
                message="approve the plan",
                metadata={"request_id": "r1", "subject": "the plan (3 tasks)"},
            ),
        )
        async with serving(create_app(tmp_path, bus=bus)) as url, chromium_page(errors) as page:
            await open_session(page, url, SESSION)
            rows = page.get_by_test_id("pending-row")
            await expect(rows).to_have_count(2)
            status = page.get_by_test_id("control-status")

            # Answer the question: one command in the inbox; applied once the log says so.
            await page.get_by_test_id("answer-input").fill("MIT")
            async with page.expect_response(lambda r: r.request.method == "POST") as posted:
                await page.get_by_test_id("answer-submit").click()
            assert (await posted.value).status == 202
            (answer,) = inbox(tmp_path, SESSION)
            assert {k: answer[k] for k in ("kind", "target", "text", "actor")} == {
                "kind": "answer",
                "target": "q1",
                "text": "MIT",
                "actor": "dashboard",
            }
            await expect(status).to_contain_text("answer: queued")
            await publish(
                outcome(answer, applied=True),
                Event(
                    event_type=EventType.CLARIFICATION_ANSWERED,
                    session_id=SESSION,
                    message="MIT",
                    metadata={"question_id": "q1", "answer": "MIT"},
                ),
            )
            await expect(status).to_have_text("answer: applied")
            await expect(rows).to_have_count(1)

            # Reject the approval with a reason.
            await page.get_by_test_id("reason-input").fill("too broad")
            async with page.expect_response(lambda r: r.request.method == "POST"):
                await page.get_by_test_id("reject-button").click()
            reject = inbox(tmp_path, SESSION)[-1]
            assert (reject["kind"], reject["target"], reject["reason"]) == (
                "reject",
                "r1",
                "too broad",
            )
            await publish(
                outcome(reject, applied=True),
                Event(
                    event_type=EventType.GATE_BLOCKED,
                    session_id=SESSION,
                    message="rejected by dashboard",
                    metadata={"request_id": "r1"},
                ),
            )
            await expect(status).to_have_text("reject: applied")
            await expect(rows).to_have_count(0)

            # Resume while running: the coordinator rejects it, the panel says why.
            async with page.expect_response(lambda r: r.request.method == "POST"):
                await page.get_by_test_id("resume-button").click()
            resume = inbox(tmp_path, SESSION)[-1]
            await publish(outcome(resume, applied=False, reason="the session is not paused"))
            await expect(status).to_have_text("resume: rejected: the session is not paused")
            await expect(status).to_have_attribute("data-status", "rejected")

            # Pause: applied, and the state shows it.
            async with page.expect_response(lambda r: r.request.method == "POST"):
                await page.get_by_test_id("pause-button").click()
            pause = inbox(tmp_path, SESSION)[-1]
            await publish(
                outcome(pause, applied=True),
                Event(event_type=EventType.SESSION_PAUSED, session_id=SESSION, message="paused"),
            )
            await expect(status).to_have_text("pause: applied")
            await expect(page.get_by_test_id("control-state")).to_have_text("paused")
            await expect(page.get_by_test_id("command-row")).to_have_count(4)
            keep_screenshot(await page.screenshot(full_page=True), tmp_path, "control-panel.png")

            # Ended: no buttons.
            await publish(create_session_event(SESSION, EventType.SESSION_ABORTED, phase="ABORTED"))
            await expect(page.get_by_test_id("control-state")).to_have_text("ended (aborted)")
            for name in ("pause-button", "resume-button", "abort-button"):
                await expect(page.get_by_test_id(name)).to_be_hidden()
                await expect(page.get_by_test_id(name)).to_be_disabled()
    assert errors == []


# --- real sessions: `eventbus demo --human` in another process -----------------------------


@asynccontextmanager
async def demo(root: Path, session_id: str, *args: str) -> AsyncIterator[Path]:
    """``eventbus demo --human`` writing session ``session_id`` under ``root`` during the
    block (its output in ``root/../{session_id}.out``); stopped at the end if still running."""
    output = root.parent / f"{session_id}.out"
    command = [
        sys.executable, "-m", "eventbus", "demo", "--human", "--workspace", str(root),
        "--session-id", session_id, "--tasks", "3", *args,
    ]  # fmt: skip
    with output.open("wb") as out:
        process = await anyio.open_process(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield output
        finally:
            if process.returncode is None:
                process.terminate()
            with anyio.fail_after(30, shield=True):
                await process.wait()


@asynccontextmanager
async def served_demo(root: Path, session_id: str, *args: str) -> AsyncIterator[str]:
    """``eventbus demo --human --serve`` (the dashboard on the demo's own bus) during the
    block; yields the dashboard's URL once the session asks its first question (by then
    the server listens: it started before the session)."""
    with socket.socket() as probe:  # a free port (uvicorn binds it with SO_REUSEADDR)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "eventbus", "demo", "--human", "--workspace", str(root),
        "--session-id", session_id, "--tasks", "3", "--serve", "--port", str(port), *args,
    ]  # fmt: skip
    output = bytearray()
    process = await anyio.open_process(command, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    stdout = process.stdout

    async def drain() -> None:  # read on, so that the demo never blocks on a full pipe
        with suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                output.extend(await stdout.receive())

    try:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(60):
                while b"  ?? " not in output:
                    try:
                        output.extend(await stdout.receive())
                    except anyio.EndOfStream:
                        pytest.fail(f"the demo ended early:\n{output.decode()}")
            url = re.search(rb"dashboard: (http://\S+)/", output)
            assert url is not None, output.decode()
            tg.start_soon(drain)
            try:
                yield url.group(1).decode()
            finally:
                tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
        with anyio.fail_after(30, shield=True):
            await process.wait()
        await process.aclose()


def ended_with(page: Any, event_type: str) -> Any:
    """The feed row of the session's last event, once it has it."""
    return page.locator(f'[data-testid="event-row"][data-type="{event_type}"]')


@pytest.mark.anyio
async def test_a_human_demo_is_answered_and_approved_to_completion_from_the_page(
    tmp_path: Path,
) -> None:
    """The clarification is answered in its box, each approval approved; the session
    completes, and every command shows applied."""
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    errors: list[str] = []
    root = tmp_path / "workspaces"
    root.mkdir()
    async with (
        serving(create_app(root)) as url,
        chromium_page(errors) as page,
        demo(root, "human", "--pace", "0.05") as output,
    ):
        await open_session(page, url, "human")
        status = page.get_by_test_id("control-status")
        await page.get_by_test_id("answer-input").fill("Use the MIT licence")
        await page.get_by_test_id("answer-submit").click()
        await expect(status).to_have_text("answer: applied")
        completed = ended_with(page, "session_completed")
        approvals = page.locator('[data-testid="pending-row"][data-kind="approval"]')
        for _ in range(10):  # one approval per gate the demo asks
            await expect(approvals.or_(completed).first).to_be_visible()
            if await completed.count():
                break
            request_id = await approvals.first.get_attribute("data-pending-id")
            await approvals.first.get_by_test_id("approve-button").click()
            await expect(status).to_have_text("approve: applied")
            decided = page.locator(f'[data-testid="pending-row"][data-pending-id="{request_id}"]')
            await expect(decided).to_have_count(0)
        await expect(completed).to_have_count(1)
        await expect(page.get_by_test_id("control-state")).to_have_text("ended (completed)")
        await expect(page.get_by_test_id("pause-button")).to_be_hidden()
        keep_screenshot(await page.screenshot(full_page=True), tmp_path, "control-demo.png")
    assert errors == [], output.read_text()


@pytest.mark.anyio
async def test_pause_resume_and_reject_on_a_paced_demo(tmp_path: Path) -> None:
    """Pause, then resume, each applied; the question answered; the approval rejected
    (applied: it leaves the pending list)."""
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    errors: list[str] = []
    root = tmp_path / "workspaces"
    root.mkdir()
    async with (
        serving(create_app(root)) as url,
        chromium_page(errors) as page,
        demo(root, "paced", "--pace", "0.2") as output,
    ):
        await open_session(page, url, "paced")
        status = page.get_by_test_id("control-status")
        state = page.get_by_test_id("control-state")
        await page.get_by_test_id("pause-button").click()
        await expect(status).to_have_text("pause: applied")
        await expect(state).to_have_text("paused")
        await page.get_by_test_id("resume-button").click()
        await expect(status).to_have_text("resume: applied")
        await expect(state).to_have_text("running")
        await page.get_by_test_id("answer-input").fill("MIT")
        await page.get_by_test_id("answer-submit").click()
        await expect(status).to_have_text("answer: applied")
        rows = page.locator('[data-testid="pending-row"][data-kind="approval"]')
        await rows.first.get_by_test_id("reason-input").fill("not this plan")
        await rows.first.get_by_test_id("reject-button").click()
        await expect(status).to_have_text("reject: applied")
        await expect(state).to_contain_text("ended")
    assert errors == [], output.read_text()


@pytest.mark.anyio
async def test_abort_ends_a_running_demo_aborted(tmp_path: Path) -> None:
    """Abort from the dashboard ``demo --serve`` serves on its own bus: applied, the
    session ends aborted, the buttons go."""
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    errors: list[str] = []
    root = tmp_path / "workspaces"
    root.mkdir()
    async with (
        served_demo(root, "doomed", "--pace", "0.05") as url,
        chromium_page(errors) as page,
    ):
        await open_session(page, url, "doomed")
        await page.get_by_test_id("abort-button").click()
        await expect(ended_with(page, "session_aborted")).to_have_count(1)
        await expect(page.locator("#session-status")).to_have_text("aborted")
        await expect(page.get_by_test_id("control-state")).to_have_text("ended (aborted)")
        await expect(page.get_by_test_id("control-status")).to_have_text("abort: applied")
        await expect(page.get_by_test_id("abort-button")).to_be_hidden()
    assert errors == []


@pytest.mark.anyio
async def test_a_read_only_server_shows_what_is_pending_without_buttons(tmp_path: Path) -> None:
    """``serve --read-only``: the question is listed, nothing on the page can send a command."""
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    errors: list[str] = []
    with EventLog(tmp_path / SESSION / "events.jsonl") as log:
        log.append(create_session_event(SESSION, EventType.SESSION_STARTED, phase="IDEA"))
        log.append(
            Event(
                event_type=EventType.CLARIFICATION_REQUESTED,
                session_id=SESSION,
                message="Which licence?",
                metadata={"question_id": "q1", "question": "Which licence?"},
            )
        )
    app = create_app(tmp_path, read_only=True)
    async with serving(app) as url, chromium_page(errors) as page:
        await open_session(page, url, SESSION)
        await expect(page.get_by_test_id("pending-row")).to_have_count(1)
        await expect(page.get_by_test_id("control-panel")).to_contain_text("read-only")
        for name in ("pause-button", "resume-button", "abort-button", "answer-input"):
            await expect(page.get_by_test_id(name)).to_be_hidden()
    assert errors == []


@pytest.mark.anyio
async def test_with_a_token_the_panel_sends_it(tmp_path: Path) -> None:
    """Opened as ``/?token=...``, the page's reads and commands carry the token."""
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    errors: list[str] = []
    with EventLog(tmp_path / SESSION / "events.jsonl") as log:
        log.append(create_session_event(SESSION, EventType.SESSION_STARTED, phase="IDEA"))
    app = create_app(tmp_path, token="s3cret")
    async with serving(app) as url, chromium_page(errors) as page:
        await page.goto(f"{url}/?token=s3cret#/sessions/{SESSION}")
        await expect(page.get_by_test_id("control-state")).to_have_text("running")
        async with page.expect_response(lambda r: r.request.method == "POST") as posted:
            await page.get_by_test_id("pause-button").click()
        assert (await posted.value).status == 202
        await expect(page.get_by_test_id("control-status")).to_contain_text("pause: queued")
    (command,) = inbox(tmp_path, SESSION)
    assert (command["kind"], command["actor"]) == ("pause", "dashboard")
    assert errors == []
