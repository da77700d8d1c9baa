"""`make bench`: the test stack plus django-post-office, the peer we compare to.

The bench runner sets ``BENCH_TRANSPORT`` (esp | smtp) for the post-office
drain processes so they leave through the same transport as everything else.
"""

from config.env import env

env.ENVIRON.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notifier_bench")
env.ENVIRON.setdefault("REDIS_URL", "redis://127.0.0.1:6379/10")

from config.settings.test import *  # noqa: E402,F403
from config.settings.test import INSTALLED_APPS, NOTIFIER_TRANSPORTS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}

_transport = NOTIFIER_TRANSPORTS[env("BENCH_TRANSPORT", default="esp")]
# django-post-office in its documented high-volume set-up: several processes
# (send_queued_mail --processes W), threads per process, large batches, and no
# per-message log rows.
POST_OFFICE = {
    "BACKENDS": {"default": _transport["BACKEND"]},
    "BATCH_SIZE": 1000,
    "THREADS_PER_PROCESS": 5,
    "LOG_LEVEL": 0,
    "MAX_RETRIES": 0,
}
EMAIL_HOST = NOTIFIER_TRANSPORTS["smtp"]["OPTIONS"]["host"]
EMAIL_PORT = NOTIFIER_TRANSPORTS["smtp"]["OPTIONS"]["port"]
