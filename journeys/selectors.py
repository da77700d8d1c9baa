"""Reads for the admin: per-step statistics of a journey version."""

from django.db.models import Count, Q

from journeys.models import Journey, JourneyEnrollment, JourneyStep, JourneyStepRun
from notifier.models import Delivery

SENT_STATUSES = [
    Delivery.Status.SENT,
    Delivery.Status.DELIVERED,
    Delivery.Status.BOUNCED,
    Delivery.Status.COMPLAINED,
]
STAT_NAMES = ["entered", "waiting", "sent", "opened", "clicked", "converted", "exited"]


def journey_step_stats(*, journey: Journey) -> dict[int, dict[str, int]]:
    """For each step id: entered (ran it), waiting (in it now), sent, opened,
    clicked (its emails), converted (reached the goal after it), exited
    (left the journey at it, for any reason other than finishing). Four
    grouped queries whatever the journey's size."""
    stats = {s.pk: dict.fromkeys(STAT_NAMES, 0) for s in journey.steps.all()}
    runs = (
        JourneyStepRun.objects.filter(step__journey=journey)
        .values("step_id")
        .annotate(
            entered=Count("id"),
            sent=Count("id", filter=Q(delivery__status__in=SENT_STATUSES)),
            opened=Count("id", filter=Q(delivery__opens__gt=0) | Q(delivery__clicks__gt=0)),
            clicked=Count("id", filter=Q(delivery__clicks__gt=0)),
            converted=Count(
                "id", filter=Q(enrollment__exit_reason=JourneyEnrollment.ExitReason.GOAL)
            ),
        )
    )
    for row in runs:
        stats[row.pop("step_id")].update(row)
    at_step = (
        JourneyEnrollment.objects.filter(step__journey=journey)
        .values("step_id")
        .annotate(
            waiting=Count("id", filter=Q(state=JourneyEnrollment.State.WAITING)),
            exited=Count("id", filter=Q(state=JourneyEnrollment.State.EXITED)),
        )
    )
    for row in at_step:
        stats[row.pop("step_id")].update(row)
    return stats


def journey_totals(*, journey: Journey) -> dict[str, int]:
    """Enrollments of this version by state."""
    counts = dict(
        journey.enrollments.values_list("state").annotate(n=Count("id")).values_list("state", "n")
    )
    return {state: counts.get(state, 0) for state in JourneyEnrollment.State.values}


def journey_steps(*, journey: Journey) -> list[JourneyStep]:
    return list(
        journey.steps.select_related("template", "segment", "contact_list").order_by("position")
    )
