"""The Celery wiring the delivery guarantees depend on."""

from django.conf import settings

from config.celery import app


def test_each_queue_has_its_own_exchange_and_routing_key():
    """Shared routing keys would copy every task into every queue."""
    routes = {q.name: (q.exchange.name, q.routing_key) for q in app.conf.task_queues}
    assert set(routes) == {"transactional", "campaigns", "digests", "maintenance"}
    assert all(routes[name] == (name, name) for name in routes)
    route = app.amqp.router.route({"queue": "campaigns"}, "notifier.send_deliveries")
    assert route["queue"].routing_key == "campaigns"


def test_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > conf.task_time_limit
    assert settings.CELERY_BEAT_SCHEDULER.startswith("django_celery_beat")
