"""Celery entry points: ids in, one service call, Celery concerns only.

Batches are safe to run twice (claims are conditional), which is what makes
``acks_late`` + ``reject_on_worker_lost`` safe.
"""

from celery import shared_task

from notifier.services.retries import deliveries_sweep
from notifier.services.sending import deliveries_send_batch
from ops.heartbeat import beat_heartbeat_record


@shared_task(name="notifier.send_deliveries", acks_late=True, reject_on_worker_lost=True)
def send_deliveries(delivery_ids: list[int]) -> dict[str, int]:
    return deliveries_send_batch(delivery_ids=delivery_ids)


@shared_task(name="notifier.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, int]:
    # The health check reads this stamp to tell whether beat is alive.
    beat_heartbeat_record()
    return deliveries_sweep()
