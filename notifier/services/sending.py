"""Claim, render, send and record a batch of Deliveries.

Invariants, in the order a batch meets them:

1. **Claim.** ``pending -> sending`` is one conditional UPDATE carrying a fresh
   claim token and a lease. Two workers given the same ids cannot both win a
   row; a row whose ``next_attempt_at`` is in the future is not claimed.
2. **Hand-off.** Before a message is handed to the transport its id is marked
   in the claim's Redis journal (``journal.py``); the answer replaces the mark.
   The database is written in bulk every ``FLUSH_EVERY`` outcomes, so a batch
   of 500 costs a few queries, and a crash loses nothing: the sweeper replays
   the journal.
3. **Lease.** The batch renews its lease before it runs out; if the renewal
   finds its rows gone (the sweeper recovered them) it stops at once.
4. **Release.** Rows the batch did not hand over (paused run, lost claim,
   transport down) go back to ``pending`` before the task ends.
"""

import contextvars
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import formataddr
from queue import Empty, SimpleQueue
from uuid import uuid4

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import DatabaseError, connection
from django.db.models import Value
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from config.logging import log_context
from notifier import templating
from notifier.errors import UnknownTransport
from notifier.instruments import observe_send
from notifier.models import Delivery
from notifier.services import journal
from notifier.services.outcomes import (
    FAILED,
    RETRY,
    SENT,
    UNKNOWN,
    Outcome,
    classify_exception,
    classify_sent_message,
)
from notifier.services.ratelimit import rate_limit_wait
from notifier.services.recipients import recipient_render_data
from notifier.services.suppressions import SUPPRESSED_RECIPIENT_STATUSES, active_suppressions

logger = logging.getLogger(__name__)

FLUSH_EVERY = 100
FLUSH_SECONDS = 2.0
GUARD_EVERY_SECONDS = 0.5
# "Never due" for a row held without next_attempt_at (see the claim).
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

OUTCOME_FIELDS = [
    "status",
    "status_reason",
    "attempts",
    "next_attempt_at",
    "last_error",
    "esp_message_id",
    "claim_token",
    "lease_expires_at",
    "dispatched_at",
    "sent_at",
    "updated_at",
]

# --- Extension points ---------------------------------------------------------
# A run guard is told the run ids in a batch and answers, for any of them,
# "pause" (hand the rows back, not due until resumed) or "cancel". The
# campaigns app registers one; notifier itself never imports campaigns.
RunGuard = Callable[[set[int]], dict[int, str]]
_run_guards: list[RunGuard] = []
# A run context provider is told the run ids in a batch and answers each run's
# shared template context (a campaign's, as it was at launch): stored once per
# run, not copied into every Delivery row. A row's own context wins.
RunContexts = Callable[[set[int]], dict[int, dict]]
_run_context_providers: list[RunContexts] = []
# Message hooks may add context and headers (unsubscribe links, for example).
MessageHook = Callable[[Delivery, dict, dict], None]
_message_hooks: list[MessageHook] = []


def register_run_guard(guard: RunGuard) -> None:
    if guard not in _run_guards:
        _run_guards.append(guard)


def register_run_context(provider: RunContexts) -> None:
    if provider not in _run_context_providers:
        _run_context_providers.append(provider)


def run_contexts(run_ids: set[int]) -> dict[int, dict]:
    contexts: dict[int, dict] = {}
    if run_ids:
        for provider in _run_context_providers:
            contexts.update(provider(run_ids))
    return contexts


def register_message_hook(hook: MessageHook) -> None:
    if hook not in _message_hooks:
        _message_hooks.append(hook)


def _check_run_guards(run_ids: set[int]) -> dict[int, str]:
    verdicts: dict[int, str] = {}
    for guard in _run_guards:
        verdicts.update(guard(run_ids))
    return verdicts


# --- Outcomes -----------------------------------------------------------------


def backoff_seconds(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with +/-50% jitter, at least the ESP's Retry-After."""
    base = settings.NOTIFIER_BACKOFF_BASE * (2 ** max(0, attempts - 1))
    delay = min(settings.NOTIFIER_BACKOFF_CAP, base) * random.uniform(0.5, 1.5)
    if retry_after:
        delay = max(delay, retry_after)
    return delay


def apply_outcome(delivery: Delivery, outcome: Outcome, *, now) -> None:
    """Set the fields of ``delivery`` for ``outcome`` (in memory only)."""
    delivery.claim_token = None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    if outcome.attempts:
        delivery.attempts = outcome.attempts
    if outcome.status == SENT:
        delivery.status = Delivery.Status.SENT
        delivery.esp_message_id = outcome.esp_message_id[:255]
        delivery.sent_at = now
        delivery.last_error = ""
        delivery.status_reason = ""
    elif outcome.status == RETRY and delivery.attempts < settings.NOTIFIER_MAX_ATTEMPTS:
        delivery.status = Delivery.Status.PENDING
        delivery.next_attempt_at = now + timedelta(
            seconds=backoff_seconds(delivery.attempts, outcome.retry_after)
        )
        delivery.dispatched_at = None
        delivery.last_error = outcome.error
        delivery.status_reason = (
            f"Transient error, attempt {delivery.attempts} of {settings.NOTIFIER_MAX_ATTEMPTS}"
        )
    elif outcome.status == RETRY:
        delivery.status = Delivery.Status.FAILED
        delivery.last_error = outcome.error
        delivery.status_reason = f"Gave up after {delivery.attempts} attempts"
    elif outcome.status == FAILED:
        delivery.status = Delivery.Status.FAILED
        delivery.last_error = outcome.error
        delivery.status_reason = "Permanent error"
    elif outcome.status == UNKNOWN:
        delivery.status = Delivery.Status.UNKNOWN
        delivery.last_error = outcome.error
        delivery.status_reason = (
            "Handed to the transport but no answer was recorded; not resent automatically"
        )
    elif outcome.status in (Delivery.Status.SUPPRESSED, Delivery.Status.CANCELLED):
        delivery.status = outcome.status
        delivery.status_reason = outcome.error
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown outcome {outcome.status}")


def with_reconnect(call):
    """Run a database call that is safe to repeat (a read, an idempotent
    write); if the connection was dropped (a restarted server,
    ``pg_terminate_backend``), retry once on a new one."""
    for attempt in (1, 2):
        try:
            return call()
        except DatabaseError:
            if attempt == 2 or connection.in_atomic_block:
                raise
            logger.warning("Database error; reconnecting and retrying once", exc_info=True)
            connection.close()
    return None


def deliveries_write(rows: list[Delivery], *, claim_token=None) -> int:
    """Write outcome fields of ``rows`` in one statement per 500 rows.

    With ``claim_token``, only rows still held by that claim are written.
    A dropped database connection is retried once on a fresh connection (the
    write is idempotent).
    """
    if not rows:
        return 0

    def write() -> int:
        return sum(
            _update_from_values(rows[i : i + 500], claim_token) for i in range(0, len(rows), 500)
        )

    return with_reconnect(write)


_PG_TYPES = {
    "status": "varchar",
    "status_reason": "varchar",
    "attempts": "integer",
    "next_attempt_at": "timestamptz",
    "last_error": "text",
    "esp_message_id": "varchar",
    "claim_token": "uuid",
    "lease_expires_at": "timestamptz",
    "dispatched_at": "timestamptz",
    "sent_at": "timestamptz",
    "updated_at": "timestamptz",
}


def _outcome_values_sql(n_rows: int) -> str:
    """The FROM source ``v(id, <OUTCOME_FIELDS>)`` of the outcome write: n rows
    of parameters. PostgreSQL types each parameter (a VALUES list has no
    column types to infer them from) and names the columns in the alias;
    SQLite names a VALUES list's columns column1, column2... and takes no
    column list in an alias, so they are renamed in a SELECT."""
    width = len(OUTCOME_FIELDS) + 1
    if connection.vendor == "postgresql":
        row = "(%s::bigint, " + ", ".join(f"%s::{_PG_TYPES[f]}" for f in OUTCOME_FIELDS) + ")"
        return f"(VALUES {', '.join([row] * n_rows)}) AS v(id, {', '.join(OUTCOME_FIELDS)})"
    row = "(" + ", ".join(["%s"] * width) + ")"
    names = ", ".join(f"column{i + 1} AS {name}" for i, name in enumerate(["id", *OUTCOME_FIELDS]))
    return f"(SELECT {names} FROM (VALUES {', '.join([row] * n_rows)})) AS v"


def _outcome_params(rows: list[Delivery]) -> list:
    if connection.vendor == "postgresql":  # psycopg adapts Python values itself
        return [v for row in rows for v in (row.pk, *(getattr(row, f) for f in OUTCOME_FIELDS))]
    fields = [Delivery._meta.get_field(f) for f in OUTCOME_FIELDS]
    return [
        v
        for row in rows
        for v in (
            row.pk,
            *(f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields),
        )
    ]


def _update_from_values(rows: list[Delivery], claim_token) -> int:
    """One ``UPDATE ... FROM (VALUES ...)`` on either database: Django's
    bulk_update builds a CASE per column per row, which costs more than
    sending the messages, and could not keep a webhook's status (below)."""
    table = connection.ops.quote_name(Delivery._meta.db_table)
    params = _outcome_params(rows)
    assignments = ", ".join(f"{f} = v.{f}" for f in OUTCOME_FIELDS if f != "status")
    # A webhook may have moved the row on (delivered, bounced...) before
    # this batch wrote "sent": keep what the ESP told us since.
    assignments += (
        ", status = CASE WHEN v.status = 'sent' AND d.status IN "
        "('delivered', 'bounced', 'complained') THEN d.status ELSE v.status END"
    )
    sql = (
        f"UPDATE {table} AS d SET {assignments} "
        f"FROM {_outcome_values_sql(len(rows))} WHERE d.id = v.id"
    )
    if claim_token is not None:
        sql += " AND d.claim_token = %s"
        params.append(
            Delivery._meta.get_field("claim_token").get_db_prep_save(claim_token, connection)
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# --- Messages -----------------------------------------------------------------


def _content(delivery: Delivery) -> tuple[str, str, str]:
    if delivery.template_id:
        t = delivery.template
        return t.subject, t.html_body, t.text_body
    return delivery.subject, delivery.html_body, delivery.text_body


def delivery_build_message(
    delivery: Delivery, *, run_context: dict | None = None
) -> EmailMultiAlternatives:
    """Render ``delivery`` into an email message (raises on a broken render).

    ``run_context`` is the shared context of the delivery's run (see
    ``register_run_context``); looked up when not given.
    """
    if run_context is None and delivery.run_id is not None:
        run_context = run_contexts({delivery.run_id}).get(delivery.run_id)
    # This message's own top-level dict (hooks add to it); values are plain
    # data decoded from JSON, which rendering only reads.
    context = dict(run_context or {})
    if isinstance(delivery.context, dict):
        context.update(delivery.context)
    context["recipient"] = recipient_render_data(delivery.recipient)
    headers = {"Message-ID": delivery.message_id}
    headers.update(delivery.headers or {})
    for hook in _message_hooks:
        hook(delivery, context, headers)
    subject_src, html_src, text_src = _content(delivery)
    subject, html, text = templating.render_message(
        subject=subject_src, html_body=html_src, text_body=text_src, context=context
    )
    recipient = delivery.recipient
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=delivery.from_email or settings.DEFAULT_FROM_EMAIL,
        to=[formataddr((recipient.name, recipient.email)) if recipient.name else recipient.email],
        headers=headers,
    )
    if html:
        message.attach_alternative(html, "text/html")
    # Anymail sends these as ESP metadata: webhooks then name the delivery.
    message.metadata = {"delivery": str(delivery.uuid)}
    return message


def transport_connection(name: str):
    try:
        config = settings.NOTIFIER_TRANSPORTS[name]
    except KeyError:
        raise UnknownTransport(
            f"Unknown transport {name!r}; configured: {', '.join(settings.NOTIFIER_TRANSPORTS)}"
        ) from None
    return get_connection(config["BACKEND"], fail_silently=False, **config.get("OPTIONS", {}))


def _transmit(conn, message: EmailMultiAlternatives, delivery: Delivery, transport: str):
    """Hand one message over (on a sender thread) and classify the answer."""
    started = time.monotonic()
    try:
        conn.send_messages([message])
    except Exception as exc:
        outcome = classify_exception(exc)
        if outcome.status == UNKNOWN and transport == "smtp":
            # The SMTP connection is unusable after a mid-send failure; the
            # backend opens a new one for its next message.
            conn.close()
    else:
        outcome = classify_sent_message(message, delivery.recipient.email)
    observe_send(transport=transport, outcome=outcome.status, seconds=time.monotonic() - started)
    logger.info("Handed to %s: %s %s", transport, outcome.status, outcome.error or "")
    return outcome


# --- The batch ----------------------------------------------------------------


class _Batch:
    def __init__(self, delivery_ids: Iterable[int]):
        self.ids = sorted(set(delivery_ids))
        self.token = uuid4()
        self.lease = settings.NOTIFIER_LEASE_SECONDS
        self.rows: list[Delivery] = []
        self.done: list[Delivery] = []  # outcome applied, not yet written
        self.finished_ids: set[int] = set()
        self.held_ids: set[int] = set()  # rows of paused runs
        self.unjournaled: list[tuple[int, dict]] = []  # answers not yet journaled
        # The wire, while send_over runs: free connections, answers that came
        # back, the sender threads (None: one connection, sent inline).
        self.free: SimpleQueue = SimpleQueue()
        self.answers: SimpleQueue = SimpleQueue()
        self.pool: ThreadPoolExecutor | None = None
        self.in_flight = 0
        self.counts: dict[str, int] = {}
        self.stopped = False
        self.last_flush = time.monotonic()
        self.renew_at = 0.0
        self.next_guard_check = 0.0
        self.run_verdicts: dict[int, str] = {}
        self.run_contexts: dict[int, dict] = {}

    # claim / lease ------------------------------------------------------------
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
        self.rows = with_reconnect(
            lambda: list(
                Delivery.objects.filter(claim_token=self.token)
                .select_related("recipient", "template")
                .order_by("id")
            )
        )
        if not self.rows:
            journal.journal_close(self.token)
            return
        self.run_contexts = with_reconnect(
            lambda: run_contexts({d.run_id for d in self.rows if d.run_id is not None})
        )

    def renew_lease_if_due(self) -> None:
        if time.monotonic() < self.renew_at:
            return
        self.flush()
        now = timezone.now()
        renewed = with_reconnect(
            lambda: Delivery.objects.filter(
                claim_token=self.token, status=Delivery.Status.SENDING
            ).update(lease_expires_at=now + timedelta(seconds=self.lease))
        )
        self.renew_at = time.monotonic() + self.lease / 2
        if not renewed:
            logger.warning("Claim %s was recovered by the sweeper; stopping batch", self.token)
            self.stopped = True

    # outcomes -------------------------------------------------------------------
    def finish_row(self, delivery: Delivery, outcome: Outcome) -> None:
        apply_outcome(delivery, outcome, now=timezone.now())
        self.done.append(delivery)
        self.finished_ids.add(delivery.id)
        self.counts[delivery.status] = self.counts.get(delivery.status, 0) + 1
        if len(self.done) >= FLUSH_EVERY or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.done:
            deliveries_write(self.done, claim_token=self.token)
            self.done = []
        self.last_flush = time.monotonic()

    def release_unfinished(self) -> None:
        """Hand rows this batch did not finish back to ``pending``.

        Rows of a paused run are held (no ``next_attempt_at``) until resumed;
        others are due at once and the sweeper dispatches them again.
        """
        unfinished = [d.id for d in self.rows if d.id not in self.finished_ids]
        held = [i for i in unfinished if i in self.held_ids]
        others = [i for i in unfinished if i not in self.held_ids]
        self._release(held, hold=True)
        self._release(others, hold=False)

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
        self.finished_ids.update(ids)
        self.counts["released"] = self.counts.get("released", 0) + len(ids)

    # guards ---------------------------------------------------------------------
    def verdict_for(self, delivery: Delivery) -> str | None:
        if delivery.run_id is None or not _run_guards:
            return None
        if time.monotonic() >= self.next_guard_check:
            run_ids = {d.run_id for d in self.rows if d.run_id is not None}
            self.run_verdicts = _check_run_guards(run_ids)
            self.next_guard_check = time.monotonic() + GUARD_EVERY_SECONDS
        return self.run_verdicts.get(delivery.run_id)

    # the work ---------------------------------------------------------------------
    def skip_suppressed(self) -> None:
        suppressed = active_suppressions(d.recipient.email for d in self.rows)
        for delivery in self.rows:
            reason = suppressed.get(delivery.recipient.email)
            if reason is None and delivery.recipient.status in SUPPRESSED_RECIPIENT_STATUSES:
                reason = f"recipient {delivery.recipient.status}"
            if reason is not None:
                self.finish_row(
                    delivery, Outcome(Delivery.Status.SUPPRESSED, error=f"Suppressed: {reason}")
                )

    def run(self) -> None:
        self.skip_suppressed()
        by_transport: dict[str, list[Delivery]] = {}
        for delivery in self.rows:
            if delivery.id not in self.finished_ids:
                by_transport.setdefault(delivery.transport, []).append(delivery)
        for transport, rows in by_transport.items():
            if self.stopped:
                break
            self.send_over(transport, rows)

    def send_over(self, transport: str, rows: list[Delivery]) -> None:
        """Render each row here and hand it to the transport on one of
        ``NOTIFIER_SEND_THREADS`` sender threads (each with its own
        connection), so the next message renders while the previous ones are
        on the wire. Database and journal writes stay on this thread."""
        threads = max(1, settings.NOTIFIER_SEND_THREADS)
        try:
            connections = [transport_connection(transport) for _ in range(min(threads, len(rows)))]
            for conn in connections:
                conn.open()
        except UnknownTransport as exc:
            for delivery in rows:
                self.finish_row(delivery, Outcome(FAILED, error=str(exc)))
            return
        except Exception as exc:  # transport down: nothing was handed over
            error = f"Could not connect to transport {transport!r}: {exc}"
            for delivery in rows:
                self.finish_row(
                    delivery, Outcome(RETRY, error=error, attempts=delivery.attempts + 1)
                )
            return
        rate = settings.NOTIFIER_TRANSPORTS[transport].get("RATE_LIMIT") or 0
        self.free, self.answers, self.in_flight = SimpleQueue(), SimpleQueue(), 0
        for conn in connections:
            self.free.put(conn)
        self.pool = (
            ThreadPoolExecutor(max_workers=len(connections), thread_name_prefix="sender")
            if len(connections) > 1
            else None
        )
        try:
            for delivery in rows:
                self.collect(wait=False)
                self.renew_lease_if_due()
                if self.stopped:
                    return
                verdict = self.verdict_for(delivery)
                if verdict == "cancel":
                    self.finish_row(
                        delivery, Outcome(Delivery.Status.CANCELLED, error="Run cancelled")
                    )
                    continue
                if verdict == "pause":
                    self.held_ids.add(delivery.id)  # released at the end of the batch
                    continue
                with log_context(
                    delivery_id=delivery.id, delivery=str(delivery.uuid), run_id=delivery.run_id
                ):
                    self.hand_over(delivery, transport, rate)
        finally:
            # Every message handed over gets its answer recorded before the
            # batch ends: a row on the wire is never released for a resend.
            # The last answers are journaled as they come (no hand-off follows
            # to carry them), so one slow answer keeps no others in doubt.
            while self.in_flight:
                self.collect(wait=True)
                self.journal_answers()
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None
            for conn in connections:
                try:
                    conn.close()
                except Exception:
                    logger.warning("Error closing %s connection", transport, exc_info=True)

    def hand_over(self, delivery: Delivery, transport: str, rate: float) -> None:
        try:
            message = delivery_build_message(
                delivery, run_context=self.run_contexts.get(delivery.run_id, {})
            )
        except Exception as exc:
            self.finish_row(delivery, Outcome(FAILED, error=f"Could not render: {exc}"))
            return
        rate_limit_wait(transport=transport, per_second=rate)
        while self.free.empty():
            self.collect(wait=True)
        try:
            may_send = journal.journal_handoff(self.token, delivery.id, self.unjournaled)
            self.unjournaled = []
        except Exception:
            logger.exception("Journal unavailable; stopping batch before hand-off")
            may_send = False
        if not may_send:
            self.stopped = True
            return
        conn = self.free.get()
        self.in_flight += 1
        context = contextvars.copy_context()  # the sender thread logs with it
        free, answers = self.free, self.answers

        def transmit() -> None:
            try:
                outcome = context.run(_transmit, conn, message, delivery, transport)
            except BaseException as exc:  # never leave the batch waiting
                outcome = Outcome(UNKNOWN, error=f"Sender thread failed: {exc!r}")
            free.put(conn)
            answers.put((delivery, outcome))

        if self.pool is None:
            transmit()
        else:
            self.pool.submit(transmit)

    def collect(self, *, wait: bool) -> None:
        """Record the answers that came back (waiting for one if ``wait``)."""
        while self.in_flight:
            try:
                delivery, outcome = self.answers.get(block=wait)
            except Empty:
                return
            wait = False
            self.in_flight -= 1
            outcome.attempts = delivery.attempts + 1
            # Journaled with the next hand-off (one round trip per message);
            # if the worker dies first, these rows are the ones left in doubt.
            self.unjournaled.append((delivery.id, outcome.as_journal()))
            self.finish_row(delivery, outcome)

    def journal_answers(self) -> None:
        try:
            journal.journal_record(self.token, self.unjournaled)
            self.unjournaled = []
        except Exception:
            logger.warning("Could not journal answers of %s", self.token, exc_info=True)

    def finish(self) -> None:
        # If either write fails, the rows stay ``sending`` under this claim and
        # the journal stays open: the sweeper recovers them from it later.
        self.flush()
        self.release_unfinished()
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
