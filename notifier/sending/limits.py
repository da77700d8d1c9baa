"""Provider limits beyond messages per second, shared by every worker in Redis.

* **Daily quota** per transport (``DAILY_QUOTA``), and a **warm-up ramp** for
  a new sending domain (``WARMUP``: a list of daily caps from ``WARMUP_START``;
  after the list ends the quota applies). Days are UTC days. Each hand-off
  takes one unit from the day's counter; when the day is used up the row waits
  in the database (``pending``, due at the next UTC midnight) and is not
  counted as an attempt.
* **Per recipient domain** (``NOTIFIER_DOMAIN_RATES``, e.g. gmail.com: 20/s):
  a shared slot schedule per domain. A row whose slot is less than
  ``DOMAIN_MAX_WAIT`` away waits in the batch; one further away waits in the
  database until its slot, so one slow domain never holds the others back.

Nothing waits in a Celery countdown: deferred rows are due again in the
database and the sweeper dispatches them.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings

from notifier.redis import get_redis

# A row whose domain slot is further away than this waits in the database.
DOMAIN_MAX_WAIT = 1.0

_TAKE = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], 172800) end
if used > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
"""

_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return tostring(-wait) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return tostring(wait)
"""


@dataclass(frozen=True)
class Deferral:
    """Not now: due again at ``until`` (why, in words)."""

    until: datetime
    reason: str


def daily_cap(transport: str, *, today: date) -> int | None:
    """The most messages ``transport`` may take on ``today`` (None: no cap)."""
    config = settings.NOTIFIER_TRANSPORTS.get(transport, {})
    ramp, start = config.get("WARMUP") or [], config.get("WARMUP_START")
    if ramp and start is not None and today >= start:
        day = (today - start).days
        if day < len(ramp):
            return int(ramp[day])
    quota = config.get("DAILY_QUOTA") or 0
    return int(quota) if quota > 0 else None


def _next_midnight(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


def quota_take(transport: str, *, now: datetime) -> Deferral | None:
    """Take one message from today's quota of ``transport`` (None: taken)."""
    today = now.astimezone(UTC).date()
    cap = daily_cap(transport, today=today)
    if cap is None:
        return None
    key = f"notifier:quota:{transport}:{today.isoformat()}"
    if get_redis().eval(_TAKE, 1, key, str(cap)):
        return None
    return Deferral(
        _next_midnight(now),
        f"Waiting: the daily limit of {cap} messages on {transport!r} is reached for {today}.",
    )


def slot_reserve(key: str, *, per_second: float, max_wait: float) -> float:
    """Reserve the next send slot of ``key`` (GCRA: one "theoretical arrival
    time" in Redis, Redis's own clock) if it is at most ``max_wait`` seconds
    away. Returns the seconds until it, or minus that when not reserved."""
    return float(get_redis().eval(_SLOT, 1, key, str(per_second), str(max_wait)))


def domain_slot(email: str, *, now: datetime) -> tuple[float, Deferral | None]:
    """Reserve a send slot for ``email``'s domain. Returns (seconds to wait
    here, None), or (0, a Deferral) when the slot is too far away."""
    domain = email.rsplit("@", 1)[-1].lower()
    per_second = settings.NOTIFIER_DOMAIN_RATES.get(domain)
    if not per_second:
        return 0.0, None
    wait = float(
        get_redis().eval(
            _SLOT, 1, f"notifier:domain-rate:{domain}", str(per_second), DOMAIN_MAX_WAIT
        )
    )
    if wait >= 0:
        return wait, None
    return 0.0, Deferral(
        now + timedelta(seconds=-wait),
        f"Waiting: {domain} takes at most {per_second:g} messages per second from us.",
    )
