"""Who may read the operators' endpoints in full (``/metrics``, ``/health/`` details)."""

import hmac
import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def has_metrics_token(request) -> bool:
    """The request carries ``Authorization: Bearer <METRICS_TOKEN>`` (a token is set)."""
    token = settings.METRICS_TOKEN
    if not token:
        return False
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(supplied.encode(), token.encode())


def is_operator(request) -> bool:
    """The METRICS_TOKEN bearer, or a logged-in staff member.

    Never raises: with the database down the session cannot be read, and the
    caller is then treated as anonymous (health must still answer).
    """
    if has_metrics_token(request):
        return True
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return False
    try:
        user = request.user
        return bool(user.is_authenticated and user.is_staff)
    except Exception:
        logger.warning("Could not read the session of a health probe", exc_info=True)
        return False
