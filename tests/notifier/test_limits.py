"""Provider limits: a daily quota and a warm-up ramp per transport, a rate per
recipient domain; shared in Redis; rows over a limit wait in the database."""

from datetime import UTC, datetime, time, timedelta
from email.utils import parseaddr

import pytest
from django.utils import timezone

from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.sending.limits import daily_cap
from tests.notifier.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def esp_limits(settings):
    def configure(**limits):
        transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
        transports["esp"].update(limits)
        settings.NOTIFIER_TRANSPORTS = transports

    return configure


def _rows(*emails: str) -> list[Delivery]:
    return [DeliveryFactory(recipient=RecipientFactory(email=email)) for email in emails]


def test_a_daily_quota_holds_the_rest_in_the_database_until_midnight(fake_esp, esp_limits):
    esp_limits(DAILY_QUOTA=3)
    rows = _rows(*(f"q{i}@example.com" for i in range(5)))

    assert deliveries_send_batch(delivery_ids=[d.pk for d in rows]) == {"sent": 3, "pending": 2}
    assert len(fake_esp.messages) == 3
    waiting = Delivery.objects.filter(status="pending")
    midnight = datetime.combine(timezone.now().date() + timedelta(days=1), time(), tzinfo=UTC)
    assert {d.next_attempt_at for d in waiting} == {midnight}
    assert {d.attempts for d in waiting} == {0}
    assert all("daily limit of 3 messages on 'esp'" in d.status_reason for d in waiting)
    # The quota is shared: another batch (another worker) gets nothing more today.
    (later,) = _rows("late@example.com")
    assert deliveries_send_batch(delivery_ids=[later.pk]) == {"pending": 1}
    assert len(fake_esp.messages) == 3


def test_the_warm_up_ramp_sets_each_days_cap(esp_limits):
    start = datetime(2026, 12, 1).date()
    esp_limits(WARMUP=[50, 100, 200], WARMUP_START=start, DAILY_QUOTA=10_000)
    assert daily_cap("esp", today=start - timedelta(days=1)) == 10_000  # before: the quota
    assert daily_cap("esp", today=start) == 50
    assert daily_cap("esp", today=start + timedelta(days=2)) == 200
    assert daily_cap("esp", today=start + timedelta(days=3)) == 10_000  # ramp done
    esp_limits(WARMUP=[], DAILY_QUOTA=0)
    assert daily_cap("esp", today=start) is None


def test_the_warm_up_cap_applies_today(fake_esp, esp_limits):
    esp_limits(WARMUP=[2, 100], WARMUP_START=timezone.now().astimezone(UTC).date())
    rows = _rows("w1@example.com", "w2@example.com", "w3@example.com")
    assert deliveries_send_batch(delivery_ids=[d.pk for d in rows]) == {"sent": 2, "pending": 1}


def test_a_slow_domain_waits_in_the_database_and_holds_no_one_else(fake_esp, settings, monkeypatch):
    settings.NOTIFIER_DOMAIN_RATES = {"gmail.com": 1.0}
    monkeypatch.setattr("notifier.sending.limits.DOMAIN_MAX_WAIT", 0.2)
    rows = _rows("a@gmail.com", "b@gmail.com", "c@GMAIL.com", "x@outlook.com", "y@outlook.com")
    before = timezone.now()

    assert deliveries_send_batch(delivery_ids=[d.pk for d in rows]) == {"sent": 3, "pending": 2}
    sent_to = sorted(parseaddr(m["To"])[1] for m in fake_esp.messages)
    assert sent_to == ["a@gmail.com", "x@outlook.com", "y@outlook.com"]
    waiting = Delivery.objects.filter(status="pending")
    for delivery in waiting:
        assert before < delivery.next_attempt_at < before + timedelta(seconds=5)
        assert "gmail.com takes at most 1 messages per second" in delivery.status_reason
        assert delivery.attempts == 0


def test_the_transport_rate_gives_each_message_its_own_slot():
    from notifier.sending.ratelimit import rate_limit_wait

    assert rate_limit_wait(transport="esp", per_second=0) == 0.0  # no limit
    first = rate_limit_wait(transport="esp", per_second=5)
    second = rate_limit_wait(transport="esp", per_second=5)  # the next slot, 0.2 s on
    assert first <= 0.05 < second <= 0.2
