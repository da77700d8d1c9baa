"""Building digests: one Delivery per recipient, its notifications marked,
in one transaction (see the package docstring for why that is exactly once)."""

import logging
from collections import defaultdict
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, Case, Value, When
from django.utils import timezone

from notifier.models import Delivery, Notification, Recipient, Topic
from notifier.selectors import digest_deliveries_by_key, notifications_pending
from notifier.services.digests.entries import (
    DIGEST_HTML,
    DIGEST_SUBJECT,
    DIGEST_TEXT,
    digest_contexts,
)
from notifier.services.digests.windows import DIGEST_FREQUENCIES, digest_key
from notifier.services.dispatch import chunked, deliveries_dispatch
from notifier.services.quiet_hours import quiet_hours_end, recipient_quiet_windows
from notifier.services.suppressions import suppression_reasons

logger = logging.getLogger(__name__)

MARK_CHUNK = 5000  # notification ids per UPDATE on SQLite


def _lock_pending(*, recipient_ids: list[int], frequency: str, cutoff: datetime) -> list[tuple]:
    """(id, recipient_id, topic_id, created_at, data) of the pending
    notifications, locked until the transaction ends: one query. Rows another
    build holds are skipped: they belong to that build's digest."""
    pending = notifications_pending(
        recipient_ids=recipient_ids, frequency=frequency, cutoff=cutoff
    ).order_by("recipient_id", "id")
    if connection.features.has_select_for_update_skip_locked:
        pending = pending.select_for_update(skip_locked=True)
    return list(pending.values_list("id", "recipient_id", "topic_id", "created_at", "data"))


def _create_digests(
    *, rows: list[tuple], frequency: str, window: str, now: datetime
) -> dict[int, Delivery]:
    """Create one digest Delivery per recipient in ``rows``; recipient id -> it."""
    entries: dict[int, dict[int, list[tuple[int, datetime]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    data = {}
    for pk, rid, topic_id, created, payload in rows:
        entries[rid][topic_id].append((pk, created))
        data[pk] = payload
    topics = Topic.objects.in_bulk({topic_id for _pk, _rid, topic_id, _c, _d in rows})
    contexts = digest_contexts(
        frequency=frequency, window=window, entries=entries, topics=topics, data=data
    )
    recipients = Recipient.objects.only(
        "id", "email", "status", "time_zone", "quiet_hours_start", "quiet_hours_end"
    ).in_bulk(list(entries))
    suppressed = suppression_reasons(recipients.values())

    deliveries = {}
    for rid, context in contexts.items():
        delivery = Delivery(
            recipient_id=rid,
            kind=Delivery.Kind.DIGEST,
            subject=DIGEST_SUBJECT,
            html_body=DIGEST_HTML,
            text_body=DIGEST_TEXT,
            context=context,
            transport=settings.NOTIFIER_DEFAULT_TRANSPORT,
            idempotency_key=digest_key(frequency=frequency, recipient_id=rid, window=window),
            next_attempt_at=_held_until(recipients[rid], now) or now,
        )
        reason = suppressed.get(rid)
        if reason is not None:
            delivery.status = Delivery.Status.SUPPRESSED
            delivery.status_reason = reason
        deliveries[rid] = delivery
    Delivery.objects.bulk_create(deliveries.values())
    return deliveries


def _held_until(recipient: Recipient, now: datetime) -> datetime | None:
    """The end of the quiet hours (the installation's and the recipient's) a
    digest built ``now`` falls in: it waits in the outbox until then."""
    windows = recipient_quiet_windows(recipient=recipient)
    if not windows:
        return None
    return quiet_hours_end(now=now, time_zone=recipient.time_zone, windows=windows)


def _mark_included(*, rows: list[tuple], deliveries: dict[int, Delivery], now: datetime) -> None:
    """Point each locked notification at its recipient's digest."""
    if connection.vendor == "postgresql":
        # One statement, the pairs as two arrays (a CASE per recipient grows
        # with the batch and costs more to plan than to run).
        table = Notification._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} AS n SET digest_id = v.digest_id, included_at = %s
                FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, digest_id)
                WHERE n.id = v.id
                """,
                [now, [row[0] for row in rows], [deliveries[row[1]].pk for row in rows]],
            )
        return
    for chunk in chunked(rows, MARK_CHUNK):
        rids = {row[1] for row in chunk}
        Notification.objects.filter(id__in=[row[0] for row in chunk]).update(
            digest_id=Case(
                *[When(recipient_id=rid, then=Value(deliveries[rid].pk)) for rid in sorted(rids)],
                output_field=BigIntegerField(),
            ),
            included_at=now,
        )


def _build_once(
    *, recipient_ids: list[int], frequency: str, window: str, cutoff: datetime
) -> dict[str, int]:
    keys = {
        rid: digest_key(frequency=frequency, recipient_id=rid, window=window)
        for rid in sorted(set(recipient_ids))
    }
    counts = {"built": 0, "suppressed": 0, "notifications": 0, "existing": 0}
    with transaction.atomic():
        existing = digest_deliveries_by_key(keys=list(keys.values()))
        counts["existing"] = len(existing)
        # Built by an earlier attempt that died before dispatching.
        to_dispatch = [
            pk
            for pk, status, dispatched_at in existing.values()
            if status == Delivery.Status.PENDING and dispatched_at is None
        ]
        todo = [rid for rid, key in keys.items() if key not in existing]
        rows = _lock_pending(recipient_ids=todo, frequency=frequency, cutoff=cutoff) if todo else []
        if rows:
            now = timezone.now()
            deliveries = _create_digests(rows=rows, frequency=frequency, window=window, now=now)
            _mark_included(rows=rows, deliveries=deliveries, now=now)
            for delivery in deliveries.values():
                if delivery.status == Delivery.Status.PENDING:
                    if delivery.next_attempt_at <= now:  # else the sweeper, when due
                        to_dispatch.append(delivery.pk)
                    counts["built"] += 1
                else:
                    counts["suppressed"] += 1
            counts["notifications"] = len(rows)
        if to_dispatch:
            transaction.on_commit(
                lambda: deliveries_dispatch(ids_by_kind={Delivery.Kind.DIGEST: to_dispatch})
            )
    return counts


def digests_build(
    *, recipient_ids: list[int], frequency: str, window: str, cutoff: datetime
) -> dict[str, int]:
    """Build (and dispatch) the ``window`` digest of each recipient that has
    pending notifications from before ``cutoff``; see the module docstring.

    Safe to run twice. Returns counts: ``built`` digests, ``suppressed``
    recipients (digest recorded, not sent), ``notifications`` included,
    ``existing`` digests found already built.
    """
    if frequency not in DIGEST_FREQUENCIES:
        raise ValueError(f"Digests are hourly, daily or weekly, not {frequency!r}.")
    if timezone.is_naive(cutoff):
        raise ValueError("cutoff must be timezone-aware.")
    try:
        return _build_once(
            recipient_ids=recipient_ids, frequency=frequency, window=window, cutoff=cutoff
        )
    except IntegrityError:
        # Another build created one of these digests between our look-up and
        # our insert (only notifications committed late can cause this); it
        # has committed now, so a second pass skips it.
        logger.info("A %s digest of %s was built concurrently; retrying", frequency, window)
        return _build_once(
            recipient_ids=recipient_ids, frequency=frequency, window=window, cutoff=cutoff
        )
