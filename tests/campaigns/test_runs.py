"""Run services without a worker: schedules, guard, closing, retries."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignRun
from campaigns.services.campaigns import (
    campaign_delete,
    campaign_launch_now,
    campaign_run_create,
    campaign_save,
    campaign_schedule,
)
from campaigns.services.runs import (
    campaign_run_cancel,
    campaign_run_finalise,
    campaign_run_launch,
    campaign_run_pause,
    campaign_run_resume,
    campaign_run_retry,
    campaign_runs_maintain,
)
from notifier.models import Delivery
from notifier.sending.batch import GroupVerdict, group_verdicts
from tests.campaigns.factories import CampaignFactory, ContactListFactory, add_members
from tests.notifier.factories import RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign():
    contact_list = ContactListFactory()
    add_members(contact_list, RecipientFactory.create_batch(5))
    campaign = CampaignFactory()
    campaign.contact_lists.set([contact_list])
    return campaign


def _launched(campaign) -> CampaignRun:
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    return campaign_run_launch(run_id=run.pk)


def test_sync_never_duplicates_or_orphans(campaign):
    campaign.schedule = "crontab"
    campaign_schedule(campaign=campaign)
    for _ in range(3):
        campaign_save(campaign=campaign)
    assert PeriodicTask.objects.filter(task="campaigns.launch_campaign").count() == 1
    campaign.schedule = "once"
    campaign.send_at = timezone.now() + timedelta(hours=1)
    campaign_save(campaign=campaign)
    (task,) = PeriodicTask.objects.filter(task="campaigns.launch_campaign")
    assert task.clocked and task.one_off
    assert not CrontabSchedule.objects.filter(periodictask__isnull=True).exists()
    campaign.schedule = "none"
    campaign_save(campaign=campaign)
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"
    assert not PeriodicTask.objects.filter(task="campaigns.launch_campaign").exists()
    assert not ClockedSchedule.objects.exists()


def test_schedule_refuses_a_time_in_the_past(campaign):
    campaign.schedule = "once"
    campaign.send_at = timezone.now() - timedelta(minutes=1)
    with pytest.raises(CampaignError, match="in the past"):
        campaign_schedule(campaign=campaign)
    assert not PeriodicTask.objects.filter(task="campaigns.launch_campaign").exists()


def test_one_off_campaign_is_done_and_unscheduled_after_its_run(campaign, fan_outs):
    campaign.schedule = "once"
    campaign.send_at = timezone.now() + timedelta(hours=1)
    campaign_schedule(campaign=campaign)
    run = campaign_run_create(campaign_id=campaign.pk, trigger="schedule")
    campaign_run_launch(run_id=run.pk)
    Delivery.objects.filter(run_id=run.pk).update(status="sent")
    assert campaign_run_finalise(run_id=run.pk)
    campaign.refresh_from_db()
    assert campaign.status == "done" and campaign.periodic_task is None
    assert not PeriodicTask.objects.filter(task="campaigns.launch_campaign").exists()
    # A late duplicate tick does nothing.
    assert campaign_run_create(campaign_id=campaign.pk, trigger="schedule") is None


def test_one_active_run_at_a_time(campaign, fan_outs):
    _launched(campaign)
    with pytest.raises(CampaignError, match="still going"):
        campaign_launch_now(campaign=campaign)
    assert campaign_run_create(campaign_id=campaign.pk, trigger="schedule") is None


def test_campaign_whose_context_makes_the_template_run_away_cannot_launch(campaign):
    campaign.template.html_body = "{% for a in s %}" * 3 + "{% endfor %}" * 3
    campaign.template.save()
    campaign.context = {"s": "x" * 200}
    campaign.save()
    with pytest.raises(CampaignError, match="NOTIFIER_RENDER_MAX_STEPS"):
        campaign_launch_now(campaign=campaign)
    assert not CampaignRun.objects.exists()


def test_campaign_without_audience_cannot_launch():
    campaign = CampaignFactory()
    with pytest.raises(CampaignError, match="at least one contact list or segment"):
        campaign_launch_now(campaign=campaign)
    assert not CampaignRun.objects.exists()


def test_batches_read_the_run_state_from_its_delivery_group(campaign, fan_outs):
    run = _launched(campaign)
    assert group_verdicts({run.pk, 999_999}) == {}  # running, and not a group
    campaign_run_pause(run=run)
    assert group_verdicts({run.pk}) == {run.pk: GroupVerdict.PAUSE}
    campaign_run_resume(run=run)
    assert group_verdicts({run.pk}) == {}
    campaign_run_cancel(run=run)
    assert group_verdicts({run.pk}) == {run.pk: GroupVerdict.CANCEL}


def test_pause_holds_and_resume_releases(campaign, fan_outs):
    run = _launched(campaign)
    assert campaign_run_pause(run=run) == 5
    assert Delivery.objects.filter(run_id=run.pk, next_attempt_at__isnull=True).count() == 5
    with pytest.raises(CampaignError):
        campaign_run_pause(run=run)
    assert not campaign_run_finalise(run_id=run.pk)  # held rows keep it open
    assert campaign_run_resume(run=run) == 5
    assert Delivery.objects.filter(run_id=run.pk, next_attempt_at__isnull=True).count() == 0


def test_maintenance_closes_a_run_whose_callback_never_came(campaign, fan_outs):
    run = _launched(campaign)
    Delivery.objects.filter(run_id=run.pk).update(status="sent")  # the chord callback was lost
    assert campaign_runs_maintain() == {
        "recounted": 0,
        "closed": 1,
        "launched": 0,
        "released": 0,
        "failed": 0,
    }
    run.refresh_from_db()
    assert run.status == "done" and run.totals["sent"] == 5 and run.totals["total"] == 5


def test_maintenance_recounts_a_closed_run_whose_rows_in_doubt_were_settled(campaign, fan_outs):
    """The in-doubt resolver settles rows after their run closed: the run's
    written totals follow (and a run without such rows is not rewritten)."""
    run = _launched(campaign)
    rows = Delivery.objects.filter(run_id=run.pk).order_by("id")
    rows.update(status="sent")
    Delivery.objects.filter(pk__in=list(rows.values_list("pk", flat=True)[:2])).update(
        status="unknown"
    )
    assert campaign_run_finalise(run_id=run.pk)
    run.refresh_from_db()
    assert (run.totals["unknown"], run.totals["sent"]) == (2, 3)
    assert campaign_runs_maintain()["recounted"] == 0  # nothing settled yet
    rows.filter(status="unknown").update(status="sent")  # found at the ESP
    assert campaign_runs_maintain()["recounted"] == 1
    run.refresh_from_db()
    assert (run.totals["unknown"], run.totals["sent"], run.totals["total"]) == (0, 5, 5)
    assert campaign_runs_maintain()["recounted"] == 0  # no longer looked at


def test_maintenance_launches_a_lost_queued_run_and_releases_stray_holds(campaign, fan_outs):
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    CampaignRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert campaign_runs_maintain()["launched"] == 1
    # A batch that saw "pause" hands rows back after the run was resumed.
    Delivery.objects.filter(run_id=run.pk).update(next_attempt_at=None)
    assert campaign_runs_maintain()["released"] == 5
    assert Delivery.objects.filter(run_id=run.pk, dispatched_at__isnull=True).count() == 5


def test_retry_chosen_failures(campaign, fan_outs):
    run = _launched(campaign)
    ids = list(Delivery.objects.filter(run_id=run.pk).values_list("id", flat=True))
    Delivery.objects.filter(id=ids[0]).update(
        status="failed", status_reason="Permanent error", failure_kind="permanent"
    )
    Delivery.objects.filter(id=ids[1]).update(
        status="failed",
        status_reason="Gave up after 6 attempts",
        failure_kind="transient_exhausted",
    )
    Delivery.objects.filter(id=ids[2]).update(status="unknown")
    Delivery.objects.filter(id__in=ids[3:]).update(status="sent")
    assert campaign_run_finalise(run_id=run.pk)
    assert campaign_run_retry(run=run, kinds=["transient"]) == 1
    assert Delivery.objects.get(id=ids[1]).status == "pending"
    assert Delivery.objects.get(id=ids[0]).status == "failed"
    run.refresh_from_db()
    assert run.status == "running" and run.finished_at is None
    with pytest.raises(CampaignError):
        campaign_run_retry(run=run, kinds=["everything"])


def test_delete_cancels_the_active_run_and_keeps_deliveries(campaign, fan_outs):
    run = _launched(campaign)
    campaign.schedule = "crontab"
    campaign_save(campaign=campaign)
    campaign_delete(campaign=campaign)
    assert not Campaign.objects.exists()
    assert set(Delivery.objects.filter(run_id=run.pk).values_list("status", flat=True)) == {
        "cancelled"
    }
    assert not PeriodicTask.objects.filter(task="campaigns.launch_campaign").exists()
