"""Production: every secret must be set; refuses to start otherwise.

The variables are listed in deploy/README.md. With them set,
``manage.py check --deploy`` reports no issues.
"""

from django.core.exceptions import ImproperlyConfigured

from config.logging import build_logging
from config.settings.base import *  # noqa: F403
from config.settings.base import ANYMAIL, DATABASES, DEBUG, LOG_LEVEL, SECRET_KEY, env

if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production settings.")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    raise ImproperlyConfigured(
        "SECRET_KEY must be a random string of at least 50 characters "
        '(python -c "import secrets; print(secrets.token_urlsafe(50))").'
    )
if ":" not in ANYMAIL["WEBHOOK_SECRET"] or len(ANYMAIL["WEBHOOK_SECRET"]) < 20:
    raise ImproperlyConfigured(
        "ANYMAIL_WEBHOOK_SECRET is required as 'user:password' (20+ characters): "
        "ESP webhooks are never accepted unauthenticated."
    )
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must point to PostgreSQL in production.")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Load balancers and Prometheus call these over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
# The header only allows submitting the domain to browsers' preload lists;
# set SECURE_HSTS_PRELOAD=false if subdomains must keep plain HTTP.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

# WhiteNoise serves collected static files (the admin's CSS/JS) from the web
# process itself, right after SecurityMiddleware as its docs require.
MIDDLEWARE = [*MIDDLEWARE]  # noqa: F405
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
# Compressed, content-hashed static files (collectstatic at image build),
# served by WhiteNoise with far-future cache headers.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
LOGGING = build_logging(fmt=env("LOG_FORMAT", default="json"), level=LOG_LEVEL)
