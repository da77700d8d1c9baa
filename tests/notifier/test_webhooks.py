"""ESP tracking webhooks: real Postmark (and Mailgun) bodies posted to the endpoint."""

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from anymail.signals import AnymailTrackingEvent
from django.db import connection
from django.utils import timezone

from notifier.models import Delivery, DeliveryEvent, Recipient, Suppression
from notifier.selectors import delivery_event_totals
from notifier.sending import deliveries_send_batch
from notifier.services.events import delivery_event_record
from tests.conftest import ROOT
from tests.notifier.esp_payloads import (
    MAILGUN_URL,
    basic_auth,
    mailgun_event,
    post_webhook,
    postmark_bounce,
    postmark_click,
    postmark_delivery,
    postmark_open,
    postmark_spam_complaint,
    postmark_subscription_change,
)
from tests.notifier.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def _sent(*, run_id=None, email=None) -> Delivery:
    """A campaign delivery really sent through the fake ESP (so it has Postmark's MessageID)."""
    recipient = RecipientFactory(**({"email": email} if email else {}))
    delivery = DeliveryFactory(recipient=recipient, run_id=run_id)
    assert deliveries_send_batch(delivery_ids=[delivery.id]) == {"sent": 1}
    delivery.refresh_from_db()
    assert delivery.esp_message_id
    return delivery


def _ids(delivery: Delivery) -> dict:
    return {
        "message_id": delivery.esp_message_id,
        "email": delivery.recipient.email,
        "delivery_uuid": str(delivery.uuid),
    }


def _state(delivery: Delivery):
    delivery.refresh_from_db()
    return (
        delivery.status,
        delivery.opens,
        delivery.clicks,
        DeliveryEvent.objects.count(),
        Suppression.objects.count(),
    )


# --- acceptance 1: statuses, counters, suppressions; the same event twice --------


def test_delivery_event_marks_delivered_once(client, fake_esp):
    delivery = _sent()
    body = postmark_delivery(**_ids(delivery))
    assert post_webhook(client, body).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    (event,) = DeliveryEvent.objects.all()
    assert event.delivery_id == delivery.id
    assert event.event_type == "delivered"
    assert event.esp_message_id == delivery.esp_message_id
    assert event.payload["RecordType"] == "Delivery"
    before = _state(delivery)
    assert post_webhook(client, body).status_code == 200
    assert _state(delivery) == before


@pytest.mark.parametrize(
    "payload, status, reason, recipient_status, reason_text",
    [
        (
            postmark_bounce,
            Delivery.Status.BOUNCED,
            Suppression.Reason.HARD_BOUNCE,
            Recipient.Status.BOUNCED,
            "Hard bounce: The server was unable",
        ),
        (
            postmark_spam_complaint,
            Delivery.Status.COMPLAINED,
            Suppression.Reason.COMPLAINT,
            Recipient.Status.COMPLAINED,
            "Spam complaint: Test spam complaint details",
        ),
    ],
    ids=["hard-bounce", "spam-complaint"],
)
def test_hard_bounce_and_complaint_suppress_at_once(
    client, fake_esp, payload, status, reason, recipient_status, reason_text
):
    delivery = _sent()
    body = payload(**_ids(delivery))
    assert post_webhook(client, body).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == status
    assert delivery.status_reason.startswith(reason_text)
    (suppression,) = Suppression.objects.all()
    assert suppression.email == delivery.recipient.email
    assert suppression.reason == reason
    assert Recipient.objects.get(pk=delivery.recipient_id).status == recipient_status
    assert DeliveryEvent.objects.get().event_key == f"postmark:{status}:{body['ID']}"
    before = _state(delivery)
    assert post_webhook(client, body).status_code == 200
    assert _state(delivery) == before


def test_bounce_after_delivery_moves_on_but_delivery_after_bounce_does_not(client, fake_esp):
    delivery = _sent()
    post_webhook(client, postmark_delivery(**_ids(delivery)))
    post_webhook(client, postmark_bounce(**_ids(delivery)))
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.BOUNCED
    post_webhook(client, postmark_delivery(**_ids(delivery), at="2026-03-02T10:00:00Z"))
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.BOUNCED
    assert DeliveryEvent.objects.count() == 3


def test_soft_bounce_is_a_note_until_the_limit_within_the_window(client, fake_esp, settings):
    settings.NOTIFIER_SOFT_BOUNCE_LIMIT = 3
    settings.NOTIFIER_SOFT_BOUNCE_WINDOW_DAYS = 7
    recent = (timezone.now() - timedelta(hours=1)).isoformat()
    long_ago = (timezone.now() - timedelta(days=30)).isoformat()
    first = _sent(email="flaky@example.com")
    body = postmark_bounce(**_ids(first), bounce_type="SoftBounce", at=recent)
    assert post_webhook(client, body).status_code == 200
    first.refresh_from_db()
    assert first.status == Delivery.Status.SENT
    assert first.status_reason.startswith("Soft bounce: Unable to temporarily deliver")
    assert not Suppression.objects.exists()
    # The same event again and the same message bouncing again do not add up.
    post_webhook(client, body)
    post_webhook(client, postmark_bounce(**_ids(first), bounce_type="SoftBounce", at=recent))
    # A soft bounce outside the window does not count either.
    old = _sent(email="flaky@example.com")
    post_webhook(client, postmark_bounce(**_ids(old), bounce_type="SoftBounce", at=long_ago))
    second = _sent(email="flaky@example.com")
    post_webhook(client, postmark_bounce(**_ids(second), bounce_type="SoftBounce", at=recent))
    assert not Suppression.objects.exists()
    third = _sent(email="flaky@example.com")
    post_webhook(client, postmark_bounce(**_ids(third), bounce_type="SoftBounce", at=recent))
    (suppression,) = Suppression.objects.all()
    assert suppression.reason == Suppression.Reason.SOFT_BOUNCES
    assert suppression.email == "flaky@example.com"
    third.refresh_from_db()
    assert third.status == Delivery.Status.SENT


def test_deferred_transient_bounce_is_only_a_note(client, fake_esp):
    delivery = _sent()
    post_webhook(client, postmark_bounce(**_ids(delivery), bounce_type="Transient"))
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.status_reason.startswith("Deferred:")
    assert DeliveryEvent.objects.get().event_type == "deferred"
    assert not Suppression.objects.exists()


def test_opens_and_clicks_are_counted_once_per_event(client, fake_esp):
    delivery = _sent()
    first_open = postmark_open(**_ids(delivery), at="2026-03-01T12:00:00Z")
    post_webhook(client, first_open)
    post_webhook(client, first_open)  # redelivered by the ESP
    post_webhook(client, postmark_open(**_ids(delivery), at="2026-03-01T13:00:00Z"))
    click = postmark_click(**_ids(delivery))
    post_webhook(client, click)
    post_webhook(client, click)
    delivery.refresh_from_db()
    assert (delivery.opens, delivery.clicks) == (2, 1)
    assert delivery.status == Delivery.Status.SENT  # opens and clicks are not states
    assert DeliveryEvent.objects.count() == 3


def test_linked_by_metadata_when_the_message_id_is_unknown(client, fake_esp):
    delivery = _sent()
    ids = {**_ids(delivery), "message_id": "00000000-0000-0000-0000-000000000000"}
    post_webhook(client, postmark_delivery(**ids))
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    assert DeliveryEvent.objects.get().delivery_id == delivery.id


def test_event_for_an_unknown_message_is_kept_and_still_suppresses(client):
    body = postmark_bounce(
        message_id="2706ee8a-737c-4285-b032-ccd317af53ed", email="Gone@Example.com"
    )
    assert post_webhook(client, body).status_code == 200
    event = DeliveryEvent.objects.get()
    assert event.delivery is None
    assert event.email == "gone@example.com"
    assert Suppression.objects.get().email == "gone@example.com"


@pytest.mark.parametrize(
    "postmark_reason, reason",
    [("ManualSuppression", "unsubscribed"), ("HardBounce", "hard_bounce")],
)
def test_esp_side_subscription_change_suppresses(client, fake_esp, postmark_reason, reason):
    delivery = _sent()
    body = postmark_subscription_change(
        message_id=delivery.esp_message_id, email=delivery.recipient.email, reason=postmark_reason
    )
    assert post_webhook(client, body).status_code == 200
    assert Suppression.objects.get().reason == reason
    assert DeliveryEvent.objects.get().delivery_id == delivery.id
    post_webhook(client, body)
    assert DeliveryEvent.objects.count() == 1


def test_run_totals(client, fake_esp, django_assert_max_num_queries):
    a, b, c, _unopened = (_sent(run_id=77) for _ in range(4))
    _sent(run_id=78)
    post_webhook(client, postmark_delivery(**_ids(a)))
    post_webhook(client, postmark_open(**_ids(a), at="2026-03-01T12:00:00Z"))
    post_webhook(client, postmark_open(**_ids(a), at="2026-03-01T12:30:00Z"))
    post_webhook(client, postmark_click(**_ids(a)))
    post_webhook(client, postmark_delivery(**_ids(b)))
    post_webhook(client, postmark_spam_complaint(**_ids(b)))
    post_webhook(client, postmark_bounce(**_ids(c)))
    with django_assert_max_num_queries(1):
        totals = delivery_event_totals(run_id=77)
    assert totals == {
        "delivered": 2,
        "bounced": 1,
        "complained": 1,
        "opened": 1,
        "clicked": 1,
        "opens": 2,
        "clicks": 1,
    }
    assert delivery_event_totals(run_id=999) == dict.fromkeys(totals, 0)


@pytest.mark.django_db(transaction=True)
def test_the_same_event_racing_in_two_requests_is_applied_once(fake_esp):
    delivery = _sent()
    body = postmark_bounce(**_ids(delivery))
    results, errors = [], []
    barrier = threading.Barrier(2)

    def record():
        try:
            event = AnymailTrackingEvent(
                event_type="bounced",
                event_id=str(body["ID"]),
                message_id=body["MessageID"],
                recipient=body["Email"],
                metadata=body["Metadata"],
                description=body["Description"],
                esp_event=body,
            )
            barrier.wait()
            results.append(delivery_event_record(event=event, esp_name="Postmark"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=record) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r is None for r in results) == [False, True]
    assert DeliveryEvent.objects.count() == 1
    assert Suppression.objects.count() == 1


# --- acceptance 2: authentication, bad and oversized bodies ----------------------


@pytest.mark.parametrize(
    "auth",
    [None, basic_auth("test:wrong-secret"), basic_auth("other:webhook-secret"), "Bearer x"],
    ids=["none", "wrong-password", "wrong-user", "not-basic"],
)
def test_missing_or_wrong_credentials_are_refused_and_record_nothing(client, fake_esp, auth):
    delivery = _sent()
    response = post_webhook(client, postmark_bounce(**_ids(delivery)), auth=auth)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert not DeliveryEvent.objects.exists()
    assert not Suppression.objects.exists()
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT


def test_no_secret_configured_refuses_every_request(client, settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": ""}
    body = postmark_bounce(message_id="x", email="a@example.com")
    assert post_webhook(client, body, auth=None).status_code == 403
    assert post_webhook(client, body, auth=basic_auth("test:webhook-secret")).status_code == 403
    assert not DeliveryEvent.objects.exists()


MALFORMED_BODIES = [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"",
    b"null",
    b"[]",
    b'"a string"',
    b"12",
    json.dumps({"RecordType": "Bounce", "Type": ["HardBounce"]}).encode(),
    json.dumps({"RecordType": "Delivery", "Metadata": None}).encode(),
    json.dumps({"RecordType": "Delivery", "Metadata": "x"}).encode(),
    json.dumps({"RecordType": "Bounce", "BouncedAt": "2026-13-45T99:00:00Z"}).encode(),
    json.dumps({"RecordType": "Bounce", "BouncedAt": 12}).encode(),
    json.dumps({"FromFull": {"Email": "from@example.org"}}).encode(),  # an inbound message
    json.dumps({"RecordType": "Inbound"}).encode(),
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=range(len(MALFORMED_BODIES)))
def test_malformed_bodies_get_400_and_record_nothing(client, body):
    response = post_webhook(client, body)
    assert response.status_code == 400
    assert not DeliveryEvent.objects.exists()


ODD_BUT_PARSEABLE = [
    {},
    {"RecordType": "Bounce"},
    {"RecordType": "Bounce", "BouncedAt": "not a date"},
    {"RecordType": "Nope", "MessageID": {"a": 1}, "Email": 12, "Metadata": {"delivery": 5}},
    {"RecordType": "Bounce", "Type": "HardBounce", "Email": "not an address", "ID": [1]},
    {"RecordType": "Open", "MessageID": "x\u0000y", "Recipient": "a\u0000@example.com"},
    {"RecordType": "Click", "OriginalLink": float("nan"), "MessageID": "m" * 5000},
    {"RecordType": "SpamComplaint", "Metadata": {"delivery": "not-a-uuid"}, "ID": True},
    {"RecordType": "Delivery", "Nested": json.loads("[" * 60 + "1" + "]" * 60)},
]


@pytest.mark.parametrize("body", ODD_BUT_PARSEABLE, ids=range(len(ODD_BUT_PARSEABLE)))
def test_odd_but_parseable_bodies_never_error(client, body):
    response = post_webhook(client, json.dumps(body, allow_nan=True))
    assert response.status_code in (200, 400)


def test_oversized_body_is_refused_before_parsing(client, settings, fake_esp):
    settings.NOTIFIER_WEBHOOK_MAX_BYTES = 10_000
    delivery = _sent()
    body = postmark_bounce(**_ids(delivery))
    body["Content"] = "x" * 20_000
    response = post_webhook(client, body)
    assert response.status_code == 400
    assert b"larger than" in response.content
    assert not DeliveryEvent.objects.exists()


def test_body_over_djangos_own_limit_is_400(client, settings):
    settings.NOTIFIER_WEBHOOK_MAX_BYTES = 10_000_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post_webhook(client, {"RecordType": "Delivery", "Details": "x" * 5000})
    assert response.status_code == 400


def test_wrong_methods_and_unknown_esps(client):
    assert client.get("/webhooks/anymail/postmark/tracking/").status_code == 405
    assert client.head("/webhooks/anymail/postmark/tracking/").status_code == 200
    assert post_webhook(client, {}, url="/webhooks/anymail/nosuchesp/tracking/").status_code == 404
    # an Anymail ESP that is not configured here
    assert post_webhook(client, {}, url="/webhooks/anymail/sendgrid/tracking/").status_code == 404


# --- any Anymail ESP by setting, with its signature ------------------------------


@pytest.fixture
def mailgun(settings):
    settings.NOTIFIER_WEBHOOK_ESPS = ["postmark", "mailgun"]
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": "mg-signing-key"}
    return "mg-signing-key"


def _mailgun_body(signing_key: str, event: str, delivery: Delivery, token: str) -> dict:
    return mailgun_event(
        signing_key=signing_key,
        event=event,
        email=delivery.recipient.email,
        delivery_uuid=str(delivery.uuid),
        token=token,
    )


def test_mailgun_event_with_a_good_signature_is_recorded(client, fake_esp, mailgun):
    delivery = _sent()
    body = _mailgun_body(mailgun, "delivered", delivery, "a8ce0edb2dd8301dee6c2405235584e45a")
    assert post_webhook(client, body, url=MAILGUN_URL).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DELIVERED
    event = DeliveryEvent.objects.get()
    assert event.event_key.startswith("mailgun:delivered:a8ce0edb")
    assert post_webhook(client, body, url=MAILGUN_URL).status_code == 200
    assert DeliveryEvent.objects.count() == 1


@pytest.mark.parametrize("tamper", ["signature", "token", "missing", "not-a-dict"])
def test_mailgun_bad_signature_is_400_and_records_nothing(client, fake_esp, mailgun, tamper):
    delivery = _sent()
    body = _mailgun_body(mailgun, "failed", delivery, "b8ce0edb2dd8301dee6c2405235584e45a")
    if tamper == "signature":
        body["signature"]["signature"] = "0" * 64
    elif tamper == "token":
        body["signature"]["token"] = "c" * 50
    elif tamper == "missing":
        del body["signature"]
    else:
        body["signature"] = "x"
    response = post_webhook(client, body, url=MAILGUN_URL)
    assert response.status_code == 400
    assert not DeliveryEvent.objects.exists()
    assert not Suppression.objects.exists()


def test_mailgun_without_credentials_is_401_even_with_a_good_signature(client, mailgun):
    body = mailgun_event(
        signing_key=mailgun, event="failed", email="a@example.com", delivery_uuid="", token="t" * 50
    )
    assert post_webhook(client, body, url=MAILGUN_URL, auth=None).status_code == 401
    assert not DeliveryEvent.objects.exists()


# --- production refuses to run webhooks (and bulk mail links) unprotected ----------


def _production_check(**env_extra) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ANYMAIL_WEBHOOK_SECRET", "DEBUG", "SITE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        SECRET_KEY="production-check-" + "k" * 50,
        # Production refuses SQLite; this check never connects.
        DATABASE_URL="postgres://notifier@127.0.0.1:5432/notifier",
        METRICS_TOKEN="metrics-" + "m" * 24,
        **env_extra,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(databases=[])
def test_production_refuses_to_start_without_a_webhook_secret_or_with_http_links():
    missing = _production_check(SITE_URL="https://mail.example.org")
    assert missing.returncode != 0
    assert "ANYMAIL_WEBHOOK_SECRET is required" in missing.stderr
    http = _production_check(
        ANYMAIL_WEBHOOK_SECRET="hooks:" + "s" * 24, SITE_URL="http://mail.example.org"
    )
    assert http.returncode != 0
    assert "notifier.E001" in http.stderr
    ok = _production_check(
        ANYMAIL_WEBHOOK_SECRET="hooks:" + "s" * 24, SITE_URL="https://mail.example.org"
    )
    assert ok.returncode == 0, ok.stderr
