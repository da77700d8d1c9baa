"""Processes shared by the benchmark and the fault-injection runs.

A ``Stack`` owns the fake ESP, the SMTP sink and Celery worker processes it
starts, measures their peak memory and stops them all at the end.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def wait_port(port: int, timeout: float = 30) -> None:
    """Return once something listens on 127.0.0.1:port, or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def stray_workers(redis_url: str) -> list[int]:
    """Celery workers left running by an earlier benchmark on ``redis_url``
    (its driver was killed before it could stop them): they would take this
    run's tasks from the same queues and spoil every figure."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = dict(
                item.split(b"=", 1)
                for item in (entry / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except OSError:
            continue
        if (
            b"celery" in cmdline[:3]
            and environ.get(b"DJANGO_SETTINGS_MODULE") == b"config.settings.bench"
            and environ.get(b"REDIS_URL", b"").decode(errors="replace") == redis_url
        ):
            found.append(int(entry.name))
    return found


# --- CPU accounting -------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_group(pid: int, ppid: int, comm: str, cmdline: str) -> str | None:
    """Which part of the system a process belongs to (None: not ours to count)."""
    if pid == os.getpid():
        return "driver"
    if comm == "postgres":
        return "postgres"
    if comm.startswith("redis-server"):
        return "redis"
    if comm == "smtp-sink":
        return "smtp sink"
    if "fake_esp" in cmdline:
        return "fake ESP"
    if "celery" in cmdline:
        return "workers"
    if "send_queued_mail" in cmdline:
        return "senders"
    if ppid == os.getpid():  # the floor's processes
        return "senders"
    return None


def backend_cpu_seconds(cursor) -> float | None:
    """CPU seconds (user + system) the PostgreSQL backend serving ``cursor``
    has used so far; None when the server is not on this host."""
    cursor.execute("SELECT pg_backend_pid()")
    try:
        fields = Path(f"/proc/{cursor.fetchone()[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, PermissionError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_snapshot() -> dict[int, tuple[str, int]]:
    """CPU ticks (own + waited-for children) of every process we account for.

    A process that exits between two snapshots is counted in its parent's
    children time, which is why both are summed: nothing is counted twice.
    The driver's own children (floor processes, the post-office drain) are
    counted as ``senders``.
    """
    snapshot: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        group = _cpu_group(pid, int(fields[1]), comm, cmdline)
        if group == "driver":
            snapshot[pid] = ("driver", utime + stime)
            snapshot[-pid] = ("senders", cutime + cstime)
        elif group:
            snapshot[pid] = (group, utime + stime + cutime + cstime)
    return snapshot


def cpu_by_group(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per group between two snapshots.

    Summed per group, not per process: a process that exited in between moved
    its time into its parent's children time, which is in the same group.
    """
    totals: dict[str, float] = {}
    for snapshot, sign in ((after, 1), (before, -1)):
        for group, ticks in snapshot.values():
            totals[group] = totals.get(group, 0.0) + sign * ticks / _TICK
    return {group: spent for group, spent in totals.items() if spent > 0}


@dataclass
class Row:
    part: str
    label: str
    figures: dict = field(default_factory=dict)
    verdict: str = "ok"


class Stack:
    """Fake ESP, SMTP sink and Celery workers for the benchmark."""

    def __init__(self, args):
        self.args = args
        self.procs: list[subprocess.Popen] = []
        self.esp_port = free_port()
        self.smtp_port = free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.bench",
            "POSTMARK_API_URL": f"http://127.0.0.1:{self.esp_port}/",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp_port),
            "NOTIFIER_BATCH_SIZE": str(args.batch),
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update({k: v for k, v in self.env.items() if k != "LOG_LEVEL"})
        self.sink_log = ROOT / "var" / "bench-smtp-sink.log"
        self.memory: dict[str, float] = {}

    def start_services(self):
        strays = stray_workers(os.environ.get("REDIS_URL", ""))
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if strays:
            print(f"Stopped {len(strays)} Celery worker process(es) left by an earlier benchmark.")
        self.esp = self._spawn(
            [PY, "manage.py", "fake_esp", "--port", str(self.esp_port), "--light"], "esp"
        )
        wait_port(self.esp_port)
        sink = shutil.which("smtp-sink") or (
            "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
        )
        self.has_smtp = bool(sink)
        if sink:
            self.sink_log.parent.mkdir(exist_ok=True)
            user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
            with open(self.sink_log, "w") as log:
                self.sink = subprocess.Popen(
                    [sink, "-c", "-u", user, f"127.0.0.1:{self.smtp_port}", "512"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs.append(self.sink)
            wait_port(self.smtp_port)

    def _spawn(self, cmd, name, env=None):
        log = open(ROOT / "var" / f"bench-{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    # fake ESP ------------------------------------------------------------------
    def esp_reset(self):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.esp_port}/_fake/messages", method="DELETE"
        )
        urllib.request.urlopen(request).read()

    def esp_messages(self) -> list[dict]:
        url = f"http://127.0.0.1:{self.esp_port}/_fake/messages"
        return json.loads(urllib.request.urlopen(url, timeout=120).read())

    def esp_count(self) -> int:
        url = f"http://127.0.0.1:{self.esp_port}/_fake/stats"
        return json.loads(urllib.request.urlopen(url).read())["messages"]

    def sink_count(self) -> int:
        text = self.sink_log.read_text(errors="replace") if self.sink_log.exists() else ""
        counts = [
            int(part.split("=")[1])
            for part in text.replace("\r", " ").split()
            if part.startswith("mesg=")
        ]
        return counts[-1] if counts else 0

    def received(self, transport) -> int:
        return self.esp_count() if transport == "esp" else self.sink_count()

    # workers ------------------------------------------------------------------
    def start_workers(self, name, queues, concurrency, nice=0, **env):
        from config.celery import app
        from devtools.workers import worker_command

        proc = self._spawn(
            [
                *(["nice", "-n", str(nice)] if nice else []),
                *worker_command(name=name, queues=queues, concurrency=concurrency, python=PY),
                "-O",
                "fair",
            ],
            f"worker-{name}",
            env={**self.env, **env},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=0.5) or []
            if any(next(iter(r)).startswith(f"{name}@") for r in replies):
                return proc
        raise RuntimeError(f"worker {name} did not start; see var/bench-worker-{name}.log")

    def stop(self, proc, label=None):
        if label:
            pids = [proc.pid, *children(proc.pid)]
            self.memory[label] = max(
                self.memory.get(label, 0.0), max((peak_rss_mb(p) for p in pids), default=0.0)
            )
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
