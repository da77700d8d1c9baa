"""Every state change of the delivery engine, as plain functions.

* ``recipients``    addresses and recipients
* ``suppressions``  who is never mailed
* ``transactional`` ``send()``, the public API for one message
* ``dispatch``      handing delivery ids to Celery on the right queue
* ``sending``       claiming, rendering, sending and recording a batch
* ``retries``       backoff, the sweeper, staff-initiated retries
"""
