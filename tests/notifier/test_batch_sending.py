"""Postmark's batch API (``notifier.sending.postmark``): each message's answer
mapped to its row's outcome, against the fake ESP; and the engine sending in
requests of ``BATCH_SIZE`` with one journal round trip per request."""

import threading
import time

import pytest
from django.core.mail import EmailMultiAlternatives, get_connection

from notifier import send
from notifier.models import Delivery, Suppression
from notifier.sending import deliveries_send_batch, journal, wire
from notifier.sending.outcomes import FAILED, RETRY, SENT, UNKNOWN, classify_batch
from notifier.sending.postmark import EmailBackend, PostmarkEntryError
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db

BACKEND = "notifier.sending.postmark.EmailBackend"


def _messages(*emails):
    return [
        EmailMultiAlternatives(subject=f"Hi {email}", body="text", to=[email]) for email in emails
    ]


def _send_batch(*emails):
    """One batch request through the backend; each message's Outcome."""
    messages = _messages(*emails)
    with get_connection(BACKEND) as conn:
        try:
            errors = conn.send_batch(messages)
        except Exception as exc:
            return classify_batch(messages, list(emails), errors=None, exc=exc)
    return classify_batch(messages, list(emails), errors=errors)


def test_all_accepted_in_one_request_each_with_its_message_id(fake_esp):
    outcomes = _send_batch("a@example.com", "b@example.com", "c@example.com")
    assert fake_esp.requests == 1
    by_to = {m["To"]: m["MessageID"] for m in fake_esp.messages}
    assert [o.status for o in outcomes] == [SENT, SENT, SENT]
    assert [o.esp_message_id for o in outcomes] == [
        by_to["a@example.com"],
        by_to["b@example.com"],
        by_to["c@example.com"],
    ]
    assert [m["Subject"] for m in fake_esp.messages] == [
        "Hi a@example.com",
        "Hi b@example.com",
        "Hi c@example.com",
    ]


def test_all_rejected_fail_and_ask_for_suppression(fake_esp):
    fake_esp.faults["reject"] = ["a@example.com", "b@example.com"]
    outcomes = _send_batch("a@example.com", "b@example.com")
    assert [o.status for o in outcomes] == [FAILED, FAILED]
    assert all(o.suppress == Suppression.Reason.HARD_BOUNCE for o in outcomes)
    assert fake_esp.messages == []


def test_mixed_answers_map_to_each_message(fake_esp):
    fake_esp.faults["reject"] = ["b@example.com"]
    fake_esp.faults["invalid"] = ["c@example.com"]
    outcomes = _send_batch("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    assert [o.status for o in outcomes] == [SENT, FAILED, FAILED, SENT]
    assert "inactive" in outcomes[1].error and outcomes[1].suppress
    assert "invalid address" in outcomes[2].error and not outcomes[2].suppress
    assert sorted(m["To"] for m in fake_esp.messages) == ["a@example.com", "d@example.com"]
    assert outcomes[0].esp_message_id != outcomes[3].esp_message_id


@pytest.mark.parametrize(
    "fault, retry_after", [({"status": 429, "retry_after": 7}, 7.0), ({"status": 503}, None)]
)
def test_whole_request_429_or_5xx_retries_every_message(fake_esp, fault, retry_after):
    fake_esp.faults["script"] = [fault]
    outcomes = _send_batch("a@example.com", "b@example.com")
    assert [o.status for o in outcomes] == [RETRY, RETRY]
    assert [o.retry_after for o in outcomes] == [retry_after, retry_after]
    assert outcomes[0] is not outcomes[1]  # each row gets its own outcome
    assert fake_esp.messages == []


def test_timeout_after_acceptance_leaves_every_message_in_doubt(fake_esp):
    fake_esp.faults["script"] = [{"hang_after_accept": 3}]
    outcomes = _send_batch("a@example.com", "b@example.com")
    assert [o.status for o in outcomes] == [UNKNOWN, UNKNOWN]
    assert "No answer from the ESP after sending" in outcomes[0].error
    assert len(fake_esp.messages) == 2  # accepted: resending would duplicate


def test_connection_refused_retries(fake_esp, settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": "http://127.0.0.1:9/"}
    assert [o.status for o in _send_batch("a@example.com")] == [RETRY]


def test_another_error_code_fails_that_message_only():
    backend = EmailBackend(server_token="t", api_url="http://127.0.0.1:9/")
    (message,) = _messages("a@example.com")
    payload = backend.build_message_payload(message, backend.send_defaults)
    with pytest.raises(PostmarkEntryError) as raised:
        backend._entry_status(payload, {"ErrorCode": 412, "Message": "Sandbox server."})
    (outcome,) = classify_batch([message], ["a@example.com"], errors=[raised.value])
    assert outcome.status == FAILED
    assert "ErrorCode 412" in outcome.error and "Sandbox server." in outcome.error


def test_fake_esp_refuses_a_batch_over_500_as_a_whole(fake_esp):
    with get_connection(BACKEND, batch_size=500) as conn:
        conn.batch_size = 501  # past the backend's own cap, to reach the ESP
        emails = [f"u{i}@example.com" for i in range(501)]
        messages = _messages(*emails)
        with pytest.raises(Exception) as raised:
            conn.send_batch(messages)
    outcomes = classify_batch(messages, emails, errors=None, exc=raised.value)
    assert {o.status for o in outcomes} == {FAILED}
    assert raised.value.status_code == 422
    assert fake_esp.messages == []


# --- The engine: requests of BATCH_SIZE, one journal round trip each -----------


def _queue(n, **kwargs):
    template = TemplateFactory()
    return [
        send(template=template, to=f"user{i}@example.com", context={"code": i}, **kwargs)
        for i in range(n)
    ]


@pytest.fixture
def batch_of(settings):
    def set_size(size):
        transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
        transports["esp"].update(BACKEND=BACKEND, BATCH_SIZE=size)
        settings.NOTIFIER_TRANSPORTS = transports

    return set_size


@pytest.fixture
def handoffs(monkeypatch):
    """Each journal hand-off: (the ids marked handed, the answers it carried)."""
    seen = []
    real = journal.journal_handoff
    monkeypatch.setattr(
        journal,
        "journal_handoff",
        lambda token, ids, outcomes=(): (
            seen.append((list(ids), len(outcomes))) or real(token, ids, outcomes)
        ),
    )
    return seen


def test_engine_sends_in_requests_of_batch_size_with_one_journal_trip_each(
    fake_esp, batch_of, handoffs
):
    batch_of(10)
    deliveries = _queue(25)
    assert deliveries_send_batch(delivery_ids=[d.id for d in deliveries]) == {"sent": 25}
    assert fake_esp.requests == 3
    assert [len(ids) for ids, _ in handoffs] == [10, 10, 5]
    # Each hand-off carries the answers of the request before it.
    assert [answers for _, answers in handoffs] == [0, 10, 10]
    by_to = {m["To"]: m["MessageID"] for m in fake_esp.messages}
    for delivery in deliveries:
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.SENT
        assert delivery.esp_message_id == by_to[delivery.recipient.email]


def test_engine_maps_mixed_answers_to_rows(fake_esp, batch_of):
    batch_of(10)
    fake_esp.faults["reject"] = ["user1@example.com"]
    fake_esp.faults["invalid"] = ["user2@example.com"]
    deliveries = _queue(4)
    counts = deliveries_send_batch(delivery_ids=[d.id for d in deliveries])
    assert counts == {"sent": 2, "failed": 2}
    statuses = {d.recipient.email: d.status for d in Delivery.objects.select_related("recipient")}
    assert statuses == {
        "user0@example.com": "sent",
        "user1@example.com": "failed",
        "user2@example.com": "failed",
        "user3@example.com": "sent",
    }
    assert Suppression.objects.filter(email="user1@example.com").exists()
    assert not Suppression.objects.filter(email="user2@example.com").exists()


def test_engine_retries_a_request_refused_as_a_whole_and_sends_the_next(fake_esp, batch_of):
    batch_of(3)
    fake_esp.faults["script"] = [{"status": 503}]
    deliveries = _queue(5)
    counts = deliveries_send_batch(delivery_ids=[d.id for d in deliveries])
    assert counts == {"pending": 3, "sent": 2}
    rows = list(Delivery.objects.order_by("id"))
    assert [r.status for r in rows] == ["pending"] * 3 + ["sent"] * 2
    assert all(r.attempts == 1 and r.next_attempt_at for r in rows[:3])


def test_engine_marks_a_request_lost_after_acceptance_in_doubt(fake_esp, batch_of):
    batch_of(3)
    fake_esp.faults["script"] = [{}, {"hang_after_accept": 3}]
    deliveries = _queue(5)
    counts = deliveries_send_batch(delivery_ids=[d.id for d in deliveries])
    assert counts == {"sent": 3, "unknown": 2}
    assert len(fake_esp.messages) == 5


def test_smtp_keeps_one_message_per_request(smtp_sink, batch_of, settings):
    batch_of(10)
    transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
    transports["smtp"]["BATCH_SIZE"] = 10  # no batch API: ignored
    settings.NOTIFIER_TRANSPORTS = transports
    deliveries = _queue(3, transport="smtp")
    assert deliveries_send_batch(delivery_ids=[d.id for d in deliveries]) == {"sent": 3}
    assert len(smtp_sink.messages) == 3


def test_smtp_hands_several_messages_over_per_journal_trip_within_the_bound(
    smtp_sink, settings, monkeypatch, handoffs
):
    settings.NOTIFIER_SEND_THREADS = 2
    settings.NOTIFIER_SEND_AHEAD = 6
    lock = threading.Lock()
    on_wire, most_on_wire, unanswered = [0], [0], []
    real_transmit = wire._transmit
    real_send = wire.Wire._send_request

    def transmitting(*args):
        with lock:
            on_wire[0] += 1
            most_on_wire[0] = max(most_on_wire[0], on_wire[0])
        time.sleep(0.005)  # a slower server: messages queue for the connections
        try:
            return real_transmit(*args)
        finally:
            with lock:
                on_wire[0] -= 1

    def handing(self, items):
        real_send(self, items)
        unanswered.append(self.in_flight)

    monkeypatch.setattr(wire, "_transmit", transmitting)
    monkeypatch.setattr(wire.Wire, "_send_request", handing)
    deliveries = _queue(24, transport="smtp")
    assert deliveries_send_batch(delivery_ids=[d.id for d in deliveries]) == {"sent": 24}
    assert sorted(m["rcpt_tos"][0] for m in smtp_sink.messages) == sorted(
        d.recipient.email for d in deliveries
    )
    # Hand-overs of half the ahead count, each one journal round trip; never
    # more than NOTIFIER_SEND_AHEAD handed over and unanswered (the in-doubt
    # bound), never more on the wire at once than connections.
    sizes = [len(ids) for ids, _answers in handoffs]
    assert sizes == [3] * 8
    assert max(unanswered) <= 6
    assert max(unanswered) > 2  # some waited for a connection
    assert most_on_wire[0] <= 2


def test_smtp_messages_carry_random_boundaries_and_both_parts(smtp_sink):
    deliveries = _queue(2, transport="smtp")
    assert deliveries_send_batch(delivery_ids=[d.id for d in deliveries]) == {"sent": 2}
    boundaries = set()
    for received in smtp_sink.messages:
        message = received["message"]
        assert message.get_content_type() == "multipart/alternative"
        boundary = message.get_boundary()
        assert boundary.startswith("=_") and len(boundary) == 34
        boundaries.add(boundary)
        parts = [part.get_content_type() for part in message.iter_parts()]
        assert parts == ["text/plain", "text/html"]
    assert len(boundaries) == 2


@pytest.mark.parametrize(
    "subject",
    [
        "Hello",
        "Hello  there",
        "Réduction de 20 % sur tout",
        "A long subject that goes on " * 4,
        "tab\there",
    ],
)
def test_smtp_message_headers_are_written_as_the_standard_library_writes_them(subject):
    from email.policy import compat32

    from notifier.sending.message import OutboundMessage

    message = OutboundMessage(
        subject,
        "text é\n",
        "News <news@example.com>",
        ["Zoë Müller <zoe@example.com>", "Reader 1 <r1@example.com>"],
        headers={
            "Message-ID": "<1@example.com>",
            "List-Unsubscribe": f"<https://example.com/u/{'x' * 80}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    message.attach_alternative("<p>html é</p>", "text/html")
    mime = message.message()
    written = mime.as_bytes(linesep="\r\n")
    mime.policy = compat32
    assert written == mime.as_bytes(linesep="\r\n")
