"""Beat's heartbeat: the sweeper (scheduled by beat every few seconds) stamps
a Redis key each time it runs. A stale stamp means beat is not scheduling (or
no worker consumes the ``maintenance`` queue). Times are Redis's own clock, so
hosts with skewed clocks agree.
"""

from notifier.redis import get_redis

BEAT_KEY = "notifier:heartbeat:beat"
# The stamp outlives any sensible HEALTH_BEAT_MAX_AGE, then disappears.
BEAT_KEY_TTL_SECONDS = 24 * 3600


def _redis_now(client) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def beat_heartbeat_record() -> None:
    client = get_redis()
    client.set(BEAT_KEY, repr(_redis_now(client)), ex=BEAT_KEY_TTL_SECONDS)


def beat_heartbeat_age() -> float | None:
    """Seconds since the sweeper last ran, or None if it never stamped."""
    client = get_redis()
    stamp = client.get(BEAT_KEY)
    if stamp is None:
        return None
    return max(0.0, _redis_now(client) - float(stamp))
