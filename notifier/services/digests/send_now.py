"""Staff's "send now": a digest for chosen recipients or topics, at once."""

import logging
from datetime import UTC

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifier.models import Notification
from notifier.services.digests.scheduling import DigestBatch, digest_builds_publish
from notifier.services.digests.windows import DIGEST_FREQUENCIES

logger = logging.getLogger(__name__)


def digests_send_now(
    *, recipient_ids: list[int] | None = None, topic_ids: list[int] | None = None, now=None
) -> dict[str, int]:
    """Staff: send the digests of these recipients (or of everyone with a
    pending notification of these topics) now instead of at the top of the
    hour or their daily time. Each digest holds all the recipient's pending
    notifications of its frequency, as the scheduled one would have.

    The window is this moment (``now-<UTC timestamp>``): pressing twice in the
    same second sends once; the scheduled digest later finds nothing left.
    Returns how many recipients and build tasks.
    """
    now = now or timezone.now()
    pending = Notification.objects.filter(
        included_at__isnull=True, frequency__in=DIGEST_FREQUENCIES
    )
    if recipient_ids is not None:
        pending = pending.filter(recipient_id__in=recipient_ids)
    if topic_ids is not None:
        pending = pending.filter(topic_id__in=topic_ids)
    window = f"now-{now.astimezone(UTC):%Y%m%dT%H%M%S}"
    size = settings.NOTIFIER_DIGEST_BATCH_SIZE
    batches = []
    for frequency in DIGEST_FREQUENCIES:
        ids = sorted(
            set(pending.filter(frequency=frequency).values_list("recipient_id", flat=True))
        )
        batches += [
            DigestBatch(ids[i : i + size], frequency, window, now) for i in range(0, len(ids), size)
        ]
    if batches:
        transaction.on_commit(lambda: digest_builds_publish(batches))
    recipients = sum(len(b.recipient_ids) for b in batches)
    logger.info("Digests sent now: %d recipients in %d tasks", recipients, len(batches))
    return {"recipients": recipients, "tasks": len(batches)}
