"""A journey's life: activate, pause, resume, stop; versions.

Editing a journey that has run makes a new version (a draft copy of the
journey and its steps, same lineage, version + 1). Activating it retires the
previous active version: that one takes no new recipients, and those inside
finish the version they started, unless staff move them
(``enrollments_move_to_version``).
"""

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from campaigns.models import ListMembership
from journeys.models import Journey, JourneyEnrollment, JourneyStep
from journeys.services.definitions import journey_problems
from journeys.services.enrollments import enrollments_exit
from notifier.models import TopicEvent


class JourneyStateError(ValueError):
    """The journey cannot make this change in its current state."""


def _cursor_start(journey: Journey) -> int:
    """Where a polling trigger starts: after everything that happened before
    activation (a journey on "joins a list" does not take the list's old members)."""
    if journey.trigger == Journey.Trigger.LIST_JOINED and journey.trigger_list_id:
        last = ListMembership.objects.filter(contact_list_id=journey.trigger_list_id)
        return last.aggregate(m=Max("id"))["m"] or 0
    if journey.trigger == Journey.Trigger.EVENT and journey.trigger_topic_id:
        last = TopicEvent.objects.filter(topic_id=journey.trigger_topic_id)
        return last.aggregate(m=Max("id"))["m"] or 0
    return 0


def journey_activate(*, journey: Journey) -> Journey:
    """Draft -> active. Retires the lineage's other active or paused version."""
    if journey.status != Journey.Status.DRAFT:
        raise JourneyStateError(f"Only a draft can be activated; this one is {journey.status}.")
    problems = journey_problems(journey)
    if problems:
        raise JourneyStateError(" ".join(problems))
    with transaction.atomic():
        now = timezone.now()
        previous = Journey.objects.filter(lineage=journey.lineage, retired_at__isnull=True).exclude(
            pk=journey.pk
        )
        # The new version carries on from the old one's trigger cursor, so an
        # event or a list join is not taken by both.
        cursor = previous.filter(trigger=journey.trigger).aggregate(m=Max("trigger_cursor"))["m"]
        previous.exclude(status=Journey.Status.DRAFT).update(retired_at=now)
        journey.status = Journey.Status.ACTIVE
        journey.trigger_cursor = cursor if cursor is not None else _cursor_start(journey)
        journey.save(update_fields=["status", "trigger_cursor", "updated_at"])
    return journey


def journey_pause(*, journey: Journey) -> Journey:
    """Active -> paused: no step runs and no one enters until resumed (batches
    in flight finish the step they are in)."""
    if journey.status != Journey.Status.ACTIVE:
        raise JourneyStateError("Only an active journey can be paused.")
    journey.status = Journey.Status.PAUSED
    journey.save(update_fields=["status", "updated_at"])
    return journey


def journey_resume(*, journey: Journey) -> Journey:
    """Paused -> active; waits that ended meanwhile are due at once."""
    if journey.status != Journey.Status.PAUSED:
        raise JourneyStateError("Only a paused journey can be resumed.")
    journey.status = Journey.Status.ACTIVE
    journey.save(update_fields=["status", "updated_at"])
    return journey


def journey_stop(*, journey: Journey) -> int:
    """Stop for good: everyone inside leaves. Returns how many left."""
    if journey.status == Journey.Status.STOPPED:
        return 0
    with transaction.atomic():
        journey.status = Journey.Status.STOPPED
        journey.save(update_fields=["status", "updated_at"])
        live = JourneyEnrollment.objects.filter(
            journey=journey, state__in=JourneyEnrollment.LIVE_STATES
        ).values_list("id", flat=True)
        return enrollments_exit(ids=list(live), reason=JourneyEnrollment.ExitReason.STOPPED)


STEP_FIELDS = [f.name for f in JourneyStep._meta.concrete_fields if f.name not in ("id", "journey")]


def journey_new_version(*, journey: Journey) -> Journey:
    """A draft copy of ``journey`` and its steps, to edit and then activate.
    Returns the existing draft of the lineage if there is one."""
    draft = Journey.objects.filter(lineage=journey.lineage, status=Journey.Status.DRAFT).first()
    if draft is not None:
        return draft
    with transaction.atomic():
        latest = Journey.objects.filter(lineage=journey.lineage).aggregate(m=Max("version"))["m"]
        copy = Journey.objects.get(pk=journey.pk)
        copy.pk = None
        copy.version = latest + 1
        copy.status = Journey.Status.DRAFT
        copy.retired_at = None
        copy.trigger_cursor = 0
        copy.save()
        JourneyStep.objects.bulk_create(
            [
                JourneyStep(journey=copy, **{f: getattr(s, f) for f in STEP_FIELDS})
                for s in journey.steps.order_by("position")
            ]
        )
    return copy


def enrollments_move_to_version(*, source: Journey, target: Journey) -> int:
    """Staff: move the recipients inside ``source`` to the same position in
    ``target`` (a later version of the same journey); a recipient whose step
    has no counterpart goes to the next step there. Waits keep their due time.
    Returns how many moved."""
    if source.lineage != target.lineage or target.version <= source.version:
        raise JourneyStateError("Move recipients to a later version of the same journey.")
    if target.status not in (Journey.Status.ACTIVE, Journey.Status.PAUSED):
        raise JourneyStateError("Activate the new version before moving recipients to it.")
    target_steps = list(target.steps.order_by("position"))
    moved = 0
    with transaction.atomic():
        live = (
            JourneyEnrollment.objects.select_for_update(of=("self",))
            .filter(journey=source, state__in=JourneyEnrollment.LIVE_STATES)
            .select_related("step")
        )
        for enrollment in live:
            position = enrollment.step.position if enrollment.step else 0
            step = next((s for s in target_steps if s.position >= position), None)
            if step is None:
                continue
            if (
                step.kind != JourneyStep.Kind.WAIT
                and enrollment.state == JourneyEnrollment.State.WAITING
            ):
                enrollment.state = JourneyEnrollment.State.ACTIVE
            enrollment.journey = target
            enrollment.step = step
            enrollment.claim_token = None
            enrollment.lease_expires_at = None
            enrollment.save()
            moved += 1
    return moved
