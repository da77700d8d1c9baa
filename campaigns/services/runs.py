"""A campaign run: materialise, fan out, pause / resume / cancel, retry, close.

Invariants:

Every Delivery write goes through notifier's outbox
(``notifier.services.outbox``): a run sends with a DeliveryGroup of the
same id, whose state the batches read and whose context they render with.

* **Local send times.** A campaign with a ``local_send_time`` materialises
  the same way, each row due at that time in its recipient's zone (one
  ``CASE`` over the zone in the insert); rows not yet due are not
  dispatched: the sweeper hands them out when they are, and the run closes
  when the last zone is done.
* **A/B tests.** A campaign with an A/B test materialises only its test
  share at the launch (``campaigns.services.abtests``); the run stays open
  until the winner's rows for the rest are written and sent.
* **Materialise once.** A run's Deliveries are written by the outbox's one
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` inside the transaction
  that moves the run ``queued -> running`` under a row lock, so a second
  launch of the same run finds it running and does nothing; the unique
  (run, recipient) constraint makes the insert itself idempotent and gives
  a recipient in two lists one row. The audience never enters Python.
* **Suppressed at launch** recipients get a row with status ``suppressed``,
  so run totals always equal the run's Delivery rows.
* **Fan out** is a Celery chord of batch tasks over id ranges (computed in
  SQL) with a callback that closes the run. Rows are written with
  ``dispatched_at`` set, so the sweeper leaves them to the chord; if a task is
  lost the sweeper dispatches them again after ``NOTIFIER_REDISPATCH_SECONDS``.
  Claims are conditional, so no row is sent twice.
* **Pause** pauses the run's group and holds its pending rows
  (``next_attempt_at = NULL``: neither the chord's remaining batches nor the
  sweeper claim them); in-flight batches read the group's state and hand
  theirs back the same way. **Resume** makes them due and fans out again.
  **Cancel** marks pending rows ``cancelled``.
* **Close** happens when no row is pending or sending: by the chord callback,
  or by the maintenance task when the callback never comes (a batch raised)
  or rows were still waiting for a retry.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignRun
from campaigns.selectors import (
    IN_FLIGHT,
    campaign_audience,
    run_batch_ranges,
    run_status_counts,
    run_totals,
    runs_to_maintain,
    runs_with_rows_in_doubt,
)
from campaigns.services.abtests import (
    run_ab_materialise_test,
    run_ab_test_open,
    run_ab_test_pending,
)
from notifier.instruments import count_task_failure
from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.services.local_times import known_zones, next_local_time, zone_info
from notifier.services.outbox import (
    DueByZone,
    deliveries_analyze,
    deliveries_materialise,
    deliveries_retry,
    delivery_group_cancel,
    delivery_group_due_at_best_hours,
    delivery_group_open,
    delivery_group_pause,
    delivery_group_release_held,
    delivery_group_resume,
    retry_selection,
)

logger = logging.getLogger(__name__)

# The owner label of a run's DeliveryGroup.
GROUP_OWNER = "campaigns.run"
# Launches writing at least this many rows refresh the Delivery statistics.
ANALYZE_AFTER_ROWS = 10_000


# --- Materialise ----------------------------------------------------------------


def run_due_by_zone(*, run: CampaignRun, launched_at: datetime) -> DueByZone | None:
    """When each of the run's rows becomes due, by its recipient's time zone:
    the first local ``local_send_time`` from the launch on (None: at once).
    Reads the audience's distinct zone names, never its members."""
    campaign = run.campaign
    at = campaign.local_send_time
    if at is None:
        return None
    zones = campaign_audience(campaign=campaign).order_by().values_list("time_zone", flat=True)
    default = zone_info(campaign.local_time_zone_default)
    return DueByZone(
        by_zone={
            zone: next_local_time(after=launched_at, zone=zone_info(zone), at=at)
            for zone in zones.distinct()
            if zone in known_zones()
        },
        default=next_local_time(after=launched_at, zone=default, at=at),
    )


def run_materialise(*, run: CampaignRun) -> int:
    """Open the run's group and write its Deliveries (set-based, in the
    outbox), due at once or at the campaign's local time in each zone (from
    the run's start on). Returns rows added."""
    campaign = run.campaign
    group = delivery_group_open(
        group_id=run.pk,
        owner=GROUP_OWNER,
        label=f"Run {run.pk} of campaign {campaign.pk}",
        context=campaign.context or {},
    )
    launched_at = run.started_at or timezone.now()
    ab_test = run_ab_test_open(run=run, launched_at=launched_at)
    if ab_test is not None:  # only the test share now; the winner goes to the rest later
        return run_ab_materialise_test(run=run, test=ab_test)
    added = deliveries_materialise(
        group=group,
        audience=campaign_audience(campaign=campaign),
        kind=Delivery.Kind.CAMPAIGN,
        template_id=campaign.template_id,
        from_email=campaign.from_header,
        transport=campaign.transport,
        due=run_due_by_zone(run=run, launched_at=launched_at),
    )
    _run_due_at_best_hours(run=run, launched_at=launched_at)
    return added


def _run_due_at_best_hours(*, run: CampaignRun, launched_at: datetime) -> None:
    """With "send at each recipient's best hour", move the run's untouched
    rows of recipients with enough history to their best local hour."""
    campaign = run.campaign
    if campaign.send_at_best_hour and campaign.local_send_time is not None:
        delivery_group_due_at_best_hours(
            group_id=run.pk,
            after=launched_at,
            default_zone=campaign.local_time_zone_default or "UTC",
        )


# --- Launch and fan-out -------------------------------------------------------------


def _run_locked(run_id: int) -> CampaignRun | None:
    """The run and its campaign, locked until the transaction ends (None: deleted)."""
    return (
        # The sender is read (for the From of every row), not locked.
        CampaignRun.objects.select_for_update(of=("self", "campaign"))
        .select_related("campaign__sender")
        .filter(pk=run_id)
        .first()
    )


def campaign_run_launch(*, run_id: int) -> CampaignRun | None:
    """Materialise a queued run and fan it out. Launching twice sends once.

    A launch that raises leaves the run queued (its transaction rolled back),
    records the error on the run (``launch_failed``, with the next attempt
    after a backoff) and raises again for the caller (the task fails visibly).
    """
    try:
        run = _launch(run_id)
    except Exception as exc:
        _record_problem(run_id, CampaignRun.Problem.LAUNCH_FAILED, exc)
        raise
    if run is not None and run.problem == CampaignRun.Problem.LAUNCH_FAILED:
        run_problem_clear(run_id=run_id, problem=CampaignRun.Problem.LAUNCH_FAILED)
    return run


def _launch(run_id: int) -> CampaignRun | None:
    with transaction.atomic():
        run = _run_locked(run_id)
        if run is None:  # its campaign was deleted before the launch
            return None
        if run.status != CampaignRun.Status.QUEUED:
            logger.info("Run %s is already %s; not launching again", run_id, run.status)
            return run
        # The context is taken now, once for the run (on its group): every
        # message of the run renders with it, whatever is edited on the
        # campaign meanwhile.
        run.started_at = timezone.now()
        run.recipients = run_materialise(run=run)
        run.status = CampaignRun.Status.RUNNING
        run.save(update_fields=["recipients", "status", "started_at"])
    run_fan_out(run_id=run.pk)
    if run.recipients >= ANALYZE_AFTER_ROWS:
        # After the fan-out, so a worker lost here has published the batches.
        deliveries_analyze()
    return run


def run_fan_out(*, run_id: int) -> int:
    """Publish a chord of batch tasks for the run's due pending rows.

    Returns the number of batches. With nothing to send the run is closed at
    once. A broker error is logged, not raised: the rows carry
    ``dispatched_at`` and the sweeper dispatches them later.
    """
    from celery import chord, group

    from campaigns.tasks import finish_run, send_run_batch

    ranges = run_batch_ranges(run_id=run_id, batch_size=settings.CAMPAIGNS_BATCH_SIZE)
    if not ranges:
        campaign_run_finalise(run_id=run_id)
        return 0
    header = group(
        send_run_batch.si(run_id, first, last).set(queue="campaigns") for first, last in ranges
    )
    try:
        chord(header)(finish_run.si(run_id).set(queue="maintenance"))
    except Exception:
        logger.exception("Could not publish the batches of run %s; the sweeper will", run_id)
    return len(ranges)


def campaign_run_send_batch(*, run_id: int, first_id: int, last_id: int) -> dict[str, int]:
    """Send the run's pending rows with ids in [first_id, last_id].

    A paused or cancelled run sends nothing here (its rows are already held or
    cancelled); the batch reads the group's state for a pause mid-batch.
    """
    status, problem = CampaignRun.objects.filter(pk=run_id).values_list(
        "status", "problem"
    ).first() or (None, "")
    if status != CampaignRun.Status.RUNNING:
        return {}
    try:
        ids = Delivery.objects.filter(
            run_id=run_id,
            id__gte=first_id,
            id__lte=last_id,
            status=Delivery.Status.PENDING,
            next_attempt_at__isnull=False,
        ).values_list("id", flat=True)
        counts = deliveries_send_batch(delivery_ids=list(ids))
    except Exception as exc:
        _record_problem(run_id, CampaignRun.Problem.STALLED, exc)
        raise
    if problem == CampaignRun.Problem.STALLED and counts:
        run_problem_clear(run_id=run_id, problem=CampaignRun.Problem.STALLED)
    return counts


# --- Problems ---------------------------------------------------------------------


def _problem_backoff(count: int) -> timedelta:
    base, cap = settings.CAMPAIGNS_PROBLEM_BACKOFF_BASE, settings.CAMPAIGNS_PROBLEM_BACKOFF_CAP
    return timedelta(seconds=min(cap, base * 2 ** max(0, count - 1)))


def run_problem_record(*, run_id: int, problem: str, error: BaseException | str) -> None:
    """Record why the run is not progressing, with the next automatic attempt.

    Logged once per failed attempt; attempts back off exponentially, so a
    deterministic error is neither retried nor logged on every tick.
    """
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    now = timezone.now()
    with transaction.atomic():
        run = CampaignRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return
        same = run.problem == problem
        run.problem = problem
        run.problem_detail = text[:4000]
        run.problem_since = run.problem_since if same else now
        run.problem_count = run.problem_count + 1 if same else 1
        run.retry_at = now + _problem_backoff(run.problem_count)
        run.save(
            update_fields=[
                "problem",
                "problem_detail",
                "problem_since",
                "problem_count",
                "retry_at",
            ]
        )
    logger.error(
        "Run %s: %s (failed attempt %s; next attempt at %s): %s",
        run_id,
        CampaignRun.Problem(problem).label,
        run.problem_count,
        run.retry_at.isoformat(timespec="seconds"),
        text,
    )


def _record_problem(run_id: int, problem: str, exc: BaseException) -> None:
    """Record ``exc`` on the run while the caller re-raises it; a failure to
    record (the caller's own transaction is broken) must not hide it."""
    try:
        run_problem_record(run_id=run_id, problem=problem, error=exc)
    except Exception:
        logger.warning("Could not record the problem of run %s", run_id, exc_info=True)


def run_problem_clear(*, run_id: int, problem: str) -> None:
    cleared = CampaignRun.objects.filter(pk=run_id, problem=problem).update(
        problem="", problem_detail="", problem_since=None, problem_count=0, retry_at=None
    )
    if cleared:
        logger.info("Run %s: progressing again after %s", run_id, problem)


# --- Close ------------------------------------------------------------------------


def _campaign_after_run(campaign: Campaign) -> None:
    """Move the campaign on once none of its runs is active any more."""
    from campaigns.services.schedules import campaign_schedule_sync

    if campaign.runs.filter(status__in=CampaignRun.ACTIVE).exists():
        return
    if campaign.status in (Campaign.Status.RUNNING, Campaign.Status.PAUSED):
        recurring = (
            campaign.schedule == Campaign.Schedule.CRONTAB and campaign.periodic_task_id is not None
        )
        campaign.status = Campaign.Status.SCHEDULED if recurring else Campaign.Status.DONE
        campaign.save(update_fields=["status", "updated_at"])
    campaign_schedule_sync(campaign=campaign)


def campaign_run_finalise(*, run_id: int) -> bool:
    """Close the run and write its totals if nothing is pending or sending.

    Returns whether the run was closed (now). Safe to call any number of times.
    """
    counts = run_status_counts(run_id=run_id)
    if any(counts.get(status) for status in IN_FLIGHT):
        return False
    with transaction.atomic():
        run = _run_locked(run_id)
        if (
            run is None
            or run.finished_at is not None
            or run.status
            not in (
                CampaignRun.Status.RUNNING,
                CampaignRun.Status.CANCELLED,
            )
        ):
            return False
        # Counted again under the lock: the count above may predate a launch
        # that held this lock and has committed its rows since.
        counts = run_status_counts(run_id=run_id)
        if any(counts.get(status) for status in IN_FLIGHT):
            return False
        if run.status == CampaignRun.Status.RUNNING and run_ab_test_pending(run_id=run_id):
            return False  # the A/B winner is still to go to the rest
        if run.status == CampaignRun.Status.RUNNING:
            run.status = CampaignRun.Status.DONE
        run.finished_at = timezone.now()
        run.totals = run_totals(counts)
        run.save(update_fields=["status", "finished_at", "totals"])
        _campaign_after_run(run.campaign)
    logger.info("Run %s closed: %s", run_id, run.totals)
    return True


# --- Pause / resume / cancel ------------------------------------------------------------


def _set_campaign_status(campaign_id: int, status: str) -> None:
    Campaign.objects.filter(pk=campaign_id).update(status=status, updated_at=timezone.now())


# Staff moves of a run: from, to, the refusal, the campaign's status, and
# what the outbox does to the run's rows (returns how many).
_MOVES = {
    "pause": (
        CampaignRun.Status.RUNNING,
        CampaignRun.Status.PAUSED,
        "Only a running run can be paused.",
        Campaign.Status.PAUSED,
        delivery_group_pause,
    ),
    "resume": (
        CampaignRun.Status.PAUSED,
        CampaignRun.Status.RUNNING,
        "Only a paused run can be resumed.",
        Campaign.Status.RUNNING,
        delivery_group_resume,
    ),
}


def _run_move(run: CampaignRun, move: str) -> int:
    """Apply ``move`` to the run, its rows and its campaign (in a transaction)."""
    source, target, refused, campaign_status, outbox_move = _MOVES[move]
    moved = CampaignRun.objects.filter(pk=run.pk, status=source).update(status=target)
    if not moved:
        raise CampaignError(refused)
    if move == "resume" and run.started_at is not None:
        # Rows of a local-time run wait again for their zone's moment.
        due = run_due_by_zone(run=run, launched_at=run.started_at)
        count = outbox_move(group_id=run.pk, due=due)
        _run_due_at_best_hours(run=run, launched_at=run.started_at)  # and each best hour
    else:
        count = outbox_move(group_id=run.pk)
    _set_campaign_status(run.campaign_id, campaign_status)
    return count


def campaign_run_pause(*, run: CampaignRun) -> int:
    """Stop sending: hold the run's pending rows. Returns how many were held."""
    with transaction.atomic():
        held = _run_move(run, "pause")
    run.refresh_from_db()
    return held


def campaign_run_resume(*, run: CampaignRun) -> int:
    """Make the held rows due again and fan them out. Returns how many."""
    with transaction.atomic():
        count = _run_move(run, "resume")
        transaction.on_commit(lambda: run_fan_out(run_id=run.pk))
    run.refresh_from_db()
    return count


def campaign_run_cancel(*, run: CampaignRun) -> int:
    """Cancel the run's pending rows (in-flight batches read the group's state)."""
    with transaction.atomic():
        cancelled = CampaignRun.objects.filter(pk=run.pk, status__in=CampaignRun.ACTIVE).update(
            status=CampaignRun.Status.CANCELLED
        )
        if not cancelled:
            raise CampaignError("This run has already finished.")
        count = delivery_group_cancel(group_id=run.pk, reason="Not sent: the run was cancelled.")
    campaign_run_finalise(run_id=run.pk)
    run.refresh_from_db()
    return count


# --- Retry --------------------------------------------------------------------------


def campaign_run_retry(*, run: CampaignRun, kinds: list[str]) -> int:
    """Send the chosen failed (and/or in-doubt) rows of a finished run again."""
    try:
        retry_selection(kinds)
    except ValueError as exc:
        raise CampaignError(str(exc)) from exc
    with transaction.atomic():
        run = CampaignRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (CampaignRun.Status.DONE, CampaignRun.Status.RUNNING):
            raise CampaignError("Only a running or finished run can retry its failed sends.")
        count = deliveries_retry(kinds=kinds, group_id=run.pk)
        if not count:
            return 0
        run.status = CampaignRun.Status.RUNNING
        run.finished_at = None
        run.save(update_fields=["status", "finished_at"])
        _set_campaign_status(run.campaign_id, Campaign.Status.RUNNING)
        transaction.on_commit(lambda: run_fan_out(run_id=run.pk))
    return count


# --- Maintenance ------------------------------------------------------------------------


def campaign_runs_maintain(*, stale_after: float = 60.0) -> dict[str, int]:
    """Beat: close finished runs, launch lost queued runs, release stray holds.

    * a run whose chord callback never came is closed once its rows are done;
    * a queued run whose launch task was lost is launched (idempotent); one
      whose launch failed is tried again only when its backoff has passed;
    * rows a batch held after the run was resumed are made due again.

    One run's error is recorded on that run and never stops the others.
    """
    result = {"closed": 0, "launched": 0, "released": 0, "failed": 0}
    result["recounted"] = campaign_runs_recount_settled()
    now = timezone.now()
    stale = now - timedelta(seconds=stale_after)
    runs = runs_to_maintain().values_list("pk", "status", "created_at", "retry_at")
    for run_id, status, created_at, retry_at in runs:
        if retry_at is not None and retry_at > now:
            continue
        try:
            _maintain_run(run_id, status, created_at, stale, result)
        except Exception as exc:
            result["failed"] += 1
            count_task_failure(task="campaigns.maintain_runs")
            if status != CampaignRun.Status.QUEUED:  # a launch records its own problem
                _record_problem(run_id, CampaignRun.Problem.STALLED, exc)
    return result


def campaign_runs_recount_settled(*, limit: int = 100) -> int:
    """Closed runs whose totals still count rows in doubt are counted again.

    The in-doubt resolver settles ``unknown`` rows after a run has closed
    (found at the ESP: ``sent``; certainly not: sent again), so a total
    written at the close would stay stale. Returns runs whose totals changed."""
    changed = 0
    for run in runs_with_rows_in_doubt()[:limit]:
        totals = run_totals(run_status_counts(run_id=run.pk))
        if totals != run.totals:
            CampaignRun.objects.filter(pk=run.pk).update(totals=totals)
            changed += 1
    return changed


def _maintain_run(run_id: int, status: str, created_at, stale, result: dict[str, int]) -> None:
    if status == CampaignRun.Status.QUEUED:
        if created_at < stale:
            campaign_run_launch(run_id=run_id)
            result["launched"] += 1
        return
    if status == CampaignRun.Status.RUNNING:
        result["released"] += delivery_group_release_held(group_id=run_id)
    if status != CampaignRun.Status.PAUSED and campaign_run_finalise(run_id=run_id):
        result["closed"] += 1
