"""Hourly, daily and weekly digests: finding who is due, and building one email each.

``windows`` names each digest and its cutoff, ``scheduling`` finds who is due
and fans the builds out, ``building`` writes (and sends) them, ``entries``
renders their content, ``send_now`` is staff's button.

Each event is in exactly one digest, and no digest is sent twice:

* A digest is named ``digest:<frequency>:<recipient id>:<window>`` (the hour,
  in UTC; the recipient's local date; the ISO week of their local weekly
  digest day), the unique idempotency key of its
  Delivery. A run triggered twice for one window, or a task redelivered after
  its worker died, finds the key and builds nothing again.
* A window has a cutoff (the top of the hour; the recipient's local digest
  time that day; their weekly day and time): notifications created after it wait for the next digest,
  whenever the task happens to run.
* The build locks the recipients' pending notifications (``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL), creates the digest Deliveries and marks the
  notifications included (``digest``, ``included_at``) in ONE transaction. A
  worker killed before the commit leaves everything pending for the
  redelivered task; one killed after it leaves the digest built.
* The Deliveries are sent after the commit, by the build task itself
  (marked dispatched first, then sent through the batch engine like any
  batch: building and sending overlap across the workers), or dispatched
  as batch tasks when built inside a caller's transaction. If the worker
  dies before marking them, the redelivered task sends them; after, the
  sweeper recovers them. A digest built inside the recipient's quiet hours
  is due at their end instead and left to the sweeper.
* Each digest's sections are rendered once, when it is built, into its
  context (``entries.digest_body``); the sender renders the frame around
  them, the same sources for every digest.
"""

from notifier.services.digests.building import digests_build
from notifier.services.digests.entries import (
    DIGEST_HTML,
    DIGEST_SUBJECT,
    DIGEST_TEXT,
    digest_context,
)
from notifier.services.digests.scheduling import DigestBatch, digest_batches_due, digests_run
from notifier.services.digests.send_now import digests_send_now
from notifier.services.digests.windows import (
    DIGEST_FREQUENCIES,
    daily_windows,
    digest_key,
    hourly_window,
    known_zones,
    weekly_window,
)

__all__ = [
    "DIGEST_FREQUENCIES",
    "DIGEST_HTML",
    "DIGEST_SUBJECT",
    "DIGEST_TEXT",
    "DigestBatch",
    "daily_windows",
    "digest_batches_due",
    "digest_context",
    "digest_key",
    "digests_build",
    "digests_run",
    "digests_send_now",
    "hourly_window",
    "known_zones",
    "weekly_window",
]
