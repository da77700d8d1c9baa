"""Celery entry points for journeys: ids and times in, one service call each.

The tick runs on ``maintenance``; step batches on ``JOURNEYS_QUEUE``. Both
are safe to run twice (claims are conditional; a step's run is unique).
"""

from datetime import datetime

from celery import shared_task

from journeys.services.execution import enrollments_run_batch, journeys_tick


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@shared_task(name="journeys.tick", acks_late=True, ignore_result=True)
def tick(now: str | None = None) -> dict[str, int]:
    return journeys_tick(now=_moment(now))


@shared_task(name="journeys.run_enrollments", acks_late=True, reject_on_worker_lost=True)
def run_enrollments(enrollment_ids: list[int], now: str | None = None) -> dict[str, int]:
    return enrollments_run_batch(ids=enrollment_ids, now=_moment(now))
