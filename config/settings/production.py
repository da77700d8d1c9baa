"""Production: every secret must be set; refuses to start otherwise."""

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import ANYMAIL, DEBUG, env

if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production settings.")
if not ANYMAIL["WEBHOOK_SECRET"]:
    raise ImproperlyConfigured(
        "ANYMAIL_WEBHOOK_SECRET is required: ESP webhooks are never accepted unauthenticated."
    )

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
