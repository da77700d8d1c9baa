"""Materialise one huge campaign run in a process of its own and report it.

Prints one JSON line: seconds, rows, queries and this process's peak RSS.
Usage: python -m bench.launcher N TEMPLATE_ID
"""

import json
import os
import resource
import sys
import time


def main() -> None:
    n, template_id = int(sys.argv[1]), int(sys.argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.bench")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench.campaign import materialise_only
    from notifier.models import Delivery, Template

    template = Template.objects.get(pk=template_id)
    with CaptureQueriesContext(connection) as queries:
        started = time.monotonic()
        run = materialise_only(n=n, template=template)
        seconds = time.monotonic() - started
    rows = Delivery.objects.filter(run_id=run.pk).count()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "rows": rows,
                "queries": len(queries),
                "peak_rss_mb": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
