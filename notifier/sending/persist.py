"""Writing outcomes to the database in bulk, on PostgreSQL and SQLite.

A batch applies outcomes in memory and writes them every ``FLUSH_EVERY``
rows (or ``FLUSH_SECONDS``) with one ``UPDATE ... FROM`` per 500 rows (the
rows as one JSON document on PostgreSQL, a VALUES list on SQLite); the
sweeper writes recovered claims the same way. A dropped database
connection is retried once (``with_reconnect``): every write here is safe to
repeat.
"""

import json
import logging
import time
from datetime import datetime

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from notifier.models import Delivery, Recipient
from notifier.sending import journal
from notifier.sending.outcomes import Outcome, apply_outcome
from notifier.services.suppressions import suppression_add
from notifier.services.webhooks import (
    recipient_event_data,
    webhook_events_record,
    webhook_listeners_exist,
)

logger = logging.getLogger(__name__)

FLUSH_EVERY = 100
FLUSH_SECONDS = 2.0

OUTCOME_FIELDS = [
    "status",
    "status_reason",
    "failure_kind",
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

    def write_rows() -> int:
        return sum(
            _update_from_values(rows[i : i + 500], claim_token) for i in range(0, len(rows), 500)
        )

    def write() -> int:
        sent = [row for row in rows if row.status == Delivery.Status.SENT]
        if not sent or not webhook_listeners_exist(event_type="sent"):
            return write_rows()
        # The "sent" webhook calls commit with the outcome (one event key per
        # Delivery, so a repeated write queues nothing twice).
        with transaction.atomic():
            written = write_rows()
            deliveries_sent_webhooks(sent)
        return written

    return with_reconnect(write)


def deliveries_sent_webhooks(rows: list[Delivery]) -> None:
    recipients = Recipient.objects.in_bulk({row.recipient_id for row in rows})
    events = []
    for row in rows:
        recipient = recipients.get(row.recipient_id)
        data = {
            "delivery": str(row.uuid),
            "message_id": row.esp_message_id,
            "kind": row.kind,
            "group": row.run_id,
            "recipient": recipient_event_data(recipient) if recipient else None,
            "sent_at": row.sent_at,
        }
        events.append((f"sent:{row.uuid}", data, row.recipient_id))
    webhook_events_record(event_type="sent", events=events)


_PG_TYPES = {
    "status": "varchar",
    "status_reason": "varchar",
    "failure_kind": "varchar",
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


# PostgreSQL: the rows as one JSON document, one parameter (dumped at C
# speed; a statement of a parameter per value costs more to build than to run).
_PG_OUTCOMES_SQL = (
    "jsonb_to_recordset(%s::jsonb) AS v(id bigint, "
    + ", ".join(f"{f} {_PG_TYPES[f]}" for f in OUTCOME_FIELDS)
    + ")"
)


def _json_value(value) -> str:
    """A datetime (to the microsecond, with its offset) or UUID in JSON."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _outcome_values_sql(n_rows: int) -> str:
    """The FROM source ``v(id, <OUTCOME_FIELDS>)`` of the outcome write.
    PostgreSQL: one JSON document of the rows (``_outcome_params``). SQLite:
    n rows of parameters; it names a VALUES list's columns column1,
    column2... and takes no column list in an alias, so they are renamed in
    a SELECT."""
    if connection.vendor == "postgresql":
        return _PG_OUTCOMES_SQL
    row = "(" + ", ".join(["%s"] * (len(OUTCOME_FIELDS) + 1)) + ")"
    names = ", ".join(f"column{i + 1} AS {name}" for i, name in enumerate(["id", *OUTCOME_FIELDS]))
    return f"(SELECT {names} FROM (VALUES {', '.join([row] * n_rows)})) AS v"


def _outcome_params(rows: list[Delivery]) -> list:
    if connection.vendor == "postgresql":
        document = [{"id": row.pk, **{f: getattr(row, f) for f in OUTCOME_FIELDS}} for row in rows]
        return [json.dumps(document, default=_json_value)]
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
    """One ``UPDATE ... FROM`` the rows' values on either database: Django's
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


def outcomes_suppress(rows: list[tuple[Delivery, Outcome]]) -> None:
    """Suppress the addresses whose answer said no mail can reach them (an
    ESP's inactive recipient), after their rows are written, like a hard
    bounce reported by webhook: pending mail to them stops at once."""
    for delivery, outcome in rows:
        if outcome.suppress:
            suppression_add(
                email=delivery.recipient.email,
                reason=outcome.suppress,
                note=f"The ESP refused delivery {delivery.uuid}: {outcome.error}",
            )


class OutcomeLog:
    """The outcomes of one claim: applied in memory, written in bulk, and
    journaled with the next hand-off (one Redis round trip per request)."""

    def __init__(self, token):
        self.token = token
        self.done: list[Delivery] = []  # outcome applied, not yet written
        self.to_suppress: list[tuple[Delivery, Outcome]] = []  # once written
        self.finished_ids: set[int] = set()
        self.unjournaled: list[tuple[int, dict]] = []  # answers not yet journaled
        self.counts: dict[str, int] = {}
        self.last_flush = time.monotonic()

    def finish_row(self, delivery: Delivery, outcome: Outcome) -> None:
        apply_outcome(delivery, outcome, now=timezone.now())
        self.done.append(delivery)
        if outcome.suppress:
            self.to_suppress.append((delivery, outcome))
        self.finished_ids.add(delivery.id)
        self.count(delivery.status)
        if len(self.done) >= FLUSH_EVERY or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def flush(self) -> None:
        if self.done:
            deliveries_write(self.done, claim_token=self.token)
            self.done = []
        if self.to_suppress:
            outcomes_suppress(self.to_suppress)
            self.to_suppress = []
        self.last_flush = time.monotonic()

    def answered(self, delivery: Delivery, outcome: Outcome) -> None:
        """An answer from the transport: journaled with the next hand-off (if
        the worker dies first, these rows are the ones left in doubt)."""
        outcome.attempts = delivery.attempts + 1
        self.unjournaled.append((delivery.id, outcome.as_journal()))
        self.finish_row(delivery, outcome)

    def journal_handoff(self, delivery_ids: list[int]) -> bool:
        """Mark ``delivery_ids`` (one request) handed over, with the answers
        waiting; False if the claim was recovered (or the journal is
        unreachable): stop."""
        try:
            may_send = journal.journal_handoff(self.token, delivery_ids, self.unjournaled)
            self.unjournaled = []
        except Exception:
            logger.exception("Journal unavailable; stopping batch before hand-off")
            may_send = False
        return may_send

    def journal_answers(self) -> None:
        try:
            journal.journal_record(self.token, self.unjournaled)
            self.unjournaled = []
        except Exception:
            logger.warning("Could not journal answers of %s", self.token, exc_info=True)
