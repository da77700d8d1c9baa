"""One batch: claim the rows, skip the suppressed, render each message, hand
the messages to a sender thread (one request each, or many per request on a
transport with a batch API), record the answers, release what was not sent.

The parts live in their own modules: the claim, lease, guard and release in
``batch``, connections and sender threads in ``wire``, rendering in
``message``, what an answer means in ``outcomes``, the bulk writes and the
hand-off journal in ``persist`` and ``journal``.
"""

import logging
import time
from collections.abc import Iterable

from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

from config.logging import log_context
from notifier.errors import UnknownTransport
from notifier.models import Delivery
from notifier.sending import journal
from notifier.sending.batch import Claim, GroupGuard, GroupVerdict
from notifier.sending.failover import Failover
from notifier.sending.handoff import HandoffMarks
from notifier.sending.limits import domain_slot, quota_take
from notifier.sending.message import delivery_build_message
from notifier.sending.outcomes import DEFER, FAILED, RETRY, Outcome
from notifier.sending.persist import OutcomeLog
from notifier.sending.ratelimit import rate_limit_wait
from notifier.sending.wire import Item, Wire, row_log_context
from notifier.services.suppressions import suppression_reasons

logger = logging.getLogger(__name__)


class _Batch:
    def __init__(self, delivery_ids: Iterable[int]):
        self.held = Claim(delivery_ids)
        self.token = self.held.token
        self.log = OutcomeLog(self.token)
        self.failover = Failover(self.token, self.log)
        self.guard: GroupGuard | None = None
        self.wire: Wire | None = None
        self.stopped = False

    @property
    def rows(self) -> list[Delivery]:
        return self.held.rows

    @property
    def counts(self) -> dict[str, int]:
        return self.log.counts

    def claim(self) -> None:
        self.held.claim()
        self.guard = GroupGuard(self.held.rows)
        self.marks = HandoffMarks(self.token, self.held.rows, self.log.finished_ids)

    def renew_lease_if_due(self) -> None:
        if not self.held.lease_due():
            return
        self.log.flush()
        if not self.held.renew_lease():
            self.stopped = True

    def skip_suppressed(self) -> None:
        reasons = suppression_reasons(d.recipient for d in self.rows)
        for delivery in self.rows:
            reason = reasons.get(delivery.recipient_id)
            if reason is not None:
                self.log.finish_row(delivery, Outcome(Delivery.Status.SUPPRESSED, error=reason))

    def run(self) -> None:
        self.skip_suppressed()
        by_transport: dict[str, list[Delivery]] = {}
        for delivery in self.rows:
            if delivery.id not in self.log.finished_ids:
                by_transport.setdefault(delivery.transport, []).append(delivery)
        for transport, rows in self.failover.route(by_transport).items():
            if self.stopped:
                break
            self.send_over(transport, rows)

    def send_over(self, transport: str, rows: list[Delivery]) -> None:
        """Render each row here and hand the messages to the transport
        ``wire.request_size()`` at a time (``wire``: one batch request in
        flight where the transport has a batch API, else one message per
        request on up to ``NOTIFIER_SEND_THREADS`` sender threads, a hand-over
        of several queued for them), so the next messages render while the
        previous ones are on the wire. Database and journal writes stay
        on this thread."""
        try:
            self.wire = Wire(transport, messages=len(rows))
        except UnknownTransport as exc:
            for delivery in rows:
                self.log.finish_row(delivery, Outcome(FAILED, error=str(exc)))
            return
        except Exception as exc:  # transport down: nothing was handed over
            error = f"Could not connect to transport {transport!r}: {exc}"
            for delivery in self.failover.connection_failed(transport, rows, exc):
                self.log.finish_row(
                    delivery, Outcome(RETRY, error=error, attempts=delivery.attempts + 1)
                )
            return
        ready: list[Item] = []  # rendered, not yet handed over (released if we stop)
        try:
            for delivery in rows:
                self.collect(wait=False)
                self.renew_lease_if_due()
                if self.stopped:
                    return
                if not self.group_allows(delivery):
                    continue
                with row_log_context(delivery):
                    message = self.prepare(delivery)
                if message is not None:
                    ready.append((delivery, message))
                if len(ready) >= self.wire.request_size():
                    self.hand_over(ready)
                    ready = []
                    if self.stopped:
                        return
            if ready:
                self.hand_over(ready)
        finally:
            # Every message handed over gets its answer recorded before the
            # batch ends: a row on the wire is never released for a resend.
            # The last answers are journaled as they come (no hand-off follows
            # to carry them), so one slow answer keeps no others in doubt.
            while self.wire.in_flight:
                self.collect(wait=True)
                self.log.journal_answers()
            self.wire.close()

    def group_allows(self, delivery: Delivery) -> bool:
        """False for a row of a cancelled run (cancelled here) or a paused one
        (held, released at the end of the batch)."""
        verdict = self.guard.verdict_for(delivery)
        if verdict == GroupVerdict.CANCEL:
            self.log.finish_row(
                delivery,
                Outcome(Delivery.Status.CANCELLED, error="Not sent: the run was cancelled."),
            )
            return False
        if verdict == GroupVerdict.PAUSE:
            self.held.held_ids.add(delivery.id)
            return False
        return True

    def prepare(self, delivery: Delivery) -> EmailMultiAlternatives | None:
        """The rendered message, or None when the row is finished here (a
        broken render) or waits in the database (a provider limit)."""
        try:
            message = delivery_build_message(
                delivery, run_context=self.held.group_contexts.get(delivery.run_id, {})
            )
        except Exception as exc:
            self.log.finish_row(
                delivery,
                Outcome(
                    FAILED,
                    error=f"Could not render: {exc}",
                    failure_kind=Delivery.FailureKind.RENDER,
                ),
            )
            return None
        if self.deferred_by_limits(delivery):
            return None
        return message

    def hand_over(self, ready: list[Item]) -> None:
        """Hand one request over: its rows are marked handed in the journal
        (with the answers that came back since the last request) in one round
        trip first. A run paused or cancelled while the request was rendered
        keeps its rows."""
        items = [item for item in ready if self.group_allows(item[0])]
        if not items:
            return
        rate_limit_wait(
            transport=self.wire.transport, per_second=self.wire.rate, messages=len(items)
        )
        while not self.wire.has_room(len(items)):
            self.collect(wait=True)
        self.collect(wait=False)  # every answer back so far goes with this hand-off
        if self.stopped:  # an answer said the transport is failing: hand nothing more
            return
        handed = [delivery for delivery, _message in items]
        if not (self.marks.ensure(handed) and self.log.journal_handoff([d.id for d in handed])):
            self.stopped = True
            return
        self.wire.send(items)  # each message's lines name its row (wire)

    def deferred_by_limits(self, delivery: Delivery) -> bool:
        """Apply the recipient domain's rate and the transport's daily quota
        (limits.py): a row over one waits in the database, not counted as an
        attempt, and is never handed over now."""
        now = timezone.now()
        wait, deferral = domain_slot(delivery.recipient.email, now=now)
        if deferral is None:
            deferral = quota_take(self.wire.transport, now=now)
        if deferral is not None:
            outcome = Outcome(DEFER, error=deferral.reason, not_before=deferral.until.isoformat())
            self.log.finish_row(delivery, outcome)
            return True
        if wait > 0:
            time.sleep(wait)
        return False

    def collect(self, *, wait: bool) -> None:
        """Record the answers that came back (waiting for one if ``wait``)."""
        for delivery, outcome in self.wire.received(wait=wait):
            if self.failover.answered(self.wire.transport, outcome):
                self.stopped = True  # hand nothing more to a failing transport
            self.log.answered(delivery, outcome)

    def finish(self) -> None:
        # If either write fails, the rows stay ``sending`` under this claim and
        # the journal stays open: the sweeper recovers them from it later.
        self.log.flush()
        released = self.held.release_unfinished(self.log.finished_ids)
        if released:
            self.log.finished_ids.update(released)
            self.log.count("released", len(released))
        try:
            journal.journal_close(self.token)
        except Exception:
            logger.warning("Could not close journal %s", self.token, exc_info=True)


def deliveries_send_batch(*, delivery_ids: Iterable[int]) -> dict[str, int]:
    """Send the given deliveries that are pending and due. Safe to run twice.

    Returns counts per resulting status (and ``released`` for rows handed
    back unsent).
    """
    batch = _Batch(delivery_ids)
    with log_context(claim=str(batch.token)):
        batch.claim()
        if not batch.rows:
            return {}
        try:
            batch.run()
        finally:
            batch.finish()
    return batch.counts
