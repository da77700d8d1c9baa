"""Reads of the delivery engine: querysets and plain values, no state changes."""

from datetime import datetime

from django.db.models import Case, Count, DateTimeField, F, Min, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce

from notifier.models import (
    Delivery,
    Frequency,
    Notification,
    Preference,
    Recipient,
    Suppression,
    Topic,
)
from notifier.services.recipients import normalize_email

S = Delivery.Status


def delivery_event_totals(*, run_id: int) -> dict[str, int]:
    """What happened to a campaign run's messages after they were sent (one query).

    ``delivered`` counts messages the ESP delivered (a complaint implies
    delivery); ``opened`` / ``clicked`` count messages opened / clicked at
    least once; ``opens`` / ``clicks`` count every open and click.
    """
    return Delivery.objects.filter(run_id=run_id).aggregate(
        delivered=Count("id", filter=Q(status__in=[S.DELIVERED, S.COMPLAINED])),
        bounced=Count("id", filter=Q(status=S.BOUNCED)),
        complained=Count("id", filter=Q(status=S.COMPLAINED)),
        opened=Count("id", filter=Q(opens__gt=0)),
        clicked=Count("id", filter=Q(clicks__gt=0)),
        opens=Coalesce(Sum("opens"), 0),
        clicks=Coalesce(Sum("clicks"), 0),
    )


def recipient_topic_frequencies(*, recipient: Recipient) -> list[tuple[Topic, str]]:
    """Every topic with the recipient's frequency for it (the topic's default if unset)."""
    chosen = dict(
        Preference.objects.filter(recipient=recipient).values_list("topic_id", "frequency")
    )
    return [(topic, chosen.get(topic.pk, topic.default_frequency)) for topic in Topic.objects.all()]


def active_suppression(*, email: str) -> Suppression | None:
    return Suppression.objects.filter(email=email, lifted_at__isnull=True).first()


# --- Notifications and digests ---------------------------------------------------


def topic_frequency_for(*, recipient: Recipient, topic: Topic) -> str:
    """The recipient's choice for ``topic``, else the topic's default."""
    chosen = (
        Preference.objects.filter(recipient=recipient, topic=topic)
        .values_list("frequency", flat=True)
        .first()
    )
    return chosen or topic.default_frequency


def notifications_pending(
    *, recipient_ids: list[int], frequency: str, cutoff: datetime
) -> QuerySet[Notification]:
    """Notifications of these recipients waiting for a ``frequency`` digest
    that closes at ``cutoff`` (later ones wait for the next digest)."""
    return Notification.objects.filter(
        recipient_id__in=recipient_ids,
        frequency=frequency,
        included_at__isnull=True,
        created_at__lt=cutoff,
    )


def digest_due_recipient_ids(
    *, frequency: str, cutoff: datetime, after_id: int, limit: int
) -> list[int]:
    """One page (ascending ids above ``after_id``) of recipients with
    notifications for a ``frequency`` digest closing at ``cutoff``.

    Walks the partial index ``notification_due_idx`` (frequency, recipient)
    over not-yet-included rows only: recipients with nothing due are never
    read, and a page is at most ``limit`` ids.
    """
    return list(
        Notification.objects.filter(
            frequency=frequency,
            included_at__isnull=True,
            created_at__lt=cutoff,
            recipient_id__gt=after_id,
        )
        .order_by("recipient_id")
        .values_list("recipient_id", flat=True)
        .distinct()[:limit]
    )


def daily_digest_due_page(
    *,
    cutoff_by_zones: list[tuple[datetime, list[str]]],
    known_zones: frozenset[str],
    unknown_zone_cutoff: datetime | None,
    after_id: int,
    limit: int,
) -> list[tuple[int, str]]:
    """One page of (recipient id, time zone) due a daily digest.

    ``cutoff_by_zones`` lists, for the zones whose local digest time has come
    today, the moment it came; a recipient is due when they have a pending
    daily notification from before their zone's cutoff. Recipients whose zone
    name is not a known IANA zone are treated as UTC (``unknown_zone_cutoff``).
    """
    whens = [
        When(recipient__time_zone__in=zones, then=Value(cutoff))
        for cutoff, zones in cutoff_by_zones
    ]
    if unknown_zone_cutoff is not None:
        whens.append(
            When(~Q(recipient__time_zone__in=known_zones), then=Value(unknown_zone_cutoff))
        )
    if not whens:
        return []
    return list(
        Notification.objects.filter(
            frequency=Frequency.DAILY, included_at__isnull=True, recipient_id__gt=after_id
        )
        .alias(cutoff=Case(*whens, default=None, output_field=DateTimeField()))
        .filter(created_at__lt=F("cutoff"))
        .order_by("recipient_id")
        .values_list("recipient_id", "recipient__time_zone")
        .distinct()[:limit]
    )


def weekly_digest_due_page(*, after_id: int, limit: int) -> list[tuple]:
    """One page of recipients with pending weekly notifications:
    (recipient id, time zone, weekly digest day, weekly digest time, the
    oldest pending notification's created_at). Whether their digest is due
    depends on their own day, time and zone, which the caller works out."""
    return list(
        Notification.objects.filter(
            frequency=Frequency.WEEKLY, included_at__isnull=True, recipient_id__gt=after_id
        )
        .values_list(
            "recipient_id",
            "recipient__time_zone",
            "recipient__weekly_digest_day",
            "recipient__weekly_digest_time",
        )
        .annotate(oldest=Min("created_at"))
        .order_by("recipient_id")[:limit]
    )


def digest_deliveries_by_key(*, keys: list[str]) -> dict[str, tuple[int, str, datetime | None]]:
    """Existing digest deliveries among ``keys``: key -> (id, status, dispatched_at)."""
    return {
        key: (pk, status, dispatched_at)
        for key, pk, status, dispatched_at in Delivery.objects.filter(
            idempotency_key__in=keys
        ).values_list("idempotency_key", "id", "status", "dispatched_at")
    }


def notification_ids_prunable(*, included_before: datetime, limit: int) -> list[int]:
    return list(
        Notification.objects.filter(included_at__lt=included_before)
        .order_by()
        .values_list("id", flat=True)[:limit]
    )


# --- End of notifications and digests ---------------------------------------------


def preview_recipient(*, email: str) -> tuple[Recipient, str]:
    """The recipient a preview renders for: the one with ``email``, or sample
    data with a note for staff when there is none (or the address is bad)."""
    recipient, error = None, ""
    if email:
        try:
            recipient = Recipient.objects.filter(email=normalize_email(email)).first()
        except ValueError as exc:
            error = str(exc)
        if recipient is None and not error:
            error = f"No recipient {email!r}; showing sample data."
    if recipient is None:
        recipient = Recipient(email="ada@example.com", name="Ada Lovelace", attributes={})
    return recipient, error


# What each ESP event type is called on a delivery's timeline.
TIMELINE_EVENT_LABELS = {
    "queued": "Queued at the ESP",
    "sent": "Sent",
    "delivered": "Delivered",
    "opened": "Opened",
    "clicked": "Clicked a link",
    "bounced": "Bounced",
    "soft_bounce": "Soft bounce (temporary)",
    "deferred": "Delivery deferred",
    "complained": "Marked as spam",
    "unsubscribed": "Unsubscribed at the ESP",
    "rejected": "Rejected by the ESP",
    "failed": "Failed at the ESP",
}


def delivery_timeline(*, delivery: Delivery) -> list[dict]:
    """What happened to ``delivery``, oldest first: when it was queued and
    sent, then every ESP event (delivered, opened, clicked, bounced, ...),
    every look-up of it while it was in doubt (services.indoubt), and how it
    ended when it did not go out. One query for the events, one for the
    look-ups."""
    entries = [{"at": delivery.created_at, "kind": "created", "label": "Queued", "detail": ""}]
    if delivery.sent_at:
        entries.append(
            {
                "at": delivery.sent_at,
                "kind": "sent",
                "label": "Handed to the ESP",
                "detail": f"after {delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}",
            }
        )
    elif delivery.status in (S.FAILED, S.UNKNOWN, S.SUPPRESSED, S.CANCELLED):
        entries.append(
            {
                "at": delivery.updated_at,
                "kind": delivery.status,
                "label": delivery.get_status_display(),
                "detail": delivery.last_error or delivery.status_reason,
            }
        )
    for resolution in delivery.resolutions.order_by("id"):
        entries.append(
            {
                "at": resolution.created_at,
                "kind": f"resolution-{resolution.verdict}",
                "label": f"In doubt: {resolution.get_verdict_display().lower()}",
                "detail": resolution.detail,
            }
        )
    for event in delivery.events.order_by("occurred_at", "id"):
        detail = event.description
        if event.event_type == "clicked":
            detail = (event.payload or {}).get("OriginalLink", "") or detail
        entries.append(
            {
                "at": event.occurred_at or event.received_at,
                "kind": event.event_type,
                "label": TIMELINE_EVENT_LABELS.get(event.event_type, event.event_type),
                "detail": detail,
            }
        )
    return sorted(entries, key=lambda entry: entry["at"])
