"""Triggers the tick polls: list joins, events, dates and segments.

Notifier never imports journeys, so journeys read what happened from tables
they may read, by id cursor kept on the journey (``trigger_cursor``): list
memberships (campaigns) and ``notifier.TopicEvent``, the log ``notify()``
and ``POST /api/v1/events`` write for every event whatever the recipient's
preference. A confirmed signup calls ``journey_enroll`` directly.
"""

import calendar
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Substr
from django.utils import timezone

from campaigns.models import ListMembership
from campaigns.segments import segment_q
from journeys.models import Journey, JourneyEnrollment
from journeys.services.enrollments import enrollments_create, journeys_accepting
from notifier.models import Recipient, TopicEvent
from notifier.services.suppressions import SUPPRESSED_RECIPIENT_STATUSES

# Rows one poll of one journey reads (the next tick reads on).
POLL_CHUNK = 5000
DEFAULT_DATE_TIME = time(9, 0)


def _poll(journey: Journey, rows, now: datetime, key_prefix: str) -> int:
    """Enter the recipients of ``rows`` ((id, recipient id) by id) and move
    the cursor past them, in one transaction."""
    rows = list(rows[:POLL_CHUNK])
    if not rows:
        return 0
    entries: dict[int, str] = {}
    for row_id, recipient_id in rows:
        entries.setdefault(recipient_id, f"{key_prefix}{row_id}")
    with transaction.atomic():
        moved = Journey.objects.filter(pk=journey.pk, trigger_cursor=journey.trigger_cursor).update(
            trigger_cursor=rows[-1][0]
        )
        if not moved:  # another tick polled meanwhile
            return 0
        return enrollments_create(journey=journey, entries=entries, now=now)


def trigger_list_joined(*, journey: Journey, now: datetime) -> int:
    rows = (
        ListMembership.objects.filter(
            contact_list_id=journey.trigger_list_id, id__gt=journey.trigger_cursor
        )
        .order_by("id")
        .values_list("id", "recipient_id")
    )
    return _poll(journey, rows, now, "m")


def trigger_event(*, journey: Journey, now: datetime) -> int:
    rows = (
        TopicEvent.objects.filter(topic_id=journey.trigger_topic_id, id__gt=journey.trigger_cursor)
        .order_by("id")
        .values_list("id", "recipient_id")
    )
    return _poll(journey, rows, now, "e")


def _anniversary(value, year: int) -> date | None:
    """This year's day of a YYYY-MM-DD attribute (29 February: the 28th in
    other years); None when the value is not a date."""
    try:
        day = date.fromisoformat(str(value)[:10])
    except ValueError:
        return None
    try:
        return day.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def _month_days_around(now: datetime) -> list[str]:
    """The "MM-DD" a date attribute may end in to come round now somewhere:
    every time zone's today lies within a day of UTC's. 29 February counts
    on the 28th in other years (``_anniversary``)."""
    days = [now.date() + timedelta(days=k) for k in (-1, 0, 1)]
    month_days = {f"{d:%m-%d}" for d in days}
    if "02-28" in month_days and not calendar.isleap(now.year):
        month_days.add("02-29")
    return sorted(month_days)


def trigger_date_attribute(*, journey: Journey, now: datetime) -> int:
    """Enter recipients whose date attribute is today, in their time zone,
    once the journey's local time has come (once a year each).

    Set-based: the database returns only the recipients whose date's month
    and day fall within a day of today's (a few per day of the year, not the
    whole audience), who are mailable and have not entered this year; the
    local day and time are then checked for those few."""
    at = journey.trigger_local_time or DEFAULT_DATE_TIME
    value = KeyTextTransform(journey.trigger_attribute, "attributes")
    entered = JourneyEnrollment.objects.filter(
        journey__lineage=journey.lineage, recipient_id=OuterRef("pk")
    )
    if journey.reentry:
        # Once a year: this year's entry (around New Year a recipient's local
        # year may differ; enrollments_create and the unique entry key decide).
        entered = entered.filter(entry_key=f"d{now.year}")
    candidates = (
        Recipient.objects.annotate(month_day=Substr(value, 6, 5))
        .filter(month_day__in=_month_days_around(now))
        .exclude(status__in=SUPPRESSED_RECIPIENT_STATUSES)
        .exclude(Exists(entered))
        .values_list("id", "time_zone", "attributes")
    )
    entries = {}
    for recipient_id, time_zone, attributes in candidates.iterator(chunk_size=2000):
        try:
            local = now.astimezone(ZoneInfo(time_zone))
        except Exception:
            local = now
        day = _anniversary(attributes.get(journey.trigger_attribute), local.year)
        if day == local.date() and local.time() >= at:
            entries[recipient_id] = f"d{local.year}"
    # Without re-entry a recipient enters once ever; with it, once a year.
    return enrollments_create(journey=journey, entries=entries, now=now)


def trigger_segment_entered(*, journey: Journey, now: datetime) -> int:
    """Enter the segment's members who have not been in this journey."""
    members = (
        Recipient.objects.filter(segment_q(journey.trigger_segment))
        .exclude(
            journey_enrollments__journey__lineage=journey.lineage,
        )
        .values_list("id", flat=True)[:POLL_CHUNK]
    )
    return enrollments_create(journey=journey, entries={r: "s" for r in members}, now=now)


POLLERS = {
    Journey.Trigger.LIST_JOINED: trigger_list_joined,
    Journey.Trigger.EVENT: trigger_event,
    Journey.Trigger.DATE_ATTRIBUTE: trigger_date_attribute,
    Journey.Trigger.SEGMENT_ENTERED: trigger_segment_entered,
}


def triggers_poll(*, now: datetime | None = None) -> dict[str, int]:
    """Run every polling trigger of every journey taking recipients."""
    now = now or timezone.now()
    entered: dict[str, int] = {}
    for trigger, poll in POLLERS.items():
        for journey in journeys_accepting(trigger=trigger):
            count = poll(journey=journey, now=now)
            if count:
                entered[f"journey_{journey.pk}"] = entered.get(f"journey_{journey.pk}", 0) + count
    return entered
