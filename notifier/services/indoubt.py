"""Resolving in-doubt deliveries by asking the transport (beat, every minute).

A row is ``unknown`` when it was handed over but its answer was lost. Where
the transport can be searched (``notifier.sending.lookup``), each such row,
once older than ``NOTIFIER_INDOUBT_INDEX_DELAY`` (the ESP's indexing delay),
is looked up:

* found      -> ``sent`` with the ESP's message id;
* not found  -> ``pending`` and due: sent again, **once**; a row not found a
  second time (after that resend) stays ``unknown`` for staff;
* the ESP cannot answer -> stays ``unknown``, asked again after a backoff
  (``next_attempt_at`` holds the time of the next look-up).

Each step is a conditional update from ``unknown``, so two sweeps never
resend a row twice; each is recorded as a DeliveryResolution. Rows of a
transport without a lookup (SMTP) are left to staff.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from notifier.models import Delivery, DeliveryResolution
from notifier.sending.lookup import LookupUnavailable, transport_lookup

logger = logging.getLogger(__name__)

UNAVAILABLE_BACKOFF = timedelta(minutes=5)
UNAVAILABLE_BACKOFF_CAP = timedelta(hours=6)


def _resolve(delivery: Delivery, verdict: str, detail: str, **fields) -> bool:
    """Move ``delivery`` on from ``unknown`` and record why (False: it had moved already)."""
    with transaction.atomic():
        moved = Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.UNKNOWN).update(
            updated_at=timezone.now(), **fields
        )
        if moved:
            DeliveryResolution.objects.create(delivery=delivery, verdict=verdict, detail=detail)
    return bool(moved)


def delivery_resolve(delivery: Delivery, *, now=None) -> str | None:
    """Look ``delivery`` up at its transport and act on the answer. Returns the
    verdict, or None when the transport cannot be asked or the row moved on."""
    lookup = transport_lookup(delivery.transport)
    if lookup is None:
        return None
    now = now or timezone.now()
    verdicts = list(delivery.resolutions.values_list("verdict", flat=True))
    try:
        esp_message_id = lookup(delivery)
    except LookupUnavailable as exc:
        failures = min(10, sum(v == DeliveryResolution.Verdict.UNAVAILABLE for v in verdicts))
        wait = min(UNAVAILABLE_BACKOFF * 2**failures, UNAVAILABLE_BACKOFF_CAP)
        ok = _resolve(
            delivery, DeliveryResolution.Verdict.UNAVAILABLE, str(exc), next_attempt_at=now + wait
        )
        return DeliveryResolution.Verdict.UNAVAILABLE if ok else None
    if esp_message_id:
        ok = _resolve(
            delivery,
            DeliveryResolution.Verdict.FOUND,
            f"The provider has it as {esp_message_id}.",
            status=Delivery.Status.SENT,
            esp_message_id=esp_message_id[:255],
            sent_at=delivery.sent_at or now,
            status_reason="Was in doubt; found at the provider: it was accepted",
            next_attempt_at=None,
        )
        return DeliveryResolution.Verdict.FOUND if ok else None
    if DeliveryResolution.Verdict.RESENT in verdicts:
        ok = _resolve(
            delivery,
            DeliveryResolution.Verdict.LEFT,
            "Not found at the provider after it was sent again; staff decide.",
            status_reason="In doubt again after a resend and not found at the provider: "
            "left for staff",
            next_attempt_at=None,
        )
        return DeliveryResolution.Verdict.LEFT if ok else None
    ok = _resolve(
        delivery,
        DeliveryResolution.Verdict.RESENT,
        f"Not found at the provider {int((now - delivery.updated_at).total_seconds())} s after "
        "the hand-off: sent again.",
        status=Delivery.Status.PENDING,
        status_reason="Was in doubt; not found at the provider: sent again",
        next_attempt_at=now,
        dispatched_at=None,
        claim_token=None,
        lease_expires_at=None,
    )
    return DeliveryResolution.Verdict.RESENT if ok else None


def deliveries_resolve_in_doubt(*, now=None, limit: int = 200) -> dict[str, int]:
    """Beat: look up the in-doubt rows that are old enough. Returns counts by verdict."""
    now = now or timezone.now()
    searchable = [
        name for name, config in settings.NOTIFIER_TRANSPORTS.items() if config.get("LOOKUP")
    ]
    candidates = (
        Delivery.objects.filter(
            status=Delivery.Status.UNKNOWN,
            transport__in=searchable,
            updated_at__lte=now - timedelta(seconds=settings.NOTIFIER_INDOUBT_INDEX_DELAY),
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .exclude(resolutions__verdict=DeliveryResolution.Verdict.LEFT)
        .order_by("id")[:limit]
    )
    counts: dict[str, int] = {}
    for delivery in candidates:
        verdict = delivery_resolve(delivery, now=now)
        if verdict:
            counts[verdict] = counts.get(verdict, 0) + 1
    if counts:
        logger.info("In-doubt deliveries resolved: %s", counts)
    return counts
