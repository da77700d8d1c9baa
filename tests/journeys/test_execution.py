"""Journeys run in this process: steps, waits, branches, exits, claims."""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from campaigns.models import ContactList, ListMembership
from journeys.models import Journey, JourneyEnrollment, JourneyStep, JourneyStepRun
from journeys.services import steps as step_runs
from journeys.services.enrollments import enrollments_remove, journey_enroll
from journeys.services.execution import (
    enrollment_step_run,
    enrollments_claim,
    enrollments_run_batch,
    wait_end,
)
from journeys.services.triggers import triggers_poll
from notifier.models import Delivery, Recipient
from notifier.services.unsubscribe import recipient_unsubscribe
from tests.journeys.factories import WAIT, campaign_template, welcome_journey

pytestmark = pytest.mark.django_db
State = JourneyEnrollment.State


@pytest.fixture(autouse=True)
def no_publishing(monkeypatch):
    """Batches run here, by the test; the tick's Celery tasks are not published."""
    monkeypatch.setattr("journeys.tasks.run_enrollments.apply_async", lambda *a, **k: None)


def run_due(now) -> dict:
    ids = list(
        JourneyEnrollment.objects.filter(state__in=JourneyEnrollment.LIVE_STATES).values_list(
            "id", flat=True
        )
    )
    return enrollments_run_batch(ids=ids, now=now)


def subjects(recipient) -> list[str]:
    return sorted(
        Delivery.objects.filter(recipient=recipient).values_list("template__subject", flat=True)
    )


def test_welcome_journey_paths_with_a_driven_clock():
    journey = welcome_journey()
    people = [Recipient.objects.create(email=f"p{i}@example.com") for i in range(4)]
    for person in people:
        ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    t0 = timezone.now()
    assert triggers_poll(now=t0) == {f"journey_{journey.pk}": 4}
    run_due(t0)
    assert set(JourneyEnrollment.objects.values_list("state", flat=True)) == {State.WAITING}
    # The wait is a due time in the database.
    assert JourneyEnrollment.objects.filter(due_at=t0 + WAIT).count() == 4
    # Before the wait ends nothing moves.
    assert run_due(t0 + WAIT - timedelta(seconds=1))["claimed"] == 0
    Delivery.objects.filter(recipient=people[0]).update(clicks=1)
    recipient_unsubscribe(recipient=people[3], scope="all")
    run_due(t0 + WAIT)
    assert subjects(people[0]) == ["Glad you came by", "Welcome"]
    assert subjects(people[1]) == ["Did you see this?", "Welcome"]
    assert subjects(people[3]) == ["Welcome"]
    by_person = {e.recipient_id: e for e in JourneyEnrollment.objects.all()}
    assert by_person[people[0].pk].exit_reason == JourneyEnrollment.ExitReason.EXIT_STEP
    assert by_person[people[1].pk].state == State.DONE
    assert by_person[people[3].pk].exit_reason == JourneyEnrollment.ExitReason.UNSUBSCRIBED
    # Nothing runs twice: running again changes nothing.
    before = Delivery.objects.count(), JourneyStepRun.objects.count()
    assert run_due(t0 + 10 * WAIT)["claimed"] == 0
    assert (Delivery.objects.count(), JourneyStepRun.objects.count()) == before


def test_a_held_claim_is_not_taken_and_an_expired_one_is(settings):
    journey = welcome_journey()
    person = Recipient.objects.create(email="c@example.com")
    journey_enroll(trigger=Journey.Trigger.MANUAL, recipient=person)  # not a manual journey
    assert not JourneyEnrollment.objects.exists()
    ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    now = timezone.now()
    triggers_poll(now=now)
    (enrollment,) = JourneyEnrollment.objects.all()
    token, claimed = enrollments_claim(ids=[enrollment.pk], now=now)
    assert claimed == [enrollment.pk]
    # A second batch (a duplicate task) gets nothing while the lease holds.
    assert enrollments_claim(ids=[enrollment.pk], now=now)[1] == []
    # The first worker dies; its lease runs out; another worker claims the row.
    JourneyEnrollment.objects.filter(pk=enrollment.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    token2, claimed2 = enrollments_claim(ids=[enrollment.pk], now=now)
    assert claimed2 == [enrollment.pk]
    # The dead worker's token no longer runs anything.
    assert enrollment_step_run(enrollment_id=enrollment.pk, token=token, now=now) == "lost"
    assert enrollment_step_run(enrollment_id=enrollment.pk, token=token2, now=now) == "advanced"
    assert Delivery.objects.count() == 1


def test_a_step_that_fails_rolls_back_whole_and_is_tried_again(monkeypatch):
    """The send, the step's run and the advance commit together: a crash
    between the Delivery write and the advance leaves nothing behind, and the
    next run sends exactly once."""
    journey = welcome_journey()
    person = Recipient.objects.create(email="k@example.com")
    ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    now = timezone.now()
    triggers_poll(now=now)
    real_advance = step_runs._advance

    def crash(*args, **kwargs):
        raise RuntimeError("worker died after the write, before the advance")

    monkeypatch.setattr(step_runs, "_advance", crash)
    assert run_due(now)["failed"] == 1
    assert not Delivery.objects.exists() and not JourneyStepRun.objects.exists()
    (enrollment,) = JourneyEnrollment.objects.all()
    assert enrollment.claim_token is None and enrollment.step.position == 1
    monkeypatch.setattr(step_runs, "_advance", real_advance)
    run_due(now)
    assert Delivery.objects.filter(idempotency_key__startswith="journey:").count() == 1
    enrollment.refresh_from_db()
    assert enrollment.state == State.WAITING


def test_wait_until_a_local_time_and_weekday_in_the_recipients_zone():
    step = JourneyStep(kind=JourneyStep.Kind.WAIT, wait_seconds=3600, wait_until_time=time(9, 0))
    # Monday 2026-03-02 23:30 UTC is Tuesday 08:30 in Tokyo (+09:00): an hour
    # later it is 09:30 there, so 09:00 Wednesday local.
    now = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    assert wait_end(step, "Asia/Tokyo", now) == datetime(2026, 3, 4, 0, 0, tzinfo=UTC)
    step.wait_weekday = 4  # Friday
    assert wait_end(step, "Asia/Tokyo", now) == datetime(2026, 3, 6, 0, 0, tzinfo=UTC)
    step.wait_until_time, step.wait_weekday = None, None
    assert wait_end(step, "Asia/Tokyo", now) == now + timedelta(hours=1)
    # An unknown zone falls back to UTC rather than failing the step.
    step.wait_seconds, step.wait_until_time = 0, time(9, 0)
    assert wait_end(step, "Nowhere/Else", now) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def test_goal_attribute_exits_and_set_attribute_and_lists_are_steps():
    vip = ContactList.objects.create(name="VIP")
    journey = Journey.objects.create(
        name="Onboarding",
        trigger=Journey.Trigger.SIGNUP_CONFIRMED,
        goal_attribute="plan",
        goal_value="paid",
    )
    for position, kind, extra in [
        (1, "set_attribute", {"attribute": "stage", "value": "onboarding"}),
        (2, "add_to_list", {"contact_list": vip}),
        (3, "wait", {"wait_seconds": 60}),
        (4, "remove_from_list", {"contact_list": vip}),
        (5, "send", {"template": campaign_template("tips", "Tips")}),
    ]:
        JourneyStep.objects.create(journey=journey, position=position, kind=kind, **extra)
    from journeys.services.versions import journey_activate

    journey_activate(journey=journey)
    ann = Recipient.objects.create(email="ann@example.com")
    bob = Recipient.objects.create(email="bob@example.com")
    now = timezone.now()
    assert journey_enroll(trigger="signup_confirmed", recipient=ann, now=now) == 1
    assert journey_enroll(trigger="signup_confirmed", recipient=ann, now=now) == 0
    journey_enroll(trigger="signup_confirmed", recipient=bob, now=now)
    run_due(now)
    ann.refresh_from_db()
    assert ann.attributes == {"stage": "onboarding"}
    assert set(vip.members.values_list("email", flat=True)) == {
        "ann@example.com",
        "bob@example.com",
    }
    Recipient.objects.filter(pk=bob.pk).update(attributes={"stage": "onboarding", "plan": "paid"})
    run_due(now + timedelta(seconds=60))
    # Ann went on and left the list; Bob reached the goal and left the journey first.
    assert list(vip.members.values_list("email", flat=True)) == ["bob@example.com"]
    assert subjects(ann) == ["Tips"] and subjects(bob) == []
    bob_enrollment = JourneyEnrollment.objects.get(recipient=bob)
    assert bob_enrollment.exit_reason == JourneyEnrollment.ExitReason.GOAL
    with pytest.raises(ValueError):
        journey_enroll(trigger="no-such-trigger", recipient=ann)


def test_staff_removal_takes_a_waiting_recipient_out():
    journey = welcome_journey()
    person = Recipient.objects.create(email="r@example.com")
    ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    now = timezone.now()
    triggers_poll(now=now)
    run_due(now)
    enrollment = JourneyEnrollment.objects.get()
    assert enrollments_remove(ids=[enrollment.pk]) == 1
    run_due(now + 2 * WAIT)
    enrollment.refresh_from_db()
    assert enrollment.state == State.EXITED
    assert enrollment.exit_reason == JourneyEnrollment.ExitReason.REMOVED
    assert subjects(person) == ["Welcome"]


def _two_step_journey() -> Journey:
    """Send an email, then set an attribute (the benchmark's journey)."""
    from journeys.services.versions import journey_activate

    journey = Journey.objects.create(name="Two steps")
    JourneyStep.objects.create(
        journey=journey, position=1, kind="send", template=campaign_template("hi", "Hi")
    )
    JourneyStep.objects.create(
        journey=journey, position=2, kind="set_attribute", attribute="greeted", value="yes"
    )
    return journey_activate(journey=journey)


def test_a_batch_runs_its_steps_set_based(django_assert_max_num_queries):
    """A batch of 60 enrollments through send + set attribute: a few queries
    per round, not a few per enrollment; each step ran once for each."""
    from journeys.services.enrollments import enrollments_create

    journey = _two_step_journey()
    people = Recipient.objects.bulk_create(Recipient(email=f"b{i}@example.com") for i in range(60))
    now = timezone.now()
    assert enrollments_create(journey=journey, entries={p.pk: "" for p in people}, now=now) == 60
    ids = list(JourneyEnrollment.objects.values_list("id", flat=True))
    with django_assert_max_num_queries(40):
        counts = enrollments_run_batch(ids=ids, now=now)
    assert counts == {"claimed": 60, "advanced": 60, "done": 60}
    assert JourneyStepRun.objects.count() == 120
    assert Delivery.objects.filter(idempotency_key__startswith="journey:").count() == 60
    assert Recipient.objects.filter(attributes__greeted="yes").count() == 60
    assert set(JourneyEnrollment.objects.values_list("state", flat=True)) == {State.DONE}


def test_one_failing_enrollment_does_not_hold_back_its_batch(monkeypatch):
    from journeys.services.enrollments import enrollments_create

    journey = _two_step_journey()
    people = Recipient.objects.bulk_create(Recipient(email=f"f{i}@example.com") for i in range(5))
    now = timezone.now()
    enrollments_create(journey=journey, entries={p.pk: "" for p in people}, now=now)
    bad = JourneyEnrollment.objects.get(recipient=people[2])
    real_advance = step_runs._advance

    def advance(enrollment, *args, **kwargs):
        if enrollment.pk == bad.pk:
            raise RuntimeError("this one breaks")
        return real_advance(enrollment, *args, **kwargs)

    monkeypatch.setattr(step_runs, "_advance", advance)
    counts = run_due(now)
    assert counts["failed"] == 1 and counts["done"] == 4
    # The failed one left nothing behind and is free for a later tick.
    bad.refresh_from_db()
    assert bad.claim_token is None and bad.step.position == 1
    assert not JourneyStepRun.objects.filter(enrollment=bad).exists()
    assert not Delivery.objects.filter(recipient=people[2]).exists()
    monkeypatch.setattr(step_runs, "_advance", real_advance)
    run_due(now)
    assert JourneyStepRun.objects.count() == 10


def test_rows_of_a_dead_worker_are_published_again_once_its_lease_runs_out(settings):
    """Published rows are not published again while their task may still come
    (a queue behind a slow worker must not fill with copies), except those a
    worker claimed and whose lease ran out: that worker died."""
    from journeys.services.execution import enrollments_dispatch_due

    settings.JOURNEYS_REDISPATCH_SECONDS = 300
    journey = welcome_journey()
    people = Recipient.objects.bulk_create(Recipient(email=f"d{i}@example.com") for i in range(3))
    ListMembership.objects.bulk_create(
        ListMembership(contact_list=journey.trigger_list, recipient=p) for p in people
    )
    now = timezone.now()
    triggers_poll(now=now)
    assert enrollments_dispatch_due(now=now) == 3
    assert enrollments_dispatch_due(now=now) == 0  # their tasks are on the way
    first = JourneyEnrollment.objects.order_by("id").first()
    enrollments_claim(ids=[first.pk], now=now)
    JourneyEnrollment.objects.filter(pk=first.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert enrollments_dispatch_due(now=now) == 1
