"""An A/B test end to end: a real Celery worker, Redis and PostgreSQL, the
fake ESP and its tracking webhooks, a driven clock for the wait."""

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from campaigns.models import CampaignVariant, RunABTest
from campaigns.selectors import run_ab_report, run_status_counts
from campaigns.services.abtests import run_ab_send_winner, run_ab_tests_decide_due
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import campaign_run_launch
from campaigns.tasks import decide_ab_tests
from notifier.models import Delivery
from tests.campaigns.factories import CampaignFactory, ContactListFactory
from tests.campaigns.test_e2e_worker import bulk_people, members, wait_closed
from tests.conftest import wait_for
from tests.notifier.esp_payloads import post_webhook, postmark_open

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

SUBJECTS = {"A": "Our spring news", "B": "Spring: 20% off for you, {{ recipient.first_name }}"}
# Opens the fake ESP reports, per variant: B is clearly better.
OPEN_EVERY = {"A": 8, "B": 3}


@pytest.fixture
def clock(monkeypatch):
    """This process's clock, driven; the worker keeps the real one."""
    real_now = timezone.now
    offset = {"by": timedelta(0)}
    monkeypatch.setattr(timezone, "now", lambda: real_now() + offset["by"])
    return lambda at: offset.update(by=at - real_now())


def _ab_campaign(prefix: str, people: int, *, metric: str):
    """A campaign to ``people`` new recipients testing SUBJECTS on 20 %."""
    audience = ContactListFactory()
    members(audience, bulk_people(prefix, people))
    campaign = CampaignFactory(ab_test_share=20, ab_winner_metric=metric, ab_wait_minutes=60)
    campaign.contact_lists.set([audience])
    for position, label in enumerate(SUBJECTS):
        CampaignVariant.objects.create(
            campaign=campaign, position=position, subject=SUBJECTS[label]
        )
    return campaign


def _address(to: str) -> str:
    return to.split("<")[-1].rstrip(">")


def test_b_wins_and_goes_to_the_rest_exactly_once(celery_worker_process, fake_esp, clock):
    """Acceptance: 2,000 recipients, two subjects, a 20 % test share; the
    fake ESP's opens make B the winner, which goes to the other 80 %; every
    recipient gets one message, however often the winner send is triggered."""
    campaign = _ab_campaign("ab", 2000, metric="opens")

    # The launch happened 65 minutes ago (the worker's rows are due at once).
    launched_at = timezone.now() - timedelta(minutes=65)
    clock(launched_at)
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    run = campaign_run_launch(run_id=run.pk)
    assert 360 <= run.recipients <= 440
    wait_for(lambda: run_status_counts(run_id=run.pk) == {"sent": run.recipients}, timeout=120)
    assert len(fake_esp.messages) == run.recipients

    # The ESP reports opens through its webhook: B's subject is opened more.
    group_of = dict(Delivery.objects.filter(run_id=run.pk).values_list("uuid", "context__ab_group"))
    client, seen = Client(), {"A": 0, "B": 0}
    for message in list(fake_esp.messages):
        uuid = message["Metadata"]["delivery"]
        group = group_of[next(u for u in group_of if str(u) == uuid)]
        seen[group] += 1
        if seen[group] % OPEN_EVERY[group] == 0:
            body = postmark_open(
                message_id=message["MessageID"], email=_address(message["To"]), delivery_uuid=uuid
            )
            assert post_webhook(client, body).status_code == 200

    # Half-way through the wait nothing is decided and the run stays open.
    clock(launched_at + timedelta(minutes=30))
    assert run_ab_tests_decide_due() == {"decided": 0, "failed": 0}
    time.sleep(1)  # the test share's chord callback has run by now
    run.refresh_from_db()
    assert run.status == "running" and run.finished_at is None
    report = run_ab_report(test=RunABTest.objects.get(run=run))
    assert report.statement("opens").startswith("B's open rate is higher than A's with 9")

    # The wait is over: beat's task runs twice on the worker (two processes
    # racing) and once here; one decision, one send to the rest.
    clock(launched_at + timedelta(minutes=61))
    decide_ab_tests.delay()
    decide_ab_tests.delay()
    here = run_ab_tests_decide_due()
    run = wait_closed(run.pk, timeout=180)
    test = RunABTest.objects.get(run=run)
    assert test.winner == "B" and here["failed"] == 0
    assert "B's open rate is higher than A's with 9" in test.decision
    # Triggered again after it all: nothing changes.
    assert run_ab_send_winner(run_id=run.pk) == 0
    decide_ab_tests.delay()
    time.sleep(2)

    rows = Delivery.objects.filter(run_id=run.pk)
    assert rows.count() == 2000 == run.recipients
    assert run_status_counts(run_id=run.pk) == {"sent": 2000}
    assert test.rest == rows.filter(context__ab_group="rest").count() == 2000 - sum(seen.values())
    addresses = [_address(m["To"]) for m in fake_esp.messages]
    assert len(addresses) == len(set(addresses)) == 2000  # one message each
    by_address = {_address(m["To"]): m["Subject"] for m in fake_esp.messages}
    for email, group in rows.values_list("recipient__email", "context__ab_group"):
        expected = "Our spring news" if group == "A" else "Spring: 20% off for you, "
        assert by_address[email].startswith(expected), (email, group, by_address[email])
    assert sum(s.startswith("Spring") for s in by_address.values()) == 2000 - seen["A"]


def test_staffs_choice_is_written_and_sent_by_the_worker_once(
    celery_worker_process, fake_esp, admin_client
):
    """The winner page records the choice and returns; the worker's
    ``send_ab_winner`` writes the rest's rows and they go out: one message
    per recipient, the rest with the chosen subject."""
    campaign = _ab_campaign("pick", 500, metric="manual")
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    run = campaign_run_launch(run_id=run.pk)
    wait_for(lambda: run_status_counts(run_id=run.pk) == {"sent": run.recipients}, timeout=120)

    response = admin_client.post(f"/admin/campaigns/campaignrun/{run.pk}/winner/", {"winner": "A"})
    assert response.status_code == 302
    run = wait_closed(run.pk, timeout=180)
    test = RunABTest.objects.get(run=run)
    assert (test.chosen, test.winner, test.decision) == ("A", "A", "A was chosen by admin.")
    assert run_status_counts(run_id=run.pk) == {"sent": 500}
    addresses = [_address(m["To"]) for m in fake_esp.messages]
    assert len(addresses) == len(set(addresses)) == 500
    rest = {_address(m["To"]) for m in fake_esp.messages if m["Subject"] == SUBJECTS["A"]}
    assert len(rest) == 500 - Delivery.objects.filter(run_id=run.pk, context__ab_group="B").count()
