"""Local times of day in recipients' time zones, as UTC moments.

A time zone name that is not an IANA zone counts as the given default (UTC
unless said otherwise). A local time skipped by a DST change means the moment
an hour later; a repeated one, its first occurrence (``fold=0``).
"""

import functools
import zoneinfo
from datetime import UTC, datetime, time, timedelta


@functools.cache
def known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone_info(name: str, *, default: str = "UTC") -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name if name in known_zones() else default)


def next_local_time(*, after: datetime, zone: zoneinfo.ZoneInfo, at: time) -> datetime:
    """The first moment at or after ``after`` at which the clock in ``zone`` shows ``at``."""
    local = after.astimezone(zone)
    moment = datetime.combine(local.date(), at, tzinfo=zone).astimezone(UTC)
    if moment < after:
        moment = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone).astimezone(UTC)
    return moment
