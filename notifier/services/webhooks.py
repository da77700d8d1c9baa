"""Outbound webhooks: telling other systems what happened, as an outbox.

``webhook_event_record`` writes one ``WebhookDelivery`` per active endpoint
that listens to the event, in the transaction of the event itself (a sent
outcome, an ESP event, a suppression, a confirmed signup, a journey step),
so a crash loses neither or both. After commit a task sends the due rows.

Sending (``webhooks_send_due``) claims due rows with one conditional update
and a lease (``pending -> sending``), POSTs each, and records the answer
under the claim: 2xx is ``delivered``; anything else is tried again after an
exponential backoff kept in ``next_attempt_at`` (never a Celery countdown),
and ``dead`` after ``NOTIFIER_WEBHOOK_MAX_ATTEMPTS``. A claim whose worker
died is put back to ``pending`` when its lease expires: a call may then be
made twice, never lost, and its ``Notifier-Webhook-Id`` header is the same
both times so the receiver can tell.

Each call is signed: ``Notifier-Webhook-Signature: v1=<hex>``, the
HMAC-SHA256 of ``<timestamp>.<body>`` with the endpoint's secret, where
``<timestamp>`` (Unix seconds) is also sent as ``Notifier-Webhook-Timestamp``
so a receiver can refuse old (replayed) calls. See the README for the check.
"""

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import requests
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from notifier.models import Recipient, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Notifier-Webhook-Signature"
TIMESTAMP_HEADER = "Notifier-Webhook-Timestamp"
ID_HEADER = "Notifier-Webhook-Id"
EVENT_HEADER = "Notifier-Webhook-Event"
EVENT_TYPES = frozenset(WebhookEndpoint.EventType.values)
S = WebhookDelivery.Status


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    signed = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _endpoints_for(event_type: str) -> list[WebhookEndpoint]:
    # Few rows: filtered here, as SQLite has no JSON containment lookup.
    return [
        endpoint
        for endpoint in WebhookEndpoint.objects.filter(active=True)
        if event_type in (endpoint.event_types or [])
    ]


def webhook_listeners_exist(*, event_type: str) -> bool:
    return bool(_endpoints_for(event_type))


def webhook_events_record(
    *, event_type: str, events: Iterable[tuple[str, dict, int | None]]
) -> int:
    """Queue calls for many events of one type: ``(event_key, data, recipient_id)``.

    Call it inside the transaction that makes the events happen. Idempotent:
    an event key already queued for an endpoint is skipped. Returns the
    number of rows written (0 when nobody listens).
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"Unknown webhook event type {event_type!r}.")
    endpoints = _endpoints_for(event_type)
    if not endpoints:
        return 0
    now = timezone.now()
    rows = [
        WebhookDelivery(
            endpoint=endpoint,
            event_type=event_type,
            event_key=event_key[:255],
            recipient_id=recipient_id,
            payload=json.loads(json.dumps(data, cls=DjangoJSONEncoder)),
            next_attempt_at=now,
        )
        for event_key, data, recipient_id in events
        for endpoint in endpoints
    ]
    if not rows:
        return 0
    WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    transaction.on_commit(_publish_send)
    return len(rows)


def webhook_event_record(
    *, event_type: str, event_key: str, data: dict, recipient: Recipient | None = None
) -> int:
    """Queue one event's calls (see ``webhook_events_record``).

    ``event_key`` names what happened once ("subscribed:<consent id>"), so
    recording it twice calls each endpoint once. ``data`` is plain JSON data.
    Other apps (campaigns for ``subscribed``, journeys for ``journey_step``)
    call this from their own services.
    """
    recipient_id = recipient.pk if recipient is not None else None
    return webhook_events_record(event_type=event_type, events=[(event_key, data, recipient_id)])


def recipient_event_data(recipient: Recipient) -> dict:
    return {"email": recipient.email, "name": recipient.name, "id": str(recipient.public_id)}


def _publish_send() -> None:
    from celery import current_app

    try:
        current_app.send_task("notifier.send_webhooks", queue="maintenance")
    except Exception:  # the sweeper sends them on its next tick
        logger.warning("Could not publish notifier.send_webhooks", exc_info=True)


# --- Sending ------------------------------------------------------------------------


def webhook_body(row: WebhookDelivery) -> bytes:
    document = {
        "id": str(row.uuid),
        "type": row.event_type,
        "created_at": row.created_at.isoformat(),
        "data": row.payload,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def webhook_backoff(attempts: int) -> timedelta:
    """Exponential, capped, with jitter so a recovered receiver is not hit at once by all."""
    base = settings.NOTIFIER_WEBHOOK_BACKOFF_BASE * (2 ** max(attempts - 1, 0))
    seconds = min(settings.NOTIFIER_WEBHOOK_BACKOFF_CAP, base)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.0))


def webhooks_recover_expired(*, now: datetime | None = None) -> int:
    """Claims whose lease expired (the worker died) become due again."""
    now = now or timezone.now()
    return WebhookDelivery.objects.filter(status=S.SENDING, lease_expires_at__lt=now).update(
        status=S.PENDING, claim_token=None, lease_expires_at=None, next_attempt_at=now
    )


def webhooks_claim(*, now: datetime, limit: int) -> tuple[uuid.UUID, list[WebhookDelivery]]:
    token = uuid.uuid4()
    due = list(
        WebhookDelivery.objects.filter(status=S.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
    if not due:
        return token, []
    # Conditional: a row another worker claimed in between is not taken.
    WebhookDelivery.objects.filter(id__in=due, status=S.PENDING).update(
        status=S.SENDING,
        claim_token=token,
        lease_expires_at=now + timedelta(seconds=settings.NOTIFIER_WEBHOOK_LEASE_SECONDS),
    )
    rows = list(
        WebhookDelivery.objects.filter(claim_token=token, status=S.SENDING)
        .select_related("endpoint")
        .order_by("id")
    )
    return token, rows


def _call(row: WebhookDelivery) -> tuple[int | None, str]:
    """POST one row; (HTTP status or None, error text)."""
    body = webhook_body(row)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Notifier-Webhooks/1",
        ID_HEADER: str(row.uuid),
        EVENT_HEADER: row.event_type,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: webhook_signature(
            secret=row.endpoint.secret, timestamp=timestamp, body=body
        ),
    }
    try:
        response = requests.post(
            row.endpoint.url,
            data=body,
            headers=headers,
            timeout=(settings.NOTIFIER_WEBHOOK_CONNECT_TIMEOUT, settings.NOTIFIER_WEBHOOK_TIMEOUT),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"[:1000]
    if 200 <= response.status_code < 300:
        return response.status_code, ""
    return response.status_code, f"HTTP {response.status_code}: {response.text[:500]}"


def webhook_record_answer(
    *, row: WebhookDelivery, token, status_code: int | None, error: str, now: datetime
) -> str:
    """Write one call's outcome, only while the claim still holds the row."""
    attempts = row.attempts + 1
    fields = {"attempts": attempts, "last_status_code": status_code, "last_error": error}
    if not error:
        fields.update(status=S.DELIVERED, delivered_at=now)
    elif attempts >= settings.NOTIFIER_WEBHOOK_MAX_ATTEMPTS:
        fields.update(status=S.DEAD)
    else:
        fields.update(status=S.PENDING, next_attempt_at=now + webhook_backoff(attempts))
    fields.update(claim_token=None, lease_expires_at=None)
    WebhookDelivery.objects.filter(pk=row.pk, claim_token=token).update(**fields)
    return fields["status"]


def webhooks_send_due(*, now: datetime | None = None, limit: int | None = None) -> dict[str, int]:
    """Claim and send up to ``limit`` due calls; counts by resulting status.

    ``now`` drives the clock (what is due, when the next attempt is): tests
    and the sweeper pass it; a real call's timestamp header is the wall clock.
    """
    now = now or timezone.now()
    limit = limit or settings.NOTIFIER_WEBHOOK_CLAIM_SIZE
    token, rows = webhooks_claim(now=now, limit=limit)
    counts: dict[str, int] = {}
    for row in rows:
        status_code, error = _call(row)
        status = webhook_record_answer(
            row=row, token=token, status_code=status_code, error=error, now=now
        )
        counts[status] = counts.get(status, 0) + 1
        if error:
            logger.info("Webhook %s to %s failed: %s", row.uuid, row.endpoint.url, error)
    return counts


# How long one task goes on claiming (a claim at a time) while calls are due.
SWEEP_BUDGET_SECONDS = 60.0


def webhooks_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's tick (and the task published after each event's commit):
    recover dead claims, then send due calls, a claim at a time, until none
    is due or the time budget is spent (the next tick goes on)."""
    recovered = webhooks_recover_expired(now=now)
    counts: dict[str, int] = {}
    started = time.monotonic()
    while True:
        sent = webhooks_send_due(now=now)
        for status, n in sent.items():
            counts[status] = counts.get(status, 0) + n
        if sum(sent.values()) < settings.NOTIFIER_WEBHOOK_CLAIM_SIZE:
            break
        if time.monotonic() - started > SWEEP_BUDGET_SECONDS:
            break
    if recovered:
        counts["recovered"] = recovered
    return counts


def webhooks_send_again(*, rows: Iterable[WebhookDelivery]) -> int:
    """Staff's "send again": each chosen call is made once more, now, with a
    fresh attempt count (a row being sent right now is left alone)."""
    ids = [row.pk for row in rows]
    changed = (
        WebhookDelivery.objects.filter(pk__in=ids)
        .exclude(status=S.SENDING)
        .update(
            status=S.PENDING,
            attempts=0,
            next_attempt_at=timezone.now(),
            claim_token=None,
            lease_expires_at=None,
        )
    )
    if changed:
        transaction.on_commit(_publish_send)
    return changed
