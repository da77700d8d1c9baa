"""The Celery app. Configuration lives in Django settings (``CELERY_*``)."""

import logging.config
import os

from celery import Celery
from celery.signals import setup_logging

# Production unless told otherwise: a process started by mistake refuses to
# run without production secrets instead of running with DEBUG on.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

app = Celery("notifier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**kwargs) -> None:
    """Workers and beat log through Django's LOGGING (JSON in production, with
    the ids of the delivery being sent) instead of Celery's own format."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


def worker_command(
    *, name: str, queues: str, concurrency: int, loglevel: str = "WARNING", python: str = ""
) -> list[str]:
    """The command line of a worker of this app (tests, benchmark, fault runs).

    Gossip and mingle are off: these workers start and stop often and need
    nothing from their peers.
    """
    import sys

    return [
        python or sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
    ]
