"""Each row of a group due at its recipient's best hour (send-time insight).

After a group is materialised with the campaign's local send time, the rows
of recipients with enough opens and clicks (``notifier.engagement``) move to
the first moment of their best local hour from the launch on; the others
keep the local send time. Only rows never attempted and not held (paused)
move, so running it again (a relaunch) changes nothing more.
"""

from collections import defaultdict
from datetime import datetime, time

from django.db import transaction
from django.utils import timezone

from notifier.engagement import best_hours
from notifier.models import Delivery, Recipient
from notifier.services.dispatch import chunked
from notifier.services.local_times import next_local_time, zone_info

CHUNK = 1000


def delivery_group_due_at_best_hours(
    *, group_id: int, after: datetime, default_zone: str = "UTC"
) -> int:
    """Move the group's untouched pending rows to their recipients' best
    local hour (the first such moment at or after ``after``; a zone name
    that is not an IANA zone counts as ``default_zone``). Returns rows moved."""
    rows = Delivery.objects.filter(
        run_id=group_id,
        status=Delivery.Status.PENDING,
        attempts=0,
        next_attempt_at__isnull=False,
    )
    best = best_hours(recipient_ids=rows.values("recipient_id"), default_zone=default_zone)
    if not best:
        return 0
    by_moment: dict[datetime, list[int]] = defaultdict(list)
    for chunk in chunked(list(best), CHUNK):
        for recipient_id, zone in Recipient.objects.filter(pk__in=chunk).values_list(
            "pk", "time_zone"
        ):
            moment = next_local_time(
                after=after,
                zone=zone_info(zone, default=default_zone),
                at=time(best[recipient_id]),
            )
            by_moment[moment].append(recipient_id)
    now = timezone.now()
    moved = 0
    with transaction.atomic():
        for moment, recipient_ids in by_moment.items():
            for chunk in chunked(recipient_ids, CHUNK):
                moved += rows.filter(recipient_id__in=chunk).update(
                    next_attempt_at=moment,
                    dispatched_at=now if moment <= now else None,
                    updated_at=now,
                )
    return moved
