"""Least privilege in the admin: what a Marketing-group member can read and change.

Marketing sees campaign deliveries only (transactional, notification and
digest content is for holders of ``notifier.view_message_content``), writes
campaign templates only (transactional ones need
``notifier.manage_transactional_template``), and every template change is
recorded so it can be reviewed and rolled back.
"""

import pytest
from django.contrib.auth.models import Permission, User

from api.services import api_token_create
from campaigns.models import Campaign
from notifier import send
from notifier.errors import NotifierError
from notifier.models import Delivery, Template, TemplateRevision
from notifier.services.templates import template_save
from tests.api.conftest import ApiClient
from tests.campaigns.factories import ContactListFactory
from tests.notifier.factories import (
    DeliveryFactory,
    RecipientFactory,
    TemplateFactory,
    TopicFactory,
)

pytestmark = pytest.mark.django_db

ADMIN = "/admin"
SECRET = "https://app.example/reset/TOKEN-7f3a9c"


@pytest.fixture
def deliveries():
    """One campaign delivery and one of each kind that carries private content."""
    campaign = DeliveryFactory(
        kind=Delivery.Kind.CAMPAIGN,
        recipient=RecipientFactory(email="camp@example.com"),
        context={"code": "20% off"},
    )
    private = {
        kind: DeliveryFactory(
            kind=kind,
            recipient=RecipientFactory(email=f"{kind}@example.com"),
            template=None,
            subject="Reset your password",
            html_body=f'<a href="{SECRET}">Reset</a>',
            context={"link": SECRET},
            headers={"X-Reset": SECRET},
            idempotency_key=f"reset:{kind}",
        )
        for kind in (Delivery.Kind.TRANSACTIONAL, Delivery.Kind.NOTIFICATION, Delivery.Kind.DIGEST)
    }
    return campaign, private


def _listed_ids(response) -> set[int]:
    assert response.status_code == 200
    return {d.pk for d in response.context["cl"].result_list}


# --- Deliveries: campaign ones only, unless allowed to read message content ----------------


def test_marketing_lists_and_opens_campaign_deliveries_only(marketer, deliveries):
    campaign, private = deliveries
    assert _listed_ids(marketer.get(f"{ADMIN}/notifier/delivery/")) == {campaign.pk}
    # Search by address or idempotency key finds nothing private either.
    for query in ("transactional@example.com", "reset:", "example.com"):
        found = _listed_ids(marketer.get(f"{ADMIN}/notifier/delivery/", {"q": query}))
        assert found <= {campaign.pk}, query
    opened = marketer.get(f"{ADMIN}/notifier/delivery/{campaign.pk}/change/")
    assert opened.status_code == 200 and "20% off" in opened.content.decode()
    for delivery in private.values():
        page = marketer.get(f"{ADMIN}/notifier/delivery/{delivery.pk}/change/", follow=True)
        assert "TOKEN-7f3a9c" not in page.content.decode(), delivery.kind
        assert page.redirect_chain, "answered as for a missing row"


def test_message_content_needs_its_own_permission(client, deliveries):
    campaign, private = deliveries
    support = User.objects.create_user("sue", is_staff=True)
    support.user_permissions.add(
        Permission.objects.get(codename="view_delivery"),
        Permission.objects.get(codename="view_message_content"),
    )
    client.force_login(support)
    assert _listed_ids(client.get(f"{ADMIN}/notifier/delivery/")) == {
        campaign.pk,
        *(d.pk for d in private.values()),
    }
    page = client.get(f"{ADMIN}/notifier/delivery/{private['transactional'].pk}/change/")
    assert page.status_code == 200 and "TOKEN-7f3a9c" in page.content.decode()


def test_superusers_keep_everything(admin_client, deliveries):
    assert len(_listed_ids(admin_client.get(f"{ADMIN}/notifier/delivery/"))) == 4


# --- Templates: transactional ones are out of Marketing's reach -----------------------------


@pytest.fixture
def reset_template():
    return TemplateFactory(
        name="Password reset",
        kind=Template.Kind.TRANSACTIONAL,
        subject="Reset",
        html_body='<a href="{{ link }}">Reset</a>',
    )


def _template_form(**overrides):
    data = {"name": "Sale", "kind": "campaign", "subject": "Hi", "html_body": "<p>Hi</p>"}
    data.update(overrides)
    data.setdefault("text_body", "")
    return data


def test_marketing_cannot_see_or_change_transactional_templates(marketer, reset_template):
    listing = marketer.get(f"{ADMIN}/notifier/template/")
    assert reset_template not in listing.context["cl"].result_list
    url = f"{ADMIN}/notifier/template/{reset_template.pk}"
    posted = marketer.post(
        f"{url}/change/",
        _template_form(
            name="Password reset",
            kind="transactional",
            html_body='<a href="https://evil.example">x</a>',
        ),
    )
    assert posted.status_code in (302, 403, 404)
    reset_template.refresh_from_db()
    assert reset_template.html_body == '<a href="{{ link }}">Reset</a>'
    for page in ("change", "history", "preview", "delete"):
        response = marketer.get(f"{url}/{page}/", follow=True)
        assert response.status_code in (403, 404) or response.redirect_chain, page
        assert "{{ link }}" not in response.content.decode(), page


def test_templates_marketing_adds_are_campaign_templates(marketer):
    response = marketer.post(
        f"{ADMIN}/notifier/template/add/", _template_form(kind="transactional")
    )
    assert response.status_code == 302
    assert Template.objects.get(name="Sale").kind == Template.Kind.CAMPAIGN


def test_marketing_cannot_pick_a_transactional_template_for_a_campaign(marketer, reset_template):
    response = marketer.post(
        f"{ADMIN}/campaigns/campaign/add/",
        {
            "name": "Phish",
            "template": reset_template.pk,
            "context": "{}",
            "sender": "",
            "transport": "esp",
            "schedule": "none",
            "contact_lists": [ContactListFactory().pk],
            "cron_minute": "0",
            "cron_hour": "*",
            "cron_day_of_month": "*",
            "cron_month_of_year": "*",
            "cron_day_of_week": "*",
            "schedule_time_zone": "UTC",
        },
    )
    assert response.status_code == 200
    assert "template" in response.context["adminform"].form.errors
    assert not Campaign.objects.exists()


def test_send_and_the_api_use_transactional_templates_only(reset_template):
    campaign_template = TemplateFactory(name="Sale", kind=Template.Kind.CAMPAIGN)
    with pytest.raises(NotifierError, match="campaign template"):
        send(to="ann@example.com", template="Sale", context={"code": "x"})
    with pytest.raises(NotifierError, match="campaign template"):
        send(to="ann@example.com", template=campaign_template, context={"code": "x"})
    assert not Delivery.objects.exists()
    delivery = send(to="ann@example.com", template="Password reset", context={"link": SECRET})
    assert delivery.template == reset_template
    _token, secret = api_token_create(service="billing")
    response = ApiClient(secret).post(
        "/api/v1/messages", {"to": "bob@example.com", "template": "Sale", "context": {}}
    )
    assert (
        response.status_code == 400 and "campaign template" in response.json()["error"]["message"]
    )


def test_a_topics_template_stays_transactional(admin_client, reset_template):
    TopicFactory(instant_template=reset_template)
    response = admin_client.post(
        f"{ADMIN}/notifier/template/{reset_template.pk}/change/",
        _template_form(name="Password reset", kind="campaign", html_body="<p>x</p>"),
    )
    assert response.status_code == 200
    assert "kind" in response.context["adminform"].form.errors
    reset_template.refresh_from_db()
    assert reset_template.kind == Template.Kind.TRANSACTIONAL
    campaign_template = TemplateFactory(name="Sale", kind=Template.Kind.CAMPAIGN)
    form = admin_client.get(f"{ADMIN}/notifier/topic/add/").context["adminform"].form
    choices = {c[0].value for c in form.fields["instant_template"].choices if c[0]}
    assert reset_template.pk in choices and campaign_template.pk not in choices


def test_transactional_templates_need_their_own_permission(client, reset_template):
    editor = User.objects.create_user("ted", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_template", "change_template", "manage_transactional_template"]
        )
    )
    client.force_login(editor)
    response = client.post(
        f"{ADMIN}/notifier/template/{reset_template.pk}/change/",
        _template_form(name="Password reset", kind="transactional", subject="Reset now"),
    )
    assert response.status_code == 302
    reset_template.refresh_from_db()
    assert reset_template.subject == "Reset now"
    assert reset_template.revisions.first().changed_by == editor


# --- Every template change is recorded, diffed and can be rolled back ------------------------


def test_template_changes_are_recorded_shown_as_a_diff_and_restored(marketer):
    marketer.post(
        f"{ADMIN}/notifier/template/add/",
        _template_form(subject="Spring sale", html_body="<p>Buy {{ offer }}</p>"),
    )
    template = Template.objects.get(name="Sale")
    change = f"{ADMIN}/notifier/template/{template.pk}/change/"
    marketer.post(change, _template_form(subject="Spring sale", html_body="<p>Buy at evil</p>"))
    marketer.post(change, _template_form(subject="Spring sale", html_body="<p>Buy at evil</p>"))
    revisions = list(template.revisions.order_by("id"))
    assert [r.action for r in revisions] == ["created", "changed"]  # an unchanged save: none
    assert {r.changed_by_name for r in revisions} == {"mia"}
    assert revisions[1].html_body == "<p>Buy at evil</p>" and revisions[1].created_at

    history = marketer.get(f"{ADMIN}/notifier/template/{template.pk}/history/")
    page = history.content.decode()
    assert history.status_code == 200
    assert "-&lt;p&gt;Buy {{ offer }}&lt;/p&gt;" in page
    assert "+&lt;p&gt;Buy at evil&lt;/p&gt;" in page
    assert "Restore this version" in page

    restored = marketer.post(
        f"{ADMIN}/notifier/template/{template.pk}/history/{revisions[0].pk}/restore/", follow=True
    )
    assert restored.status_code == 200
    template.refresh_from_db()
    assert template.html_body == "<p>Buy {{ offer }}</p>"
    last = template.revisions.first()
    assert (last.action, last.restored_from, last.changed_by_name) == (
        "restored",
        revisions[0],
        "mia",
    )

    marketer.post(f"{ADMIN}/notifier/template/{template.pk}/delete/", {"post": "yes"})
    assert not Template.objects.filter(pk=template.pk).exists()
    assert TemplateRevision.objects.filter(name="Sale", action="deleted").exists()


def test_restore_needs_a_post_and_the_templates_own_revision(marketer, reset_template):
    other = TemplateFactory(name="Sale", kind=Template.Kind.CAMPAIGN)
    foreign = TemplateRevision.objects.create(
        template=reset_template,
        action="changed",
        name="x",
        kind="transactional",
        subject="s",
        html_body="h",
    )
    url = f"{ADMIN}/notifier/template/{other.pk}/history/{foreign.pk}/restore/"
    assert marketer.get(url).status_code == 405
    assert marketer.post(url).status_code == 404


def test_history_is_one_page_of_queries_and_refuses_bad_ids(
    admin_client, django_assert_max_num_queries
):
    template = TemplateFactory(name="Sale", kind=Template.Kind.CAMPAIGN)
    for i in range(30):
        template.subject = f"Sale {i}"
        template_save(template=template)
    with django_assert_max_num_queries(8):
        page = admin_client.get(f"{ADMIN}/notifier/template/{template.pk}/history/")
    assert page.status_code == 200 and page.content.decode().count("Restore this version") == 29
    for bad in ("abc", "999999", "1%00"):
        assert admin_client.get(f"{ADMIN}/notifier/template/{bad}/history/").status_code == 404
