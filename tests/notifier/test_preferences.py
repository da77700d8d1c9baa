"""The preference page: topics and frequencies, unsubscribe from everything, resubscribe."""

import re
import time

import pytest
from django.core import signing
from django.test import Client

from notifier.models import Frequency, Notification, Preference, Recipient, Suppression, Topic
from notifier.services.suppressions import suppression_add
from notifier.services.unsubscribe import preferences_token, unsubscribe_token
from tests.notifier.factories import RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser():
    """A client with no session that enforces CSRF, as a real browser meets it."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def topics():
    return [
        Topic.objects.create(key="news", name="News", description="What is new"),
        Topic.objects.create(key="tips", name="Tips", default_frequency=Frequency.DAILY),
    ]


def _page(browser: Client, recipient: Recipient):
    path = f"/preferences/{preferences_token(recipient=recipient)}/"
    response = browser.get(path)
    return path, response, browser.cookies["csrftoken"].value


def test_page_lists_topics_with_their_frequency_as_plain_html(browser, topics):
    recipient = RecipientFactory(email="ann@example.com")
    Preference.objects.create(recipient=recipient, topic=topics[0], frequency=Frequency.HOURLY)
    _path, response, _csrf = _page(browser, recipient)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<script" not in html
    assert '<html lang="en">' in html
    assert "ann@example.com" in html
    for topic in topics:
        assert f"<legend>{topic.name}</legend>" in html
    checked = re.findall(r'<input type="radio" name="(topic_\d+)" value="(\w+)"[^>]*checked', html)
    assert sorted(checked) == [
        (f"topic_{topics[0].pk}", "hourly"),
        (f"topic_{topics[1].pk}", "daily"),
    ]
    assert re.search(r'<label for="id_topic_\d+_0"><input[^>]+> At once</label>', html)
    assert 'value="unsubscribe_all"' in html


def test_saving_frequencies(browser, topics):
    recipient = RecipientFactory()
    path, _response, csrf = _page(browser, recipient)
    waiting = Notification.objects.create(
        recipient=recipient, topic=topics[1], data={}, frequency=Frequency.DAILY
    )
    data = {
        "csrfmiddlewaretoken": csrf,
        "action": "save",
        f"topic_{topics[0].pk}": "daily",
        f"topic_{topics[1].pk}": "off",
    }
    response = browser.post(path, data)
    assert response.status_code == 302
    assert response["Location"] == f"{path}?done=saved"
    assert "Your choices are saved." in browser.get(response["Location"]).content.decode()
    assert dict(
        Preference.objects.filter(recipient=recipient).values_list("topic__key", "frequency")
    ) == {"news": "daily", "tips": "off"}
    waiting.refresh_from_db()
    assert waiting.frequency == Frequency.OFF


@pytest.mark.parametrize("value", ["monthly", "", "off'; --"])
def test_invalid_choice_is_refused_and_changes_nothing(browser, topics, value):
    recipient = RecipientFactory()
    path, _response, csrf = _page(browser, recipient)
    data = {"csrfmiddlewaretoken": csrf, f"topic_{topics[0].pk}": value}
    response = browser.post(path, data)
    assert response.status_code == 400
    assert "Please choose one option for each topic." in response.content.decode()
    assert not Preference.objects.exists()


def test_posting_without_csrf_token_is_refused(browser, topics):
    recipient = RecipientFactory()
    path = f"/preferences/{preferences_token(recipient=recipient)}/"
    response = browser.post(path, {f"topic_{topics[0].pk}": "off"})
    assert response.status_code == 403
    assert not Preference.objects.exists()


def test_unsubscribe_from_everything_then_resubscribe(browser, topics):
    recipient = RecipientFactory()
    path, _response, csrf = _page(browser, recipient)
    response = browser.post(path, {"csrfmiddlewaretoken": csrf, "action": "unsubscribe_all"})
    assert response["Location"] == f"{path}?done=unsubscribed"
    assert Suppression.objects.get(lifted_at__isnull=True).reason == "unsubscribed"
    recipient.refresh_from_db()
    assert recipient.status == Recipient.Status.UNSUBSCRIBED
    html = browser.get(response["Location"]).content.decode()
    assert "You are unsubscribed from all email from us" in html
    assert 'value="resubscribe"' in html
    response = browser.post(path, {"csrfmiddlewaretoken": csrf, "action": "resubscribe"})
    assert response["Location"] == f"{path}?done=resubscribed"
    suppression = Suppression.objects.get()
    assert suppression.lifted_at is not None
    assert suppression.lifted_reason == "Resubscribed by the recipient on the preference page"
    recipient.refresh_from_db()
    assert recipient.status == Recipient.Status.ACTIVE


def test_a_bounce_cannot_be_lifted_by_the_recipient(browser, topics):
    recipient = RecipientFactory()
    suppression_add(email=recipient.email, reason=Suppression.Reason.HARD_BOUNCE)
    path, response, csrf = _page(browser, recipient)
    html = response.content.decode()
    assert "could not be\n  delivered" in html
    assert 'value="resubscribe"' not in html
    browser.post(path, {"csrfmiddlewaretoken": csrf, "action": "resubscribe"})
    assert Suppression.objects.get().lifted_at is None


@pytest.mark.parametrize(
    "token",
    [
        lambda r: preferences_token(recipient=r)[:-3],
        lambda r: unsubscribe_token(recipient=r),  # an unsubscribe token is not one
        lambda r: str(r.pk),
    ],
    ids=["truncated", "unsubscribe-token", "plain-id"],
)
def test_bad_tokens_get_400(browser, topics, token):
    recipient = RecipientFactory()
    response = browser.get(f"/preferences/{token(recipient)}/")
    assert response.status_code == 400
    assert b"This link is not valid" in response.content


# --- Expiry and opaque recipient references ---------------------------------------------


def _days_later(monkeypatch, days: float):
    now = time.time()
    monkeypatch.setattr(signing.time, "time", lambda: now + days * 86400)


def test_preference_links_expire_with_a_friendly_page(browser, topics, settings, monkeypatch):
    settings.NOTIFIER_PREFERENCE_LINK_DAYS = 90
    recipient = RecipientFactory()
    path = f"/preferences/{preferences_token(recipient=recipient)}/"

    _days_later(monkeypatch, 89)
    assert browser.get(path).status_code == 200

    _days_later(monkeypatch, 91)
    response = browser.get(path)
    assert response.status_code == 410
    html = response.content.decode()
    assert "This link has expired" in html and "fresh link" in html
    assert recipient.email not in html
    response = browser.post(path, {"action": "unsubscribe_all"})
    assert response.status_code in (403, 410)  # CSRF first, or the expiry page
    assert not Suppression.objects.exists()


def test_a_preference_link_made_before_expiry_existed_shows_the_expired_page(browser, topics):
    recipient = RecipientFactory()
    old = signing.Signer(salt="notifier.preferences").sign_object({"r": recipient.pk})
    response = browser.get(f"/preferences/{old}/")
    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()


def test_links_name_the_recipient_by_a_random_public_id_not_the_row_id():
    first, second = RecipientFactory(), RecipientFactory()
    assert first.public_id != second.public_id
    payload = signing.TimestampSigner(salt="notifier.preferences.v2").unsign_object(
        preferences_token(recipient=first)
    )
    assert payload == {"p": first.public_id.hex}
    unsubscribe = signing.Signer(salt="notifier.unsubscribe").unsign_object(
        unsubscribe_token(recipient=first)
    )
    assert unsubscribe == {"p": first.public_id.hex, "s": "all"}


def test_unsubscribe_links_already_sent_keep_working(browser):
    recipient = RecipientFactory()
    old = signing.Signer(salt="notifier.unsubscribe").sign_object({"r": recipient.pk, "s": "all"})
    response = browser.post(
        f"/unsubscribe/{old}/",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert Suppression.objects.get(email=recipient.email).reason == "unsubscribed"


def test_recipients_inserted_in_bulk_get_a_public_id_too():
    import io

    from campaigns.services.contacts import contacts_import_csv

    contacts_import_csv(stream=io.BytesIO(b"email\na@example.com\nb@example.com\n"))
    ids = list(Recipient.objects.values_list("public_id", flat=True))
    assert len(ids) == 2 and None not in ids and len(set(ids)) == 2
