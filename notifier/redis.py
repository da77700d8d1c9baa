"""The shared Redis client (journal of hand-offs, rate limits, flags)."""

import functools

import redis
from django.conf import settings


@functools.lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
