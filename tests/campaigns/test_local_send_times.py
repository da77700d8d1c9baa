"""Recipient-local send times: a campaign sent "at 09:00 in each recipient's
time zone" materialises once, its rows due per zone (rolling through the
zones over the next 24 hours), driven by the clock; the fake ESP accepts each
message at its zone's 09:00, across a DST change."""

from datetime import UTC, datetime, time, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from campaigns.models import CampaignRun
from campaigns.selectors import run_batch_ranges, run_waiting_by_due_time
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import (
    campaign_run_launch,
    campaign_run_pause,
    campaign_run_resume,
    campaign_runs_maintain,
)
from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.services.local_times import known_zones
from notifier.services.retries import deliveries_dispatch_due
from tests.campaigns.factories import (
    CampaignFactory,
    ContactListFactory,
    RecipientFactory,
    add_members,
)

pytestmark = pytest.mark.django_db

LAUNCH = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)
# Where each recipient lives, and when their 09:00 comes after the launch (UTC).
ZONES = {
    # 08:00 at the launch: 09:00 is an hour later, the same day (summer time).
    "America/New_York": datetime(2024, 3, 30, 13, 0, tzinfo=UTC),
    # Summer time starts at 02:00 on 2024-03-31: 09:00 is 07:00 UTC, not 08:00.
    "Europe/Berlin": datetime(2024, 3, 31, 7, 0, tzinfo=UTC),
    "Asia/Tokyo": datetime(2024, 3, 31, 0, 0, tzinfo=UTC),
    "Australia/Sydney": datetime(2024, 3, 30, 22, 0, tzinfo=UTC),
    # Not a time zone: the campaign's default (India, UTC+05:30).
    "Moon/Base": datetime(2024, 3, 31, 3, 30, tzinfo=UTC),
}


@pytest.fixture
def clock(monkeypatch):
    now = {"at": LAUNCH}
    monkeypatch.setattr(timezone, "now", lambda: now["at"])

    def set_to(at):
        now["at"] = at

    return set_to


def _local_time_campaign():
    people = {zone: RecipientFactory(time_zone=zone) for zone in ZONES}
    audience = ContactListFactory()
    add_members(audience, list(people.values()))
    campaign = CampaignFactory(local_send_time=time(9, 0), local_time_zone_default="Asia/Kolkata")
    campaign.contact_lists.set([audience])
    return campaign, people


def test_a_local_time_campaign_reaches_each_zone_at_its_nine_oclock(
    clock, fan_outs, fake_esp, monkeypatch, admin_client
):
    """Acceptance: four time zones (Berlin across its DST change) and an
    unknown one, one launch, each message accepted at the zone's 09:00."""
    monkeypatch.setattr(
        "notifier.services.retries.deliveries_dispatch",
        lambda *, ids_by_kind: [
            deliveries_send_batch(delivery_ids=ids) for ids in ids_by_kind.values()
        ],
    )
    campaign, people = _local_time_campaign()
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    run = campaign_run_launch(run_id=run.pk)
    assert run.recipients == 5 and Delivery.objects.filter(run_id=run.pk).count() == 5
    due = dict(
        Delivery.objects.filter(run_id=run.pk).values_list(
            "recipient__time_zone", "next_attempt_at"
        )
    )
    assert due == ZONES
    # Nothing is due at the launch: no batch, and the sweeper waits.
    assert run_batch_ranges(run_id=run.pk, batch_size=100) == []
    waiting = run_waiting_by_due_time(run_id=run.pk)
    assert [(w.due_at, w.count) for w in waiting] == [(at, 1) for at in sorted(ZONES.values())]
    zone_at = {at: zone for zone, at in ZONES.items()}
    assert [w.zones for w in waiting] == [
        [(zone_at[w.due_at] if zone_at[w.due_at] in known_zones() else "", 1)] for w in waiting
    ]
    progress = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/progress/").json()
    assert [(w["due_at"], w["count"]) for w in progress["run"]["waiting"]] == [
        (at.isoformat(), 1) for at in sorted(ZONES.values())
    ]
    texts = [w["text"] for w in progress["run"]["waiting"]]
    assert any(t.startswith("1 recipient at 09:00 in America/New_York: ") for t in texts)
    assert any("in an unknown zone (sent as Asia/Kolkata): " in t for t in texts), texts

    accepted_at = {}
    now = LAUNCH
    while now <= LAUNCH + timedelta(hours=24):  # beat's sweeper, every 15 minutes
        clock(now)
        deliveries_dispatch_due()
        for message in fake_esp.messages:
            accepted_at.setdefault(parseaddr(message["To"])[1], now)
        now += timedelta(minutes=15)
    assert {zone: accepted_at[people[zone].email] for zone in ZONES} == ZONES
    assert (
        accepted_at[people["Europe/Berlin"].email].astimezone(ZoneInfo("Europe/Berlin")).hour == 9
    )
    assert len(fake_esp.messages) == 5
    campaign_runs_maintain()
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.DONE and run.totals["sent"] == 5


def test_launching_twice_materialises_once_and_resume_keeps_each_zones_time(clock, fan_outs):
    campaign, _people = _local_time_campaign()
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)
    campaign_run_launch(run_id=run.pk)
    assert Delivery.objects.filter(run_id=run.pk).count() == 5
    run = CampaignRun.objects.get(pk=run.pk)
    clock(LAUNCH + timedelta(hours=2))  # New York's 09:00 has passed meanwhile
    campaign_run_pause(run=run)
    assert not Delivery.objects.filter(run_id=run.pk, next_attempt_at__isnull=False).exists()
    campaign_run_resume(run=run)
    due = dict(
        Delivery.objects.filter(run_id=run.pk).values_list(
            "recipient__time_zone", "next_attempt_at"
        )
    )
    # New York's moment has passed: due at the resume; the others keep theirs.
    assert due == {**ZONES, "America/New_York": LAUNCH + timedelta(hours=2)}
    # Due rows go to the fan-out at once; the others wait for the sweeper.
    dispatched = dict(
        Delivery.objects.filter(run_id=run.pk).values_list("recipient__time_zone", "dispatched_at")
    )
    assert dispatched["America/New_York"] is not None
    assert all(dispatched[zone] is None for zone in ZONES if zone != "America/New_York")


def test_without_a_local_time_every_row_is_due_at_the_launch(clock, fan_outs):
    campaign, _people = _local_time_campaign()
    campaign.local_send_time = None
    campaign.save()
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)
    assert set(
        Delivery.objects.filter(run_id=run.pk).values_list("next_attempt_at", flat=True)
    ) == {LAUNCH}
    assert run_batch_ranges(run_id=run.pk, batch_size=100) != []
