"""Quiet hours: local times of day in which no notification email goes out.

Three sources add up: the installation's (``NOTIFIER_QUIET_HOURS``), the
topic's and the recipient's (chosen on the preference page), each read in the
recipient's time zone. A window whose start is after its end spans midnight
(22:00-07:00). A topic marked critical ignores them all.

Mail that falls inside waits in the database: its Delivery is written with
``next_attempt_at`` at the moment the quiet hours end and is not dispatched;
the sweeper hands it to a worker when that moment comes (a Celery countdown
would be redelivered by Redis after the visibility timeout, and lost with it).
"""

from datetime import UTC, datetime, time, timedelta

from django.conf import settings

from notifier.models import Recipient, Topic
from notifier.services.local_times import zone_info

Window = tuple[time, time]


def _inside(window: Window, at: time) -> bool:
    start, end = window
    if start < end:
        return start <= at < end
    if start > end:  # spans midnight
        return at >= start or at < end
    return False  # an empty window


def _end_after(window: Window, local: datetime) -> datetime:
    """The next moment (UTC) after ``local`` at which ``window`` ends. A local
    end skipped by a DST change means the moment an hour later."""
    end = datetime.combine(local.date(), window[1], tzinfo=local.tzinfo).astimezone(UTC)
    if end <= local:
        end = datetime.combine(
            local.date() + timedelta(days=1), window[1], tzinfo=local.tzinfo
        ).astimezone(UTC)
    return end


def quiet_hours_end(*, now: datetime, time_zone: str, windows: list[Window]) -> datetime | None:
    """When the quiet hours around ``now`` end (UTC), or None when ``now`` is
    outside every window. Overlapping or touching windows count as one."""
    zone = zone_info(time_zone)
    moment = now
    # Each step leaves one window for good; more steps than windows cannot help.
    for _step in range(len(windows) + 1):
        local = moment.astimezone(zone)
        ends = [_end_after(w, local) for w in windows if _inside(w, local.time())]
        if not ends:
            return None if moment == now else moment
        moment = max(ends)
    return moment


def _window(start: time | None, end: time | None) -> list[Window]:
    return [(start, end)] if start is not None and end is not None else []


def recipient_quiet_windows(*, recipient: Recipient) -> list[Window]:
    """The installation's and the recipient's quiet hours (what digests keep to)."""
    installation = settings.NOTIFIER_QUIET_HOURS
    return [
        *([tuple(installation)] if installation else []),
        *_window(recipient.quiet_hours_start, recipient.quiet_hours_end),
    ]


def notification_held_until(
    *, recipient: Recipient, topic: Topic, now: datetime
) -> datetime | None:
    """When an instant notification of ``topic`` to ``recipient`` may go out,
    if ``now`` is inside quiet hours; None to send it now (also for a
    critical topic)."""
    if topic.critical:
        return None
    windows = [
        *recipient_quiet_windows(recipient=recipient),
        *_window(topic.quiet_hours_start, topic.quiet_hours_end),
    ]
    if not windows:
        return None
    return quiet_hours_end(now=now, time_zone=recipient.time_zone, windows=windows)
