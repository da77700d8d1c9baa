"""Shared fixtures: the fake ESP, the SMTP sink, Redis, and real Celery workers.

Workers are real ``celery worker`` subprocesses using the test database (rows
must be committed for them to see: use ``transaction=True`` tests).
"""

import importlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

from devtools.fake_esp import start_in_thread
from devtools.smtp_sink import start_sink

ROOT = Path(__file__).resolve().parent.parent
ESP_TOKEN = "test-fake-esp-token"


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


# --- The outside world we fake: ESP and SMTP ---------------------------------


@pytest.fixture(scope="session")
def fake_esp_server():
    server = start_in_thread(token=ESP_TOKEN)
    yield server
    server.shutdown()


@pytest.fixture
def fake_esp(fake_esp_server, settings):
    """The fake ESP, emptied, with Anymail in this process pointed at it."""
    fake_esp_server.state.reset()
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "POSTMARK_API_URL": fake_esp_server.url,
        "POSTMARK_SERVER_TOKEN": ESP_TOKEN,
        "REQUESTS_TIMEOUT": (2.0, 1.5),
    }
    yield fake_esp_server.state
    fake_esp_server.state.reset()


@pytest.fixture(scope="session")
def smtp_sink_server():
    controller, handler = start_sink()
    yield controller, handler
    controller.stop()


@pytest.fixture
def smtp_sink(smtp_sink_server, settings):
    controller, handler = smtp_sink_server
    handler.reset()
    transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
    transports["smtp"]["OPTIONS"] = {
        **transports["smtp"]["OPTIONS"],
        "host": controller.hostname,
        "port": controller.port,
    }
    settings.NOTIFIER_TRANSPORTS = transports
    yield handler
    handler.reset()


# --- Groups made by data migrations -----------------------------------------------


@pytest.fixture
def marketing_group(db):
    """The "Marketing" group as its data migration makes it.

    A transactional test empties every table when it ends, taking the
    migration's rows with it, so the group is rebuilt here when missing.
    """
    from django.contrib.auth.models import Group, Permission

    migrations = [
        importlib.import_module("campaigns.migrations.0002_marketing_group"),
        importlib.import_module("journeys.migrations.0002_marketing_permissions"),
    ]
    campaign_permissions = [
        importlib.import_module("campaigns.migrations.0013_ab_test_permissions"),
    ]
    group, created = Group.objects.get_or_create(name=migrations[0].GROUP)
    if created:
        signups = importlib.import_module("campaigns.migrations.0009_signup_forms_consents")
        wanted = {
            ("campaigns", model): actions
            for model, actions in signups.MARKETING_PERMISSIONS.items()
        }
        for migration in migrations:
            wanted.update(migration.PERMISSIONS)
        for migration in campaign_permissions:
            wanted.update(
                {
                    ("campaigns", model): actions
                    for model, actions in migration.MARKETING_PERMISSIONS.items()
                }
            )
        for (app_label, model), actions in wanted.items():
            group.permissions.add(
                *Permission.objects.filter(
                    content_type__app_label=app_label,
                    codename__in=[f"{action}_{model}" for action in actions],
                )
            )
    return group


@pytest.fixture
def confirmation_template(db):
    """The "Signup confirmation" template its data migration makes (rebuilt
    when a transactional test emptied the tables)."""
    from notifier.models import Template

    migration = importlib.import_module("campaigns.migrations.0009_signup_forms_consents")
    fields = migration.CONFIRMATION_TEMPLATE
    template, _ = Template.objects.get_or_create(name=fields["name"], defaults=fields)
    return template


@pytest.fixture
def marketer(client, marketing_group):
    """The test client, logged in as a staff member of the Marketing group (and nothing else)."""
    from django.contrib.auth.models import User

    user = User.objects.create_user("mia", password="pw", is_staff=True)
    user.groups.add(marketing_group)
    client.force_login(user)
    return client


# --- Redis ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_redis():
    """Forget journals, rate-limit slots and queued tasks between tests."""
    from notifier.redis import get_redis

    r = get_redis()
    keys = list(r.scan_iter("notifier:*"))
    if keys:
        r.delete(*keys)
    for queue in ("transactional", "campaigns", "digests", "maintenance"):
        r.delete(queue)
    yield


# --- Real Celery workers --------------------------------------------------------


def _database_url() -> str:
    from django.db import connection

    d = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{d['NAME']}"
    auth = d["USER"] or ""
    if d.get("PASSWORD"):
        auth += f":{d['PASSWORD']}"
    host = d["HOST"] or "127.0.0.1"
    port = d["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{d['NAME']}"


class WorkerProcess:
    """A ``celery worker`` subprocess bound to the test database."""

    def __init__(self, name: str, env_overrides: dict[str, str], queues: str, concurrency: int):
        self.name = name
        self.env_overrides = env_overrides
        self.queues = queues
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None
        # One file per test process: the PostgreSQL and SQLite passes run at once.
        self.log_path = ROOT / "var" / f"test-worker-{name}-{os.getpid()}.log"

    def start(self) -> "WorkerProcess":
        from config.celery import app
        from devtools.workers import worker_command

        env = {**os.environ, **self.env_overrides}
        self.log_path.parent.mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            worker_command(
                name=self.name,
                queues=self.queues,
                concurrency=self.concurrency,
                loglevel="INFO",
            ),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        hostname_prefix = f"{self.name}@"

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"Worker {self.name} exited; see {self.log_path}")
            replies = app.control.ping(timeout=0.5) or []
            return any(next(iter(r)).startswith(hostname_prefix) for r in replies)

        wait_for(answers, timeout=60, interval=0.3)
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, fake_esp_server, smtp_sink_server):
    """Environment for worker subprocesses: test DB, test Redis, the fakes."""
    controller, _handler = smtp_sink_server
    with django_db_blocker.unblock():
        database_url = _database_url()
    return {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "POSTMARK_API_URL": fake_esp_server.url,
        "POSTMARK_SERVER_TOKEN": ESP_TOKEN,
        "SMTP_HOST": controller.hostname,
        "SMTP_PORT": str(controller.port),
        "ESP_READ_TIMEOUT": "1.5",
        # Batch requests of five: the batch path with requests small enough
        # that a run is still going when a test presses Pause.
        "ESP_BATCH_SIZE": "5",
        "NOTIFIER_BACKOFF_BASE": "0.2",
        "NOTIFIER_BACKOFF_CAP": "1",
        "DB_CONN_MAX_AGE": "0",
    }


@pytest.fixture(scope="session")
def celery_worker_process(worker_env):
    """One long-lived worker on every queue, shared by the tests."""
    worker = WorkerProcess(
        "shared", worker_env, "transactional,campaigns,digests,maintenance", concurrency=2
    ).start()
    yield worker
    worker.stop()


@pytest.fixture
def start_worker(worker_env):
    """Start extra workers for one test (stopped afterwards)."""
    started: list[WorkerProcess] = []

    def start(name: str, queues: str = "transactional,campaigns,digests,maintenance", **env):
        worker = WorkerProcess(
            name, {**worker_env, **{k: str(v) for k, v in env.items()}}, queues, concurrency=1
        )
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()
