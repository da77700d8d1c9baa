"""``make bench``: end-to-end throughput, scale and latency on the real stack.

Everything runs in one go on this machine, so the figures are comparable:

* **floor**: W plain processes render and send the same messages over the
  same transport; no queue, no database.
* **ours**: a campaign run launched by the campaigns service, fanned out as a
  Celery chord to W worker processes, every outcome written back.
* **post-office**: django-post-office queues the same N templated messages
  and drains them with ``send_queued_mail --processes W``.

Each figure is checked against what the fake ESP / SMTP sink received and
what the database says; a run that lost or duplicated messages is reported as
such instead of a speed.

* **journeys**: steps/s of a two-step journey over ``--journey-n``
  recipients, beside a campaign's messages/s, and the transactional p99
  while both run (see ``bench/journeys.py``).
* **digests**: an hourly digest run over ``--digest-recipients`` recipients
  and ``--digest-notifications`` notifications, digests accepted per second
  beside a campaign's on the same workers (see ``bench/digests.py``).

Run: ``make bench`` or ``make bench ARGS="--n 2000 --parts throughput"``.
"""

import argparse
import os
import sys
import time

from bench.stack import PY, ROOT, Row, Stack

SUBJECT = "{{ recipient.first_name }}, your picks for this week"
HTML = """<html><body>
<h1>Hello {{ recipient.name }}</h1>
<p>Here is what we picked for you on the {{ recipient.attributes.plan }} plan:</p>
<table>{% for item in items %}
<tr><td>{{ forloop.counter }}.</td><td><a href="https://shop.example/p/{{ item.sku }}">{{ item.title }}</a></td>
<td>{{ item.price|floatformat:2 }} EUR</td></tr>{% endfor %}
</table>
<p>{% if recipient.attributes.vip %}As a VIP you get free shipping.{% else %}Free shipping from 50 EUR.{% endif %}</p>
</body></html>"""
TEXT = """Hello {{ recipient.name }},
{% for item in items %}{{ forloop.counter }}. {{ item.title }} - {{ item.price|floatformat:2 }} EUR
{% endfor %}"""
ITEMS = [{"sku": f"SKU{i}", "title": f"Product number {i}", "price": 9.5 + i} for i in range(6)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="recipients for throughput")
    parser.add_argument("--w", type=int, default=os.cpu_count() or 2, help="worker processes")
    parser.add_argument("--batch", type=int, default=500, help="deliveries per batch task")
    parser.add_argument(
        "--parts",
        default="throughput,scale,urgent,journeys,digests",
        help="comma list of throughput, scale, urgent, journeys, digests",
    )
    parser.add_argument("--transports", default="esp,smtp")
    parser.add_argument("--scale-sizes", default="10000,200000")
    parser.add_argument("--materialise", type=int, default=1_000_000)
    parser.add_argument("--urgent-campaign", type=int, default=100_000)
    parser.add_argument("--urgent-sends", type=int, default=200)
    parser.add_argument(
        "--journey-n", type=int, default=100_000, help="recipients entering the journey"
    )
    parser.add_argument("--digest-recipients", type=int, default=100_000)
    parser.add_argument(
        "--digest-notifications", type=int, default=1_000_000, help="pending before the hour"
    )
    args = parser.parse_args(argv)

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.bench")
    stack = Stack(args)  # sets the environment the settings read
    django.setup()
    from bench import parts
    from bench.campaign import recreate_database

    rows: list[Row] = []
    started = time.monotonic()
    try:
        recreate_database()
        stack.start_services()
        wanted = set(args.parts.split(","))
        transports = [t for t in args.transports.split(",") if t]
        if "smtp" in transports and not stack.has_smtp:
            print("smtp-sink not found (Debian: apt-get install postfix); skipping SMTP.")
            transports.remove("smtp")
        if "throughput" in wanted:
            for transport in transports:
                rows += parts.throughput(stack, transport, args.n, args.w)
        if "scale" in wanted:
            rows += parts.scale(stack, args)
        if "urgent" in wanted:
            rows += parts.urgent(stack, args)
        if "journeys" in wanted:
            from bench.journeys import journeys

            rows += journeys(stack, args)
        if "digests" in wanted:
            from bench.digests import digests

            rows += digests(stack, args)
        for label, mb in sorted(stack.memory.items()):
            rows.append(
                Row(
                    "memory",
                    label,
                    {"peak RSS MB": round(mb, 1)},
                    "ok" if mb <= 250 else "over 250 MB",
                )
            )
    finally:
        stack.stop_all()
    parts.print_table(rows, args, time.monotonic() - started)
    return 1 if any(r.verdict.startswith(("LOST", "DUPLICATED", "ERROR")) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["HTML", "ITEMS", "PY", "ROOT", "SUBJECT", "TEXT", "Row", "Stack"]
