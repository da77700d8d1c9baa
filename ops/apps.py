from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Celery signal handlers: each worker serves its own /metrics.
        from ops import checks, worker_metrics  # noqa: F401  (checks: registers them)
