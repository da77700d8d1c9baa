"""Each Celery worker serves its metrics on ``WORKER_METRICS_PORT``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (one empty directory per worker, as the
deploy files do), the pool's child processes write their samples there and
the main process serves their sum; without it, only the main process's own
samples would be seen, which is right only for ``--pool solo/threads``.
"""

import logging
import os

from celery.signals import task_failure, worker_process_shutdown, worker_ready
from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

logger = logging.getLogger(__name__)


@worker_ready.connect
def serve_worker_metrics(**kwargs) -> None:
    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    registry = REGISTRY
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
    logger.info("Worker metrics on port %s", port)


@worker_process_shutdown.connect
def forget_dead_child(pid=None, **kwargs) -> None:
    if settings.PROMETHEUS_MULTIPROC_DIR:
        multiprocess.mark_process_dead(pid or os.getpid())


@task_failure.connect
def count_failed_task(sender=None, **kwargs) -> None:
    from notifier.instruments import count_task_failure

    count_task_failure(task=getattr(sender, "name", None) or "unknown")
