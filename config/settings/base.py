"""Settings shared by every environment.

Variables are documented in README.md ("Configuration"). Secrets have no
default here; ``local`` and ``test`` supply throw-away ones.
"""

from datetime import date, time, timedelta

from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from kombu import Exchange, Queue

from config.env import BASE_DIR, env
from config.logging import build_logging

SECRET_KEY = env("SECRET_KEY")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Absolute base of links placed in emails (unsubscribe, preferences).
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "anymail",
    "axes",
    "csp",
    "notifier",
    "campaigns",
    "journeys",
    "api",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out username+IP before any password
# is checked. API tokens never go through these backends.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Content-Security-Policy (django-csp) for the admin and the public pages:
# scripts only from our origin or carrying the request's nonce
# (``request.csp_nonce``), so injected markup cannot run script. Styles allow
# inline (the admin and every previewed email use style attributes, which a
# nonce cannot cover); images may be remote because a previewed email (an
# iframe srcdoc, which inherits this policy) shows the images it links to.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:", "https:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "frame-src": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
        "base-uri": [NONE],
        "object-src": [NONE],
    }
}

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite is the embedded default for `make run`; PostgreSQL in production and
# tests. The SQLite options let a web process and Celery workers write the same
# file: WAL allows readers during a write, IMMEDIATE takes the write lock at
# BEGIN so two writers queue on the busy timeout instead of deadlocking.
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'notifier.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
else:
    # Reuse connections in long-lived worker processes.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Celery's Django fixup closes every database connection before and after
# each task unless this is set (celery/celery#4116), whatever CONN_MAX_AGE
# says: each one-message transactional task then paid for a new PostgreSQL
# backend and its cold caches. Set, the fixup closes them only every
# 2 x this many tasks; config.celery closes old and broken connections around
# each task the way Django does around each request (CONN_MAX_AGE,
# CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = 1_000_000
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Staff sign in through the admin; the only place a login leads to (Django's
# default, /accounts/profile/, does not exist here).
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic puts the admin's CSS/JS (served by WhiteNoise in production).
STATIC_ROOT = env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# --- Email -------------------------------------------------------------------
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Notifier <notifier@localhost>")
# Domain used in the stable Message-ID of every Delivery: <delivery-N.KEY@domain>.
NOTIFIER_MESSAGE_ID_DOMAIN = env("MESSAGE_ID_DOMAIN", default="notifier.localhost")

ANYMAIL = {
    "POSTMARK_SERVER_TOKEN": env("POSTMARK_SERVER_TOKEN", default=""),
    "POSTMARK_API_URL": env("POSTMARK_API_URL", default="https://api.postmarkapp.com/"),
    # We read every recipient's status ourselves and record rejections as
    # permanent failures instead of letting Anymail raise for them.
    "IGNORE_RECIPIENT_STATUS": True,
    # (connect, read) seconds: a hung ESP must not hold a batch for long.
    "REQUESTS_TIMEOUT": (
        env.float("ESP_CONNECT_TIMEOUT", default=5.0),
        env.float("ESP_READ_TIMEOUT", default=20.0),
    ),
    "WEBHOOK_SECRET": env("ANYMAIL_WEBHOOK_SECRET", default=""),
}

# Named transports. A Delivery records which one it leaves through; each has
# its own Django email backend and its own global rate limit (messages/second,
# 0 = unlimited) shared by all workers through Redis.
NOTIFIER_TRANSPORTS = {
    "esp": {
        # Anymail's Postmark backend plus Postmark's batch API (/email/batch).
        "BACKEND": env("ESP_BACKEND", default="notifier.sending.postmark.EmailBackend"),
        "OPTIONS": {},
        # Messages per request where the backend has a batch API (1: one
        # message per request). At most one request per batch is in flight,
        # so a worker killed mid-send leaves at most this many in doubt.
        "BATCH_SIZE": env.int("ESP_BATCH_SIZE", default=100),
        "RATE_LIMIT": env.float("ESP_RATE_LIMIT", default=0),
        # Messages per UTC day (0: none), and a warm-up ramp for a new sending
        # domain: daily caps from WARMUP_START on, then DAILY_QUOTA (limits.py).
        "DAILY_QUOTA": env.int("ESP_DAILY_QUOTA", default=0),
        "WARMUP": env.list("ESP_WARMUP", cast=int, default=[]),
        "WARMUP_START": (
            date.fromisoformat(env("ESP_WARMUP_START"))
            if env("ESP_WARMUP_START", default="")
            else None
        ),
        # How to ask the ESP whether an in-doubt message was accepted (Postmark's
        # outbound message search); empty: in-doubt rows wait for staff.
        "LOOKUP": env("ESP_LOOKUP", default="notifier.sending.lookup.postmark_lookup"),
        # Failover (sending/failover.py): the order transports take over each
        # other's rows (lower first; unset: none), or an explicit FALLBACK
        # chain, and how a down transport is probed to come back.
        "PRIORITY": env.int("ESP_PRIORITY", default=None),
        "FALLBACK": env.list("ESP_FALLBACK", default=[]),
        "PROBE": env("ESP_PROBE", default="notifier.sending.failover.postmark_probe"),
    },
    "smtp": {
        # Django's SMTP backend, pipelining its commands where the server
        # offers it (RFC 2920: two round trips a message instead of four).
        "BACKEND": env("SMTP_BACKEND", default="notifier.sending.smtp.EmailBackend"),
        "OPTIONS": {
            "host": env("SMTP_HOST", default="127.0.0.1"),
            "port": env.int("SMTP_PORT", default=1025),
            "username": env("SMTP_USER", default=""),
            "password": env("SMTP_PASSWORD", default=""),
            "use_tls": env.bool("SMTP_STARTTLS", default=False),
            "use_ssl": env.bool("SMTP_SSL", default=False),
            "timeout": env.float("SMTP_TIMEOUT", default=20.0),
        },
        "RATE_LIMIT": env.float("SMTP_RATE_LIMIT", default=0),
        "DAILY_QUOTA": env.int("SMTP_DAILY_QUOTA", default=0),
        "PRIORITY": env.int("SMTP_PRIORITY", default=None),
        "FALLBACK": env.list("SMTP_FALLBACK", default=[]),
        # No PROBE: opening a connection (connect, EHLO, login) is the probe.
    },
}
# Messages per second per recipient domain, shared by every worker and
# transport ("gmail.com=20,outlook.com=10"): providers throttle senders per
# receiving domain. A row over its domain's rate waits in the database.
NOTIFIER_DOMAIN_RATES = {
    domain.strip().lower(): float(rate)
    for domain, _, rate in (
        item.partition("=") for item in env.list("DOMAIN_RATE_LIMITS", default=[]) if item
    )
}
# A transport failing (connection refused, timeouts, 5xx) with no good answer
# for this many seconds is marked down for every worker; its untried rows move
# to the next transport that is up. A down transport is probed this often and
# comes back up when a probe succeeds (sending/failover.py).
NOTIFIER_FAILOVER_AFTER = env.float("NOTIFIER_FAILOVER_AFTER", default=30.0)
NOTIFIER_FAILOVER_PROBE_SECONDS = env.float("NOTIFIER_FAILOVER_PROBE_SECONDS", default=15.0)
# In-doubt rows are looked up at their ESP once they are this old (the ESP
# indexes accepted messages with a delay: "not found" earlier proves nothing).
NOTIFIER_INDOUBT_INDEX_DELAY = env.int("NOTIFIER_INDOUBT_INDEX_DELAY", default=300)
NOTIFIER_DEFAULT_TRANSPORT = env("NOTIFIER_DEFAULT_TRANSPORT", default="esp")
# Attempts per Delivery before a transient error becomes a permanent failure.
NOTIFIER_MAX_ATTEMPTS = env.int("NOTIFIER_MAX_ATTEMPTS", default=6)
# Exponential backoff: base * 2**(attempt-1), capped, with +/-50% jitter.
NOTIFIER_BACKOFF_BASE = env.float("NOTIFIER_BACKOFF_BASE", default=30.0)
NOTIFIER_BACKOFF_CAP = env.float("NOTIFIER_BACKOFF_CAP", default=3600.0)
# How long a batch owns the rows it claimed. A worker that dies loses its
# claim after this; the sweeper then recovers the rows. Batches renew it.
NOTIFIER_LEASE_SECONDS = env.int("NOTIFIER_LEASE_SECONDS", default=120)
# Deliveries per batch task.
NOTIFIER_BATCH_SIZE = env.int("NOTIFIER_BATCH_SIZE", default=200)
# Messages a batch has on the wire at once (sender threads, one transport
# connection each): the next message renders while earlier ones wait for the
# ESP or SMTP server. A worker killed mid-batch leaves at most this many in
# doubt. Mind your SMTP relay's limit on concurrent connections.
NOTIFIER_SEND_THREADS = env.int("NOTIFIER_SEND_THREADS", default=4)
# On a transport without a batch API (SMTP): messages a batch hands over
# ahead of their answers, queued for the sender threads. Half of them are
# marked in the journal in one round trip (not one trip per message). A
# worker killed mid-batch leaves at most this many in doubt (at least
# NOTIFIER_SEND_THREADS).
NOTIFIER_SEND_AHEAD = env.int("NOTIFIER_SEND_AHEAD", default=16)
# Before a message is handed over, it and the next ones (this many in all)
# are marked in the database in one UPDATE (sending/handoff.py): what a claim
# may have sent survives a Redis that lost its journal.
NOTIFIER_HANDOFF_MARK_AHEAD = env.int("NOTIFIER_HANDOFF_MARK_AHEAD", default=50)
# A pending row dispatched to Celery but not claimed after this many seconds
# is dispatched again by the sweeper (its task was lost, e.g. Redis restarted
# without persistence). Claims are conditional, so a second task is harmless.
NOTIFIER_REDISPATCH_SECONDS = env.int("NOTIFIER_REDISPATCH_SECONDS", default=300)

# Render limits, per rendered part (subject, HTML, text, digest entry): a
# template that exceeds one fails with the reason (a form error or a 400 when
# it is saved or sent, a failed Delivery if it is already stored). Steps are
# nodes rendered plus loop iterations; a normal email takes a few thousand.
NOTIFIER_RENDER_MAX_STEPS = env.int("NOTIFIER_RENDER_MAX_STEPS", default=500_000)
NOTIFIER_RENDER_MAX_SECONDS = env.float("NOTIFIER_RENDER_MAX_SECONDS", default=5.0)
NOTIFIER_RENDER_MAX_CHARS = env.int("NOTIFIER_RENDER_MAX_CHARS", default=1_000_000)
# Largest width/precision argument of ljust, rjust, center, floatformat and
# stringformat.
NOTIFIER_RENDER_MAX_WIDTH = env.int("NOTIFIER_RENDER_MAX_WIDTH", default=1_000)

# --- Redis and Celery ---------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
# Ack after the task ran, and requeue it if the worker process was killed, so
# a crash never loses a task. Tasks are safe to run twice (conditional claims).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process: long batches must not hide others behind
# them in a prefetch buffer (https://docs.celeryq.dev/en/stable/userguide/optimizing.html).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis redelivers an unacked task after the visibility timeout. It must be
# longer than the longest task (the hard time limit below) or a running task
# is delivered twice; retries therefore live in the database, never in long
# countdowns/ETAs.
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=900)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_SEND_TASK_EVENTS = True  # for Flower
CELERY_TASK_SEND_SENT_EVENT = True
# Separate queues so bulk work never delays urgent mail.
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
# Each queue has its own exchange and routing key: with Celery's defaults
# they would all share the default exchange and key, and every task would be
# copied into every queue.
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in ("transactional", "campaigns", "digests", "maintenance")
]
CELERY_TASK_DEFAULT_EXCHANGE = "maintenance"
CELERY_TASK_DEFAULT_ROUTING_KEY = "maintenance"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Installed into django-celery-beat's tables by the DatabaseScheduler at start.
CELERY_BEAT_SCHEDULE = {
    "notifier-sweep": {
        "task": "notifier.sweep",
        "schedule": env.float("NOTIFIER_SWEEP_SECONDS", default=10.0),
        "options": {"queue": "maintenance", "expires": 60},
    },
    # Probes the transports that are down (see NOTIFIER_FAILOVER_AFTER).
    "notifier-probe-transports": {
        "task": "notifier.probe_transports",
        "schedule": NOTIFIER_FAILOVER_PROBE_SECONDS,
        "options": {"queue": "maintenance", "expires": 60},
    },
    # Asks the ESP about in-doubt rows (see NOTIFIER_INDOUBT_INDEX_DELAY).
    "notifier-resolve-in-doubt": {
        "task": "notifier.resolve_in_doubt",
        "schedule": 60.0,
        "options": {"queue": "maintenance", "expires": 60},
    },
}

# --- Recipient lifecycle: unsubscribe, preferences, ESP events ----------------
# Anymail tracking webhooks served at /webhooks/anymail/<esp>/tracking/, one
# per ESP named here (Anymail's names: postmark, mailgun, sendgrid, ...).
NOTIFIER_WEBHOOK_ESPS = env.list("ESP_WEBHOOKS", default=["postmark"])
# Larger webhook bodies are refused with 400 before they are parsed.
NOTIFIER_WEBHOOK_MAX_BYTES = env.int("WEBHOOK_MAX_BYTES", default=1_000_000)
# This many soft bounces of one address within the window suppress it.
NOTIFIER_SOFT_BOUNCE_LIMIT = env.int("SOFT_BOUNCE_LIMIT", default=3)
NOTIFIER_SOFT_BOUNCE_WINDOW_DAYS = env.int("SOFT_BOUNCE_WINDOW_DAYS", default=7)
# Address added to List-Unsubscribe as a mailto: alternative (empty: https only).
NOTIFIER_UNSUBSCRIBE_MAILTO = env("UNSUBSCRIBE_MAILTO", default="")
# Days a preference link works (every email carries a fresh one; unsubscribe
# links never expire, as RFC 8058 needs).
NOTIFIER_PREFERENCE_LINK_DAYS = env.int("PREFERENCE_LINK_DAYS", default=90)

# --- Outbound webhooks (notifier.services.webhooks) -----------------------------
# Calls of one endpoint about one event: tried this many times, then "dead".
NOTIFIER_WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=8)
# Exponential backoff between attempts (seconds): base * 2^(attempt-1), capped.
NOTIFIER_WEBHOOK_BACKOFF_BASE = env.float("WEBHOOK_BACKOFF_BASE", default=30.0)
NOTIFIER_WEBHOOK_BACKOFF_CAP = env.float("WEBHOOK_BACKOFF_CAP", default=3600.0)
NOTIFIER_WEBHOOK_CONNECT_TIMEOUT = env.float("WEBHOOK_CONNECT_TIMEOUT", default=5.0)
NOTIFIER_WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=10.0)
# Calls one task claims at once, and how long it owns them: long enough for
# every one of them to time out in turn.
NOTIFIER_WEBHOOK_CLAIM_SIZE = env.int("WEBHOOK_CLAIM_SIZE", default=20)
NOTIFIER_WEBHOOK_LEASE_SECONDS = env.int("WEBHOOK_LEASE_SECONDS", default=360)
CELERY_BEAT_SCHEDULE["webhooks-send-due"] = {
    "task": "notifier.send_webhooks",
    "schedule": CELERY_BEAT_SCHEDULE["notifier-sweep"]["schedule"],
    "options": {"queue": "maintenance", "expires": 60},
}

# --- Signup forms, privacy (campaigns.services.signups, notifier.services.privacy) --
# Form posts accepted per client address per hour (Redis), and how long a
# form page's signed token and a confirmation link stay valid.
SIGNUP_RATE_LIMIT_PER_HOUR = env.int("SIGNUP_RATE_LIMIT_PER_HOUR", default=20)
SIGNUP_FORM_TOKEN_HOURS = env.int("SIGNUP_FORM_TOKEN_HOURS", default=24)
SIGNUP_CONFIRM_DAYS = env.int("SIGNUP_CONFIRM_DAYS", default=7)

# --- HTTP API and operations (api/, ops/, deploy/) ------------------------------
# One JSON object per line in production (LOG_FORMAT=json); ids of the
# delivery/run being sent are added to every line by LogContextFilter.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = build_logging(fmt=LOG_FORMAT, level=LOG_LEVEL)
# Largest API request body accepted; larger ones get 413 before being read.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=256 * 1024)
# Requests per minute per API token unless the token sets its own limit.
API_RATE_LIMIT_PER_MINUTE = env.int("API_RATE_LIMIT_PER_MINUTE", default=600)
# How long an Idempotency-Key's first answer is kept for replay.
API_IDEMPOTENCY_HOURS = env.int("API_IDEMPOTENCY_HOURS", default=24)
# Beat counts as dead when the sweeper has not run for this long.
HEALTH_BEAT_MAX_AGE = env.int(
    "HEALTH_BEAT_MAX_AGE",
    default=max(60, int(6 * CELERY_BEAT_SCHEDULE["notifier-sweep"]["schedule"])),
)
# How long the health check waits for Celery workers to answer a ping.
HEALTH_WORKER_TIMEOUT = env.float("HEALTH_WORKER_TIMEOUT", default=1.0)
# Seconds a web process reuses its last /health/ report: a burst of probes
# costs one Celery broadcast, not one each.
HEALTH_CACHE_SECONDS = env.float("HEALTH_CACHE_SECONDS", default=5.0)
# If set, /metrics requires "Authorization: Bearer <METRICS_TOKEN>".
METRICS_TOKEN = env("METRICS_TOKEN", default="")
# Port on which each Celery worker serves its own /metrics (0: off).
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)
# Directory where a prefork worker's children write metric samples (read by
# prometheus-client itself; one empty directory per worker process).
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", default="")

# --- Campaigns -------------------------------------------------------------------
# Deliveries per campaign batch task (one task of the run's chord each).
CAMPAIGNS_BATCH_SIZE = env.int("CAMPAIGNS_BATCH_SIZE", default=NOTIFIER_BATCH_SIZE)
# Rows per bulk insert when importing contacts from CSV (memory stays bounded).
CAMPAIGNS_IMPORT_CHUNK = env.int("CAMPAIGNS_IMPORT_CHUNK", default=2000)
# A run whose launch (or maintenance) raises is tried again after this many
# seconds, doubling on each failure up to the cap: a deterministic error is
# neither retried nor logged on every maintenance tick.
CAMPAIGNS_PROBLEM_BACKOFF_BASE = env.float("CAMPAIGNS_PROBLEM_BACKOFF_BASE", default=30.0)
CAMPAIGNS_PROBLEM_BACKOFF_CAP = env.float("CAMPAIGNS_PROBLEM_BACKOFF_CAP", default=3600.0)
# Caps on a CSV import, so a hostile file is refused early with a clear
# message: the file size, one line's length (refused as the bytes arrive),
# the header's columns, and one field's characters (a row error).
CAMPAIGNS_IMPORT_MAX_BYTES = env.int("CAMPAIGNS_IMPORT_MAX_BYTES", default=100_000_000)
CAMPAIGNS_IMPORT_MAX_LINE_BYTES = env.int("CAMPAIGNS_IMPORT_MAX_LINE_BYTES", default=100_000)
CAMPAIGNS_IMPORT_MAX_COLUMNS = env.int("CAMPAIGNS_IMPORT_MAX_COLUMNS", default=200)
CAMPAIGNS_IMPORT_MAX_FIELD_CHARS = env.int("CAMPAIGNS_IMPORT_MAX_FIELD_CHARS", default=10_000)
# Closes runs whose chord callback never came (a batch raised, retries were
# due later), launches queued runs whose task was lost, releases stray holds.
CELERY_BEAT_SCHEDULE["campaigns-maintain-runs"] = {
    "task": "campaigns.maintain_runs",
    "schedule": env.float("CAMPAIGNS_MAINTAIN_SECONDS", default=30.0),
    "options": {"queue": "maintenance", "expires": 60},
}

# Sends the winner of each A/B test whose wait is over (a due time in the
# database): the winner goes out at most this late.
CELERY_BEAT_SCHEDULE["campaigns-decide-ab-tests"] = {
    "task": "campaigns.decide_ab_tests",
    "schedule": CELERY_BEAT_SCHEDULE["campaigns-maintain-runs"]["schedule"],
    "options": {"queue": "maintenance", "expires": 60},
}

# --- Journeys (automations) ---------------------------------------------------------
# Enrollments per step batch task.
JOURNEYS_BATCH_SIZE = env.int("JOURNEYS_BATCH_SIZE", default=100)
# How long a batch owns its enrollments; a killed worker's are claimed again after it.
JOURNEYS_LEASE_SECONDS = env.int("JOURNEYS_LEASE_SECONDS", default=120)
# A due enrollment published this long ago without being run is published again
# (its task was lost: Redis restarted, or the worker died holding it).
JOURNEYS_REDISPATCH_SECONDS = env.int("JOURNEYS_REDISPATCH_SECONDS", default=300)
# Step batches share the campaigns queue (bulk marketing work, never ahead of
# transactional mail).
JOURNEYS_QUEUE = env("JOURNEYS_QUEUE", default="campaigns")
# Polls the triggers and publishes due steps: a wait ends at most this late.
CELERY_BEAT_SCHEDULE["journeys-tick"] = {
    "task": "journeys.tick",
    "schedule": env.float("JOURNEYS_TICK_SECONDS", default=30.0),
    "options": {"queue": "maintenance", "expires": 60},
}

# --- Notifications and digests ------------------------------------------------
# Local time at which daily digests go out, in each recipient's time zone.
NOTIFIER_DAILY_DIGEST_TIME = time.fromisoformat(env("NOTIFIER_DAILY_DIGEST_TIME", default="08:00"))
# Quiet hours of the whole installation, in each recipient's local time
# ("22:00-07:00"; empty: none): no notification email between them, except
# for critical topics. Recipients and topics may add their own.
_QUIET_HOURS = env("NOTIFIER_QUIET_HOURS", default="").strip()
try:
    NOTIFIER_QUIET_HOURS = None
    if _QUIET_HOURS:
        _start, _end = (time.fromisoformat(part.strip()) for part in _QUIET_HOURS.split("-"))
        NOTIFIER_QUIET_HOURS = (_start, _end)
except ValueError:
    raise ValueError(f"NOTIFIER_QUIET_HOURS={_QUIET_HOURS!r} is not HH:MM-HH:MM.") from None
# Recipients per digest-building task: one send batch of digests each (NOTIFIER_BATCH_SIZE
# at most 500), a few thousand notifications per transaction.
NOTIFIER_DIGEST_BATCH_SIZE = env.int("NOTIFIER_DIGEST_BATCH_SIZE", default=500)
# Days an included notification is kept (for the admin) before the prune task deletes it.
NOTIFIER_NOTIFICATION_RETENTION_DAYS = env.int("NOTIFIER_NOTIFICATION_RETENTION_DAYS", default=30)
CELERY_BEAT_SCHEDULE.update(
    {
        # Hourly digests close at the top of each hour.
        "notifier-digests-hourly": {
            "task": "notifier.digests_hourly",
            "schedule": crontab(minute=0),
            "options": {"queue": "maintenance", "expires": 50 * 60},
        },
        # Daily digests: every 5 minutes, send those whose local digest time has come.
        "notifier-digests-daily": {
            "task": "notifier.digests_daily",
            "schedule": crontab(minute="*/5"),
            "options": {"queue": "maintenance", "expires": 4 * 60},
        },
        # Weekly digests: every 5 minutes, send those whose recipient's local
        # weekday and time (their choice) have come.
        "notifier-digests-weekly": {
            "task": "notifier.digests_weekly",
            "schedule": crontab(minute="*/5"),
            "options": {"queue": "maintenance", "expires": 4 * 60},
        },
        # Prune included notifications older than the retention, once a day.
        "notifier-prune-notifications": {
            "task": "notifier.prune_notifications",
            "schedule": crontab(minute=30, hour=3),
            "options": {"queue": "maintenance", "expires": 3600},
        },
    }
)

# --- Admin login brute-force protection (django-axes) ---------------------------

AXES_ENABLED = env.bool("LOGIN_LOCKOUT_ENABLED", default=True)
# Locked out after this many failed logins of one username from one IP ...
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# ... for this long (each failure during the lockout starts it again); an
# administrator unlocks earlier by deleting the row under Axes > Access attempts.
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_COOLOFF_MINUTES", default=15))
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/login_locked_out.html"
# The client IP: REMOTE_ADDR, or behind N reverse proxies the Nth address from
# the right of X-Forwarded-For (the one the outermost trusted proxy saw).
LOGIN_PROXY_COUNT = env.int("LOGIN_PROXY_COUNT", default=0)
AXES_CLIENT_IP_CALLABLE = "config.login.client_ip"
# Failures are what matter; a row per successful login is not kept.
AXES_DISABLE_ACCESS_LOG = True
# No start-up banner in every process's log; failures and lockouts are still logged.
AXES_VERBOSE = False
