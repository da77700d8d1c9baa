"""Celery entry points for campaigns: ids in, one service call each.

Batches run on the ``campaigns`` queue; launching, closing and maintenance
on ``maintenance`` so they never wait behind a large run's batches. All are
safe to run twice (launches lock the run, claims are conditional).
"""

import logging

from celery import shared_task

from campaigns.errors import CampaignError
from campaigns.models import CampaignRun
from campaigns.services.abtests import run_ab_send_winner, run_ab_tests_decide_due
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import (
    campaign_run_finalise,
    campaign_run_launch,
    campaign_run_send_batch,
    campaign_runs_maintain,
)

logger = logging.getLogger(__name__)


@shared_task(name="campaigns.launch_campaign", acks_late=True, ignore_result=True)
def launch_campaign(campaign_id: int) -> int | None:
    """Beat's entry point: a new run of the campaign, launched here."""
    run = campaign_run_create(campaign_id=campaign_id, trigger=CampaignRun.Trigger.SCHEDULE)
    if run is None:
        return None
    campaign_run_launch(run_id=run.pk)
    return run.pk


@shared_task(name="campaigns.launch_run", acks_late=True, ignore_result=True)
def launch_run(run_id: int) -> None:
    campaign_run_launch(run_id=run_id)


@shared_task(name="campaigns.send_run_batch", acks_late=True, reject_on_worker_lost=True)
def send_run_batch(run_id: int, first_id: int, last_id: int) -> dict[str, int]:
    return campaign_run_send_batch(run_id=run_id, first_id=first_id, last_id=last_id)


@shared_task(name="campaigns.finish_run", acks_late=True, ignore_result=True)
def finish_run(run_id: int) -> bool:
    """The chord callback: close the run if all its rows are done."""
    return campaign_run_finalise(run_id=run_id)


@shared_task(name="campaigns.maintain_runs", acks_late=True, ignore_result=True)
def maintain_runs() -> dict[str, int]:
    return campaign_runs_maintain()


@shared_task(name="campaigns.send_ab_winner", acks_late=True, ignore_result=True)
def send_ab_winner(run_id: int) -> int:
    """The A/B winner staff chose, to the rest of the audience. A run paused
    or cancelled since the choice is not sent now (beat sends it once the
    run runs again)."""
    try:
        return run_ab_send_winner(run_id=run_id)
    except CampaignError as exc:
        logger.warning("Run %s: the chosen A/B winner waits: %s", run_id, exc)
        return 0


@shared_task(name="campaigns.decide_ab_tests", acks_late=True, ignore_result=True)
def decide_ab_tests() -> dict[str, int]:
    """Beat: send the winners of A/B tests whose wait is over."""
    return run_ab_tests_decide_due()
