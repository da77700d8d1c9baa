"""Pause, stop, new versions and moving recipients; the admin pages."""

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from campaigns.models import ListMembership
from journeys.models import Journey, JourneyEnrollment, JourneyStep
from journeys.services.execution import enrollments_run_batch
from journeys.services.triggers import triggers_poll
from journeys.services.versions import (
    JourneyStateError,
    enrollments_move_to_version,
    journey_activate,
    journey_new_version,
    journey_pause,
    journey_resume,
    journey_stop,
)
from notifier.models import Delivery, Recipient
from tests.journeys.factories import WAIT, welcome_journey

pytestmark = pytest.mark.django_db
State = JourneyEnrollment.State


@pytest.fixture(autouse=True)
def no_publishing(monkeypatch):
    monkeypatch.setattr("journeys.tasks.run_enrollments.apply_async", lambda *a, **k: None)


def join(journey, email):
    person = Recipient.objects.create(email=email)
    ListMembership.objects.create(contact_list=journey.trigger_list, recipient=person)
    return person


def run_all(now):
    ids = list(JourneyEnrollment.objects.values_list("id", flat=True))
    return enrollments_run_batch(ids=ids, now=now)


def test_paused_journey_runs_nothing_until_resumed_and_stop_exits_everyone():
    journey = welcome_journey()
    join(journey, "a@example.com")
    now = timezone.now()
    triggers_poll(now=now)
    journey_pause(journey=journey)
    assert run_all(now)["claimed"] == 0
    assert triggers_poll(now=now) == {}
    journey_resume(journey=journey)
    run_all(now)
    assert JourneyEnrollment.objects.get().state == State.WAITING
    assert journey_stop(journey=journey) == 1
    assert run_all(now + WAIT)["claimed"] == 0
    assert JourneyEnrollment.objects.get().exit_reason == JourneyEnrollment.ExitReason.STOPPED
    with pytest.raises(JourneyStateError):
        journey_pause(journey=journey)


def test_a_new_version_takes_new_recipients_while_the_old_one_finishes():
    v1 = welcome_journey()
    join(v1, "early@example.com")
    now = timezone.now()
    triggers_poll(now=now)
    run_all(now)
    v2 = journey_new_version(journey=v1)
    assert (v2.version, v2.status, v2.lineage) == (2, Journey.Status.DRAFT, v1.lineage)
    assert journey_new_version(journey=v1) == v2  # one draft at a time
    # The edit: the nudge goes out after one day less.
    JourneyStep.objects.filter(journey=v2, position=2).update(wait_seconds=86400)
    journey_activate(journey=v2)
    v1.refresh_from_db()
    assert v1.retired_at is not None and v1.status == Journey.Status.ACTIVE
    join(v1, "late@example.com")
    triggers_poll(now=now)
    late = JourneyEnrollment.objects.get(recipient__email="late@example.com")
    assert (late.journey_id, late.started_version) == (v2.pk, 2)
    early = JourneyEnrollment.objects.get(recipient__email="early@example.com")
    assert early.journey_id == v1.pk
    # Staff move the early recipient: it keeps its wait and goes on in v2.
    assert enrollments_move_to_version(source=v1, target=v2) == 1
    early.refresh_from_db()
    assert (early.journey_id, early.step.position, early.state) == (v2.pk, 2, State.WAITING)
    assert early.started_version == 1
    run_all(now + WAIT)
    subjects = sorted(
        Delivery.objects.filter(recipient__email="early@example.com").values_list(
            "template__subject", flat=True
        )
    )
    assert subjects == ["Did you see this?", "Welcome"]


def test_invalid_journeys_are_refused_on_activation():
    journey = Journey.objects.create(name="Empty")
    with pytest.raises(JourneyStateError, match="at least one step"):
        journey_activate(journey=journey)
    JourneyStep.objects.create(journey=journey, position=1, kind="branch", condition="clicked")
    with pytest.raises(JourneyStateError, match="earlier send step"):
        journey_activate(journey=journey)
    assert Journey.objects.get(pk=journey.pk).status == Journey.Status.DRAFT


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_journey_page_shows_the_steps_as_a_diagram_with_statistics(staff):
    journey = welcome_journey()
    join(journey, "a@example.com")
    join(journey, "b@example.com")
    now = timezone.now()
    triggers_poll(now=now)
    run_all(now)
    Delivery.objects.update(status=Delivery.Status.SENT)
    Delivery.objects.filter(recipient__email="a@example.com").update(opens=1, clicks=1)
    response = staff.get(f"/admin/journeys/journey/{journey.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="journey-diagram"' in page
    assert "<br>Send “welcome”</td>" in page
    assert "Wait 2 days" in page
    assert "If clicked in the email of step 1: go to 4, else 6" in page
    stats = response.context["diagram"][0]["stats"]
    assert dict(stats) == {
        "entered": 2,
        "waiting": 0,
        "sent": 2,
        "opened": 1,
        "clicked": 1,
        "converted": 0,
        "exited": 0,
    }
    assert dict(response.context["diagram"][1]["stats"])["waiting"] == 2
    # A journey that has run is not edited in place: its steps are read-only.
    assert 'name="steps-0-position"' not in page
    assert staff.get("/admin/journeys/journey/").status_code == 200
    assert staff.get("/admin/journeys/journeyenrollment/").status_code == 200


def test_admin_actions_make_a_new_version_and_refuse_a_bad_change(staff):
    journey = welcome_journey()
    response = staff.post(
        "/admin/journeys/journey/",
        {"action": "new_version", "_selected_action": [journey.pk]},
        follow=True,
    )
    assert response.status_code == 200
    draft = Journey.objects.get(lineage=journey.lineage, version=2)
    assert draft.steps.count() == 6
    response = staff.post(
        "/admin/journeys/journey/",
        {"action": "pause", "_selected_action": [draft.pk]},
        follow=True,
    )
    assert "Only an active journey can be paused" in response.content.decode()
    assert Journey.objects.get(pk=draft.pk).status == Journey.Status.DRAFT


def test_marketing_staff_edit_journeys():
    from django.contrib.auth.models import Group

    group = Group.objects.get(name="Marketing")
    codenames = set(
        group.permissions.filter(content_type__app_label="journeys").values_list(
            "codename", flat=True
        )
    )
    assert {"change_journey", "add_journeystep", "view_journeyenrollment"} <= codenames
    assert "change_journeyenrollment" not in codenames


def test_marketing_staff_open_journeys_and_their_enrollments(marketer):
    journey = welcome_journey()
    for url in (
        "/admin/journeys/journey/",
        "/admin/journeys/journey/add/",
        f"/admin/journeys/journey/{journey.pk}/change/",
        "/admin/journeys/journeyenrollment/",
    ):
        assert marketer.get(url).status_code == 200, url
