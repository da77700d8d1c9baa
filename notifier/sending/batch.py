"""A batch's claim on its rows: claim, lease, guard, release.

1. **Claim.** ``pending -> sending`` is one conditional UPDATE carrying a fresh
   claim token and a lease. Two workers given the same ids cannot both win a
   row; a row whose ``next_attempt_at`` is in the future is not claimed.
2. **Lease.** The batch renews its lease before it runs out; if the renewal
   finds its rows gone (the sweeper recovered them) the batch stops at once.
3. **Guard.** At most every ``GUARD_EVERY_SECONDS`` the batch reads whether a
   group it is sending for (a campaign run) was paused or cancelled, from
   notifier's own DeliveryGroup table.
4. **Release.** Rows the batch did not hand over (paused run, lost claim,
   transport down) go back to ``pending`` before the task ends.
"""

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import uuid4

from django.conf import settings
from django.db.models import Value
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from notifier.models import Delivery, DeliveryGroup, Template
from notifier.sending import journal
from notifier.sending.message import group_contexts
from notifier.sending.persist import with_reconnect
from notifier.services.unreadable import deliveries_load

logger = logging.getLogger(__name__)

GUARD_EVERY_SECONDS = 0.5
# "Never due" for a row held without next_attempt_at (see the claim).
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class GroupVerdict(StrEnum):
    """What a batch does with the rows of a group that is no longer active."""

    PAUSE = "pause"  # hand the rows back, not due until resumed
    CANCEL = "cancel"  # cancel the rows not yet handed over


VERDICT_FOR_STATE = {
    DeliveryGroup.State.PAUSED: GroupVerdict.PAUSE,
    DeliveryGroup.State.CANCELLED: GroupVerdict.CANCEL,
}


def group_verdicts(group_ids: set[int]) -> dict[int, GroupVerdict]:
    """The verdict for each paused or cancelled group among ``group_ids`` (one query)."""
    states = DeliveryGroup.objects.filter(pk__in=group_ids, state__in=VERDICT_FOR_STATE)
    return {pk: VERDICT_FOR_STATE[state] for pk, state in states.values_list("pk", "state")}


class Claim:
    """The rows one batch holds, under one claim token and lease."""

    def __init__(self, delivery_ids: Iterable[int]):
        self.ids = sorted(set(delivery_ids))
        self.token = uuid4()
        self.lease = settings.NOTIFIER_LEASE_SECONDS
        self.rows: list[Delivery] = []
        self.held_ids: set[int] = set()  # rows of paused runs
        self.group_contexts: dict[int, dict] = {}
        self.renew_at = 0.0

    def claim(self) -> None:
        if not self.ids:
            return
        journal.journal_open(self.token)
        now = timezone.now()
        # Retried on a dropped connection: the UPDATE may have committed
        # before the error reached us, so what we hold is read back by token.
        # Rows are found by primary key whatever the table's statistics say:
        # "pending" and "due" are written so that they match no index (else
        # the partial due index is scanned whole whenever statistics taken
        # before a big launch claim that nothing is pending).
        with_reconnect(
            lambda: (
                Delivery.objects.alias(
                    state=Concat("status", Value("")),
                    due_at=Coalesce("next_attempt_at", Value(FAR_FUTURE)),
                )
                .filter(id__in=self.ids, state=Delivery.Status.PENDING, due_at__lte=now)
                .update(
                    status=Delivery.Status.SENDING,
                    claim_token=self.token,
                    lease_expires_at=now + timedelta(seconds=self.lease),
                    updated_at=now,
                )
            )
        )
        self.renew_at = time.monotonic() + self.lease / 2
        # A row that cannot be read back is failed on its own, not the batch.
        self.rows = with_reconnect(
            lambda: deliveries_load(
                Delivery.objects.filter(claim_token=self.token)
                .select_related("recipient")
                .order_by("id")
            )
        )
        if not self.rows:
            journal.journal_close(self.token)
            return
        # Each template once (a campaign's rows share one), not joined to every row.
        templates = with_reconnect(
            lambda: Template.objects.in_bulk({d.template_id for d in self.rows if d.template_id})
        )
        for delivery in self.rows:
            if delivery.template_id:
                delivery.template = templates[delivery.template_id]
        self.group_contexts = with_reconnect(
            lambda: group_contexts({d.run_id for d in self.rows if d.run_id is not None})
        )

    def lease_due(self) -> bool:
        return time.monotonic() >= self.renew_at

    def renew_lease(self) -> bool:
        """Extend the lease; False if the sweeper recovered the rows meanwhile."""
        now = timezone.now()
        renewed = with_reconnect(
            lambda: Delivery.objects.filter(
                claim_token=self.token, status=Delivery.Status.SENDING
            ).update(lease_expires_at=now + timedelta(seconds=self.lease))
        )
        self.renew_at = time.monotonic() + self.lease / 2
        if not renewed:
            logger.warning("Claim %s was recovered by the sweeper; stopping batch", self.token)
        return bool(renewed)

    def release_unfinished(self, finished_ids: set[int]) -> list[int]:
        """Hand rows this batch did not finish back to ``pending``; returns their ids.

        Rows of a paused run are held (no ``next_attempt_at``) until resumed;
        others are due at once and the sweeper dispatches them again.
        """
        unfinished = [d.id for d in self.rows if d.id not in finished_ids]
        held = [i for i in unfinished if i in self.held_ids]
        others = [i for i in unfinished if i not in self.held_ids]
        self._release(held, hold=True)
        self._release(others, hold=False)
        return held + others

    def _release(self, ids: list[int], *, hold: bool) -> None:
        if not ids:
            return
        fields = {
            "status": Delivery.Status.PENDING,
            "claim_token": None,
            "lease_expires_at": None,
            "dispatched_at": None,
            "updated_at": timezone.now(),
        }
        if hold:
            fields["next_attempt_at"] = None
        with_reconnect(
            lambda: Delivery.objects.filter(
                id__in=ids, claim_token=self.token, status=Delivery.Status.SENDING
            ).update(**fields)
        )


class GroupGuard:
    """The verdicts for the groups of a batch's rows, read from the
    DeliveryGroup table again at most every ``GUARD_EVERY_SECONDS``."""

    def __init__(self, rows: list[Delivery]):
        self.rows = rows
        self.verdicts: dict[int, GroupVerdict] = {}
        self.next_check = 0.0

    def verdict_for(self, delivery: Delivery) -> GroupVerdict | None:
        if delivery.run_id is None:
            return None
        if time.monotonic() >= self.next_check:
            group_ids = {d.run_id for d in self.rows if d.run_id is not None}
            self.verdicts = with_reconnect(lambda: group_verdicts(group_ids))
            self.next_check = time.monotonic() + GUARD_EVERY_SECONDS
        return self.verdicts.get(delivery.run_id)
