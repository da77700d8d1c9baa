"""Benchmark one hourly digest run and print how long it takes and how much
memory each process used.

Generates N recipients with M pending hourly notifications set-based
(``INSERT ... SELECT generate_series``), starts a real Celery worker on the
``maintenance`` and ``digests`` queues, triggers the hourly run as beat would,
and measures: the scheduler task (find due recipients, fan out), every digest
built and committed, and every digest handed to the transport. The transport
is a discarding email backend in the worker (each message is still rendered
and serialised), so the figures are the platform's, not a network's.

Peak memory is each process's high-water mark (VmHWM): the launching process,
the worker's main process and each pool process.

PostgreSQL only. It writes to the configured database (recipients
``bench-N@bench.invalid``, topics ``bench-*``) and removes them afterwards
unless ``--keep``.
"""

import os
import resource
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from devtools.workers import worker_command
from notifier.models import Delivery, Topic
from notifier.services.digests import hourly_window

EMAIL_DOMAIN = "bench.invalid"
TOPIC_PREFIX = "bench-"


class DiscardBackend(BaseEmailBackend):
    """Accepts every message and sends it nowhere (after building its MIME)."""

    def send_messages(self, email_messages):
        for message in email_messages:
            message.message().as_bytes()
        return len(email_messages)


def _kib_to_mib(kib: int) -> float:
    return kib / 1024


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class Command(BaseCommand):
    help = "Time one hourly digest run for N recipients / M notifications (PostgreSQL)."

    def add_arguments(self, parser):
        parser.add_argument("--recipients", type=int, default=100_000)
        parser.add_argument("--notifications", type=int, default=1_000_000)
        parser.add_argument("--topics", type=int, default=5)
        parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
        parser.add_argument(
            "--batch-size", type=int, default=None, help="recipients per digest task"
        )
        parser.add_argument("--timeout", type=float, default=900, help="seconds to wait at most")
        parser.add_argument("--keep", action="store_true", help="keep the generated rows")
        parser.add_argument(
            "--yes", action="store_true", help="confirm writing to the configured database"
        )

    def handle(self, *args, **opts):
        if connection.vendor != "postgresql":
            raise CommandError(
                "The benchmark generates its data with PostgreSQL's generate_series."
            )
        if not opts["yes"]:
            raise CommandError(
                f"This writes {opts['recipients']:,} recipients and {opts['notifications']:,} "
                f"notifications to database {connection.settings_dict['NAME']!r} (removed "
                "afterwards unless --keep). Run again with --yes."
            )
        if opts["recipients"] < 1 or opts["notifications"] < opts["recipients"]:
            raise CommandError("Give at least one recipient and one notification per recipient.")
        if settings.DEBUG:
            self.stderr.write("DEBUG is on: Django keeps every query in memory; figures inflate.")
        self.remove_data()
        self.generate(opts["recipients"], opts["notifications"], opts["topics"])
        worker = self.start_worker(opts["concurrency"], opts["batch_size"])
        finished = False
        try:
            finished = self.measure(worker, opts["recipients"], opts["timeout"])
        finally:
            self.stop_worker(worker)
            if not finished:
                self.purge_digest_queue()
            if not opts["keep"]:
                self.remove_data()

    # --- data -----------------------------------------------------------------------

    def generate(self, recipients: int, notifications: int, topics: int) -> None:
        started = time.monotonic()
        topic_ids = [
            Topic.objects.create(
                key=f"{TOPIC_PREFIX}{i}",
                name=f"Bench topic {i}",
                default_frequency="hourly",
                digest_item="<b>{{ data.title }}</b> #{{ data.n }}",
            ).pk
            for i in range(topics)
        ]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO notifier_recipient
                    (email, name, attributes, time_zone, locale, status, created_at, updated_at)
                SELECT 'bench-' || g || '@' || %s, 'Bench ' || g, '{}'::jsonb, 'UTC', 'en',
                       'active', now(), now()
                FROM generate_series(1, %s) AS g
                """,
                [EMAIL_DOMAIN, recipients],
            )
            # Spread over the past hour, round-robin over recipients and topics.
            cursor.execute(
                """
                WITH r AS (
                    SELECT id, row_number() OVER (ORDER BY id) - 1 AS k
                    FROM notifier_recipient WHERE email LIKE %s
                )
                INSERT INTO notifier_notification
                    (recipient_id, topic_id, data, frequency, created_at)
                SELECT r.id, (%s::bigint[])[1 + g %% %s],
                       jsonb_build_object('title', 'Event ' || g, 'n', g), 'hourly',
                       now() - (g %% 3600) * interval '1 second'
                FROM generate_series(0, %s - 1) AS g JOIN r ON r.k = g %% %s
                """,
                [f"%@{EMAIL_DOMAIN}", topic_ids, topics, notifications, recipients],
            )
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE notifier_recipient")
            cursor.execute("VACUUM ANALYZE notifier_notification")
            cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('notifier_notification'))")
            size = cursor.fetchone()[0]
        self.stdout.write(
            f"generated {recipients:,} recipients, {notifications:,} pending hourly "
            f"notifications over {topics} topics in {time.monotonic() - started:.1f}s "
            f"(notification table now {size})"
        )

    def remove_data(self) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            bench = "SELECT id FROM notifier_recipient WHERE email LIKE %s"
            pattern = [f"%@{EMAIL_DOMAIN}"]
            cursor.execute(
                f"DELETE FROM notifier_notification WHERE recipient_id IN ({bench})", pattern
            )
            cursor.execute(
                f"DELETE FROM notifier_delivery WHERE recipient_id IN ({bench})", pattern
            )
            cursor.execute("DELETE FROM notifier_recipient WHERE email LIKE %s", pattern)
            cursor.execute("DELETE FROM notifier_topic WHERE key LIKE %s", [f"{TOPIC_PREFIX}%"])

    # --- worker -----------------------------------------------------------------------

    def start_worker(self, concurrency: int, batch_size: int | None) -> subprocess.Popen:
        from config.celery import app

        env = {
            **os.environ,
            "ESP_BACKEND": f"{__name__}.DiscardBackend",
            "NOTIFIER_DEFAULT_TRANSPORT": "esp",
        }
        if batch_size:
            env["NOTIFIER_DIGEST_BATCH_SIZE"] = str(batch_size)
        name = f"bench-digests-{os.getpid()}"
        worker = subprocess.Popen(
            worker_command(name=name, queues="maintenance,digests", concurrency=concurrency),
            cwd=settings.BASE_DIR,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise CommandError("The worker exited at start; see its output above.")
            replies = app.control.ping(timeout=0.5) or []
            if any(next(iter(r)).startswith(f"{name}@") for r in replies):
                return worker
        self.stop_worker(worker)
        raise CommandError("The worker did not answer within 60 s.")

    def stop_worker(self, worker: subprocess.Popen) -> None:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)

    # --- the run ------------------------------------------------------------------------

    def explain_first_page(self, cutoff: datetime) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                EXPLAIN SELECT DISTINCT recipient_id FROM notifier_notification
                WHERE frequency = 'hourly' AND included_at IS NULL AND created_at < %s
                  AND recipient_id > 0 ORDER BY recipient_id LIMIT 1000
                """,
                [cutoff],
            )
            plan = [row[0] for row in cursor.fetchall()]
        self.stdout.write("plan of one page of the due-recipient scan:")
        for line in plan:
            self.stdout.write(f"    {line}")

    def purge_digest_queue(self) -> None:
        """Drop the tasks this run left queued (their rows are removed next)."""
        from config.celery import app

        with app.connection_for_write() as conn:
            dropped = conn.default_channel.queue_purge("digests")
        self.stdout.write(f"not finished: dropped {dropped} queued digest tasks")

    def measure(self, worker: subprocess.Popen, recipients: int, timeout: float) -> bool:
        from notifier.tasks import digests_hourly

        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(
            hours=1, minutes=1
        )
        window, cutoff = hourly_window(now=now)
        self.explain_first_page(cutoff)
        digests = Delivery.objects.filter(
            kind=Delivery.Kind.DIGEST,
            idempotency_key__startswith="digest:hourly:",
            idempotency_key__endswith=f":{window}",
            recipient__email__endswith=f"@{EMAIL_DOMAIN}",
        )
        started = time.monotonic()
        deadline = started + timeout
        summary = digests_hourly.apply_async(kwargs={"now": now.isoformat()}, queue="maintenance")
        summary = summary.get(timeout=timeout)
        fanned_out = time.monotonic() - started
        built = sent = None
        while time.monotonic() < deadline:
            if built is None and digests.count() >= recipients:
                built = time.monotonic() - started
            if (
                built is not None
                and digests.filter(status=Delivery.Status.SENT).count() >= recipients
            ):
                sent = time.monotonic() - started
                break
            time.sleep(0.5)

        workers = [worker.pid, *_children(worker.pid)]
        memory = {pid: _vm_hwm_kib(pid) for pid in workers}
        launcher = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.stdout.write(
            f"hourly run for {recipients:,} recipients: {summary['tasks']:,} digest tasks "
            f"for {summary['recipients']:,} due recipients"
        )
        self.stdout.write(f"  scheduler (find due recipients + fan out): {fanned_out:8.1f} s")
        self.stdout.write(
            "  every digest built and committed:          "
            + (f"{built:8.1f} s" if built is not None else "not within the timeout")
        )
        self.stdout.write(
            "  every digest handed to the transport:      "
            + (f"{sent:8.1f} s" if sent is not None else "not within the timeout")
        )
        elapsed = time.monotonic() - started
        done = digests.count()
        self.stdout.write(
            f"  after {elapsed:.1f} s: {done:,} digests built, "
            f"{digests.filter(status='sent').count():,} sent"
        )
        self.stdout.write("peak memory (VmHWM):")
        self.stdout.write(f"  launching process (this one): {_kib_to_mib(launcher):7.1f} MiB")
        for pid, kib in memory.items():
            role = "worker main process" if pid == worker.pid else "worker pool process"
            self.stdout.write(f"  {role} {pid}: {_kib_to_mib(kib):7.1f} MiB")
        return sent is not None
