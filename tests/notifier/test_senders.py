"""Sender identities: one From address, no header injection, within what admins allow."""

import pytest
from django.db import IntegrityError

from campaigns.models import Campaign
from notifier import send
from notifier.errors import NotifierError
from notifier.models import Delivery, SenderIdentity
from notifier.services.senders import sender_validate
from tests.campaigns.factories import CampaignFactory, ContactListFactory

pytestmark = pytest.mark.django_db

HOSTILE_FROMS = [
    "a@example.com\r\nBcc: hidden@evil.example",
    "Shop <a@example.com>\nBcc: hidden@evil.example",
    "a@example.com, b@example.com",
    "Shop <a@example.com>, Other <b@example.com>",
    "a@example.com b@example.com",
    "Shop\x00 <a@example.com>",
    "Shop <a@example.com\x7f>",
    "Shop \u2028<a@example.com>",
    "<a@example.com> <b@example.com>",
    "not an address",
]


@pytest.mark.parametrize("value", HOSTILE_FROMS)
def test_send_refuses_a_from_that_is_not_exactly_one_clean_address(value):
    with pytest.raises(NotifierError):
        send(to="ann@example.com", subject="Hi", text="Hi", from_email=value)
    assert not Delivery.objects.exists()


@pytest.mark.parametrize("value", [*HOSTILE_FROMS, "", "  ", "a" * 330 + "@example.com"])
def test_sender_validate_refuses_hostile_values(value):
    with pytest.raises(NotifierError):
        sender_validate(from_email=value)


def test_one_address_with_or_without_a_name_is_accepted_and_normalised():
    assert sender_validate(from_email="Shop <News@Shop.Example>") == "Shop <news@shop.example>"
    assert sender_validate(from_email='"Shop, Inc." <news@shop.example>') == (
        '"Shop, Inc." <news@shop.example>'
    )
    assert sender_validate(from_email="news@shop.example") == "news@shop.example"


def test_with_identities_configured_only_those_are_allowed(settings):
    settings.DEFAULT_FROM_EMAIL = "Notifier <notifier@app.example>"
    SenderIdentity.objects.create(name="Shop", email="news@shop.example")
    SenderIdentity.objects.create(domain="mail.example")
    for allowed in (
        "Shop <news@shop.example>",
        "Anything <anyone@mail.example>",
        "notifier@app.example",  # DEFAULT_FROM_EMAIL stays allowed
    ):
        assert sender_validate(from_email=allowed)
    for refused in (
        "PayPal Security <security@paypal.example>",
        "other@shop.example",
        "x@sub.mail.example",
    ):
        with pytest.raises(NotifierError, match="not a configured sender identity"):
            sender_validate(from_email=refused)
    with pytest.raises(NotifierError, match="not a configured sender identity"):
        send(to="ann@example.com", subject="Hi", text="Hi", from_email="security@paypal.example")
    delivery = send(to="ann@example.com", subject="Hi", text="Hi", from_email="x@mail.example")
    assert delivery.from_email == "x@mail.example"


def test_an_identity_is_one_address_or_one_domain():
    with pytest.raises(IntegrityError):
        SenderIdentity.objects.create(email="a@example.com", domain="example.com")


def test_identity_admin_checks_its_input(admin_client):
    url = "/admin/notifier/senderidentity/add/"
    for data, field in (
        ({"name": "Shop", "email": "a@example.com", "domain": "example.com"}, "email"),
        ({"name": "Shop", "email": "", "domain": ""}, "email"),
        ({"name": 'Sh"op', "email": "a@example.com", "domain": ""}, "name"),
        ({"name": "", "email": "", "domain": "exa mple"}, "domain"),
    ):
        response = admin_client.post(url, data)
        assert response.status_code == 200, data
        assert field in response.context["adminform"].form.errors, data
    assert not SenderIdentity.objects.exists()
    response = admin_client.post(url, {"name": "Shop", "email": "News@Shop.example", "domain": ""})
    assert response.status_code == 302
    assert SenderIdentity.objects.get().email == "news@shop.example"


# --- Campaigns and test sends pick an identity ----------------------------------------------


def _campaign_form(**overrides):
    data = {
        "name": "Spring sale",
        "context": "{}",
        "transport": "esp",
        "schedule": "none",
        "cron_minute": "0",
        "cron_hour": "*",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "cron_day_of_week": "*",
        "schedule_time_zone": "UTC",
    }
    data.update(overrides)
    return data


def test_a_campaign_picks_a_configured_sender(marketer):
    campaign = CampaignFactory()
    shop = campaign.sender
    domain = SenderIdentity.objects.create(domain="mail.example")
    contact_list = ContactListFactory()
    url = "/admin/campaigns/campaign/add/"
    form = marketer.get(url).context["adminform"].form
    assert [c[0].value for c in form.fields["sender"].choices if c[0]] == [shop.pk]
    base = _campaign_form(template=campaign.template.pk, contact_lists=[contact_list.pk])
    for bad in (domain.pk, 999999, "PayPal Security <security@paypal.example>"):
        response = marketer.post(url, {**base, "sender": bad})
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert "Choose one of the sender identities" in str(errors["sender"]), bad
    # A free-text From is not a field any more: it is ignored.
    response = marketer.post(url, {**base, "sender": shop.pk, "from_email": "x@evil.example"})
    assert response.status_code == 302
    assert Campaign.objects.get(name="Spring sale").from_header == "Shop <news@shop.example>"


def test_a_test_send_uses_the_sender_picked_from_the_list(marketer, fake_esp, settings):
    campaign = CampaignFactory()
    other = SenderIdentity.objects.create(name="Support", email="help@shop.example")
    domain = SenderIdentity.objects.create(domain="mail.example")
    action = f"/admin/campaigns/campaign/{campaign.pk}/do/test/"
    page = marketer.get(f"/admin/campaigns/campaign/{campaign.pk}/preview/").content.decode()
    assert f'<option value="{other.pk}">Support &lt;help@shop.example&gt;</option>' in page

    for bad in (str(domain.pk), "999999", "security@paypal.example"):
        response = marketer.post(action, {"to": "me@shop.example", "sender": bad}, follow=True)
        assert "Choose a sender" in str(next(iter(response.context["messages"]))), bad
    assert not fake_esp.messages

    marketer.post(action, {"to": "me@shop.example", "sender": str(other.pk)})
    marketer.post(action, {"to": "me2@shop.example", "sender": ""})
    froms = {m["To"]: m["From"] for m in fake_esp.messages}
    assert froms == {
        "me@shop.example": "Support <help@shop.example>",
        "me2@shop.example": settings.DEFAULT_FROM_EMAIL,
    }
