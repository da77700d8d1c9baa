"""`make run` as a new user meets it: the same script, a fresh VAR_DIR, SQLite,
free ports. Log in as the demo user in headless Chromium, press Launch now on
the demo campaign, and see every demo recipient's message at the fake ESP.

Needs no test database: the stack under test makes its own (SQLite in a
temporary directory) and its own Redis (a private redis-server when one is
installed, so its worker never takes the suite's tasks).
"""

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.browser.conftest import screenshot_path
from tests.conftest import ROOT, wait_for
from tests.ops.private_services import PrivateRedis, free_port

pytestmark = [pytest.mark.smoke, pytest.mark.browser]

DEMO_USER, DEMO_PASSWORD = "admin", "admin"
DEMO_CAMPAIGN = "Welcome (demo)"


class Stack:
    """``bash deploy/local/run.sh`` in its own process group."""

    def __init__(self, var_dir: Path, redis_url: str):
        self.var_dir = var_dir
        self.web_port, self.esp_port = free_port(), free_port()
        self.log_path = var_dir.parent / "make-run.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SITE_URL", "POSTMARK_API_URL")
        }
        env.update(
            VAR_DIR=str(var_dir),
            WEB_PORT=str(self.web_port),
            ESP_PORT=str(self.esp_port),
            REDIS_URL=redis_url,
            PYTHONUNBUFFERED="1",
        )
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            ["bash", "deploy/local/run.sh"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def site(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def inbox(self) -> str:
        return f"http://127.0.0.1:{self.esp_port}/_fake/messages"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"make run exited early:\n{self.output()[-3000:]}")
        try:
            login = requests.get(f"{self.site}/admin/login/", timeout=2)
            inbox = requests.get(self.inbox, timeout=2)
        except requests.RequestException:
            return False
        return login.status_code == 200 and inbox.status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C does
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def stack(tmp_path):
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    started = Stack(tmp_path / "var", redis_server.url)
    try:
        # A fresh checkout migrates SQLite and makes the demo data first.
        wait_for(started.answers, timeout=240, interval=0.5)
        yield started
    finally:
        started.stop()
        redis_server.stop()


def _demo_audience(var_dir: Path) -> set[str]:
    """The demo campaign's recipients, read from the stack's own database."""
    with sqlite3.connect(var_dir / "notifier.sqlite3") as db:
        rows = db.execute(
            """SELECT DISTINCT r.email FROM notifier_recipient r
               JOIN campaigns_listmembership m ON m.recipient_id = r.id
               JOIN campaigns_campaign_contact_lists cl ON cl.contactlist_id = m.contact_list_id
               JOIN campaigns_campaign c ON c.id = cl.campaign_id
               WHERE c.name = ? AND r.status = 'active'""",
            [DEMO_CAMPAIGN],
        ).fetchall()
    return {email for (email,) in rows}


def _received(stack: Stack) -> list[str]:
    messages = requests.get(stack.inbox, timeout=5).json()
    return [m["To"] for m in messages]


def test_make_run_launches_the_demo_campaign_to_every_demo_recipient(stack, page):
    output = stack.output()
    assert f"Admin: {stack.site}/admin/  login: {DEMO_USER} / {DEMO_PASSWORD}" in output
    assert "SQLite" in output or "sqlite" in output
    audience = _demo_audience(stack.var_dir)
    assert len(audience) >= 3, "the demo campaign needs an audience"

    page.goto(f"{stack.site}/admin/")
    page.fill("#id_username", DEMO_USER)
    page.fill("#id_password", DEMO_PASSWORD)
    page.click("input[type=submit]")
    page.get_by_role("link", name="Campaigns", exact=True).first.click()
    page.get_by_role("link", name=DEMO_CAMPAIGN).click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Launch now").click()

    def every_message_arrived():
        received = _received(stack)
        return received if len(received) >= len(audience) else None

    received = wait_for(every_message_arrived, timeout=120, interval=0.5)
    time.sleep(1)  # anything more would be a duplicate: give it the chance to show
    received = _received(stack)
    assert sorted(to.rsplit("<", 1)[-1].rstrip(">") for to in received) == sorted(audience)

    def run_done():
        page.reload()
        return "Done" in page.inner_text("#run-status")

    wait_for(run_done, timeout=60, interval=1)
    page.screenshot(path=screenshot_path("make-run-demo-campaign-sent"), full_page=True)
