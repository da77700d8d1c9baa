"""Every state change of the delivery engine, as plain functions.

* ``recipients``    addresses and recipients
* ``suppressions``  who is never mailed
* ``preferences``   topic preferences (digest frequency, off)
* ``unsubscribe``   signed unsubscribe/preference links and what they do
* ``events``        ESP tracking events (delivered, bounced, complained, ...)
* ``transactional`` ``send()``, the public API for one message
* ``notifications`` ``notify()``: instant or collected for a digest
* ``digests``       building and sending digests
* ``dispatch``      handing delivery ids to Celery on the right queue
* ``sending``       claiming, rendering, sending and recording a batch
* ``outcomes``      what a transport's answer means (sent, retry, failed, unknown)
* ``journal``       the per-claim Redis journal of hand-offs
* ``ratelimit``     per-transport rate limits shared through Redis
* ``retries``       backoff, the sweeper, staff-initiated retries
"""
