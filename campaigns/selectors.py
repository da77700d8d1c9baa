"""Reads: audiences, run progress, batch boundaries, list exports."""

import json
from collections.abc import Iterator

from django.db import connection
from django.db.models import Count, Q, QuerySet

from campaigns.models import Campaign, CampaignRun, ContactList, ListMembership
from campaigns.segments import segment_q
from notifier.models import Delivery, Recipient

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
    audience = Q(pk__in=[])
    list_ids = list(campaign.contact_lists.values_list("id", flat=True))
    if list_ids:
        audience |= Q(
            pk__in=ListMembership.objects.filter(contact_list_id__in=list_ids).values(
                "recipient_id"
            )
        )
    for segment in campaign.segments.prefetch_related("conditions"):
        audience |= segment_q(segment)
    return Recipient.objects.filter(audience).order_by()


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
            WHERE run_id = %s AND status = %s AND next_attempt_at IS NOT NULL
        ) numbered
        GROUP BY bucket
        ORDER BY bucket
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [batch_size, run_id, Delivery.Status.PENDING])
        return [(first, last) for first, last in cursor.fetchall()]


def campaign_active_run(*, campaign: Campaign) -> CampaignRun | None:
    return campaign.runs.filter(status__in=CampaignRun.ACTIVE).order_by("-id").first()


def campaign_latest_run(*, campaign: Campaign) -> CampaignRun | None:
    return campaign.runs.order_by("-id").first()


def runs_to_maintain() -> QuerySet[CampaignRun]:
    """Runs the maintenance task looks at: not yet closed."""
    return CampaignRun.objects.filter(finished_at__isnull=True).exclude(
        status=CampaignRun.Status.DONE
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
    yield ["email", "name", "status", *columns]
    rows = members.values_list("email", "name", "status", "attributes")
    for email, name, status, attributes in rows.iterator(chunk_size=2000):
        attributes = attributes or {}
        yield [_cell(email), _cell(name), status, *(_cell(attributes.get(k)) for k in columns)]
