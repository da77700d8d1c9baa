"""The marketing admin, used by a Marketing-group member (acceptance 4 and 2)."""

import io
import json
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, PeriodicTask

from campaigns.models import Campaign, CampaignRun, ContactList, Segment
from campaigns.selectors import run_status_counts
from notifier.models import Delivery, Recipient, Template
from tests.campaigns.factories import (
    CampaignFactory,
    ContactListFactory,
    add_members,
    campaign_form_data,
)
from tests.conftest import wait_for
from tests.notifier.factories import RecipientFactory

ADMIN = "/admin"


def _post(client, url, data, expect=302):
    response = client.post(url, data)
    if response.status_code != expect:
        form = (response.context or {}).get("adminform")
        errors = form.form.errors if form else response.content[:2000]
        raise AssertionError(f"{url}: {response.status_code} {errors}")
    return response


def _action(client, campaign_id, action, **data):
    """Press a campaign button; returns the messages shown on the page it leads to."""
    url = f"{ADMIN}/campaigns/campaign/{campaign_id}/do/{action}/"
    response = client.post(url, data, follow=True)
    assert response.status_code == 200, response.content[:500]
    return [str(m) for m in response.context["messages"]]


_campaign_form = campaign_form_data


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/auth/user/",
        "/auth/user/add/",
        "/auth/group/",
        "/auth/group/add/",
        "/django_celery_beat/periodictask/",
        "/notifier/suppression/",
        "/notifier/delivery/1/delete/",
    ],
)
def test_marketing_gets_403_outside_its_area(marketer, url):
    assert marketer.get(ADMIN + url).status_code == 403


@pytest.mark.django_db
def test_marketing_sees_only_its_models(marketer):
    response = marketer.get(f"{ADMIN}/")
    models = {m["object_name"] for app in response.context["app_list"] for m in app["models"]}
    assert models == {
        "Campaign",
        "CampaignRun",
        "ContactList",
        "ListMembership",
        "Segment",
        "Recipient",
        "Template",
        "Delivery",
        "Journey",
        "JourneyEnrollment",
        # Signup forms and their (read-only) consent records.
        "SignupForm",
        "Consent",
    }


@pytest.mark.django_db
def test_schedule_edit_and_delete_manage_one_periodic_task(marketer):
    """Acceptance 2 (admin part): saving arms the schedule; crontab edits change
    the PeriodicTask; delete removes it."""
    template = Template.objects.create(
        name="t", kind="campaign", subject="Hi", html_body="<p>Hi</p>"
    )
    contact_list = ContactListFactory()
    _post(
        marketer,
        f"{ADMIN}/campaigns/campaign/add/",
        _campaign_form(template=template.pk, contact_lists=[contact_list.pk], schedule="crontab"),
    )
    campaign = Campaign.objects.get(name="Spring sale")
    assert campaign.created_by.username == "mia"
    assert campaign.status == "scheduled"  # saving armed it: no separate button
    task = PeriodicTask.objects.get(name=f"campaign:{campaign.pk}")
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == (
        "0",
        "*",
        "Europe/Paris",
    )
    last_change = task.date_changed

    # Edit the crontab in the admin: the same PeriodicTask now runs at 30 past 9.
    _post(
        marketer,
        f"{ADMIN}/campaigns/campaign/{campaign.pk}/change/",
        _campaign_form(
            template=template.pk,
            contact_lists=[contact_list.pk],
            schedule="crontab",
            cron_minute="30",
            cron_hour="9",
        ),
    )
    (task,) = PeriodicTask.objects.filter(task="campaigns.launch_campaign")
    assert (task.crontab.minute, task.crontab.hour) == ("30", "9")
    assert task.date_changed >= last_change  # beat sees the change without a restart

    # Switch to a one-off time (entered in the campaign's time zone): a
    # clocked one-off task replaces the crontab.
    when = timezone.now() + timedelta(days=2)
    paris = timezone.localtime(when, ZoneInfo("Europe/Paris"))
    _post(
        marketer,
        f"{ADMIN}/campaigns/campaign/{campaign.pk}/change/",
        _campaign_form(
            template=template.pk,
            contact_lists=[contact_list.pk],
            schedule="once",
            send_at_0=paris.strftime("%Y-%m-%d"),
            send_at_1=paris.strftime("%H:%M:%S"),
        ),
    )
    (task,) = PeriodicTask.objects.filter(task="campaigns.launch_campaign")
    assert task.one_off and task.crontab is None
    assert abs(task.clocked.clocked_time - when) < timedelta(seconds=1)

    # Bad crontab: a form error, nothing changes.
    response = marketer.post(
        f"{ADMIN}/campaigns/campaign/{campaign.pk}/change/",
        _campaign_form(
            template=template.pk,
            contact_lists=[contact_list.pk],
            schedule="crontab",
            cron_minute="61",
        ),
    )
    assert (
        response.status_code == 200 and "cron_minute" in response.context["adminform"].form.errors
    )

    _post(marketer, f"{ADMIN}/campaigns/campaign/{campaign.pk}/delete/", {"post": "yes"})
    assert not Campaign.objects.exists()
    assert not PeriodicTask.objects.filter(task="campaigns.launch_campaign").exists()
    assert not ClockedSchedule.objects.exists()


@pytest.mark.django_db
def test_list_screens_have_no_n_plus_one(marketer, django_assert_max_num_queries):
    template = Template.objects.create(
        name="t", kind="campaign", subject="Hi", html_body="<p>Hi</p>"
    )
    people = RecipientFactory.create_batch(20)
    for i in range(15):
        contact_list = ContactListFactory()
        add_members(contact_list, people[i:])
        campaign = CampaignFactory(template=template)
        campaign.contact_lists.set([contact_list])
        CampaignRun.objects.create(campaign=campaign, status="done")
    for url in (
        "/campaigns/contactlist/",
        "/campaigns/listmembership/",
        "/campaigns/campaign/",
        "/campaigns/campaignrun/",
        "/campaigns/segment/",
    ):
        with django_assert_max_num_queries(12):
            assert marketer.get(ADMIN + url).status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_marketing_user_runs_a_campaign_from_the_admin(
    marketer, celery_worker_process, fake_esp, monkeypatch
):
    """Acceptance 4: everything from the admin: contacts, list, segment,
    template, campaign, preview, test, launch, progress, pause, resume,
    retry failed, cancel."""
    # Contacts and a list, by CSV import.
    _post(marketer, f"{ADMIN}/campaigns/contactlist/add/", {"name": "Customers"}, expect=302)
    contact_list = ContactList.objects.get(name="Customers")
    rows = "".join(
        f"c{i}@example.com,Customer {i},{'pro' if i % 2 else 'free'}\n" for i in range(300)
    )
    upload = io.BytesIO(("email,name,plan\n" + rows).encode())
    upload.name = "customers.csv"
    response = marketer.post(
        f"{ADMIN}/campaigns/contactlist/{contact_list.pk}/import/",
        {"file": upload, "email_column": "email", "name_column": "name"},
    )
    assert "300 imported" in response.content.decode()
    _post(
        marketer,
        f"{ADMIN}/notifier/recipient/add/",
        {
            "email": "Vip@Example.com",
            "name": "Vera Vip",
            "attributes": '{"plan": "pro"}',
            "time_zone": "UTC",
            "locale": "en",
            "status": "active",
        },
    )
    # A segment: plan is pro.
    _post(
        marketer,
        f"{ADMIN}/campaigns/segment/add/",
        {
            "name": "Pro",
            "description": "",
            "match": "all",
            "conditions-TOTAL_FORMS": "1",
            "conditions-INITIAL_FORMS": "0",
            "conditions-MIN_NUM_FORMS": "0",
            "conditions-MAX_NUM_FORMS": "1000",
            "conditions-0-field": "attribute",
            "conditions-0-attribute": "plan",
            "conditions-0-operator": "equals",
            "conditions-0-value": "pro",
        },
    )
    segment = Segment.objects.get(name="Pro")
    # A template and the campaign.
    _post(
        marketer,
        f"{ADMIN}/notifier/template/add/",
        {
            "name": "Sale",
            "subject": "{{ offer }} for {{ recipient.first_name }}",
            "html_body": "<p>Dear {{ recipient.name }}, {{ offer }}!</p>",
            "text_body": "",
        },
    )
    template = Template.objects.get(name="Sale")
    _post(
        marketer,
        f"{ADMIN}/campaigns/campaign/add/",
        _campaign_form(
            template=template.pk, contact_lists=[contact_list.pk], segments=[segment.pk]
        ),
    )
    campaign = Campaign.objects.get(name="Spring sale")
    page = marketer.get(f"{ADMIN}/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200 and "Launch now" in page.content.decode()

    # Preview for a chosen recipient, and a test send.
    preview = marketer.get(
        f"{ADMIN}/campaigns/campaign/{campaign.pk}/preview/", {"recipient": "vip@example.com"}
    )
    assert "10% off for Vera" in preview.content.decode()
    _action(marketer, campaign.pk, "test", to="me@shop.example", **{"as": "vip@example.com"})
    assert fake_esp.messages[0]["To"] == "me@shop.example"
    assert fake_esp.messages[0]["Subject"] == "[Test] 10% off for Vera"
    fake_esp.messages.clear()
    assert "Invalid email" in _action(marketer, campaign.pk, "test", to="nope")[0]

    # Launch; two addresses are rejected by the ESP; pause and resume part-way.
    # (refused as invalid: an inactive-recipient answer would suppress them)
    fake_esp.faults["invalid"] = ["c3@example.com", "c4@example.com"]
    fake_esp.faults["delay"] = 0.15  # per request of five messages
    _action(marketer, campaign.pk, "launch")
    run = wait_for(lambda: CampaignRun.objects.filter(campaign=campaign).first())
    wait_for(lambda: len(fake_esp.messages) >= 30, timeout=60)
    progress = marketer.get(f"{ADMIN}/campaigns/campaign/{campaign.pk}/progress/").json()
    assert progress["run"]["id"] == run.pk and progress["run"]["status"] == "running"
    assert progress["run"]["totals"]["total"] == 301
    _action(marketer, campaign.pk, "pause")
    wait_for(
        lambda: not Delivery.objects.filter(run_id=run.pk, status="sending").exists(), timeout=15
    )
    progress = marketer.get(f"{ADMIN}/campaigns/campaign/{campaign.pk}/progress/").json()
    assert progress["run"]["status"] == "paused" and progress["run"]["counts"]["pending"] > 0
    _action(marketer, campaign.pk, "resume")
    wait_for(lambda: CampaignRun.objects.get(pk=run.pk).finished_at is not None, timeout=90)
    assert run_status_counts(run_id=run.pk) == {"sent": 299, "failed": 2}

    # Retry the rejected ones (now accepted).
    fake_esp.faults["invalid"] = []
    messages = _action(marketer, campaign.pk, "retry", run=run.pk, kinds=["permanent"])
    assert messages == ["2 messages queued again."]
    wait_for(lambda: run_status_counts(run_id=run.pk) == {"sent": 301}, timeout=60)
    wait_for(lambda: CampaignRun.objects.get(pk=run.pk).finished_at is not None, timeout=30)
    addresses = [m["To"] for m in fake_esp.messages]
    assert len(addresses) == len(set(addresses)) == 301
    page = marketer.get(f"{ADMIN}/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert f"?run_id={run.pk}" in page  # run history links to its deliveries

    # A second run, cancelled.
    fake_esp.messages.clear()
    _action(marketer, campaign.pk, "launch")
    second = wait_for(
        lambda: CampaignRun.objects.filter(campaign=campaign).exclude(pk=run.pk).first()
    )
    wait_for(lambda: len(fake_esp.messages) >= 10, timeout=60)
    _action(marketer, campaign.pk, "cancel")
    wait_for(lambda: CampaignRun.objects.get(pk=second.pk).finished_at is not None, timeout=30)
    counts = run_status_counts(run_id=second.pk)
    assert counts["cancelled"] > 0 and counts["sent"] + counts["cancelled"] == 301
    assert Campaign.objects.get(pk=campaign.pk).status == "cancelled"
    # The marketer can read deliveries of the run, not change them.
    listing = marketer.get(f"{ADMIN}/notifier/delivery/", {"run_id": second.pk})
    assert listing.status_code == 200
    assert Recipient.objects.filter(email="vip@example.com").exists()
    assert json.loads(json.dumps(progress))  # the progress endpoint speaks JSON


@pytest.mark.django_db
def test_previews_keep_the_html_inside_the_sandboxed_frame(marketer):
    """Quotes in a template's HTML cannot end the iframe's srcdoc attribute."""
    campaign = CampaignFactory(
        template__html_body='<a href="https://x.example" title="t">Hi</a>" onload="alert(1)'
    )
    for url in (
        f"{ADMIN}/campaigns/campaign/{campaign.pk}/preview/",
        f"{ADMIN}/notifier/template/{campaign.template.pk}/preview/",
    ):
        page = marketer.get(url).content.decode()
        # The message (a bare fragment or a whole document) stays one escaped attribute.
        srcdoc = re.search(r'<iframe[^>]*\ssandbox=""[^>]*\ssrcdoc="([^"]*)"', page)
        assert srcdoc, url
        assert "&lt;a href=&quot;https://x.example&quot; title=&quot;t&quot;" in srcdoc[1], url
        assert 'onload="alert(1)' not in page, url
