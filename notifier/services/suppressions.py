from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from notifier.models import Recipient, Suppression
from notifier.services.recipients import normalize_email

SUPPRESSED_RECIPIENT_STATUSES = (
    Recipient.Status.UNSUBSCRIBED,
    Recipient.Status.BOUNCED,
    Recipient.Status.COMPLAINED,
    Recipient.Status.ERASED,
)


def active_suppressions(emails: Iterable[str]) -> dict[str, str]:
    """Map each suppressed address among ``emails`` to its reason (one query)."""
    return dict(
        Suppression.objects.filter(email__in=list(emails), lifted_at__isnull=True).values_list(
            "email", "reason"
        )
    )


def suppression_add(*, email: str, reason: str, note: str = "") -> Suppression:
    """Suppress ``email`` (idempotent: an active suppression is kept as is)."""
    email = normalize_email(email)
    try:
        with transaction.atomic():
            return Suppression.objects.create(email=email, reason=reason, note=note)
    except IntegrityError:
        return Suppression.objects.get(email=email, lifted_at__isnull=True)


def suppression_lift(*, suppression: Suppression, reason: str, user=None) -> Suppression:
    if not reason.strip():
        raise ValueError("Say why the suppression is lifted.")
    suppression.lifted_at = timezone.now()
    suppression.lifted_reason = reason
    suppression.lifted_by = user
    suppression.save(update_fields=["lifted_at", "lifted_reason", "lifted_by"])
    return suppression
