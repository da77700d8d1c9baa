"""``notifier.notify``: an event for one recipient, sent now or kept for a digest.

The recipient's Preference for the topic (else the topic's default frequency)
decides: ``instant`` sends one email through ``send()``; ``hourly`` and
``daily`` store a Notification that the next digest of that frequency picks up
(``digests``); ``off`` stores nothing. Nothing is stored or sent for a
suppressed recipient.

An instant notification inside the recipient's quiet hours (``quiet_hours``)
is held: its Delivery waits in the outbox until the quiet hours end, or, if
the recipient prefers, it becomes a Notification for their next daily digest.
A critical topic's is sent at once.
"""

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifier import templating
from notifier.errors import InvalidContext, NotifierError
from notifier.models import (
    Delivery,
    Frequency,
    Notification,
    QuietHoursMode,
    Recipient,
    Topic,
    TopicEvent,
)
from notifier.selectors import notification_ids_prunable, topic_frequency_for
from notifier.services.inputs import storable_problem
from notifier.services.quiet_hours import notification_held_until
from notifier.services.recipients import normalize_email, recipient_get_or_create
from notifier.services.suppressions import suppression_reasons
from notifier.services.transactional import send

MAX_IDEMPOTENCY_KEY = 240
# Instant email for a topic without an instant template: its name and its
# digest entry.
INSTANT_SUBJECT = "{{ topic.name }}"
INSTANT_HTML = "<h1>{{ topic.name }}</h1>\n<div>%s</div>\n"


class NotifyOutcome(enum.StrEnum):
    INSTANT = "instant"  # a Delivery was queued to go out now
    HELD = "held"  # a Delivery waits for the end of the recipient's quiet hours
    DIGEST = "digest"  # a Notification waits for the next digest
    OFF = "off"  # the recipient turned this topic off: nothing stored
    SUPPRESSED = "suppressed"  # the address is suppressed: nothing stored


@dataclass(frozen=True)
class Notified:
    """What ``notify()`` did. ``duplicate``: the idempotency key was seen before,
    and ``delivery``/``notification`` are what the first call stored.
    ``held_until``: the end of the quiet hours the notification fell in."""

    outcome: NotifyOutcome
    frequency: str
    delivery: Delivery | None = None
    notification: Notification | None = None
    duplicate: bool = False
    held_until: datetime | None = None


def _instant_key(idempotency_key: str) -> str:
    return f"notify:{idempotency_key}"


def _resolve_topic(topic: Topic | str) -> Topic:
    if isinstance(topic, Topic):
        return topic
    if isinstance(topic, str):
        try:
            return Topic.objects.select_related("instant_template").get(key=topic)
        except Topic.DoesNotExist:
            raise NotifierError(f"No topic with key {topic!r}.") from None
    raise NotifierError("topic must be a Topic or a topic key.")


def _check_key(idempotency_key) -> None:
    if idempotency_key is None:
        return
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise NotifierError("idempotency_key must be a non-empty string.")
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise NotifierError(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters.")


def _seen_before(idempotency_key: str) -> Notified | None:
    notification = Notification.objects.filter(idempotency_key=idempotency_key).first()
    if notification is not None:
        return Notified(
            NotifyOutcome.DIGEST,
            notification.frequency,
            notification=notification,
            duplicate=True,
        )
    delivery = Delivery.objects.filter(idempotency_key=_instant_key(idempotency_key)).first()
    if delivery is not None:
        return Notified(NotifyOutcome.INSTANT, Frequency.INSTANT, delivery=delivery, duplicate=True)
    return None


def _topic_data(topic: Topic) -> dict:
    return {"key": topic.key, "name": topic.name, "description": topic.description}


def _send_instant(
    *,
    recipient: Recipient,
    topic: Topic,
    data,
    idempotency_key: str | None,
    send_at: datetime | None = None,
) -> Delivery:
    context = {"data": data, "topic": _topic_data(topic)}
    key = _instant_key(idempotency_key) if idempotency_key else None
    if topic.instant_template_id:
        return send(
            to=recipient,
            template=topic.instant_template,
            context=context,
            idempotency_key=key,
            send_at=send_at,
            kind=Delivery.Kind.NOTIFICATION,
        )
    return send(
        to=recipient,
        subject=INSTANT_SUBJECT,
        html=INSTANT_HTML % topic.digest_item,
        context=context,
        idempotency_key=key,
        send_at=send_at,
        kind=Delivery.Kind.NOTIFICATION,
    )


def notify(
    recipient: Recipient | str,
    topic: Topic | str,
    data=None,
    idempotency_key: str | None = None,
) -> Notified:
    """Report an event to ``recipient`` about ``topic``; see the module docstring.

    ``recipient`` is a Recipient or an address (created if new); ``topic`` a
    Topic or its key; ``data`` plain JSON data, shown by the topic's templates
    as ``data``. The same ``idempotency_key`` twice stores and sends the event
    once. Bad input raises ``NotifierError`` and stores nothing. Runs in the
    caller's transaction; an instant email is queued when it commits.
    """
    problem = storable_problem(
        {
            "recipient": recipient if isinstance(recipient, str) else "",
            "topic": topic if isinstance(topic, str) else "",
            "data": data,
            "idempotency_key": idempotency_key,
        }
    )
    if problem is not None:
        field, reason = problem
        raise (InvalidContext if field.startswith("data") else NotifierError)(f"{field}: {reason}")
    _check_key(idempotency_key)
    topic = _resolve_topic(topic)
    try:
        data = templating.plain_data({} if data is None else data)
    except templating.ContextNotPlainData as exc:
        raise InvalidContext(str(exc)) from exc
    if not isinstance(recipient, Recipient):
        recipient = normalize_email(recipient)
    if idempotency_key is not None:
        seen = _seen_before(idempotency_key)
        if seen is not None:
            return seen

    with transaction.atomic():
        if not isinstance(recipient, Recipient):
            recipient = recipient_get_or_create(email=recipient)
        # Logged before the preference is applied: automations react to the
        # event itself, not to how the recipient wants to be told of it.
        TopicEvent.objects.bulk_create(
            [
                TopicEvent(
                    recipient=recipient, topic=topic, data=data, idempotency_key=idempotency_key
                )
            ],
            ignore_conflicts=True,
        )
        frequency = topic_frequency_for(recipient=recipient, topic=topic)
        if frequency == Frequency.OFF:
            return Notified(NotifyOutcome.OFF, frequency)
        if suppression_reasons([recipient]):
            return Notified(NotifyOutcome.SUPPRESSED, frequency)
        held_until = None
        if frequency == Frequency.INSTANT:
            held_until = notification_held_until(
                recipient=recipient, topic=topic, now=timezone.now()
            )
            if held_until is None or recipient.quiet_hours_mode == QuietHoursMode.HOLD:
                delivery = _send_instant(
                    recipient=recipient,
                    topic=topic,
                    data=data,
                    idempotency_key=idempotency_key,
                    send_at=held_until,
                )
                outcome = NotifyOutcome.INSTANT if held_until is None else NotifyOutcome.HELD
                return Notified(outcome, frequency, delivery=delivery, held_until=held_until)
            frequency = Frequency.DAILY  # folded into the next daily digest
        try:
            with transaction.atomic():
                notification = Notification.objects.create(
                    recipient=recipient,
                    topic=topic,
                    data=data,
                    frequency=frequency,
                    idempotency_key=idempotency_key,
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            # Another call with the same key committed first.
            notification = Notification.objects.get(idempotency_key=idempotency_key)
            return Notified(
                NotifyOutcome.DIGEST,
                notification.frequency,
                notification=notification,
                duplicate=True,
            )
    return Notified(
        NotifyOutcome.DIGEST, frequency, notification=notification, held_until=held_until
    )


def notifications_prune(
    *, now: datetime | None = None, retention_days: int | None = None, chunk: int = 5000
) -> int:
    """Delete notifications included in a digest more than ``retention_days``
    ago (``NOTIFIER_NOTIFICATION_RETENTION_DAYS``), ``chunk`` rows per
    statement. Pending notifications are never pruned. Topic events older than the
    retention go too. Returns the notifications deleted."""
    now = now or timezone.now()
    days = (
        settings.NOTIFIER_NOTIFICATION_RETENTION_DAYS if retention_days is None else retention_days
    )
    if days < 0:
        raise ValueError("retention_days must be zero or more.")
    before = now - timedelta(days=days)
    deleted = 0
    while ids := notification_ids_prunable(included_before=before, limit=chunk):
        deleted += Notification.objects.filter(id__in=ids).delete()[0]
    while ids := list(
        TopicEvent.objects.filter(created_at__lt=before).values_list("id", flat=True)[:chunk]
    ):
        TopicEvent.objects.filter(id__in=ids).delete()
    return deleted
