"""Send-time insight: opens and clicks by the recipient's local hour, their
best hour, the aggregate page, and a campaign sent at each best hour."""

import itertools
from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import campaign_run_launch, campaign_run_pause, campaign_run_resume
from notifier.engagement import MIN_EVENTS, best_hours, engagement_insight
from notifier.engagement import recipient_engagement_hours as hours_of
from notifier.models import Delivery, DeliveryEvent, Recipient
from notifier.services.local_times import next_local_time, zone_info
from tests.campaigns.factories import (
    CampaignFactory,
    ContactListFactory,
    add_members,
    campaign_form_data,
)
from tests.notifier.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db
_keys = itertools.count()
NOW = datetime(2026, 7, 20, 12, 0, tzinfo=UTC)


def _engaged(recipient: Recipient, *moments: datetime, event_type: str = "opened") -> None:
    delivery = DeliveryFactory(recipient=recipient, status=Delivery.Status.SENT)
    for at in moments:
        DeliveryEvent.objects.create(
            delivery=delivery,
            event_key=f"test:{next(_keys)}",
            event_type=event_type,
            email=recipient.email,
            occurred_at=at,
        )


def test_hours_are_the_recipients_own_and_only_recent_ones_count():
    berlin = RecipientFactory(time_zone="Europe/Berlin")
    _engaged(
        berlin,
        datetime(2026, 7, 10, 6, 30, tzinfo=UTC),  # 08:30 in Berlin (summer time)
        datetime(2026, 7, 12, 20, 0, tzinfo=UTC),  # 22:00
        datetime(2026, 1, 10, 7, 15, tzinfo=UTC),  # more than 90 days ago: not counted
    )
    _engaged(berlin, datetime(2026, 7, 11, 6, 59, tzinfo=UTC), event_type="clicked")  # 08:59
    _engaged(
        berlin, datetime(2026, 7, 11, 7, 0, tzinfo=UTC), event_type="delivered"
    )  # not engagement
    hours = hours_of(recipient=berlin, now=NOW)
    assert hours.total == 3
    assert hours.counts[8] == 2 and hours.counts[22] == 1
    assert hours.best == 8


def test_too_little_history_has_no_best_hour_and_ties_go_to_the_earlier_hour():
    few = RecipientFactory(time_zone="Asia/Tokyo")
    _engaged(few, *[NOW - timedelta(days=1, hours=h) for h in range(MIN_EVENTS - 1)])
    tied = RecipientFactory(time_zone="UTC")
    day = NOW - timedelta(days=3)
    _engaged(tied, day.replace(hour=18), day.replace(hour=7), day.replace(hour=18, minute=5))
    _engaged(tied, day.replace(hour=7, minute=30))
    assert hours_of(recipient=few, now=NOW).best is None
    assert best_hours(recipient_ids=[few.pk, tied.pk], now=NOW) == {tied.pk: 7}


def test_an_unknown_zone_counts_as_the_default_zone():
    someone = RecipientFactory(time_zone="Moon/Base")
    _engaged(someone, *[NOW - timedelta(days=d, hours=4) for d in (1, 2, 3)])  # 08:00 UTC
    assert best_hours(recipient_ids=[someone.pk], now=NOW) == {someone.pk: 8}
    assert best_hours(recipient_ids=[someone.pk], now=NOW, default_zone="Asia/Kolkata") == {
        someone.pk: 13  # 08:00 UTC is 13:30 in India
    }


def test_the_aggregate_counts_every_recipient_in_their_own_time():
    tokyo, berlin, quiet = (
        RecipientFactory(time_zone="Asia/Tokyo"),
        RecipientFactory(time_zone="Europe/Berlin"),
        RecipientFactory(time_zone="UTC"),
    )
    # 23:00 UTC is 08:00 in Tokyo; 06:00 UTC is 08:00 in Berlin (summer).
    _engaged(tokyo, *[datetime(2026, 7, d, 23, 0, tzinfo=UTC) for d in (1, 2, 3)])
    _engaged(berlin, *[datetime(2026, 7, d, 6, 0, tzinfo=UTC) for d in (1, 2, 3, 4)])
    _engaged(quiet, datetime(2026, 7, 1, 15, 0, tzinfo=UTC))
    insight = engagement_insight(now=NOW)
    assert insight.hours.counts[8] == 7 and insight.hours.counts[15] == 1
    assert insight.hours.total == 8 and insight.events_read == 8
    assert insight.recipients_with_history == 3
    assert insight.best_hour_recipients[8] == 2 and sum(insight.best_hour_recipients) == 2
    assert not insight.truncated


def test_staff_see_a_recipients_hours_and_the_aggregate(admin_client, client):
    berlin = RecipientFactory(email="ber@example.com", time_zone="Europe/Berlin")
    now = timezone.now()
    local_eight = next_local_time(
        after=now - timedelta(days=2), zone=zone_info("Europe/Berlin"), at=time(8)
    )
    _engaged(berlin, *[local_eight - timedelta(days=d) for d in range(4)])
    page = admin_client.get(f"/admin/notifier/recipient/{berlin.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "When they open and click" in html
    assert "Best hour: 08:00 their time (Europe/Berlin), from 4 opens and clicks" in html
    assert "<svg" in html and "08:00\u201308:59: 4" in html

    other = RecipientFactory(email="new@example.com")
    assert (
        "not enough for a best hour"
        in admin_client.get(f"/admin/notifier/recipient/{other.pk}/change/").content.decode()
    )

    listing = admin_client.get("/admin/notifier/recipient/")
    assert "/admin/notifier/recipient/engagement/" in listing.content.decode()
    insight = admin_client.get("/admin/notifier/recipient/engagement/")
    assert insight.status_code == 200
    text = insight.content.decode()
    assert "4 opens and clicks of 1 recipients; busiest: 08:00" in text
    assert "1 recipient has a best hour" in text
    # Not staff: the admin login, nothing shown.
    assert client.get("/admin/notifier/recipient/engagement/").status_code == 302


def test_a_campaign_sends_each_recipient_at_their_best_hour_once():
    """Tokyo opens at 20:00 their time; Berlin has no history (the campaign's
    09:00); an unknown zone with history at 07:00 in the default zone."""
    now = timezone.now()
    tokyo = RecipientFactory(email="tokyo@example.com", time_zone="Asia/Tokyo")
    berlin = RecipientFactory(email="berlin@example.com", time_zone="Europe/Berlin")
    moon = RecipientFactory(email="moon@example.com", time_zone="Moon/Base")
    for person, zone, hour in ((tokyo, "Asia/Tokyo", 20), (moon, "Asia/Kolkata", 7)):
        first = next_local_time(after=now - timedelta(days=5), zone=zone_info(zone), at=time(hour))
        _engaged(person, *[first + timedelta(days=d, minutes=10) for d in range(3)])
    audience = ContactListFactory()
    add_members(audience, [tokyo, berlin, moon])
    campaign = CampaignFactory(
        local_send_time=time(9, 0), local_time_zone_default="Asia/Kolkata", send_at_best_hour=True
    )
    campaign.contact_lists.set([audience])
    run = campaign_run_launch(
        run_id=campaign_run_create(campaign_id=campaign.pk, trigger="manual").pk
    )
    launched = run.started_at

    def due(person):
        return Delivery.objects.get(run_id=run.pk, recipient=person).next_attempt_at

    expected = {
        tokyo: next_local_time(after=launched, zone=zone_info("Asia/Tokyo"), at=time(20)),
        berlin: next_local_time(after=launched, zone=zone_info("Europe/Berlin"), at=time(9)),
        moon: next_local_time(after=launched, zone=zone_info("Asia/Kolkata"), at=time(7)),
    }
    assert {person: due(person) for person in expected} == expected
    # Launching again adds nothing and moves nothing.
    campaign_run_launch(run_id=run.pk)
    assert Delivery.objects.filter(run_id=run.pk).count() == 3
    assert {person: due(person) for person in expected} == expected
    # Paused and resumed: each row waits again for its own moment.
    campaign_run_pause(run=run)
    assert Delivery.objects.filter(run_id=run.pk, next_attempt_at__isnull=True).count() == 3
    campaign_run_resume(run=run)
    assert {person: due(person) for person in expected} == expected


def test_best_hour_needs_a_local_send_time(marketer):
    response = marketer.post(
        "/admin/campaigns/campaign/add/", campaign_form_data(send_at_best_hour="on")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Choose a local send time" in str(errors["local_send_time"])
    assert not Campaign.objects.exists()
