"""A journey's page in a real browser: its steps as a diagram with statistics."""

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from campaigns.models import ListMembership
from journeys.models import JourneyEnrollment
from journeys.services.execution import enrollments_run_batch
from journeys.services.triggers import triggers_poll
from notifier.models import Delivery, Recipient
from tests.browser.conftest import screenshot_path
from tests.journeys.factories import welcome_journey

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_staff_read_a_journey_as_a_diagram(page, live_server, monkeypatch):
    monkeypatch.setattr("journeys.tasks.run_enrollments.apply_async", lambda *a, **k: None)
    blocked = []
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    User.objects.create_superuser("root", "root@example.com", "pw-journeys-1")
    journey = welcome_journey()
    for i in range(3):
        person = Recipient.objects.create(email=f"j{i}@example.com")
        ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    now = timezone.now()
    triggers_poll(now=now)
    enrollments_run_batch(ids=list(JourneyEnrollment.objects.values_list("id", flat=True)), now=now)
    Delivery.objects.update(status=Delivery.Status.SENT)

    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-journeys-1")
    page.click("input[type=submit]")
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    diagram = page.locator("#journey-diagram")
    expect(diagram).to_be_visible()
    expect(page.locator("#journey-step-1")).to_contain_text("Send “welcome”")
    expect(page.locator("#journey-step-1 .stat-sent")).to_contain_text("3")
    expect(page.locator("#journey-step-2 .stat-waiting")).to_contain_text("3")
    expect(page.locator("#journey-step-3")).to_contain_text("go to 4, else 6")
    # A running journey reads from the step table; the read-only step forms
    # stay folded (one click away), so the page is a screen or two, not five.
    steps_group = page.locator("#steps-group > fieldset > details")
    expect(steps_group).not_to_have_attribute("open", "")
    assert page.evaluate("document.documentElement.scrollHeight") < 1600
    page.screenshot(path=screenshot_path("journey-admin"), full_page=True)
    steps_group.locator("summary").first.click()
    expect(page.locator("#steps-group")).to_contain_text("Wait")
    page.screenshot(path=screenshot_path("journey-diagram"), full_page=True)
    assert blocked == []
