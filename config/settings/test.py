"""`make test`: PostgreSQL and Redis are required (see the Makefile)."""

from config.env import env

env.ENVIRON.setdefault("SECRET_KEY", "test-only-not-secret")
env.ENVIRON.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notifier")
env.ENVIRON.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
env.ENVIRON.setdefault("POSTMARK_SERVER_TOKEN", "test-fake-esp-token")
env.ENVIRON.setdefault("ANYMAIL_WEBHOOK_SECRET", "test:webhook-secret")

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import INSTALLED_APPS  # noqa: E402

# The fake ESP, the SMTP sink, demo data and benchmark commands; never in production.
INSTALLED_APPS = [*INSTALLED_APPS, "devtools"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # The SQLite pass: the file DATABASE_URL names (made afresh for the run),
    # not pytest-django's in-memory default, so the worker subprocesses open
    # the same database as the test.
    DATABASES["default"]["TEST"] = {"NAME": DATABASES["default"]["NAME"]}  # noqa: F405
