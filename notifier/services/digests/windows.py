"""Digest windows: which digest a moment belongs to, and when it closes.

A window names one digest per recipient (part of its idempotency key) and has
a cutoff: notifications created after it wait for the next window.
"""

import zoneinfo
from datetime import UTC, datetime, time, timedelta

from django.conf import settings

from notifier.models import Frequency
from notifier.services.local_times import known_zones, zone_info

DIGEST_FREQUENCIES = (Frequency.HOURLY, Frequency.DAILY, Frequency.WEEKLY)


def digest_key(*, frequency: str, recipient_id: int, window: str) -> str:
    return f"digest:{frequency}:{recipient_id}:{window}"


def hourly_window(*, now: datetime) -> tuple[str, datetime]:
    """(window, cutoff): the hour that has just begun, in UTC."""
    cutoff = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return cutoff.strftime("%Y-%m-%dT%H"), cutoff


def daily_windows(*, now: datetime) -> dict[str, tuple[str, datetime]]:
    """For each known zone whose local digest time has come today:
    zone -> (local date, the moment that time came)."""
    at = settings.NOTIFIER_DAILY_DIGEST_TIME
    windows = {}
    for name in known_zones():
        zone = zoneinfo.ZoneInfo(name)
        local_now = now.astimezone(zone)
        due_at = datetime.combine(local_now.date(), at, tzinfo=zone)
        if local_now >= due_at:
            windows[name] = (local_now.date().isoformat(), due_at.astimezone(UTC))
    return windows


def weekly_window(*, now: datetime, time_zone: str, weekday: int, at: time) -> tuple[str, datetime]:
    """(window, cutoff) of a recipient's latest weekly digest at ``now``: the
    last ``weekday`` ``at`` (local) that has come, named by the ISO week of
    that local date, so a recipient has one weekly digest per local week.

    A local time skipped by a DST change (02:30 on the spring-forward night)
    means the moment an hour later; a repeated one, its first occurrence.
    Names that are not IANA zones count as UTC.
    """
    zone = zone_info(time_zone)
    local_now = now.astimezone(zone)
    day = local_now.date() - timedelta(days=(local_now.weekday() - weekday) % 7)
    due_at = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
    if due_at > now:  # today is the day, but not yet the time
        day -= timedelta(days=7)
        due_at = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
    year, week, _weekday = day.isocalendar()
    return f"{year}-W{week:02d}", due_at
