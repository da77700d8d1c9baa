"""The client address django-axes counts failed admin logins against."""

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or the address the outermost of ``LOGIN_PROXY_COUNT`` proxies saw.

    Only the proxies' own entries in X-Forwarded-For are trusted (counted from
    the right); whatever the client put there itself is ignored, so it cannot
    dodge the lockout by sending a new address each time.
    """
    hops = settings.LOGIN_PROXY_COUNT
    if hops:
        forwarded = [
            part.strip()
            for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR")
