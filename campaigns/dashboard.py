"""The admin home page for staff: what is going out, how the last runs did,
and what needs attention. Reads only (a handful of grouped queries), shown to
each user only for what their permissions let them see."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from campaigns.models import Campaign, CampaignRun
from campaigns.selectors import run_status_counts, run_totals, runs_with_problems
from notifier.models import Delivery, Suppression
from notifier.sending.failover import transport_states

ACTIVE_LIMIT = 10
RECENT_RUNS = 8


@dataclass
class RunRow:
    run: CampaignRun
    totals: dict[str, int]
    rates: dict[str, float] = field(default_factory=dict)


@dataclass
class Dashboard:
    active: list[tuple[Campaign, dict | None, datetime | None]] = field(default_factory=list)
    recent: list[RunRow] = field(default_factory=list)
    problems: list[CampaignRun] = field(default_factory=list)
    attention: dict[str, int] = field(default_factory=dict)
    suppressions: dict[str, int] = field(default_factory=dict)
    sent_24h: int | None = None
    # Each transport's failover state (None: Redis could not be read).
    transports: list | None = None
    can_campaigns: bool = False
    can_deliveries: bool = False
    can_suppressions: bool = False


def campaign_next_send(campaign: Campaign, *, now: datetime) -> datetime | None:
    """When beat will next start a run of this campaign (None: not armed)."""
    task = campaign.periodic_task
    if task is None or not task.enabled:
        return None
    if task.clocked_id:
        return task.clocked.clocked_time
    if task.crontab_id:
        schedule = task.crontab.schedule
        return now + schedule.remaining_estimate(now.astimezone(schedule.tz))
    return None


def _rates(totals: dict[str, int], events: dict[str, int]) -> dict[str, float]:
    sent = totals.get("sent_total", 0)
    if not sent:
        return {}
    return {name: 100.0 * events.get(name, 0) / sent for name in events}


def _run_events(run_ids: list[int]) -> dict[int, dict[str, int]]:
    status = Delivery.Status
    rows = (
        Delivery.objects.filter(run_id__in=run_ids)
        .order_by()
        .values("run_id")
        .annotate(
            delivered=Count("id", filter=Q(status__in=[status.DELIVERED, status.COMPLAINED])),
            opened=Count("id", filter=Q(opens__gt=0)),
            clicked=Count("id", filter=Q(clicks__gt=0)),
            bounced=Count("id", filter=Q(status=status.BOUNCED)),
        )
    )
    return {row.pop("run_id"): row for row in rows}


def dashboard_for(user) -> Dashboard:
    now = timezone.now()
    board = Dashboard(
        can_campaigns=user.has_perm("campaigns.view_campaign"),
        can_deliveries=user.has_perm("notifier.view_delivery"),
        can_suppressions=user.has_perm("notifier.view_suppression"),
    )
    if board.can_campaigns:
        campaigns = (
            Campaign.objects.filter(
                status__in=[
                    Campaign.Status.RUNNING,
                    Campaign.Status.PAUSED,
                    Campaign.Status.SCHEDULED,
                ]
            )
            .select_related("periodic_task__crontab", "periodic_task__clocked")
            .order_by("status", "name")[:ACTIVE_LIMIT]
        )
        for campaign in campaigns:
            run = campaign.runs.filter(status__in=CampaignRun.ACTIVE).order_by("-id").first()
            progress = run_totals(run_status_counts(run_id=run.pk)) if run else None
            board.active.append((campaign, progress, campaign_next_send(campaign, now=now)))
        runs = list(
            CampaignRun.objects.filter(started_at__isnull=False)
            .select_related("campaign")
            .order_by("-started_at")[:RECENT_RUNS]
        )
        events = _run_events([r.pk for r in runs])
        for run in runs:
            totals = run.totals if run.finished_at else run_totals(run_status_counts(run_id=run.pk))
            row_events = events.get(run.pk, {})
            board.recent.append(RunRow(run, totals, _rates(totals, row_events)))
        board.problems = list(runs_with_problems()[:10])
    if board.can_deliveries:
        visible = Delivery.objects.all()
        if not user.has_perm("notifier.view_message_content"):
            visible = visible.filter(kind=Delivery.Kind.CAMPAIGN)
        week = now - timedelta(days=7)
        board.attention = visible.filter(updated_at__gte=week).aggregate(
            unknown=Count("id", filter=Q(status=Delivery.Status.UNKNOWN)),
            failed=Count("id", filter=Q(status=Delivery.Status.FAILED)),
        )
        board.sent_24h = visible.filter(sent_at__gte=now - timedelta(days=1)).count()
        try:
            board.transports = list(transport_states().values())
        except Exception:  # Redis down: the block says so instead
            board.transports = None
    if board.can_suppressions:
        board.suppressions = dict(
            Suppression.objects.filter(created_at__gte=now - timedelta(days=7))
            .order_by()
            .values_list("reason")
            .annotate(n=Count("id"))
        )
    return board
