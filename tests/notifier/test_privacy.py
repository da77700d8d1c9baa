"""GDPR export and erase, checked against the whole model registry.

A recipient's data is spread over every table that points at it; these
tests find those tables themselves (from the models, not from the code under
test's own list), fill them, and then search every text and JSON column of
every model for the person's address and name.
"""

import io
import json

import pytest
from anymail.signals import AnymailTrackingEvent
from django.apps import apps
from django.contrib.auth.models import User
from django.db import models
from django.utils import timezone

from api.services import api_token_create
from campaigns.models import Consent, ListMembership
from campaigns.services.contacts import contacts_import_csv
from campaigns.services.signups import SignupRefused, SignupRequest, signup_request
from notifier import notify, send
from notifier.errors import AddressSuppressed
from notifier.models import (
    Delivery,
    DeliveryEvent,
    Notification,
    Preference,
    Recipient,
    RecipientErasure,
    Suppression,
    Template,
    WebhookDelivery,
    WebhookEndpoint,
)
from notifier.services.events import delivery_event_record
from notifier.services.privacy import recipient_erase, recipient_export
from notifier.services.suppressions import suppression_lift
from tests.api.conftest import ApiClient
from tests.campaigns.factories import ContactListFactory
from tests.notifier.factories import TemplateFactory, TopicFactory

pytestmark = pytest.mark.django_db

EMAIL = "zebulon.quartermaine@example.com"
NAME = "Zebulon Quartermaine"
OTHER = "olive@example.com"


def models_pointing_at_recipient() -> set[type[models.Model]]:
    """Every model from which a chain of foreign keys reaches Recipient."""

    def reaches(model, seen) -> bool:
        for field in model._meta.concrete_fields:
            if not (field.is_relation and field.related_model):
                continue
            target = field.related_model
            if target is Recipient:
                return True
            if target not in seen and reaches(target, seen | {target}):
                return True
        return False

    return {
        model
        for model in apps.get_models(include_auto_created=True)
        if model is not Recipient and reaches(model, {model})
    }


def text_columns(model) -> list[str]:
    return [
        field.name
        for field in model._meta.concrete_fields
        if isinstance(field, models.CharField | models.TextField | models.JSONField)
        and not field.is_relation
    ]


def rows_mentioning(needle: str) -> dict[str, int]:
    """Every model's rows holding ``needle`` in any text or JSON column."""
    found = {}
    for model in apps.get_models(include_auto_created=True):
        for column in text_columns(model):
            n = model._base_manager.filter(**{f"{column}__icontains": needle}).count()
            if n:
                found[f"{model._meta.label_lower}.{column}"] = n
    return found


@pytest.fixture
def person(client, fake_esp, confirmation_template):
    """Zebulon, with a row in every kind of table about a recipient."""
    contact_list = ContactListFactory(name="Newsletter")
    WebhookEndpoint.objects.create(
        name="CRM", url="http://127.0.0.1:9/", secret="s" * 20, event_types=["delivered"]
    )
    consent = signup_request(
        request=SignupRequest(
            email=EMAIL, name=NAME, attributes={"city": "Zennor"}, ip_address="198.51.100.7"
        ),
        lists=[contact_list],
        consent_text="Send me the newsletter.",
    )
    recipient = consent.recipient
    recipient.name = NAME
    recipient.attributes = {"nickname": "Zeb", "email_copy": EMAIL}
    recipient.save()
    ListMembership.objects.create(contact_list=contact_list, recipient=recipient)
    delivery = send(
        to=recipient,
        template=TemplateFactory(),
        context={"code": "Z", "note": f"for {NAME} <{EMAIL}>"},
        idempotency_key="privacy-1",
    )
    send(
        to=recipient,
        subject=f"Hello {NAME}",
        html=f"<p>{NAME}, this is for {EMAIL}</p>",
        send_at=timezone.now() + timezone.timedelta(days=1),
    )
    Delivery.objects.filter(pk=delivery.pk).update(status="sent", esp_message_id="esp-z")
    delivery_event_record(
        event=AnymailTrackingEvent(
            event_type="delivered",
            message_id="esp-z",
            event_id="ev-1",
            recipient=EMAIL,
            timestamp=timezone.now(),
            esp_event={"Recipient": EMAIL, "Details": f"delivered to {NAME}"},
        ),
        esp_name="postmark",
    )
    delivery_event_record(  # an event found only by its address
        event=AnymailTrackingEvent(
            event_type="deferred",
            message_id="esp-unknown",
            event_id="ev-2",
            recipient=EMAIL,
            timestamp=timezone.now(),
            esp_event={"Email": EMAIL},
        ),
        esp_name="postmark",
    )
    topic = TopicFactory(key="comments", name="Comments", default_frequency="hourly")
    Preference.objects.create(recipient=recipient, topic=topic, frequency="daily")
    notify(recipient, topic, {"from": NAME, "reply_to": EMAIL})
    # The API keeps its answers for replay: they quote the address.
    _token, secret = api_token_create(service="shop")
    answer = ApiClient(secret).post(
        "/api/v1/messages",
        {"to": EMAIL, "subject": "Receipt", "text": "Thanks"},
        headers={"Idempotency-Key": "receipt-1"},
    )
    assert answer.status_code == 202
    # Staff edited the contact in the admin: the change log names it.
    staff = User.objects.create_superuser("root", password="pw")
    client.force_login(staff)
    response = client.post(
        f"/admin/notifier/recipient/{recipient.pk}/change/",
        {
            "email": EMAIL,
            "name": NAME,
            "attributes": json.dumps(recipient.attributes),
            "time_zone": "UTC",
            "locale": "en",
            "status": "active",
        },
    )
    assert response.status_code == 302, response.content[:500]
    recipient.refresh_from_db()
    return recipient


def test_export_holds_every_table_about_the_recipient(person):
    expected = models_pointing_at_recipient()
    # The registry walk finds at least the tables we know of ...
    known = {
        Delivery,
        DeliveryEvent,
        Notification,
        Preference,
        ListMembership,
        Consent,
        WebhookDelivery,
        RecipientErasure,
    }
    assert known <= expected
    export = recipient_export(recipient=person)
    json.dumps(export)  # plain JSON
    # ... and the export has an entry for every one of them, so a table
    # added later (in any app) cannot be forgotten.
    assert {m._meta.label_lower for m in expected} <= set(export["tables"])
    tables = export["tables"]
    assert export["recipient"]["email"] == EMAIL
    assert len(tables["notifier.delivery"]) == 4  # confirmation, template, inline, API
    assert tables["notifier.deliveryevent"][0]["event_type"] == "delivered"
    assert tables["notifier.notification"][0]["data"]["from"] == NAME
    assert tables["notifier.preference"][0]["topic_label"] == "Comments"
    assert tables["campaigns.listmembership"][0]["contact_list_label"] == "Newsletter"
    (consent,) = tables["campaigns.consent"]
    assert consent["consent_text"] == "Send me the newsletter."
    assert consent["ip_address"] == "198.51.100.7"
    assert len(tables["notifier.webhookdelivery"]) == 1
    assert [e["event_type"] for e in export["by_address"]["notifier.deliveryevent"]] == ["deferred"]


def test_export_from_the_admin_and_the_api(person, client):
    response = client.post(
        "/admin/notifier/recipient/", {"action": "export_data", "_selected_action": [person.pk]}
    )
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert json.loads(response.content)["recipient"]["email"] == EMAIL

    _token, secret = api_token_create(service="privacy-office")
    api = ApiClient(secret)
    answer = api.get(f"/api/v1/recipients/{EMAIL.upper()}/export")
    assert answer.status_code == 200
    assert answer.json()["tables"]["notifier.delivery"]
    assert api.get("/api/v1/recipients/nobody@example.com/export").status_code == 404
    assert api.get("/api/v1/recipients/not-an-address/export").status_code == 400
    assert ApiClient(None).get(f"/api/v1/recipients/{EMAIL}/export").status_code == 401


def test_after_erase_no_row_holds_the_address_or_the_name(person, client):
    assert rows_mentioning(EMAIL) and rows_mentioning(NAME)  # the search does find them
    response = client.post(
        "/admin/notifier/recipient/", {"action": "erase", "_selected_action": [person.pk]}
    )
    assert response.status_code == 200 and b"Erase for good" in response.content
    assert Recipient.objects.get(pk=person.pk).email == EMAIL  # asked, not done
    response = client.post(
        "/admin/notifier/recipient/",
        {"action": "erase", "_selected_action": [person.pk], "confirm_erase": "yes"},
    )
    assert response.status_code == 302

    assert rows_mentioning(EMAIL) == {}
    assert rows_mentioning(NAME) == {}
    assert rows_mentioning("198.51.100.7") == {}
    erased = Recipient.objects.get(pk=person.pk)
    assert erased.status == "erased" and erased.name == "" and erased.attributes == {}
    assert erased.email.endswith("@erased.invalid")
    # Pending mail is cancelled; rows keep their shape.
    assert set(Delivery.objects.filter(recipient=erased).values_list("status", flat=True)) == {
        "delivered",
        "cancelled",
    }
    (audit,) = RecipientErasure.objects.all()
    assert audit.erased_by.username == "root" and audit.erased_by_name == "staff:root"
    assert audit.erased_at is not None and audit.recipient_id == erased.pk
    (suppression,) = Suppression.objects.filter(lifted_at__isnull=True)
    assert suppression.email == "" and len(suppression.email_hash) == 64


def test_an_erased_address_is_refused_everywhere_until_staff_lift_it(person, fake_esp):
    recipient_erase(recipient=person, by="staff:test")
    template = Template.objects.get(name="Signup confirmation")

    with pytest.raises(AddressSuppressed):
        send(to=EMAIL.upper(), template=template, context={})
    with pytest.raises(AddressSuppressed):
        notify(EMAIL, "comments", {"x": 1})
    _token, secret = api_token_create(service="shop2")
    answer = ApiClient(secret).post("/api/v1/messages", {"to": EMAIL, "subject": "S", "text": "T"})
    assert answer.status_code == 400 and "suppressed" in answer.json()["error"]["message"]
    report = contacts_import_csv(
        stream=io.BytesIO(f"email,name\n{OTHER},Olive\n{EMAIL},{NAME}\n".encode()),
        contact_list=ContactListFactory(),
    )
    assert report.imported == 1
    assert report.errors == [
        (3, "Suppressed: this address was erased at its owner's request (staff can lift it).")
    ]
    with pytest.raises(SignupRefused) as refused:
        signup_request(
            request=SignupRequest(email=EMAIL), lists=[ContactListFactory()], consent_text="x"
        )
    assert refused.value.kind == "suppressed"
    assert rows_mentioning(EMAIL) == {}  # none of these stored it again

    # Staff find the suppression by typing the address, and lift it.
    staff = User.objects.create_superuser("lifter", password="pw")
    from django.test import Client

    admin = Client()
    admin.force_login(staff)
    listing = admin.get("/admin/notifier/suppression/", {"q": EMAIL})
    suppression = Suppression.objects.get(lifted_at__isnull=True)
    assert f"/admin/notifier/suppression/{suppression.pk}/change/" in listing.content.decode()
    suppression_lift(suppression=suppression, reason="The person asked to come back", user=staff)
    delivery = send(to=EMAIL, template=template, context={})
    assert delivery.status == "pending"


def test_erasing_twice_is_refused_clearly(person):
    from notifier.services.privacy import AlreadyErased

    recipient_erase(recipient=person, by="staff:test")
    with pytest.raises(AlreadyErased):
        recipient_erase(recipient=Recipient.objects.get(pk=person.pk), by="staff:test")
    assert RecipientErasure.objects.count() == 1


def test_erasing_an_address_staff_added_again_keeps_one_active_suppression(person):
    from notifier.services.suppressions import suppression_add

    recipient_erase(recipient=person, by="staff:test")
    # Staff add the address by hand (the admin form does not ask the hash)
    # and suppress it, then erase it again.
    again = Recipient.objects.create(email=EMAIL, name=NAME)
    suppression_add(email=EMAIL, reason="manual")
    recipient_erase(recipient=again, by="staff:test")
    assert Suppression.objects.filter(lifted_at__isnull=True).count() == 1
    assert rows_mentioning(EMAIL) == {}
    assert RecipientErasure.objects.count() == 2
