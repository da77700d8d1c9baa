"""Health endpoints for load balancers and orchestrators.

``/health/`` (readiness) runs every check at once and answers 200 when all
pass, 503 otherwise, with one entry per check::

    {"status": "ok", "checks": {"database": {"ok": true, "error": null}, ...}}

``/health/live/`` (liveness) only says the web process answers: restarting a
web process because PostgreSQL is down would not help.

Checks come from django-health-check (database, Redis ping, Celery ping
with "every queue has a consumer") plus the beat heartbeat below.
"""

import asyncio
import dataclasses
import datetime

import redis.asyncio
from django.conf import settings
from django.http import JsonResponse
from health_check.base import HealthCheck
from health_check.checks import Database
from health_check.contrib.celery import Ping
from health_check.contrib.redis import Redis
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView

from notifier.heartbeat import beat_heartbeat_age


@dataclasses.dataclass
class BeatHeartbeat(HealthCheck):
    """Beat is alive when the sweeper it schedules ran recently."""

    max_age: float = 60.0
    timeout = datetime.timedelta(seconds=3)

    def run(self) -> None:
        try:
            age = beat_heartbeat_age()
        except Exception as exc:
            raise ServiceUnavailable(f"Cannot read the beat heartbeat: {type(exc).__name__}")
        if age is None:
            raise ServiceUnavailable("The sweeper has not run: is exactly one beat running?")
        if age > self.max_age:
            raise ServiceUnavailable(
                f"The sweeper last ran {age:.0f}s ago (limit {self.max_age:.0f}s): "
                "beat or the maintenance worker is down"
            )


def _redis_client(url: str):
    def factory():
        return redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    return factory


def health_checks() -> list[tuple[str, HealthCheck]]:
    from config.celery import app

    checks: list[tuple[str, HealthCheck]] = [
        ("database", Database()),
        ("broker", Redis(client_factory=_redis_client(settings.CELERY_BROKER_URL))),
    ]
    if settings.REDIS_URL != settings.CELERY_BROKER_URL:
        checks.append(("redis", Redis(client_factory=_redis_client(settings.REDIS_URL))))
    checks += [
        (
            "workers",
            Ping(app=app, timeout=datetime.timedelta(seconds=settings.HEALTH_WORKER_TIMEOUT)),
        ),
        ("beat", BeatHeartbeat(max_age=float(settings.HEALTH_BEAT_MAX_AGE))),
    ]
    return checks


class HealthView(HealthCheckView):
    """Readiness: JSON only, 503 when any check fails."""

    async def get(self, request, *args, **kwargs):
        checks = health_checks()
        with self.get_executor() as executor:
            results = await asyncio.gather(*(check.get_result(executor) for _, check in checks))
        report = {
            name: {
                "ok": result.error is None,
                "error": None if result.error is None else str(result.error),
                "seconds": round(result.time_taken, 3),
            }
            for (name, _), result in zip(checks, results, strict=True)
        }
        healthy = all(entry["ok"] for entry in report.values())
        return JsonResponse(
            {"status": "ok" if healthy else "unhealthy", "checks": report},
            status=200 if healthy else 503,
        )


def live(request):
    return JsonResponse({"status": "ok"})
