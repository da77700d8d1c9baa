"""The Celery app. Configuration lives in Django settings (``CELERY_*``)."""

import logging.config
import os

from celery import Celery
from celery.signals import setup_logging, worker_init, worker_process_init

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


@setup_logging.connect
def use_django_logging(**kwargs) -> None:
    """Workers and beat log through Django's LOGGING (JSON in production, with
    the ids of the delivery being sent) instead of Celery's own format."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
