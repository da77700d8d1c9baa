"""The hand-off journal: what a batch has handed to its transport.

A batch writes to the database in bulk (a few queries per batch, not one per
message), so after a crash the database alone cannot tell which claimed rows
had already been handed to the ESP. The journal, one Redis hash per claim,
can: before a request is handed over the ids of its rows are marked ``h``
(one message, or all the messages of one batch request, in one round trip
that also records the answers that came back since); when the transport
answers, each mark is replaced by its row's outcome. When a claim's lease
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

# ARGV: the answers as (row id, outcome) pairs, then the ids to mark handed.
# Pairs go first (the ids last) so no call needs more than one unpack().
_HANDOFF = """
if redis.call('HEXISTS', KEYS[1], '__open__') == 1
   and redis.call('HEXISTS', KEYS[1], '__recovered__') == 0 then
  local fields = {}
  local n = tonumber(ARGV[1])
  for i = 2, 2 * n + 1 do fields[#fields + 1] = ARGV[i] end
  for i = 2 * n + 2, #ARGV do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = 'h'
  end
  redis.call('HSET', KEYS[1], unpack(fields))
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


def journal_handoff(
    token, delivery_ids: Sequence[int], outcomes: Sequence[tuple[int, dict]] = ()
) -> bool:
    """Record that ``delivery_ids`` (one request) are about to be handed
    over, and the ``outcomes`` that came back since the last call (one round
    trip per request).

    False means the claim was recovered by the sweeper or the journal is gone:
    the batch must stop handing anything over.
    """
    args = [str(len(outcomes))]
    for row_id, outcome in outcomes:
        args += [str(row_id), json.dumps(outcome)]
    args += [str(delivery_id) for delivery_id in delivery_ids]
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
