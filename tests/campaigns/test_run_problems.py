"""A run that cannot launch, or whose batches fail, says so: on the run, on the
campaign page and runs list, in /health/ and in a metric; and a deterministic
error is retried with a backoff, logged once per attempt, not every tick."""

import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY

from campaigns.models import CampaignRun
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import (
    campaign_run_launch,
    campaign_run_send_batch,
    campaign_runs_maintain,
)
from campaigns.tasks import launch_run
from notifier.heartbeat import beat_heartbeat_record
from notifier.models import Delivery
from tests.campaigns.factories import CampaignFactory, ContactListFactory, add_members
from tests.notifier.factories import RecipientFactory

BROKEN = 'near "OFFSET": syntax error'


@pytest.fixture
def campaign(db):
    contact_list = ContactListFactory()
    add_members(contact_list, RecipientFactory.create_batch(5))
    campaign = CampaignFactory()
    campaign.contact_lists.set([contact_list])
    return campaign


@pytest.fixture
def broken_launch(monkeypatch):
    def fail(*, run):
        raise DatabaseError(BROKEN)

    monkeypatch.setattr("campaigns.services.runs.run_materialise", fail)


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def _failures(task: str) -> float:
    return REGISTRY.get_sample_value("notifier_task_failures_total", {"task": task}) or 0.0


def _queued_run(campaign) -> CampaignRun:
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    CampaignRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    return run


@pytest.mark.django_db
def test_a_launch_that_raises_marks_the_run_and_shows_on_its_pages(
    campaign, broken_launch, staff, fan_outs
):
    run = _queued_run(campaign)
    before = _failures("campaigns.launch_run")
    result = launch_run.apply(args=[run.pk])
    assert result.failed() and isinstance(result.result, DatabaseError)
    assert _failures("campaigns.launch_run") == before + 1

    run.refresh_from_db()
    assert run.status == CampaignRun.Status.QUEUED
    assert run.problem == CampaignRun.Problem.LAUNCH_FAILED
    assert BROKEN in run.problem_detail and run.problem_count == 1
    assert timedelta(seconds=14) < run.retry_at - timezone.now() <= timedelta(seconds=30)

    page = staff.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="run-problem"' in html and "Failed to launch" in html
    assert "near &quot;OFFSET&quot;: syntax error" in html
    runs = staff.get(reverse("admin:campaigns_campaignrun_changelist")).content.decode()
    assert "Failed to launch" in runs and "near &quot;OFFSET&quot;: syntax error" in runs
    progress = staff.get(reverse("admin:campaigns_campaign_progress", args=[campaign.pk])).json()
    assert progress["run"]["problem"] == "launch_failed"
    metrics = staff.get("/metrics").content.decode()
    assert 'notifier_campaign_runs_with_problem{problem="launch_failed"} 1.0' in metrics
    assert 'notifier_campaign_runs_with_problem{problem="stalled"} 0.0' in metrics


@pytest.mark.django_db
def test_maintenance_retries_a_failed_launch_with_a_backoff_and_logs_once_per_attempt(
    campaign, broken_launch, fan_outs, caplog, monkeypatch
):
    run = _queued_run(campaign)
    caplog.set_level(logging.ERROR, logger="campaigns.services.runs")
    assert campaign_runs_maintain()["failed"] == 1
    # Every tick before the backoff has passed leaves the run alone, silently.
    for _ in range(5):
        assert campaign_runs_maintain() == {
            "recounted": 0,
            "closed": 0,
            "launched": 0,
            "released": 0,
            "failed": 0,
        }
    run.refresh_from_db()
    assert run.problem_count == 1
    assert len([r for r in caplog.records if f"Run {run.pk}:" in r.getMessage()]) == 1

    first_wait = run.retry_at - timezone.now()
    CampaignRun.objects.filter(pk=run.pk).update(retry_at=timezone.now() - timedelta(seconds=1))
    assert campaign_runs_maintain()["failed"] == 1
    run.refresh_from_db()
    assert run.problem_count == 2
    assert run.retry_at - timezone.now() > first_wait  # the wait doubled
    assert len([r for r in caplog.records if f"Run {run.pk}:" in r.getMessage()]) == 2

    # Fixed: the next attempt launches the run and the mark goes away.
    monkeypatch.undo()
    CampaignRun.objects.filter(pk=run.pk).update(retry_at=timezone.now() - timedelta(seconds=1))
    assert campaign_runs_maintain()["launched"] == 1
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.RUNNING
    assert run.problem == "" and run.problem_detail == "" and run.retry_at is None


@pytest.mark.django_db
def test_one_broken_run_does_not_stop_the_maintenance_of_others(campaign, fan_outs, monkeypatch):
    healthy = campaign_run_launch(run_id=_queued_run(campaign).pk)
    Delivery.objects.filter(run_id=healthy.pk).update(status="sent")
    real = campaign_run_launch

    def launch(*, run_id):
        if run_id != healthy.pk:
            raise DatabaseError(BROKEN)
        return real(run_id=run_id)

    broken = CampaignRun.objects.create(campaign=campaign, status="queued")
    CampaignRun.objects.filter(pk=broken.pk).update(created_at=timezone.now() - timedelta(hours=1))
    monkeypatch.setattr("campaigns.services.runs.run_materialise", lambda *, run: 1 / 0)
    result = campaign_runs_maintain()
    assert result["failed"] == 1 and result["closed"] == 1
    healthy.refresh_from_db()
    assert healthy.status == CampaignRun.Status.DONE


@pytest.mark.django_db
def test_batches_that_raise_mark_the_run_stalled_until_one_sends(campaign, fan_outs, monkeypatch):
    run = campaign_run_launch(run_id=_queued_run(campaign).pk)
    first, last = Delivery.objects.filter(run_id=run.pk).order_by("id")[0].pk, 10**9

    def broken(*, delivery_ids):
        raise DatabaseError("could not serialize access")

    monkeypatch.setattr("campaigns.services.runs.deliveries_send_batch", broken)
    with pytest.raises(DatabaseError):
        campaign_run_send_batch(run_id=run.pk, first_id=first, last_id=last)
    run.refresh_from_db()
    assert run.problem == CampaignRun.Problem.STALLED
    assert "could not serialize access" in run.problem_detail

    monkeypatch.setattr(
        "campaigns.services.runs.deliveries_send_batch", lambda *, delivery_ids: {"sent": 1}
    )
    campaign_run_send_batch(run_id=run.pk, first_id=first, last_id=last)
    run.refresh_from_db()
    assert run.problem == ""


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_health_reports_the_run_that_failed_to_launch(
    campaign, broken_launch, client, celery_worker_process, fan_outs, settings
):
    settings.HEALTH_CACHE_SECONDS = 0
    run = _queued_run(campaign)
    beat_heartbeat_record()
    healthy = client.get("/health/").json()
    assert healthy["status"] == "ok" and "problems" not in healthy

    with pytest.raises(DatabaseError):
        campaign_run_launch(run_id=run.pk)
    beat_heartbeat_record()
    anonymous = client.get("/health/").json()
    assert anonymous["status"] == "degraded" and anonymous["problems"] == 1
    client.force_login(User.objects.create_user("ops", password="pw", is_staff=True))
    response = client.get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    (problem,) = body["problems"]
    assert problem["run"] == run.pk and problem["campaign"] == campaign.name
    assert problem["problem"] == "launch_failed"
    assert problem["reason"] == f"Failed to launch: DatabaseError: {BROKEN}"
