"""The campaign page as a marketer uses it, in a real browser at 1366 px:
the guided form, the live run panel, the faithful preview and a test send.

Live server (this process) + PostgreSQL + Redis + the fake ESP; the run
panel test adds the real Celery worker.
"""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from campaigns.models import Campaign, CampaignRun
from notifier.models import Delivery, Recipient, SenderIdentity, Suppression, Template
from tests.browser.conftest import screenshot_path
from tests.campaigns.factories import ContactListFactory, add_members
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

PASSWORD = "a-long-browser-test-password"
WIDTH = {"width": 1366, "height": 900}


def _log_in(page, live_server, marketing_group) -> str:
    from playwright.sync_api import expect

    User.objects.create_user("mia", password=PASSWORD, is_staff=True).groups.add(marketing_group)
    page.set_viewport_size(WIDTH)
    admin = f"{live_server.url}/admin/"
    page.goto(admin)
    page.fill("#id_username", "mia")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("mia")
    return admin


def _audience(size: int, suppressed: int = 0):
    people = [
        Recipient.objects.create(email=f"p{i}@example.com", name=f"Person {i}") for i in range(size)
    ]
    for person in people[:suppressed]:
        Suppression.objects.create(email=person.email, reason=Suppression.Reason.UNSUBSCRIBED)
    contact_list = ContactListFactory(name="Customers")
    add_members(contact_list, people)
    return contact_list


def _template() -> Template:
    return Template.objects.create(
        name="Spring news",
        kind="campaign",
        subject="{{ offer }} for {{ recipient.first_name }}",
        html_body="<h1>Hello {{ recipient.first_name }}</h1><p>{{ offer }} this week.</p>"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · '
        '<a href="{{ preferences_url }}">Your preferences</a></p>',
    )


def _blocked_by_csp(page) -> list[str]:
    blocked = []
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    return blocked


def test_the_guided_form_shows_audience_size_and_next_sends(
    page, live_server, fake_esp, marketing_group
):
    from playwright.sync_api import expect

    blocked = _blocked_by_csp(page)
    admin = _log_in(page, live_server, marketing_group)
    _audience(5, suppressed=1)
    _template()

    page.goto(f"{admin}campaigns/campaign/add/")
    # Without a schedule chosen, neither the time nor the crontab is shown.
    expect(page.locator("#id_send_at_0")).to_be_hidden()
    expect(page.locator("#id_cron_hour")).to_be_hidden()
    page.fill("#id_name", "Weekday news")
    page.select_option("#id_template", label="Spring news")
    # The template data as name and value (the JSON box follows).
    page.get_by_role("button", name="Add a value").click()
    page.get_by_label("Data name").fill("offer")
    page.get_by_label("Data value").fill("20% off")
    expect(page.locator("#id_context")).to_have_value('{"offer":"20% off"}')
    page.get_by_label("Customers").check()
    expect(page.locator("#audience-size")).to_have_text(
        "4 will receive it: 5 in the audience, 1 skipped (suppressed or bounced), "
        "of whom 1 unsubscribed."
    )

    # A one-off time in the past is refused on save, with the form kept.
    page.get_by_label("Once, at a date and time").check()
    expect(page.locator("#id_send_at_0")).to_be_visible()
    expect(page.locator("#id_cron_hour")).to_be_hidden()
    page.select_option("#id_schedule_time_zone", "Europe/Paris")
    yesterday = timezone.localtime(timezone.now() - timedelta(days=1))
    page.fill("#id_send_at_0", yesterday.strftime("%Y-%m-%d"))
    page.fill("#id_send_at_1", "09:00:00")
    page.click("input[name=_continue]")
    expect(page.locator(".field-send_at .errorlist")).to_contain_text("This time has passed")
    assert not Campaign.objects.exists()

    # Recurring on weekdays at nine, Paris time: saving arms it.
    page.get_by_label("Recurring").check()
    expect(page.locator("#id_send_at_0")).to_be_hidden()
    expect(page.locator("#id_cron_hour")).to_be_visible()
    page.fill("#id_cron_minute", "0")
    page.fill("#id_cron_hour", "9")
    page.fill("#id_cron_day_of_week", "1-5")
    # Read back in words, with its next times, before it is saved.
    expect(page.locator("#next-sends")).to_contain_text(
        "Not saved yet: At 09:00, Monday through Friday."
    )
    expect(page.locator("#next-sends li")).to_have_count(3)
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    campaign = Campaign.objects.get(name="Weekday news")
    assert campaign.status == "scheduled" and campaign.periodic_task_id is not None
    assert campaign.context == {"offer": "20% off"}
    expect(page.get_by_label("Data value")).to_have_value("20% off")
    expect(page.locator("#campaign-status")).to_have_text("Scheduled")
    next_sends = page.locator("#next-sends")
    expect(next_sends).to_contain_text(
        "Armed: it sends on its own. At 09:00, Monday through Friday."
    )
    expect(next_sends.locator("li")).to_have_count(3)
    expect(next_sends.locator("li").first).to_contain_text("09:00 (Europe/Paris)")
    expect(next_sends.locator("li .yours").first).to_contain_text("your time")
    expect(page.locator("#audience-size")).to_contain_text("4 will receive it")
    expect(page.locator("form[data-action=launch]")).to_be_visible()
    expect(page.locator("form[data-action=unschedule]")).to_be_visible()
    expect(page.locator("form[data-action=pause]")).to_be_hidden()
    page.screenshot(path=screenshot_path("campaign-1-guided-form"), full_page=True)
    assert not blocked, blocked


def _box(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, selector
    return box


def test_the_run_panel_follows_the_run_without_reload(
    page, live_server, celery_worker_process, fake_esp, marketing_group
):
    from playwright.sync_api import expect

    blocked = _blocked_by_csp(page)
    admin = _log_in(page, live_server, marketing_group)
    contact_list = _audience(60)
    campaign = Campaign.objects.create(
        name="Big sale",
        template=_template(),
        context={"offer": "30% off"},
        sender=SenderIdentity.objects.create(name="Shop", email="news@shop.example"),
    )
    campaign.contact_lists.set([contact_list])
    fake_esp.faults["delay"] = 1.0  # per request of five: slow enough to press the buttons
    page.goto(f"{admin}campaigns/campaign/{campaign.pk}/change/")
    expect(page.locator("form[data-action=pause]")).to_be_hidden()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Launch now").click()
    expect(page.locator(".messagelist")).to_contain_text(re.compile(r"Run \d+ is starting"))
    # From here on the page is never reloaded: a marker on the window survives.
    page.evaluate("window.stillThisPage = true")
    pause = page.locator("form[data-action=pause]")
    expect(pause).to_be_visible()  # appeared when the run started, no reload
    expect(page.locator("form[data-action=launch]")).to_be_hidden()
    expect(page.locator("#run-status")).to_have_text("Running")
    assert page.evaluate("window.stillThisPage") is True

    # A clean layout at 1366 px: History above the panel, runs apart from Save.
    history = _box(page, ".object-tools")
    panel = _box(page, "#campaign-panel")
    assert history["y"] + history["height"] <= panel["y"]
    runs = _box(page, ".runs-table")
    assert runs["y"] + runs["height"] < _box(page, ".submit-row")["y"]
    scroller = page.locator(".table-scroll").first
    assert scroller.evaluate("el => el.getBoundingClientRect().right") <= WIDTH["width"]
    page.locator("#campaign-panel").screenshot(path=screenshot_path("campaign-2-live-panel"))
    page.screenshot(path=screenshot_path("campaign-2-live-page"), full_page=False)

    # Pause, then resume: each says how many messages it moved.
    pause.get_by_role("button").click()
    expect(page.locator(".messagelist")).to_contain_text(
        re.compile(r"Paused: \d+ messages? held until you resume\.")
    )
    expect(page.locator("form[data-action=resume]")).to_be_visible()
    expect(page.locator("form[data-action=pause]")).to_be_hidden()
    # The batches on the wire finish or hold their rows; then nothing moves.
    run = CampaignRun.objects.get(campaign=campaign)
    wait_for(
        lambda: not Delivery.objects.filter(run_id=run.pk, status="sending").exists(), timeout=30
    )
    page.locator("form[data-action=resume] button").click()
    expect(page.locator(".messagelist")).to_contain_text(
        re.compile(r"Resumed: \d+ messages? to go\.")
    )
    page.evaluate("window.stillThisPage = true")

    # The run ends: Launch now comes back and Pause and Cancel go, still no reload.
    expect(page.locator("#run-status")).to_have_text("Done", timeout=90_000)
    expect(page.locator("form[data-action=launch]")).to_be_visible()
    expect(page.locator("form[data-action=pause]")).to_be_hidden()
    expect(page.locator("form[data-action=cancel]")).to_be_hidden()
    expect(page.locator("#run-legend")).to_contain_text("Sent: 60")
    assert page.evaluate("window.stillThisPage") is True

    # A second run, cancelled: the message's figures add up to the run.
    fake_esp.faults["delay"] = 1.5
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Launch now").click()
    expect(page.locator("form[data-action=pause]")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("form[data-action=cancel] button").click()
    message = page.locator(".messagelist li").first
    expect(message).to_contain_text("Cancelled run")
    text = message.inner_text()
    run = CampaignRun.objects.filter(campaign=campaign).order_by("-id").first()
    wait_for(lambda: CampaignRun.objects.get(pk=run.pk).finished_at is not None, timeout=60)
    totals = CampaignRun.objects.get(pk=run.pk).totals
    not_sent = int(re.search(r"(\d+) messages? not sent", text).group(1))
    handed = re.search(r"(\d+) messages? were being handed over", text)
    handed = int(handed.group(1)) if handed else 0
    already = re.search(r"(\d+) already sent", text)
    already = int(already.group(1)) if already else 0
    assert not_sent + handed + already == totals["total"] == 60
    assert not_sent <= totals["cancelled"] <= not_sent + handed
    expect(page.locator("form[data-action=launch]")).to_be_visible()
    assert not blocked, blocked


def test_the_preview_is_faithful_and_a_test_send_adds_no_contact(
    page, live_server, fake_esp, marketing_group
):
    from playwright.sync_api import expect

    blocked = _blocked_by_csp(page)
    admin = _log_in(page, live_server, marketing_group)
    contact_list = _audience(3)
    Recipient.objects.filter(email="p1@example.com").update(name="Grace Hopper")
    campaign = Campaign.objects.create(
        name="Spring sale",
        template=_template(),
        context={"offer": "20% off"},
        sender=SenderIdentity.objects.create(name="Shop", email="news@shop.example"),
    )
    campaign.contact_lists.set([contact_list])
    page.goto(f"{admin}campaigns/campaign/{campaign.pk}/change/")
    page.get_by_role("link", name="Preview and test send").click()

    # Sample data first: its links lead nowhere, and the page says so.
    expect(page.locator("#preview-for")).to_contain_text("sample data")
    page.select_option("#preview-pick", "p1@example.com")
    page.get_by_role("button", name="Show").first.click()
    expect(page.locator("#preview-for")).to_have_text("Grace Hopper <p1@example.com>")
    headers = page.locator("#preview-headers")
    expect(headers).to_contain_text("Shop <news@shop.example>")
    expect(headers).to_contain_text("Grace Hopper <p1@example.com>")
    expect(headers).to_contain_text("20% off for Grace")
    expect(headers).to_contain_text(re.compile(r"List-Unsubscribe\s*<http.*/unsubscribe/"))
    expect(headers).to_contain_text("List-Unsubscribe=One-Click")
    links = page.locator("#preview-links li")
    expect(links).to_have_count(2)
    expect(links.first).to_contain_text("/unsubscribe/")
    expect(links.nth(1)).to_contain_text("/preferences/")
    html = page.frame_locator("iframe[title='HTML preview']")
    expect(html.locator("h1")).to_have_text("Hello Grace")
    unsubscribe_href = html.get_by_role("link", name="Unsubscribe").get_attribute("href")
    assert unsubscribe_href == links.first.inner_text()
    page.screenshot(path=screenshot_path("campaign-3-faithful-preview"), full_page=True)

    # The real link works: it opens the recipient's unsubscribe page.
    path = unsubscribe_href.split("/unsubscribe/", 1)[1]
    response = page.request.get(f"{live_server.url}/unsubscribe/{path}")
    assert response.status == 200 and "p1@example.com" in response.text()

    # A test send with Grace's data to a colleague: marked, with the campaign's headers.
    recipients = Recipient.objects.count()
    page.fill("#test-send input[name=to]", "colleague@shop.example")
    page.get_by_role("button", name="Send test").click()
    expect(page.locator(".messagelist")).to_contain_text(
        "Test message sent to colleague@shop.example."
    )
    (sent,) = fake_esp.messages
    assert sent["Subject"] == "[Test] 20% off for Grace"
    assert sent["Headers"]["X-Notifier-Test"] == "yes"
    assert sent["Headers"]["List-Unsubscribe"].startswith("<http")
    assert sent["Headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert Recipient.objects.count() == recipients
    assert not Recipient.objects.filter(email="colleague@shop.example").exists()
    assert not blocked, blocked


def test_a_local_time_run_lists_what_waits_for_which_zone(
    page, live_server, fake_esp, marketing_group
):
    """A campaign sent at 09:00 in each recipient's zone: the run panel says
    which zones wait for which moment, and how many recipients."""
    from playwright.sync_api import expect

    from campaigns.services.campaigns import campaign_run_create
    from campaigns.services.runs import campaign_run_launch

    admin = _log_in(page, live_server, marketing_group)
    zones = ["Asia/Tokyo"] * 3 + ["Asia/Seoul", "Europe/Berlin", "Europe/Berlin"]
    zones += ["America/New_York", "Not/AZone"]
    people = [
        Recipient.objects.create(email=f"z{i}@example.com", time_zone=zone)
        for i, zone in enumerate(zones)
    ]
    contact_list = ContactListFactory(name="Everywhere")
    add_members(contact_list, people)
    campaign = Campaign.objects.create(
        name="Good morning",
        template=_template(),
        context={"offer": "Breakfast"},
        sender=SenderIdentity.objects.create(name="Shop", email="news@shop.example"),
        local_send_time="09:00",
        local_time_zone_default="Asia/Kolkata",
    )
    campaign.contact_lists.set([contact_list])
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)

    page.goto(f"{admin}campaigns/campaign/{campaign.pk}/change/")
    waiting = page.locator("#run-waiting")
    expect(waiting).to_be_visible()
    items = page.locator("#run-waiting-list li")
    expect(items).to_have_count(4)
    expect(waiting).to_contain_text("4 recipients at 09:00 in Asia/Tokyo (3), Asia/Seoul (1): ")
    expect(waiting).to_contain_text("2 recipients at 09:00 in Europe/Berlin: ")
    expect(waiting).to_contain_text("in an unknown zone (sent as Asia/Kolkata)")
    expect(items.first).to_contain_text(re.compile(r"\(in \d+ (h|min)"))
    page.locator("#campaign-panel").screenshot(path=screenshot_path("campaign-local-time-waiting"))
