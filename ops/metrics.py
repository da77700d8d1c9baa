"""``/metrics``: the platform's state, read from PostgreSQL and Redis at scrape time.

Web processes come and go behind a load balancer, so nothing here is kept in
process memory: every sample is read from the database (deliveries by status
and transport, retries waiting, active suppressions, webhook events) or the
broker (tasks waiting per queue). Per-send latency and outcomes are observed
in the workers and served by each worker (``notifier.instruments``, served by ``ops.worker_metrics``).

A part that cannot be read (database or Redis down) is reported as
``notifier_metrics_scrape_error{part=...} 1`` instead of failing the scrape.
"""

import logging

import redis
from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from campaigns.models import CampaignRun
from campaigns.selectors import runs_with_problems
from notifier.heartbeat import beat_heartbeat_age
from notifier.models import Delivery, DeliveryEvent, Suppression
from notifier.sending.failover import transport_states
from ops.access import has_metrics_token

logger = logging.getLogger(__name__)


def _queue_names() -> list[str]:
    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


class NotifierCollector:
    def collect(self):
        errors = GaugeMetricFamily(
            "notifier_metrics_scrape_error",
            "1 when a part of the metrics could not be read at this scrape.",
            labels=["part"],
        )
        for part, read in (
            ("database", self._database),
            ("broker", self._broker),
            ("redis", self._heartbeat),
            ("transports", self._transports),
        ):
            try:
                yield from read()
                errors.add_metric([part], 0)
            except Exception:
                logger.warning("Could not read %s metrics", part, exc_info=True)
                errors.add_metric([part], 1)
        yield errors

    def _database(self):
        deliveries = GaugeMetricFamily(
            "notifier_deliveries",
            "Deliveries (outbox rows) by status and transport.",
            labels=["status", "transport"],
        )
        for row in (
            Delivery.objects.order_by().values("status", "transport").annotate(n=Count("id"))
        ):
            deliveries.add_metric([row["status"], row["transport"]], row["n"])

        retries = GaugeMetricFamily(
            "notifier_retries_waiting",
            "Pending deliveries that already failed at least once and wait for their next attempt.",
            labels=["transport"],
        )
        for row in (
            Delivery.objects.order_by()
            .filter(status=Delivery.Status.PENDING, attempts__gt=0)
            .values("transport")
            .annotate(n=Count("id"))
        ):
            retries.add_metric([row["transport"]], row["n"])

        suppressions = GaugeMetricFamily(
            "notifier_suppressions", "Active suppressions by reason.", labels=["reason"]
        )
        for row in (
            Suppression.objects.order_by()
            .filter(lifted_at__isnull=True)
            .values("reason")
            .annotate(n=Count("id"))
        ):
            suppressions.add_metric([row["reason"]], row["n"])

        events = CounterMetricFamily(
            "notifier_webhook_events",
            "ESP tracking events received (deduplicated), by type.",
            labels=["event_type"],
        )
        for row in DeliveryEvent.objects.order_by().values("event_type").annotate(n=Count("id")):
            events.add_metric([row["event_type"]], row["n"])

        problems = GaugeMetricFamily(
            "notifier_campaign_runs_with_problem",
            "Active campaign runs that failed to launch or whose batches fail, by problem.",
            labels=["problem"],
        )
        found = dict(runs_with_problems().order_by().values_list("problem").annotate(n=Count("id")))
        for problem in CampaignRun.Problem.values:
            if problem:
                problems.add_metric([problem], found.get(problem, 0))
        oldest = GaugeMetricFamily(
            "notifier_oldest_due_seconds",
            "Age of the oldest pending delivery that is due and not yet sent (0: none waiting).",
            labels=["transport"],
        )
        now = timezone.now()
        for row in (
            Delivery.objects.order_by()
            .filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
            .values("transport")
            .annotate(first=Min("next_attempt_at"))
        ):
            oldest.add_metric([row["transport"]], max(0.0, (now - row["first"]).total_seconds()))
        return [deliveries, retries, suppressions, events, problems, oldest]

    def _heartbeat(self):
        age = beat_heartbeat_age()
        heartbeat = GaugeMetricFamily(
            "notifier_beat_heartbeat_age_seconds",
            "Seconds since the sweeper (scheduled by beat) last ran; absent if it never ran.",
        )
        if age is not None:
            heartbeat.add_metric([], age)
        return [heartbeat]

    def _transports(self):
        up = GaugeMetricFamily(
            "notifier_transport_up",
            "1 while a transport is up, 0 while it is marked down (failover), by transport.",
            labels=["transport"],
        )
        changes = CounterMetricFamily(
            "notifier_transport_state_changes",
            "Times a transport was marked down or back up.",
            labels=["transport"],
        )
        for name, state in transport_states().items():
            up.add_metric([name], 1 if state.up else 0)
            changes.add_metric([name], state.changes)
        return [up, changes]

    def _broker(self):
        depth = GaugeMetricFamily(
            "notifier_queue_depth", "Celery tasks waiting in each queue.", labels=["queue"]
        )
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2
        )
        try:
            with client.pipeline(transaction=False) as pipe:
                for name in _queue_names():
                    pipe.llen(name)
                lengths = pipe.execute()
        finally:
            client.close()
        for name, length in zip(_queue_names(), lengths, strict=True):
            depth.add_metric([name], length)
        return [depth]


_registry = CollectorRegistry(auto_describe=False)
_registry.register(NotifierCollector())


def metrics(request):
    if settings.METRICS_TOKEN and not has_metrics_token(request):
        return JsonResponse({"error": "A valid metrics bearer token is required."}, status=401)
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
