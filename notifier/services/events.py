"""ESP tracking events: stored once, then applied to the outbox.

Anymail's ``tracking`` signal hands each authenticated webhook event to
``delivery_event_record``. In one transaction it

1. links the event to its Delivery by ESP message id, falling back to the
   ``delivery`` metadata (the Delivery's uuid, sent with every message);
2. inserts a DeliveryEvent keyed on the ESP's event id, or on a stable hash
   of the raw event when the ESP gives none. The key is unique, so an event
   delivered twice (ESPs retry webhooks) or by two requests racing is stored
   and applied once: the loser's insert fails and it changes nothing;
3. applies it: ``delivered`` / ``bounced`` / ``complained`` move the status
   forward (never back), opens and clicks add to the Delivery's counters,
   soft bounces and deferrals only leave a note. Hard bounces, complaints
   and ESP-side unsubscribes suppress the address at once; soft bounces
   suppress it after ``NOTIFIER_SOFT_BOUNCE_LIMIT`` distinct messages
   within ``NOTIFIER_SOFT_BOUNCE_WINDOW_DAYS``.

An event whose Delivery is still ``sending`` (the webhook beat the batch's
bulk write) moves it too: the batch's write keeps a status an event already
advanced (see ``notifier.sending.persist._update_from_values``).
"""

import hashlib
import json
import logging
import math
import uuid
from datetime import datetime, timedelta

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone

from notifier.errors import InvalidAddress
from notifier.models import Delivery, DeliveryEvent, Suppression
from notifier.services.recipients import normalize_email
from notifier.services.suppressions import suppression_add
from notifier.services.webhooks import recipient_event_data, webhook_event_record

logger = logging.getLogger(__name__)

SOFT_BOUNCE = "soft_bounce"
# Bounces Anymail reports as "bounced" that are temporary, by the ESP's own type.
SOFT_BOUNCE_TYPES = {"postmark": {"SoftBounce", "VirusNotification"}}
# Events that count towards the soft-bounce limit.
SOFT_TYPES = (SOFT_BOUNCE, EventType.DEFERRED)

S = Delivery.Status
# event type -> (new status, statuses it may move from)
STATUS_MOVES = {
    EventType.DELIVERED: (S.DELIVERED, (S.SENDING, S.SENT, S.UNKNOWN)),
    EventType.BOUNCED: (S.BOUNCED, (S.SENDING, S.SENT, S.UNKNOWN, S.DELIVERED)),
    EventType.COMPLAINED: (S.COMPLAINED, (S.SENDING, S.SENT, S.UNKNOWN, S.DELIVERED, S.BOUNCED)),
}
SUPPRESS_AT_ONCE = {
    EventType.BOUNCED: Suppression.Reason.HARD_BOUNCE,
    EventType.COMPLAINED: Suppression.Reason.COMPLAINT,
    EventType.UNSUBSCRIBED: Suppression.Reason.UNSUBSCRIBED,
}
NOTE_LABELS = {
    EventType.DELIVERED: "Delivered",
    EventType.BOUNCED: "Hard bounce",
    EventType.COMPLAINED: "Spam complaint",
    SOFT_BOUNCE: "Soft bounce",
    EventType.DEFERRED: "Deferred",
}
MAX_PAYLOAD_CHARS = 65_536
MAX_DEPTH = 32


# --- Normalising what the ESP sent ----------------------------------------------


def _plain(value, depth: int = 0):
    """JSON data PostgreSQL can store: no NUL characters, no NaN, bounded depth."""
    if depth > MAX_DEPTH:
        return "…"
    if hasattr(value, "lists"):  # a QueryDict (form-encoded webhooks)
        value = {k: v[0] if len(v) == 1 else v for k, v in value.lists()}
    if isinstance(value, dict):
        return {_plain(str(k), depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _plain(str(value), depth + 1)


def _text(value, limit: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value).replace("\x00", "").strip()[:limit]


def _address(value) -> str:
    try:
        return normalize_email(value) if isinstance(value, str) else ""
    except InvalidAddress:
        return ""


def _stored_payload(raw) -> dict | list:
    text = json.dumps(raw, default=str)
    if len(text) <= MAX_PAYLOAD_CHARS:
        return raw
    if isinstance(raw, dict):  # keep the small fields, drop dumps and bodies
        small = {k: v for k, v in raw.items() if len(json.dumps(v, default=str)) <= 1000}
        return {**small, "_truncated": True}
    return {"_truncated": True}


def _event_type(event: AnymailTrackingEvent, esp: str, raw) -> str:
    event_type = _text(event.event_type, 32) or EventType.UNKNOWN
    is_dict = isinstance(raw, dict)
    if (
        event_type == EventType.BOUNCED
        and is_dict
        and raw.get("Type") in SOFT_BOUNCE_TYPES.get(esp, ())
    ):
        return SOFT_BOUNCE
    if event_type == EventType.REJECTED and event.reject_reason == RejectReason.INVALID:
        return EventType.BOUNCED  # the ESP refuses the address itself
    return event_type


def _event_key(esp: str, event_type: str, event_id, raw) -> str:
    event_id = _text(event_id, 200)
    if event_id:
        return f"{esp}:{event_type}:{event_id}"
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return f"{esp}:sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"


def _find_delivery(message_id: str, metadata) -> Delivery | None:
    deliveries = Delivery.objects.select_related("recipient")
    if message_id:
        found = deliveries.filter(esp_message_id=message_id).order_by("-id").first()
        if found is not None:
            return found
    raw_uuid = metadata.get("delivery") if isinstance(metadata, dict) else None
    try:
        delivery_uuid = uuid.UUID(str(raw_uuid)) if raw_uuid else None
    except ValueError:
        delivery_uuid = None
    if delivery_uuid is None:
        return None
    return deliveries.filter(uuid=delivery_uuid).first()


# --- Recording and applying ---------------------------------------------------------


def delivery_event_record(*, event: AnymailTrackingEvent, esp_name: str) -> DeliveryEvent | None:
    """Store ``event`` once and apply it; None when it was already recorded."""
    esp = _text(esp_name, 40).lower() or "esp"
    raw = _plain(event.esp_event)
    event_type = _event_type(event, esp, raw)
    message_id = _text(event.message_id, 255)
    occurred_at = event.timestamp
    if not isinstance(occurred_at, datetime) or timezone.is_naive(occurred_at):
        occurred_at = timezone.now()
    details = [_text(event.description, 1000), _text(event.mta_response, 1000)]
    with transaction.atomic():
        delivery = _find_delivery(message_id, event.metadata)
        email = delivery.recipient.email if delivery else _address(event.recipient)
        try:
            with transaction.atomic():
                record = DeliveryEvent.objects.create(
                    delivery=delivery,
                    event_key=_event_key(esp, event_type, event.event_id, raw),
                    event_type=event_type,
                    esp_message_id=message_id,
                    email=email,
                    description=" / ".join(d for d in details if d),
                    occurred_at=occurred_at,
                    payload=_stored_payload(raw),
                )
        except IntegrityError:
            logger.info("Duplicate %s %s event ignored", esp, event_type)
            return None
        delivery_event_apply(record=record, delivery=delivery)
    return record


def delivery_event_apply(*, record: DeliveryEvent, delivery: Delivery | None) -> None:
    event_type = record.event_type
    now = timezone.now()
    note = NOTE_LABELS.get(event_type, event_type.capitalize())
    if record.description:
        note = f"{note}: {record.description}"
    note = note[:500]
    if delivery is not None:
        rows = Delivery.objects.filter(pk=delivery.pk)
        if event_type in STATUS_MOVES:
            status, from_statuses = STATUS_MOVES[event_type]
            rows.filter(status__in=from_statuses).update(
                status=status, status_reason=note, updated_at=now
            )
        elif event_type in SOFT_TYPES:
            rows.filter(status__in=(S.SENT, S.UNKNOWN)).update(status_reason=note, updated_at=now)
        elif event_type == EventType.OPENED:
            rows.update(opens=F("opens") + 1, updated_at=now)
        elif event_type == EventType.CLICKED:
            rows.update(clicks=F("clicks") + 1, updated_at=now)
    _webhook_for_event(record=record, delivery=delivery)
    if not record.email:
        return
    reason = SUPPRESS_AT_ONCE.get(event_type)
    if reason is None and event_type in SOFT_TYPES and soft_bounce_limit_reached(record.email):
        reason = Suppression.Reason.SOFT_BOUNCES
    if reason is not None:
        suppression_add(email=record.email, reason=reason, note=f"{note} (event {record.pk})")


# ESP event types outbound webhooks report (an ESP-side unsubscribe is
# reported by its suppression, as every unsubscribe is).
WEBHOOK_EVENTS = {
    EventType.DELIVERED: "delivered",
    EventType.BOUNCED: "bounced",
    EventType.COMPLAINED: "complained",
    EventType.OPENED: "opened",
    EventType.CLICKED: "clicked",
}


def _webhook_for_event(*, record: DeliveryEvent, delivery: Delivery | None) -> None:
    webhook_type = WEBHOOK_EVENTS.get(record.event_type)
    if webhook_type is None:
        return
    recipient = delivery.recipient if delivery is not None else None
    webhook_event_record(
        event_type=webhook_type,
        event_key=f"event:{record.pk}",
        recipient=recipient,
        data={
            "delivery": str(delivery.uuid) if delivery is not None else None,
            "message_id": record.esp_message_id,
            "recipient": recipient_event_data(recipient)
            if recipient is not None
            else {"email": record.email},
            "occurred_at": record.occurred_at,
            "description": record.description,
        },
    )


def soft_bounce_limit_reached(email: str) -> bool:
    """True when ``email`` soft-bounced on enough distinct messages lately."""
    since = timezone.now() - timedelta(days=settings.NOTIFIER_SOFT_BOUNCE_WINDOW_DAYS)
    messages = (
        DeliveryEvent.objects.filter(email=email, event_type__in=SOFT_TYPES, occurred_at__gte=since)
        .annotate(message=Coalesce(NullIf("esp_message_id", Value("")), "event_key"))
        .values("message")
        .distinct()
        .count()
    )
    return messages >= settings.NOTIFIER_SOFT_BOUNCE_LIMIT


def tracking_received(sender, event, esp_name, **kwargs) -> None:
    """Receiver of Anymail's ``tracking`` signal (connected in ``NotifierConfig.ready``)."""
    delivery_event_record(event=event, esp_name=esp_name)
