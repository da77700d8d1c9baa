"""The sweeper (staff-initiated retries are ``outbox.deliveries_retry``).

The sweeper (beat, every ``NOTIFIER_SWEEP_SECONDS``) keeps the promise that
no Delivery stays ``sending`` forever and none waits forever in ``pending``:

1. claims whose lease expired (the worker died) are recovered from their
   hand-off journal (see ``notifier.sending.journal``), or, when Redis lost
   it, from the hand-off mark in the database (``notifier.sending.handoff``);
2. pending rows due at a time outside the stored range are failed (see
   ``unreadable.py``: such a row can only predate the range CHECK);
3. pending rows that are due and have no live task (never dispatched, a
   retry whose backoff has passed, or a task lost with Redis) are dispatched.

A row that cannot be read back is failed on its own (``deliveries_load``):
it never stops a recovery or a batch.

Retries wait in the database (``next_attempt_at``), never in Celery
countdowns, which Redis would redeliver after the visibility timeout.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from notifier.models import Delivery
from notifier.sending import journal
from notifier.sending.outcomes import UNKNOWN, Outcome, apply_outcome
from notifier.sending.persist import deliveries_write, outcomes_suppress
from notifier.services.dispatch import deliveries_dispatch, group_by_kind
from notifier.services.unreadable import deliveries_fail_out_of_range, deliveries_load

logger = logging.getLogger(__name__)

JOURNAL_LOST = (
    "The claim's hand-off journal was lost (Redis restarted without persistence?) after the "
    "message was marked as leaving; it may or may not have been sent."
)


def deliveries_recover_expired(*, max_claims: int = 200) -> dict[str, int]:
    """Recover rows whose claim's lease has expired. Returns counts by status."""
    now = timezone.now()
    tokens = list(
        Delivery.objects.filter(status=Delivery.Status.SENDING, lease_expires_at__lt=now)
        .order_by()  # the model's ordering would make DISTINCT return a token per row
        .values_list("claim_token", flat=True)
        .distinct()[:max_claims]
    )
    counts: dict[str, int] = {}
    for token in tokens:
        entries = journal.journal_recover(token)
        rows = deliveries_load(
            Delivery.objects.filter(claim_token=token, status=Delivery.Status.SENDING)
        )
        answered = []
        for delivery in rows:
            entry = None if entries is None else entries.get(delivery.id)
            if entries is None and str(delivery.handoff_token) == str(token):
                # The journal is lost; the database's hand-off mark says this
                # row may have left (sending.handoff).
                outcome = Outcome(UNKNOWN, error=JOURNAL_LOST, attempts=delivery.attempts + 1)
            elif entry is None:
                # Never handed over: due again at once, by another worker.
                delivery.status = Delivery.Status.PENDING
                delivery.claim_token = None
                delivery.lease_expires_at = None
                delivery.dispatched_at = None
                delivery.updated_at = now
                delivery.status_reason = (
                    "Recovered after its worker stopped; it is sent again."
                    if entries is not None
                    else "Recovered after its worker stopped and its journal was lost; it had "
                    "not been handed over, so it is sent again."
                )
                counts["pending"] = counts.get("pending", 0) + 1
                continue
            elif entry == journal.HANDED:
                outcome = Outcome(
                    UNKNOWN,
                    error="The worker stopped after handing the message over, before the answer was "
                    "recorded.",
                    attempts=delivery.attempts + 1,
                )
            else:
                outcome = Outcome.from_journal(entry)
            apply_outcome(delivery, outcome, now=now)
            answered.append((delivery, outcome))
            counts[delivery.status] = counts.get(delivery.status, 0) + 1
        deliveries_write(rows, claim_token=token)
        outcomes_suppress(answered)
        journal.journal_close(token)
        logger.warning("Recovered expired claim %s: %d rows", token, len(rows))
    return counts


def deliveries_dispatch_due(*, limit: int = 20_000) -> int:
    """Dispatch pending rows that are due and have no live task."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.NOTIFIER_REDISPATCH_SECONDS)
    rows = list(
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
        .order_by("next_attempt_at")
        .values_list("id", "kind")[:limit]
    )
    if not rows:
        return 0
    deliveries_dispatch(ids_by_kind=group_by_kind(rows))
    return len(rows)


SWEEP_LOCK_KEY = "notifier:sweep-lock"


def deliveries_sweep() -> dict[str, int]:
    """One sweep at a time (two beats, or a slow sweep overlapping the next
    tick, would only duplicate work: every step is safe to run twice)."""
    from uuid import uuid4

    from notifier.redis import get_redis

    r = get_redis()
    token = str(uuid4())
    if not r.set(SWEEP_LOCK_KEY, token, nx=True, ex=120):
        return {"skipped": 1}
    try:
        recovered = deliveries_recover_expired()
        unreadable = deliveries_fail_out_of_range()
        dispatched = deliveries_dispatch_due()
    finally:
        if r.get(SWEEP_LOCK_KEY) == token:
            r.delete(SWEEP_LOCK_KEY)
    counts = {"dispatched": dispatched, **{f"recovered_{k}": v for k, v in recovered.items()}}
    if unreadable:
        counts["failed_out_of_range"] = unreadable
    return counts
