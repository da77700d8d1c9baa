"""The Celery wiring the delivery guarantees depend on."""

from django.conf import settings

from config.celery import app
from notifier.redis import get_redis


def test_each_queue_receives_only_its_own_tasks():
    r = get_redis()
    queues = ("transactional", "campaigns", "digests", "maintenance")
    for queue in queues:
        r.delete(queue)
    with app.connection_for_write() as conn:
        app.send_task("notifier.sweep", queue="campaigns", connection=conn)
    lengths = {queue: r.llen(queue) for queue in queues}
    assert lengths == {"transactional": 0, "campaigns": 1, "digests": 0, "maintenance": 0}
    r.delete("campaigns")


def test_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > conf.task_time_limit
    assert settings.CELERY_BEAT_SCHEDULER.startswith("django_celery_beat")
