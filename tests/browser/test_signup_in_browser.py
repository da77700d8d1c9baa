"""Someone signs up through the public form in a real browser, end to end.

Live server (this process) + a real Celery worker + PostgreSQL + Redis + the
fake ESP: the confirmation email is sent by the worker, its link followed in
the browser, and the consent record read in the admin.
"""

import re

import pytest
from django.contrib.auth.models import User

from campaigns.models import Consent, ListMembership, SignupForm
from campaigns.services.signups import signup_confirmed
from tests.browser.conftest import log_in, screenshot_path
from tests.campaigns.factories import ContactListFactory
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.browser]

PASSWORD = "a-long-browser-test-password"
CONSENT = "Yes, send me the Pioneers newsletter once a month. I can unsubscribe at any time."


def test_signup_with_double_opt_in_in_a_browser(
    page, live_server, celery_worker_process, fake_esp, confirmation_template, settings
):
    from playwright.sync_api import expect

    blocked = []
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    settings.SITE_URL = live_server.url
    form = SignupForm.objects.create(
        name="Pioneers newsletter",
        slug="pioneers",
        title="The Pioneers newsletter",
        introduction="Stories of computing pioneers, once a month.",
        attribute_fields="city",
        consent_text=CONSENT,
    )
    form.lists.set([ContactListFactory(name="Pioneers")])
    # The seam journeys connect to: enrolment on a confirmed signup.
    enrolled = []
    signup_confirmed.connect(
        lambda recipient, form, consent, **kw: enrolled.append((recipient.email, form.slug)),
        weak=False,
        dispatch_uid="browser-test",
    )
    try:
        page.goto(f"{live_server.url}/subscribe/pioneers/")
        expect(page.get_by_role("heading", name="The Pioneers newsletter")).to_be_visible()
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Name").fill("Ada Lovelace")
        page.get_by_label("City").fill("London")
        page.get_by_label("Yes, send me the Pioneers newsletter").check()
        page.screenshot(path=screenshot_path("signup-1-form"), full_page=True)
        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
        assert not ListMembership.objects.exists()

        # The worker sends the confirmation email to the fake ESP.
        message = wait_for(
            lambda: next((m for m in fake_esp.messages if "ada@example.com" in m["To"]), None),
            timeout=60,
        )
        assert message["Subject"] == "Please confirm your subscription"
        link = re.search(r'href="([^"]+/subscribe/confirm/[^"]+)"', message["HtmlBody"]).group(1)
        assert link.startswith(live_server.url)

        page.goto(link)
        page.screenshot(path=screenshot_path("signup-2-confirm"), full_page=True)
        assert not ListMembership.objects.exists()  # opening the link is not enough
        page.get_by_role("button", name="Confirm subscription").click()
        expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
        page.screenshot(path=screenshot_path("signup-3-subscribed"), full_page=True)
    finally:
        signup_confirmed.disconnect(dispatch_uid="browser-test")

    membership = ListMembership.objects.select_related("recipient", "contact_list").get()
    assert membership.contact_list.name == "Pioneers"
    assert membership.recipient.name == "Ada Lovelace"
    assert membership.recipient.attributes == {"city": "London"}
    assert enrolled == [("ada@example.com", "pioneers")]

    # Staff read the consent record: the form, the time and the exact text shown.
    consent = Consent.objects.get()
    User.objects.create_superuser("root", password=PASSWORD)
    log_in(page, live_server, "root", PASSWORD)
    page.goto(f"{live_server.url}/admin/campaigns/consent/{consent.pk}/change/")
    content = page.locator("#content")
    expect(content).to_contain_text("Pioneers newsletter")
    expect(content).to_contain_text(CONSENT)
    expect(content.locator(".field-requested_at")).to_contain_text(str(consent.requested_at.year))
    expect(content.locator(".field-confirmed_at")).not_to_contain_text("-")
    page.screenshot(path=screenshot_path("signup-4-consent-record"), full_page=True)

    # The form's admin page: its public address and the snippet to embed.
    page.goto(f"{live_server.url}/admin/campaigns/signupform/{form.pk}/change/")
    expect(page.locator(".field-public_page")).to_contain_text("/subscribe/pioneers/")
    snippet = page.locator(".field-embed_snippet textarea").input_value()
    assert snippet.startswith('<form method="post" action="') and "<script" not in snippet
    page.screenshot(path=screenshot_path("signup-5-admin-form"), full_page=True)
    assert blocked == []
