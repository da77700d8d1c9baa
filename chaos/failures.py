"""Chaos scenarios for data loss and provider failure (``chaos/run.py`` runs them):

* 8  Redis loses its data mid-campaign (``FLUSHALL``, as a Redis without
     persistence restarting would), a worker killed at the same moment, so
     its claim's journal is gone and only the database's hand-off mark says
     what may have left;
* 9  the PostgreSQL server itself restarted mid-campaign (stopped hard,
     down for a few seconds, started again): the run uses a private cluster
     in ``var/chaos/pg`` made with ``initdb``, never a shared server;
* 10 the ESP down for 60 s (20 s with ``--quick``), with the SMTP transport
     as its fallback (``ESP_FALLBACK=smtp``): untried rows move, the others
     wait for the ESP to come back;
* 11 the ESP answering every request after 2 s for 60 s (30 s): slow, not
     failing.

Each scenario ends by resolving the rows in doubt at the ESP (the in-doubt
resolver run here, as beat would after the ESP's indexing delay) until none
is left to look up, and the table shows the in-doubt count before and after.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench.stack import PY, ROOT, free_port, wait_port

VAR = ROOT / "var" / "chaos"
PG_BIN = Path(os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivatePostgres:
    """A throwaway PostgreSQL cluster for the chaos run, so that a scenario
    may restart the server without touching anyone else's."""

    def __init__(self):
        self.data = VAR / "pg"
        self.port = free_port()
        self.log = VAR / "pg.log"
        self.options = ""

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/notifier_chaos"

    @classmethod
    def start_if_possible(cls) -> "PrivatePostgres | None":
        """Start one and point the run at it (``CHAOS_DATABASE_URL``); None
        without PostgreSQL's server binaries (scenario 9 is then skipped and
        the run uses ``CHAOS_DATABASE_URL`` as given)."""
        if not (PG_BIN / "initdb").exists():
            return None
        postgres = cls()
        postgres.start()
        os.environ["CHAOS_DATABASE_URL"] = postgres.url
        return postgres

    @staticmethod
    def _run(*cmd: str) -> None:
        # PostgreSQL refuses to run as root: as root, run it as "postgres".
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, *cmd], check=True, stdout=subprocess.DEVNULL)

    def _ctl(self, *args: str) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", *args)

    def start(self) -> None:
        if self.data.exists():
            self.stop()
            shutil.rmtree(self.data)
        VAR.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        self.log.touch()
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres")
            shutil.chown(self.log, "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self.options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            "-c fsync=off -c max_connections=200 -c shared_buffers=128MB"
        )
        self._ctl("-o", self.options, "start")
        wait_port(self.port)

    def restart_hard(self, down_seconds: float) -> None:
        """Stop the server at once (no checkpoint, every connection cut, as
        a crash would), wait, start it again (crash recovery)."""
        self._ctl("-m", "immediate", "stop")
        time.sleep(down_seconds)
        self._ctl("-o", self.options, "start")

    def stop(self) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        except (subprocess.CalledProcessError, FileNotFoundError):
            pass


class SmtpSink:
    """The SMTP transport's server: accepts every message and records its
    Message-ID (``<delivery uuid@domain>``) to a file."""

    def __init__(self, spawn):
        self.port = free_port()
        self.record = VAR / "smtp-accepted.jsonl"
        self.record.unlink(missing_ok=True)
        self.spawn = spawn
        self.proc = None

    def start(self):
        self.proc = self.spawn(
            [PY, "manage.py", "smtp_sink", "--port", str(self.port), "--record", str(self.record)],
            "smtp-sink",
        )
        wait_port(self.port)

    def accepted(self) -> Counter:
        counts: Counter = Counter()
        if self.record.exists():
            for line in self.record.read_text().splitlines():
                try:
                    message_id = json.loads(line)["message_id"]
                except (ValueError, KeyError, TypeError):
                    continue
                counts[message_id.strip("<>").split("@")[0]] += 1
        return counts


def failover_env(smtp_port: int) -> dict[str, str]:
    """What the workers and beat need for the scenarios here."""
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "ESP_FALLBACK": "smtp",
        "NOTIFIER_FAILOVER_AFTER": "5",
        "NOTIFIER_FAILOVER_PROBE_SECONDS": "3",
        # Beat's resolver leaves the rows to the end of the scenario, which
        # counts them before and after resolution (see resolve_in_doubt).
        "NOTIFIER_INDOUBT_INDEX_DELAY": "86400",
    }


def resolve_in_doubt(run_id: int, wait_terminal, rounds: int = 3) -> tuple[int, int]:
    """Resolve the run's in-doubt rows at the ESP as beat would (found: sent;
    not found: sent again once), wait for the resends, until nothing changes.
    Returns the in-doubt count before and after."""
    from django.conf import settings

    from campaigns.services.runs import campaign_runs_maintain
    from notifier.models import Delivery
    from notifier.sending.persist import with_reconnect
    from notifier.services.indoubt import deliveries_resolve_in_doubt

    in_doubt = Delivery.objects.filter(run_id=run_id, status=Delivery.Status.UNKNOWN)
    before = with_reconnect(in_doubt.count)
    settings.NOTIFIER_INDOUBT_INDEX_DELAY = 0  # the fake ESP indexes at once
    for _ in range(rounds):
        if not with_reconnect(lambda: deliveries_resolve_in_doubt(limit=100_000)):
            break
        wait_terminal(run_id, 180)
    # Beat's campaign maintenance then counts a closed run's settled rows again.
    with_reconnect(campaign_runs_maintain)
    return before, with_reconnect(in_doubt.count)


def smtp_note(run_id: int) -> str:
    """How many rows of the run failed over to SMTP, and how many of those
    are in doubt (SMTP cannot be asked: left to staff, its documented bound)."""
    from notifier.models import Delivery
    from notifier.sending.persist import with_reconnect

    rows = Delivery.objects.filter(run_id=run_id, transport="smtp")
    moved = with_reconnect(rows.count)
    if not moved:
        return ""
    in_doubt = with_reconnect(rows.filter(status="unknown").count)
    return f"({moved} via SMTP, {in_doubt} of them in doubt)"


def redis_flushall(stack, run_id, n, wait_progress):
    import redis

    wait_progress(run_id, n // 3)
    victim = sorted(stack.workers)[0]
    stack.kill_worker(victim)  # its claim's journal is lost with the rest
    redis.Redis(port=stack.redis_port).flushall()
    time.sleep(0.5)
    stack.start_worker(victim)


def postgres_restart(stack, run_id, n, wait_progress):
    from django.db import connections

    wait_progress(run_id, n // 3)
    stack.postgres.restart_hard(down_seconds=4)
    connections.close_all()  # this thread's connection died with the server


def esp_down_with_smtp_fallback(stack, run_id, n, wait_progress, seconds):
    wait_progress(run_id, n // 4)
    stack.stop_esp()
    time.sleep(seconds)
    stack.start_esp()


def esp_slow(stack, run_id, n, wait_progress, seconds):
    wait_progress(run_id, n // 4)
    stack.esp_faults(delay=2.0)
    time.sleep(seconds)
    stack.esp_faults(delay=0.0)


def stop_process(proc) -> None:
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
