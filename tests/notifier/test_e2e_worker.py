"""End to end: send() -> Redis -> a real Celery worker process -> fake ESP -> PG.

These tests commit (``transaction=True``) so the worker process sees the rows.
"""

import time

import pytest
from django.utils import timezone

from notifier import send
from notifier.models import Delivery
from notifier.services.suppressions import suppression_add
from notifier.tasks import send_deliveries, sweep
from tests.conftest import wait_for
from tests.notifier.factories import TemplateFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _status(delivery):
    delivery.refresh_from_db()
    return delivery.status


def _sweep_until(predicate, timeout=30):
    """Run the sweeper through the worker (as beat would) until predicate holds."""

    def check():
        if predicate():
            return True
        sweep.apply_async(queue="maintenance").get(timeout=10)
        return predicate()

    return wait_for(check, timeout=timeout, interval=0.3)


def test_send_reaches_the_esp_once_and_is_marked_sent(celery_worker_process, fake_esp):
    template = TemplateFactory(subject="Your code {{ code }}")
    delivery = send(
        template=template, to="ann@example.com", name="Ann Smith", context={"code": "4711"}
    )
    wait_for(lambda: _status(delivery) == Delivery.Status.SENT)
    (message,) = fake_esp.messages
    assert message["Subject"] == "Your code 4711"
    assert message["To"] == "Ann Smith <ann@example.com>"
    assert "Hi Ann Smith" in message["HtmlBody"]
    assert delivery.esp_message_id == message["MessageID"]
    assert delivery.attempts == 1 and delivery.sent_at is not None


def test_transient_failure_is_retried_then_sent(celery_worker_process, fake_esp):
    fake_esp.faults["script"] = [{"status": 503}, {"status": 429, "retry_after": 0}]
    delivery = send(subject="s", text="hello", to="bob@example.com")
    wait_for(lambda: delivery.refresh_from_db() or delivery.attempts == 1)
    _sweep_until(lambda: _status(delivery) == Delivery.Status.SENT)
    assert delivery.attempts == 3
    assert len(fake_esp.messages) == 1
    assert fake_esp.requests == 3


def test_permanent_failure_ends_failed_with_the_reason(celery_worker_process, fake_esp):
    fake_esp.faults["reject"] = ["carol@example.com"]
    delivery = send(subject="s", text="hello", to="carol@example.com")
    wait_for(lambda: _status(delivery) == Delivery.Status.FAILED)
    assert delivery.last_error.startswith("The ESP refused to send to carol@example.com")
    assert delivery.attempts == 1
    assert fake_esp.messages == []


def test_repeated_idempotency_key_sends_once(celery_worker_process, fake_esp):
    first = send(subject="s", text="t", to="dan@example.com", idempotency_key="order-42")
    second = send(subject="s", text="t", to="dan@example.com", idempotency_key="order-42")
    assert first.pk == second.pk
    wait_for(lambda: _status(first) == Delivery.Status.SENT)
    time.sleep(0.5)
    assert len(fake_esp.messages) == 1


def test_suppressed_address_is_never_sent_to(celery_worker_process, fake_esp):
    suppression_add(email="erin@example.com", reason="unsubscribed")
    delivery = send(subject="s", text="t", to="erin@example.com")
    assert delivery.status == Delivery.Status.SUPPRESSED
    # Even if a task for it is published, the worker will not send it.
    send_deliveries.apply_async(args=[[delivery.id]], queue="transactional").get(timeout=10)
    assert fake_esp.messages == []
    assert _status(delivery) == Delivery.Status.SUPPRESSED


def test_smtp_transport_end_to_end(celery_worker_process, smtp_sink):
    delivery = send(
        subject="Hi {{ n }}",
        text="n={{ n }}",
        to="fay@example.com",
        context={"n": 7},
        transport="smtp",
    )
    wait_for(lambda: _status(delivery) == Delivery.Status.SENT)
    (received,) = smtp_sink.messages
    assert received["message"]["Subject"] == "Hi 7"
    assert received["message"]["Message-ID"] == delivery.message_id


def _kill_mid_batch(
    start_worker, fake_esp, *, threads: int, arrived: int, batch_size: int = 1, hang_at: int = 4
) -> tuple[list, dict]:
    """Send 12 messages (``batch_size`` per request; without batch requests
    no more handed over ahead of their answers than ``threads``, so each is
    on the wire as soon as it is handed over); the ESP accepts request
    ``hang_at`` and never answers; SIGKILL the worker once ``arrived``
    messages reached the ESP, let the lease expire and a second worker
    recover. Returns (ids, rows by status)."""
    template = TemplateFactory()
    later = timezone.now() + timezone.timedelta(days=1)
    deliveries = [
        send(template=template, to=f"k{i}@example.com", context={"code": i}, send_at=later)
        for i in range(12)
    ]
    ids = [d.id for d in deliveries]
    Delivery.objects.filter(id__in=ids).update(next_attempt_at=timezone.now())
    fake_esp.faults["script"] = [{}] * (hang_at - 1) + [{"hang_after_accept": 30}]
    doomed = start_worker(
        "doomed",
        queues="kill-test",
        NOTIFIER_LEASE_SECONDS=3,
        ESP_READ_TIMEOUT=60,
        NOTIFIER_SEND_THREADS=threads,
        NOTIFIER_SEND_AHEAD=threads,
        ESP_BATCH_SIZE=batch_size,
    )
    send_deliveries.apply_async(args=[ids], queue="kill-test")
    wait_for(lambda: len(fake_esp.messages) == arrived, timeout=30)
    time.sleep(0.5)
    doomed.kill()

    # On failure, say what each row and the ESP saw (a rare failure under
    # load left no row in `sending`: which state they were in is the clue).
    rows = list(
        Delivery.objects.filter(id__in=ids).order_by("id").values_list("status", "last_error")
    )
    seen = (rows, fake_esp.requests, [m["To"] for m in fake_esp.messages])
    assert sum(status == "sending" for status, _ in rows) >= 12 - arrived + 1, seen
    time.sleep(3.5)  # the lease expires
    start_worker("rescuer", queues="transactional,maintenance")
    _sweep_until(
        lambda: not Delivery.objects.filter(id__in=ids, status__in=["sending", "pending"]).exists()
    )
    by_status = {}
    for d in Delivery.objects.filter(id__in=ids).order_by("id"):
        by_status.setdefault(d.status, []).append(d)
    # Exactly one message per recipient reached the ESP: none lost, none twice.
    received = sorted(m["To"] for m in fake_esp.messages)
    assert received == sorted(f"k{i}@example.com" for i in range(12))
    return ids, by_status


def test_killed_worker_loses_nothing_and_resends_nothing(start_worker, fake_esp):
    """One message on the wire at a time: killed while waiting for the 4th
    answer, the 3 answered ones are not sent again, the 4th is in doubt and
    the 8 never handed over are sent by the worker that recovers the claim."""
    ids, by_status = _kill_mid_batch(start_worker, fake_esp, threads=1, arrived=4)
    assert len(by_status["sent"]) == 11
    (in_doubt,) = by_status["unknown"]
    assert in_doubt.id == ids[3]
    assert "before the answer was recorded" in in_doubt.last_error


def test_killed_worker_with_sender_threads_leaves_only_the_unanswered_in_doubt(
    start_worker, fake_esp
):
    """Four messages on the wire at once: the others go on while one answer
    hangs, and their answers are journaled as they come, so when the worker
    is killed only the unanswered message is in doubt."""
    _, by_status = _kill_mid_batch(start_worker, fake_esp, threads=4, arrived=12)
    assert len(by_status["sent"]) == 11
    (in_doubt,) = by_status["unknown"]
    assert "before the answer was recorded" in in_doubt.last_error


def test_killed_worker_with_batch_requests_leaves_at_most_one_request_in_doubt(
    start_worker, fake_esp
):
    """Requests of 5 (5, 5, 2): the first is answered, the second accepted
    and never answered when the worker dies. Its 5 rows (one request, at
    most the batch size) are in doubt; the answered 5 are not sent again and
    the 2 never handed over are sent by the worker that recovers the claim."""
    ids, by_status = _kill_mid_batch(
        start_worker, fake_esp, threads=4, arrived=10, batch_size=5, hang_at=2
    )
    assert len(by_status["sent"]) == 7
    assert [d.id for d in by_status["unknown"]] == ids[5:10]
    assert all("before the answer was recorded" in d.last_error for d in by_status["unknown"])
    assert fake_esp.requests == 3
