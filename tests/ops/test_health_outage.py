"""The health endpoint follows real outages of Redis and PostgreSQL.

A production-like stack runs as subprocesses against private servers (see
``private_services``): gunicorn with the production settings, one Celery
worker on every queue, and one beat. Redis is stopped and started again, then
PostgreSQL; ``/health/`` must say unhealthy while each is down, name it, and
be healthy again once it is back, with no process restarted by hand.
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, wait_for
from tests.ops.private_services import PrivatePostgres, PrivateRedis, free_port
from tests.ops.production import manage, production_env

pytestmark = [pytest.mark.worker, pytest.mark.postgresql]

BIN = Path(sys.executable).parent


class Stack:
    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir = workdir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the subprocess
        self.procs[name] = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited; see {self.workdir / (name + '.log')}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def stack():
    workdir = Path(tempfile.mkdtemp(prefix="notifier-health-"))
    redis_server = PrivateRedis(workdir)
    postgres = PrivatePostgres()
    processes = None
    try:
        redis_server.start()
        postgres.init()
        postgres.start()
        postgres.create_database("notifier")
        port = free_port()
        env = production_env(
            DATABASE_URL=postgres.url("notifier"),
            REDIS_URL=redis_server.url,
            ALLOWED_HOSTS="127.0.0.1",
            STATIC_ROOT=str(workdir / "static"),
            DB_CONN_MAX_AGE="0",
            NOTIFIER_SWEEP_SECONDS="1",
            HEALTH_BEAT_MAX_AGE="10",
            METRICS_TOKEN=None,
            LOG_FORMAT="json",
        )
        processes = Stack(workdir, env)
        manage("migrate", "--noinput", env=env, check=True)
        manage("collectstatic", "--noinput", env=env, check=True)
        processes.start(
            "web",
            str(BIN / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--timeout",
            "30",
        )
        processes.start(
            "worker",
            str(BIN / "celery"),
            "-A",
            "config",
            "worker",
            "-Q",
            "transactional,campaigns,digests,maintenance",
            "-c",
            "1",
            "-n",
            "health@%h",
            "--loglevel",
            "INFO",
        )
        processes.start(
            "beat",
            str(BIN / "celery"),
            "-A",
            "config",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(workdir / "beat-schedule"),
            "--pidfile",
            str(workdir / "beat.pid"),
        )
        yield processes, f"http://127.0.0.1:{port}", redis_server, postgres
    finally:
        if processes is not None:
            processes.stop()
        redis_server.stop()
        postgres.destroy()


def _health(base: str) -> tuple[int, dict]:
    try:
        response = requests.get(f"{base}/health/", timeout=15)
    except requests.RequestException:
        return 0, {}
    return response.status_code, response.json()


def _wait_health(processes: Stack, base: str, healthy: bool, timeout: float = 120) -> dict:
    def check():
        processes.check_running()
        status, body = _health(base)
        if healthy and status == 200:
            return body
        if not healthy and status == 503:
            return body
        return None

    return wait_for(check, timeout=timeout, interval=0.5)


def test_health_goes_red_and_green_with_redis_and_postgres(stack):
    processes, base, redis_server, postgres = stack

    body = _wait_health(processes, base, healthy=True)
    assert set(body["checks"]) == {"database", "broker", "workers", "beat"}
    assert all(check["ok"] for check in body["checks"].values())
    # Liveness does not depend on anything; static files are served in production.
    assert requests.get(f"{base}/health/live/", timeout=5).status_code == 200
    behind_tls_proxy = {"X-Forwarded-Proto": "https"}
    css = requests.get(f"{base}/static/admin/css/base.css", headers=behind_tls_proxy, timeout=5)
    assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]

    redis_server.stop()
    body = _wait_health(processes, base, healthy=False)
    assert not body["checks"]["broker"]["ok"]
    assert body["checks"]["database"]["ok"]

    redis_server.start()  # empty: no persistence, the heartbeat is gone too
    body = _wait_health(processes, base, healthy=True)
    assert body["status"] == "ok"

    postgres.stop()
    body = _wait_health(processes, base, healthy=False)
    assert not body["checks"]["database"]["ok"]
    assert body["checks"]["broker"]["ok"]

    postgres.start()
    body = _wait_health(processes, base, healthy=True)
    assert body["status"] == "ok"
    processes.check_running()  # every process lived through both outages
