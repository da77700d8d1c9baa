"""Metrics observed by the engine where the work happens (Celery workers).

They live with the engine that observes them; ``ops`` only serves them: each
worker serves these on its own port (``WORKER_METRICS_PORT``, see
``ops.worker_metrics``); with a prefork pool the children write them to
``PROMETHEUS_MULTIPROC_DIR`` and the worker's main process adds them up.
"""

from prometheus_client import Counter, Histogram

SEND_SECONDS = Histogram(
    "notifier_send_seconds",
    "Time the transport took to accept (or refuse) one request: one message, or one batch.",
    ["transport"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEND_OUTCOMES = Counter(
    "notifier_send_outcomes",
    "Hand-offs to a transport by outcome (retry: transient error, sent again later).",
    ["transport", "outcome"],
)


def observe_send(*, transport: str, outcome: str, seconds: float) -> None:
    observe_sends(transport=transport, outcomes=[outcome], seconds=seconds)


def observe_sends(*, transport: str, outcomes: list[str], seconds: float) -> None:
    """One request to ``transport`` (``seconds``) and the outcome of each of its messages."""
    SEND_SECONDS.labels(transport=transport).observe(seconds)
    for outcome in set(outcomes):
        SEND_OUTCOMES.labels(transport=transport, outcome=outcome).inc(outcomes.count(outcome))


TASK_FAILURES = Counter(
    "notifier_task_failures",
    "Celery tasks that raised, and runs whose maintenance failed, by task name.",
    ["task"],
)


def count_task_failure(*, task: str) -> None:
    TASK_FAILURES.labels(task=task).inc()
