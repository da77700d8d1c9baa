"""What enters recipients: list joins, events (notify() and the HTTP API),
a confirmed signup (journey_enroll), a date attribute, a segment."""

from datetime import UTC, datetime, time

import pytest
from django.utils import timezone

from api.services import api_token_create
from campaigns.models import ListMembership, Segment, SegmentCondition
from journeys.models import Journey, JourneyEnrollment, JourneyStep
from journeys.services.triggers import triggers_poll
from journeys.services.versions import journey_activate
from notifier import notify
from notifier.models import Frequency, Recipient, Topic, TopicEvent
from notifier.services.suppressions import suppression_add
from tests.api.conftest import ApiClient
from tests.journeys.factories import campaign_template, welcome_journey

pytestmark = pytest.mark.django_db


def one_step_journey(**fields) -> Journey:
    journey = Journey.objects.create(name=fields.pop("name", "J"), **fields)
    JourneyStep.objects.create(
        journey=journey,
        position=1,
        kind=JourneyStep.Kind.SEND,
        template=campaign_template(f"t-{journey.pk}", "Hi"),
    )
    return journey_activate(journey=journey)


def entered(journey) -> set[str]:
    return set(
        JourneyEnrollment.objects.filter(journey=journey).values_list("recipient__email", flat=True)
    )


def test_list_joins_after_activation_enter_once_and_suppressed_never():
    old = Recipient.objects.create(email="old@example.com")
    journey = welcome_journey(activate=False)
    ListMembership.objects.create(contact_list=journey.trigger_list, recipient=old)
    journey_activate(journey=journey)
    new = Recipient.objects.create(email="new@example.com")
    gone = Recipient.objects.create(email="gone@example.com")
    suppression_add(email=gone.email, reason="manual")
    for person in (new, gone):
        ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    triggers_poll()
    triggers_poll()
    assert entered(journey) == {"new@example.com"}
    # Leaving and joining again does not enter twice without re-entry.
    ListMembership.objects.filter(recipient=new).delete()
    ListMembership.objects.create(contact_list=journey.trigger_list, recipient=new)
    triggers_poll()
    assert JourneyEnrollment.objects.filter(journey=journey).count() == 1


def test_events_from_notify_and_the_api_enter_whatever_the_preference():
    _, secret = api_token_create(service="shop", description="tests")
    api = ApiClient(secret)
    topic = Topic.objects.create(
        key="order-shipped", name="Order shipped", default_frequency=Frequency.OFF
    )
    journey = one_step_journey(trigger=Journey.Trigger.EVENT, trigger_topic=topic)
    notify("ann@example.com", "order-shipped", {"order": 1})
    response = api.post(
        "/api/v1/events",
        {"recipient": "bob@example.com", "topic": "order-shipped", "data": {}},
        headers={"Idempotency-Key": "ev-1"},
    )
    assert response.status_code == 202, response.content
    assert TopicEvent.objects.count() == 2
    triggers_poll()
    assert entered(journey) == {"ann@example.com", "bob@example.com"}


def test_re_entry_lets_a_finished_recipient_enter_on_the_next_event():
    topic = Topic.objects.create(key="renewal", name="Renewal")
    journey = one_step_journey(trigger=Journey.Trigger.EVENT, trigger_topic=topic, reentry=True)
    notify("ann@example.com", "renewal", {})
    triggers_poll()
    JourneyEnrollment.objects.update(state=JourneyEnrollment.State.DONE)
    notify("ann@example.com", "renewal", {})
    triggers_poll()
    assert JourneyEnrollment.objects.filter(journey=journey).count() == 2


def test_a_confirmed_signup_enters_through_journey_enroll():
    journey = one_step_journey(trigger=Journey.Trigger.SIGNUP_CONFIRMED)
    from journeys import journey_enroll

    ann = Recipient.objects.create(email="ann@example.com")
    assert journey_enroll(trigger="signup_confirmed", recipient=ann) == 1
    assert entered(journey) == {"ann@example.com"}


def test_a_date_attribute_enters_on_the_local_day_at_the_local_time():
    journey = one_step_journey(
        trigger=Journey.Trigger.DATE_ATTRIBUTE,
        trigger_attribute="birthday",
        trigger_local_time=time(9, 0),
    )
    tokyo = Recipient.objects.create(
        email="tokyo@example.com", time_zone="Asia/Tokyo", attributes={"birthday": "1990-03-03"}
    )
    Recipient.objects.create(
        email="paris@example.com",
        time_zone="Europe/Paris",
        attributes={"birthday": "1985-03-03"},
    )
    Recipient.objects.create(email="junk@example.com", attributes={"birthday": "soon"})
    # 2026-03-03 00:30 UTC: 09:30 in Tokyo, 01:30 in Paris.
    triggers_poll(now=datetime(2026, 3, 3, 0, 30, tzinfo=UTC))
    assert entered(journey) == {tokyo.email}
    triggers_poll(now=datetime(2026, 3, 3, 8, 0, tzinfo=UTC))
    assert entered(journey) == {tokyo.email, "paris@example.com"}


def test_recipients_entering_a_segment_enter_the_journey():
    segment = Segment.objects.create(name="VIPs")
    SegmentCondition.objects.create(
        segment=segment, field="attribute", attribute="tier", operator="equals", value="vip"
    )
    journey = one_step_journey(trigger=Journey.Trigger.SEGMENT_ENTERED, trigger_segment=segment)
    vip = Recipient.objects.create(email="vip@example.com", attributes={"tier": "vip"})
    Recipient.objects.create(email="plain@example.com")
    triggers_poll()
    assert entered(journey) == {vip.email}
    triggers_poll(now=timezone.now())
    assert JourneyEnrollment.objects.filter(journey=journey).count() == 1


def test_a_date_trigger_reads_only_the_recipients_whose_day_comes_round(monkeypatch):
    """The database hands back only the recipients whose date falls within a
    day of today; the whole audience is never walked in Python. Edges: the
    local day differs from UTC's around midnight, 29 February counts on the
    28th in other years, and with re-entry a recipient enters once a year."""
    from journeys.services import triggers

    journey = one_step_journey(
        trigger=Journey.Trigger.DATE_ATTRIBUTE,
        trigger_attribute="renewal",
        trigger_local_time=time(9, 0),
        reentry=True,
    )
    Recipient.objects.bulk_create(
        Recipient(email=f"other{i}@example.com", attributes={"renewal": f"2020-{m:02d}-15"})
        for i, m in enumerate([1, 4, 5, 6, 7, 8, 9, 10, 11, 12] * 20)
    )
    leap = Recipient.objects.create(email="leap@example.com", attributes={"renewal": "2024-02-29"})
    honolulu = Recipient.objects.create(
        email="hnl@example.com", time_zone="Pacific/Honolulu", attributes={"renewal": "2019-02-27"}
    )
    Recipient.objects.create(email="tomorrow@example.com", attributes={"renewal": "2021-03-01"})
    examined = []
    real = triggers._anniversary
    monkeypatch.setattr(
        triggers, "_anniversary", lambda value, year: examined.append(value) or real(value, year)
    )
    # 2027-02-28 08:00 UTC: 08:00 on the 28th in London (not yet 09:00; 2027
    # is not a leap year), 22:00 on the 27th in Honolulu.
    triggers_poll(now=datetime(2027, 2, 28, 8, 0, tzinfo=UTC))
    assert entered(journey) == {honolulu.email}
    assert sorted(examined) == ["2019-02-27", "2021-03-01", "2024-02-29"]
    triggers_poll(now=datetime(2027, 2, 28, 10, 0, tzinfo=UTC))
    assert entered(journey) == {leap.email, honolulu.email}
    # Later ticks the same day enter nobody again; the next year they come back.
    triggers_poll(now=datetime(2027, 2, 28, 23, 0, tzinfo=UTC))
    assert JourneyEnrollment.objects.filter(journey=journey).count() == 2
    JourneyEnrollment.objects.update(state=JourneyEnrollment.State.DONE)
    triggers_poll(now=datetime(2028, 2, 29, 10, 0, tzinfo=UTC))
    assert sorted(
        JourneyEnrollment.objects.filter(recipient=leap).values_list("entry_key", flat=True)
    ) == ["d2027", "d2028"]
