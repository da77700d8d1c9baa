"""The Celery app. Configuration lives in Django settings (``CELERY_*``)."""

import logging.config
import os

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

# Production unless told otherwise: a process started by mistake refuses to
# run without production secrets instead of running with DEBUG on.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

app = Celery("notifier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
@worker_process_init.connect
def trace_worker(**kwargs) -> None:
    """Each worker process traces the tasks it runs and the tasks it
    publishes (off unless an exporter is configured: config.tracing)."""
    from config.tracing import tracing_setup

    tracing_setup(service="notifier-worker", celery=True)


@task_prerun.connect
@task_postrun.connect
def tidy_connections(task=None, **kwargs) -> None:
    """Close database connections that are broken or older than CONN_MAX_AGE
    around each task, as Django does around each request; the others are
    kept (settings: CELERY_DB_REUSE_MAX). A task run eagerly (in the
    caller's process, perhaps inside its transaction) leaves them alone."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections as close

    close()


@setup_logging.connect
def use_django_logging(**kwargs) -> None:
    """Workers and beat log through Django's LOGGING (JSON in production, with
    the ids of the delivery being sent) instead of Celery's own format."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
