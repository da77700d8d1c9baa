"""Handing delivery ids to Celery, on the queue their kind belongs to.

``dispatched_at`` is written *before* the task is published, so the sweeper
knows the row has a task somewhere. If that task is lost (Redis restarted
without persistence) the sweeper dispatches the row again after
``NOTIFIER_REDISPATCH_SECONDS``; claims are conditional, so a second task for
the same row never sends twice.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.utils import timezone

from notifier.models import Delivery

logger = logging.getLogger(__name__)

QUEUE_FOR_KIND = {
    Delivery.Kind.TRANSACTIONAL: "transactional",
    Delivery.Kind.NOTIFICATION: "transactional",
    Delivery.Kind.CAMPAIGN: "campaigns",
    Delivery.Kind.DIGEST: "digests",
}


def chunked(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def deliveries_mark_dispatched(ids: list[int]) -> None:
    """Before any task or send takes them: the sweeper leaves the rows alone
    until ``NOTIFIER_REDISPATCH_SECONDS`` have passed."""
    Delivery.objects.filter(id__in=ids).update(dispatched_at=timezone.now())


def deliveries_dispatch(*, ids_by_kind: dict[str, list[int]], batch_size: int | None = None) -> int:
    """Mark and publish batch tasks. Returns the number of tasks published."""
    from notifier.tasks import send_deliveries

    batch_size = batch_size or settings.NOTIFIER_BATCH_SIZE
    all_ids = [i for ids in ids_by_kind.values() for i in ids]
    if not all_ids:
        return 0
    deliveries_mark_dispatched(all_ids)
    published = 0
    for kind, ids in ids_by_kind.items():
        queue = QUEUE_FOR_KIND.get(kind, "transactional")
        for chunk in chunked(sorted(ids), batch_size):
            try:
                send_deliveries.apply_async(args=[chunk], queue=queue)
                published += 1
            except Exception:  # broker down: the sweeper will pick the rows up
                logger.exception("Could not publish a batch of %d deliveries", len(chunk))
                Delivery.objects.filter(id__in=chunk, status=Delivery.Status.PENDING).update(
                    dispatched_at=None
                )
    return published


def deliveries_send_here(*, ids: list[int], batch_size: int | None = None) -> dict[str, int]:
    """Send these rows in this process, a batch at a time, as the batch tasks
    would (a digest build sends what it built, so the first digests leave
    while later ones are still being built instead of queueing behind every
    build). The rows are dispatched already, as for a task (the build writes
    them so, or marks them, in its transaction): the sweeper leaves them to
    this process, and takes them up again if it dies (claims are
    conditional; a row handed over is never sent twice). Returns counts per
    resulting status.
    """
    from notifier.sending import deliveries_send_batch

    if not ids:
        return {}
    batch_size = batch_size or settings.NOTIFIER_BATCH_SIZE
    counts: dict[str, int] = defaultdict(int)
    for chunk in chunked(sorted(ids), batch_size):
        try:
            sent = deliveries_send_batch(delivery_ids=chunk)
        except Exception:  # left pending or leased: the sweeper sends them
            logger.exception("Could not send a batch of %d deliveries here", len(chunk))
            continue
        for status, count in sent.items():
            counts[status] += count
    return dict(counts)


def delivery_dispatch_on_commit(delivery: Delivery) -> None:
    """Publish one delivery after the caller's transaction commits."""
    from django.db import transaction

    kind, pk = delivery.kind, delivery.pk
    transaction.on_commit(lambda: deliveries_dispatch(ids_by_kind={kind: [pk]}))


def group_by_kind(rows: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for pk, kind in rows:
        grouped[kind].append(pk)
    return grouped
