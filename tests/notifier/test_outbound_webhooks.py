"""Outbound webhooks: a real local HTTP receiver sees each event once, signed.

The receiver is a small threaded HTTP server in this process. Time is driven
(``now=``) so a receiver that is down "for a while" costs no real waiting.
"""

import json
import re
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from anymail.signals import AnymailTrackingEvent
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from notifier import send
from notifier.models import Delivery, WebhookDelivery, WebhookEndpoint
from notifier.services.events import delivery_event_record
from notifier.services.suppressions import suppression_add
from notifier.services.webhooks import (
    webhook_event_record,
    webhooks_claim,
    webhooks_recover_expired,
    webhooks_send_due,
)
from tests.conftest import ROOT, wait_for
from tests.notifier.factories import RecipientFactory, TemplateFactory

SECRET = "a-long-shared-webhook-secret"


def readme_verifier():
    """The README's verification snippet, run as it is printed."""
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- webhook-verification-snippet -->\s*```python\n(.*?)```", text, re.DOTALL
    )
    assert match, "README lost its webhook verification snippet"
    namespace: dict = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    return namespace["verify_notifier_webhook"]


class Receiver:
    """Records every call; answers 503 while ``down``."""

    def __init__(self):
        self.calls: list[dict] = []
        self.down = False
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.calls.append({"headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks"

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(call["body"]) for call in self.calls]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def endpoint(receiver, db):
    return WebhookEndpoint.objects.create(
        name="CRM", url=receiver.url, secret=SECRET, event_types=WebhookEndpoint.EventType.values
    )


def _esp_event(delivery: Delivery, event_type: str, event_id: str) -> AnymailTrackingEvent:
    return AnymailTrackingEvent(
        event_type=event_type,
        message_id=delivery.esp_message_id,
        event_id=event_id,
        recipient=delivery.recipient.email,
        timestamp=timezone.now(),
        esp_event={"RecordType": event_type, "ID": event_id},
    )


def _sent_delivery() -> Delivery:
    delivery = send(
        to=RecipientFactory(email="ann@example.com", name="Ann"),
        template=TemplateFactory(),
        context={"code": "X"},
    )
    Delivery.objects.filter(pk=delivery.pk).update(status="sent", esp_message_id="esp-1")
    delivery.refresh_from_db()
    return delivery


@pytest.mark.django_db
def test_each_event_reaches_the_receiver_once_with_a_valid_signature(receiver, endpoint):
    verify = readme_verifier()
    delivery = _sent_delivery()
    for n, event_type in enumerate(["delivered", "opened", "clicked", "bounced"]):
        delivery_event_record(event=_esp_event(delivery, event_type, f"e{n}"), esp_name="postmark")
    # The same ESP event again (ESPs retry their webhooks): no second call.
    delivery_event_record(event=_esp_event(delivery, "opened", "e1"), esp_name="postmark")
    # (The hard bounce suppressed Ann; Bob unsubscribes by link.)
    suppression_add(email="bob@example.com", reason="unsubscribed", note="link")
    webhook_event_record(
        event_type="journey_step", event_key="journey:1:step:2", data={"step": 2}, recipient=None
    )

    counts = webhooks_send_due(now=timezone.now())
    assert counts == {"delivered": 6}
    assert webhooks_send_due(now=timezone.now() + timedelta(days=1)) == {}

    events = receiver.events()
    assert sorted(e["type"] for e in events) == sorted(
        ["delivered", "opened", "clicked", "bounced", "unsubscribed", "journey_step"]
    )
    assert len({e["id"] for e in events}) == 6
    for call in receiver.calls:
        assert verify(call["body"], call["headers"], SECRET)
        assert call["headers"]["Notifier-Webhook-Id"] == json.loads(call["body"])["id"]
    delivered = next(e for e in events if e["type"] == "delivered")
    assert delivered["data"]["delivery"] == str(delivery.uuid)
    assert delivered["data"]["recipient"]["email"] == "ann@example.com"


@pytest.mark.django_db
def test_the_readme_snippet_refuses_tampered_calls(receiver, endpoint):
    verify = readme_verifier()
    webhook_event_record(event_type="subscribed", event_key="s:1", data={"x": 1})
    webhooks_send_due()
    call = receiver.calls[0]
    body, headers = call["body"], call["headers"]
    assert verify(body, headers, SECRET)
    assert not verify(body.replace(b'"x":1', b'"x":2'), headers, SECRET)
    assert not verify(body, headers, "another-secret")
    forged = {**headers, "Notifier-Webhook-Signature": "v1=" + "0" * 64}
    assert not verify(body, forged, SECRET)
    # A captured call replayed later: its signed timestamp is too old.
    old = {
        **headers,
        "Notifier-Webhook-Timestamp": str(int(headers["Notifier-Webhook-Timestamp"]) - 3600),
    }
    assert not verify(body, old, SECRET)
    assert not verify(body, {k: v for k, v in headers.items() if "Timestamp" not in k}, SECRET)


@pytest.mark.django_db
def test_receiver_down_for_a_while_loses_nothing(receiver, endpoint, settings):
    settings.NOTIFIER_WEBHOOK_MAX_ATTEMPTS = 20
    receiver.down = True
    for n in range(5):
        webhook_event_record(event_type="subscribed", event_key=f"s:{n}", data={"n": n})
    now = timezone.now()
    # Down for a simulated hour: every due attempt fails and backs off.
    attempts = 0
    while now < timezone.now() + timedelta(hours=1):
        counts = webhooks_send_due(now=now)
        attempts += sum(counts.values())
        now += timedelta(seconds=30)
    assert attempts >= 10  # it kept trying (30 s, 60 s, 120 s ... apart)
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"pending"}
    first = WebhookDelivery.objects.order_by("id").first()
    assert first.attempts >= 4 and first.last_status_code == 503
    assert receiver.events() == []

    receiver.down = False
    while WebhookDelivery.objects.filter(status="pending").exists():
        now += timedelta(minutes=5)
        webhooks_send_due(now=now)
    assert sorted(e["data"]["n"] for e in receiver.events()) == [0, 1, 2, 3, 4]
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}


@pytest.mark.django_db
def test_attempts_exhausted_is_dead_and_send_again_revives_it(receiver, endpoint, settings, client):
    settings.NOTIFIER_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.down = True
    webhook_event_record(event_type="subscribed", event_key="s:1", data={})
    now = timezone.now()
    for _ in range(10):
        webhooks_send_due(now=now)
        now += timedelta(hours=2)
    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempts) == ("dead", 3)

    receiver.down = False
    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    response = client.post(
        "/admin/notifier/webhookdelivery/",
        {"action": "send_again", "_selected_action": [row.pk]},
    )
    assert response.status_code == 302
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("pending", 0)
    webhooks_send_due()
    assert len(receiver.events()) == 1
    # The per-endpoint log is the admin list filtered by endpoint.
    log = client.get(f"/admin/notifier/webhookdelivery/?endpoint__id__exact={endpoint.pk}")
    assert log.status_code == 200 and b"subscribed" in log.content


@pytest.mark.django_db
def test_a_claim_whose_worker_died_is_sent_after_its_lease(receiver, endpoint):
    webhook_event_record(event_type="subscribed", event_key="s:1", data={})
    now = timezone.now()
    _token, rows = webhooks_claim(now=now, limit=10)  # ... and the worker dies here
    assert len(rows) == 1
    assert webhooks_send_due(now=now) == {}  # held by the dead claim
    assert webhooks_recover_expired(now=now + timedelta(hours=1)) == 1
    webhooks_send_due(now=now + timedelta(hours=1))
    assert len(receiver.events()) == 1


@pytest.mark.django_db
def test_no_call_without_its_event(receiver, endpoint):
    """Written in the event's transaction: a rolled-back event queues nothing."""
    with pytest.raises(RuntimeError), transaction.atomic():
        suppression_add(email="bob@example.com", reason="unsubscribed")
        raise RuntimeError("the request failed after the unsubscribe")
    assert not WebhookDelivery.objects.exists()
    # An endpoint only hears the events it chose, and an inactive one nothing.
    endpoint.event_types = ["delivered"]
    endpoint.save()
    suppression_add(email="bob@example.com", reason="unsubscribed")
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_sent_event_through_a_real_worker(receiver, endpoint, celery_worker_process, fake_esp):
    """send() -> the worker sends the email -> the "sent" call is queued with
    the outcome and sent by the worker after commit."""
    verify = readme_verifier()
    delivery = send(
        to="cleo@example.com", template=TemplateFactory(), context={"code": "B"}, name="Cleo"
    )
    wait_for(lambda: len(receiver.events()) == 1, timeout=60)
    (event,) = receiver.events()
    assert event["type"] == "sent"
    assert event["data"]["delivery"] == str(delivery.uuid)
    assert event["data"]["recipient"]["email"] == "cleo@example.com"
    assert verify(receiver.calls[0]["body"], receiver.calls[0]["headers"], SECRET)
    assert len(fake_esp.messages) == 1
    # The receiver answers before the worker writes the outcome.
    wait_for(lambda: WebhookDelivery.objects.get().status == "delivered", timeout=30)


@pytest.mark.django_db
def test_one_sweep_sends_every_due_call_a_claim_at_a_time(receiver, endpoint, settings):
    from notifier.services.webhooks import webhooks_sweep

    settings.NOTIFIER_WEBHOOK_CLAIM_SIZE = 3
    for n in range(8):
        webhook_event_record(event_type="subscribed", event_key=f"s:{n}", data={"n": n})
    assert webhooks_sweep() == {"delivered": 8}
    assert sorted(e["data"]["n"] for e in receiver.events()) == list(range(8))
