"""One-click unsubscribe: signed links, RFC 8058 headers on the wire, and what it changes."""

import re
from urllib.parse import unquote, urlparse

import pytest
from django.core import signing
from django.test import Client

from notifier import send
from notifier.models import (
    Delivery,
    Frequency,
    Notification,
    Preference,
    Recipient,
    Suppression,
    Topic,
)
from notifier.sending import deliveries_send_batch
from notifier.services import unsubscribe as unsubscribe_service
from notifier.services.dispatch import deliveries_dispatch
from notifier.services.suppressions import NOT_SENT_FOR_REASON
from notifier.services.unsubscribe import (
    preferences_token,
    register_scope_handler,
    unsubscribe_token,
    unsubscribe_token_read,
    unsubscribe_url,
)
from tests.conftest import wait_for
from tests.notifier.esp_payloads import post_webhook, postmark_bounce, postmark_spam_complaint
from tests.notifier.factories import DeliveryFactory, RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db

ONE_CLICK = "List-Unsubscribe=One-Click"
LINK_RE = re.compile(r"<(https?://[^>]+)>")


@pytest.fixture
def https_site(settings):
    settings.SITE_URL = "https://mail.example.org"
    return settings.SITE_URL


@pytest.fixture
def csrf_client():
    """A fresh client (no session, no cookies) that enforces CSRF like a browser would."""
    return Client(enforce_csrf_checks=True)


def _one_click(client: Client, url: str):
    path = urlparse(url).path
    return client.post(path, data=ONE_CLICK, content_type="application/x-www-form-urlencoded")


def _links(header: str) -> list[str]:
    return [part.strip() for part in header.split(",")]


def _token_of(url: str) -> str:
    return unquote(urlparse(url).path.split("/")[2])


# --- acceptance 5: headers on the raw message ----------------------------------------


@pytest.mark.parametrize(
    "kind, scope",
    [(Delivery.Kind.CAMPAIGN, "all"), (Delivery.Kind.DIGEST, "topics")],
)
def test_bulk_mail_carries_rfc8058_headers_at_the_esp(fake_esp, https_site, settings, kind, scope):
    settings.NOTIFIER_UNSUBSCRIBE_MAILTO = "unsubscribe@mail.example.org"
    template = TemplateFactory(
        html_body='<p>Hi</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
        ' <a href="{{ preferences_url }}">Preferences</a>'
    )
    delivery = DeliveryFactory(kind=kind, template=template)
    assert deliveries_send_batch(delivery_ids=[delivery.id]) == {"sent": 1}
    (message,) = fake_esp.messages
    headers = message["Headers"]
    assert headers["List-Unsubscribe-Post"] == ONE_CLICK
    https_link, mailto_link = _links(headers["List-Unsubscribe"])
    url = LINK_RE.fullmatch(https_link).group(1)
    assert url.startswith("https://mail.example.org/unsubscribe/")
    assert mailto_link.startswith("<mailto:unsubscribe@mail.example.org?subject=unsubscribe%20")
    recipient, token_scope = unsubscribe_token_read(_token_of(url))
    assert (recipient.pk, token_scope) == (delivery.recipient_id, scope)
    assert f'href="{url}"' in message["HtmlBody"]
    assert 'href="https://mail.example.org/preferences/' in message["HtmlBody"]
    assert "X-Notifier-Unsubscribe" not in headers


def test_bulk_mail_carries_rfc8058_headers_over_smtp(smtp_sink, https_site):
    campaign = DeliveryFactory(kind=Delivery.Kind.CAMPAIGN, transport="smtp")
    digest = DeliveryFactory(kind=Delivery.Kind.DIGEST, transport="smtp")
    transactional = send(subject="Reset", text="Your code", to="t@example.com", transport="smtp")
    counts = deliveries_send_batch(delivery_ids=[campaign.id, digest.id, transactional.id])
    assert counts == {"sent": 3}
    by_recipient = {m["rcpt_tos"][0]: m["message"] for m in smtp_sink.messages}
    for delivery in (campaign, digest):
        raw = by_recipient[delivery.recipient.email]
        assert raw["List-Unsubscribe-Post"] == ONE_CLICK
        (link,) = _links(raw["List-Unsubscribe"])  # no mailto configured
        url = LINK_RE.fullmatch(link).group(1)
        assert url.startswith("https://mail.example.org/unsubscribe/")
        assert unsubscribe_token_read(_token_of(url))[0].pk == delivery.recipient_id
    plain = by_recipient["t@example.com"]
    assert plain["List-Unsubscribe"] is None
    assert plain["List-Unsubscribe-Post"] is None


def test_transactional_mail_has_no_unsubscribe_headers_unless_asked(fake_esp, https_site):
    topic = Topic.objects.create(key="orders", name="Orders")
    plain = send(subject="Receipt", text="Thanks", to="a@example.com")
    asked = send(
        subject="Order shipped",
        text="On its way",
        to="b@example.com",
        headers={"X-Notifier-Unsubscribe": f"topic:{topic.key}"},
    )
    deliveries_send_batch(delivery_ids=[plain.id, asked.id])
    by_to = {m["To"]: m["Headers"] for m in fake_esp.messages}
    assert "List-Unsubscribe" not in by_to["a@example.com"]
    assert "List-Unsubscribe-Post" not in by_to["a@example.com"]
    headers = by_to["b@example.com"]
    assert headers["List-Unsubscribe-Post"] == ONE_CLICK
    assert "X-Notifier-Unsubscribe" not in headers
    url = LINK_RE.fullmatch(headers["List-Unsubscribe"]).group(1)
    assert unsubscribe_token_read(_token_of(url))[1] == "topic:orders"


# --- acceptance 3: the one-click POST and bad tokens ---------------------------------


def test_one_click_post_unsubscribes_without_session_or_csrf(csrf_client):
    recipient = RecipientFactory()
    url = unsubscribe_url(recipient=recipient)
    response = _one_click(csrf_client, url)
    assert response.status_code == 200
    assert b"You are unsubscribed" in response.content
    assert not response.cookies  # no session was needed or created
    suppression = Suppression.objects.get(email=recipient.email, lifted_at__isnull=True)
    assert suppression.reason == Suppression.Reason.UNSUBSCRIBED
    assert "one-click" in suppression.note
    recipient.refresh_from_db()
    assert recipient.status == Recipient.Status.UNSUBSCRIBED
    assert _one_click(csrf_client, url).status_code == 200  # twice: same state
    assert Suppression.objects.count() == 1


def test_get_shows_a_confirm_page_and_changes_nothing(csrf_client):
    recipient = RecipientFactory(email="ann@example.com")
    url = unsubscribe_url(recipient=recipient)
    response = csrf_client.get(urlparse(url).path)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Stop sending all email from us to <strong>ann@example.com</strong>?" in body
    assert '<form method="post">' in body
    assert re.search(r'href="/preferences/[^"]+/"', body)
    assert not Suppression.objects.exists()
    # The confirm button posts the same form (no one-click body): same effect.
    response = csrf_client.post(urlparse(url).path, {"confirm": "yes"})
    assert response.status_code == 200
    assert "unsubscribe page" in Suppression.objects.get().note


def _tampered(token: str) -> str:
    i = token.index(":") - 3
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


BAD_TOKENS = {
    "tampered-payload": lambda r: _tampered(unsubscribe_token(recipient=r)),
    "tampered-signature": lambda r: unsubscribe_token(recipient=r)[:-1] + "x",
    "truncated": lambda r: unsubscribe_token(recipient=r)[:-6],
    "payload-only": lambda r: unsubscribe_token(recipient=r).split(":")[0],
    "preferences-token": lambda r: preferences_token(recipient=r),
    "other-salt": lambda r: signing.Signer(salt="other").sign_object({"r": r.pk, "s": "all"}),
    "other-key": lambda r: signing.Signer(
        key="not-our-key", salt="notifier.unsubscribe"
    ).sign_object({"r": r.pk, "s": "all"}),
    "other-recipient": lambda r: _swap(
        unsubscribe_token(recipient=r), Recipient.objects.exclude(pk=r.pk).get()
    ),
    "bad-scope": lambda r: signing.Signer(salt="notifier.unsubscribe").sign_object(
        {"r": r.pk, "s": "everything; drop"}
    ),
    "wrong-shape": lambda r: signing.Signer(salt="notifier.unsubscribe").sign_object([r.pk]),
    "guessable-id": lambda r: str(r.pk),
    "huge": lambda r: "a" * 5000,
    "deleted-recipient": lambda r: unsubscribe_token(recipient=Recipient(email="gone@example.com")),
}


def _swap(token: str, other_recipient: Recipient) -> str:
    """Re-use a real signature with another recipient's payload."""
    _payload, signature = token.rsplit(":", 1)
    other = unsubscribe_token(recipient=other_recipient)
    return other.rsplit(":", 1)[0] + ":" + signature


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_tokens_get_a_clear_400_page_and_change_nothing(csrf_client, make, method):
    recipient = RecipientFactory()
    RecipientFactory()  # the "other recipient"
    token = make(recipient)
    path = f"/unsubscribe/{token}/"
    if method == "get":
        response = csrf_client.get(path)
    else:
        response = csrf_client.post(path, data=ONE_CLICK, content_type="text/plain")
    assert response.status_code == 400
    assert b"This link is not valid" in response.content
    assert b"Nothing has been changed" in response.content
    assert not Suppression.objects.exists()
    assert not Preference.objects.exists()
    assert Recipient.objects.filter(status=Recipient.Status.ACTIVE).count() == 2


def test_a_token_names_its_recipient_and_scope_only_when_signed():
    recipient = RecipientFactory()
    token = unsubscribe_token(recipient=recipient, scope="topic:news")
    assert unsubscribe_token_read(token) == (recipient, "topic:news")
    with pytest.raises(ValueError):
        unsubscribe_token(recipient=recipient, scope="topic:../../etc")


# --- scopes: topic, list, everything; pending mail is not sent ---------------------------


def test_topic_scope_turns_the_topic_off_and_its_waiting_notifications(csrf_client):
    recipient = RecipientFactory()
    news = Topic.objects.create(key="news", name="News", default_frequency=Frequency.DAILY)
    other = Topic.objects.create(key="other", name="Other")
    waiting = Notification.objects.create(
        recipient=recipient, topic=news, data={"n": 1}, frequency=Frequency.DAILY
    )
    kept = Notification.objects.create(
        recipient=recipient, topic=other, data={"n": 2}, frequency=Frequency.HOURLY
    )
    url = unsubscribe_url(recipient=recipient, scope="topic:news")
    page = csrf_client.get(urlparse(url).path).content.decode()
    assert "Stop sending “News” notifications" in page
    response = _one_click(csrf_client, url)
    assert "no more “News” notifications" in response.content.decode()
    assert Preference.objects.get(recipient=recipient, topic=news).frequency == Frequency.OFF
    assert not Preference.objects.filter(topic=other).exists()
    waiting.refresh_from_db()
    kept.refresh_from_db()
    assert (waiting.frequency, kept.frequency) == (Frequency.OFF, Frequency.HOURLY)
    assert not Suppression.objects.exists()


def test_list_scope_goes_to_its_registered_handler(csrf_client, monkeypatch):
    monkeypatch.setattr(unsubscribe_service, "_scope_handlers", {})
    calls = []

    def leave_list(*, recipient, value):
        calls.append((recipient.pk, value))
        return "You left the Weekly list."

    register_scope_handler("list", unsubscribe=leave_list, describe=lambda v: f"list {v} mail")
    recipient = RecipientFactory()
    url = unsubscribe_url(recipient=recipient, scope="list:12")
    assert "Stop sending list 12 mail" in csrf_client.get(urlparse(url).path).content.decode()
    assert b"You left the Weekly list." in _one_click(csrf_client, url).content
    assert calls == [(recipient.pk, "12")]
    assert not Suppression.objects.exists()


def test_scope_without_a_handler_unsubscribes_from_everything(csrf_client, monkeypatch):
    monkeypatch.setattr(unsubscribe_service, "_scope_handlers", {})
    recipient = RecipientFactory()
    _one_click(csrf_client, unsubscribe_url(recipient=recipient, scope="list:12"))
    suppression = Suppression.objects.get()
    assert suppression.reason == Suppression.Reason.UNSUBSCRIBED
    assert "list:12" in suppression.note


def test_pending_bulk_mail_is_not_sent_after_unsubscribing(csrf_client, fake_esp):
    recipient = RecipientFactory()
    pending = [DeliveryFactory(recipient=recipient, kind=k) for k in ("campaign", "digest")]
    _one_click(csrf_client, unsubscribe_url(recipient=recipient))
    counts = deliveries_send_batch(delivery_ids=[d.id for d in pending])
    assert counts == {"suppressed": 2}
    assert fake_esp.messages == []
    for delivery in pending:
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.SUPPRESSED
        assert delivery.status_reason == "Not sent: the address is suppressed (unsubscribed)."


# --- acceptance 4: a suppressed address is not mailed, and the Delivery says why ----------


def _suppress_by(how: str, client: Client, recipient: Recipient, fake_esp) -> str:
    if how == "unsubscribe":
        _one_click(client, unsubscribe_url(recipient=recipient))
        return "unsubscribed"
    sent = DeliveryFactory(recipient=recipient)
    deliveries_send_batch(delivery_ids=[sent.id])
    sent.refresh_from_db()
    ids = {"message_id": sent.esp_message_id, "email": recipient.email}
    payload = postmark_bounce(**ids) if how == "bounce" else postmark_spam_complaint(**ids)
    assert post_webhook(client, payload).status_code == 200
    fake_esp.messages.clear()
    return "hard_bounce" if how == "bounce" else "complaint"


@pytest.mark.parametrize("how", ["bounce", "complaint", "unsubscribe"])
def test_suppressed_address_gets_no_mail_and_the_delivery_says_why(client, fake_esp, how):
    recipient = RecipientFactory()
    reason = _suppress_by(how, client, recipient, fake_esp)
    transactional = send(subject="Receipt", text="Thanks", to=recipient.email.upper())
    assert transactional.status == Delivery.Status.SUPPRESSED
    said = NOT_SENT_FOR_REASON[reason]  # "Not sent: the address is suppressed (hard bounce)."
    assert transactional.status_reason == said
    campaign = DeliveryFactory(recipient=recipient, run_id=4242)
    assert deliveries_send_batch(delivery_ids=[campaign.id]) == {"suppressed": 1}
    campaign.refresh_from_db()
    assert campaign.status == Delivery.Status.SUPPRESSED
    assert campaign.status_reason == said
    assert fake_esp.messages == []


# --- the whole loop through a real worker ----------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_sends_headers_then_one_click_stops_the_next_mail(
    celery_worker_process, fake_esp, settings
):
    recipient = RecipientFactory(email="loop@example.com")
    first = DeliveryFactory(recipient=recipient, run_id=1)
    deliveries_dispatch(ids_by_kind={"campaign": [first.id]})
    wait_for(lambda: Delivery.objects.get(pk=first.pk).status == Delivery.Status.SENT)
    (message,) = fake_esp.messages
    assert message["Headers"]["List-Unsubscribe-Post"] == ONE_CLICK
    url = LINK_RE.fullmatch(message["Headers"]["List-Unsubscribe"]).group(1)
    assert url.startswith(f"{settings.SITE_URL}/unsubscribe/")
    assert _one_click(Client(enforce_csrf_checks=True), url).status_code == 200
    second = DeliveryFactory(recipient=recipient, run_id=2)
    deliveries_dispatch(ids_by_kind={"campaign": [second.id]})
    wait_for(lambda: Delivery.objects.get(pk=second.pk).status == Delivery.Status.SUPPRESSED)
    assert len(fake_esp.messages) == 1


def test_tokens_are_signed_exactly_as_django_signs_them(settings):
    """Keys are derived once per process, yet a token is the one Django's
    signers make: links made before still verify, and the other way round;
    a rotated key (in SECRET_KEY_FALLBACKS) keeps verifying."""
    recipient = RecipientFactory()
    token = unsubscribe_service.unsubscribe_token(recipient=recipient, scope="topics")
    django_token = signing.Signer(salt=unsubscribe_service.UNSUBSCRIBE_SALT).sign_object(
        {"p": recipient.public_id.hex, "s": "topics"}
    )
    assert token == django_token
    preferences = unsubscribe_service.preferences_token(recipient=recipient)
    signer = signing.TimestampSigner(salt=unsubscribe_service.PREFERENCES_SALT)
    assert signer.unsign_object(preferences) == {"p": recipient.public_id.hex}
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-key-" + "x" * 50, [old_key]
    assert unsubscribe_service.unsubscribe_token(recipient=recipient, scope="topics") != token
    with pytest.raises(signing.BadSignature):
        signing.Signer(salt=unsubscribe_service.UNSUBSCRIBE_SALT, fallback_keys=[]).unsign_object(
            token
        )
    assert unsubscribe_service._signer(unsubscribe_service.UNSUBSCRIBE_SALT).unsign_object(
        token
    ) == {"p": recipient.public_id.hex, "s": "topics"}
