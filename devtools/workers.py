"""Celery worker command lines for the test fixtures, the benchmark and the fault runs."""

import sys


def worker_command(
    *, name: str, queues: str, concurrency: int, loglevel: str = "WARNING", python: str = ""
) -> list[str]:
    """The command line of a worker of this app (tests, benchmark, fault runs).

    Gossip and mingle are off: these workers start and stop often and need
    nothing from their peers.
    """
    return [
        python or sys.executable,
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
        loglevel,
    ]
