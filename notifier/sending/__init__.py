"""The batch engine: claim, render, send and record a batch of Deliveries.

Invariants, in the order a batch meets them:

1. **Claim.** ``pending -> sending`` is one conditional UPDATE carrying a fresh
   claim token and a lease (``batch``).
2. **Hand-off.** Messages go over in requests: many per request on a
   transport with a batch API (``postmark``), one otherwise (``wire``).
   Before a request is handed over its ids are marked in the claim's Redis
   journal (``journal``; one round trip per request, carrying the answers of
   the request before); each answer replaces its mark. At most one batch
   request is in flight: a crash leaves at most one request in doubt.
   The database is written in bulk every ``FLUSH_EVERY`` outcomes
   (``persist``), so a batch of 500 costs a few queries, and a crash loses
   nothing: the sweeper replays the journal.
3. **Lease.** The batch renews its lease before it runs out; if the renewal
   finds its rows gone (the sweeper recovered them) it stops at once.
4. **Release.** Rows the batch did not hand over (paused run, lost claim,
   transport down) go back to ``pending`` before the task ends.

Modules: ``engine`` (one batch, ``deliveries_send_batch``), ``batch`` (claim,
lease, guard, release), ``wire`` (connections and sender threads),
``message`` (the one render path), ``outcomes`` (what an answer means and how
it changes a row), ``persist`` (bulk outcome writes per database),
``journal``, ``handoff`` (the hand-off mark in the database, for a journal
Redis lost), ``failover`` (transport health and routing), ``limits``,
``lookup``, ``ratelimit``, ``postmark`` (Postmark's batch API), ``smtp``
(Django's SMTP backend with command pipelining).
"""

from notifier.sending.engine import deliveries_send_batch

__all__ = ["deliveries_send_batch"]
