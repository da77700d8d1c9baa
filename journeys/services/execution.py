"""Running journeys: claim due enrollments, execute one step each, advance.

The same machinery as the outbox's batches (``notifier.sending.batch``):

1. **Due.** An enrollment's next step is due at ``due_at`` (a wait is a due
   time in the database, never a Celery countdown). The tick finds due rows
   and publishes batch tasks; ``dispatched_at`` keeps it from publishing the
   same rows again until ``JOURNEYS_REDISPATCH_SECONDS`` pass (a lost task),
   unless a worker claimed them and its lease ran out (it died: published
   again at once). Publishing the same rows too often only fills the queue
   with batches that claim nothing.
2. **Claim.** A batch claims its rows with one conditional UPDATE carrying a
   fresh token and a lease; a row another worker holds under a live lease is
   not claimed. A killed worker's claims expire and the next tick claims the
   rows again.
3. **Step.** A batch runs in rounds: each round runs the current step of
   every enrollment it still holds (``steps.enrollments_step_run``), in one
   transaction with the rows locked and the claim checked: the steps' effects (Deliveries, attributes,
   memberships), their ``JourneyStepRun`` rows (unique per enrollment and
   step: a step never runs twice) and the advances commit together or not
   at all, in a few set-based queries. A worker killed anywhere leaves either
   the whole round done or none of it; a round that fails is run again one
   enrollment at a time, so one bad row holds back no other. A send step's
   Delivery carries the idempotency key ``journey:<enrollment>:<step>``, so
   even a step run again could not write a second email.

``now`` may be given (a driven clock, in tests and catch-up runs): due times
and waits are computed from it; leases always use the real clock.
"""

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from uuid import uuid4

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from journeys.models import Journey, JourneyEnrollment, JourneyStep
from journeys.services.steps import enrollment_step_run, enrollments_step_run, wait_end

logger = logging.getLogger(__name__)

# Steps one enrollment runs back to back in a batch (send, branch, send ...)
# before the batch moves on; a wait always ends the run.
MAX_STEPS_PER_CLAIM = 20


def _claimable(real_now: datetime) -> Q:
    return Q(claim_token__isnull=True) | Q(lease_expires_at__lt=real_now)


def enrollments_dispatch_due(*, now: datetime | None = None, limit: int = 50_000) -> int:
    """Publish batch tasks for the due enrollments of active journeys.
    Returns how many enrollments were published."""
    from journeys.tasks import run_enrollments

    now = now or timezone.now()
    real_now = timezone.now()
    stale = real_now - timedelta(seconds=settings.JOURNEYS_REDISPATCH_SECONDS)
    ids = list(
        JourneyEnrollment.objects.filter(
            state__in=JourneyEnrollment.LIVE_STATES,
            due_at__lte=now,
            journey__status=Journey.Status.ACTIVE,
        )
        .filter(_claimable(real_now))
        # Published again: never published; published long ago and never run
        # (a lost task); or claimed by a worker whose lease ran out (it died
        # holding the rows: its task is gone, no need to wait any longer).
        .filter(
            Q(dispatched_at__isnull=True)
            | Q(dispatched_at__lt=stale)
            | Q(lease_expires_at__lt=real_now)
        )
        .order_by("due_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    if not ids:
        return 0
    JourneyEnrollment.objects.filter(id__in=ids).update(dispatched_at=real_now)
    size = settings.JOURNEYS_BATCH_SIZE
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        try:
            run_enrollments.apply_async(
                args=[chunk, now.isoformat()], queue=settings.JOURNEYS_QUEUE
            )
        except Exception:  # broker down: the next tick publishes them again
            logger.exception("Could not publish a batch of %d enrollments", len(chunk))
            JourneyEnrollment.objects.filter(id__in=chunk).update(dispatched_at=None)
    return len(ids)


def enrollments_claim(*, ids: Iterable[int], now: datetime) -> tuple[str, list[int]]:
    """Claim the due, unclaimed rows among ``ids``; returns (token, claimed ids)."""
    token = uuid4()
    real_now = timezone.now()
    JourneyEnrollment.objects.filter(
        id__in=list(ids),
        state__in=JourneyEnrollment.LIVE_STATES,
        due_at__lte=now,
        journey__status=Journey.Status.ACTIVE,
    ).filter(_claimable(real_now)).update(
        claim_token=token,
        lease_expires_at=real_now + timedelta(seconds=settings.JOURNEYS_LEASE_SECONDS),
    )
    claimed = list(
        JourneyEnrollment.objects.filter(claim_token=token)
        .order_by("id")
        .values_list("id", flat=True)
    )
    return str(token), claimed


def enrollments_run_batch(*, ids: list[int], now: datetime | None = None) -> dict[str, int]:
    """Claim ``ids`` and run each claimed enrollment's due steps.

    Set-based: each round runs the current step of every enrollment still
    going, in one transaction (``enrollments_step_run``); those that advanced
    go round again, up to ``MAX_STEPS_PER_CLAIM`` steps.
    """
    now = now or timezone.now()
    token, claimed = enrollments_claim(ids=ids, now=now)
    counts: dict[str, int] = {"claimed": len(claimed)}
    steps_cache: dict[int, list[JourneyStep]] = {}
    going = claimed
    for _ in range(MAX_STEPS_PER_CLAIM):
        if not going:
            break
        outcomes = _run_round(going, token, now, steps_cache)
        for outcome in outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        going = [pk for pk in going if outcomes.get(pk) == "advanced"]
    for enrollment_id in going:
        _release(enrollment_id, token)
    return counts


def _run_round(ids: list[int], token: str, now: datetime, steps_cache: dict) -> dict[int, str]:
    try:
        return enrollments_step_run(ids=ids, token=token, now=now, steps_cache=steps_cache)
    except Exception:
        if len(ids) > 1:
            # The round's transaction rolled back: nothing of it happened.
            # Each enrollment again on its own, so one bad row does not hold
            # back the others.
            outcomes = {}
            for enrollment_id in ids:
                outcomes.update(_run_round([enrollment_id], token, now, steps_cache))
            return outcomes
        # The row is handed back and tried again by a later tick.
        logger.exception("Journey enrollment %s: step failed", ids[0])
        _release(ids[0], token)
        return {ids[0]: "failed"}


def _release(enrollment_id: int, token: str) -> None:
    JourneyEnrollment.objects.filter(pk=enrollment_id, claim_token=token).update(
        claim_token=None, lease_expires_at=None, dispatched_at=None
    )


def journeys_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's entry point: enter recipients from the polling triggers, then
    publish the due enrollments (those a killed worker held included, once
    their lease ran out)."""
    from journeys.services.triggers import triggers_poll

    now = now or timezone.now()
    entered = triggers_poll(now=now)
    return {"entered": sum(entered.values()), "dispatched": enrollments_dispatch_due(now=now)}


__all__ = [
    "enrollment_step_run",
    "enrollments_claim",
    "enrollments_dispatch_due",
    "enrollments_run_batch",
    "journeys_tick",
    "wait_end",
]
