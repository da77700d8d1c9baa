"""Signup forms with double opt-in: the public page, its guards, the
confirmation link, the consent record, and the subscriptions API."""

import re
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core import signing
from django.test import Client
from django.utils import timezone

from api.services import api_token_create
from campaigns.models import Consent, ListMembership, SignupForm
from campaigns.services.signups import signup_confirmed, signup_form_token
from notifier.models import Delivery, Recipient, WebhookDelivery, WebhookEndpoint
from notifier.services.suppressions import suppression_add
from tests.api.conftest import ApiClient, assert_matches_openapi
from tests.campaigns.factories import ContactListFactory

pytestmark = pytest.mark.django_db

CONSENT = "Yes, send me the monthly newsletter. I can unsubscribe at any time."


@pytest.fixture
def form(confirmation_template):
    form = SignupForm.objects.create(
        name="Newsletter",
        slug="newsletter",
        title="Get our newsletter",
        attribute_fields="company",
        consent_text=CONSENT,
    )
    form.lists.set([ContactListFactory(name="News"), ContactListFactory(name="Offers")])
    return form


def page_token(client: Client, form: SignupForm) -> str:
    page = client.get(f"/subscribe/{form.slug}/")
    assert page.status_code == 200
    return re.search(r'name="token" value="([^"]+)"', page.content.decode()).group(1)


def post(client, form, *, token="auto", **fields):
    data = {"email": "ann@example.com", "name": "Ann", "consent": "on", **fields}
    if token == "auto":
        token = page_token(client, form)
    if token is not None:
        data["token"] = token
    return client.post(f"/subscribe/{form.slug}/", data, REMOTE_ADDR="203.0.113.9")


def confirm_link(delivery: Delivery) -> str:
    return delivery.context["confirm_url"].split("127.0.0.1:8000", 1)[-1]


def test_the_page_works_without_javascript_and_carries_no_inline_script(client, form):
    page = client.get("/subscribe/newsletter/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "<script" not in html and not re.search(r"\son[a-z]+=", html)
    assert CONSENT in html and 'name="website"' in html and 'name="attr_company"' in html
    assert "Content-Security-Policy" in page.headers
    assert client.get("/subscribe/nope/").status_code == 404


def test_signup_confirm_joins_the_lists_and_records_the_consent(client, form, settings):
    WebhookEndpoint.objects.create(
        name="CRM", url="http://127.0.0.1:9/", secret="s" * 20, event_types=["subscribed"]
    )
    heard = []
    signup_confirmed.connect(lambda **kw: heard.append(kw), weak=False, dispatch_uid="t")
    try:
        response = post(Client(), form, attr_company="Acme")
        assert response.status_code == 200 and b"Check your inbox" in response.content
        recipient = Recipient.objects.get(email="ann@example.com")
        assert not ListMembership.objects.filter(recipient=recipient).exists()
        consent = Consent.objects.get()
        assert (consent.form, consent.consent_text, consent.ip_address) == (
            form,
            CONSENT,
            "203.0.113.9",
        )
        assert consent.confirmed_at is None and consent.attributes == {"company": "Acme"}
        delivery = Delivery.objects.get(recipient=recipient)
        assert delivery.template.name == "Signup confirmation"
        link = confirm_link(delivery)

        anyone = Client(enforce_csrf_checks=True)
        page = anyone.get(link)  # a mail scanner opening the link changes nothing
        assert page.status_code == 200 and b"Confirm subscription" in page.content
        assert not ListMembership.objects.exists()
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
        done = anyone.post(link, {"csrfmiddlewaretoken": csrf.group(1)}, REMOTE_ADDR="203.0.113.10")
        assert done.status_code == 200 and b"You are subscribed" in done.content
        again = anyone.post(link, {"csrfmiddlewaretoken": csrf.group(1)})
        assert again.status_code == 200
    finally:
        signup_confirmed.disconnect(dispatch_uid="t")

    assert set(
        ListMembership.objects.filter(recipient=recipient).values_list(
            "contact_list__name", flat=True
        )
    ) == {"News", "Offers"}
    recipient.refresh_from_db()
    assert recipient.name == "Ann" and recipient.attributes == {"company": "Acme"}
    consent.refresh_from_db()
    assert consent.confirmed_at and consent.confirm_ip_address == "203.0.113.10"
    assert len(heard) == 1 and heard[0]["recipient"] == recipient and heard[0]["form"] == form
    assert WebhookDelivery.objects.get().event_type == "subscribed"


def test_honeypot_rate_limit_and_replayed_tokens(client, form, settings):
    bot = post(client, form, website="http://spam.example")
    assert bot.status_code == 200 and b"Check your inbox" in bot.content
    assert not Consent.objects.exists() and not Delivery.objects.exists()

    token = page_token(client, form)
    assert post(client, form, token=token).status_code == 200
    replay = post(client, form, token=token, email="bob@example.com")
    assert replay.status_code == 400 and b"sent already" in replay.content
    assert Consent.objects.count() == 1

    tampered = post(client, form, token=token[:-2] + "xx", email="bob@example.com")
    assert tampered.status_code == 400 and Consent.objects.count() == 1
    other_form = SignupForm.objects.create(name="B", slug="b", title="B", consent_text="ok")
    foreign = post(client, form, token=signup_form_token(form=other_form), email="bob@example.com")
    assert foreign.status_code == 400
    with mock.patch(
        "django.core.signing.time.time", return_value=timezone.now().timestamp() + 2 * 86400
    ):
        expired = post(client, form, token=token, email="bob@example.com")
    assert expired.status_code == 400 and b"expired" in expired.content

    settings.SIGNUP_RATE_LIMIT_PER_HOUR = 6  # posts so far: 6
    limited = post(client, form, email="carl@example.com")
    assert limited.status_code == 429
    assert Consent.objects.count() == 1


def test_bad_input_is_a_form_error_and_changes_nothing(client, form):
    for fields in ({"email": "not-an-address"}, {"consent": ""}, {"name": "a\x00b"}):
        response = post(client, form, **fields)
        assert response.status_code == 400, fields
    assert not Consent.objects.exists() and not Recipient.objects.exists()


def test_the_embedded_snippet_lands_on_the_page_to_send_once_more(client, form):
    response = post(client, form, token=None, email="dee@example.com")
    assert response.status_code == 200
    html = response.content.decode()
    assert "press Subscribe" in html and 'value="dee@example.com"' in html
    assert not Consent.objects.exists()


def test_suppressed_addresses_are_refused_without_saying_why(client, form):
    suppression_add(email="gone@example.com", reason="hard_bounce")
    response = post(client, form, email="gone@example.com")
    assert response.status_code == 400
    assert b"cannot be subscribed" in response.content and b"bounce" not in response.content
    assert not Consent.objects.exists()


def test_expired_and_tampered_confirmation_links(client, form):
    post(client, form)
    link = confirm_link(Delivery.objects.get())
    later = timezone.now() + timedelta(days=8)
    with mock.patch("django.core.signing.time.time", return_value=later.timestamp()):
        assert client.get(link).status_code == 410
        assert client.post(link).status_code in (403, 410)
    assert client.get(link[:-3] + "xx/").status_code == 400
    assert (
        client.get("/subscribe/confirm/" + signing.dumps(999, salt="other") + "/").status_code
        == 400
    )
    assert not ListMembership.objects.exists()


def test_admin_shows_the_public_page_and_an_embeddable_snippet(client, form):
    client.force_login(User.objects.create_superuser("root", password="pw"))
    page = client.get(f"/admin/campaigns/signupform/{form.pk}/change/").content.decode()
    assert "http://127.0.0.1:8000/subscribe/newsletter/" in page
    assert "&lt;form method=&quot;post&quot;" in page and "&lt;script" not in page


def test_subscriptions_api_with_and_without_double_opt_in(form, fake_esp):
    _token, secret = api_token_create(service="shop")
    api = ApiClient(secret)
    news = form.lists.get(name="News")

    pending = api.post("/api/v1/subscriptions", {"email": "eve@example.com", "form": "newsletter"})
    assert pending.status_code == 201, pending.content
    assert_matches_openapi(pending, "/subscriptions", "post")
    assert pending.json()["status"] == "awaiting_confirmation"
    assert Delivery.objects.filter(recipient__email="eve@example.com").count() == 1
    assert not ListMembership.objects.filter(recipient__email="eve@example.com").exists()

    direct = api.post(
        "/api/v1/subscriptions",
        {
            "email": "fay@example.com",
            "name": "Fay",
            "lists": [news.pk],
            "double_opt_in": False,
            "consent_text": "Ticked the box at checkout",
            "ip_address": "2001:db8::1",
        },
    )
    assert direct.status_code == 201, direct.content
    assert direct.json()["status"] == "subscribed"
    assert ListMembership.objects.filter(recipient__email="fay@example.com").count() == 1
    consent = Consent.objects.get(recipient__email="fay@example.com")
    assert (consent.source, consent.requested_by, consent.ip_address) == (
        "api",
        "api:shop",
        "2001:db8::1",
    )

    suppression_add(email="gone@example.com", reason="unsubscribed")
    refused = api.post("/api/v1/subscriptions", {"email": "gone@example.com", "form": "newsletter"})
    assert refused.status_code == 409
    assert_matches_openapi(refused, "/subscriptions", "post")
    for body in (
        {"email": "x@example.com"},
        {"email": "x@example.com", "lists": [99999]},
        {"email": "x@example.com", "form": "nope"},
        {"email": "x@example.com", "lists": [news.pk]},  # no consent text
        {"email": "x@example.com", "form": "newsletter", "ip_address": "999.1.1.1"},
        {"email": "x@", "form": "newsletter"},
    ):
        bad = api.post("/api/v1/subscriptions", body)
        assert bad.status_code == 400, (body, bad.content)
        assert_matches_openapi(bad, "/subscriptions", "post")
    assert not Recipient.objects.filter(email="x@example.com").exists()
