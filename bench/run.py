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

Run: ``make bench`` or ``make bench ARGS="--n 2000 --parts throughput"``.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

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
        self.esp = self._spawn(
            [PY, "manage.py", "fake_esp", "--port", str(self.esp_port), "--light"], "esp"
        )
        self._wait_port(self.esp_port)
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
            self._wait_port(self.smtp_port)

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

    @staticmethod
    def _wait_port(port, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nothing listening on {port}")

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
    def start_workers(self, name, queues, concurrency, **env):
        proc = self._spawn(
            [
                PY,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
                "-O",
                "fair",
            ],
            f"worker-{name}",
            env={**self.env, **env},
        )
        from config.celery import app

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="recipients for throughput")
    parser.add_argument("--w", type=int, default=os.cpu_count() or 2, help="worker processes")
    parser.add_argument("--batch", type=int, default=500, help="deliveries per batch task")
    parser.add_argument(
        "--parts",
        default="throughput,scale,urgent",
        help="comma list of throughput, scale, urgent",
    )
    parser.add_argument("--transports", default="esp,smtp")
    parser.add_argument("--scale-sizes", default="10000,200000")
    parser.add_argument("--materialise", type=int, default=1_000_000)
    parser.add_argument("--urgent-campaign", type=int, default=100_000)
    parser.add_argument("--urgent-sends", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="profile one worker batch")
    args = parser.parse_args(argv)

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.bench")
    stack = Stack(args)  # sets the environment the settings read
    django.setup()
    from bench import parts

    rows: list[Row] = []
    started = time.monotonic()
    try:
        parts.prepare_database()
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


__all__ = ["HTML", "ITEMS", "SUBJECT", "TEXT", "Row", "Stack", "statistics"]
