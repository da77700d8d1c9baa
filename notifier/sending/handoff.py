"""The hand-off mark in the database: which rows of a claim may have left.

The journal (``journal``) says message by message what was handed over, but
it is only as durable as Redis. The mark is kept where the rows are: before a
batch hands over a row that is not marked yet, one UPDATE sets
``handoff_token`` (the claim token) on it and on the next rows the batch will
hand over, ``NOTIFIER_HANDOFF_MARK_AHEAD`` rows in all. When a claim's journal
is lost (Redis flushed or restarted without persistence), the sweeper trusts
the mark (``services.retries``):

* no mark of this claim -> the row never left: back to ``pending``;
* the mark              -> it may have left: ``unknown``, then looked up at
                           the ESP where it can be (``services.indoubt``).

The cost is one UPDATE per K hand-offs. After a lost journal the rows in
doubt are the claim's handed-over rows whose answers were not yet written to
the database, plus up to K - 1 marked ahead that had not left (a look-up at
the ESP settles both). A row marked once keeps
its mark: it is never moved to another transport (``failover``).
"""

import logging
from itertools import islice

from django.conf import settings

from notifier.models import Delivery
from notifier.sending.persist import with_reconnect

logger = logging.getLogger(__name__)


class HandoffMarks:
    """The hand-off marks of one claim, written K rows ahead of the sending."""

    def __init__(self, token, rows: list[Delivery], finished_ids: set[int]):
        self.token = token
        self.rows = rows
        self.finished_ids = finished_ids
        self.position = {row.id: i for i, row in enumerate(rows)}
        self.marked: set[int] = set()

    def ensure(self, deliveries: list[Delivery]) -> bool:
        """Make sure every row of ``deliveries`` (one request) carries the
        mark before it is handed over, marking the rows that follow with them
        (``NOTIFIER_HANDOFF_MARK_AHEAD`` in all, at least the request); False
        if it could not be written (the batch must stop)."""
        missing = [row for row in deliveries if row.id not in self.marked]
        if not missing:
            return True
        first = missing[0]
        ahead = max(1, settings.NOTIFIER_HANDOFF_MARK_AHEAD, len(missing))
        upcoming = (
            row.id
            for row in self.rows[self.position[first.id] :]
            if row.transport == first.transport
            and row.id not in self.finished_ids
            and row.id not in self.marked
        )
        ids = set(islice(upcoming, ahead)) | {row.id for row in missing}
        try:
            written = with_reconnect(
                lambda: Delivery.objects.filter(
                    id__in=ids, claim_token=self.token, status=Delivery.Status.SENDING
                ).update(handoff_token=self.token)
            )
        except Exception:
            logger.exception("Could not write the hand-off mark; stopping batch before hand-off")
            return False
        self.marked.update(ids)
        return bool(written)
