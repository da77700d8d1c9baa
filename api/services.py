"""Tokens, rate limits and idempotency for the HTTP API."""

import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from api.models import ApiToken, IdempotencyRecord
from notifier.redis import get_redis

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "ntf_"
# last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- Tokens ---------------------------------------------------------------------


def api_token_create(
    *, service: str, description: str = "", rate_limit_per_minute: int | None = None
) -> tuple[ApiToken, str]:
    """Create a token; returns it and its secret (shown once, never stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        service=service,
        description=description,
        rate_limit_per_minute=rate_limit_per_minute,
        key_prefix=secret[:12],
        key_hash=_hash(secret),
    )
    return token, secret


def api_tokens_revoke(*, ids: list[int]) -> int:
    return ApiToken.objects.filter(id__in=ids, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def api_token_authenticate(*, secret: str) -> ApiToken | None:
    """The active token with this secret, or None. Looked up by hash: the
    secret never reaches the database, and equal hashes mean equal secrets."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = ApiToken.objects.filter(key_hash=_hash(secret), revoked_at__isnull=True).first()
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- Rate limit -----------------------------------------------------------------

# A fixed one-minute window per token, counted in Redis so every web process
# shares it. Returns the count so far and the seconds left in the window.
_TAKE = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
RATE_WINDOW_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class RateLimit:
    limit: int
    remaining: int
    retry_after: int | None  # seconds, when over the limit


def api_rate_limit_take(*, token: ApiToken) -> RateLimit:
    """Count one request against ``token``'s limit.

    If Redis cannot be reached the request is let through (and logged): the
    API writes to the outbox in PostgreSQL, and the sweeper dispatches what
    could not be queued, so refusing would only lose mail.
    """
    limit = token.rate_limit_per_minute or settings.API_RATE_LIMIT_PER_MINUTE
    try:
        count, ttl = get_redis().eval(
            _TAKE, 1, f"notifier:api:rate:{token.pk}", RATE_WINDOW_SECONDS
        )
    except Exception:
        logger.warning("Rate limit unavailable (Redis); letting the request through", exc_info=True)
        return RateLimit(limit=limit, remaining=limit, retry_after=None)
    count, ttl = int(count), max(1, int(ttl))
    return RateLimit(
        limit=limit,
        remaining=max(0, limit - count),
        retry_after=ttl if count > limit else None,
    )


# --- Idempotency ----------------------------------------------------------------


def request_fingerprint(*, method: str, path: str, body: object) -> str:
    """Hash of what the request asks for: key order and spacing do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _hash(f"{method} {path}\n{canonical}")


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: dict
    replayed: bool = False


class IdempotencyConflict(Exception):
    pass


def idempotent_call(
    *, service: str, key: str | None, fingerprint: str, handler: Callable[[], Answer]
) -> Answer:
    """Run ``handler`` once per (service, key); replay its first success.

    The record is inserted before the handler runs and in the same
    transaction: a concurrent request with the same key waits on the unique
    index until the first commits, then replays its answer (or, if the first
    failed and rolled back, does the work itself). Failed answers are not
    kept, so a corrected request may reuse the key. Raises
    ``IdempotencyConflict`` when the key was used for another request.
    """
    if key is None:
        return handler()
    expired = timezone.now() - timedelta(hours=settings.API_IDEMPOTENCY_HOURS)
    IdempotencyRecord.objects.filter(service=service, key=key, created_at__lt=expired).delete()
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    service=service, key=key, request_hash=fingerprint
                )
        except IntegrityError:
            existing = IdempotencyRecord.objects.get(service=service, key=key)
            if existing.request_hash != fingerprint:
                raise IdempotencyConflict(
                    "This Idempotency-Key was already used with a different request."
                ) from None
            return Answer(status=existing.status_code, body=existing.response, replayed=True)
        answer = handler()
        if answer.status >= 300:
            transaction.set_rollback(True)
            return answer
        record.status_code = answer.status
        record.response = answer.body
        record.save(update_fields=["status_code", "response"])
        return answer
