"""What a recipient wants per topic (instant, hourly, daily, weekly, or off),
when their weekly digest comes, and their quiet hours.

Turning a topic off also switches the recipient's notifications of that topic
that are still waiting for a digest to ``off``, so no digest picks them up.
"""

from datetime import time

from django.db import transaction

from notifier.models import (
    Frequency,
    Notification,
    Preference,
    QuietHoursMode,
    Recipient,
    Topic,
)


def preference_set(*, recipient: Recipient, topic: Topic, frequency: str) -> Preference:
    if frequency not in Frequency.values:
        raise ValueError(f"Unknown frequency {frequency!r}.")
    with transaction.atomic():
        preference, _created = Preference.objects.update_or_create(
            recipient=recipient, topic=topic, defaults={"frequency": frequency}
        )
        if frequency == Frequency.OFF:
            Notification.objects.filter(
                recipient=recipient, topic=topic, included_at__isnull=True
            ).exclude(frequency=Frequency.OFF).update(frequency=Frequency.OFF)
    return preference


def preferences_update(*, recipient: Recipient, frequencies: dict[int, str]) -> int:
    """Set several topics at once (``{topic_id: frequency}``); returns changes made."""
    topics = Topic.objects.in_bulk(list(frequencies))
    current = dict(
        Preference.objects.filter(recipient=recipient, topic_id__in=list(topics)).values_list(
            "topic_id", "frequency"
        )
    )
    changed = 0
    with transaction.atomic():
        for topic_id, frequency in frequencies.items():
            topic = topics.get(topic_id)
            if topic is None:
                continue
            if current.get(topic_id, topic.default_frequency) == frequency:
                continue
            preference_set(recipient=recipient, topic=topic, frequency=frequency)
            changed += 1
    return changed


def preferences_all_off(*, recipient: Recipient) -> int:
    """Turn every topic off for ``recipient``; returns the number of topics."""
    topics = list(Topic.objects.all())
    with transaction.atomic():
        Preference.objects.bulk_create(
            [Preference(recipient=recipient, topic=t, frequency=Frequency.OFF) for t in topics],
            update_conflicts=True,
            unique_fields=["recipient", "topic"],
            update_fields=["frequency", "updated_at"],
        )
        Notification.objects.filter(recipient=recipient, included_at__isnull=True).exclude(
            frequency=Frequency.OFF
        ).update(frequency=Frequency.OFF)
    return len(topics)


def recipient_weekly_digest_set(*, recipient: Recipient, weekday: int, at: time) -> bool:
    """Set the local weekday (Monday is 0) and time of the recipient's weekly
    digest; returns whether anything changed. A week's digest is still sent
    once: a day moved later in a week whose digest went out waits a week."""
    if weekday not in range(7):
        raise ValueError(f"Unknown weekday {weekday!r}.")
    if not isinstance(at, time) or at.tzinfo is not None:
        raise ValueError("The weekly digest time is a local time of day.")
    if (recipient.weekly_digest_day, recipient.weekly_digest_time) == (weekday, at):
        return False
    recipient.weekly_digest_day, recipient.weekly_digest_time = weekday, at
    recipient.save(update_fields=["weekly_digest_day", "weekly_digest_time", "updated_at"])
    return True


def recipient_quiet_hours_set(
    *, recipient: Recipient, start: time | None, end: time | None, mode: str
) -> bool:
    """Set the recipient's quiet hours (local times; both None: none) and
    what happens to an instant notification inside them; returns whether
    anything changed. Mail already held keeps its time."""
    if (start is None) != (end is None):
        raise ValueError("Quiet hours need both a start and an end, or neither.")
    if start is not None and (start == end or start.tzinfo or end.tzinfo):
        raise ValueError("Quiet hours are two different local times of day.")
    if mode not in QuietHoursMode.values:
        raise ValueError(f"Unknown quiet hours mode {mode!r}.")
    values = (start, end, mode)
    if (
        recipient.quiet_hours_start,
        recipient.quiet_hours_end,
        recipient.quiet_hours_mode,
    ) == values:
        return False
    recipient.quiet_hours_start, recipient.quiet_hours_end, recipient.quiet_hours_mode = values
    recipient.save(
        update_fields=["quiet_hours_start", "quiet_hours_end", "quiet_hours_mode", "updated_at"]
    )
    return True
