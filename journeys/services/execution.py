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
3. **Step.** A batch runs in rounds: each round runs the current step of
   every enrollment it still holds, in one transaction with the rows locked
   and the claim checked: the steps' effects (Deliveries, attributes,
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
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from uuid import uuid4
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from campaigns.segments import segment_q
from campaigns.services.memberships import list_membership_add, list_membership_remove
from journeys.models import Journey, JourneyEnrollment, JourneyStep, JourneyStepRun
from journeys.services.definitions import step_after
from notifier.models import Recipient, TopicEvent
from notifier.services.automated import deliveries_automated_send
from notifier.services.recipients import recipients_attribute_set
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
    """Run the current step of one claimed enrollment (see ``enrollments_step_run``)."""
    outcomes = enrollments_step_run(
        ids=[enrollment_id], token=token, now=now, steps_cache=steps_cache
    )
    return outcomes[enrollment_id]


ENROLLMENT_FIELDS = [
    JourneyEnrollment._meta.get_field(name)
    for name in (
        "step",
        "state",
        "exit_reason",
        "due_at",
        "claim_token",
        "lease_expires_at",
        "dispatched_at",
        "finished_at",
    )
]


def enrollments_step_run(
    *, ids: list[int], token: str, now: datetime, steps_cache: dict | None = None
) -> dict[int, str]:
    """Run the current step of each claimed enrollment of ``ids``, all in one
    transaction, with the rows locked and the claim checked: the steps'
    effects, their ``JourneyStepRun`` rows and the advances commit together
    or not at all. A few queries per step kind, whatever the count.

    Returns each id's outcome: ``advanced`` (the next step is due at once and
    the claim is kept), ``waiting``, ``done``, ``exited``, ``held`` (journey
    not active) or ``lost`` (the claim is no longer ours).
    """
    steps_cache = {} if steps_cache is None else steps_cache
    outcomes: dict[int, str] = dict.fromkeys(ids, "lost")
    with transaction.atomic():
        rows = [
            e
            for e in JourneyEnrollment.objects.select_for_update()
            .filter(pk__in=ids, claim_token=token)
            .order_by("id")
            if e.state in JourneyEnrollment.LIVE_STATES
        ]
        journeys = Journey.objects.in_bulk({e.journey_id for e in rows})
        recipients = Recipient.objects.in_bulk({e.recipient_id for e in rows})
        reasons = _exit_reasons(rows, journeys, recipients)
        groups: dict[int, list[JourneyEnrollment]] = defaultdict(list)
        for enrollment in rows:
            journey = journeys[enrollment.journey_id]
            step = next(
                (s for s in _steps(journey.pk, steps_cache) if s.pk == enrollment.step_id), None
            )
            if journey.status != Journey.Status.ACTIVE:
                outcomes[enrollment.pk] = _finish_claim(enrollment, "held")
            elif enrollment.due_at is None or enrollment.due_at > now:
                outcomes[enrollment.pk] = _finish_claim(enrollment, "waiting")
            elif reasons.get(enrollment.pk):
                outcomes[enrollment.pk] = _exit(enrollment, reasons[enrollment.pk], now)
            elif step is None:
                outcomes[enrollment.pk] = _done(enrollment, now)
            else:
                groups[step.pk].append(enrollment)
        runs: list[JourneyStepRun] = []
        for group in groups.values():
            journey = journeys[group[0].journey_id]
            steps = _steps(journey.pk, steps_cache)
            step = next(s for s in steps if s.pk == group[0].step_id)
            outcomes.update(_execute(group, journey, recipients, step, steps, now, runs))
        JourneyStepRun.objects.bulk_create(runs)
        _write(rows)
    return outcomes


def _write(rows: list[JourneyEnrollment]) -> None:
    """Write the rows' new state: one UPDATE per distinct set of values (a
    round's rows mostly share theirs: the same next step, the same due time)."""
    by_values: dict[tuple, list[int]] = defaultdict(list)
    for enrollment in rows:
        values = tuple(getattr(enrollment, f.attname) for f in ENROLLMENT_FIELDS)
        by_values[values].append(enrollment.pk)
    for values, pks in by_values.items():
        JourneyEnrollment.objects.filter(pk__in=pks).update(
            **{f.attname: value for f, value in zip(ENROLLMENT_FIELDS, values, strict=True)}
        )


def _exit_reasons(rows, journeys, recipients) -> dict[int, str]:
    """Why each enrollment must leave before its step (absent: it stays)."""
    suppressed = suppression_reasons(recipients[e.recipient_id] for e in rows)
    topics = {journeys[e.journey_id].goal_topic_id for e in rows} - {None}
    last_event = {}
    if topics:
        last_event = {
            (r["recipient_id"], r["topic_id"]): r["last"]
            for r in TopicEvent.objects.filter(
                recipient_id__in={e.recipient_id for e in rows}, topic_id__in=topics
            )
            .values("recipient_id", "topic_id")
            .annotate(last=Max("created_at"))
        }
    reasons = {}
    for enrollment in rows:
        journey = journeys[enrollment.journey_id]
        attributes = recipients[enrollment.recipient_id].attributes or {}
        event = last_event.get((enrollment.recipient_id, journey.goal_topic_id))
        if enrollment.recipient_id in suppressed:
            reasons[enrollment.pk] = ExitReason.UNSUBSCRIBED
        elif (
            journey.goal_attribute
            and str(attributes.get(journey.goal_attribute)) == journey.goal_value
        ) or (event is not None and event >= enrollment.entered_at):
            reasons[enrollment.pk] = ExitReason.GOAL
    return reasons


def _execute(group, journey, recipients, step, steps, now, runs) -> dict[int, str]:
    """Run ``step`` for every enrollment of ``group`` (all at that step);
    appends their ``JourneyStepRun`` rows to ``runs``."""
    outcomes: dict[int, str] = {}
    if step.kind == Kind.WAIT:
        for enrollment in group:
            if enrollment.state == State.WAITING:
                # The wait is over (its run was recorded when it began).
                outcomes[enrollment.pk] = _advance(enrollment, step_after(steps, step), now)
                continue
            runs.append(JourneyStepRun(enrollment=enrollment, step=step, created_at=now))
            enrollment.state = State.WAITING
            time_zone = recipients[enrollment.recipient_id].time_zone
            enrollment.due_at = wait_end(step, time_zone, now)
            outcomes[enrollment.pk] = _finish_claim(enrollment, "waiting")
        return outcomes
    mine = {e.pk: JourneyStepRun(enrollment=e, step=step, created_at=now) for e in group}
    members = [recipients[e.recipient_id] for e in group]
    if step.kind == Kind.SEND:
        deliveries = deliveries_automated_send(
            template=step.template,
            recipients={f"journey:{e.pk}:{step.pk}": recipients[e.recipient_id] for e in group},
            context={"journey": {"name": journey.name, "step": step.position}},
        )
        for enrollment in group:
            mine[enrollment.pk].delivery = deliveries[f"journey:{enrollment.pk}:{step.pk}"]
    elif step.kind == Kind.BRANCH:
        holds = _condition_holds(group, recipients, step)
        for enrollment in group:
            mine[enrollment.pk].outcome = enrollment.pk in holds
    elif step.kind == Kind.SET_ATTRIBUTE:
        recipients_attribute_set(ids=[r.pk for r in members], name=step.attribute, value=step.value)
    elif step.kind == Kind.ADD_TO_LIST:
        for recipient in members:
            list_membership_add(contact_list=step.contact_list, recipient=recipient)
    elif step.kind == Kind.REMOVE_FROM_LIST:
        for recipient in members:
            list_membership_remove(contact_list=step.contact_list, recipient=recipient)
    runs.extend(mine.values())
    for enrollment in group:
        if step.kind == Kind.EXIT:
            outcomes[enrollment.pk] = _exit(enrollment, ExitReason.EXIT_STEP, now)
            continue
        run = mine[enrollment.pk]
        target = None
        if step.kind == Kind.BRANCH:
            target = step.then_position if run.outcome else step.else_position
        outcomes[enrollment.pk] = _advance(enrollment, step_after(steps, step, target), now)
    return outcomes


def _condition_holds(group, recipients, step) -> set[int]:
    """The enrollments of ``group`` for which the branch's condition holds."""
    if step.condition in (Condition.OPENED, Condition.CLICKED):
        # By position, not step id: a recipient moved to a newer version keeps
        # the runs of the version it came from.
        counters = JourneyStepRun.objects.filter(
            enrollment__in=group, step__position=step.condition_position, delivery__isnull=False
        ).values_list("enrollment_id", "delivery__opens", "delivery__clicks")
        # A click proves the message was opened, even when the open pixel was blocked.
        return {
            pk
            for pk, opens, clicks in counters
            if clicks > 0 or (step.condition == Condition.OPENED and opens > 0)
        }
    if step.condition == Condition.ATTRIBUTE:
        return {
            e.pk
            for e in group
            if str((recipients[e.recipient_id].attributes or {}).get(step.attribute)) == step.value
        }
    if step.condition == Condition.SEGMENT:
        inside = set(
            Recipient.objects.filter(pk__in=[e.recipient_id for e in group])
            .filter(segment_q(step.segment))
            .values_list("pk", flat=True)
        )
        return {e.pk for e in group if e.recipient_id in inside}
    return set()


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


# The helpers below change the row in memory; ``enrollments_step_run`` writes
# every row of the round in one bulk update before its transaction commits.


def _finish_claim(enrollment: JourneyEnrollment, outcome: str) -> str:
    enrollment.claim_token = None
    enrollment.lease_expires_at = None
    enrollment.dispatched_at = None
    return outcome


def _advance(enrollment: JourneyEnrollment, next_step: JourneyStep | None, now) -> str:
    if next_step is None:
        return _done(enrollment, now)
    enrollment.step = next_step
    enrollment.state = State.ACTIVE
    enrollment.due_at = now
    # The claim is kept: the batch runs the next step at once.
    return "advanced"


def _done(enrollment: JourneyEnrollment, now) -> str:
    enrollment.state = State.DONE
    enrollment.due_at = None
    enrollment.finished_at = now
    return _finish_claim(enrollment, "done")


def _exit(enrollment: JourneyEnrollment, reason: str, now) -> str:
    enrollment.state = State.EXITED
    enrollment.exit_reason = reason
    enrollment.due_at = None
    enrollment.finished_at = now
    return _finish_claim(enrollment, "exited")


def journeys_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's entry point: enter recipients from the polling triggers, then
    publish the due enrollments (those a killed worker held included, once
    their lease ran out)."""
    from journeys.services.triggers import triggers_poll

    now = now or timezone.now()
    entered = triggers_poll(now=now)
    return {"entered": sum(entered.values()), "dispatched": enrollments_dispatch_due(now=now)}
