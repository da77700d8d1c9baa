"""Staff see suppressions in the admin and lift them with a recorded reason."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User

from notifier.models import Recipient, Suppression
from notifier.services.suppressions import suppression_add
from tests.notifier.factories import RecipientFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/notifier/suppression/"


@pytest.fixture
def bounced():
    recipient = RecipientFactory(email="gone@example.com")
    suppression = suppression_add(
        email=recipient.email, reason=Suppression.Reason.HARD_BOUNCE, note="Hard bounce"
    )
    return recipient, suppression


def _staff(*codenames: str) -> User:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="notifier", codename__in=codenames)
    )
    return user


def test_staff_see_suppressions(client, bounced):
    client.force_login(_staff("view_suppression"))
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert "gone@example.com" in response.content.decode()
    assert "Hard bounce" in response.content.decode()


def test_lift_asks_for_a_reason_then_records_it(client, bounced):
    recipient, suppression = bounced
    user = _staff("view_suppression", "change_suppression")
    client.force_login(user)
    selection = {"action": "lift", ACTION_CHECKBOX_NAME: [suppression.pk]}
    response = client.post(CHANGELIST, selection)
    assert response.status_code == 200
    assert "Reason (recorded)" in response.content.decode()
    response = client.post(CHANGELIST, {**selection, "lift_reason": "   "})
    assert "Say why the suppressions are lifted" in response.content.decode()
    suppression.refresh_from_db()
    assert suppression.lifted_at is None
    response = client.post(
        CHANGELIST, {**selection, "lift_reason": "Mailbox fixed, confirmed by phone"}, follow=True
    )
    assert "1 suppressions lifted." in response.content.decode()
    suppression.refresh_from_db()
    assert suppression.lifted_at is not None
    assert suppression.lifted_reason == "Mailbox fixed, confirmed by phone"
    assert suppression.lifted_by == user
    recipient.refresh_from_db()
    assert recipient.status == Recipient.Status.ACTIVE
    # A new suppression can be added after the lift; the old row stays as history.
    suppression_add(email=recipient.email, reason=Suppression.Reason.COMPLAINT)
    assert Suppression.objects.filter(email=recipient.email).count() == 2


def test_view_only_staff_cannot_lift(client, bounced):
    _recipient, suppression = bounced
    client.force_login(_staff("view_suppression"))
    client.post(
        CHANGELIST,
        {"action": "lift", ACTION_CHECKBOX_NAME: [suppression.pk], "lift_reason": "because"},
    )
    suppression.refresh_from_db()
    assert suppression.lifted_at is None


def test_suppressions_are_never_deleted(admin_client, bounced):
    _recipient, suppression = bounced
    response = admin_client.post(f"{CHANGELIST}{suppression.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Suppression.objects.filter(pk=suppression.pk).exists()


def test_staff_add_a_suppression_through_the_service(admin_client):
    recipient = RecipientFactory(email="ann@example.com")
    response = admin_client.post(
        f"{CHANGELIST}add/", {"email": " Ann@Example.COM ", "reason": "complaint", "note": "Phone"}
    )
    assert response.status_code == 302
    suppression = Suppression.objects.get()
    assert suppression.email == "ann@example.com"
    recipient.refresh_from_db()
    assert recipient.status == Recipient.Status.COMPLAINED
    response = admin_client.post(
        f"{CHANGELIST}add/", {"email": "ann@example.com", "reason": "manual"}
    )
    assert "ann@example.com is already suppressed (Spam complaint)." in response.content.decode()
    assert Suppression.objects.count() == 1
    response = admin_client.post(
        f"{CHANGELIST}add/", {"email": "not an address", "reason": "manual"}
    )
    assert response.status_code == 200
    assert Suppression.objects.count() == 1
