"""Who is never mailed.

A Suppression (one active row per address) is checked by ``send()``,
``notify()``, digests, the campaign launch and every batch before anything is
handed over, so adding one stops pending mail at once. They all ask the one
decision below: ``suppression_reasons`` (Python) or ``suppression_reason_sql``
(the same in SQL, for set-based writes). ``Recipient.status`` mirrors the reason for staff; lifting the last
active suppression of an address makes its recipient active again.
"""

from collections.abc import Iterable

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from notifier.models import Recipient, Suppression
from notifier.services.recipients import normalize_email
from notifier.services.webhooks import recipient_event_data, webhook_event_record

SUPPRESSED_RECIPIENT_STATUSES = (
    Recipient.Status.UNSUBSCRIBED,
    Recipient.Status.BOUNCED,
    Recipient.Status.COMPLAINED,
    Recipient.Status.ERASED,
)

RECIPIENT_STATUS_FOR_REASON = {
    Suppression.Reason.UNSUBSCRIBED: Recipient.Status.UNSUBSCRIBED,
    Suppression.Reason.HARD_BOUNCE: Recipient.Status.BOUNCED,
    Suppression.Reason.SOFT_BOUNCES: Recipient.Status.BOUNCED,
    Suppression.Reason.COMPLAINT: Recipient.Status.COMPLAINED,
}


def active_suppressions(emails: Iterable[str]) -> dict[str, str]:
    """Map each suppressed address among ``emails`` to its reason (one query;
    an erased address is recognised by its hash, see ``services.privacy``)."""
    from notifier.services.privacy import email_hashes

    emails = list(emails)
    by_hash = {h: email for email in emails for h in email_hashes(email)}
    found: dict[str, str] = {}
    rows = Suppression.objects.filter(
        Q(email__in=emails) | Q(email_hash__in=list(by_hash)), lifted_at__isnull=True
    ).values_list("email", "email_hash", "reason")
    for email, hashed, reason in rows:
        address = email if email in emails else by_hash.get(hashed)
        if address is not None:
            found.setdefault(address, reason)
    return found


# Why a message was not sent, in words (Delivery.status_reason of a
# ``suppressed`` row): by suppression reason, then by recipient status.
NOT_SENT_FOR_REASON = {
    reason: f"Not sent: the address is suppressed ({label.lower()})."
    for reason, label in Suppression.Reason.choices
}
NOT_SENT_FOR_STATUS = {
    Recipient.Status.UNSUBSCRIBED: "Not sent: the recipient has unsubscribed.",
    Recipient.Status.BOUNCED: "Not sent: the recipient's address bounced.",
    Recipient.Status.COMPLAINED: "Not sent: the recipient marked a message as spam.",
    Recipient.Status.ERASED: "Not sent: the recipient was erased.",
}


def suppression_reasons(recipients: Iterable[Recipient]) -> dict[int, str]:
    """Why each of ``recipients`` must not be mailed, by recipient id (a
    sentence from ``NOT_SENT_FOR_REASON`` or ``NOT_SENT_FOR_STATUS``); absent
    when they may be. An active suppression's reason comes first, then a
    recipient status other than active. One query."""
    recipients = list(recipients)
    suppressed = active_suppressions(r.email for r in recipients)
    reasons = {}
    for recipient in recipients:
        reason = suppressed.get(recipient.email)
        if reason is not None:
            reasons[recipient.id] = NOT_SENT_FOR_REASON.get(
                reason, f"Not sent: the address is suppressed ({reason})."
            )
        elif recipient.status in SUPPRESSED_RECIPIENT_STATUSES:
            reasons[recipient.id] = NOT_SENT_FOR_STATUS[recipient.status]
    return reasons


def _case_sql(column: str, sentences: dict[str, str]) -> tuple[str, list]:
    whens = " ".join("WHEN %s THEN %s" for _ in sentences)
    params = [value for pair in sentences.items() for value in pair]
    return f"CASE {column} {whens} END", params


def suppression_reason_sql(*, email: str, status: str) -> tuple[str, str, list]:
    """``suppression_reasons`` in SQL over the columns named ``email`` and
    ``status`` of a recipient row: ``(join, reason, params)``, where ``join``
    is a ``LEFT JOIN`` clause to put after the relation those columns come
    from (no parameters), and ``reason`` the sentence, or '' when the
    recipient may be mailed (``params`` are the reason's).

    A join, not a look-up per member: the planner reads the active
    suppressions once (a hash of them against a million members), or probes
    ``suppression_one_active_per_email`` where that is cheaper. Its
    condition is the unique index's own (``s.email <> ''``, one active row
    per address), so a member matches at most one row."""
    table = connection.ops.quote_name(Suppression._meta.db_table)
    by_reason, reason_params = _case_sql("s.reason", NOT_SENT_FOR_REASON)
    by_status, status_params = _case_sql(status, NOT_SENT_FOR_STATUS)
    join = f"LEFT JOIN {table} s ON s.email = {email} AND s.lifted_at IS NULL AND s.email <> ''"
    reason = f"COALESCE({by_reason}, {by_status}, '')"
    return join, reason, [*reason_params, *status_params]


def suppression_add(*, email: str, reason: str, note: str = "") -> Suppression:
    """Suppress ``email`` (idempotent: an active suppression is kept as is)."""
    email = normalize_email(email)
    if reason not in Suppression.Reason.values:
        raise ValueError(f"Unknown suppression reason {reason!r}.")
    try:
        with transaction.atomic():
            suppression = Suppression.objects.create(email=email, reason=reason, note=note)
    except IntegrityError:
        return Suppression.objects.get(email=email, lifted_at__isnull=True)
    status = RECIPIENT_STATUS_FOR_REASON.get(reason)
    if status is not None:
        Recipient.objects.filter(email=email, status=Recipient.Status.ACTIVE).update(
            status=status, updated_at=timezone.now()
        )
    if reason == Suppression.Reason.UNSUBSCRIBED:
        recipient = Recipient.objects.filter(email=email).first()
        webhook_event_record(
            event_type="unsubscribed",
            event_key=f"suppression:{suppression.pk}",
            recipient=recipient,
            data={
                "recipient": recipient_event_data(recipient) if recipient else {"email": email},
                "note": note,
            },
        )
    return suppression


def suppression_lift(*, suppression: Suppression, reason: str, user=None) -> Suppression:
    """Lift ``suppression``, recording why and by whom."""
    if not reason or not reason.strip():
        raise ValueError("Say why the suppression is lifted.")
    with transaction.atomic():
        lifted = Suppression.objects.filter(pk=suppression.pk, lifted_at__isnull=True).update(
            lifted_at=timezone.now(), lifted_reason=reason.strip(), lifted_by=user
        )
        suppression.refresh_from_db()
        if lifted:
            Recipient.objects.filter(
                email=suppression.email, status__in=RECIPIENT_STATUS_FOR_REASON.values()
            ).update(status=Recipient.Status.ACTIVE, updated_at=timezone.now())
    return suppression
