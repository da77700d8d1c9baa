"""Hourly and daily digests: finding who is due, and building one email each.

Each event is in exactly one digest, and no digest is sent twice:

* A digest is named ``digest:<frequency>:<recipient id>:<window>`` (the hour,
  in UTC, or the recipient's local date), the unique idempotency key of its
  Delivery. A run triggered twice for one window, or a task redelivered after
  its worker died, finds the key and builds nothing again.
* A window has a cutoff (the top of the hour; the recipient's local digest
  time that day): notifications created after it wait for the next digest,
  whenever the task happens to run.
* The build locks the recipients' pending notifications (``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL), creates the digest Deliveries and marks the
  notifications included (``digest``, ``included_at``) in ONE transaction. A
  worker killed before the commit leaves everything pending for the
  redelivered task; one killed after it leaves the digest built.
* The Deliveries are dispatched after the commit; if the worker dies in
  between, the redelivered task (or the sweeper) dispatches them.

The scheduler (``digests_run``) reads due recipients a page at a time from
the partial index over pending notifications and fans out a Celery group of
small batches per page, so neither it nor any task holds every recipient or
every notification.
"""

import functools
import html
import logging
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import group
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, Case, Value, When
from django.utils import timezone
from django.utils.html import escape, strip_tags

from notifier import templating
from notifier.models import Delivery, Frequency, Notification, Recipient, Topic
from notifier.selectors import (
    daily_digest_due_page,
    digest_deliveries_by_key,
    digest_due_recipient_ids,
    notifications_pending,
)
from notifier.services.dispatch import chunked, deliveries_dispatch
from notifier.services.suppressions import suppression_reasons

logger = logging.getLogger(__name__)

DIGEST_FREQUENCIES = (Frequency.HOURLY, Frequency.DAILY)
PAGE_SIZE = 1000  # recipient ids read per query by the scheduler
MARK_CHUNK = 5000  # notification ids per UPDATE

# The digest email. Entries are rendered when the digest is built (each with
# its topic's ``digest_item``, in the locked-down engine, autoescaped) and
# stored in the Delivery's context; the sender renders these sources with it,
# plus ``recipient`` and the links a message hook adds.
DIGEST_SUBJECT = "Your {{ period }} digest: {{ total }} new notification{{ total|pluralize }}"
DIGEST_HTML = """<h1>Your {{ period }} digest</h1>
{% for section in sections %}<h2>{{ section.topic.name }} ({{ section.count }})</h2>
<ul>
{% for item in section.items %}<li>{{ item.html|safe }}</li>
{% endfor %}</ul>
{% if section.more %}<p>And {{ section.more }} more.</p>
{% endif %}{% endfor %}{% if preferences_url %}<p><a href="{{ preferences_url }}">Choose which notifications you get, and how often</a></p>
{% endif %}{% if unsubscribe_url %}<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
{% endif %}"""
DIGEST_TEXT = """Your {{ period }} digest
{% for section in sections %}
{{ section.topic.name }} ({{ section.count }})
{% for item in section.items %}- {{ item.text }}
{% endfor %}{% if section.more %}And {{ section.more }} more.
{% endif %}{% endfor %}{% if preferences_url %}
Choose which notifications you get, and how often: {{ preferences_url }}
{% endif %}{% if unsubscribe_url %}Unsubscribe: {{ unsubscribe_url }}
{% endif %}"""
FALLBACK_ITEM = "{{ data }}"


@dataclass(frozen=True)
class DigestBatch:
    """Recipients whose ``frequency`` digest for ``window`` (closing at
    ``cutoff``) one task builds."""

    recipient_ids: list[int]
    frequency: str
    window: str
    cutoff: datetime


def digest_key(*, frequency: str, recipient_id: int, window: str) -> str:
    return f"digest:{frequency}:{recipient_id}:{window}"


# --- Windows ------------------------------------------------------------------------


def hourly_window(*, now: datetime) -> tuple[str, datetime]:
    """(window, cutoff): the hour that has just begun, in UTC."""
    cutoff = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return cutoff.strftime("%Y-%m-%dT%H"), cutoff


@functools.cache
def known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def daily_windows(*, now: datetime) -> dict[str, tuple[str, datetime]]:
    """For each known zone whose local digest time has come today:
    zone -> (local date, the moment that time came)."""
    at = settings.NOTIFIER_DAILY_DIGEST_TIME
    windows = {}
    for name in known_zones():
        zone = zoneinfo.ZoneInfo(name)
        local_now = now.astimezone(zone)
        due_at = datetime.combine(local_now.date(), at, tzinfo=zone)
        if local_now >= due_at:
            windows[name] = (local_now.date().isoformat(), due_at.astimezone(UTC))
    return windows


# --- Finding who is due ---------------------------------------------------------------


def _without_built(*, frequency: str, pairs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop (recipient, window) pairs whose digest already exists."""
    keys = {
        digest_key(frequency=frequency, recipient_id=rid, window=window): (rid, window)
        for rid, window in pairs
    }
    built = digest_deliveries_by_key(keys=list(keys))
    return [pair for key, pair in keys.items() if key not in built]


def _hourly_pages(*, now: datetime, page_size: int) -> Iterator[list[tuple[int, str, datetime]]]:
    window, cutoff = hourly_window(now=now)
    after_id = 0
    while ids := digest_due_recipient_ids(
        frequency=Frequency.HOURLY, cutoff=cutoff, after_id=after_id, limit=page_size
    ):
        after_id = ids[-1]
        due = _without_built(frequency=Frequency.HOURLY, pairs=[(rid, window) for rid in ids])
        yield [(rid, window, cutoff) for rid, window in due]


def _daily_pages(*, now: datetime, page_size: int) -> Iterator[list[tuple[int, str, datetime]]]:
    windows = daily_windows(now=now)
    zones_by_cutoff: dict[datetime, list[str]] = defaultdict(list)
    for name, (_window, cutoff) in windows.items():
        zones_by_cutoff[cutoff].append(name)
    utc = windows.get("UTC")  # names that are not IANA zones count as UTC
    after_id = 0
    while rows := daily_digest_due_page(
        cutoff_by_zones=sorted(
            (cutoff, sorted(zones)) for cutoff, zones in zones_by_cutoff.items()
        ),
        known_zones=known_zones(),
        unknown_zone_cutoff=utc[1] if utc else None,
        after_id=after_id,
        limit=page_size,
    ):
        after_id = rows[-1][0]
        window_of = {rid: windows.get(zone, utc) for rid, zone in rows}
        due = _without_built(
            frequency=Frequency.DAILY, pairs=[(rid, window_of[rid][0]) for rid, _zone in rows]
        )
        yield [(rid, window, window_of[rid][1]) for rid, window in due]


def digest_batches_due(
    *, frequency: str, now: datetime, batch_size: int | None = None, page_size: int = PAGE_SIZE
) -> Iterator[list[DigestBatch]]:
    """Pages of batches of recipients due a ``frequency`` digest at ``now``.

    A recipient is due when they have a pending notification of that
    frequency created before their window's cutoff and no digest yet for
    that window.
    """
    if frequency not in DIGEST_FREQUENCIES:
        raise ValueError(f"Digests are hourly or daily, not {frequency!r}.")
    batch_size = batch_size or settings.NOTIFIER_DIGEST_BATCH_SIZE
    pages = _hourly_pages if frequency == Frequency.HOURLY else _daily_pages
    for page in pages(now=now, page_size=page_size):
        by_window: dict[tuple[str, datetime], list[int]] = defaultdict(list)
        for rid, window, cutoff in page:
            by_window[window, cutoff].append(rid)
        batches = [
            DigestBatch(chunk, frequency, window, cutoff)
            for (window, cutoff), ids in by_window.items()
            for chunk in chunked(ids, batch_size)
        ]
        if batches:
            yield batches


def _publish_builds(batches: list[DigestBatch]) -> None:
    from notifier.tasks import build_digests

    group(
        build_digests.si(b.recipient_ids, b.frequency, b.window, b.cutoff.isoformat()).set(
            queue="digests"
        )
        for b in batches
    ).apply_async()


def digests_send_now(
    *, recipient_ids: list[int] | None = None, topic_ids: list[int] | None = None, now=None
) -> dict[str, int]:
    """Staff: send the digests of these recipients (or of everyone with a
    pending notification of these topics) now instead of at the top of the
    hour or their daily time. Each digest holds all the recipient's pending
    notifications of its frequency, as the scheduled one would have.

    The window is this moment (``now-<UTC timestamp>``): pressing twice in the
    same second sends once; the scheduled digest later finds nothing left.
    Returns how many recipients and build tasks.
    """
    now = now or timezone.now()
    pending = Notification.objects.filter(
        included_at__isnull=True, frequency__in=DIGEST_FREQUENCIES
    )
    if recipient_ids is not None:
        pending = pending.filter(recipient_id__in=recipient_ids)
    if topic_ids is not None:
        pending = pending.filter(topic_id__in=topic_ids)
    window = f"now-{now.astimezone(UTC):%Y%m%dT%H%M%S}"
    size = settings.NOTIFIER_DIGEST_BATCH_SIZE
    batches = []
    for frequency in DIGEST_FREQUENCIES:
        ids = sorted(
            set(pending.filter(frequency=frequency).values_list("recipient_id", flat=True))
        )
        batches += [
            DigestBatch(ids[i : i + size], frequency, window, now) for i in range(0, len(ids), size)
        ]
    if batches:
        transaction.on_commit(lambda: _publish_builds(batches))
    recipients = sum(len(b.recipient_ids) for b in batches)
    logger.info("Digests sent now: %d recipients in %d tasks", recipients, len(batches))
    return {"recipients": recipients, "tasks": len(batches)}


def digests_run(*, frequency: str, now: datetime | None = None) -> dict[str, int]:
    """Fan out digest builds for everyone due: one Celery group per page.

    Safe to run twice for the same window (the digest keys dedupe). Returns
    how many recipients were found and how many tasks were published.
    """
    now = now or timezone.now()
    found = published = 0
    for batches in digest_batches_due(frequency=frequency, now=now):
        _publish_builds(batches)
        found += sum(len(b.recipient_ids) for b in batches)
        published += len(batches)
    logger.info("%s digest run: %d recipients in %d tasks", frequency, found, published)
    return {"recipients": found, "tasks": published}


# --- Building -----------------------------------------------------------------------------


def _topic_data(topic: Topic) -> dict:
    return {"key": topic.key, "name": topic.name, "description": topic.description}


def _readable(data) -> str:
    """An entry for a topic without its own ``digest_item``: the data's values
    as words ("title: Bob replied · url: https://…"), never a Python repr."""
    if isinstance(data, dict):
        return " · ".join(f"{key}: {_readable(value)}" for key, value in data.items())
    if isinstance(data, list):
        return ", ".join(_readable(value) for value in data)
    return "" if data is None else str(data)


def _render_item(topic: Topic, context: dict) -> dict:
    source = (topic.digest_item or "").strip()
    try:
        if source in ("", FALLBACK_ITEM):
            rendered = escape(_readable(context["data"]))
        else:
            rendered = templating.render(source, context)
    except Exception:
        logger.warning("Digest entry of topic %s does not render", topic.key, exc_info=True)
        rendered = escape(_readable(context["data"]))
    text = strip_tags(rendered) if "<" in rendered else rendered
    return {
        "html": rendered,
        "text": html.unescape(text).strip(),
        "created_at": context["created_at"],
    }


def digest_context(
    *,
    frequency: str,
    window: str,
    entries: dict[int, list[tuple[int, datetime]]],
    topics: dict[int, Topic],
    data: dict[int, object],
) -> dict:
    """The Delivery context of one digest.

    ``entries`` maps topic id -> [(notification id, created_at)], all the
    recipient's notifications in this digest; ``data`` holds the data of the
    ones shown (the newest ``digest_cap`` per topic). Sections come newest
    first, and so do the entries within each.
    """
    sections = []
    for topic_id, rows in entries.items():
        topic = topics[topic_id]
        rows = sorted(rows, key=lambda row: (row[1], row[0]), reverse=True)
        topic_data = _topic_data(topic)
        items = [
            _render_item(
                topic, {"data": data[pk], "topic": topic_data, "created_at": created.isoformat()}
            )
            for pk, created in rows[: topic.digest_cap]
        ]
        sections.append(
            {
                "topic": topic_data,
                "count": len(rows),
                "more": len(rows) - len(items),
                "items": items,
                "newest": rows[0][1].isoformat(),
            }
        )
    sections.sort(key=lambda section: section["newest"], reverse=True)
    return {
        "frequency": frequency,
        "period": "hourly" if frequency == Frequency.HOURLY else "daily",
        "window": window,
        "total": sum(section["count"] for section in sections),
        "sections": sections,
    }


def _lock_pending(*, recipient_ids: list[int], frequency: str, cutoff: datetime) -> list[tuple]:
    """(id, recipient_id, topic_id, created_at) of the pending notifications,
    locked until the transaction ends. Rows another build holds are skipped:
    they belong to that build's digest."""
    pending = notifications_pending(
        recipient_ids=recipient_ids, frequency=frequency, cutoff=cutoff
    ).order_by("recipient_id", "id")
    if connection.features.has_select_for_update_skip_locked:
        pending = pending.select_for_update(skip_locked=True)
    return list(pending.values_list("id", "recipient_id", "topic_id", "created_at"))


def _create_digests(
    *, rows: list[tuple], frequency: str, window: str, now: datetime
) -> dict[int, Delivery]:
    """Create one digest Delivery per recipient in ``rows``; recipient id -> it."""
    entries: dict[int, dict[int, list[tuple[int, datetime]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for pk, rid, topic_id, created in rows:
        entries[rid][topic_id].append((pk, created))
    topics = Topic.objects.in_bulk({topic_id for _pk, _rid, topic_id, _c in rows})
    shown = [
        pk
        for by_topic in entries.values()
        for topic_id, topic_rows in by_topic.items()
        for pk, _created in sorted(topic_rows, key=lambda r: (r[1], r[0]), reverse=True)[
            : topics[topic_id].digest_cap
        ]
    ]
    data = {}
    for chunk in chunked(shown, MARK_CHUNK):
        data.update(Notification.objects.filter(id__in=chunk).values_list("id", "data"))
    recipients = Recipient.objects.only("id", "email", "status").in_bulk(list(entries))
    suppressed = suppression_reasons(recipients.values())

    deliveries = {}
    for rid, by_topic in entries.items():
        delivery = Delivery(
            recipient_id=rid,
            kind=Delivery.Kind.DIGEST,
            subject=DIGEST_SUBJECT,
            html_body=DIGEST_HTML,
            text_body=DIGEST_TEXT,
            context=digest_context(
                frequency=frequency, window=window, entries=by_topic, topics=topics, data=data
            ),
            transport=settings.NOTIFIER_DEFAULT_TRANSPORT,
            idempotency_key=digest_key(frequency=frequency, recipient_id=rid, window=window),
            next_attempt_at=now,
        )
        reason = suppressed.get(rid)
        if reason is not None:
            delivery.status = Delivery.Status.SUPPRESSED
            delivery.status_reason = reason
        deliveries[rid] = delivery
    Delivery.objects.bulk_create(deliveries.values())
    return deliveries


def _mark_included(*, rows: list[tuple], deliveries: dict[int, Delivery], now: datetime) -> None:
    for chunk in chunked(rows, MARK_CHUNK):
        rids = {rid for _pk, rid, _t, _c in chunk}
        Notification.objects.filter(id__in=[pk for pk, _rid, _t, _c in chunk]).update(
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
        raise ValueError(f"Digests are hourly or daily, not {frequency!r}.")
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
