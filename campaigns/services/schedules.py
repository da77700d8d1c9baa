"""The one django-celery-beat entry a campaign owns.

``campaign_schedule_sync`` is the only writer: it makes the PeriodicTask
match the campaign (a clocked one-off task for "once at", a crontab in the
campaign's time zone for recurring ones) or removes it. The task is named
after the campaign, so there is never more than one; saving it bumps
django-celery-beat's change marker, so beat picks edits up without a restart.
"""

import json

from django.db import transaction
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from campaigns.models import Campaign

LAUNCH_TASK = "campaigns.launch_campaign"
ARMED = (Campaign.Status.SCHEDULED, Campaign.Status.RUNNING, Campaign.Status.PAUSED)


def periodic_task_name(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def _crontab_for(campaign: Campaign) -> CrontabSchedule:
    fields = {
        "minute": campaign.cron_minute,
        "hour": campaign.cron_hour,
        "day_of_month": campaign.cron_day_of_month,
        "month_of_year": campaign.cron_month_of_year,
        "day_of_week": campaign.cron_day_of_week,
        "timezone": campaign.schedule_time_zone,
    }
    return CrontabSchedule.objects.filter(**fields).first() or CrontabSchedule.objects.create(
        **fields
    )


def _drop_unused(clocked_id: int | None, crontab_id: int | None) -> None:
    if clocked_id:
        ClockedSchedule.objects.filter(pk=clocked_id, periodictask__isnull=True).delete()
    if crontab_id:
        CrontabSchedule.objects.filter(pk=crontab_id, periodictask__isnull=True).delete()


@transaction.atomic
def campaign_schedule_sync(*, campaign: Campaign) -> PeriodicTask | None:
    """Create, update or delete the campaign's PeriodicTask to match it."""
    name = periodic_task_name(campaign.pk)
    task = PeriodicTask.objects.select_for_update().filter(name=name).first()
    armed = campaign.schedule != Campaign.Schedule.NONE and campaign.status in ARMED
    if campaign.schedule == Campaign.Schedule.ONCE and campaign.send_at is None:
        armed = False
    # Only scheduling arms a campaign; a run (even of a crontab campaign
    # launched by hand) keeps an existing entry but never creates one.
    if task is None and campaign.status != Campaign.Status.SCHEDULED:
        armed = False
    old_clocked = task.clocked_id if task else None
    old_crontab = task.crontab_id if task else None

    if not armed:
        if task is not None:
            task.delete()
            _drop_unused(old_clocked, old_crontab)
        if campaign.periodic_task_id is not None:
            Campaign.objects.filter(pk=campaign.pk).update(periodic_task=None)
            campaign.periodic_task = None
        return None

    task = task or PeriodicTask(name=name)
    task.task = LAUNCH_TASK
    task.args = json.dumps([campaign.pk])
    task.kwargs = "{}"
    task.queue = "maintenance"
    task.description = f"Launches the campaign {campaign.name!r}"
    if campaign.schedule == Campaign.Schedule.ONCE:
        clocked = task.clocked or ClockedSchedule()
        clocked.clocked_time = campaign.send_at
        clocked.save()
        task.clocked, task.crontab, task.one_off = clocked, None, True
        # A one-off task beat has run is disabled by beat; a new time re-arms it.
        task.enabled = campaign.status == Campaign.Status.SCHEDULED or task.enabled
        if campaign.status == Campaign.Status.SCHEDULED:
            task.last_run_at = None
    else:
        task.clocked, task.crontab, task.one_off = None, _crontab_for(campaign), False
        task.enabled = True
    task.save()
    _drop_unused(
        old_clocked if old_clocked != task.clocked_id else None,
        old_crontab if old_crontab != task.crontab_id else None,
    )
    if campaign.periodic_task_id != task.pk:
        Campaign.objects.filter(pk=campaign.pk).update(periodic_task=task)
        campaign.periodic_task = task
    return task


def campaign_schedule_remove(*, campaign: Campaign) -> None:
    """Remove the campaign's beat entry whatever its state (before deleting it)."""
    task = PeriodicTask.objects.filter(name=periodic_task_name(campaign.pk)).first()
    if task is not None:
        clocked, crontab = task.clocked_id, task.crontab_id
        task.delete()
        _drop_unused(clocked, crontab)
