"""Materialise one huge campaign run in a process of its own and report it.

Prints one JSON line: seconds, rows, queries, this process's peak RSS and
its PostgreSQL backend's CPU seconds.
Usage: python -m bench.launcher N TEMPLATE_ID
"""

import json
import os
import sys
import time

from bench.stack import backend_cpu_seconds, peak_rss_mb


def main() -> None:
    n, template_id = int(sys.argv[1]), int(sys.argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.bench")
    import django

    django.setup()
    from django.db import DatabaseError, connection
    from django.test.utils import CaptureQueriesContext

    from bench.campaign import queued_run
    from campaigns.services.runs import run_materialise
    from notifier.models import Delivery, Template

    # The audience (contacts, list) is set up first; the clock runs over the
    # launch's database step alone: writing the run's Deliveries.
    run = queued_run(n=n, template=Template.objects.get(pk=template_id))
    # Generating the audience just now left ~1 GB of WAL and dirty pages; a
    # checkpoint now keeps that one-off write-back out of the measured step.
    try:
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except DatabaseError:
        connection.close()  # not a superuser: measured as it comes
    with connection.cursor() as cursor:
        cpu_before = backend_cpu_seconds(cursor)
    with CaptureQueriesContext(connection) as queries:
        started = time.monotonic()
        run_materialise(run=run)
        seconds = time.monotonic() - started
    with connection.cursor() as cursor:
        cpu_after = backend_cpu_seconds(cursor)
    # The database's own work (the statement and the checks at its commit),
    # steadier than wall time on a shared machine.
    backend_cpu = None if cpu_before is None else round(cpu_after - cpu_before, 2)
    rows = Delivery.objects.filter(run_id=run.pk).count()
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak
    # across exec on Linux.
    peak = peak_rss_mb(os.getpid())
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "rows": rows,
                "queries": len(queries),
                "peak_rss_mb": round(peak, 1),
                "backend_cpu_s": backend_cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
