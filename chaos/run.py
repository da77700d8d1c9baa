"""``make chaos``: kill, restart and fail the real stack, then count every message.

Each scenario launches a campaign on the real stack (PostgreSQL, a private
Redis with AOF persistence, several Celery worker processes, beat running
the sweeper, and the fake ESP appending every accepted message to a file),
injects its faults while the run is sending, waits until every Delivery is
terminal, and compares, recipient by recipient, what the ESP received with
what the Delivery rows say.

Scenario 7 runs a journey instead (``chaos/journeys.py``): every step of each
recipient's path once, every email of it once. Scenarios 8-11 (Redis data
loss, PostgreSQL restarted, the ESP down with SMTP as fallback, a slow ESP)
live in ``chaos/failures.py``; the run uses a private PostgreSQL cluster so
that one may be restarted. Every scenario ends by resolving its in-doubt rows
at the ESP ("in doubt" shows before/after).

Exit status 1 if any scenario lost or duplicated a message.

Run: ``make chaos`` or ``make chaos ARGS="--quick"``.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.stack import PY, ROOT, free_port, wait_port
from chaos import failures

VAR = ROOT / "var" / "chaos"


@dataclass
class Result:
    name: str
    recipients: int = 0
    exactly_once: int = 0
    duplicates: int = 0
    missing: int = 0
    unknown: int = 0
    unknown_before: int = 0  # before the in-doubt resolution (``unknown``: after)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""
    # The documented in-doubt bound (None: no worker is killed in the scenario).
    bound: int | None = None

    @property
    def ok(self) -> bool:
        # In doubt before resolution: within the bound (one request per kill).
        within = self.bound is None or self.unknown_before <= self.bound
        return (
            self.duplicates == 0
            and self.missing == 0
            and within
            and "ERROR" not in self.note
            # The run closed, with totals equal to its rows.
            and "!= rows" not in self.note
            and "run not closed" not in self.note
        )


def indoubt_bound(kills: int) -> int:
    """At most one request in flight per killed worker: the ESP's batch size
    (or, sending one message per request, the messages handed over ahead of
    their answers: NOTIFIER_SEND_AHEAD, at least the sender threads)."""
    from django.conf import settings

    from notifier.sending.wire import send_ahead

    batch = settings.NOTIFIER_TRANSPORTS["esp"].get("BATCH_SIZE") or 1
    return kills * (batch if batch > 1 else send_ahead())


class ChaosStack:
    """Private Redis (AOF), fake ESP recording to a file, workers, beat."""

    def __init__(self, workers: int):
        VAR.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.esp_port = free_port()
        self.record = VAR / "esp-accepted.jsonl"
        self.record.unlink(missing_ok=True)
        self.n_workers = workers
        self.workers: dict[str, subprocess.Popen] = {}
        self.beats: list[subprocess.Popen] = []
        self.redis: subprocess.Popen | None = None
        self.esp: subprocess.Popen | None = None
        self.smtp = failures.SmtpSink(self._spawn)
        self.postgres: failures.PrivatePostgres | None = None
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": os.environ.get(
                "CHAOS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notifier_chaos"
            ),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "POSTMARK_API_URL": f"http://127.0.0.1:{self.esp_port}/",
            # Above the slow ESP's 2 s (scenario 11), below scenario 4's hangs.
            "ESP_READ_TIMEOUT": "3.5",
            "ESP_CONNECT_TIMEOUT": "1",
            "NOTIFIER_LEASE_SECONDS": "8",
            "NOTIFIER_REDISPATCH_SECONDS": "15",
            "NOTIFIER_SWEEP_SECONDS": "2",
            "NOTIFIER_BACKOFF_BASE": "0.5",
            "NOTIFIER_BACKOFF_CAP": "3",
            "NOTIFIER_MAX_ATTEMPTS": "12",
            "NOTIFIER_BATCH_SIZE": "200",
            "JOURNEYS_TICK_SECONDS": "1",
            "JOURNEYS_LEASE_SECONDS": "6",
            "JOURNEYS_REDISPATCH_SECONDS": "8",
            "JOURNEYS_BATCH_SIZE": "50",
            "LOG_LEVEL": "WARNING",
            **failures.failover_env(self.smtp.port),
        }
        os.environ.update(self.env)

    # processes ----------------------------------------------------------------------
    def _spawn(self, cmd, name):
        log = open(VAR / f"{name}.log", "a")  # noqa: SIM115 - owned by the process
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_redis(self):
        self.redis = self._spawn(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(VAR),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--appendfilename",
                "chaos.aof",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            "redis",
        )
        wait_port(self.redis_port)
        import redis

        client = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # AOF loading answers LOADING
            try:
                client.ping()
                return
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.1)
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)

    def kill_redis(self):
        os.killpg(self.redis.pid, signal.SIGKILL)
        self.redis.wait()

    def start_esp(self):
        self.esp = self._spawn(
            [
                PY,
                "manage.py",
                "fake_esp",
                "--port",
                str(self.esp_port),
                "--light",
                "--record",
                str(self.record),
            ],
            "esp",
        )
        wait_port(self.esp_port)

    def stop_esp(self):
        os.killpg(self.esp.pid, signal.SIGKILL)
        self.esp.wait()

    def esp_faults(self, **faults):
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.esp_port}/_fake/faults",
            data=json.dumps(faults).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).read()

    def start_worker(self, name):
        from devtools.workers import worker_command

        self.workers[name] = self._spawn(
            worker_command(
                name=name,
                queues="transactional,campaigns,digests,maintenance",
                concurrency=1,
                python=PY,
            ),
            f"worker-{name}",
        )

    def kill_worker(self, name):
        proc = self.workers[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start_beat(self, name="beat"):
        self.beats.append(
            self._spawn(
                [
                    PY,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "beat",
                    "--loglevel",
                    "WARNING",
                    "--scheduler",
                    "django_celery_beat.schedulers:DatabaseScheduler",
                    "--pidfile",
                    str(VAR / f"{name}.pid"),
                ],
                name,
            )
        )

    def start_all(self):
        self.start_redis()
        self.start_esp()
        self.smtp.start()
        for i in range(self.n_workers):
            self.start_worker(f"w{i}")
        self.start_beat()

    def stop_all(self):
        procs = [*self.workers.values(), *self.beats, self.esp, self.redis, self.smtp.proc]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # counting -----------------------------------------------------------------
    def accepted(self) -> Counter:
        """Messages the ESP accepted, per delivery uuid."""
        counts: Counter = Counter()
        if self.record.exists():
            for line in self.record.read_text().splitlines():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a killed ESP
                counts[message.get("Metadata", {}).get("delivery")] += 1
        return counts + self.smtp.accepted()


def count_run(stack: ChaosStack, run_id: int, name: str, seconds: float) -> Result:
    from campaigns.selectors import run_status_counts
    from notifier.models import Delivery

    rows = list(
        Delivery.objects.filter(run_id=run_id).values_list("uuid", "status", "recipient_id")
    )
    accepted = stack.accepted()
    result = Result(name=name, recipients=len(rows), seconds=round(seconds, 1))
    for uuid, status, _recipient in rows:
        got = accepted.get(str(uuid), 0)
        if got == 1:
            result.exactly_once += 1
        elif got > 1:
            result.duplicates += 1
        elif status != Delivery.Status.UNKNOWN:
            result.missing += 1
        if status == Delivery.Status.UNKNOWN:
            result.unknown += 1
    result.final = run_status_counts(run_id=run_id)
    return result


def _query(fn):
    """A read that survives a scenario terminating our connection."""
    from notifier.sending.persist import with_reconnect

    return with_reconnect(fn)


def wait_terminal(run_id: int, timeout: float) -> bool:
    from notifier.models import Delivery

    deadline = time.monotonic() + timeout
    open_rows = Delivery.objects.filter(run_id=run_id, status__in=["pending", "sending"])
    while time.monotonic() < deadline:
        if not _query(open_rows.exists):
            return True
        time.sleep(0.5)
    return False


def progress(run_id: int) -> int:
    from notifier.models import Delivery

    return _query(Delivery.objects.filter(run_id=run_id, status="sent").count)


def wait_progress(run_id: int, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while progress(run_id) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)


def run_scenario(stack, name, n, inject, timeout) -> Result:
    from django.db import connections

    from bench.campaign import chaos_template, launch

    connections.close_all()
    started = time.monotonic()
    try:
        run = launch(n=n, transport="esp", template=chaos_template())
        injector = threading.Thread(target=inject, args=(run.pk,), daemon=True)
        injector.start()
        injector.join()
        finished = wait_terminal(run.pk, timeout)
        before, _after = failures.resolve_in_doubt(run.pk, wait_terminal)
        result = _query(lambda: count_run(stack, run.pk, name, time.monotonic() - started))
        result.unknown_before = before
        result.note = failures.smtp_note(run.pk)
        if not finished:
            result.note = "ERROR: rows still pending/sending at the deadline"
        closed = closed_with_totals(run.pk)
        if closed:
            result.note = (result.note + " " + closed).strip()
        return result
    except Exception as exc:  # reported in the table
        return Result(name=name, note=f"ERROR: {type(exc).__name__}: {exc}")


def closed_with_totals(run_id: int) -> str:
    """'' if the run closed and its totals match its rows, else what is wrong."""
    from bench.campaign import run_closed_with_matching_totals

    return run_closed_with_matching_totals(run_id)


def scenarios(stack: ChaosStack, quick: bool, n: int):
    rng = random.Random(7)
    kills = 2 if quick else 5

    def kill_workers(run_id):
        step = max(1, n // (kills + 2))
        for k in range(kills):
            wait_progress(run_id, step * (k + 1))
            victim = rng.choice(sorted(stack.workers))
            stack.kill_worker(victim)
            time.sleep(0.5)
            stack.start_worker(victim)

    def restart_redis(run_id):
        wait_progress(run_id, n // 3)
        stack.kill_redis()
        time.sleep(2)
        stack.start_redis()

    def terminate_db(run_id):
        from django.db import connection

        for k in range(3):
            wait_progress(run_id, n * (k + 1) // 5)
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

    def esp_faults(run_id):
        stack.esp_faults(
            error_rate=0.10,
            error_status=503,
            hang_after_accept_rate=0.0005,
            hang_seconds=4,
            script=[{"status": 429, "retry_after": 1}] * 30,
        )
        wait_progress(run_id, n // 2)
        stack.stop_esp()  # connections refused
        time.sleep(3)
        stack.start_esp()
        stack.esp_faults(error_rate=0.10, error_status=500)
        wait_progress(run_id, n * 9 // 10)
        stack.esp_faults(error_rate=0.0, hang_after_accept_rate=0.0)

    def kill_mid_chord(run_id):
        wait_progress(run_id, n // 4)
        victim = sorted(stack.workers)[0]
        stack.kill_worker(victim)
        time.sleep(1)
        stack.start_worker(victim)

    plan = [
        (f"1 workers SIGKILLed x{kills}", kill_workers),
        ("2 Redis killed and restarted", restart_redis),
        ("3 DB connections terminated x3", terminate_db),
        ("4 ESP 5xx/429/refused/timeouts", esp_faults),
        ("6 worker killed mid-chord", kill_mid_chord),
    ]
    if quick:
        plan = [plan[0], plan[1]]
    return plan + data_loss_and_provider_scenarios(stack, quick, n)


def data_loss_and_provider_scenarios(stack: ChaosStack, quick: bool, n: int):
    """Scenarios 8-11 (chaos/failures.py), in --quick too."""
    outage = 20 if quick else 60
    slow = 30 if quick else 60
    plan = [
        (
            "8 Redis FLUSHALL + worker killed",
            lambda run_id: failures.redis_flushall(stack, run_id, n, wait_progress),
        ),
        (
            "9 PostgreSQL server restarted",
            lambda run_id: failures.postgres_restart(stack, run_id, n, wait_progress),
        ),
        (
            f"10 ESP down {outage}s, SMTP fallback",
            lambda run_id: failures.esp_down_with_smtp_fallback(
                stack, run_id, n, wait_progress, outage
            ),
        ),
        (
            f"11 ESP slow (2 s/request) {slow}s",
            lambda run_id: failures.esp_slow(stack, run_id, n, wait_progress, slow),
        ),
    ]
    if stack.postgres is None:  # no private server to restart: never the shared one
        print("  9 skipped: PostgreSQL's initdb not found", flush=True)
        plan = [p for p in plan if not p[0].startswith("9 ")]
    return plan


def two_beats(stack: ChaosStack, minutes: int) -> Result:
    from bench.campaign import recurring_runs_check

    stack.start_beat("beat-2")
    started = time.monotonic()
    try:
        note, result_counts = recurring_runs_check(stack, minutes=minutes)
    except Exception as exc:
        return Result(name="5 two beats at once", note=f"ERROR: {exc}")
    result = Result(
        name="5 two beats at once", seconds=round(time.monotonic() - started, 1), note=note
    )
    result.__dict__.update(result_counts)
    return result


def print_table(results: list[Result], elapsed: float) -> None:
    print()
    print(f"Notifier chaos run - {elapsed:.0f} s")
    header = f"{'scenario':<34} {'recips':>7} {'once':>7} {'dupes':>6} {'missing':>8} {'in doubt b/a':>12} {'bound':>6} {'secs':>6}  final states"
    print(header)
    print("-" * len(header))
    for r in results:
        states = " ".join(f"{k}={v}" for k, v in sorted(r.final.items()))
        print(
            f"{r.name:<34} {r.recipients:>7} {r.exactly_once:>7} {r.duplicates:>6} {r.missing:>8} "
            f"{f'{r.unknown_before}/{r.unknown}':>12} {'-' if r.bound is None else r.bound:>6} "
            f"{r.seconds:>6}  {states} {r.note}"
        )
    bad = [r for r in results if not r.ok]
    print()
    print(f"{len(results) - len(bad)} passed, {len(bad)} failed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="few recipients, two kills, one Redis restart"
    )
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--beat-minutes", type=int, default=3)
    parser.add_argument(
        "--scenarios",
        default="1,2,3,4,5,6,7,8,9,10,11",
        help="comma list of scenario numbers to run (5, 7: not in --quick)",
    )
    args = parser.parse_args(argv)
    n = args.n or (2000 if args.quick else 20_000)

    postgres = failures.PrivatePostgres.start_if_possible()
    stack = ChaosStack(args.workers)
    stack.postgres = postgres
    import django

    django.setup()
    started = time.monotonic()
    results = []
    try:
        from bench.campaign import ensure_recipients, recreate_database

        recreate_database()

        ensure_recipients(n)
        stack.start_all()
        wanted = set(args.scenarios.split(","))
        for name, inject in scenarios(stack, args.quick, n):
            if name.split()[0] not in wanted:
                continue
            stack.esp_faults(error_rate=0.0, hang_after_accept_rate=0.0, script=[])
            result = run_scenario(stack, name, n, inject, timeout=max(180, n / 20))
            kills = {"1": 2 if args.quick else 5, "6": 1}.get(name.split()[0])
            result.bound = None if kills is None else indoubt_bound(kills)
            results.append(result)
            print(f"  {name}: done", flush=True)
        if not args.quick and "5" in wanted:
            results.append(two_beats(stack, args.beat_minutes))
        if not args.quick and "7" in wanted:
            from chaos.journeys import journey_scenario

            results.append(
                journey_scenario(
                    stack, n=min(n, 5000), kills=3, rng=random.Random(11), timeout=max(180, n / 20)
                )
            )
            print("  7 journey, workers SIGKILLed: done", flush=True)
    finally:
        stack.stop_all()
        if postgres is not None:
            postgres.stop()
    print_table(results, time.monotonic() - started)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
