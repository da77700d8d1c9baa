"""Health endpoints for load balancers and orchestrators.

``/health/`` (readiness) runs every check at once and answers 200 when all
pass, 503 otherwise, with one entry per check::

    {"status": "ok", "checks": {"database": {"ok": true}, ...}}

The checks' errors and timings are shown only to an operator (a staff
session or the ``METRICS_TOKEN`` bearer, as for ``/metrics``). Each web
process runs the checks at most once per ``HEALTH_CACHE_SECONDS``: callers
in the meantime get the last report, and callers arriving while a run is in
progress wait for it, so a burst of probes costs one Celery broadcast.

``/health/live/`` (liveness) only says the web process answers: restarting a
web process because PostgreSQL is down would not help.

When every check passes but a campaign run failed to launch or stalled, the
answer is still 200 with ``"status": "degraded"`` and ``problems``: for an
operator a list naming each run and the reason, for others how many.

Checks come from django-health-check (database, Redis ping, Celery ping
with "every queue has a consumer") plus the beat heartbeat below.
"""

import asyncio
import dataclasses
import datetime
import threading
import time

import redis.asyncio
from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from health_check.base import HealthCheck
from health_check.checks import Database
from health_check.contrib.celery import Ping
from health_check.contrib.redis import Redis
from health_check.exceptions import ServiceUnavailable

from notifier.heartbeat import beat_heartbeat_age
from ops.access import is_operator


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


async def _run_checks() -> dict:
    checks = health_checks()
    results = await asyncio.gather(*(check.get_result() for _, check in checks))
    return {
        name: {
            "ok": result.error is None,
            "error": None if result.error is None else str(result.error),
            "seconds": round(result.time_taken, 3),
        }
        for (name, _), result in zip(checks, results, strict=True)
    }


_report_lock = threading.Lock()
_last_report: tuple[float, dict] | None = None  # (time.monotonic() taken, report)


def health_report() -> dict:
    """The checks' report, run at most once per HEALTH_CACHE_SECONDS per process."""
    global _last_report
    with _report_lock:
        if _last_report is not None:
            taken, report = _last_report
            if time.monotonic() - taken < settings.HEALTH_CACHE_SECONDS:
                return report
        report = async_to_sync(_run_checks)()
        if all(entry["ok"] for entry in report.values()):
            report["problems"] = _run_problems()
        _last_report = (time.monotonic(), report)
        return report


@never_cache
def health(request):
    """Readiness: JSON only, 503 when any check fails."""
    report = dict(health_report())
    problems = report.pop("problems", [])
    healthy = all(entry["ok"] for entry in report.values())
    if not is_operator(request):
        report = {name: {"ok": entry["ok"]} for name, entry in report.items()}
    body = {"status": "ok" if healthy else "unhealthy", "checks": report}
    if healthy and problems:
        # Serving works but some work does not progress: say so without
        # taking the web tier out of the load balancer; operators see which
        # runs and why.
        body["status"] = "degraded"
        body["problems"] = problems if is_operator(request) else len(problems)
    return JsonResponse(body, status=200 if healthy else 503)


def _run_problems() -> list[dict]:
    from campaigns.selectors import runs_with_problems

    return [
        {
            "run": run.pk,
            "campaign": run.campaign.name,
            "problem": run.problem,
            "reason": f"{run.get_problem_display()}: {run.problem_detail}",
            "since": run.problem_since.isoformat() if run.problem_since else None,
            "attempts": run.problem_count,
        }
        for run in runs_with_problems()[:20]
    ]


def live(request):
    return JsonResponse({"status": "ok"})
