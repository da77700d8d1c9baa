"""Acceptance: a welcome journey over 1,000 recipients through real Celery
workers, Redis and PostgreSQL, with a driven clock and two workers killed
(SIGKILL) mid-run.

The test plays beat: it calls the tick with the journey's ``now`` (two days
pass in an instant); batches of steps run on real worker processes and the
emails go out through the fake ESP.
"""

import time
from collections import Counter

import pytest
from django.utils import timezone

from campaigns.models import ListMembership
from journeys.models import JourneyEnrollment, JourneyStepRun
from journeys.services.execution import journeys_tick
from notifier.models import Delivery, Recipient
from notifier.services.retries import deliveries_sweep
from notifier.services.unsubscribe import recipient_unsubscribe
from tests.conftest import wait_for
from tests.journeys.factories import WAIT, welcome_journey
from tests.notifier.esp_payloads import post_webhook, postmark_click

# Both databases: under SQLite's one writer at a time it is the same test.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

QUEUE = "journeys-e2e"
LEASE = 3
N = 1000
Live = JourneyEnrollment.LIVE_STATES


@pytest.fixture(autouse=True)
def forget_the_queue():
    """Batches the last tick published after the test's end are dropped."""
    from notifier.redis import get_redis

    yield
    get_redis().delete(QUEUE)


def _tick_until(now, done, timeout=240):
    """Beat: tick (and sweep the outbox) until ``done()`` holds."""

    def check():
        journeys_tick(now=now)
        deliveries_sweep()
        return done()

    return wait_for(check, timeout=timeout, interval=0.5)


def _kill_when(worker, progressed, timeout=120):
    """SIGKILL ``worker`` as soon as ``progressed()`` holds (mid-run)."""
    wait_for(progressed, timeout=timeout, interval=0.02)
    worker.kill()


def test_welcome_journey_over_1000_recipients_survives_two_kills(
    celery_worker_process, start_worker, fake_esp, settings, client
):
    settings.JOURNEYS_QUEUE = QUEUE
    settings.JOURNEYS_BATCH_SIZE = 25
    # A killed worker's claimed rows are published again once their lease
    # runs out. Rows (and emails) published but never run, say a worker
    # killed after marking them dispatched and before publishing their task,
    # wait for this (300 s in production). Not much shorter: a row whose task
    # is merely queued behind others is published again after it too, and
    # each copy is a batch that claims nothing (under SQLite, a write).
    settings.JOURNEYS_REDISPATCH_SECONDS = 20
    settings.NOTIFIER_REDISPATCH_SECONDS = 20
    journey = welcome_journey()
    people = Recipient.objects.bulk_create(
        Recipient(email=f"w{i:04d}@example.com") for i in range(N)
    )
    ListMembership.objects.bulk_create(
        ListMembership(contact_list=journey.trigger_list, recipient=p) for p in people
    )
    steps = {s.position: s for s in journey.steps.all()}
    first = start_worker("journey-1", queues=QUEUE, JOURNEYS_LEASE_SECONDS=LEASE)

    # Day 0: everyone enters and gets the welcome email; the first worker is
    # killed while it is part-way through.
    t0 = timezone.now()
    journeys_tick(now=t0)
    assert JourneyEnrollment.objects.count() == N
    _kill_when(first, lambda: JourneyStepRun.objects.filter(step=steps[1]).count() >= N // 7)
    assert JourneyStepRun.objects.filter(step=steps[1]).count() < N
    second = start_worker("journey-2", queues=QUEUE, JOURNEYS_LEASE_SECONDS=LEASE)
    time.sleep(LEASE + 0.5)  # the dead worker's lease runs out
    _tick_until(t0, lambda: JourneyEnrollment.objects.filter(state="waiting").count() == N)
    welcome = Delivery.objects.filter(template=steps[1].template)
    _tick_until(t0, lambda: welcome.filter(status=Delivery.Status.SENT).count() == N)

    # During the wait: a third of them click in the welcome email (ESP
    # webhooks); two unsubscribe (one clicker, one not).
    clickers = {p.email for i, p in enumerate(people) if i % 3 == 0}
    for delivery in welcome.select_related("recipient"):
        if delivery.recipient.email in clickers:
            body = postmark_click(
                message_id=delivery.esp_message_id,
                email=delivery.recipient.email,
                delivery_uuid=str(delivery.uuid),
            )
            assert post_webhook(client, body).status_code == 200
    leavers = {people[3].email, people[4].email}
    for person in people[3:5]:
        recipient_unsubscribe(recipient=person, scope="all")

    # Day 2: the wait is over; the branch and the follow-ups run, and the
    # second worker is killed part-way through.
    t1 = t0 + WAIT
    journeys_tick(now=t1)
    finished = JourneyEnrollment.objects.exclude(state__in=Live)
    _kill_when(second, lambda: finished.count() >= N // 7)
    assert finished.count() < N
    start_worker("journey-3", queues=QUEUE, JOURNEYS_LEASE_SECONDS=LEASE)
    time.sleep(LEASE + 0.5)
    _tick_until(t1, lambda: finished.count() == N)
    mails = Delivery.objects.filter(idempotency_key__startswith="journey:")
    _tick_until(t1, lambda: not mails.filter(status__in=["pending", "sending"]).exists())

    # Every recipient got exactly the emails of its path, each once.
    received = Counter((m["To"], m["Subject"]) for m in fake_esp.messages)
    assert max(received.values()) == 1
    expected = set()
    for person in people:
        expected.add((person.email, "Welcome"))
        if person.email in leavers:
            continue
        follow_up = "Glad you came by" if person.email in clickers else "Did you see this?"
        expected.add((person.email, follow_up))
    assert set(received) == expected
    assert mails.filter(status=Delivery.Status.SENT).count() == len(expected)

    # Each enrollment ran each step of its path once, and ended where it should.
    states = Counter(JourneyEnrollment.objects.values_list("state", "exit_reason").order_by())
    assert states == {
        ("exited", "unsubscribed"): 2,
        ("exited", "exit_step"): len(clickers - leavers),
        ("done", ""): N - 2 - len(clickers - leavers),
    }
    runs = Counter(JourneyStepRun.objects.values_list("step__position", flat=True).order_by())
    assert runs == {
        1: N,
        2: N,
        3: N - 2,
        4: len(clickers - leavers),
        5: len(clickers - leavers),
        6: N - 2 - len(clickers - leavers),
    }
