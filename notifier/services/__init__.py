"""Every state change of the delivery engine, as plain functions.

* ``outbox``        delivery groups (campaign runs) and their rows: materialise,
                    pause, resume, cancel, retry, release held rows
* ``recipients``    addresses and recipients
* ``suppressions``  who is never mailed (the one suppression decision)
* ``preferences``   topic preferences (digest frequency, off)
* ``unsubscribe``   signed unsubscribe/preference links and what they do
* ``events``        ESP tracking events (delivered, bounced, complained, ...)
* ``transactional`` ``send()``, the public API for one message
* ``notifications`` ``notify()``: instant or collected for a digest
* ``digests``       building and sending digests
* ``dispatch``      handing delivery ids to Celery on the right queue
* ``retries``       the sweeper: recovering expired claims, dispatching due rows
* ``webhooks``      outbound webhook calls: an outbox of their own (claim, sign, retry)
* ``privacy``       GDPR export and erase; erased addresses kept only as a keyed hash

Sending a batch (claim, render, hand over, record) is ``notifier.sending``.
"""
