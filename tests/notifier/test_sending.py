"""The batch sender in-process, against the fake ESP / SMTP sink, real PG + Redis."""

import importlib
import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from notifier import send
from notifier.models import Delivery, DeliveryGroup, Recipient, Suppression, Template
from notifier.sending import deliveries_send_batch, journal
from notifier.sending.outcomes import FAILED, Outcome
from notifier.services.retries import deliveries_recover_expired
from notifier.services.suppressions import suppression_add
from tests.notifier.factories import DeliveryFactory, RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db


def _queue(n=1, **kwargs):
    template = kwargs.pop("template", None) or TemplateFactory()
    return [
        send(template=template, to=f"user{i}@example.com", context={"code": i}, **kwargs)
        for i in range(n)
    ]


def test_sent_with_rendered_content_message_id_and_esp_id(fake_esp):
    (delivery,) = _queue(1)
    counts = deliveries_send_batch(delivery_ids=[delivery.id])
    assert counts == {"sent": 1}
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.attempts == 1
    (message,) = fake_esp.messages
    assert delivery.esp_message_id == message["MessageID"]
    assert message["To"] == "user0@example.com"
    assert message["Subject"] == "Hello"  # no name given: empty first name, trimmed
    assert "your code is <b>0</b>" in message["HtmlBody"]
    assert "your code is **0**" in message["TextBody"]
    assert message["Headers"]["Message-ID"] == delivery.message_id
    assert message["Metadata"] == {"delivery": str(delivery.uuid)}


def test_running_the_same_batch_twice_sends_once(fake_esp):
    deliveries = _queue(3)
    ids = [d.id for d in deliveries]
    deliveries_send_batch(delivery_ids=ids)
    assert deliveries_send_batch(delivery_ids=ids) == {}
    assert len(fake_esp.messages) == 3


def test_transient_error_goes_back_to_pending_with_backoff(fake_esp, settings):
    settings.NOTIFIER_BACKOFF_BASE = 60
    fake_esp.faults["script"] = [{"status": 503}]
    (delivery,) = _queue(1)
    before = timezone.now()
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.attempts == 1
    assert "503" in delivery.last_error
    # 60 s base with +/-50% jitter
    assert (
        before + timedelta(seconds=29) < delivery.next_attempt_at < before + timedelta(seconds=91)
    )
    assert delivery.dispatched_at is None


def test_429_honours_retry_after(fake_esp, settings):
    settings.NOTIFIER_BACKOFF_BASE = 1
    fake_esp.faults["script"] = [{"status": 429, "retry_after": 120}]
    (delivery,) = _queue(1)
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.next_attempt_at >= timezone.now() + timedelta(seconds=110)


def test_not_claimed_before_its_next_attempt(fake_esp):
    (delivery,) = _queue(1)
    Delivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    assert deliveries_send_batch(delivery_ids=[delivery.id]) == {}
    assert fake_esp.messages == []


def test_attempts_exhausted_fails_with_the_reason(fake_esp, settings):
    settings.NOTIFIER_MAX_ATTEMPTS = 2
    fake_esp.faults["script"] = [{"status": 500}, {"status": 502}]
    (delivery,) = _queue(1)
    deliveries_send_batch(delivery_ids=[delivery.id])
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.attempts == 2
    assert "Gave up after 2 attempts" in delivery.status_reason
    assert delivery.failure_kind == Delivery.FailureKind.TRANSIENT_EXHAUSTED
    assert "502" in delivery.last_error


def test_an_inactive_recipient_fails_at_once_and_is_suppressed_like_a_hard_bounce(fake_esp):
    """Postmark's 406 "inactive recipient": the address hard-bounced or
    complained before; nothing more is sent to it, from this batch or later."""
    fake_esp.faults["reject"] = ["user0@example.com"]
    delivery, later = _queue(2)
    Delivery.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.status_reason == "Permanent error: sending again would fail the same way."
    assert delivery.failure_kind == Delivery.FailureKind.PERMANENT
    assert delivery.last_error == (
        "The ESP refused to send to user0@example.com: it marks the address inactive after an "
        "earlier hard bounce or spam complaint. The address is now suppressed."
    )
    assert fake_esp.messages == []
    (suppression,) = Suppression.objects.filter(email="user0@example.com", lifted_at=None)
    assert suppression.reason == Suppression.Reason.HARD_BOUNCE
    assert str(delivery.uuid) in suppression.note
    assert Recipient.objects.get(email="user0@example.com").status == Recipient.Status.BOUNCED
    # Another message to the same address is suppressed, not sent.
    assert send(template=delivery.template, to="user0@example.com").status == "suppressed"


def test_an_invalid_address_fails_with_a_sentence_and_is_not_suppressed(fake_esp):
    fake_esp.faults["invalid"] = ["user0@example.com"]
    (delivery,) = _queue(1)
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.last_error == "The ESP refused user0@example.com as an invalid address."
    assert not Suppression.objects.filter(email="user0@example.com").exists()


def test_an_inactive_recipient_answer_found_in_the_journal_suppresses_too(fake_esp):
    """A worker died after the ESP's 406 answer was journaled: the sweeper
    applies it, suppression included."""
    (delivery,) = _queue(1)
    token = uuid.uuid4()
    Delivery.objects.filter(pk=delivery.pk).update(
        status="sending", claim_token=token, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    outcome = Outcome(
        FAILED, error="The ESP refused to send to user0@example.com.", suppress="hard_bounce"
    )
    journal.journal_handoff(token, [delivery.id], [])
    journal.journal_record(token, [(delivery.id, outcome.as_journal())])
    deliveries_recover_expired()
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert Suppression.objects.filter(email="user0@example.com", reason="hard_bounce").exists()


def test_a_message_that_cannot_render_fails_as_a_render_failure(fake_esp):
    (delivery,) = _queue(1)
    Template.objects.filter(pk=delivery.template_id).update(html_body="{{ code|no_such_filter }}")
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.failure_kind == Delivery.FailureKind.RENDER
    assert delivery.last_error.startswith("Could not render")
    assert fake_esp.messages == []


def test_failure_kind_is_derived_from_the_old_texts_by_the_migration():
    from django.apps import apps

    migration = importlib.import_module("notifier.migrations.0007_delivery_failure_kind")
    gave_up, rejected, broken = _queue(3)
    Delivery.objects.filter(pk=gave_up.pk).update(
        status="failed", status_reason="Gave up after 6 attempts"
    )
    Delivery.objects.filter(pk=rejected.pk).update(
        status="failed", status_reason="Permanent error", last_error="ESP rejected the address"
    )
    Delivery.objects.filter(pk=broken.pk).update(
        status="failed", status_reason="Permanent error", last_error="Could not render: x"
    )
    migration.derive_failure_kind(apps, None)
    kinds = dict(Delivery.objects.values_list("pk", "failure_kind"))
    assert kinds == {
        gave_up.pk: "transient_exhausted",
        rejected.pk: "permanent",
        broken.pk: "render",
    }


def test_read_timeout_after_acceptance_is_marked_unknown_not_retried(fake_esp):
    fake_esp.faults["script"] = [{"hang_after_accept": 3}]
    (delivery,) = _queue(1)
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.UNKNOWN
    assert "No answer from the ESP" in delivery.last_error
    assert len(fake_esp.messages) == 1  # it did arrive: resending would duplicate


def test_connection_refused_is_transient(fake_esp, settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": "http://127.0.0.1:9/"}
    (delivery,) = _queue(1)
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.attempts == 1


def test_address_suppressed_after_queueing_is_not_sent(fake_esp):
    (delivery,) = _queue(1)
    suppression_add(email="user0@example.com", reason="complaint")
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUPPRESSED
    assert fake_esp.messages == []


def test_smtp_transport_sends_raw_message_with_message_id(smtp_sink):
    (delivery,) = _queue(1, transport="smtp")
    assert deliveries_send_batch(delivery_ids=[delivery.id]) == {"sent": 1}
    delivery.refresh_from_db()
    (received,) = smtp_sink.messages
    assert received["rcpt_tos"] == ["user0@example.com"]
    assert received["message"]["Message-ID"] == delivery.message_id
    assert delivery.esp_message_id == delivery.message_id


def test_smtp_5xx_is_permanent_and_4xx_transient(smtp_sink):
    smtp_sink.reject["user0@example.com"] = (550, "No such user")
    smtp_sink.reject["user1@example.com"] = (451, "Try later")
    first, second = _queue(2, transport="smtp")
    deliveries_send_batch(delivery_ids=[first.id, second.id])
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Delivery.Status.FAILED and "550" in first.last_error
    assert second.status == Delivery.Status.PENDING and "451" in second.last_error


def test_batch_of_500_uses_a_bounded_number_of_queries(fake_esp, django_assert_max_num_queries):
    template = TemplateFactory()
    recipients = RecipientFactory.create_batch(500)
    now = timezone.now()
    Delivery.objects.bulk_create(
        [
            Delivery(recipient=r, template=template, context={"code": r.pk}, next_attempt_at=now)
            for r in recipients
        ]
    )
    ids = list(Delivery.objects.values_list("id", flat=True))
    # claim + load + suppressions + one bulk write per 100 outcomes (or 2 s,
    # more on a loaded machine) + one hand-off mark per
    # NOTIFIER_HANDOFF_MARK_AHEAD (50) messages + slack
    with django_assert_max_num_queries(30):
        counts = deliveries_send_batch(delivery_ids=ids)
    assert counts == {"sent": 500}
    assert len(fake_esp.messages) == 500
    assert Delivery.objects.filter(status="sent").count() == 500


def _claim_by_dead_worker(deliveries, journal_entries):
    """Simulate a worker that claimed rows, journaled, then died."""
    token = "00000000-0000-0000-0000-00000000dead"
    journal.journal_open(token)
    for delivery_id, value in journal_entries.items():
        if value == "h":
            journal.journal_handoff(token, [delivery_id])
        else:
            journal.journal_record(token, [(delivery_id, value)])
    Delivery.objects.filter(id__in=[d.id for d in deliveries]).update(
        status="sending", claim_token=token, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    return token


def test_recovery_uses_the_journal(fake_esp):
    sent, handed, untouched = _queue(3)
    token = _claim_by_dead_worker(
        [sent, handed, untouched],
        {
            sent.id: {"status": "sent", "esp_message_id": "esp-1", "attempts": 1},
            handed.id: "h",
        },
    )
    counts = deliveries_recover_expired()
    assert counts == {"sent": 1, "unknown": 1, "pending": 1}
    for d in (sent, handed, untouched):
        d.refresh_from_db()
    assert (sent.status, sent.esp_message_id) == ("sent", "esp-1")
    assert handed.status == "unknown" and handed.attempts == 1
    assert untouched.status == "pending" and untouched.claim_token is None
    # A worker that was only slow can no longer hand anything over.
    assert journal.journal_handoff(token, [untouched.id]) is False


def test_recovery_with_lost_journal_marks_rows_marked_as_leaving_in_doubt(fake_esp):
    marked, unmarked = _queue(2)
    token = _claim_by_dead_worker([marked, unmarked], {})
    Delivery.objects.filter(pk=marked.pk).update(handoff_token=token)  # see test_handoff
    journal.journal_close(token)  # as if Redis lost its data
    assert deliveries_recover_expired() == {"unknown": 1, "pending": 1}
    marked.refresh_from_db()
    assert marked.status == "unknown"
    assert "journal was lost" in marked.last_error


def test_lease_not_expired_is_left_alone(fake_esp):
    (delivery,) = _queue(1)
    Delivery.objects.filter(pk=delivery.pk).update(
        status="sending",
        claim_token="00000000-0000-0000-0000-000000000001",
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )
    assert deliveries_recover_expired() == {}


def test_outcome_write_keeps_a_status_a_webhook_already_advanced(fake_esp):
    from notifier.sending.outcomes import SENT, Outcome, apply_outcome
    from notifier.sending.persist import deliveries_write

    (delivery,) = _queue(1)
    token = "00000000-0000-0000-0000-0000000000aa"
    Delivery.objects.filter(pk=delivery.pk).update(status="sending", claim_token=token)
    # The ESP's "Delivery" webhook arrives before the batch's bulk write.
    Delivery.objects.filter(pk=delivery.pk).update(status="delivered")
    delivery.refresh_from_db()
    apply_outcome(delivery, Outcome(SENT, esp_message_id="esp-9", attempts=1), now=timezone.now())
    assert deliveries_write([delivery], claim_token=token) == 1
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert delivery.esp_message_id == "esp-9"


def test_outcome_write_stores_every_field_exactly(fake_esp):
    """Times to the microsecond (whatever their offset), a claim token, text
    with quotes, backslashes and non-ASCII, nulls: read back as written."""
    import uuid
    from datetime import timezone as dt_timezone

    from notifier.sending.persist import OUTCOME_FIELDS, deliveries_write

    rows = _queue(2)
    token = uuid.uuid4()
    Delivery.objects.filter(pk__in=[r.pk for r in rows]).update(status="sending", claim_token=token)
    moment = datetime(2026, 11, 30, 21, 5, 7, 123456, tzinfo=dt_timezone(timedelta(hours=-5)))
    first, second = rows
    first.status, first.attempts, first.claim_token = "retry", 3, token
    first.next_attempt_at, first.lease_expires_at = moment, moment + timedelta(microseconds=1)
    first.status_reason = 'He said "no" \\ l\'école — 550 5.1.1 {x}'
    first.last_error, first.esp_message_id = "line 1\nline 2\ttab", "ésp-1"
    first.failure_kind, first.dispatched_at, first.sent_at = "", None, None
    first.updated_at = moment
    second.status, second.attempts, second.claim_token = "sent", 1, None
    second.next_attempt_at = second.lease_expires_at = second.dispatched_at = None
    second.sent_at = second.updated_at = timezone.now()
    second.status_reason = second.last_error = ""
    second.esp_message_id, second.failure_kind = "m-2", ""

    assert deliveries_write(rows, claim_token=token) == 2
    for row in rows:
        stored = Delivery.objects.get(pk=row.pk)
        for field in OUTCOME_FIELDS:
            assert getattr(stored, field) == getattr(row, field), field


def test_stored_message_over_the_render_limits_fails_with_the_reason(fake_esp, settings):
    (fine,) = _queue(1)
    (runaway,) = _queue(1, template=TemplateFactory(html_body="{{ code }}"))
    # Stored before the limit was lowered: the batch must fail it, not hang or crash.
    settings.NOTIFIER_RENDER_MAX_WIDTH = 10
    runaway.template.html_body = '{{ code|ljust:"100000000" }}'
    runaway.template.save()

    counts = deliveries_send_batch(delivery_ids=[runaway.id, fine.id])

    assert counts == {"failed": 1, "sent": 1}
    runaway.refresh_from_db()
    assert runaway.status == Delivery.Status.FAILED
    assert "NOTIFIER_RENDER_MAX_WIDTH" in runaway.last_error
    assert len(fake_esp.messages) == 1


@pytest.mark.parametrize(
    ("state", "status", "held"),
    [("paused", "pending", True), ("cancelled", "cancelled", False), ("active", "sent", False)],
)
def test_a_batch_reads_its_group_state_from_the_delivery_group_table(fake_esp, state, status, held):
    """A group paused or cancelled after its rows were made due (a pause that
    lands while a batch runs): the batch reads DeliveryGroup, nothing else."""
    group = DeliveryGroup.objects.create(owner="test", context={"code": "G1"})
    rows = [DeliveryFactory(run=group, context={}) for _ in range(2)]
    DeliveryGroup.objects.filter(pk=group.pk).update(state=state)
    deliveries_send_batch(delivery_ids=[d.id for d in rows])
    for delivery in rows:
        delivery.refresh_from_db()
        assert delivery.status == status
        assert (delivery.next_attempt_at is None) == held
    if state == "active":  # rendered with the group's shared context
        assert all("G1" in m["HtmlBody"] for m in fake_esp.messages)
    else:
        assert fake_esp.messages == []
