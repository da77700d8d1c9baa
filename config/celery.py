"""The Celery app. Configuration lives in Django settings (``CELERY_*``)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("notifier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
