"""Recipients entering and leaving journeys.

``journey_enroll`` is the entry point for code outside this app (a confirmed
signup); the polling triggers (``triggers``) enter recipients in bulk through
``enrollments_create``. Entering is idempotent: the unique (journey,
recipient, entry key) makes the same trigger occurrence enter once.
"""

from collections.abc import Iterable
from datetime import datetime

from django.db.models import Exists, OuterRef
from django.utils import timezone

from journeys.models import Journey, JourneyEnrollment
from notifier.models import Recipient, Suppression
from notifier.services.suppressions import SUPPRESSED_RECIPIENT_STATUSES

State = JourneyEnrollment.State


def journeys_accepting(*, trigger: str) -> list[Journey]:
    """The journey versions that take new recipients for ``trigger``."""
    return list(
        Journey.objects.filter(
            trigger=trigger, status=Journey.Status.ACTIVE, retired_at__isnull=True
        ).order_by("id")
    )


def _mailable(recipient_ids: Iterable[int]) -> set[int]:
    """Those of ``recipient_ids`` that may be mailed (not suppressed, active)."""
    suppressed = Suppression.objects.filter(email=OuterRef("email"), lifted_at__isnull=True)
    return set(
        Recipient.objects.filter(pk__in=list(recipient_ids))
        .exclude(status__in=SUPPRESSED_RECIPIENT_STATUSES)
        .exclude(Exists(suppressed))
        .values_list("pk", flat=True)
    )


def enrollments_create(
    *, journey: Journey, entries: dict[int, str], now: datetime | None = None
) -> int:
    """Enter recipients into ``journey``: ``entries`` maps a recipient id to
    what entered it (an entry key, unique per recipient and journey).

    Left out: suppressed recipients; without re-entry, anyone who was ever in
    any version of the journey; with re-entry, anyone inside it now. Returns
    how many entered. Safe to repeat (conflicts are ignored).
    """
    if not entries or journey.status != Journey.Status.ACTIVE:
        return 0
    first = journey.steps.order_by("position").first()
    if first is None:
        return 0
    now = now or timezone.now()
    in_lineage = JourneyEnrollment.objects.filter(
        journey__lineage=journey.lineage, recipient_id__in=list(entries)
    )
    if journey.reentry:
        in_lineage = in_lineage.filter(state__in=JourneyEnrollment.LIVE_STATES)
    taken = set(in_lineage.values_list("recipient_id", flat=True))
    allowed = _mailable(set(entries) - taken)
    rows = [
        JourneyEnrollment(
            journey=journey,
            recipient_id=recipient_id,
            entry_key=entries[recipient_id] if journey.reentry else "",
            started_version=journey.version,
            step=first,
            state=State.ACTIVE,
            due_at=now,
            entered_at=now,
        )
        for recipient_id in sorted(allowed)
    ]
    created = JourneyEnrollment.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(created)


def journey_enroll(
    *,
    trigger: str,
    recipient: Recipient,
    entry_key: str = "",
    contact_list=None,
    now: datetime | None = None,
) -> int:
    """Enter ``recipient`` into every active journey started by ``trigger``
    (``Journey.Trigger``: ``signup_confirmed`` when a signup is confirmed,
    ``list_joined`` or ``manual``). With ``contact_list``, a journey that
    names a list enters only recipients of that list. ``entry_key`` tells
    apart two occurrences of the trigger (re-entry). Returns how many
    journeys the recipient entered."""
    if trigger not in Journey.Trigger.values:
        raise ValueError(f"Unknown journey trigger {trigger!r}.")
    entered = 0
    for journey in journeys_accepting(trigger=trigger):
        if (
            contact_list is not None
            and journey.trigger_list_id
            and journey.trigger_list_id != contact_list.pk
        ):
            continue
        entered += enrollments_create(
            journey=journey, entries={recipient.pk: entry_key[:64]}, now=now
        )
    return entered


def enrollments_exit(*, ids: Iterable[int], reason: str, now: datetime | None = None) -> int:
    """Take live enrollments out of their journey (staff removal, a stopped
    journey). A worker holding one of them loses its claim."""
    now = now or timezone.now()
    return JourneyEnrollment.objects.filter(
        id__in=list(ids), state__in=JourneyEnrollment.LIVE_STATES
    ).update(
        state=State.EXITED,
        exit_reason=reason,
        finished_at=now,
        due_at=None,
        claim_token=None,
        lease_expires_at=None,
    )


def enrollments_remove(*, ids: Iterable[int]) -> int:
    """Staff: remove recipients from their journey at once."""
    return enrollments_exit(ids=ids, reason=JourneyEnrollment.ExitReason.REMOVED)
