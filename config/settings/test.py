"""`make test`: PostgreSQL and Redis are required (see the Makefile)."""

from config.env import env

env.ENVIRON.setdefault("SECRET_KEY", "test-only-not-secret")
env.ENVIRON.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notifier")
env.ENVIRON.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
env.ENVIRON.setdefault("POSTMARK_SERVER_TOKEN", "test-fake-esp-token")
env.ENVIRON.setdefault("ANYMAIL_WEBHOOK_SECRET", "test:webhook-secret")

from config.settings.base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
