"""Marketing mail sent one recipient at a time by an automation (a journey step).

Unlike ``send()`` (transactional templates only, for application code) this
takes a *campaign* template: the same material marketing staff write for
campaigns, mailed as campaign mail (List-Unsubscribe, the campaigns queue).
The idempotency key makes a second call with the same key return the first
Delivery: a caller that runs the same step again after a crash never writes a
second message.
"""

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifier.errors import InvalidTemplate, NotifierError
from notifier.models import Delivery, Recipient, Template
from notifier.services.dispatch import deliveries_dispatch, delivery_dispatch_on_commit
from notifier.services.suppressions import suppression_reasons


def _check(template: Template, keys) -> None:
    if any(not key or len(key) > 255 for key in keys):
        raise NotifierError("idempotency_key must be 1 to 255 characters.")
    if template.kind != Template.Kind.CAMPAIGN:
        raise InvalidTemplate(f"Template {template.name!r} is not a campaign template.")


def _fields(recipient, template, key, context, reason, now) -> dict:
    """A new automated Delivery's fields (``reason``: why it is suppressed, or None)."""
    fields = dict(
        recipient=recipient,
        kind=Delivery.Kind.CAMPAIGN,
        template=template,
        context=context or {},
        transport=settings.NOTIFIER_DEFAULT_TRANSPORT,
        idempotency_key=key,
        next_attempt_at=now,
    )
    if reason is not None:
        fields.update(status=Delivery.Status.SUPPRESSED, status_reason=reason)
    return fields


def delivery_automated_send(
    *,
    recipient: Recipient,
    template: Template,
    idempotency_key: str,
    context: dict | None = None,
) -> Delivery:
    """Queue ``template`` (a campaign template) for ``recipient`` under
    ``idempotency_key``, in the caller's transaction; published on commit.

    A suppressed or unsubscribed recipient gets a ``suppressed`` row and no
    email. Returns the existing Delivery when the key was used before.
    """
    _check(template, [idempotency_key])
    existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing
    reason = suppression_reasons([recipient]).get(recipient.id)
    fields = _fields(recipient, template, idempotency_key, context, reason, timezone.now())
    with transaction.atomic():
        try:
            with transaction.atomic():
                delivery = Delivery.objects.create(**fields)
        except IntegrityError:
            return Delivery.objects.get(idempotency_key=idempotency_key)
        if delivery.status == Delivery.Status.PENDING:
            delivery_dispatch_on_commit(delivery)
    return delivery


def deliveries_automated_send(
    *, template: Template, recipients: dict[str, Recipient], context: dict | None = None
) -> dict[str, Delivery]:
    """``delivery_automated_send`` for many recipients at once (a batch of
    journey steps): ``recipients`` maps an idempotency key to its recipient.
    Returns the Delivery of each key. A few queries whatever the count; the
    new rows are published together, in batches, once the caller commits.
    """
    _check(template, recipients)
    found = {d.idempotency_key: d for d in Delivery.objects.filter(idempotency_key__in=recipients)}
    missing = {key: r for key, r in recipients.items() if key not in found}
    reasons = suppression_reasons(missing.values())
    now = timezone.now()
    rows = [
        Delivery(**_fields(recipient, template, key, context, reasons.get(recipient.id), now))
        for key, recipient in missing.items()
    ]
    try:
        with transaction.atomic():
            created = Delivery.objects.bulk_create(rows)
    except IntegrityError:
        # A key was taken meanwhile: one at a time, each returning the winner's row.
        for key, recipient in missing.items():
            found[key] = delivery_automated_send(
                recipient=recipient, template=template, idempotency_key=key, context=context
            )
        return found
    found.update((d.idempotency_key, d) for d in created)
    pending = [d.pk for d in created if d.status == Delivery.Status.PENDING]
    if pending:
        transaction.on_commit(
            lambda: deliveries_dispatch(ids_by_kind={Delivery.Kind.CAMPAIGN: pending})
        )
    return found
