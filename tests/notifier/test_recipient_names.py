"""Recipient names are one line of visible text wherever they are set: a
control character in a name ends up in a To header, where it splits or
mangles it. Only the caller that created a recipient may rename it."""

import io

import pytest

from campaigns.services.contacts import contacts_import_csv
from notifier import notify, send
from notifier.errors import InvalidName, NotifierError
from notifier.models import Delivery, Recipient
from notifier.services.recipients import recipient_get_or_create
from tests.notifier.factories import TopicFactory

pytestmark = pytest.mark.django_db

BAD_NAMES = [
    "a\r\nb: 1",
    "a\nb",
    "tab\tname",
    "nul\x00",
    "del\x7f",
    "c1\x85",
    "ls\u2028",
    "ps\u2029",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_send_refuses_a_control_character_in_a_name(name):
    with pytest.raises(InvalidName, match=r"control character|NUL"):
        send(subject="s", text="t", to="ann@example.com", name=name)
    assert issubclass(InvalidName, NotifierError)
    assert not Recipient.objects.exists() and not Delivery.objects.exists()


@pytest.mark.parametrize("name", ["Ann Archer", "Zoë Ünal", "李小龍", "O'Brien-Smith (work)", ""])
def test_ordinary_names_are_kept(name):
    send(subject="s", text="t", to="ann@example.com", name=name)
    assert Recipient.objects.get().name == name


def test_a_name_already_stored_with_a_newline_is_refused_by_the_admin_form(admin_client):
    recipient = Recipient.objects.create(email="ann@example.com")
    response = admin_client.post(
        f"/admin/notifier/recipient/{recipient.pk}/change/",
        {
            "email": "ann@example.com",
            "name": "Ann\r\nBcc: eve@example.com",
            "attributes": "{}",
            "time_zone": "UTC",
            "locale": "en",
            "status": "active",
        },
    )
    assert response.status_code == 200  # the form again, with the error
    assert "control character" in response.content.decode()
    recipient.refresh_from_db()
    assert recipient.name == ""


def test_the_csv_import_reports_a_row_whose_name_has_a_control_character():
    data = "email,name\nann@example.com,Ann\x0bArcher\nbob@example.com,Bob\n"
    report = contacts_import_csv(stream=io.BytesIO(data.encode()))
    assert report.imported == 1
    ((row, reason),) = report.errors
    assert row == 2 and "control character" in reason
    assert list(Recipient.objects.values_list("email", flat=True)) == ["bob@example.com"]


def test_notify_never_sets_a_name():
    TopicFactory(key="news", default_frequency="instant")
    notify(recipient="ann@example.com", topic="news", data={"title": "t"})
    assert Recipient.objects.get().name == ""


def test_only_the_caller_that_created_a_recipient_renames_it():
    # Code in this process fills an empty name, never replaces one.
    staff = Recipient.objects.create(email="staff@example.com")
    assert recipient_get_or_create(email="staff@example.com", name="Filled").name == "Filled"
    assert recipient_get_or_create(email="staff@example.com", name="Other").name == "Filled"
    assert staff.created_by == ""

    # An API caller names what it creates, and renames only that.
    mine = recipient_get_or_create(email="mine@example.com", name="Ann", caller="api:billing")
    assert mine.created_by == "api:billing"
    assert (
        recipient_get_or_create(email="mine@example.com", name="Ann B", caller="api:billing").name
        == "Ann B"
    )
    assert (
        recipient_get_or_create(email="mine@example.com", name="Eve", caller="api:shop").name
        == "Ann B"
    )
    unnamed = Recipient.objects.create(email="unnamed@example.com")
    assert (
        recipient_get_or_create(email="unnamed@example.com", name="Eve", caller="api:shop").name
        == ""
    )
    unnamed.refresh_from_db()
    assert unnamed.name == ""
