"""End to end through a real Celery worker, Redis and PostgreSQL (acceptance 1-3)."""

import json
import time
from datetime import timedelta

import pytest
from django.db.models import F
from django_celery_beat.models import PeriodicTask

from campaigns.models import Campaign, CampaignRun, ListMembership
from campaigns.selectors import run_status_counts
from campaigns.services.campaigns import campaign_cancel, campaign_launch_now, campaign_schedule
from campaigns.services.runs import campaign_run_pause, campaign_run_resume
from notifier.models import Delivery, Recipient
from notifier.services.suppressions import suppression_add
from tests.campaigns.factories import (
    CampaignFactory,
    ContactListFactory,
    SegmentConditionFactory,
)
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def bulk_people(prefix: str, count: int, *, attributes: dict | None = None) -> list[int]:
    """Create recipients in one bulk insert; returns their ids."""
    people = Recipient.objects.bulk_create(
        Recipient(
            email=f"{prefix}{n}@example.com",
            name=f"Person{n} {prefix}",
            attributes=attributes or {},
        )
        for n in range(1, count + 1)
    )
    return [person.pk for person in people]


def members(contact_list, ids) -> None:
    ListMembership.objects.bulk_create(
        ListMembership(contact_list=contact_list, recipient_id=pk) for pk in ids
    )


def wait_closed(run_id: int, timeout: float = 120) -> CampaignRun:
    def closed():
        run = CampaignRun.objects.get(pk=run_id)
        return run if run.finished_at is not None else None

    return wait_for(closed, timeout=timeout, interval=0.3)


def test_campaign_to_2000_recipients(celery_worker_process, fake_esp):
    """Acceptance 1: two overlapping lists plus a segment, some suppressed."""
    a = bulk_people("a", 1000)
    b = bulk_people("b", 800)
    vip = bulk_people("v", 300, attributes={"tier": "VIP"})
    first, second = ContactListFactory(), ContactListFactory()
    members(first, a + b[:400])
    members(second, b + vip[:100])  # b[:400] and vip[:100] are in two places
    segment = SegmentConditionFactory(attribute="tier", operator="equals", value="vip").segment
    campaign = CampaignFactory()
    campaign.contact_lists.set([first, second])
    campaign.segments.set([segment])
    # 2,100 in the audience; 5 suppressed, 3 unsubscribed.
    suppressed = ["a1@example.com", "a2@example.com", "b5@example.com", "v7@example.com"]
    for email in suppressed:
        suppression_add(email=email, reason="hard_bounce")
    suppression_add(email="b600@example.com", reason="complaint")
    Recipient.objects.filter(
        email__in=["a10@example.com", "b10@example.com", "v10@example.com"]
    ).update(status="unsubscribed")
    excluded = {
        *suppressed,
        "b600@example.com",
        "a10@example.com",
        "b10@example.com",
        "v10@example.com",
    }

    run = campaign_launch_now(campaign=campaign)
    run = wait_closed(run.pk)

    eligible = set(Recipient.objects.filter(pk__in=a + b + vip).values_list("email", flat=True))
    eligible -= excluded
    assert len(eligible) == 2092
    received = [m["To"] for m in fake_esp.messages]
    addresses = [to.split("<")[-1].rstrip(">") for to in received]
    assert len(addresses) == len(set(addresses)) == 2092  # one copy each
    assert set(addresses) == eligible  # none to suppressed ones
    # Personalised: each message names its recipient.
    sample = next(m for m in fake_esp.messages if "a500@example.com" in m["To"])
    assert sample["Subject"] == "News for Person500"
    assert "Hello Person500 a (a500@example.com), 20% off" in sample["HtmlBody"]
    assert sample["From"] == "Shop <news@shop.example>"
    # The chord callback closed the run, with totals matching the rows.
    assert run.status == "done"
    counts = run_status_counts(run_id=run.pk)
    assert counts == {"sent": 2092, "suppressed": 8}
    assert run.totals["sent"] == 2092 and run.totals["suppressed"] == 8
    assert run.totals["failed"] == 0 and run.totals["unknown"] == 0
    assert run.totals["total"] == Delivery.objects.filter(run_id=run.pk).count() == 2100
    campaign.refresh_from_db()
    assert campaign.status == "done"


def _trigger_beat_entry(task: PeriodicTask) -> None:
    """Send the entry's task the way beat does (its own scheduler code)."""
    from django_celery_beat.schedulers import DatabaseScheduler

    from config.celery import app

    scheduler = DatabaseScheduler(app=app, lazy=True)
    entry = scheduler.Entry(PeriodicTask.objects.get(pk=task.pk), app=app)
    with app.producer_or_acquire() as producer:
        scheduler.apply_async(entry, producer=producer, advance=False)


def test_recurring_campaign_runs_on_each_beat_tick(celery_worker_process, fake_esp):
    """Acceptance 2 (the worker part): two ticks, two runs, one copy per run each."""
    people = bulk_people("h", 30)
    contact_list = ContactListFactory()
    members(contact_list, people)
    campaign = CampaignFactory(schedule="crontab", cron_minute="0", cron_hour="*")
    campaign.contact_lists.set([contact_list])
    campaign_schedule(campaign=campaign)
    task = PeriodicTask.objects.get(name=f"campaign:{campaign.pk}")
    assert task.task == "campaigns.launch_campaign" and json.loads(task.args) == [campaign.pk]
    assert str(task.crontab.timezone) == "UTC" and task.crontab.minute == "0"

    _trigger_beat_entry(task)
    first = wait_for(lambda: campaign.runs.first(), timeout=30)
    wait_closed(first.pk)
    # The next tick is an hour later: move the first run back in time.
    CampaignRun.objects.filter(pk=first.pk).update(created_at=F("created_at") - timedelta(hours=1))
    _trigger_beat_entry(task)
    second = wait_for(lambda: campaign.runs.exclude(pk=first.pk).first(), timeout=30)
    wait_closed(second.pk)

    assert campaign.runs.count() == 2
    for run in (first, second):
        assert run_status_counts(run_id=run.pk) == {"sent": 30}
    received = sorted(m["To"] for m in fake_esp.messages)
    assert len(received) == 60 and len(set(received)) == 30
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"
    assert PeriodicTask.objects.filter(name=f"campaign:{campaign.pk}").count() == 1


def test_the_same_tick_sent_by_two_beats_starts_one_run(celery_worker_process, fake_esp):
    """Two beat processes fire the same crontab tick: one run, one copy each."""
    people = bulk_people("t", 20)
    contact_list = ContactListFactory()
    members(contact_list, people)
    campaign = CampaignFactory(schedule="crontab", cron_minute="*", cron_hour="*")
    campaign.contact_lists.set([contact_list])
    campaign_schedule(campaign=campaign)
    task = PeriodicTask.objects.get(name=f"campaign:{campaign.pk}")

    _trigger_beat_entry(task)
    _trigger_beat_entry(task)
    run = wait_for(lambda: campaign.runs.first(), timeout=30)
    wait_closed(run.pk)
    time.sleep(1)  # the second tick's task has run by now too
    assert campaign.runs.count() == 1
    received = [m["To"] for m in fake_esp.messages]
    assert len(received) == len(set(received)) == 20


def test_pause_resume_and_cancel(celery_worker_process, fake_esp):
    """Acceptance 3: pause stops within seconds; resume finishes with no
    duplicates or losses; cancel leaves the rest cancelled."""
    people = bulk_people("p", 600)
    contact_list = ContactListFactory()
    members(contact_list, people)
    campaign = CampaignFactory()
    campaign.contact_lists.set([contact_list])
    fake_esp.faults["delay"] = 0.02  # about 50 messages a second per batch

    run = campaign_launch_now(campaign=campaign)
    wait_for(lambda: len(fake_esp.messages) >= 50, timeout=60)
    campaign_run_pause(run=CampaignRun.objects.get(pk=run.pk))
    paused_at = time.monotonic()

    def settled():
        # Nothing in flight and no new message for a second: the pause holds.
        before = len(fake_esp.messages)
        time.sleep(1.0)
        in_flight = Delivery.objects.filter(run_id=run.pk, status="sending").exists()
        return before == len(fake_esp.messages) and not in_flight

    wait_for(settled, timeout=15, interval=0)
    print(f"\npause took effect within {time.monotonic() - paused_at:.1f}s")
    sent_while_paused = len(fake_esp.messages)
    assert 50 <= sent_while_paused < 600
    counts = run_status_counts(run_id=run.pk)
    assert counts["pending"] == 600 - sent_while_paused
    assert not Delivery.objects.filter(
        run_id=run.pk, status="pending", next_attempt_at__isnull=False
    ).exists()
    time.sleep(2)
    assert len(fake_esp.messages) == sent_while_paused  # held: nothing redispatches them
    assert Campaign.objects.get(pk=campaign.pk).status == "paused"

    campaign_run_resume(run=CampaignRun.objects.get(pk=run.pk))
    run = wait_closed(run.pk)
    addresses = [m["To"] for m in fake_esp.messages]
    assert len(addresses) == len(set(addresses)) == 600  # no duplicates, no losses
    assert run.status == "done" and run.totals["sent"] == 600

    # Cancel a second run part-way.
    fake_esp.messages.clear()
    second = campaign_launch_now(campaign=Campaign.objects.get(pk=campaign.pk))
    wait_for(lambda: len(fake_esp.messages) >= 50, timeout=60)
    campaign_cancel(campaign=Campaign.objects.get(pk=campaign.pk))
    second = wait_closed(second.pk, timeout=30)
    counts = run_status_counts(run_id=second.pk)
    assert second.status == "cancelled"
    assert set(counts) == {"sent", "cancelled"}
    assert counts["sent"] == len(fake_esp.messages) < 600
    assert counts["sent"] + counts["cancelled"] == 600
    time.sleep(1.5)
    assert len(fake_esp.messages) == counts["sent"]  # nothing more went out
    assert Campaign.objects.get(pk=campaign.pk).status == "cancelled"
