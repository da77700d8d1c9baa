"""A campaign run: materialise, fan out, pause / resume / cancel, retry, close.

Invariants:

* **Materialise once.** A run's Deliveries are written by one
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` inside the transaction
  that moves the run ``queued -> running`` under a row lock, so a second
  launch of the same run finds it running and does nothing; the unique
  (run_id, recipient) constraint makes the insert itself idempotent and gives
  a recipient in two lists one row. The audience never enters Python.
* **Suppressed at launch** recipients get a row with status ``suppressed``,
  so run totals always equal the run's Delivery rows.
* **Fan out** is a Celery chord of batch tasks over id ranges (computed in
  SQL) with a callback that closes the run. Rows are written with
  ``dispatched_at`` set, so the sweeper leaves them to the chord; if a task is
  lost the sweeper dispatches them again after ``NOTIFIER_REDISPATCH_SECONDS``.
  Claims are conditional, so no row is sent twice.
* **Pause** holds the run's pending rows (``next_attempt_at = NULL``: neither
  the chord's remaining batches nor the sweeper claim them) and the run guard
  makes in-flight batches hand theirs back the same way. **Resume** makes them
  due and fans out again. **Cancel** marks pending rows ``cancelled``.
* **Close** happens when no row is pending or sending: by the chord callback,
  or by the maintenance task when the callback never comes (a batch raised)
  or rows were still waiting for a retry.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Q
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
)
from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.sending.batch import RunVerdict
from notifier.services.suppressions import suppression_reason_sql

logger = logging.getLogger(__name__)

# Launches writing at least this many rows refresh the Delivery statistics.
ANALYZE_AFTER_ROWS = 10_000


# --- Materialise ----------------------------------------------------------------


def _uuid_sql() -> str:
    if connection.vendor == "postgresql":
        # Time-ordered (UUID version 7: milliseconds, then 74 random bits), so
        # a million-row launch appends to the uuid index instead of writing
        # all over it.
        return (
            "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
            "substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) "
            "FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid"
        )
    # SQLite stores UUIDs as 32 hex digits: a random version-4 UUID.
    return (
        "lower(hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2)"
        " || substr('89ab', (abs(random()) %% 4) + 1, 1)"
        " || substr(hex(randomblob(2)), 2) || hex(randomblob(6)))"
    )


def _not_flattened_sql() -> str:
    """A clause that keeps the planner from flattening the audience subquery
    into the INSERT, so each member's reason is looked up once.

    PostgreSQL takes a bare ``OFFSET 0``; SQLite's grammar needs a LIMIT before
    an OFFSET (``LIMIT -1`` is "no limit"), and a LIMIT stops its flattening too.
    """
    if connection.vendor == "postgresql":
        return "OFFSET 0"
    return "LIMIT -1 OFFSET 0"


def _prep(name: str, value):
    return Delivery._meta.get_field(name).get_db_prep_save(value, connection)


def _insert_sql(*, run: CampaignRun, audience_sql: str, audience_params: list, now) -> tuple:
    """The INSERT ... SELECT writing one Delivery per audience member.

    Every concrete column gets a value here (Django defaults are not database
    defaults): the ones a campaign sets, and each other field's Django default.
    """
    q = connection.ops.quote_name
    campaign = run.campaign
    # The reason a member is not mailed ('' when they are).
    reason_sql, reason_params = suppression_reason_sql(email="m.email", status="m.status")
    explicit = {
        "uuid": (_uuid_sql(), []),
        "recipient": ("a.id", []),
        "kind": ("%s", [Delivery.Kind.CAMPAIGN]),
        "template": ("%s", [campaign.template_id]),
        "from_email": ("%s", [campaign.from_email]),
        "transport": ("%s", [campaign.transport]),
        "run_id": ("%s", [run.pk]),
        "status": (
            "CASE WHEN a.reason = '' THEN %s ELSE %s END",
            [Delivery.Status.PENDING, Delivery.Status.SUPPRESSED],
        ),
        "status_reason": ("a.reason", []),
        "next_attempt_at": ("%s", [_prep("next_attempt_at", now)]),
        "dispatched_at": ("%s", [_prep("dispatched_at", now)]),
        "created_at": ("%s", [_prep("created_at", now)]),
        "updated_at": ("%s", [_prep("updated_at", now)]),
    }
    columns, values, params = [], [], []
    for field in Delivery._meta.concrete_fields:
        if field.primary_key:
            continue
        if field.name in explicit:
            sql, field_params = explicit[field.name]
        elif field.null:
            sql, field_params = "NULL", []
        else:
            default = field.get_default()
            if default is None:
                if getattr(field, "db_default", None) is not None:
                    continue
                raise ImproperlyConfigured(
                    f"Delivery.{field.name} has no default: the campaign launch cannot fill it."
                )
            sql, field_params = "%s", [field.get_db_prep_save(default, connection)]
        columns.append(q(field.column))
        values.append(sql)
        params.extend(field_params)
    sql = f"""
        INSERT INTO {q(Delivery._meta.db_table)} ({", ".join(columns)})
        SELECT {", ".join(values)}
        FROM (
            SELECT m.id AS id, {reason_sql} AS reason
            FROM ({audience_sql}) m
            {_not_flattened_sql()}
        ) a
        WHERE true
        ON CONFLICT DO NOTHING
    """
    return sql, [*params, *reason_params, *audience_params]


def run_materialise(*, run: CampaignRun) -> int:
    """Write the run's Deliveries in one set-based statement. Returns rows added."""
    # The audience query yields what the reason needs: recipients are read once.
    audience = campaign_audience(campaign=run.campaign).values("id", "email", "status")
    try:
        audience_sql, audience_params = audience.query.get_compiler(using="default").as_sql()
    except EmptyResultSet:
        return 0
    sql, params = _insert_sql(
        run=run,
        audience_sql=audience_sql,
        audience_params=list(audience_params),
        now=timezone.now(),
    )
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Hash a million members in memory, not in temporary files.
            cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


# --- Launch and fan-out -------------------------------------------------------------


def campaign_run_launch(*, run_id: int) -> CampaignRun | None:
    """Materialise a queued run and fan it out. Launching twice sends once."""
    with transaction.atomic():
        run = (
            CampaignRun.objects.select_for_update()
            .select_related("campaign")
            .filter(pk=run_id)
            .first()
        )
        if run is None:  # its campaign was deleted before the launch
            return None
        if run.status != CampaignRun.Status.QUEUED:
            logger.info("Run %s is already %s; not launching again", run_id, run.status)
            return run
        # The context is taken now, once for the run: every message of the
        # run renders with it, whatever is edited on the campaign meanwhile.
        run.context = run.campaign.context or {}
        run.recipients = run_materialise(run=run)
        run.status = CampaignRun.Status.RUNNING
        run.started_at = timezone.now()
        run.save(update_fields=["context", "recipients", "status", "started_at"])
    run_fan_out(run_id=run.pk)
    if run.recipients >= ANALYZE_AFTER_ROWS and connection.vendor == "postgresql":
        # After the fan-out, so a worker lost here has published the batches.
        # A big launch turns the table's statistics stale at once (they may
        # say no row is pending); a planner that believes them claims each
        # batch, and each transactional send, by scanning the due index
        # instead of looking ids up by key. Autovacuum would catch up later.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Delivery._meta.db_table}")
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
    cancelled); the run guard covers a pause that lands mid-batch.
    """
    status = CampaignRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    if status != CampaignRun.Status.RUNNING:
        return {}
    ids = Delivery.objects.filter(
        run_id=run_id,
        id__gte=first_id,
        id__lte=last_id,
        status=Delivery.Status.PENDING,
        next_attempt_at__isnull=False,
    ).values_list("id", flat=True)
    return deliveries_send_batch(delivery_ids=list(ids))


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
        run = (
            CampaignRun.objects.select_for_update()
            .select_related("campaign")
            .filter(pk=run_id)
            .first()
        )
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


def campaign_run_pause(*, run: CampaignRun) -> int:
    """Stop sending: hold the run's pending rows. Returns how many were held."""
    with transaction.atomic():
        paused = CampaignRun.objects.filter(pk=run.pk, status=CampaignRun.Status.RUNNING).update(
            status=CampaignRun.Status.PAUSED
        )
        if not paused:
            raise CampaignError("Only a running run can be paused.")
        held = Delivery.objects.filter(run_id=run.pk, status=Delivery.Status.PENDING).update(
            next_attempt_at=None, dispatched_at=None, updated_at=timezone.now()
        )
        _set_campaign_status(run.campaign_id, Campaign.Status.PAUSED)
    run.refresh_from_db()
    return held


def campaign_run_resume(*, run: CampaignRun) -> int:
    """Make the held rows due again and fan them out. Returns how many."""
    with transaction.atomic():
        resumed = CampaignRun.objects.filter(pk=run.pk, status=CampaignRun.Status.PAUSED).update(
            status=CampaignRun.Status.RUNNING
        )
        if not resumed:
            raise CampaignError("Only a paused run can be resumed.")
        count = _make_due(Delivery.objects.filter(run_id=run.pk, status=Delivery.Status.PENDING))
        _set_campaign_status(run.campaign_id, Campaign.Status.RUNNING)
        transaction.on_commit(lambda: run_fan_out(run_id=run.pk))
    run.refresh_from_db()
    return count


def _make_due(queryset, **extra) -> int:
    now = timezone.now()
    return queryset.update(
        **{"next_attempt_at": now, "dispatched_at": now, "updated_at": now, **extra}
    )


def campaign_run_cancel(*, run: CampaignRun) -> int:
    """Cancel the run's pending rows (in-flight batches stop via the run guard)."""
    with transaction.atomic():
        cancelled = CampaignRun.objects.filter(pk=run.pk, status__in=CampaignRun.ACTIVE).update(
            status=CampaignRun.Status.CANCELLED
        )
        if not cancelled:
            raise CampaignError("This run has already finished.")
        count = Delivery.objects.filter(run_id=run.pk, status=Delivery.Status.PENDING).update(
            status=Delivery.Status.CANCELLED,
            status_reason="Run cancelled",
            next_attempt_at=None,
            updated_at=timezone.now(),
        )
    campaign_run_finalise(run_id=run.pk)
    run.refresh_from_db()
    return count


def run_contexts(run_ids: set[int]) -> dict[int, dict]:
    """The template context each run took at launch (for the batch sender)."""
    return dict(CampaignRun.objects.filter(pk__in=run_ids).values_list("pk", "context"))


def run_guard(run_ids: set[int]) -> dict[int, RunVerdict]:
    """Registered with the batch sender: pause or cancel per run (one query)."""
    statuses = dict(CampaignRun.objects.filter(pk__in=run_ids).values_list("pk", "status"))
    verdicts = {}
    for run_id in run_ids:
        status = statuses.get(run_id)
        if status == CampaignRun.Status.CANCELLED:
            verdicts[run_id] = RunVerdict.CANCEL
        elif status == CampaignRun.Status.PAUSED:
            verdicts[run_id] = RunVerdict.PAUSE
    return verdicts


# --- Retry --------------------------------------------------------------------------


RETRY_KINDS = {
    # Transient errors that exhausted their attempts.
    "transient": Q(
        status=Delivery.Status.FAILED, failure_kind=Delivery.FailureKind.TRANSIENT_EXHAUSTED
    ),
    # Rejected by the ESP / SMTP server, or could not be rendered.
    "permanent": Q(status=Delivery.Status.FAILED)
    & ~Q(failure_kind=Delivery.FailureKind.TRANSIENT_EXHAUSTED),
    # Handed over but no answer recorded: retrying may duplicate.
    "unknown": Q(status=Delivery.Status.UNKNOWN),
}


def campaign_run_retry(*, run: CampaignRun, kinds: list[str]) -> int:
    """Send the chosen failed (and/or in-doubt) rows of a finished run again."""
    unknown = set(kinds) - set(RETRY_KINDS)
    if not kinds or unknown:
        raise CampaignError(f"Choose what to retry among: {', '.join(RETRY_KINDS)}.")
    selection = Q()
    for kind in kinds:
        selection |= RETRY_KINDS[kind]
    with transaction.atomic():
        run = CampaignRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (CampaignRun.Status.DONE, CampaignRun.Status.RUNNING):
            raise CampaignError("Only a running or finished run can retry its failed sends.")
        count = _make_due(
            Delivery.objects.filter(selection, run_id=run.pk),
            status=Delivery.Status.PENDING,
            attempts=0,
            failure_kind=Delivery.FailureKind.NONE,
            status_reason="Retry requested by staff",
        )
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
    * a queued run whose launch task was lost is launched (idempotent);
    * rows a batch held after the run was resumed are made due again.
    """
    result = {"closed": 0, "launched": 0, "released": 0}
    stale = timezone.now() - timedelta(seconds=stale_after)
    for run_id, status, created_at in runs_to_maintain().values_list("pk", "status", "created_at"):
        if status == CampaignRun.Status.QUEUED:
            if created_at < stale:
                campaign_run_launch(run_id=run_id)
                result["launched"] += 1
            continue
        if status == CampaignRun.Status.RUNNING:
            result["released"] += _make_due(
                Delivery.objects.filter(
                    run_id=run_id, status=Delivery.Status.PENDING, next_attempt_at__isnull=True
                ),
                dispatched_at=None,
            )
        if status != CampaignRun.Status.PAUSED and campaign_run_finalise(run_id=run_id):
            result["closed"] += 1
    return result
