"""Failover between transports: a transport failing for the configured time
is marked down for every worker (Redis), untried rows move to the next
transport that is up, a row handed over once never moves, a probe brings the
transport back; staff and operators see every state and change."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.sending.failover import (
    fallback_chain,
    transport_failed,
    transport_ok,
    transport_states,
    transports_probe,
)
from tests.notifier.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def esp_falls_back_to_smtp(settings, smtp_sink):
    transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
    transports["esp"]["FALLBACK"] = ["smtp"]
    settings.NOTIFIER_TRANSPORTS = transports
    settings.NOTIFIER_SEND_THREADS = 1  # each answer is read before the next hand-off
    settings.NOTIFIER_SEND_AHEAD = 1
    return smtp_sink


def _rows(n: int, **fields) -> list[Delivery]:
    return [
        DeliveryFactory(recipient=RecipientFactory(email=f"f{i}@example.com"), **fields)
        for i in range(n)
    ]


def test_a_transport_failing_for_the_configured_time_goes_down_for_everyone(settings, caplog):
    settings.NOTIFIER_FAILOVER_AFTER = 10
    caplog.set_level(logging.INFO, logger="notifier.sending.failover")
    assert transport_failed("esp", "HTTP 503", now=1000) is False
    assert transport_failed("esp", "HTTP 503", now=1005) is False
    assert transport_states()["esp"].up
    assert transport_failed("esp", "Connection refused", now=1011) is True
    state = transport_states()["esp"]
    assert not state.up and state.reason == "Connection refused"
    assert state.since.timestamp() == 1011 and state.changes == 1
    assert "Transport esp is DOWN" in caplog.text
    assert transport_failed("esp", "again", now=1012) is False  # one change, one log line

    assert transport_ok("esp", "It answered a message again.", now=1020) is True
    state = transport_states()["esp"]
    assert state.up and state.changes == 2 and state.failing_since is None
    assert "Transport esp is UP again" in caplog.text


def test_a_good_answer_or_a_long_quiet_gap_ends_a_failing_streak(settings):
    settings.NOTIFIER_FAILOVER_AFTER = 10
    transport_failed("esp", "503", now=1000)
    transport_ok("esp", "answered", now=1004)
    assert transport_failed("esp", "503", now=1012) is False  # a new streak
    assert transport_failed("esp", "503", now=1040) is False  # 28 s quiet: new streak again
    assert transport_failed("esp", "503", now=1050) is True


def test_the_chain_is_the_fallback_list_or_the_priority_order(settings):
    transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
    assert fallback_chain("esp") == ()  # neither: never fails over
    transports["esp"]["PRIORITY"], transports["smtp"]["PRIORITY"] = 1, 2
    settings.NOTIFIER_TRANSPORTS = transports
    assert fallback_chain("esp") == ("smtp",)
    assert fallback_chain("smtp") == ()  # nothing after the last
    transports["smtp"]["FALLBACK"] = ["esp"]
    assert fallback_chain("smtp") == ("esp",)


def test_untried_rows_move_and_a_handed_over_row_never_does(
    fake_esp, esp_falls_back_to_smtp, settings
):
    settings.NOTIFIER_FAILOVER_AFTER = 0
    transport_failed("esp", "Connection refused")
    untried, other = _rows(2)
    tried = DeliveryFactory(recipient=RecipientFactory(email="tried@example.com"), attempts=1)

    counts = deliveries_send_batch(delivery_ids=[untried.pk, other.pk, tried.pk])
    assert counts == {"moved": 2, "pending": 1}
    for row in (untried, other, tried):
        row.refresh_from_db()
    assert (untried.transport, untried.status, untried.attempts) == ("smtp", "pending", 0)
    assert untried.status_reason.startswith("Moved from 'esp' to 'smtp': 'esp' is down since")
    assert "Connection refused" in untried.status_reason
    assert untried.claim_token is None and untried.next_attempt_at <= timezone.now()
    # Handed over once: it stays on its transport and waits, not as an attempt.
    assert (tried.transport, tried.status, tried.attempts) == ("esp", "pending", 1)
    assert tried.next_attempt_at > timezone.now()
    assert "never moves to another transport" in tried.status_reason

    assert deliveries_send_batch(delivery_ids=[untried.pk, other.pk]) == {"sent": 2}
    assert len(esp_falls_back_to_smtp.messages) == 2
    assert fake_esp.messages == []


def test_an_esp_refusing_connections_goes_down_and_comes_back_after_a_probe(
    fake_esp, esp_falls_back_to_smtp, settings
):
    settings.NOTIFIER_FAILOVER_AFTER = 0
    # One message per request: the first request is refused, the rest untried.
    esp = settings.NOTIFIER_TRANSPORTS["esp"]
    settings.NOTIFIER_TRANSPORTS = {**settings.NOTIFIER_TRANSPORTS, "esp": {**esp, "BATCH_SIZE": 1}}
    working = settings.ANYMAIL
    settings.ANYMAIL = {**working, "POSTMARK_API_URL": "http://127.0.0.1:9/"}
    first, *rest = _rows(3)

    # The first hand-off is refused: the ESP is down, the batch stops there.
    assert deliveries_send_batch(delivery_ids=[first.pk, *(r.pk for r in rest)]) == {
        "pending": 1,
        "released": 2,
    }
    assert not transport_states()["esp"].up
    # The next batch moves the two that were never tried; the refused one stays.
    assert deliveries_send_batch(delivery_ids=[r.pk for r in rest]) == {"moved": 2}
    assert deliveries_send_batch(delivery_ids=[r.pk for r in rest]) == {"sent": 2}
    first.refresh_from_db()
    assert (first.transport, first.attempts) == ("esp", 1)

    assert transports_probe() == {"esp": "down"}  # still refused
    assert "ConnectionError" in transport_states()["esp"].probe_error
    settings.ANYMAIL = working
    assert transports_probe() == {"esp": "up"}
    assert transport_states()["esp"].up

    Delivery.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    assert deliveries_send_batch(delivery_ids=[first.pk]) == {"sent": 1}
    assert len(fake_esp.messages) == 1 and len(esp_falls_back_to_smtp.messages) == 2


def test_5xx_answers_for_the_configured_time_mark_the_esp_down(fake_esp, settings):
    settings.NOTIFIER_FAILOVER_AFTER = 0
    fake_esp.faults.update(error_rate=1.0, error_status=503)
    (row,) = _rows(1)
    assert deliveries_send_batch(delivery_ids=[row.pk]) == {"pending": 1}
    state = transport_states()["esp"]
    assert not state.up and "503" in state.reason
    # No fallback configured: its rows wait for it, not counted as attempts.
    (waiting,) = _rows(1, transport="esp")
    Delivery.objects.filter(pk=waiting.pk).update(recipient=RecipientFactory(email="w@example.com"))
    assert deliveries_send_batch(delivery_ids=[waiting.pk]) == {"pending": 1}
    waiting.refresh_from_db()
    assert waiting.attempts == 0 and "no other transport is up" in waiting.status_reason


def test_a_good_answer_brings_a_failing_transport_back(fake_esp, settings):
    settings.NOTIFIER_FAILOVER_AFTER = 60
    transport_failed("esp", "HTTP 503")
    assert transport_states()["esp"].failing_since is not None
    assert deliveries_send_batch(delivery_ids=[r.pk for r in _rows(1)]) == {"sent": 1}
    assert transport_states()["esp"].failing_since is None


def test_staff_see_each_transports_state_and_why(admin_client, settings):
    settings.NOTIFIER_FAILOVER_AFTER = 0
    transport_failed("esp", "Connection refused by 10.0.0.1")
    page = admin_client.get("/admin/").content.decode()
    block = page.split('id="dash-transports"')[1].split("</div>")[0]
    assert "Down" in block and "Connection refused by 10.0.0.1" in block
    assert "smtp" in block and "Up" in block


def test_operators_get_a_metric_per_transport(client, settings):
    settings.NOTIFIER_FAILOVER_AFTER = 0
    transport_failed("esp", "refused")
    served = client.get("/metrics").content.decode()
    assert 'notifier_transport_up{transport="esp"} 0.0' in served
    assert 'notifier_transport_up{transport="smtp"} 1.0' in served
    assert 'notifier_transport_state_changes_total{transport="esp"} 1.0' in served


def test_rows_waiting_for_a_down_transport_are_due_at_the_next_probe(fake_esp, settings):
    settings.NOTIFIER_FAILOVER_AFTER = 0
    settings.NOTIFIER_FAILOVER_PROBE_SECONDS = 30
    transport_failed("esp", "refused")
    (row,) = _rows(1)
    deliveries_send_batch(delivery_ids=[row.pk])
    row.refresh_from_db()
    assert timezone.now() + timedelta(seconds=20) < row.next_attempt_at
    assert row.next_attempt_at < timezone.now() + timedelta(seconds=31)


def test_a_failed_batch_request_records_its_fault_once(fake_esp, settings, monkeypatch):
    from notifier.sending import failover

    transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
    transports["esp"]["BATCH_SIZE"] = 5
    settings.NOTIFIER_TRANSPORTS = transports
    settings.NOTIFIER_FAILOVER_AFTER = 60
    calls = []
    real = failover.transport_failed
    monkeypatch.setattr(
        failover, "transport_failed", lambda name, why: calls.append(name) or real(name, why)
    )
    fake_esp.faults["script"] = [{"status": 503}]
    rows = _rows(5)
    assert deliveries_send_batch(delivery_ids=[r.pk for r in rows]) == {"pending": 5}
    assert calls == ["esp"]  # one request failed: one Redis call, not one per row
    assert transport_states()["esp"].failing_since is not None
