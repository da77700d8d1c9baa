"""/metrics (state read from PostgreSQL and Redis) and each worker's own metrics."""

import json

import pytest
import requests
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from notifier import send
from notifier.models import Delivery, DeliveryEvent
from notifier.redis import get_redis
from notifier.services.suppressions import suppression_add
from tests.conftest import wait_for
from tests.ops.private_services import free_port


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(**headers) -> dict:
    response = Client().get("/metrics", headers=headers)
    assert response.status_code == 200
    return _samples(response.content.decode())


@pytest.mark.django_db
def test_metrics_report_deliveries_queues_retries_suppressions_and_events():
    for i in range(3):
        send(to=f"p{i}@example.com", subject="s", text="t")
    retry = send(to="retry@example.com", subject="s", text="t", transport="smtp")
    Delivery.objects.filter(pk=retry.pk).update(attempts=1)
    suppression_add(email="gone@example.com", reason="hard_bounce")
    delivery = Delivery.objects.first()
    for key, kind in (("e1", "delivered"), ("e2", "opened"), ("e3", "opened")):
        DeliveryEvent.objects.create(
            delivery=delivery, event_key=key, event_type=kind, occurred_at=timezone.now()
        )
    get_redis().delete("campaigns")
    get_redis().rpush("campaigns", "a", "b")

    samples = _scrape()
    assert samples[("notifier_deliveries", (("status", "pending"), ("transport", "esp")))] == 3
    assert samples[("notifier_deliveries", (("status", "pending"), ("transport", "smtp")))] == 1
    assert samples[("notifier_retries_waiting", (("transport", "smtp"),))] == 1
    assert samples[("notifier_suppressions", (("reason", "hard_bounce"),))] == 1
    assert samples[("notifier_webhook_events_total", (("event_type", "opened"),))] == 2
    assert samples[("notifier_queue_depth", (("queue", "campaigns"),))] == 2
    assert samples[("notifier_queue_depth", (("queue", "digests"),))] == 0
    assert samples[("notifier_metrics_scrape_error", (("part", "broker"),))] == 0
    get_redis().delete("campaigns")


@pytest.mark.django_db
def test_a_broker_outage_is_reported_not_raised(settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    samples = _scrape()
    assert samples[("notifier_metrics_scrape_error", (("part", "broker"),))] == 1
    assert samples[("notifier_metrics_scrape_error", (("part", "database"),))] == 0


@pytest.mark.django_db
def test_metrics_token(settings):
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert _scrape(Authorization="Bearer s3cret-metrics-token")


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_worker_serves_send_latency_and_outcomes(start_worker, fake_esp, tmp_path):
    from notifier.tasks import send_deliveries

    port = free_port()
    # Its own queue: the shared test worker must not take this batch.
    worker = start_worker(
        "metrics",
        queues="metrics-test",
        WORKER_METRICS_PORT=port,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        LOG_FORMAT="json",
    )
    delivery = send(
        to="ann@example.com",
        subject="s",
        text="t",
        send_at=timezone.now() + timezone.timedelta(days=1),
    )
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    send_deliveries.apply_async(args=[[delivery.pk]], queue="metrics-test")

    def sent():
        delivery.refresh_from_db()
        return delivery.status == Delivery.Status.SENT

    wait_for(sent, timeout=30)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = _samples(text)
    assert samples[("notifier_send_seconds_count", (("transport", "esp"),))] == 1
    assert (
        samples[("notifier_send_outcomes_total", (("outcome", "sent"), ("transport", "esp")))] == 1
    )

    # The worker logs JSON lines naming the delivery it sent.
    lines = [
        json.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if line.startswith("{") and str(delivery.uuid) in line
    ]
    handed = [line for line in lines if line["message"].startswith("Handed to esp: sent")]
    assert len(handed) == 1 and handed[0]["delivery_id"] == delivery.pk
