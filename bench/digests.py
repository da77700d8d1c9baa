"""The digests part of ``make bench``: an hourly digest run beside a campaign.

``--digest-notifications`` pending hourly notifications (five topics, spread
over the past hour) wait for the first ``--digest-recipients`` bench
recipients. The driver triggers the hourly run as beat would; the scheduler,
the builds and the sends run on the campaign workers (queues ``campaigns``,
``digests``, ``maintenance``), and every digest leaves through the fake ESP in
batch requests. Measured in the same run, on the same workers:

* **digests**: from the trigger to the last digest accepted by the ESP:
  digests accepted per second, and those seconds (target: within 120 s);
* **campaign**: a campaign to the same recipients, messages accepted per
  second the same way; the digests' rate must reach 0.8 of it.

Every figure is checked: each recipient's digest is one Delivery, ``sent``,
and reached the ESP exactly once; every notification points at its
recipient's digest. A run that lost or duplicated anything is reported as
such instead of a speed.
"""

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from django.db import connection, connections

from bench.campaign import audience_list, ensure_recipients
from bench.stack import Row, cpu_by_group, cpu_snapshot
from notifier.models import Delivery, Notification, Topic
from notifier.services.digests import hourly_window

TOPICS = 5
RATIO_TARGET = 0.8
SECONDS_TARGET = 120.0


def _topics() -> list[int]:
    return [
        Topic.objects.update_or_create(
            key=f"bench-digest-{i}",
            defaults={
                "name": f"Bench topic {i}",
                "default_frequency": "hourly",
                "digest_item": "<b>{{ data.title }}</b> #{{ data.n }}",
            },
        )[0].pk
        for i in range(TOPICS)
    ]


def generate(n: int, m: int) -> float:
    """``m`` pending hourly notifications over the first ``n`` bench
    recipients, round-robin over recipients and topics, spread over the past
    hour: one INSERT ... SELECT. Returns the seconds it took."""
    started = time.monotonic()
    topic_ids = _topics()
    ids = list(audience_list(n).memberships.values_list("recipient_id", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifier_notification (recipient_id, topic_id, data, frequency, created_at)
            SELECT r.id, t.ids[1 + g %% %s], jsonb_build_object('title', 'Event ' || g, 'n', g),
                   'hourly', now() - (g %% 3600) * interval '1 second'
            FROM generate_series(0, %s - 1) AS g
            JOIN unnest(%s::bigint[]) WITH ORDINALITY AS r(id, k) ON r.k = 1 + g %% %s
            CROSS JOIN (SELECT %s::bigint[] AS ids) AS t
            """,
            [TOPICS, m, ids, n, topic_ids],
        )
        # As autovacuum would have before the hour strikes.
        cursor.execute("VACUUM ANALYZE notifier_notification")
    return time.monotonic() - started


def _accepted_by(messages: list[dict], uuids: set[str]) -> tuple[Counter, float]:
    """(messages per address, the moment the last one was accepted) among
    the ESP's messages carrying one of ``uuids``."""
    received = Counter()
    last = 0.0
    for m in messages:
        if m.get("Metadata", {}).get("delivery") in uuids:
            received[m["To"]] += 1
            last = max(last, datetime.fromisoformat(m["ReceivedAt"]).timestamp())
    return received, last


def _verdict(rows: Counter, received: Counter, n: int, what: str) -> str:
    if rows != {Delivery.Status.SENT: n}:
        return f"LOST: {what} rows {dict(rows)}"
    if len(received) < n:
        return f"LOST: {n - len(received)} recipients got no {what} at the ESP"
    if max(received.values()) > 1:
        return f"DUPLICATED: {sum(c - 1 for c in received.values())} extra {what}s"
    return "ok"


def _digest_run(stack, n: int, m: int) -> dict:
    from bench.parts import wait_rows_done
    from notifier.tasks import digests_hourly

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(
        hours=1, minutes=1
    )
    window, _cutoff = hourly_window(now=now)
    digests = Delivery.objects.filter(
        kind=Delivery.Kind.DIGEST,
        idempotency_key__startswith="digest:hourly:",
        idempotency_key__endswith=f":{window}",
    )
    stack.esp_reset()
    connections.close_all()
    cpu_before = cpu_snapshot()
    started = time.time()
    digests_hourly.apply_async(kwargs={"now": now.isoformat()}, queue="maintenance")
    # The digests are found by their key (no index fits): the fake ESP's
    # counter says when to look.
    wait_rows_done(
        digests,
        n,
        timeout=max(600, n / 50),
        arrived=lambda: stack.esp_count() >= n,
        interval=0.5,
    )
    cpu = cpu_by_group(cpu_before, cpu_snapshot())
    received, last = _accepted_by(
        stack.esp_messages(), {str(u) for u in digests.values_list("uuid", flat=True)}
    )
    verdict = _verdict(Counter(digests.values_list("status", flat=True)), received, n, "digest")
    if verdict == "ok":
        included = Notification.objects.filter(
            topic__key__startswith="bench-digest-", digest__in=digests
        ).count()
        if included != m:
            verdict = f"LOST: {m - included} of {m} notifications in no digest"
    return {"seconds": last - started, "verdict": verdict, "cpu": cpu}


def _campaign_run(stack, n: int, w: int, workers) -> dict:
    from bench.parts import ours

    stack.esp_reset()
    started = time.time()
    result = ours(stack, "esp", n, w, workers=workers)
    run = Delivery.objects.filter(run_id=result["run"])
    received, last = _accepted_by(
        stack.esp_messages(), {str(u) for u in run.values_list("uuid", flat=True)}
    )
    verdict = _verdict(Counter(result["statuses"]), received, n, "campaign message")
    return {"seconds": last - started, "verdict": verdict, "cpu": result["cpu"]}


def _rate_row(label: str, result: dict, n: int, m: int | None = None) -> Row:
    ok = result["verdict"] == "ok"
    figures = {"N": n} if m is None else {"N": n, "notifications": m}
    figures["last accepted s"] = round(result["seconds"], 1)
    figures["accepted/s"] = round(n / result["seconds"], 1) if ok else 0.0
    return Row("digests", label, figures, result["verdict"])


def digests(stack, args) -> list[Row]:
    from bench.parts import _cpu_row

    n, m = args.digest_recipients, args.digest_notifications
    if m < n:
        raise ValueError("--digest-notifications must be at least --digest-recipients")
    ensure_recipients(n)
    generated = generate(n, m)
    rows: list[Row] = []
    workers = stack.start_workers("campaigns", "campaigns,digests,maintenance", args.w)
    try:
        digest = _digest_run(stack, n, m)
        row = _rate_row("hourly digest run", digest, n, m)
        row.figures = {"generated s": round(generated, 1), **row.figures}
        rows.append(row)
        campaign = _campaign_run(stack, n, args.w, workers)
        rows.append(_rate_row("campaign, same recipients and workers", campaign, n))
    finally:
        stack.stop(workers, "campaign worker (digests part)")
    if digest["verdict"] == campaign["verdict"] == "ok":
        ratio = campaign["seconds"] / digest["seconds"]  # rates, n / seconds each
        rows.append(
            Row(
                "digests",
                "digests/campaign accepted per second",
                {"ratio": round(ratio, 2), "target": f">= {RATIO_TARGET:g}"},
                "ok" if ratio >= RATIO_TARGET else f"below target by {RATIO_TARGET - ratio:.2f}",
            )
        )
        seconds = digest["seconds"]
        rows.append(
            Row(
                "digests",
                "every digest accepted",
                {"seconds": round(seconds, 1), "target": f"<= {SECONDS_TARGET:g}"},
                "ok"
                if seconds <= SECONDS_TARGET
                else f"over target by {seconds - SECONDS_TARGET:.1f} s",
            )
        )
    rows.append(_cpu_row("hourly digest run", digest["cpu"], n))
    rows.append(_cpu_row("campaign (digests part)", campaign["cpu"], n))
    return rows
