"""A real browser: Playwright driving the system's headless Chromium.

Chromium comes from the operating system (Debian's ``chromium`` package),
never from a download; without it these tests are skipped with a message.
Screenshots are kept under ``var/screenshots/``.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from django.db import connections

from tests.conftest import ROOT

SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


def chromium_path() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.browser_call_failed = report.failed
    return report


@pytest.fixture
def page(request, monkeypatch):
    """A fresh Chromium profile and page; a screenshot is kept if the test fails."""
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop in this thread; the test's own
    # ORM calls are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=path,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        sync_api.expect.set_options(timeout=TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            yield page
        finally:
            if getattr(request.node, "browser_call_failed", False):
                page.screenshot(path=screenshot_path(f"failed-{request.node.name}"), full_page=True)
            context.close()
            # While Playwright's loop runs, Django keeps this thread's database
            # connections apart from the usual ones: close those it opened.
            connections.close_all()


def screenshot_path(name: str) -> Path:
    return SCREENSHOTS / f"{name}.png"


def log_in(page, live_server, username: str, password: str) -> None:
    """Sign in to the admin through its login form."""
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
