"""End to end: notify() -> PostgreSQL -> beat task -> Redis -> real Celery
workers -> fake ESP. The tests commit (``transaction=True``) so the worker
processes see the rows."""

import os
import random
import re
import signal
from collections import defaultdict
from datetime import datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from notifier import notify
from notifier.models import Delivery, Notification, Preference
from notifier.services.digests import digest_key, digests_build, hourly_window
from notifier.services.notifications import NotifyOutcome
from notifier.tasks import build_digests, digests_daily, digests_hourly
from tests.conftest import wait_for
from tests.notifier.factories import RecipientFactory, TopicFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

MARKER = re.compile(r"evt-\d+")


def _markers(message) -> set[str]:
    return set(MARKER.findall(message["HtmlBody"]))


def _to(message) -> str:
    return parseaddr(message["To"])[1]


def _digests_sent(count):
    return (
        Delivery.objects.filter(kind=Delivery.Kind.DIGEST, status=Delivery.Status.SENT).count()
        == count
    )


def test_hourly_run_sends_each_recipient_exactly_their_events(celery_worker_process, fake_esp):
    """Acceptance 1: 50 recipients with mixed preferences, 1,000 events."""
    rng = random.Random(20240506)
    defaults = ["instant", "hourly", "daily", "hourly", "off"]
    topics = [
        TopicFactory(
            key=f"t{i}",
            name=f"Topic {i}",
            default_frequency=frequency,
            digest_item="<b>{{ data.marker }}</b>",
            digest_cap=1000,  # show every event, so the content can be checked
        )
        for i, frequency in enumerate(defaults)
    ]
    recipients = [RecipientFactory(email=f"r{i}@example.com") for i in range(50)]
    for recipient in recipients:
        for topic in topics:
            choice = rng.choice([None, None, "instant", "hourly", "daily", "off"])
            if choice:
                Preference.objects.create(recipient=recipient, topic=topic, frequency=choice)

    expected = defaultdict(lambda: defaultdict(set))  # frequency -> email -> markers
    for n in range(1000):
        recipient, topic = rng.choice(recipients), rng.choice(topics)
        result = notify(recipient, topic, {"marker": f"evt-{n}"}, idempotency_key=f"e2e-{n}")
        expected[result.frequency][recipient.email].add(f"evt-{n}")
        assert (
            result.outcome
            == {
                "instant": NotifyOutcome.INSTANT,
                "hourly": NotifyOutcome.DIGEST,
                "daily": NotifyOutcome.DIGEST,
                "off": NotifyOutcome.OFF,
            }[result.frequency]
        )
    counts = {f: sum(len(m) for m in by.values()) for f, by in expected.items()}
    assert all(counts[f] > 100 for f in ("instant", "hourly", "daily", "off")), counts

    # Instant events went out at once, one email each, before any digest run.
    wait_for(lambda: len(fake_esp.messages) == counts["instant"], timeout=90)
    instant = defaultdict(set)
    for message in fake_esp.messages:
        (marker,) = _markers(message)
        instant[_to(message)].add(marker)
    assert instant == expected["instant"]
    assert not Delivery.objects.filter(kind=Delivery.Kind.DIGEST).exists()

    # One hourly run (as beat would trigger it at the next top of the hour).
    next_hour = timezone.now() + timedelta(hours=1)
    summary = digests_hourly.apply_async(
        kwargs={"now": next_hour.isoformat()}, queue="maintenance"
    ).get(timeout=60)
    hourly_recipients = len(expected["hourly"])
    assert summary["recipients"] == hourly_recipients
    wait_for(lambda: _digests_sent(hourly_recipients), timeout=90)

    digests = [m for m in fake_esp.messages if m["Subject"].startswith("Your hourly digest")]
    assert len(digests) == hourly_recipients
    assert {_to(m): _markers(m) for m in digests} == expected["hourly"]
    for message in digests:
        count = len(expected["hourly"][_to(message)])
        assert message["Subject"].startswith(f"Your hourly digest: {count} new notification")
        # One-click unsubscribe (RFC 8058) and the preference page on every digest.
        assert message["Headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "/unsubscribe/" in message["Headers"]["List-Unsubscribe"]
        assert "/preferences/" in message["HtmlBody"]
    # Off events stored and sent nothing; daily ones wait for the daily digest.
    assert Notification.objects.filter(frequency="off").count() == 0
    every_marker = set().union(*(_markers(m) for m in fake_esp.messages))
    assert every_marker.isdisjoint(set().union(*expected["off"].values()))
    assert every_marker.isdisjoint(set().union(*expected["daily"].values()))
    pending = Notification.objects.filter(included_at__isnull=True)
    assert pending.count() == counts["daily"]
    assert set(pending.values_list("frequency", flat=True)) == {"daily"}

    # The next local 08:00 (recipients are in UTC) brings the daily digests.
    tomorrow_eight = (timezone.now() + timedelta(days=1)).replace(hour=8, minute=0)
    digests_daily.apply_async(kwargs={"now": tomorrow_eight.isoformat()}, queue="maintenance").get(
        timeout=60
    )
    wait_for(lambda: _digests_sent(hourly_recipients + len(expected["daily"])), timeout=90)
    daily = [m for m in fake_esp.messages if m["Subject"].startswith("Your daily digest")]
    assert {_to(m): _markers(m) for m in daily} == expected["daily"]
    assert not Notification.objects.filter(included_at__isnull=True).exists()


def test_hourly_run_triggered_twice_sends_each_digest_once(celery_worker_process, fake_esp):
    """Acceptance 2, first half: two triggers for one hour, even at once."""
    topic = TopicFactory(default_frequency="hourly", digest_item="{{ data.marker }}")
    recipients = [RecipientFactory() for _ in range(30)]
    for i, recipient in enumerate(recipients):
        for j in range(3):
            notify(recipient, topic, {"marker": f"evt-{i * 10 + j}"})
    next_hour = (timezone.now() + timedelta(hours=1)).isoformat()
    first = digests_hourly.apply_async(kwargs={"now": next_hour}, queue="maintenance")
    second = digests_hourly.apply_async(kwargs={"now": next_hour}, queue="maintenance")
    first.get(timeout=60), second.get(timeout=60)
    wait_for(lambda: _digests_sent(30), timeout=60)
    third = digests_hourly.apply_async(kwargs={"now": next_hour}, queue="maintenance")
    assert third.get(timeout=60) == {"recipients": 0, "tasks": 0}
    # A build redelivered for the same window finds its digests built.
    window, cutoff = hourly_window(now=datetime.fromisoformat(next_hour))
    again = digests_build(
        recipient_ids=[r.pk for r in recipients], frequency="hourly", window=window, cutoff=cutoff
    )
    assert again == {"built": 0, "suppressed": 0, "notifications": 0, "existing": 30}
    assert len(fake_esp.messages) == 30
    assert sorted(_to(m) for m in fake_esp.messages) == sorted(r.email for r in recipients)
    assert Delivery.objects.filter(kind=Delivery.Kind.DIGEST).count() == 30


def _pool_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _holds_notification_locks() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
            WHERE c.relname = 'notifier_notification' AND l.mode = 'RowShareLock'
              AND l.pid <> pg_backend_pid()
            """
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.postgresql
def test_digest_task_killed_midway_is_redelivered_and_sends_one_digest(
    celery_worker_process, start_worker, fake_esp
):
    """Acceptance 2, second half: SIGKILL the worker process while it is inside
    the build's transaction (notifications locked, digest being rendered), let
    Celery redeliver the task, and get one digest with every event.

    The topic's entry template loops over a long list, so rendering takes a
    few seconds: the window in which the process is killed, with no hook in
    the code under test."""
    topic = TopicFactory(
        default_frequency="hourly",
        digest_item="{% for a in data.xs %}{% for b in data.xs %}{% endfor %}{% endfor %}"
        "{{ data.marker }}",
    )
    ann = RecipientFactory(email="ann@example.com")
    for n in range(12):
        notify(ann, topic, {"marker": f"evt-{n}", "xs": list(range(500))})
    window, cutoff = hourly_window(now=timezone.now() + timedelta(hours=1))
    doomed = start_worker("digest-doomed", queues="digest-kill")
    (first_child,) = _pool_children(doomed.proc.pid)
    log_start = doomed.log_path.stat().st_size

    build_digests.apply_async(
        args=[[ann.pk], "hourly", window, cutoff.isoformat()], queue="digest-kill"
    )
    wait_for(_holds_notification_locks, timeout=30, interval=0.05)
    os.kill(first_child, signal.SIGKILL)  # mid-transaction: nothing committed
    assert not Delivery.objects.exists()

    key = digest_key(frequency="hourly", recipient_id=ann.pk, window=window)
    wait_for(lambda: Delivery.objects.filter(idempotency_key=key, status="sent").exists(), 90)
    log = doomed.log_path.read_text()[log_start:]
    assert "signal 9" in log and "WorkerLostError" in log
    assert _pool_children(doomed.proc.pid) != [first_child]

    delivery = Delivery.objects.get()
    assert set(Notification.objects.values_list("digest", flat=True)) == {delivery.pk}
    (message,) = fake_esp.messages
    assert _to(message) == "ann@example.com"
    assert _markers(message) == {f"evt-{n}" for n in range(12)}
