"""The hand-off journal: what a batch has handed to its transport.

A batch writes to the database in bulk (a few queries per batch, not one per
message), so after a crash the database alone cannot tell which claimed rows
had already been handed to the ESP. The journal, one Redis hash per claim,
can: before a message is handed over its row id is marked ``h``; when the
transport answers, the mark is replaced by the outcome. When a claim's lease
expires (the worker died), the sweeper reads the journal:

* no entry          -> never handed over: back to ``pending``, sent later;
* an outcome        -> applied as if the batch had written it;
* ``h``             -> handed over, answer unknown: ``unknown``, never resent
                       automatically (the in-doubt policy, see README).

The sweeper first sets ``__recovered__`` atomically; from then on the batch
(if it was only slow, not dead) can no longer mark a hand-off and stops, so a
row is never sent by both. If the whole journal is missing (Redis lost its
data) the database's hand-off mark decides (``handoff``): rows marked by the
claim are in doubt, the others never left and go back to ``pending``.
"""

import json
from collections.abc import Sequence

from notifier.redis import get_redis

JOURNAL_TTL_SECONDS = 7 * 24 * 3600

_HANDOFF = """
if redis.call('HEXISTS', KEYS[1], '__open__') == 1
   and redis.call('HEXISTS', KEYS[1], '__recovered__') == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 'h', unpack(ARGV, 2))
  return 1
end
return 0
"""

_RECOVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('HSET', KEYS[1], '__recovered__', '1')
return redis.call('HGETALL', KEYS[1])
"""

HANDED = "h"


_scripts: dict[str, object] = {}


def _run(source: str, token, args=()):
    """Run a Lua script by its SHA (EVALSHA; loaded once per server, not sent
    and hashed on every call) on the current Redis client."""
    client = get_redis()
    if source not in _scripts:
        _scripts[source] = client.register_script(source)
    return _scripts[source](keys=[_key(token)], args=list(args), client=client)


def _key(token) -> str:
    return f"notifier:journal:{token}"


def journal_open(token) -> None:
    r = get_redis()
    with r.pipeline() as pipe:
        pipe.hset(_key(token), "__open__", "1")
        pipe.expire(_key(token), JOURNAL_TTL_SECONDS)
        pipe.execute()


def journal_handoff(token, delivery_id: int, outcomes: Sequence[tuple[int, dict]] = ()) -> bool:
    """Record that ``delivery_id`` is about to be handed over, and the
    ``outcomes`` that came back since the last call with it (one round trip
    per message).

    False means the claim was recovered by the sweeper or the journal is gone:
    the batch must stop handing anything over.
    """
    args = [str(delivery_id)]
    for row_id, outcome in outcomes:
        args += [str(row_id), json.dumps(outcome)]
    return bool(_run(_HANDOFF, token, args))


def journal_record(token, outcomes: Sequence[tuple[int, dict]]) -> None:
    """Record answers that no later hand-off will carry (the batch's last)."""
    if outcomes:
        mapping = {str(row_id): json.dumps(outcome) for row_id, outcome in outcomes}
        get_redis().hset(_key(token), mapping=mapping)


def journal_recover(token) -> dict[int, str | dict] | None:
    """Freeze the claim and return its entries; None if the journal is lost."""
    raw = _run(_RECOVER, token)
    if raw is None:
        return None
    pairs = dict(zip(raw[::2], raw[1::2], strict=True))
    entries: dict[int, str | dict] = {}
    for field, value in pairs.items():
        if field.startswith("__"):
            continue
        entries[int(field)] = value if value == HANDED else json.loads(value)
    return entries


def journal_close(token) -> None:
    get_redis().delete(_key(token))
