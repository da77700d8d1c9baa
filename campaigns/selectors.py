"""Reads: audiences, run progress, batch boundaries, list exports."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cron_descriptor
from celery.schedules import crontab
from django.db import connection
from django.db.models import Count, Exists, Max, Min, OuterRef, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, Trunc
from django.utils import timezone

from campaigns.abstats import Comparison, compare, comparison_in_words
from campaigns.models import (
    Campaign,
    CampaignRun,
    ContactList,
    ListMembership,
    RunABTest,
    Segment,
)
from campaigns.segments import segment_q
from notifier.models import Delivery, DeliveryEvent, Recipient, Suppression
from notifier.services.local_times import known_zones
from notifier.services.suppressions import SUPPRESSED_RECIPIENT_STATUSES

IN_FLIGHT = (Delivery.Status.PENDING, Delivery.Status.SENDING)
# What "sent" means in run totals: handed to the transport and accepted
# (later ESP events move a row on to delivered / bounced / complained).
SENT_STATUSES = (
    Delivery.Status.SENT,
    Delivery.Status.DELIVERED,
    Delivery.Status.BOUNCED,
    Delivery.Status.COMPLAINED,
)


def campaign_audience(*, campaign: Campaign) -> QuerySet[Recipient]:
    """Recipients in any of the campaign's lists or segments, each once.

    Suppressed and opted-out recipients are included here; the launch marks
    them ``suppressed`` instead of sending.
    """
    return audience_of(
        list_ids=list(campaign.contact_lists.values_list("id", flat=True)),
        segments=campaign.segments.prefetch_related("conditions"),
    )


def audience_of(*, list_ids: list[int], segments: Iterable[Segment]) -> QuerySet[Recipient]:
    """Recipients in any of the lists ``list_ids`` or of ``segments``, each once
    (raises SegmentError for a segment that cannot be evaluated)."""
    audience = Q(pk__in=[])
    if list_ids:
        audience |= Q(
            pk__in=ListMembership.objects.filter(contact_list_id__in=list_ids).values(
                "recipient_id"
            )
        )
    for segment in segments:
        audience |= segment_q(segment)
    return Recipient.objects.filter(audience).order_by()


def audience_counts(audience: QuerySet[Recipient]) -> dict[str, int]:
    """How many of ``audience`` a launch would mail, and why the others not.

    ``suppressed`` counts every address a launch skips (an active suppression
    or a recipient status other than active), ``unsubscribed`` the part of it
    that asked to stop; ``to_send`` the rest. Opt-outs by topic are not
    campaign business and are not counted. Two queries.
    """
    active_suppression = Suppression.objects.filter(email=OuterRef("email"), lifted_at__isnull=True)
    skipped = Q(status__in=SUPPRESSED_RECIPIENT_STATUSES) | Q(Exists(active_suppression))
    unsubscribed = Q(status=Recipient.Status.UNSUBSCRIBED) | Q(
        Exists(active_suppression.filter(reason=Suppression.Reason.UNSUBSCRIBED))
    )
    counts = audience.aggregate(
        total=Count("pk"),
        suppressed=Count("pk", filter=skipped),
        unsubscribed=Count("pk", filter=unsubscribed),
    )
    counts["to_send"] = counts["total"] - counts["suppressed"]
    return counts


def run_status_counts(*, run_id: int) -> dict[str, int]:
    """Live counts of the run's Deliveries per status (one grouped query)."""
    rows = (
        Delivery.objects.filter(run_id=run_id)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    return dict(rows)


def run_totals(counts: dict[str, int]) -> dict[str, int]:
    """Counts per status plus the summary figures shown to staff."""
    totals = {status: counts.get(status, 0) for status in Delivery.Status.values}
    totals["total"] = sum(counts.values())
    totals["sent_total"] = sum(counts.get(s, 0) for s in SENT_STATUSES)
    totals["in_flight"] = sum(counts.get(s, 0) for s in IN_FLIGHT)
    return totals


RESULT_SERIES = ("sent", "delivered", "opened", "clicked", "bounced")
# ESP event type (Anymail's normalised names) behind each series but "sent".
RESULT_EVENTS = {
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "bounced": "bounced",
}
# Bucket sizes, smallest first: a run's results use the first that keeps
# the chart under RESULT_MAX_BUCKETS points.
RESULT_UNITS = (
    ("minute", timedelta(minutes=1)),
    ("hour", timedelta(hours=1)),
    ("day", timedelta(days=1)),
    ("week", timedelta(weeks=1)),
    ("month", timedelta(days=31)),
)
RESULT_MAX_BUCKETS = 240


@dataclass
class RunResults:
    """What happened to a run's messages over time.

    ``new[series]`` is a sorted list of (bucket start, messages) for the
    buckets where that number is not zero; each message counts once per
    series, in the bucket of its first such event (a message opened five
    times counts once in ``opened``, when it was first opened).
    """

    unit: str = "minute"
    start: datetime | None = None
    end: datetime | None = None
    new: dict[str, list[tuple[datetime, int]]] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        return {name: sum(n for _, n in self.new.get(name, [])) for name in RESULT_SERIES}

    @property
    def step(self) -> timedelta:
        return dict(RESULT_UNITS)[self.unit]

    def rows(self) -> list[tuple[datetime, dict[str, int]]]:
        """One row per bucket where anything happened: (bucket start, new per series)."""
        table: dict[datetime, dict[str, int]] = {}
        for name, points in self.new.items():
            for bucket, n in points:
                table.setdefault(bucket, dict.fromkeys(RESULT_SERIES, 0))[name] = n
        return sorted(table.items())


def _result_unit(first: datetime, last: datetime) -> str:
    span = last - first
    for unit, size in RESULT_UNITS:
        if span / size < RESULT_MAX_BUCKETS:
            return unit
    return RESULT_UNITS[-1][0]


def run_results(*, run_id: int) -> RunResults:
    """Sent, delivered, opened, clicked and bounced messages of a run, per time bucket.

    Four queries whatever the run's size: the time span, then the grouped
    counts of sends and of first events (the rows never enter Python).
    ``sent`` is when the transport accepted each message (``sent_at``);
    the others are the ESP's event times.
    """
    sent = Delivery.objects.filter(run_id=run_id, status__in=SENT_STATUSES, sent_at__isnull=False)
    events = DeliveryEvent.objects.annotate(when=Coalesce("occurred_at", "received_at"))
    earlier = events.filter(
        delivery_id=OuterRef("delivery_id"), event_type=OuterRef("event_type")
    ).filter(Q(when__lt=OuterRef("when")) | Q(when=OuterRef("when"), id__lt=OuterRef("id")))
    firsts = events.filter(delivery__run_id=run_id, event_type__in=RESULT_EVENTS.values()).filter(
        ~Exists(earlier)
    )

    span = sent.aggregate(first=Min("sent_at"), last=Max("sent_at"))
    event_span = firsts.aggregate(first=Min("when"), last=Max("when"))
    firsts_at = [t for t in (span["first"], event_span["first"]) if t]
    lasts_at = [t for t in (span["last"], event_span["last"]) if t]
    if not firsts_at:
        return RunResults(new={name: [] for name in RESULT_SERIES})
    results = RunResults(unit=_result_unit(min(firsts_at), max(lasts_at)))
    results.new = {name: [] for name in RESULT_SERIES}

    sent_rows = (
        sent.annotate(bucket=Trunc("sent_at", results.unit))
        .order_by("bucket")
        .values_list("bucket")
        .annotate(n=Count("id"))
    )
    results.new["sent"] = list(sent_rows)
    series_of = {event: name for name, event in RESULT_EVENTS.items()}
    event_rows = (
        firsts.annotate(bucket=Trunc("when", results.unit))
        .order_by("bucket")
        .values_list("event_type", "bucket")
        .annotate(n=Count("id"))
    )
    for event_type, bucket, n in event_rows:
        results.new[series_of[event_type]].append((bucket, n))
    buckets = [bucket for points in results.new.values() for bucket, _ in points]
    # One empty bucket before the first, so the first rise is visible.
    results.start, results.end = min(buckets) - results.step, max(buckets) + results.step
    return results


# The key of a Delivery's own context naming its A/B group: a variant's
# label for the test share, ``AB_REST`` for the winner sent to the rest.
AB_GROUP_KEY = "ab_group"
AB_REST = "rest"


@dataclass(frozen=True)
class GroupResult:
    """One A/B group's messages: how many, sent, opened and clicked."""

    group: str
    total: int = 0
    sent: int = 0
    opened: int = 0
    clicked: int = 0

    @property
    def open_rate(self) -> float:
        return self.opened / self.sent if self.sent else 0.0

    @property
    def click_rate(self) -> float:
        return self.clicked / self.sent if self.sent else 0.0

    @property
    def open_rate_text(self) -> str:
        return f"{self.open_rate * 100:.1f} %" if self.sent else "-"

    @property
    def click_rate_text(self) -> str:
        return f"{self.click_rate * 100:.1f} %" if self.sent else "-"


def run_ab_group_results(*, run_id: int) -> dict[str, GroupResult]:
    """Per A/B group of the run (a variant's label, or ``AB_REST``): rows,
    sent, opened (at least once) and clicked. One grouped query."""
    sent = Q(status__in=SENT_STATUSES)
    rows = (
        Delivery.objects.filter(run_id=run_id)
        .annotate(group=KeyTextTransform(AB_GROUP_KEY, "context"))
        .order_by()
        .values("group")
        .annotate(
            total=Count("id"),
            sent=Count("id", filter=sent),
            opened=Count("id", filter=sent & Q(opens__gt=0)),
            clicked=Count("id", filter=sent & Q(clicks__gt=0)),
        )
    )
    return {row["group"]: GroupResult(**row) for row in rows if row["group"]}


@dataclass(frozen=True)
class VariantRow:
    label: str
    description: str
    result: GroupResult

    @property
    def sent(self) -> int:
        return self.result.sent

    def rate(self, metric: str) -> float:
        return self.result.click_rate if metric == "clicks" else self.result.open_rate


@dataclass
class ABReport:
    """A run's A/B test as staff read it: each variant's figures, the rest,
    and whether the differences are meaningful (``campaigns.abstats``)."""

    test: RunABTest
    variants: list[VariantRow]
    rest: GroupResult

    @staticmethod
    def rate_name(metric: str) -> str:
        return "click rate" if metric == "clicks" else "open rate"

    def ranked(self, metric: str) -> list[VariantRow]:
        """Best rate first; a tie keeps the label order."""
        return sorted(self.variants, key=lambda row: -row.rate(metric))

    def comparisons(self, metric: str) -> list[Comparison]:
        """The leader against each other variant."""
        ranked = self.ranked(metric)
        counted = "clicked" if metric == "clicks" else "opened"

        def figures(row: VariantRow) -> tuple[str, int, int]:
            return row.label, getattr(row.result, counted), row.sent

        return [compare(figures(ranked[0]), figures(other)) for other in ranked[1:]]

    def statement(self, metric: str) -> str:
        name = self.rate_name(metric)
        return " ".join(comparison_in_words(c, rate_name=name) for c in self.comparisons(metric))

    @property
    def winner_row(self) -> VariantRow | None:
        return next((row for row in self.variants if row.label == self.test.winner), None)


def run_ab_report(*, test: RunABTest) -> ABReport:
    """The A/B report of a run's test (one grouped query)."""
    groups = run_ab_group_results(run_id=test.run_id)
    return ABReport(
        test=test,
        variants=[
            VariantRow(
                label=v["label"],
                description=v["description"],
                result=groups.get(v["label"], GroupResult(group=v["label"])),
            )
            for v in test.variants
        ],
        rest=groups.get(AB_REST, GroupResult(group=AB_REST)),
    )


@dataclass(frozen=True)
class WaitingRows:
    """A run's rows waiting for one moment (a recipient-local send time),
    with the time zones they wait in: ``[(zone, count)]``, largest first; a
    zone name that is not an IANA zone is given as ``""`` (the campaign's
    default zone applies)."""

    due_at: datetime
    count: int
    zones: list[tuple[str, int]]


def run_waiting_by_due_time(*, run_id: int) -> list[WaitingRows]:
    """The run's rows waiting for a later moment, soonest first, each moment
    with the recipients' time zones (one grouped query; at most one row per
    moment and zone)."""
    grouped = (
        Delivery.objects.filter(
            run_id=run_id, status=Delivery.Status.PENDING, next_attempt_at__gt=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", "recipient__time_zone")
        .annotate(n=Count("id"))
    )
    by_moment: dict[datetime, dict[str, int]] = {}
    for due_at, zone, n in grouped:
        zones = by_moment.setdefault(due_at, {})
        name = zone if zone in known_zones() else ""
        zones[name] = zones.get(name, 0) + n
    return [
        WaitingRows(
            due_at=due_at,
            count=sum(zones.values()),
            zones=sorted(zones.items(), key=lambda item: (-item[1], item[0])),
        )
        for due_at, zones in sorted(by_moment.items())
    ]


def run_batch_ranges(*, run_id: int, batch_size: int) -> list[tuple[int, int]]:
    """(first id, last id) of each batch of the run's due pending rows.

    Computed in the database (a window function), so fanning out a run of
    any size holds only one pair of ids per batch in memory.
    """
    table = connection.ops.quote_name(Delivery._meta.db_table)
    sql = f"""
        SELECT MIN(id), MAX(id) FROM (
            SELECT id, (ROW_NUMBER() OVER (ORDER BY id) - 1) / %s AS bucket
            FROM {table}
            WHERE run_id = %s AND status = %s AND next_attempt_at <= %s
        ) numbered
        GROUP BY bucket
        ORDER BY bucket
    """
    with connection.cursor() as cursor:
        now = Delivery._meta.get_field("next_attempt_at").get_db_prep_value(
            timezone.now(), connection
        )
        cursor.execute(sql, [batch_size, run_id, Delivery.Status.PENDING, now])
        return [(first, last) for first, last in cursor.fetchall()]


def campaign_active_run(*, campaign: Campaign) -> CampaignRun | None:
    return campaign.runs.filter(status__in=CampaignRun.ACTIVE).order_by("-id").first()


def runs_to_maintain() -> QuerySet[CampaignRun]:
    """Runs the maintenance task looks at: not yet closed."""
    return CampaignRun.objects.filter(finished_at__isnull=True).exclude(
        status=CampaignRun.Status.DONE
    )


def runs_with_rows_in_doubt(*, within: timedelta = timedelta(days=7)) -> QuerySet[CampaignRun]:
    """Runs closed in the last ``within`` whose written totals count rows in
    doubt or still in flight (a resend of an in-doubt row): their totals may
    change while the in-doubt resolver works (rows it leaves to staff keep
    a run here until it is a week old)."""
    return (
        CampaignRun.objects.filter(finished_at__gte=timezone.now() - within)
        .filter(Q(totals__unknown__gt=0) | Q(totals__in_flight__gt=0))
        .only("pk", "totals")
        .order_by("-pk")
    )


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def contact_list_export_rows(*, contact_list: ContactList) -> Iterator[list[str]]:
    """The list's members as CSV rows (header first), streamed from the database.

    Two passes over the members: the first collects attribute names (one
    column each, so the file imports back), the second writes the rows.
    """
    members = Recipient.objects.filter(memberships__contact_list=contact_list).order_by("email")
    keys: set[str] = set()
    for attributes in members.values_list("attributes", flat=True).iterator(chunk_size=2000):
        keys.update(attributes or {})
    columns = sorted(keys - {"email", "name", "status"})
    yield ["email", "name", "status", *map(_cell, columns)]
    rows = members.values_list("email", "name", "status", "attributes")
    for email, name, status, attributes in rows.iterator(chunk_size=2000):
        attributes = attributes or {}
        yield [_cell(email), _cell(name), status, *(_cell(attributes.get(k)) for k in columns)]


def runs_with_problems() -> QuerySet[CampaignRun]:
    """Active runs that failed to launch or whose batches fail (for health and staff)."""
    return (
        CampaignRun.objects.exclude(problem="")
        .filter(status__in=CampaignRun.ACTIVE)
        .select_related("campaign")
        .order_by("problem_since")
    )


# --- Schedules, for people --------------------------------------------------------------

# How far ahead to look for a crontab's next times: past a leap day, so
# "29 2 *" still finds one.
NEXT_TIMES_HORIZON_DAYS = 4 * 366 + 1


def campaign_next_send_times(
    *, campaign: Campaign, count: int = 3, now: datetime | None = None
) -> list[datetime]:
    """The next ``count`` times the campaign's schedule fires (aware, in its
    time zone), as beat reads it: a one-off time still ahead, or the crontab's
    times with celery's rule (a day matches when its day of month, day of
    week and month all match). [] for no schedule or an invalid crontab."""
    now = now or timezone.now()
    if campaign.schedule == Campaign.Schedule.ONCE:
        return [campaign.send_at] if campaign.send_at and campaign.send_at > now else []
    if campaign.schedule != Campaign.Schedule.CRONTAB:
        return []
    try:
        zone = ZoneInfo(campaign.schedule_time_zone)
        cron = crontab(
            minute=campaign.cron_minute,
            hour=campaign.cron_hour,
            day_of_month=campaign.cron_day_of_month,
            month_of_year=campaign.cron_month_of_year,
            day_of_week=campaign.cron_day_of_week,
        )
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        return []
    times: list[datetime] = []
    local_now = now.astimezone(zone)
    day = local_now.date()
    for _ in range(NEXT_TIMES_HORIZON_DAYS):
        weekday = (day.weekday() + 1) % 7  # celery counts Sunday as 0
        if (
            day.month in cron.month_of_year
            and day.day in cron.day_of_month
            and weekday in cron.day_of_week
        ):
            for hour in sorted(cron.hour):
                for minute in sorted(cron.minute):
                    at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                    if at > local_now:
                        times.append(at)
                        if len(times) == count:
                            return times
        day += timedelta(days=1)
    return times


def crontab_in_words(*, campaign: Campaign) -> str:
    """The campaign's crontab as a sentence ("At 09:00, Monday through
    Friday"), by cron-descriptor; '' when it cannot be read."""
    options = cron_descriptor.Options()
    options.use_24hour_time_format = True
    try:
        return cron_descriptor.get_description(campaign.crontab_expression, options)
    except Exception:  # cron-descriptor raises its own assorted errors on bad input
        return ""
