"""One step for each of a set of claimed enrollments, in one transaction.

``execution`` claims the rows and calls ``enrollments_step_run`` round after
round. Each round locks the rows still claimed under the batch's token, works
out who must leave (suppressed, goal reached), then runs each step for all the
enrollments at it at once: one insert of Deliveries, one attribute write, one
insert of ``JourneyStepRun`` rows (unique per enrollment and step: a step
never runs twice), one UPDATE per distinct new state. It all commits together
or not at all.
"""

from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import Max

from campaigns.segments import segment_q
from campaigns.services.memberships import list_membership_add, list_membership_remove
from journeys.models import Journey, JourneyEnrollment, JourneyStep, JourneyStepRun
from journeys.services.definitions import step_after
from notifier.models import Recipient, TopicEvent
from notifier.services.automated import deliveries_automated_send
from notifier.services.recipients import recipients_attribute_set
from notifier.services.suppressions import suppression_reasons

State = JourneyEnrollment.State
ExitReason = JourneyEnrollment.ExitReason
Kind = JourneyStep.Kind
Condition = JourneyStep.Condition


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
