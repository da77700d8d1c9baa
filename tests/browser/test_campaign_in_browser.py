"""A Marketing-group member runs a campaign in a real browser, end to end.

Live server (this process) + a real Celery worker + PostgreSQL + Redis + the
fake ESP; the ESP's tracking events come back as real Postmark webhooks.
"""

import re
from datetime import UTC, timedelta

import pytest
import requests
from django.contrib.auth.models import User

from campaigns.models import Campaign, CampaignRun
from notifier.models import Delivery, SenderIdentity
from tests.browser.conftest import screenshot_path
from tests.conftest import wait_for
from tests.notifier.esp_payloads import (
    POSTMARK_URL,
    basic_auth,
    postmark_bounce,
    postmark_click,
    postmark_delivery,
    postmark_open,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.browser]

PASSWORD = "a-long-browser-test-password"
PEOPLE = [
    ("ada@example.com", "Ada Lovelace", "London"),
    ("grace@example.com", "Grace Hopper", "Arlington"),
    ("alan@example.com", "Alan Turing", "Manchester"),
    ("katherine@example.com", "Katherine Johnson", "Hampton"),
    ("edsger@example.com", "Edsger Dijkstra", "Austin"),
    ("barbara@example.com", "Barbara Liskov", "Boston"),
    ("donald@example.com", "Donald Knuth", "Stanford"),
    ("frances@example.com", "Frances Allen", "Peru NY"),
    ("john@example.com", "John Backus", "Ashland"),
    ("radia@example.com", "Radia Perlman", "Portsmouth"),
    ("tony@example.com", "Tony Hoare", "Cambridge"),
    ("margaret@example.com", "Margaret Hamilton", "Paoli"),
]
CSV = "email,name,city\n" + "".join(f'{e},{n},"{c}"\n' for e, n, c in PEOPLE)
CSV += "not-an-address,Nobody,Nowhere\n"


def postmark_events(run: CampaignRun) -> list[dict]:
    """What the ESP reports over the next minutes: 11 delivered, 1 hard bounce,
    7 opened (one twice), 3 clicked."""
    deliveries = list(
        Delivery.objects.filter(run_id=run.pk).select_related("recipient").order_by("id")
    )
    events = []
    for i, delivery in enumerate(deliveries):
        ids = {
            "message_id": delivery.esp_message_id,
            "email": delivery.recipient.email,
            "delivery_uuid": str(delivery.uuid),
        }

        def at(minutes: float, sent_at=delivery.sent_at) -> str:
            return (sent_at + timedelta(minutes=minutes)).astimezone(UTC).isoformat()

        if i == len(deliveries) - 1:
            events.append(postmark_bounce(**ids, at=at(1)))
            continue
        events.append(postmark_delivery(**ids, at=at(1 + i % 3)))
        if i < 7:
            events.append(postmark_open(**ids, at=at(3 + 2 * i)))
        if i == 0:
            events.append(postmark_open(**ids, at=at(20)))
        if i < 3:
            events.append(postmark_click(**ids, at=at(6 + 4 * i)))
    return events


def test_marketer_runs_a_campaign_and_reads_its_results(
    page, live_server, celery_worker_process, fake_esp, marketing_group
):
    from playwright.sync_api import expect

    # Anything the Content-Security-Policy blocks is reported on the console.
    blocked = []
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    User.objects.create_user("mia", password=PASSWORD, is_staff=True).groups.add(marketing_group)
    SenderIdentity.objects.create(name="Shop", email="news@shop.example")
    admin = f"{live_server.url}/admin/"
    fake_esp.faults["delay"] = 0.2  # slow enough for the progress bar to move

    # Log in through the login form.
    page.goto(admin)
    page.fill("#id_username", "mia")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("mia")

    # A contact list, filled from a CSV file.
    page.goto(f"{admin}campaigns/contactlist/add/")
    page.fill("#id_name", "Pioneers")
    page.click("input[name=_save]")
    page.get_by_role("row", name=re.compile("Pioneers")).get_by_role(
        "link", name="Import CSV"
    ).click()
    page.set_input_files(
        "#id_file", files=[{"name": "pioneers.csv", "mimeType": "text/csv", "buffer": CSV.encode()}]
    )
    page.click("input[type=submit][value=Import]")
    report = page.locator("#import-report")
    expect(report).to_contain_text("13 rows read: 12 imported (12 new contacts), 1 with errors")
    expect(report).to_contain_text("The list now has 12 members")
    expect(report.locator("tbody tr")).to_have_count(1)
    page.screenshot(path=screenshot_path("1-import"), full_page=True)

    # A template.
    page.goto(f"{admin}notifier/template/add/")
    page.fill("#id_name", "Spring news")
    page.fill("#id_subject", "Spring news for {{ recipient.first_name }}")
    page.fill(
        "#id_html_body",
        "<h1>Hello {{ recipient.first_name }}</h1>"
        "<p>{{ offer }} in our {{ recipient.attributes.city }} shop.</p>"
        '<p><a href="https://shop.example/spring">See the collection</a></p>',
    )
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    # A campaign to the list.
    page.goto(f"{admin}campaigns/campaign/add/")
    page.fill("#id_name", "Spring sale")
    page.select_option("#id_template", label="Spring news")
    page.fill("#id_context", '{"offer": "20% off"}')
    page.select_option("#id_sender", label="Shop <news@shop.example>")
    page.get_by_label("Pioneers").check()
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    campaign = Campaign.objects.get(name="Spring sale")
    assert list(campaign.contact_lists.values_list("name", flat=True)) == ["Pioneers"]
    campaign_url = page.url

    # Preview: sample data first, then a real recipient of the audience.
    page.get_by_role("link", name="Preview and test send").click()
    page.select_option("#preview-pick", "grace@example.com")
    page.get_by_role("button", name="Show").first.click()
    expect(page.locator("#content")).to_contain_text("Spring news for Grace")
    html = page.frame_locator("iframe[title='HTML preview']")
    expect(html.locator("h1")).to_have_text("Hello Grace")
    expect(html.locator("p").first).to_have_text("20% off in our Arlington shop.")
    page.screenshot(path=screenshot_path("2-preview"), full_page=True)

    # A test send from the preview, with Grace's data, straight to the ESP.
    page.fill("input[name=to]", "mia@shop.example")
    page.get_by_role("button", name="Send test").click()
    expect(page.locator(".messagelist")).to_contain_text("Test message sent to mia@shop.example")
    test_message = wait_for(
        lambda: next((m for m in fake_esp.messages if "mia@shop.example" in m["To"]), None)
    )
    assert test_message["Subject"] == "[Test] Spring news for Grace"
    fake_esp.messages.clear()

    # Launch, and watch the progress bar (refreshed from the server) reach done.
    page.goto(campaign_url)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Launch now").click()
    expect(page.locator(".messagelist")).to_contain_text(re.compile(r"Run \d+ is starting"))
    expect(page.locator("#run-status")).to_have_text(re.compile("done", re.I), timeout=60_000)
    run = CampaignRun.objects.get(campaign=campaign)
    assert run.status == "done" and run.totals["sent"] == 12
    addresses = [m["To"].split("<")[-1].rstrip(">") for m in fake_esp.messages]
    assert sorted(addresses) == sorted(email for email, _, _ in PEOPLE)  # one copy each
    page.goto(campaign_url)  # a settled page
    expect(page.locator("#campaign-status")).to_have_text(re.compile("done", re.I))
    expect(page.locator("#run-progress .st-sent")).to_have_attribute("style", "width: 100%;")
    expect(page.locator("#run-legend")).to_contain_text("Sent: 12")
    expect(page.locator("#run-flight")).to_have_text("0")
    page.locator("#campaign-panel").screenshot(path=screenshot_path("3-campaign-progress-done"))
    page.screenshot(path=screenshot_path("3-campaign-page"), full_page=True)

    # The ESP reports back through its authenticated webhook.
    with requests.Session() as esp:
        esp.headers["Authorization"] = basic_auth()
        for body in postmark_events(run):
            response = esp.post(f"{live_server.url}{POSTMARK_URL}", json=body, timeout=10)
            assert response.status_code == 200, response.text

    # The results: a chart and its totals, linked from the campaign page.
    page.goto(campaign_url)
    page.locator("#run-results-link").click()
    expect(page.locator("#results-chart")).to_be_visible()
    cards = page.locator("#results-legend .results-card")
    expected = {
        "sent": "12",
        "delivered": "11",
        "opened": "7",
        "clicked": "3",
        "bounced": "1",
    }
    for key, figure in expected.items():
        expect(cards.and_(page.locator(f"[data-series={key}]")).locator(".figure")).to_have_text(
            figure
        )
    expect(page.locator("#results-chart path.series")).to_have_count(5)
    expect(page.locator("#run-results")).to_contain_text("8 opens and 3 clicks in all")
    assert not blocked, blocked
    page.locator("#run-results").screenshot(path=screenshot_path("4-results-chart"))
    page.screenshot(path=screenshot_path("5-results-page"), full_page=True)
    for name in ("1-import", "2-preview", "3-campaign-progress-done", "4-results-chart"):
        assert screenshot_path(name).stat().st_size > 5_000

    # The admin home: the run with its rates, and a failed launch needing attention.
    broken = CampaignRun.objects.create(
        campaign=campaign,
        status="queued",
        problem="launch_failed",
        problem_detail="DatabaseError: the audience query failed",
        problem_since=run.started_at,
        problem_count=2,
    )
    page.goto(admin)
    dashboard = page.locator("#dashboard")
    latest = page.locator("#dash-recent tbody tr")
    expect(dashboard).to_contain_text("Latest runs")
    expect(latest.first).to_contain_text("12 of 12")
    expect(latest.first).to_contain_text("91.7 %")  # delivered: 11 of 12
    expect(latest.first).to_contain_text("58.3 %")  # opened: 7 of 12
    expect(page.locator("#dash-problems")).to_contain_text(
        "Failed to launch: DatabaseError: the audience query failed"
    )
    expect(dashboard).to_contain_text("12messages sent in 24 h")
    page.screenshot(path=screenshot_path("6-dashboard"), full_page=True)
    broken.delete()
