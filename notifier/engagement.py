"""Send-time insight: at which hours of their own day recipients open and
click, read from the stored ESP events (``opened`` and ``clicked``).

Hours are the recipient's local hours (their ``time_zone``; an unknown zone
counts as UTC). A recipient's *best hour* is the hour with the most opens and
clicks over the last ``HISTORY_DAYS`` days, once there are at least
``MIN_EVENTS`` of them (ties go to the earlier hour); with fewer, they have
none and a campaign sends them at its default local time.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from notifier.models import DeliveryEvent, Recipient
from notifier.services.local_times import zone_info

ENGAGED = ("opened", "clicked")
HISTORY_DAYS = 90
MIN_EVENTS = 3
# The aggregate reads at most this many events (the newest first).
AGGREGATE_LIMIT = 500_000


@dataclass(frozen=True)
class Hours:
    """Opens and clicks per local hour of the day (24 counts)."""

    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def best(self) -> int | None:
        if self.total < MIN_EVENTS:
            return None
        return max(range(24), key=lambda hour: (self.counts[hour], -hour))


def _events(*, since: datetime) -> QuerySet:
    return (
        DeliveryEvent.objects.filter(event_type__in=ENGAGED, delivery__isnull=False)
        .annotate(at=Coalesce("occurred_at", "received_at"))
        .filter(at__gte=since)
    )


def _local_hour(moment: datetime, zone: str, default: str = "UTC") -> int:
    return moment.astimezone(zone_info(zone, default=default)).hour


def _hours(counts: Counter) -> Hours:
    return Hours(tuple(counts[hour] for hour in range(24)))


def _since(now: datetime | None) -> datetime:
    return (now or timezone.now()) - timedelta(days=HISTORY_DAYS)


def recipient_engagement_hours(*, recipient: Recipient, now: datetime | None = None) -> Hours:
    """One recipient's opens and clicks by their local hour."""
    counts = Counter(
        _local_hour(at, recipient.time_zone)
        for at in _events(since=_since(now))
        .filter(delivery__recipient=recipient)
        .values_list("at", flat=True)
    )
    return _hours(counts)


def best_hours(
    *,
    recipient_ids: Iterable[int] | QuerySet,
    now: datetime | None = None,
    default_zone: str = "UTC",
) -> dict[int, int]:
    """``{recipient id: best local hour}`` for those of ``recipient_ids``
    (ids, or a queryset of them) with enough history; one streamed query.
    A zone name that is not an IANA zone counts as ``default_zone``."""
    per_recipient: dict[int, Counter] = defaultdict(Counter)
    rows = (
        _events(since=_since(now))
        .filter(delivery__recipient_id__in=recipient_ids)
        .values_list("delivery__recipient_id", "delivery__recipient__time_zone", "at")
        .order_by()
    )
    for recipient_id, zone, at in rows.iterator(chunk_size=5000):
        per_recipient[recipient_id][_local_hour(at, zone, default_zone)] += 1
    best = {}
    for recipient_id, counts in per_recipient.items():
        hour = _hours(counts).best
        if hour is not None:
            best[recipient_id] = hour
    return best


@dataclass(frozen=True)
class Insight:
    """Every recipient's opens and clicks by local hour, and how many
    recipients have each best hour (and none: not enough history)."""

    hours: Hours
    best_hour_recipients: tuple[int, ...]
    recipients_with_history: int
    events_read: int
    truncated: bool


def engagement_insight(*, now: datetime | None = None) -> Insight:
    """The aggregate over the newest ``AGGREGATE_LIMIT`` events of the last
    ``HISTORY_DAYS`` days."""
    rows = (
        _events(since=_since(now))
        .order_by(F("at").desc())
        .values_list("delivery__recipient_id", "delivery__recipient__time_zone", "at")[
            : AGGREGATE_LIMIT + 1
        ]
    )
    overall: Counter = Counter()
    per_recipient: dict[int, Counter] = defaultdict(Counter)
    read = 0
    for recipient_id, zone, at in rows.iterator(chunk_size=5000):
        read += 1
        if read > AGGREGATE_LIMIT:
            break
        hour = _local_hour(at, zone)
        overall[hour] += 1
        per_recipient[recipient_id][hour] += 1
    best: Counter = Counter()
    for counts in per_recipient.values():
        hour = _hours(counts).best
        if hour is not None:
            best[hour] += 1
    return Insight(
        hours=_hours(overall),
        best_hour_recipients=tuple(best[h] for h in range(24)),
        recipients_with_history=len(per_recipient),
        events_read=min(read, AGGREGATE_LIMIT),
        truncated=read > AGGREGATE_LIMIT,
    )


def hours_chart(counts: Iterable[int], *, label: str, best: int | None = None) -> dict:
    """The geometry of a 24-bar SVG chart of ``counts`` (one per local hour),
    the ``best`` hour highlighted (admin/notifier/engagement_hours.html)."""
    counts = list(counts)
    width, height, axis = 480, 120, 16
    base = height - axis
    slot = width / 24
    top = max(counts) or 1
    bars = []
    for hour, count in enumerate(counts):
        h = round((base - 4) * count / top, 1)
        bars.append(
            {
                "hour": hour,
                "count": count,
                "x": round(hour * slot + 1, 1),
                "w": round(slot - 2, 1),
                "y": round(base - h, 1),
                "h": h,
                "mid": round(hour * slot + slot / 2, 1),
                "label": hour % 3 == 0,
                "best": hour == best,
            }
        )
    return {
        "width": width,
        "height": height,
        "base": base,
        "axis_y": height - 3,
        "bars": bars,
        "label": label,
    }
