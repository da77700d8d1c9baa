"""The smoke test drives the same headless Chromium as the browser tests."""

from tests.browser.conftest import page, pytest_runtest_makereport  # noqa: F401
