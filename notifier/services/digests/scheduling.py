"""Finding who is due a digest, and fanning the builds out.

The scheduler reads due recipients a page at a time from the partial index
over pending notifications and publishes a Celery group of small batches per
page, so neither it nor any task holds every recipient or every notification.
"""

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from celery import group
from django.conf import settings
from django.utils import timezone

from notifier.models import Frequency
from notifier.selectors import (
    daily_digest_due_page,
    digest_deliveries_by_key,
    digest_due_recipient_ids,
    weekly_digest_due_page,
)
from notifier.services.digests.windows import (
    DIGEST_FREQUENCIES,
    daily_windows,
    digest_key,
    hourly_window,
    known_zones,
    weekly_window,
)
from notifier.services.dispatch import chunked

logger = logging.getLogger(__name__)

PAGE_SIZE = 1000  # recipient ids read per query by the scheduler


@dataclass(frozen=True)
class DigestBatch:
    """Recipients whose ``frequency`` digest for ``window`` (closing at
    ``cutoff``) one task builds."""

    recipient_ids: list[int]
    frequency: str
    window: str
    cutoff: datetime


def _without_built(*, frequency: str, pairs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop (recipient, window) pairs whose digest already exists."""
    keys = {
        digest_key(frequency=frequency, recipient_id=rid, window=window): (rid, window)
        for rid, window in pairs
    }
    built = digest_deliveries_by_key(keys=list(keys))
    return [pair for key, pair in keys.items() if key not in built]


def _hourly_pages(*, now: datetime, page_size: int) -> Iterator[list[tuple[int, str, datetime]]]:
    window, cutoff = hourly_window(now=now)
    after_id = 0
    while ids := digest_due_recipient_ids(
        frequency=Frequency.HOURLY, cutoff=cutoff, after_id=after_id, limit=page_size
    ):
        after_id = ids[-1]
        due = _without_built(frequency=Frequency.HOURLY, pairs=[(rid, window) for rid in ids])
        yield [(rid, window, cutoff) for rid, window in due]


def _daily_pages(*, now: datetime, page_size: int) -> Iterator[list[tuple[int, str, datetime]]]:
    windows = daily_windows(now=now)
    zones_by_cutoff: dict[datetime, list[str]] = defaultdict(list)
    for name, (_window, cutoff) in windows.items():
        zones_by_cutoff[cutoff].append(name)
    utc = windows.get("UTC")  # names that are not IANA zones count as UTC
    after_id = 0
    while rows := daily_digest_due_page(
        cutoff_by_zones=sorted(
            (cutoff, sorted(zones)) for cutoff, zones in zones_by_cutoff.items()
        ),
        known_zones=known_zones(),
        unknown_zone_cutoff=utc[1] if utc else None,
        after_id=after_id,
        limit=page_size,
    ):
        after_id = rows[-1][0]
        window_of = {rid: windows.get(zone, utc) for rid, zone in rows}
        due = _without_built(
            frequency=Frequency.DAILY, pairs=[(rid, window_of[rid][0]) for rid, _zone in rows]
        )
        yield [(rid, window, window_of[rid][1]) for rid, window in due]


def _weekly_pages(*, now: datetime, page_size: int) -> Iterator[list[tuple[int, str, datetime]]]:
    after_id = 0
    while rows := weekly_digest_due_page(after_id=after_id, limit=page_size):
        after_id = rows[-1][0]
        windows = {}
        for rid, zone, weekday, at, oldest in rows:
            window, cutoff = weekly_window(now=now, time_zone=zone, weekday=weekday, at=at)
            if oldest < cutoff:
                windows[rid] = (window, cutoff)
        due = _without_built(
            frequency=Frequency.WEEKLY,
            pairs=[(rid, window) for rid, (window, _cutoff) in windows.items()],
        )
        yield [(rid, window, windows[rid][1]) for rid, window in due]


_PAGES = {
    Frequency.HOURLY: _hourly_pages,
    Frequency.DAILY: _daily_pages,
    Frequency.WEEKLY: _weekly_pages,
}


def digest_batches_due(
    *, frequency: str, now: datetime, batch_size: int | None = None, page_size: int = PAGE_SIZE
) -> Iterator[list[DigestBatch]]:
    """Pages of batches of recipients due a ``frequency`` digest at ``now``.

    A recipient is due when they have a pending notification of that
    frequency created before their window's cutoff and no digest yet for
    that window.
    """
    if frequency not in DIGEST_FREQUENCIES:
        raise ValueError(f"Digests are hourly, daily or weekly, not {frequency!r}.")
    batch_size = batch_size or settings.NOTIFIER_DIGEST_BATCH_SIZE
    for page in _PAGES[frequency](now=now, page_size=page_size):
        by_window: dict[tuple[str, datetime], list[int]] = defaultdict(list)
        for rid, window, cutoff in page:
            by_window[window, cutoff].append(rid)
        batches = [
            DigestBatch(chunk, frequency, window, cutoff)
            for (window, cutoff), ids in by_window.items()
            for chunk in chunked(ids, batch_size)
        ]
        if batches:
            yield batches


def digest_builds_publish(batches: list[DigestBatch]) -> None:
    from notifier.tasks import build_digests

    group(
        build_digests.si(b.recipient_ids, b.frequency, b.window, b.cutoff.isoformat()).set(
            queue="digests"
        )
        for b in batches
    ).apply_async()


def digests_run(*, frequency: str, now: datetime | None = None) -> dict[str, int]:
    """Fan out digest builds for everyone due: one Celery group per page.

    Safe to run twice for the same window (the digest keys dedupe). Returns
    how many recipients were found and how many tasks were published.
    """
    now = now or timezone.now()
    found = published = 0
    for batches in digest_batches_due(frequency=frequency, now=now):
        digest_builds_publish(batches)
        found += sum(len(b.recipient_ids) for b in batches)
        published += len(batches)
    logger.info("%s digest run: %d recipients in %d tasks", frequency, found, published)
    return {"recipients": found, "tasks": published}
