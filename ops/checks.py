from django.conf import settings
from django.core.checks import Error, Tags, register

METRICS_TOKEN_MIN_LENGTH = 20


@register(Tags.security, deploy=True)
def check_metrics_token(app_configs, **kwargs):
    """Without a token, /metrics (and /health/'s details) would be public."""
    if len(settings.METRICS_TOKEN) >= METRICS_TOKEN_MIN_LENGTH:
        return []
    problem = "is not set" if not settings.METRICS_TOKEN else "is too short"
    return [
        Error(
            f"METRICS_TOKEN {problem}: /metrics would answer anyone.",
            hint=f"Set METRICS_TOKEN to {METRICS_TOKEN_MIN_LENGTH}+ random characters "
            "and give it to Prometheus as a bearer token.",
            id="ops.E001",
        )
    ]
