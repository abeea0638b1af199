"""The console page in a real browser: Debian's Chromium driven by Playwright, against the demo
served by uvicorn over TCP, on the memory and the Redis backend.

A task created through the API appears without a reload; a progress bar rises while a file is
processed; Cancel ends a running task and its row shows CANCELLED; a task named like HTML shows as
that text and runs no script; basic auth refuses without credentials; the page logs no JavaScript
error. A screenshot of each backend's page is written to ``$CONSOLE_SCREENSHOT_DIR`` (default: the
test's temporary folder) as a test artifact.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import RedisServer, redis_server_available
from server_process import ServerProcess, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if os.environ.get("CI"):  # CI installs both (scripts/setup-tests): never skip there
    import playwright.sync_api as playwright

    assert Path(CHROMIUM).exists(), "scripts/setup-tests installs Debian's chromium"
else:
    playwright = pytest.importorskip("playwright.sync_api", reason="scripts/setup-tests")
expect = playwright.expect
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="scripts/setup-tests installs chromium"),
]

USER, PASSWORD = "admin", "console-pw"
XSS_NAME = "<img src=x onerror=alert(1)>"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="module", params=["memory", "redis"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp(f"console-{request.param}")
    env: dict[str, str | None] = {
        "DEMO_CONSOLE_AUTH": f"{USER}:{PASSWORD}",
        "DEMO_TIME_SCALE": "1",
        "LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "none",
        "OBSERVABLE_TASKS_BACKEND": None,
    }
    redis_server = None
    args = ["demo"]
    if request.param == "redis":
        if not redis_server_available():
            pytest.skip("redis-server not installed")
        redis_server = RedisServer(folder / "redis").start()
        args += ["--backend", redis_server.url]
    try:
        with serve(args, log_dir=folder, env=env, uvicorn=False, name="demo") as server:
            yield request.param, server
    finally:
        if redis_server is not None:
            redis_server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> str:
    response = httpx.post(server.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def test_the_page_lives_in_a_browser(
    demo: tuple[str, ServerProcess], browser: Any, tmp_path: Path
) -> None:
    backend, server = demo
    # Without credentials: refused (the page, and so everything it would load).
    assert httpx.get(server.url + "/console", timeout=10).status_code == 401

    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server.url + "/console")
    page.wait_for_selector("#live")

    # A task created through the API (after the page loaded) appears without a reload.
    xss = post(server, "/simulate", {"outcome": "complete", "seconds": 0.2, "name": XSS_NAME})
    row = page.locator(f'tr[data-task-id="{xss}"]')
    row.wait_for(timeout=15_000)
    assert row.locator("td.name span").first.text_content() == XSS_NAME  # shown as text
    assert page.locator("td.name img").count() == 0  # and no element made of it
    expect(row).to_have_attribute("data-status", "COMPLETED", timeout=15_000)

    # A progress bar rises while the demo processes its sample file (11 chunks, 0.1 s each).
    file_task = post(server, "/process-file", {"file_path": "sample.txt"})
    bar = page.locator(f'tr[data-task-id="{file_task}"] [role="progressbar"]')
    expect(bar).to_have_attribute(
        "aria-valuenow", re.compile(r"^([1-9]\d?(\.\d+)?)$"), timeout=15_000
    )
    risen = float(bar.get_attribute("aria-valuenow") or 0)
    assert 0 < risen < 100  # seen part way, live
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=20_000)

    # Cancel ends a running task; its row shows CANCELLED.
    slow = post(server, "/simulate", {"outcome": "slow", "seconds": 60})
    running = page.locator(f'tr[data-task-id="{slow}"]')
    expect(running).to_have_attribute("data-status", "RUNNING", timeout=15_000)
    running.get_by_role("button", name="Cancel").click()
    expect(running).to_have_attribute("data-status", "CANCELLED", timeout=15_000)
    status = httpx.get(f"{server.url}/status/{slow}", timeout=10).json()["status"]
    assert status == "CANCELLED"

    # Counts per status follow the stream too (refreshed shortly after events).
    expect(page.locator("#counts")).to_contain_text("CANCELLED 1", timeout=15_000)
    expect(page.locator("#counts")).to_contain_text("COMPLETED 2", timeout=15_000)

    shots = Path(os.environ.get("CONSOLE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"console-{backend}.png"), full_page=True)
    assert dialogs == []  # the HTML-named task ran no script
    assert errors == [], (errors, failed)
    context.close()
