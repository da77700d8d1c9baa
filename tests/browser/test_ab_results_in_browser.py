"""A run's A/B test on its results page, in a real browser: both variants
with their sample sizes, the confidence in words, the decision; then the
"choose the winner now" page."""

from datetime import timedelta

import pytest
from django.test import Client

from campaigns.models import RunABTest
from campaigns.tasks import send_ab_winner
from notifier.models import Delivery
from tests.browser.conftest import screenshot_path
from tests.browser.test_campaign_page_in_browser import _log_in
from tests.campaigns.test_ab_tests import ab_campaign, launched
from tests.notifier.esp_payloads import post_webhook, postmark_click, postmark_open

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_the_results_page_shows_both_variants_and_the_confidence(
    page, live_server, marketing_group, monkeypatch
):
    from playwright.sync_api import expect

    monkeypatch.setattr("campaigns.services.runs.run_fan_out", lambda *, run_id: 0)
    queued = []
    monkeypatch.setattr(send_ab_winner, "apply_async", lambda **task: queued.append(task))
    campaign = ab_campaign(
        people=2000,
        subjects=("Our spring news", "Spring: 20% off for you, {{ recipient.first_name }}"),
    )
    campaign.name = "Spring news"
    campaign.save()
    run = launched(campaign)
    rows = Delivery.objects.filter(run_id=run.pk)
    rows.update(status="sent", sent_at=run.started_at)
    # The ESP's tracking webhooks report opens and clicks: B's more.
    client, sizes = Client(), {}
    for group, every in (("A", 7), ("B", 3)):
        sent = list(rows.filter(context__ab_group=group).values_list("uuid", "recipient__email"))
        sizes[group] = len(sent)
        for n, (uuid, email) in enumerate(sent):
            at = run.started_at + timedelta(minutes=5 + n % 40)
            ids = {
                "message_id": f"esp-{uuid}",
                "email": email,
                "delivery_uuid": str(uuid),
                "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if n % every == 0:
                assert post_webhook(client, postmark_open(**ids)).status_code == 200
            if n % (every * 4) == 0:
                assert post_webhook(client, postmark_click(**ids)).status_code == 200

    admin = _log_in(page, live_server, marketing_group)
    page.goto(f"{admin}campaigns/campaignrun/{run.pk}/results/")
    table = page.locator("#ab-variants")
    for group in "AB":
        expect(table.locator(f'tr[data-variant="{group}"]')).to_contain_text(str(sizes[group]))
    statements = page.locator("#ab-statements")
    expect(statements).to_contain_text("B's open rate is higher than A's with 99 % confidence.")
    expect(statements).to_contain_text("click rate")
    expect(page.locator("#ab-decision")).to_contain_text("testing")
    page.screenshot(path=screenshot_path("ab-results"), full_page=True)

    page.click("text=Choose the winner now…")
    expect(page.locator("#winner-form")).to_contain_text("This cannot be undone")
    page.check('input[name="winner"][value="B"]')
    page.click("text=Send the chosen variant to the rest")
    # The choice is recorded; a worker writes the rest's rows (here the
    # test runs its task once it has seen the page say so).
    expect(page.locator(".messagelist")).to_contain_text("Variant B goes to the rest")
    expect(page.locator("#ab-decision")).to_contain_text(
        "variant B was chosen by mia; its messages for the rest of the audience are being written"
    )
    page.screenshot(path=screenshot_path("ab-results-choosing"), full_page=True)
    results_url = page.url
    page.goto(f"{admin}campaigns/campaignrun/{run.pk}/winner/")
    expect(page.locator("#winner-decided")).to_contain_text(
        "Variant B was chosen by mia; its messages for the rest of the audience are being written"
    )
    expect(page.locator("#winner-form")).to_have_count(0)
    page.screenshot(path=screenshot_path("ab-choose-winner-pending"), full_page=True)
    page.goto(results_url)
    assert queued == [{"args": [run.pk], "queue": "maintenance"}]
    assert rows.count() < 2000
    send_ab_winner(run.pk)
    # The page reloads itself while the rows are written.
    expect(page.locator('#ab-variants tr[data-variant="B"]')).to_contain_text(
        "winner", timeout=10_000
    )
    expect(page.locator("#ab-decision")).to_contain_text("variant B won on")
    page.screenshot(path=screenshot_path("ab-results-decided"), full_page=True)
    assert RunABTest.objects.get(run=run).winner == "B"
    assert rows.count() == 2000

    page.goto(f"{admin}campaigns/campaign/{campaign.pk}/change/")
    expect(page.locator("#ab-summary")).to_contain_text(
        "20 % of the audience get one of 2 variants (10 % each)"
    )
    expect(page.locator("#ab-summary")).to_contain_text("variant B won on")
    page.locator("#ab-summary").scroll_into_view_if_needed()
    page.screenshot(path=screenshot_path("ab-campaign-page"), full_page=True)
