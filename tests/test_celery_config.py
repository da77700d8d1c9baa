"""The Celery wiring the delivery guarantees depend on."""

import pytest
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


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_database_connection_between_tasks(monkeypatch):
    """Celery's Django fixup would close the connection around every task;
    a worker keeps it for CONN_MAX_AGE and replaces one the server dropped."""
    from celery import signals
    from celery.fixups.django import DjangoWorkerFixup
    from django.db import connection, connections

    from notifier.tasks import sweep as task

    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 60)
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", True)
    fixup = DjangoWorkerFixup(app)
    connection.close()  # the next query opens one with the settings above

    def run_task() -> int:
        signals.task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        signals.task_postrun.send(
            sender=task, task_id="t", task=task, args=(), kwargs={}, retval=None, state="SUCCESS"
        )
        return pid

    fixup.install()
    try:
        first = run_task()
        assert run_task() == first
        with connections.create_connection("default").cursor() as other:
            other.execute("SELECT pg_terminate_backend(%s)", [first])
        third = run_task()
        assert third != first
        assert run_task() == third
    finally:
        signals.task_prerun.disconnect(fixup.on_task_prerun)
        signals.task_postrun.disconnect(fixup.on_task_postrun)
        signals.worker_process_init.disconnect(fixup.on_worker_process_init)
        signals.beat_embedded_init.disconnect(fixup.close_database)
