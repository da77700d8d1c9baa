"""A Marketing-group member writes an email in the template editor (live
preview beside the source), sends it through a real worker, then reads what
one person received and its timeline; a developer reads the fake ESP inbox."""

import re
from datetime import UTC, timedelta

import pytest
import requests
from django.contrib.auth.models import User

from campaigns.models import ListMembership
from campaigns.services.campaigns import campaign_launch_now
from notifier.models import Delivery, Recipient, SenderIdentity, Template
from tests.browser.conftest import screenshot_path
from tests.campaigns.factories import CampaignFactory, ContactListFactory
from tests.campaigns.test_e2e_worker import wait_closed
from tests.notifier.esp_payloads import (
    POSTMARK_URL,
    basic_auth,
    postmark_click,
    postmark_delivery,
    postmark_open,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.browser]

PASSWORD = "a-long-browser-test-password"
SOURCE = """<style>
  h1 { color: #9a3412; font-size: 30px; }
  .offer { background-color: #fff7ed; padding: 12px; border-radius: 6px; }
</style>
<h1>Spring is here, {{ recipient.first_name }}</h1>
<p class="offer">{{ offer }} on the whole collection, this week only.</p>
{% if recipient.attributes.city %}<p>See you in our {{ recipient.attributes.city }} shop.</p>{% endif %}
<p><a href="https://shop.example/spring">See the collection</a></p>
<p style="font-size: 12px; color: #6b7280;"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""


def log_in(page, admin: str) -> None:
    page.goto(admin)
    page.fill("#id_username", "mia")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")


def test_marketer_writes_an_email_and_reads_what_a_recipient_got(
    page, live_server, celery_worker_process, fake_esp, fake_esp_server, marketing_group
):
    from playwright.sync_api import expect

    blocked = []
    page.set_viewport_size({"width": 1366, "height": 900})
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    User.objects.create_user("mia", password=PASSWORD, is_staff=True).groups.add(marketing_group)
    admin = f"{live_server.url}/admin/"
    log_in(page, admin)
    expect(page.locator("#user-tools")).to_contain_text("mia")

    # The editor: source highlighted on the left, the live preview on the right.
    page.goto(f"{admin}notifier/template/add/")
    page.fill("#id_name", "Spring news")
    page.fill("#id_subject", "Spring news for {{ recipient.first_name }}")
    page.fill("#id_html_body", SOURCE)
    preview = page.frame_locator("iframe[title='Live preview']")
    expect(preview.locator("h1")).to_have_text("Spring is here, Ada")
    expect(preview.locator("h1")).to_have_attribute("style", re.compile("color: #9a3412"))
    expect(page.locator("#template-live-subject")).to_have_text("Spring news for Ada")
    expect(page.locator("#template-highlight .t-djtag").first).to_have_text(
        "{% if recipient.attributes.city %}"
    )
    expect(page.locator("#template-highlight .t-tag").first).to_have_text("<style")
    box_source = page.locator(".tpl-editor").bounding_box()
    box_preview = page.locator("iframe[title='Live preview']").bounding_box()
    assert box_preview["x"] > box_source["x"] + box_source["width"] - 1  # side by side
    page.locator(".form-row.field-html_body").screenshot(
        path=screenshot_path("email-1-template-editor")
    )
    page.screenshot(path=screenshot_path("email-1-template-page"), full_page=True)
    # A typing mistake is explained under the preview, live.
    page.locator("#id_html_body").press("End")
    page.locator("#id_html_body").type(" {{ offer ")
    expect(page.locator("#template-live-status")).to_contain_text("opened but never closed")
    page.fill("#id_html_body", SOURCE)
    expect(page.locator("#template-live-status")).to_contain_text("sample data")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    template = Template.objects.get(name="Spring news")
    assert template.compiled_html.startswith("<!DOCTYPE html>")

    # Sent by a campaign, through a real worker, to the fake ESP.
    ada = Recipient.objects.create(
        email="ada@example.com", name="Ada Lovelace", attributes={"city": "London"}
    )
    audience = ContactListFactory(name="Pioneers")
    ListMembership.objects.create(contact_list=audience, recipient=ada)
    campaign = CampaignFactory(
        name="Spring sale",
        template=template,
        context={"offer": "20% off"},
        sender=SenderIdentity.objects.create(name="Shop", email="news@shop.example"),
    )
    campaign.contact_lists.set([audience])
    run = wait_closed(campaign_launch_now(campaign=campaign).pk)
    assert run.totals["sent"] == 1
    delivery = Delivery.objects.get(run_id=run.pk)

    # The ESP reports back: delivered, opened, clicked.
    ids = {
        "message_id": delivery.esp_message_id,
        "email": "ada@example.com",
        "delivery_uuid": str(delivery.uuid),
    }

    def at(minutes: float) -> str:
        return (delivery.sent_at + timedelta(minutes=minutes)).astimezone(UTC).isoformat()

    with requests.Session() as esp:
        esp.headers["Authorization"] = basic_auth()
        for body in (
            postmark_delivery(**ids, at=at(1)),
            postmark_open(**ids, at=at(4)),
            postmark_click(**ids, at=at(6)),
        ):
            assert esp.post(f"{live_server.url}{POSTMARK_URL}", json=body, timeout=10).ok

    # The delivery's page: what Ada got, and what happened to it.
    page.goto(f"{admin}notifier/delivery/")
    page.get_by_role("link", name=str(delivery.pk), exact=True).click()
    expect(page.locator("#content h1")).to_have_text("Spring news for Ada \u2192 ada@example.com")
    received = page.frame_locator("iframe[title='Message as received']")
    expect(received.locator("h1")).to_have_text("Spring is here, Ada")
    expect(received.locator("p.offer")).to_have_attribute(
        "style", re.compile("background-color: #fff7ed")
    )
    expect(received.get_by_text("See you in our London shop.")).to_be_visible()
    timeline = page.locator("#delivery-timeline li strong")
    expect(timeline).to_have_text(
        ["Queued", "Handed to the ESP", "Delivered", "Opened", "Clicked a link"]
    )
    expect(page.locator("#delivery-received")).to_contain_text("List-Unsubscribe")
    expect(page.locator("input[name=_save]")).to_have_count(0)
    expect(page.locator("#content")).not_to_contain_text("Claim token")
    page.screenshot(path=screenshot_path("email-2-delivery"), full_page=True)

    # The development inbox, as a developer sees it.
    page.goto(f"{fake_esp_server.url}_fake/inbox")
    expect(page.locator("nav .subject").first).to_have_text("Spring news for Ada")
    inbox = page.frame_locator("iframe[title='HTML part']")
    expect(inbox.locator("h1")).to_have_text("Spring is here, Ada")
    expect(page.locator("table.headers")).to_contain_text("List-Unsubscribe")
    page.screenshot(path=screenshot_path("email-3-dev-inbox"), full_page=True)

    assert not blocked, blocked
    for name in ("email-1-template-editor", "email-2-delivery", "email-3-dev-inbox"):
        assert screenshot_path(name).stat().st_size > 5_000
