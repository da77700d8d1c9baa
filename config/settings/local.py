"""`make run`: a developer's machine, SQLite by default, the fake ESP."""

from config.env import env

env.ENVIRON.setdefault("SECRET_KEY", "local-development-only-not-secret")
env.ENVIRON.setdefault("DEBUG", "true")
env.ENVIRON.setdefault("POSTMARK_SERVER_TOKEN", "local-fake-esp-token")
env.ENVIRON.setdefault("POSTMARK_API_URL", "http://127.0.0.1:8025/")
env.ENVIRON.setdefault("ANYMAIL_WEBHOOK_SECRET", "local:webhook-secret")

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import INSTALLED_APPS  # noqa: E402

# The fake ESP, the SMTP sink, demo data and benchmark commands; never in production.
INSTALLED_APPS = [*INSTALLED_APPS, "devtools"]
