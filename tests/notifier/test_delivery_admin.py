"""A delivery's page, for people: the message as received, its timeline, no internals."""

import html
import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from notifier.models import Delivery, DeliveryEvent, DeliveryGroup, DeliveryResolution
from notifier.sending import deliveries_send_batch
from tests.notifier.factories import DeliveryFactory, RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db

ADMIN = "/admin/notifier/delivery"


@pytest.fixture
def sent_campaign_delivery(fake_esp):
    group = DeliveryGroup.objects.create(
        owner="campaigns.run", label="Spring sale, run 1", context={"offer": "20% off"}
    )
    template = TemplateFactory(
        name="Spring",
        kind="campaign",
        subject="Spring news for {{ recipient.first_name }}",
        html_body="<h1>Hello {{ recipient.first_name }}</h1><p>{{ offer }}</p>"
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
    )
    delivery = DeliveryFactory(
        recipient=RecipientFactory(email="ada@example.com", name="Ada Lovelace"),
        template=template,
        run=group,
        context={},
    )
    deliveries_send_batch(delivery_ids=[delivery.pk])
    delivery.refresh_from_db()
    assert delivery.status == "sent"
    for minutes, kind, description in [
        (2, "delivered", "Message delivered to mx.example.com"),
        (5, "opened", ""),
        (9, "clicked", "https://shop.example/spring"),
        (30, "opened", ""),
    ]:
        DeliveryEvent.objects.create(
            delivery=delivery,
            event_key=str(uuid.uuid4()),
            event_type=kind,
            email="ada@example.com",
            description=description,
            occurred_at=delivery.sent_at + timedelta(minutes=minutes),
        )
    return delivery


def test_a_delivery_page_shows_the_message_as_received_and_its_timeline(
    marketer, sent_campaign_delivery
):
    page = marketer.get(f"{ADMIN}/{sent_campaign_delivery.pk}/change/")
    assert page.status_code == 200
    content = page.content.decode()
    # The title names the message and the address, not ids.
    assert page.context["title"] == "Spring news for Ada \u2192 ada@example.com"
    assert "<title>View delivery | " not in content
    # The message as rendered for her, in a sandboxed iframe, escaped.
    srcdoc = re.search(r'<iframe sandbox="" srcdoc="([^"]*)" title="Message as received"', content)
    assert srcdoc, "a sandboxed iframe with the message"
    received = html.unescape(srcdoc.group(1))
    assert received.startswith("<!DOCTYPE html>") and "Hello Ada" in received
    assert "20% off" in received and "<script" not in srcdoc.group(1)
    headers = dict(page.context["received_headers"])
    assert headers["To"] == "Ada Lovelace <ada@example.com>"
    assert headers["Subject"] == "Spring news for Ada"
    assert headers["List-Unsubscribe"].startswith("<http")
    # The timeline, oldest first.
    labels = [entry["label"] for entry in page.context["timeline"]]
    assert labels == [
        "Queued",
        "Handed to the ESP",
        "Delivered",
        "Opened",
        "Clicked a link",
        "Opened",
    ]
    assert "https://shop.example/spring" in content
    # No internals, and no Save: the page is read-only.
    for internal in ("claim_token", "lease_expires_at", "dispatched_at", "idempotency_key"):
        assert f"field-{internal}" not in content and f"id_{internal}" not in content
    assert 'name="_save"' not in content and 'name="_continue"' not in content


def test_a_failed_delivery_says_why_in_a_sentence(marketer, fake_esp):
    fake_esp.faults["reject"] = ["grace@example.com"]
    delivery = DeliveryFactory(recipient=RecipientFactory(email="grace@example.com"))
    deliveries_send_batch(delivery_ids=[delivery.pk])
    page = marketer.get(f"{ADMIN}/{delivery.pk}/change/")
    content = page.content.decode()
    assert "The ESP refused to send to grace@example.com" in content
    assert page.context["timeline"][-1]["label"] == "Failed"


def test_a_delivery_that_cannot_render_any_more_says_so(marketer, fake_esp):
    delivery = DeliveryFactory()
    type(delivery.template).objects.filter(pk=delivery.template_id).update(
        compiled_html="{{ code|no_such_filter }}"
    )
    page = marketer.get(f"{ADMIN}/{delivery.pk}/change/")
    assert page.status_code == 200
    assert "The message cannot be rendered again" in page.content.decode()


def test_deliveries_are_named_by_message_and_address():
    delivery = DeliveryFactory(
        template=TemplateFactory(name="Welcome"), recipient=RecipientFactory(email="a@x.example")
    )
    assert str(delivery) == "Welcome \u2192 a@x.example"
    inline = DeliveryFactory(template=None, kind=Delivery.Kind.DIGEST, subject="s")
    assert str(inline) == f"Digest \u2192 {inline.recipient.email}"


def test_retry_actions_still_work_from_the_list(admin_client, fake_esp):
    failed = DeliveryFactory(
        status="failed", failure_kind="permanent", next_attempt_at=timezone.now()
    )
    response = admin_client.post(
        f"{ADMIN}/", {"action": "retry_failed", "_selected_action": [failed.pk]}, follow=True
    )
    assert "1 failed deliveries queued again." in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == "pending"


def test_delivery_events_are_read_only(admin_client, sent_campaign_delivery):
    event = sent_campaign_delivery.events.first()
    page = admin_client.get(f"/admin/notifier/deliveryevent/{event.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()


def test_the_timeline_shows_how_an_in_doubt_delivery_was_resolved(admin_client):
    delivery = DeliveryFactory(status=Delivery.Status.SENT, sent_at=timezone.now())
    DeliveryResolution.objects.create(
        delivery=delivery, verdict="unavailable", detail="Postmark's message search answered 503."
    )
    DeliveryResolution.objects.create(
        delivery=delivery, verdict="found", detail="The provider has it as pm-42."
    )
    page = admin_client.get(f"{ADMIN}/{delivery.pk}/change/")
    entries = [(e["label"], e["detail"]) for e in page.context["timeline"]]
    assert entries[-2:] == [
        ("In doubt: the provider could not answer", "Postmark's message search answered 503."),
        ("In doubt: found at the provider: it was accepted", "The provider has it as pm-42."),
    ]
    assert "The provider has it as pm-42." in page.content.decode()
