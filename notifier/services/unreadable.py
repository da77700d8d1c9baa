"""Rows Python cannot read back: failed one by one, never a whole step.

A Delivery whose stored value Python cannot load (a time PostgreSQL accepts
but ``datetime`` cannot hold, from before the range CHECK existed) would make
every query that loads it fail: the batch that claimed it, the sweeper's
recovery of its claim, the admin. The loaders here load what they can, fail
each row they cannot read with the reason, and clear the values that made it
unreadable, so the row can be read (and shown) from then on.
"""

import logging

from django.db import DataError
from django.db.models import DateTimeField, Q, QuerySet
from django.utils import timezone

from notifier.models import STORED_TIME_MAX, STORED_TIME_MIN, Delivery

logger = logging.getLogger(__name__)

# What loading an unreadable value raises: psycopg's DataError ("timestamp
# too large"), a converter's ValueError / OverflowError (SQLite).
UNREADABLE = (DataError, ValueError, OverflowError)
UNREADABLE_REASON = "Stored data could not be read back"


def deliveries_load(queryset: QuerySet) -> list[Delivery]:
    """``list(queryset)``, except that a row which cannot be read is failed
    (see ``deliveries_fail_unreadable``) and left out instead of failing the
    whole load. Costs one query while every row reads, one per row after."""
    try:
        return list(queryset)
    except UNREADABLE:
        pass
    rows: list[Delivery] = []
    for pk in list(queryset.values_list("pk", flat=True)):
        try:
            rows.extend(queryset.filter(pk=pk))
        except UNREADABLE as exc:
            deliveries_fail_unreadable(ids=[pk], error=f"{type(exc).__name__}: {exc}")
    return rows


def deliveries_fail_unreadable(*, ids: list[int], error: str) -> int:
    """Fail unfinished rows among ``ids`` with the reason, release their claim,
    and replace every time outside the stored range (null where the column
    allows it, else now). Returns how many rows were failed."""
    now = timezone.now()
    logger.error("Delivery rows %s cannot be read back (%s); failing them", ids, error)
    failed = Delivery.objects.filter(
        id__in=ids, status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING]
    ).update(
        status=Delivery.Status.FAILED,
        failure_kind=Delivery.FailureKind.PERMANENT,
        status_reason=UNREADABLE_REASON,
        last_error=error[:2000],
        claim_token=None,
        lease_expires_at=None,
        updated_at=now,
    )
    for field in Delivery._meta.concrete_fields:
        if isinstance(field, DateTimeField):
            outside = Q(**{f"{field.name}__lt": STORED_TIME_MIN}) | Q(
                **{f"{field.name}__gte": STORED_TIME_MAX}
            )
            Delivery.objects.filter(outside, id__in=ids).update(
                **{field.name: None if field.null else now}
            )
    return failed


def deliveries_fail_out_of_range() -> int:
    """Fail pending rows due at a time outside the stored range: the sweep
    loads only due rows, so one due in year 10000 would otherwise wait (and
    break every page that shows it) for ever. Uses the due index; finds
    nothing while the range CHECK holds."""
    outside = Q(next_attempt_at__lt=STORED_TIME_MIN) | Q(next_attempt_at__gte=STORED_TIME_MAX)
    ids = list(
        Delivery.objects.filter(outside, status=Delivery.Status.PENDING).values_list(
            "id", flat=True
        )[:1000]
    )
    if not ids:
        return 0
    return deliveries_fail_unreadable(
        ids=ids, error="next_attempt_at is outside the range a message can be due in"
    )
