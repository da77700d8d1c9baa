"""Running journeys: claim due enrollments, execute one step each, advance.

The same machinery as the outbox's batches (``notifier.sending.batch``):

1. **Due.** An enrollment's next step is due at ``due_at`` (a wait is a due
   time in the database, never a Celery countdown). The tick finds due rows
   and publishes batch tasks; ``dispatched_at`` keeps it from publishing the
   same rows again until ``JOURNEYS_REDISPATCH_SECONDS`` pass (a lost task).
2. **Claim.** A batch claims its rows with one conditional UPDATE carrying a
   fresh token and a lease; a row another worker holds under a live lease is
   not claimed. A killed worker's claims expire and the next tick claims the
   rows again.
3. **Step.** Each step runs in one transaction with the row locked and the
   claim checked: its effect (a Delivery, an attribute, a membership), its
   ``JourneyStepRun`` (unique per enrollment and step: a step never runs
   twice) and the advance commit together or not at all. A worker killed
   anywhere leaves either the whole step done or none of it. A send step's
   Delivery carries the idempotency key ``journey:<enrollment>:<step>``, so
   even a step run again could not write a second email.

``now`` may be given (a driven clock, in tests and catch-up runs): due times
and waits are computed from it; leases always use the real clock.
"""

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from uuid import uuid4
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from campaigns.segments import segment_q
from campaigns.services.memberships import list_membership_add, list_membership_remove
from journeys.models import Journey, JourneyEnrollment, JourneyStep, JourneyStepRun
from journeys.services.definitions import step_after
from notifier.models import Recipient, TopicEvent
from notifier.services.automated import delivery_automated_send
from notifier.services.recipients import recipient_attribute_set
from notifier.services.suppressions import suppression_reasons

logger = logging.getLogger(__name__)

State = JourneyEnrollment.State
ExitReason = JourneyEnrollment.ExitReason
Kind = JourneyStep.Kind
Condition = JourneyStep.Condition

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
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
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
    """Claim ``ids`` and run each claimed enrollment's due steps."""
    now = now or timezone.now()
    token, claimed = enrollments_claim(ids=ids, now=now)
    counts: dict[str, int] = {"claimed": len(claimed)}
    steps_cache: dict[int, list[JourneyStep]] = {}
    for enrollment_id in claimed:
        try:
            for _ in range(MAX_STEPS_PER_CLAIM):
                outcome = enrollment_step_run(
                    enrollment_id=enrollment_id, token=token, now=now, steps_cache=steps_cache
                )
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome != "advanced":
                    break
            else:
                _release(enrollment_id, token)
        except Exception:
            # The step's transaction rolled back: nothing of it happened. The
            # row is handed back and tried again by a later tick; the others
            # of the batch go on.
            logger.exception("Journey enrollment %s: step failed", enrollment_id)
            counts["failed"] = counts.get("failed", 0) + 1
            _release(enrollment_id, token)
    return counts


def _release(enrollment_id: int, token: str) -> None:
    JourneyEnrollment.objects.filter(pk=enrollment_id, claim_token=token).update(
        claim_token=None, lease_expires_at=None, dispatched_at=None
    )


def _steps(journey_id: int, cache: dict) -> list[JourneyStep]:
    if journey_id not in cache:
        cache[journey_id] = list(
            JourneyStep.objects.filter(journey_id=journey_id)
            .select_related("template", "segment", "contact_list")
            .order_by("position")
        )
    return cache[journey_id]


def enrollment_step_run(
    *, enrollment_id: int, token: str, now: datetime, steps_cache: dict | None = None
) -> str:
    """Run the current step of one claimed enrollment, in one transaction.

    Returns ``advanced`` (the next step is due at once and the claim is kept),
    ``waiting``, ``done``, ``exited``, ``held`` (journey not active) or
    ``lost`` (the claim is no longer ours).
    """
    steps_cache = {} if steps_cache is None else steps_cache
    with transaction.atomic():
        enrollment = (
            JourneyEnrollment.objects.select_for_update()
            .filter(pk=enrollment_id, claim_token=token)
            .first()
        )
        if enrollment is None or enrollment.state not in JourneyEnrollment.LIVE_STATES:
            return "lost"
        journey = Journey.objects.get(pk=enrollment.journey_id)
        if journey.status != Journey.Status.ACTIVE:
            _finish_claim(enrollment)
            return "held"
        if enrollment.due_at is None or enrollment.due_at > now:
            _finish_claim(enrollment)
            return "waiting"
        recipient = Recipient.objects.get(pk=enrollment.recipient_id)
        reason = _exit_reason(enrollment, journey, recipient)
        if reason:
            return _exit(enrollment, reason, now)
        steps = _steps(journey.pk, steps_cache)
        step = next((s for s in steps if s.pk == enrollment.step_id), None)
        if step is None:
            return _done(enrollment, now)
        return _execute(enrollment, journey, recipient, step, steps, now)


def _exit_reason(enrollment: JourneyEnrollment, journey: Journey, recipient: Recipient) -> str:
    if suppression_reasons([recipient]):
        return ExitReason.UNSUBSCRIBED
    attributes = recipient.attributes or {}
    if journey.goal_attribute and str(attributes.get(journey.goal_attribute)) == journey.goal_value:
        return ExitReason.GOAL
    if (
        journey.goal_topic_id
        and TopicEvent.objects.filter(
            recipient_id=recipient.pk,
            topic_id=journey.goal_topic_id,
            created_at__gte=enrollment.entered_at,
        ).exists()
    ):
        return ExitReason.GOAL
    return ""


def _execute(enrollment, journey, recipient, step, steps, now) -> str:
    target = None
    run = JourneyStepRun(enrollment=enrollment, step=step, created_at=now)
    if step.kind == Kind.WAIT:
        if enrollment.state == State.WAITING:
            # The wait is over (its run was recorded when it began).
            return _advance(enrollment, step_after(steps, step), now)
        run.save()
        enrollment.state = State.WAITING
        enrollment.due_at = wait_end(step, recipient.time_zone, now)
        _finish_claim(enrollment)
        return "waiting"
    if step.kind == Kind.SEND:
        run.delivery = delivery_automated_send(
            recipient=recipient,
            template=step.template,
            idempotency_key=f"journey:{enrollment.pk}:{step.pk}",
            context={"journey": {"name": journey.name, "step": step.position}},
        )
    elif step.kind == Kind.BRANCH:
        run.outcome = _condition_holds(enrollment, recipient, step, steps)
        target = step.then_position if run.outcome else step.else_position
    elif step.kind == Kind.SET_ATTRIBUTE:
        recipient_attribute_set(recipient=recipient, name=step.attribute, value=step.value)
    elif step.kind == Kind.ADD_TO_LIST:
        list_membership_add(contact_list=step.contact_list, recipient=recipient)
    elif step.kind == Kind.REMOVE_FROM_LIST:
        list_membership_remove(contact_list=step.contact_list, recipient=recipient)
    run.save()
    if step.kind == Kind.EXIT:
        return _exit(enrollment, ExitReason.EXIT_STEP, now)
    return _advance(enrollment, step_after(steps, step, target), now)


def _condition_holds(enrollment, recipient, step, steps) -> bool:
    if step.condition in (Condition.OPENED, Condition.CLICKED):
        # By position, not step id: a recipient moved to a newer version keeps
        # the runs of the version it came from.
        run = (
            JourneyStepRun.objects.filter(
                enrollment=enrollment, step__position=step.condition_position
            )
            .select_related("delivery")
            .first()
        )
        if run is None or run.delivery is None:
            return False
        counter = run.delivery.opens if step.condition == Condition.OPENED else run.delivery.clicks
        # A click proves the message was opened, even when the open pixel was blocked.
        return counter > 0 or (step.condition == Condition.OPENED and run.delivery.clicks > 0)
    if step.condition == Condition.ATTRIBUTE:
        return str((recipient.attributes or {}).get(step.attribute)) == step.value
    if step.condition == Condition.SEGMENT:
        return Recipient.objects.filter(pk=recipient.pk).filter(segment_q(step.segment)).exists()
    return False


def wait_end(step: JourneyStep, time_zone: str, now: datetime) -> datetime:
    """When a wait step that starts at ``now`` ends: after its duration, then
    at the next local time of day and/or weekday in ``time_zone``."""
    end = now + timedelta(seconds=step.wait_seconds or 0)
    if step.wait_until_time is None and step.wait_weekday is None:
        return end
    try:
        zone = ZoneInfo(time_zone)
    except Exception:
        zone = ZoneInfo("UTC")
    local = end.astimezone(zone)
    at = step.wait_until_time or time(0, 0)
    day = local.date()
    for _ in range(8):
        candidate = datetime.combine(day, at, tzinfo=zone)
        weekday_ok = step.wait_weekday is None or candidate.weekday() == step.wait_weekday
        if candidate >= local and weekday_ok:
            return candidate.astimezone(UTC)
        day += timedelta(days=1)
    return local.astimezone(UTC)  # unreachable: a week holds every weekday


def _finish_claim(enrollment: JourneyEnrollment) -> None:
    enrollment.claim_token = None
    enrollment.lease_expires_at = None
    enrollment.dispatched_at = None
    enrollment.save()


def _advance(enrollment: JourneyEnrollment, next_step: JourneyStep | None, now) -> str:
    if next_step is None:
        return _done(enrollment, now)
    enrollment.step = next_step
    enrollment.state = State.ACTIVE
    enrollment.due_at = now
    # The claim is kept: the batch runs the next step at once.
    enrollment.save()
    return "advanced"


def _done(enrollment: JourneyEnrollment, now) -> str:
    enrollment.state = State.DONE
    enrollment.due_at = None
    enrollment.finished_at = now
    _finish_claim(enrollment)
    return "done"


def _exit(enrollment: JourneyEnrollment, reason: str, now) -> str:
    enrollment.state = State.EXITED
    enrollment.exit_reason = reason
    enrollment.due_at = None
    enrollment.finished_at = now
    _finish_claim(enrollment)
    return "exited"


def journeys_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's entry point: enter recipients from the polling triggers, then
    publish the due enrollments (those a killed worker held included, once
    their lease ran out)."""
    from journeys.services.triggers import triggers_poll

    now = now or timezone.now()
    entered = triggers_poll(now=now)
    return {"entered": sum(entered.values()), "dispatched": enrollments_dispatch_due(now=now)}
