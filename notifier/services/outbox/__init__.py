"""The outbox of grouped mail: the only writer of DeliveryGroup rows and of
the Delivery rows of a group (a campaign run) outside the sending engine.

* ``delivery_group_open``     the group a run sends with (its shared context)
* ``deliveries_materialise``  one Delivery per audience member, set-based:
                              one ``INSERT ... SELECT ... ON CONFLICT DO
                              NOTHING``; the audience never enters Python;
                              each row due at once, or when its recipient's
                              time zone says (``DueByZone``)
* ``delivery_group_due_at_best_hours``  each untouched row at its
                              recipient's best local hour (send-time insight)
* ``delivery_group_pause``    hold the pending rows (``next_attempt_at =
                              NULL``: neither a batch nor the sweeper claims
                              them); batches in flight see the state and hand
                              theirs back the same way
* ``delivery_group_resume``   make the held rows due again
* ``delivery_group_cancel``   cancel the pending rows
* ``deliveries_retry``        staff: send chosen failed / in-doubt rows again
* ``delivery_group_release_held``  rows a batch held after a resume, due again
* ``deliveries_insert_keyed`` rows that each carry their own idempotency key
                              (digests), many in one statement, what they
                              share sent once
* ``deliveries_analyze``      refresh the table statistics after a big launch

The owner (campaigns) keeps its own state and fans the due rows out; a
group's state is what the sending engine reads, through notifier's own table.
"""

from notifier.services.outbox.best_hours import delivery_group_due_at_best_hours
from notifier.services.outbox.groups import (
    DueByZone,
    delivery_group_cancel,
    delivery_group_open,
    delivery_group_pause,
    delivery_group_release_held,
    delivery_group_resume,
)
from notifier.services.outbox.keyed import deliveries_insert_keyed
from notifier.services.outbox.materialise import deliveries_analyze, deliveries_materialise
from notifier.services.outbox.retry import (
    RETRY_KINDS,
    RETRY_REASON,
    deliveries_retry,
    retry_selection,
)

__all__ = [
    "RETRY_KINDS",
    "RETRY_REASON",
    "DueByZone",
    "deliveries_analyze",
    "deliveries_insert_keyed",
    "deliveries_materialise",
    "deliveries_retry",
    "delivery_group_cancel",
    "delivery_group_due_at_best_hours",
    "delivery_group_open",
    "delivery_group_pause",
    "delivery_group_release_held",
    "delivery_group_resume",
    "retry_selection",
]
