"""Failover between transports: a health state shared in Redis, and routing.

**Health.** A transport that fails at connection level, times out or answers
5xx (``Outcome.fault``) with no good answer in between for
``NOTIFIER_FAILOVER_AFTER`` seconds is marked **down** for every worker (one
Redis hash per transport: since when, and why). A good answer (accepted, or
one message refused) ends a failing streak. A down transport gets no traffic:
the beat task ``notifier.probe_transports`` (every
``NOTIFIER_FAILOVER_PROBE_SECONDS``) probes it (``PROBE`` in
NOTIFIER_TRANSPORTS: Postmark's message search for the ESP, opening a
connection for SMTP) and marks it up when the probe succeeds. Every change is
logged (a warning when down, info when up) and counted for ``/metrics``.

**Routing.** A batch routes its rows before it sends (``Failover.route``):

* rows of a transport that is up stay where they are;
* rows of a down transport that were never tried (``attempts == 0``: no
  answer and no hand-off ever recorded for them) move to the first transport
  of its chain that is up: the UPDATE that releases them to ``pending`` also
  writes their new ``transport`` and why, and they are dispatched again;
* a row that was tried once (handed over, or any answer) never moves: it
  waits in the database (deferred, not an attempt) until its own transport
  is probed back up. So does every row when no transport of the chain is up.

The chain of a transport is its ``FALLBACK`` list, or else the transports
with a ``PRIORITY`` after its own, in priority order; one with neither never
fails over (its rows wait for it).
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests
from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from notifier.models import Delivery
from notifier.redis import get_redis
from notifier.sending.outcomes import DEFER, FAILED, SENT, Outcome
from notifier.sending.persist import OutcomeLog, with_reconnect
from notifier.sending.wire import transport_connection

logger = logging.getLogger(__name__)

_FAILED = """
local now = tonumber(ARGV[1])
local after = tonumber(ARGV[2])
local since = tonumber(redis.call('HGET', KEYS[1], 'failing_since') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last_failure') or '0')
if since == 0 or now - last > after then
  since = now
  redis.call('HSET', KEYS[1], 'failing_since', ARGV[1])
end
redis.call('HSET', KEYS[1], 'last_failure', ARGV[1], 'last_error', ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'down_since') == 0 and now - since >= after then
  redis.call('HSET', KEYS[1], 'down_since', ARGV[1], 'reason', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'changes', 1)
  return 1
end
return 0
"""

_UP = """
local was_down = redis.call('HEXISTS', KEYS[1], 'down_since')
redis.call('HDEL', KEYS[1], 'failing_since', 'last_failure', 'last_error', 'down_since', 'reason')
if was_down == 1 then
  redis.call('HSET', KEYS[1], 'up_since', ARGV[1], 'up_reason', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'changes', 1)
  return 1
end
return 0
"""

_PROBED = """
if redis.call('HEXISTS', KEYS[1], 'down_since') == 1 then
  redis.call('HSET', KEYS[1], 'probed_at', ARGV[1], 'probe_error', ARGV[2])
end
"""


def _key(transport: str) -> str:
    return f"notifier:transport:{transport}"


def _when(value) -> datetime | None:
    return datetime.fromtimestamp(float(value), tz=UTC) if value else None


@dataclass(frozen=True)
class TransportState:
    """What every worker knows about one transport (read from Redis)."""

    name: str
    up: bool
    since: datetime | None  # down since, or up since its last recovery
    reason: str  # why it is down, or how it came back
    failing_since: datetime | None  # a failing streak, not yet long enough
    last_error: str
    probed_at: datetime | None
    probe_error: str
    changes: int
    chain: tuple[str, ...]

    @classmethod
    def from_hash(cls, name: str, data: dict) -> "TransportState":
        down = bool(data.get("down_since"))
        return cls(
            name=name,
            up=not down,
            since=_when(data.get("down_since") if down else data.get("up_since")),
            reason=data.get("reason" if down else "up_reason", ""),
            failing_since=_when(data.get("failing_since")),
            last_error=data.get("last_error", ""),
            probed_at=_when(data.get("probed_at")),
            probe_error=data.get("probe_error", ""),
            changes=int(data.get("changes") or 0),
            chain=fallback_chain(name),
        )


def fallback_chain(transport: str) -> tuple[str, ...]:
    """Where rows of ``transport`` go when it is down, in order."""
    configured = settings.NOTIFIER_TRANSPORTS
    config = configured.get(transport, {})
    if config.get("FALLBACK"):
        return tuple(
            name for name in config["FALLBACK"] if name in configured and name != transport
        )
    own = config.get("PRIORITY")
    if own is None:
        return ()
    later = [
        (c["PRIORITY"], name)
        for name, c in configured.items()
        if name != transport and c.get("PRIORITY") is not None and c["PRIORITY"] > own
    ]
    return tuple(name for _, name in sorted(later))


def transport_states() -> dict[str, TransportState]:
    """The state of every configured transport (one Redis round trip)."""
    names = list(settings.NOTIFIER_TRANSPORTS)
    with get_redis().pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(_key(name))
        hashes = pipe.execute()
    return {
        name: TransportState.from_hash(name, data) for name, data in zip(names, hashes, strict=True)
    }


def transport_failed(transport: str, reason: str, *, now: float | None = None) -> bool:
    """Count a connection failure, timeout or 5xx of ``transport``; True
    when this marked it down."""
    now = time.time() if now is None else now
    went_down = bool(
        get_redis().eval(
            _FAILED,
            1,
            _key(transport),
            repr(now),
            str(settings.NOTIFIER_FAILOVER_AFTER),
            reason[:500],
        )
    )
    if went_down:
        logger.warning(
            "Transport %s is DOWN (failing for %ss; fallback: %s): %s",
            transport,
            settings.NOTIFIER_FAILOVER_AFTER,
            ", ".join(fallback_chain(transport)) or "none, its rows wait",
            reason,
        )
    return went_down


def transport_ok(transport: str, how: str, *, now: float | None = None) -> bool:
    """``transport`` answered well (or passed a probe): end its failing
    streak; True when this brought it back up."""
    now = time.time() if now is None else now
    came_up = bool(get_redis().eval(_UP, 1, _key(transport), repr(now), how[:500]))
    if came_up:
        logger.warning("Transport %s is UP again: %s", transport, how)
    return came_up


# --- Probes -------------------------------------------------------------------


def connection_probe(transport: str) -> None:
    """Open a connection and close it (SMTP: connect, EHLO, login)."""
    conn = transport_connection(transport)
    conn.open()
    conn.close()


def postmark_probe(transport: str) -> None:
    """Ask Postmark's message search for nothing: a 200 says the API answers."""
    anymail = settings.ANYMAIL
    url = anymail.get("POSTMARK_API_URL", "https://api.postmarkapp.com/").rstrip("/")
    response = requests.get(
        f"{url}/messages/outbound",
        params={"count": 1, "offset": 0},
        headers={
            "Accept": "application/json",
            "X-Postmark-Server-Token": anymail.get("POSTMARK_SERVER_TOKEN", ""),
        },
        timeout=anymail.get("REQUESTS_TIMEOUT", (5, 20)),
    )
    if response.status_code != 200:
        raise RuntimeError(f"Postmark's API answered {response.status_code}.")


def transports_probe(*, now: float | None = None) -> dict[str, str]:
    """Beat: probe each transport that is down; returns {name: "up" | "down"}."""
    results = {}
    for name, state in transport_states().items():
        if state.up:
            continue
        config = settings.NOTIFIER_TRANSPORTS[name]
        probe = import_string(config["PROBE"]) if config.get("PROBE") else connection_probe
        try:
            probe(name)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            get_redis().eval(_PROBED, 1, _key(name), repr(time.time()), error)
            results[name] = "down"
            continue
        transport_ok(name, "A probe succeeded.", now=now)
        results[name] = "up"
    return results


# --- The batch's side ------------------------------------------------------------


class Failover:
    """One batch's view: routes its rows, reports what its transports answer."""

    def __init__(self, token, log: OutcomeLog):
        self.token = token
        self.log = log
        self.failing: set[str] = set()  # streaks a good answer should end
        # The last fault recorded and what it decided: the rows of one failed
        # request all carry it, and it is recorded once (one Redis call).
        self.last_fault: tuple | None = None
        self.last_verdict = False

    def route(self, by_transport: dict[str, list[Delivery]]) -> dict[str, list[Delivery]]:
        """The rows to send now, by transport; the rest are moved or wait."""
        try:
            states = transport_states()
        except Exception:
            logger.warning("Transport states unreadable; sending as routed", exc_info=True)
            return by_transport
        self.failing = {name for name, s in states.items() if not s.up or s.failing_since}
        keep = {}
        for transport, rows in by_transport.items():
            state = states.get(transport)
            if state is None or state.up:
                keep[transport] = rows
            else:
                self._reroute(state, rows, states)
        return keep

    def connection_failed(
        self, transport: str, rows: list[Delivery], exc: Exception
    ) -> list[Delivery]:
        """No connection to ``transport`` could be opened (nothing was handed
        over). Returns the rows to retry later; none if it is now down (they
        were rerouted)."""
        reason = f"Could not connect: {type(exc).__name__}: {exc}"
        try:
            if not transport_failed(transport, reason):
                return rows
            states = transport_states()
        except Exception:
            logger.warning("Transport states unreadable", exc_info=True)
            return rows
        self._reroute(states[transport], rows, states)
        return []

    def answered(self, transport: str, outcome: Outcome) -> bool:
        """Note what ``transport`` answered; True when the batch must hand
        nothing more over to it (it refused the connection, or is now down)."""
        try:
            if outcome.fault:
                fault = (transport, outcome.fault, outcome.error)
                if fault == self.last_fault:
                    return self.last_verdict
                self.failing.add(transport)
                went_down = transport_failed(transport, outcome.error or outcome.fault)
                self.last_fault, self.last_verdict = fault, went_down or outcome.fault == "connect"
                return self.last_verdict
            self.last_fault = None
            if outcome.status in (SENT, FAILED) and transport in self.failing:
                self.failing.discard(transport)
                transport_ok(transport, "It answered a message again.")
        except Exception:
            logger.warning("Could not record the health of %s", transport, exc_info=True)
        return False

    def _reroute(self, state: TransportState, rows: list[Delivery], states: dict) -> None:
        target = next((name for name in state.chain if states[name].up), None)
        since = f"{state.since:%Y-%m-%d %H:%M:%S} UTC" if state.since else "now"
        movable = [row for row in rows if target and row.attempts == 0]
        waiting = [row for row in rows if row not in movable]
        if movable:
            self._move(
                movable,
                target,
                f"Moved from {state.name!r} to {target!r}: "
                f"{state.name!r} is down since {since} ({state.reason})"[:500],
            )
        until = timezone.now() + timedelta(seconds=settings.NOTIFIER_FAILOVER_PROBE_SECONDS)
        for row in waiting:
            why = (
                "it was handed over before, so it never moves to another transport"
                if row.attempts
                else "no other transport is up"
            )
            error = f"Waiting: transport {state.name!r} is down since {since}; {why}."
            self.log.finish_row(
                row, Outcome(DEFER, error=error[:500], not_before=until.isoformat())
            )

    def _move(self, rows: list[Delivery], target: str, why: str) -> None:
        from notifier.services.dispatch import deliveries_dispatch, group_by_kind

        ids = [row.id for row in rows]
        now = timezone.now()
        moved = with_reconnect(
            lambda: Delivery.objects.filter(
                id__in=ids, claim_token=self.token, status=Delivery.Status.SENDING
            ).update(
                status=Delivery.Status.PENDING,
                transport=target,
                status_reason=why,
                claim_token=None,
                lease_expires_at=None,
                dispatched_at=None,
                next_attempt_at=now,
                updated_at=now,
            )
        )
        self.log.finished_ids.update(ids)
        self.log.count("moved", moved)
        logger.info("%d rows %s", moved, why)
        try:
            deliveries_dispatch(ids_by_kind=group_by_kind((row.id, row.kind) for row in rows))
        except Exception:  # the sweeper dispatches them
            logger.warning("Could not dispatch moved rows", exc_info=True)
