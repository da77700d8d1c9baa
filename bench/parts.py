"""The benchmark's parts. Imported after ``django.setup()`` by ``bench.run``."""

import multiprocessing as mp
import resource
import statistics
import subprocess
import time
from datetime import datetime

from django.db import DatabaseError, connections
from django.db.models import Count, Q

from bench.campaign import ensure_recipients
from bench.floor import batch_floor_process, floor_process, recipient_data, recipient_to
from bench.run import HTML, ITEMS, PY, ROOT, SUBJECT, TEXT, Row
from bench.stack import backend_cpu_seconds, cpu_by_group, cpu_snapshot
from campaigns.selectors import run_status_counts
from notifier.models import Delivery, Template

# --- data -------------------------------------------------------------------------


def bench_template() -> Template:
    template, _ = Template.objects.update_or_create(
        name="Bench weekly picks",
        defaults={
            "kind": Template.Kind.CAMPAIGN,
            "subject": SUBJECT,
            "html_body": HTML,
            "text_body": TEXT,
        },
    )
    return template


# --- floor ------------------------------------------------------------------------


def floor(stack, transport: str, n: int, w: int, *, target=floor_process) -> dict:
    # Fresh interpreters (spawn), not forks of this process and its broker
    # connections; timed from when all of them are ready.
    ctx = mp.get_context("spawn")
    queue, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    chunks = [range(k, n, w) for k in range(w)]
    procs = [ctx.Process(target=target, args=(transport, c, ready, go, queue)) for c in chunks]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a floor process did not start")
    cpu_before = cpu_snapshot()
    started = time.monotonic()
    go.set()
    sent = sum(queue.get(timeout=max(120, n / 20)) for _ in procs)
    elapsed = time.monotonic() - started
    for p in procs:
        p.join()
    return {"sent": sent, "seconds": elapsed, "cpu": cpu_by_group(cpu_before, cpu_snapshot())}


def batch_floor(stack, transport: str, n: int, w: int) -> dict:
    """The floor through the ESP's batch API: the same messages, in requests of
    the transport's BATCH_SIZE."""
    return floor(stack, transport, n, w, target=batch_floor_process)


# --- post-office ------------------------------------------------------------------


def post_office(stack, transport: str, n: int, w: int) -> dict:
    from post_office import mail
    from post_office.models import Email, EmailTemplate

    Email.objects.all().delete()
    template, _ = EmailTemplate.objects.update_or_create(
        name="bench", defaults={"subject": SUBJECT, "content": TEXT, "html_content": HTML}
    )
    cpu_before = cpu_snapshot()
    started = time.monotonic()
    chunk = 2000
    for start in range(0, n, chunk):
        mail.send_many(
            [
                {
                    "recipients": [recipient_to(i)],
                    "sender": "Bench <bench@bench.example>",
                    "template": template,
                    "context": {"items": ITEMS, "recipient": recipient_data(i)},
                }
                for i in range(start, min(n, start + chunk))
            ]
        )
    queued = time.monotonic() - started
    connections.close_all()
    drain = subprocess.run(
        [PY, "manage.py", "send_queued_mail", "--processes", str(w)],
        cwd=ROOT,
        env={**stack.env, "BENCH_TRANSPORT": transport},
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    cpu = cpu_by_group(cpu_before, cpu_snapshot())
    if drain.returncode:
        raise RuntimeError(f"send_queued_mail failed: {drain.stderr[-2000:]}")
    sent = Email.objects.filter(status=0).count()  # STATUS.sent
    return {"sent": sent, "seconds": elapsed, "queue seconds": queued, "cpu": cpu}


# --- ours -------------------------------------------------------------------------


def launch_campaign(n: int, transport: str):
    """Create a campaign over the first ``n`` bench recipients and launch it.

    Returns the CampaignRun. Uses the campaigns services, as staff would.
    """
    from bench.campaign import launch

    return launch(n=n, transport=transport, template=bench_template())


OPEN = [Delivery.Status.PENDING, Delivery.Status.SENDING]


def rows_done(deliveries, n: int) -> bool:
    """At least ``n`` rows and none pending or sending, read in one statement
    (one snapshot: two queries could see no open row before the launch
    commits and ``n`` rows, all pending, after it)."""
    counts = deliveries.aggregate(
        total=Count("id"),
        open=Count("id", filter=Q(status__in=OPEN)),
    )
    return counts["total"] >= n and not counts["open"]


# The full count (every row of the run, each poll) grows with the run: at
# 200,000 rows it took 50 ms of PostgreSQL CPU per poll, a fifth of a core
# taken from the run it measures. So a cheap look decides when to count.
FULL_COUNT_EVERY = 10.0  # seconds: the full count also runs this often


def wait_rows_done(deliveries, n: int, timeout: float, *, arrived, interval: float) -> float:
    """Poll until ``rows_done(deliveries, n)``; return the moment it held.

    ``arrived()`` is the cheap look (one row fetched, or the fake ESP's
    counter); the full count runs when it says yes, and every
    ``FULL_COUNT_EVERY`` seconds whatever it says, so a run whose rows end
    failed (never arriving) is still seen to be done."""
    deadline = time.monotonic() + timeout
    full_at = time.monotonic() + FULL_COUNT_EVERY
    while (now := time.monotonic()) < deadline:
        due = now >= full_at
        if due:
            full_at = now + FULL_COUNT_EVERY
        if (due or arrived()) and rows_done(deliveries, n):
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"{deliveries.count()} of {n} rows, not all sent after {timeout}s")


def wait_run_done(run_id: int, n: int, timeout: float) -> float:
    rows = Delivery.objects.filter(run_id=run_id)
    # One open row fetched through the (run, status) index, not all counted.
    return wait_rows_done(
        rows,
        n,
        timeout,
        arrived=lambda: not rows.filter(status__in=OPEN).exists(),
        interval=0.2,
    )


def ours(stack, transport: str, n: int, w: int, workers=None) -> dict:
    ensure_recipients(n)
    own = workers is None
    if own:
        workers = stack.start_workers("campaigns", "campaigns,maintenance", w)
    connections.close_all()
    cpu_before = cpu_snapshot()
    started = time.monotonic()
    run = launch_campaign(n, transport)
    done = wait_run_done(run.pk, n, timeout=max(120, n / 50))
    elapsed = done - started
    cpu = cpu_by_group(cpu_before, cpu_snapshot())
    counts = run_status_counts(run_id=run.pk)
    if own:
        stack.stop(workers, "campaign worker (ours)")
    return {
        "sent": counts.get("sent", 0),
        "seconds": elapsed,
        "run": run.pk,
        "statuses": counts,
        "cpu": cpu,
    }


# --- the parts --------------------------------------------------------------------


def _check(stack, transport, n, result, before) -> str:
    received = stack.received(transport) - before
    if result.get("sent", 0) < n or received < n:
        return (
            f"LOST: {n - min(result.get('sent', 0), received)} of {n} missing "
            f"(received {received}, rows {result.get('statuses', {})})"
        )
    if received > n:
        return f"DUPLICATED: {received - n} extra messages"
    return "ok"


def _distinct_check(stack, n) -> str:
    messages = stack.esp_messages()
    recipients = [m["To"] for m in messages]
    dupes = len(recipients) - len(set(recipients))
    if dupes:
        return f"DUPLICATED: {dupes} recipients got more than one"
    if len(set(recipients)) < n:
        return f"LOST: {n - len(set(recipients))} recipients got nothing"
    return "ok"


def _cpu_row(label: str, cpu: dict[str, float], n: int) -> Row:
    """CPU milliseconds per message, by process group: where the time goes."""
    order = ["senders", "workers", "fake ESP", "smtp sink", "postgres", "redis", "driver"]
    figures = {g: round(cpu[g] * 1000 / n, 2) for g in order if cpu.get(g)}
    figures["total"] = round(sum(cpu.values()) * 1000 / n, 2)
    return Row("cpu ms per message", label, figures)


# Targets per transport: (baseline, ratio ours / baseline must reach).
THROUGHPUT_TARGETS = {
    "esp": [("batch floor", 0.8), ("post-office", 3.0)],
    "smtp": [("floor", 0.7), ("post-office", 2.0)],
}


def _contenders(transport: str):
    contenders = [("floor", floor)]
    if transport == "esp":
        contenders.append(("batch floor", batch_floor))
    return [*contenders, ("ours", ours), ("post-office", post_office)]


def throughput(stack, transport: str, n: int, w: int) -> list[Row]:
    rows = []
    rates = {}
    for name, fn in _contenders(transport):
        if transport == "esp":
            stack.esp_reset()
        before = stack.received(transport)
        try:
            result = fn(stack, transport, n, w)
        except Exception as exc:  # reported, not hidden
            rows.append(Row("throughput", f"{name} / {transport}", {}, f"ERROR: {exc}"))
            continue
        verdict = _check(stack, transport, n, result, before)
        if verdict == "ok" and transport == "esp":
            verdict = _distinct_check(stack, n)
        rate = n / result["seconds"] if verdict == "ok" else 0.0
        rates[name] = rate
        figures = {"N": n, "W": w, "seconds": round(result["seconds"], 2), "msg/s": round(rate, 1)}
        if "queue seconds" in result:
            figures["queueing s"] = round(result["queue seconds"], 2)
        rows.append(Row("throughput", f"{name} / {transport}", figures, verdict))
        if result.get("cpu"):
            rows.append(_cpu_row(f"{name} / {transport}", result["cpu"], n))
    baselines = [("floor", 0.0)] if transport == "esp" else []
    for baseline, target in baselines + THROUGHPUT_TARGETS.get(transport, []):
        if not (rates.get("ours") and rates.get(baseline)):
            continue
        ratio = rates["ours"] / rates[baseline]
        verdict = "ok" if ratio >= target else f"below target by {target - ratio:.2f}"
        rows.append(
            Row(
                "throughput",
                f"ours/{baseline} ({transport})",
                {"ratio": round(ratio, 2), "target": f">= {target:g}" if target else "-"},
                verdict,
            )
        )
    return rows


def scale(stack, args) -> list[Row]:
    rows = []
    rates = {}
    for size in [int(s) for s in args.scale_sizes.split(",") if s]:
        stack.esp_reset()
        result = ours(stack, "esp", size, args.w)
        verdict = _check(stack, "esp", size, result, 0)
        rate = size / result["seconds"] if verdict == "ok" else 0
        rates[size] = rate
        rows.append(
            Row(
                "scale",
                f"throughput at {size:,}",
                {"seconds": round(result["seconds"], 1), "msg/s": round(rate, 1)},
                verdict,
            )
        )
        rows.append(_cpu_row(f"ours at {size:,}", result["cpu"], size))
    if len(rates) >= 2:
        small, large = min(rates), max(rates)
        if rates[small]:
            change = rates[large] / rates[small] - 1
            rows.append(
                Row(
                    "scale",
                    f"{large:,} vs {small:,}",
                    {"change": f"{change:+.1%}", "target": "within 10%"},
                    "ok" if abs(change) <= 0.10 or change > 0 else f"slower by {abs(change):.1%}",
                )
            )
    # Last, so the million rows it leaves (removed afterwards) and the
    # autovacuum they set off do not slow the throughput runs above.
    rows += _materialise(stack, args)
    return rows


def _materialise(stack, args) -> list[Row]:
    """Materialise a huge run in a separate launcher process: its time and
    peak memory are the launcher's alone. Its rows are removed afterwards."""
    rows = []
    ensure_recipients(args.materialise)
    template = bench_template()
    # The runs before left dead rows; autovacuum would clean them up between
    # campaigns on a live database. Done now so it does not run mid-measure.
    with connections["default"].cursor() as cursor:
        cursor.execute("VACUUM ANALYZE notifier_delivery")
    out = subprocess.run(
        [PY, "-m", "bench.launcher", str(args.materialise), str(template.pk)],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        rows.append(
            Row("scale", f"materialise {args.materialise:,}", {}, f"ERROR: {out.stderr[-500:]}")
        )
    else:
        import json

        figures = json.loads(out.stdout.strip().splitlines()[-1])
        stack.memory["launcher (materialise)"] = figures["peak_rss_mb"]
        rows.append(
            Row(
                "scale",
                f"materialise {args.materialise:,}",
                {
                    "seconds": figures["seconds"],
                    "rows": figures["rows"],
                    "queries": figures["queries"],
                    "db cpu s": figures.get("backend_cpu_s"),
                    "target s": 20,
                },
                "ok"
                if figures["seconds"] <= 20 and figures["rows"] == args.materialise
                else "over target"
                if figures["rows"] == args.materialise
                else "LOST rows",
            )
        )
    # Remove the million rows and clean up after them (autovacuum would,
    # over minutes) so the parts after this one do not measure the clean-up.
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "DELETE FROM notifier_delivery WHERE run_id IN "
            "(SELECT id FROM campaigns_campaignrun WHERE status = 'queued')"
        )
        cursor.execute("VACUUM ANALYZE notifier_delivery")
        try:
            cursor.execute("CHECKPOINT")
        except DatabaseError:
            pass  # not a superuser
    if not out.returncode:
        rows += _materialise_floor(
            args.materialise,
            ours_seconds=figures["seconds"],
            ours_cpu=figures.get("backend_cpu_s"),
        )
    return rows


# The materialisation floor: the same audience, one row each, on a lean table.
_LEAN_TABLE = """
CREATE TABLE bench_lean_delivery (
    id bigserial PRIMARY KEY,
    run_id bigint NOT NULL,
    recipient_id bigint NOT NULL,
    status varchar(16) NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (run_id, recipient_id)
)
"""
_LEAN_INSERT = """
INSERT INTO bench_lean_delivery (run_id, recipient_id, status, created_at)
SELECT 1, m.recipient_id, 'pending', now()
FROM campaigns_listmembership m JOIN notifier_recipient r ON r.id = m.recipient_id
WHERE m.contact_list_id = %s AND r.status = 'active'
ON CONFLICT DO NOTHING
"""


def _materialise_floor(n: int, *, ours_seconds: float, ours_cpu: float | None) -> list[Row]:
    """The raw ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` of the same
    audience into a lean table (an id, the run, the recipient, a status, a
    time, the unique key), beside our launch: what PostgreSQL alone needs.

    Both are also compared by their PostgreSQL backend's CPU seconds (when
    the server is on this host): on a shared machine the wall-time ratio
    moves with whatever else runs during each of the two statements."""
    from bench.campaign import audience_list

    contact_list = audience_list(n)
    with connections["default"].cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_lean_delivery")
        cursor.execute(_LEAN_TABLE)
        cpu_before = backend_cpu_seconds(cursor)
        started = time.monotonic()
        cursor.execute(_LEAN_INSERT, [contact_list.pk])
        seconds = time.monotonic() - started
        written = cursor.rowcount
        cpu = None if cpu_before is None else backend_cpu_seconds(cursor) - cpu_before
        cursor.execute("DROP TABLE bench_lean_delivery")
    verdict = "ok" if written == n else f"LOST rows: {n - written} of {n}"
    rows = [
        Row(
            "scale",
            f"materialise floor {n:,} (raw SQL)",
            {"seconds": round(seconds, 2), "rows": written, "db cpu s": cpu and round(cpu, 2)},
            verdict,
        )
    ]
    if verdict == "ok" and seconds:
        ratio = ours_seconds / seconds
        rows.append(
            Row(
                "scale",
                "materialise ours/floor",
                {"ratio": round(ratio, 2), "target": "<= 1.3"},
                "ok" if ratio <= 1.3 else f"over target by {ratio - 1.3:.2f}",
            )
        )
        if cpu and ours_cpu is not None:
            rows.append(
                Row(
                    "scale",
                    "materialise ours/floor (db cpu)",
                    {"ratio": round(ours_cpu / cpu, 2)},
                    "for comparison",
                )
            )
    return rows


def urgent(stack, args) -> list[Row]:
    from notifier import send

    n = args.urgent_campaign
    ensure_recipients(n)
    stack.esp_reset()
    # Separate queues and workers, campaign workers at a lower CPU priority:
    # the set-up deploy/README.md recommends for a shared host.
    campaign_workers = stack.start_workers("campaigns", "campaigns,maintenance", args.w, nice=10)
    transactional = stack.start_workers("urgent", "transactional", 1)
    connections.close_all()
    run = launch_campaign(n, "esp")
    time.sleep(2)  # the campaign is sending
    committed = {}
    for i in range(args.urgent_sends):
        delivery = send(
            subject="Your code {{ c }}",
            text="Code {{ c }}",
            to=f"urgent{i}@bench.example",
            context={"c": i},
            idempotency_key=f"bench-urgent-{time.time()}-{i}",
        )
        committed[str(delivery.uuid)] = time.time()
        time.sleep(0.02)
    campaign_running = Delivery.objects.filter(run_id=run.pk, status="pending").exists()
    deadline = time.monotonic() + 120
    # Looked up by uuid (its unique index): a key prefix fits no index, and
    # scanning the table five times a second would load the campaign it times.
    urgent_rows = Delivery.objects.filter(uuid__in=list(committed), status="sent")
    while time.monotonic() < deadline:
        if urgent_rows.count() >= args.urgent_sends:
            break
        time.sleep(0.2)
    messages = [
        m for m in stack.esp_messages() if m.get("Metadata", {}).get("delivery") in committed
    ]
    latencies = sorted(
        datetime.fromisoformat(m["ReceivedAt"]).timestamp() - committed[m["Metadata"]["delivery"]]
        for m in messages
    )
    stack.stop(transactional, "transactional worker")
    wait_run_done(run.pk, n, timeout=max(300, n / 30))
    stack.stop(campaign_workers, "campaign worker (ours)")
    if len(latencies) < args.urgent_sends:
        return [
            Row(
                "urgent",
                "transactional during campaign",
                {"received": len(latencies)},
                f"LOST: {args.urgent_sends - len(latencies)} transactional messages",
            )
        ]
    p50 = statistics.median(latencies)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return [
        Row(
            "urgent",
            f"{args.urgent_sends} sends during a {n:,} campaign",
            {
                "p50 ms": round(p50 * 1000, 1),
                "p99 ms": round(p99 * 1000, 1),
                "target p99 ms": 1000,
                "campaign still sending": campaign_running,
            },
            "ok" if p99 <= 1.0 else "over target",
        )
    ]


def print_table(rows: list[Row], args, elapsed: float) -> None:
    import platform

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = 0.0
    if platform.system() == "Linux":
        with open("/proc/meminfo") as meminfo:
            mem_gb = int(meminfo.readline().split()[1]) / 1024 / 1024
    print()
    print(
        f"Notifier benchmark - {datetime.now():%Y-%m-%d %H:%M} - {mp.cpu_count()} cores ({cpu}), "
        f"{mem_gb:.0f} GiB - W={args.w} batch={args.batch} - total {elapsed:.0f} s"
    )
    width = max((len(r.label) for r in rows), default=10)
    for part in dict.fromkeys(r.part for r in rows):
        print(f"\n[{part}]")
        for r in rows:
            if r.part == part:
                figures = "  ".join(f"{k}={v}" for k, v in r.figures.items())
                print(f"  {r.label:<{width}}  {figures}  -> {r.verdict}")
    rusage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(bench driver peak RSS {rusage:.0f} MB)")
