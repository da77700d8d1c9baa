"""Building digests: one Delivery per recipient, its notifications marked,
in one transaction (see the package docstring for why that is exactly once)."""

import logging
from collections import defaultdict
from dataclasses import dataclass
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
    digest_body,
    digest_contexts,
)
from notifier.services.digests.windows import DIGEST_FREQUENCIES, digest_key
from notifier.services.dispatch import (
    chunked,
    deliveries_dispatch,
    deliveries_mark_dispatched,
    deliveries_send_here,
)
from notifier.services.outbox import deliveries_insert_keyed
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


@dataclass(frozen=True)
class _Built:
    pk: int
    status: str
    next_attempt_at: datetime


def _create_digests(
    *, rows: list[tuple], frequency: str, window: str, now: datetime
) -> dict[int, _Built]:
    """Create one digest Delivery per recipient in ``rows``, its sections
    rendered (``digest_body``); recipient id -> what was written."""
    entries: dict[int, dict[int, list[tuple[int, datetime]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    data = {}
    for pk, rid, topic_id, created, payload in rows:
        entries[rid][topic_id].append((pk, created))
        data[pk] = payload
    topics = Topic.objects.in_bulk({topic_id for _pk, _rid, topic_id, _c, _d in rows})
    contents = digest_contexts(
        frequency=frequency, window=window, entries=entries, topics=topics, data=data
    )
    recipients = Recipient.objects.only(
        "id", "email", "status", "time_zone", "quiet_hours_start", "quiet_hours_end"
    ).in_bulk(list(entries))
    suppressed = suppression_reasons(recipients.values())

    written = []
    for rid, content in contents.items():
        reason = suppressed.get(rid)
        due = _held_until(recipients[rid], now) or now
        written.append(
            {
                "recipient_id": rid,
                "idempotency_key": digest_key(frequency=frequency, recipient_id=rid, window=window),
                "context": digest_body(content),
                "next_attempt_at": due,
                "status": Delivery.Status.PENDING if reason is None else Delivery.Status.SUPPRESSED,
                "status_reason": reason or "",
                # A digest due now is sent (or dispatched) right after the
                # commit: written dispatched, as the dispatch would mark it
                # (one UPDATE of every digest less). One held for quiet hours
                # is left to the sweeper, when due.
                "dispatched_at": now if reason is None and due <= now else None,
            }
        )
    ids = deliveries_insert_keyed(
        rows=written,
        shared={
            "kind": Delivery.Kind.DIGEST,
            "subject": DIGEST_SUBJECT,
            "html_body": DIGEST_HTML,
            "text_body": DIGEST_TEXT,
            "transport": settings.NOTIFIER_DEFAULT_TRANSPORT,
        },
    )
    return {
        row["recipient_id"]: _Built(
            ids[row["idempotency_key"]], row["status"], row["next_attempt_at"]
        )
        for row in written
    }


def _held_until(recipient: Recipient, now: datetime) -> datetime | None:
    """The end of the quiet hours (the installation's and the recipient's) a
    digest built ``now`` falls in: it waits in the outbox until then."""
    windows = recipient_quiet_windows(recipient=recipient)
    if not windows:
        return None
    return quiet_hours_end(now=now, time_zone=recipient.time_zone, windows=windows)


def _mark_included(*, rows: list[tuple], deliveries: dict[int, _Built], now: datetime) -> None:
    """Point each locked notification at its recipient's digest."""
    if connection.vendor == "postgresql":
        # One statement, the pairs as two arrays (a CASE per recipient grows
        # with the batch and costs more to plan than to run). Knowing the
        # arrays' length, the planner hashes the whole notification table
        # to join them (a sequential scan per batch, growing with the
        # table's history: 190 ms a batch at 500,000 rows); looked up by
        # primary key one by one it is 60 ms. The setting lasts until the
        # commit, which follows.
        table = Notification._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('enable_hashjoin', 'off', true),"
                " set_config('enable_mergejoin', 'off', true)"
            )
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
    *, recipient_ids: list[int], frequency: str, window: str, cutoff: datetime, send_here: bool
) -> tuple[dict[str, int], list[int]]:
    """(counts, ids of the digests to send now, every one of them marked
    dispatched); they are published after the commit unless ``send_here``
    (the caller sends them)."""
    keys = {
        rid: digest_key(frequency=frequency, recipient_id=rid, window=window)
        for rid in sorted(set(recipient_ids))
    }
    counts = {"built": 0, "suppressed": 0, "notifications": 0, "existing": 0}
    with transaction.atomic():
        existing = digest_deliveries_by_key(keys=list(keys.values()))
        counts["existing"] = len(existing)
        # Built by an earlier attempt that died before dispatching: marked
        # now, as the new ones are written. (One that died after writing them
        # dispatched, which a build does for the digests due now, left them
        # to the sweeper, as a death after marking them would.)
        to_dispatch = [
            pk
            for pk, status, dispatched_at in existing.values()
            if status == Delivery.Status.PENDING and dispatched_at is None
        ]
        if to_dispatch:
            deliveries_mark_dispatched(to_dispatch)
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
        if to_dispatch and not send_here:
            transaction.on_commit(
                lambda: deliveries_dispatch(ids_by_kind={Delivery.Kind.DIGEST: to_dispatch})
            )
    return counts, to_dispatch


def digests_build(
    *,
    recipient_ids: list[int],
    frequency: str,
    window: str,
    cutoff: datetime,
    send_here: bool = False,
) -> dict[str, int]:
    """Build (and dispatch) the ``window`` digest of each recipient that has
    pending notifications from before ``cutoff``; see the module docstring.

    With ``send_here`` (the build task) the digests due now are sent by this
    process once the build has committed, as a batch task would send them
    (``deliveries_send_here``): building and sending overlap across the
    workers instead of every send queueing behind every build. Inside a
    caller's transaction they are dispatched on its commit instead.

    Safe to run twice. Returns counts: ``built`` digests, ``suppressed``
    recipients (digest recorded, not sent), ``notifications`` included,
    ``existing`` digests found already built.
    """
    if frequency not in DIGEST_FREQUENCIES:
        raise ValueError(f"Digests are hourly, daily or weekly, not {frequency!r}.")
    if timezone.is_naive(cutoff):
        raise ValueError("cutoff must be timezone-aware.")
    send_here = send_here and not connection.in_atomic_block
    args = dict(recipient_ids=recipient_ids, frequency=frequency, window=window, cutoff=cutoff)
    try:
        counts, due = _build_once(**args, send_here=send_here)
    except IntegrityError:
        # Another build created one of these digests between our look-up and
        # our insert (only notifications committed late can cause this); it
        # has committed now, so a second pass skips it.
        logger.info("A %s digest of %s was built concurrently; retrying", frequency, window)
        counts, due = _build_once(**args, send_here=send_here)
    if send_here and due:
        deliveries_send_here(ids=due)
    return counts
