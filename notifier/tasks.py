"""Celery entry points: ids in, one service call, Celery concerns only.

Batches are safe to run twice (claims are conditional), which is what makes
``acks_late`` + ``reject_on_worker_lost`` safe.
"""

from datetime import datetime

from celery import shared_task

from notifier.heartbeat import beat_heartbeat_record
from notifier.models import Frequency
from notifier.sending import deliveries_send_batch
from notifier.sending.failover import transports_probe
from notifier.services.digests import digests_build, digests_run
from notifier.services.indoubt import deliveries_resolve_in_doubt
from notifier.services.notifications import notifications_prune
from notifier.services.retries import deliveries_sweep
from notifier.services.webhooks import webhooks_sweep


@shared_task(name="notifier.send_deliveries", acks_late=True, reject_on_worker_lost=True)
def send_deliveries(delivery_ids: list[int]) -> dict[str, int]:
    return deliveries_send_batch(delivery_ids=delivery_ids)


@shared_task(name="notifier.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, int]:
    # The health check reads this stamp to tell whether beat is alive.
    beat_heartbeat_record()
    return deliveries_sweep()


# --- Notifications and digests ------------------------------------------------------
# Schedulers (beat, on `maintenance`) find who is due and fan out; builders
# (on `digests`) are safe to run twice: digest keys are unique and the build
# commits in one transaction.


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@shared_task(name="notifier.digests_hourly", acks_late=True)
def digests_hourly(now: str | None = None) -> dict[str, int]:
    return digests_run(frequency=Frequency.HOURLY, now=_moment(now))


@shared_task(name="notifier.digests_daily", acks_late=True)
def digests_daily(now: str | None = None) -> dict[str, int]:
    return digests_run(frequency=Frequency.DAILY, now=_moment(now))


@shared_task(name="notifier.digests_weekly", acks_late=True)
def digests_weekly(now: str | None = None) -> dict[str, int]:
    return digests_run(frequency=Frequency.WEEKLY, now=_moment(now))


@shared_task(
    name="notifier.build_digests", acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def build_digests(recipient_ids: list[int], frequency: str, window: str, cutoff: str):
    # Sends what it built (see digests_build): a redelivered build finds its
    # digests built and dispatched, and the sweeper recovers any it left.
    return digests_build(
        recipient_ids=recipient_ids,
        frequency=frequency,
        window=window,
        cutoff=_moment(cutoff),
        send_here=True,
    )


@shared_task(name="notifier.prune_notifications", acks_late=True)
def prune_notifications() -> int:
    return notifications_prune()


@shared_task(name="notifier.probe_transports", acks_late=True, ignore_result=True)
def probe_transports() -> dict[str, str]:
    return transports_probe()


@shared_task(name="notifier.resolve_in_doubt", acks_late=True, ignore_result=True)
def resolve_in_doubt() -> dict[str, int]:
    return deliveries_resolve_in_doubt()


@shared_task(name="notifier.send_webhooks", acks_late=True, ignore_result=True)
def send_webhooks() -> dict[str, int]:
    # Claims are conditional and leased: two of these at once send each call once.
    return webhooks_sweep()
