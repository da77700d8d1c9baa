"""A global rate limit per transport, shared by every worker through Redis.

Each caller reserves the next free slot (a GCRA-style "theoretical arrival
time" kept in one key) and sleeps until it. The clock is Redis's own, so
workers on different hosts agree.
"""

import time

from notifier.redis import get_redis

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return tostring(tat - now)
"""


def rate_limit_wait(*, transport: str, per_second: float) -> float:
    """Block until this process may send one message; return seconds waited."""
    if not per_second or per_second <= 0:
        return 0.0
    wait = float(get_redis().eval(_RESERVE, 1, f"notifier:rate:{transport}", str(per_second)))
    if wait > 0:
        time.sleep(wait)
    return wait
