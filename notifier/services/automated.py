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
from notifier.services.dispatch import delivery_dispatch_on_commit
from notifier.services.suppressions import suppression_reasons


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
    if not idempotency_key or len(idempotency_key) > 255:
        raise NotifierError("idempotency_key must be 1 to 255 characters.")
    if template.kind != Template.Kind.CAMPAIGN:
        raise InvalidTemplate(f"Template {template.name!r} is not a campaign template.")
    existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing
    fields = dict(
        recipient=recipient,
        kind=Delivery.Kind.CAMPAIGN,
        template=template,
        context=context or {},
        transport=settings.NOTIFIER_DEFAULT_TRANSPORT,
        idempotency_key=idempotency_key,
        next_attempt_at=timezone.now(),
    )
    reason = suppression_reasons([recipient]).get(recipient.id)
    if reason is not None:
        fields.update(status=Delivery.Status.SUPPRESSED, status_reason=reason)
    with transaction.atomic():
        try:
            with transaction.atomic():
                delivery = Delivery.objects.create(**fields)
        except IntegrityError:
            return Delivery.objects.get(idempotency_key=idempotency_key)
        if delivery.status == Delivery.Status.PENDING:
            delivery_dispatch_on_commit(delivery)
    return delivery
