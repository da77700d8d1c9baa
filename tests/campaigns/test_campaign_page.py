"""The campaign page as a marketer uses it: plain fields, audience size,
schedules that arm on save, the run panel, faithful preview and test send."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from campaigns.admin import panel_actions
from campaigns.models import Campaign
from campaigns.selectors import campaign_next_send_times, crontab_in_words
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import campaign_run_launch
from notifier.models import Delivery, Recipient, Suppression
from notifier.services.previews import TEST_HEADER
from notifier.services.unsubscribe import unsubscribe_token_read
from tests.campaigns.factories import (
    CampaignFactory,
    ContactListFactory,
    add_members,
    campaign_form_data,
)
from tests.notifier.factories import RecipientFactory, TemplateFactory

ADMIN = "/admin/campaigns/campaign"
PARIS = ZoneInfo("Europe/Paris")

pytestmark = pytest.mark.django_db


_form = campaign_form_data


@pytest.fixture
def template():
    return TemplateFactory(
        kind="campaign",
        subject="{{ offer }} for {{ recipient.first_name }}",
        html_body='<p>Dear {{ recipient.name }}, {{ offer }}!</p><p><a href="{{ unsubscribe_url }}">'
        'Unsubscribe</a> · <a href="{{ preferences_url }}">Preferences</a></p>',
        text_body="",
    )


@pytest.fixture
def contact_list():
    return ContactListFactory(name="Customers")


def _errors(response) -> dict:
    assert response.status_code == 200, response.status_code
    return response.context["adminform"].form.errors


# --- The form -----------------------------------------------------------------------------


def test_saving_a_crontab_campaign_arms_it_and_says_when_it_sends(marketer, template, contact_list):
    response = marketer.post(
        f"{ADMIN}/add/",
        _form(
            template=template.pk,
            contact_lists=[contact_list.pk],
            schedule="crontab",
            cron_minute="0",
            cron_hour="9",
            cron_day_of_week="1-5",
        ),
    )
    assert response.status_code == 302
    campaign = Campaign.objects.get(name="Spring sale")
    assert campaign.status == "scheduled"
    assert PeriodicTask.objects.get(name=f"campaign:{campaign.pk}").crontab.hour == "9"

    page = marketer.get(f"{ADMIN}/{campaign.pk}/change/").content.decode()
    assert "At 09:00, Monday through Friday" in page
    assert "Armed: it sends on its own." in page
    times = campaign_next_send_times(campaign=campaign)
    assert len(times) == 3
    for at in times:
        local = at.astimezone(PARIS)
        assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
        assert f'datetime="{at.isoformat()}"' in page
    assert times == sorted(times) and times[0] > timezone.now()


def test_next_send_times_follow_celery_crontab_rules():
    campaign = Campaign(
        schedule="crontab",
        cron_minute="30",
        cron_hour="8,20",
        cron_day_of_month="*",
        cron_month_of_year="*",
        cron_day_of_week="sun",
        schedule_time_zone="America/New_York",
    )
    now = datetime(2026, 3, 7, 12, 0, tzinfo=ZoneInfo("UTC"))  # a Saturday
    zone = ZoneInfo("America/New_York")
    assert campaign_next_send_times(campaign=campaign, now=now) == [
        datetime(2026, 3, 8, 8, 30, tzinfo=zone),  # the day clocks go forward
        datetime(2026, 3, 8, 20, 30, tzinfo=zone),
        datetime(2026, 3, 15, 8, 30, tzinfo=zone),
    ]
    assert crontab_in_words(campaign=campaign) == "At 08:30 and 20:30, only on Sunday"


def test_a_crontab_is_read_back_as_it_is_typed(marketer):
    fields = {
        "cron_minute": "*/15",
        "cron_hour": "9-17",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "cron_day_of_week": "mon-fri",
        "schedule_time_zone": "Asia/Tokyo",
    }
    answer = marketer.get(f"{ADMIN}/schedule/", fields).json()
    assert answer["words"] == "Every 15 minutes, between 09:00 and 17:59, Monday through Friday"
    assert len(answer["times"]) == 3 and answer["times"][0]["text"].endswith("(Asia/Tokyo)")
    for bad in ({"cron_minute": "61"}, {"schedule_time_zone": "Mars/Base"}, {"cron_hour": ""}):
        response = marketer.get(f"{ADMIN}/schedule/", {**fields, **bad})
        assert response.status_code == 400 and response.json()["error"], bad


def test_a_one_off_time_in_the_past_is_refused_on_save(marketer, template, contact_list):
    past = timezone.localtime(timezone.now() - timedelta(hours=1), PARIS)
    response = marketer.post(
        f"{ADMIN}/add/",
        _form(
            template=template.pk,
            contact_lists=[contact_list.pk],
            schedule="once",
            send_at_0=past.strftime("%Y-%m-%d"),
            send_at_1=past.strftime("%H:%M:%S"),
        ),
    )
    assert "This time has passed" in str(_errors(response)["send_at"])
    assert not Campaign.objects.exists() and not PeriodicTask.objects.exists()


def test_a_one_off_time_is_read_in_the_chosen_time_zone(marketer, template, contact_list):
    zone = ZoneInfo("America/New_York")
    when = (timezone.now() + timedelta(days=2)).astimezone(zone).replace(second=0, microsecond=0)
    response = marketer.post(
        f"{ADMIN}/add/",
        _form(
            template=template.pk,
            contact_lists=[contact_list.pk],
            schedule="once",
            schedule_time_zone="America/New_York",
            send_at_0=when.strftime("%Y-%m-%d"),
            send_at_1=when.strftime("%H:%M:%S"),
        ),
    )
    assert response.status_code == 302
    campaign = Campaign.objects.get()
    assert campaign.send_at == when and campaign.status == "scheduled"
    assert PeriodicTask.objects.get().clocked.clocked_time == when
    # Shown again as it was entered, in its own zone.
    page = marketer.get(f"{ADMIN}/{campaign.pk}/change/").content.decode()
    assert when.strftime("%H:%M:%S") in page


def test_a_schedule_needs_an_audience(marketer, template):
    response = marketer.post(f"{ADMIN}/add/", _form(template=template.pk, schedule="crontab"))
    assert "needs someone to send to" in str(_errors(response)["contact_lists"])
    assert not Campaign.objects.exists()


def test_template_data_that_is_not_json_gets_a_clear_error(marketer, template):
    response = marketer.post(f"{ADMIN}/add/", _form(template=template.pk, context="{offer: '10%'}"))
    error = str(_errors(response)["context"])
    assert "not valid JSON (line 1, column 2" in error and "double quotes" in error
    response = marketer.post(f"{ADMIN}/add/", _form(template=template.pk, context="[1, 2]"))
    assert "Write an object in curly braces" in str(_errors(response)["context"])
    assert not Campaign.objects.exists()


def test_plain_words_and_pickers(marketer, template):
    page = marketer.get(f"{ADMIN}/add/").content.decode()
    for words in (
        "Sender identity",
        "Audience",
        "Content",
        "Schedule",
        "Email provider (ESP)",
        "SMTP relay",
        "Extra template data",
        "Only when I press",
    ):
        assert words in page
    assert '<select name="schedule_time_zone"' in page and '"Asia/Tokyo"' in page
    response = marketer.post(
        f"{ADMIN}/add/", _form(template=template.pk, schedule_time_zone="Mars/Olympus")
    )
    assert "schedule_time_zone" in _errors(response)


# --- Audience size -------------------------------------------------------------------------


def test_audience_size_before_launch_counts_the_skipped(marketer, template, contact_list):
    people = [RecipientFactory() for _ in range(5)]
    people[0].status = Recipient.Status.UNSUBSCRIBED
    people[0].save()
    Suppression.objects.create(email=people[1].email, reason=Suppression.Reason.HARD_BOUNCE)
    add_members(contact_list, people)
    campaign = CampaignFactory(template=template)
    campaign.contact_lists.set([contact_list])
    expected = "3 will receive it: 5 in the audience, 2 skipped (suppressed or bounced), of whom 1 unsubscribed."
    assert expected in marketer.get(f"{ADMIN}/{campaign.pk}/change/").content.decode()

    # The form asks again as lists are ticked.
    answer = marketer.get(f"{ADMIN}/audience/", {"contact_lists": [contact_list.pk]}).json()
    assert answer["to_send"] == 3 and answer["text"] == expected
    assert marketer.get(f"{ADMIN}/audience/").json()["total"] == 0
    assert marketer.get(f"{ADMIN}/audience/", {"segments": "x"}).status_code == 400


# --- The run panel --------------------------------------------------------------------------


def test_panel_buttons_follow_the_run():
    assert panel_actions(campaign_status="draft", run_status=None) == ["launch"]
    assert panel_actions(campaign_status="running", run_status="queued") == ["cancel"]
    assert panel_actions(campaign_status="running", run_status="running") == ["pause", "cancel"]
    assert panel_actions(campaign_status="paused", run_status="paused") == ["resume", "cancel"]
    assert panel_actions(campaign_status="scheduled", run_status="done") == [
        "launch",
        "unschedule",
        "cancel",
    ]


def test_progress_says_which_buttons_to_show(marketer, template, contact_list, fan_outs):
    add_members(contact_list, [RecipientFactory() for _ in range(3)])
    campaign = CampaignFactory(template=template)
    campaign.contact_lists.set([contact_list])
    assert marketer.get(f"{ADMIN}/{campaign.pk}/progress/").json()["actions"] == ["launch"]
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)
    progress = marketer.get(f"{ADMIN}/{campaign.pk}/progress/").json()
    assert progress["actions"] == ["pause", "cancel"]
    assert (
        progress["run"]["status_display"] == "Running" and progress["run"]["totals"]["total"] == 3
    )


def test_cancel_says_how_many_messages_the_run_cancelled(
    marketer, template, contact_list, fan_outs
):
    add_members(contact_list, [RecipientFactory() for _ in range(4)])
    campaign = CampaignFactory(template=template)
    campaign.contact_lists.set([contact_list])
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)
    first = Delivery.objects.filter(run_id=run.pk).order_by("id").first()
    Delivery.objects.filter(pk=first.pk).update(status="sent")  # as a batch would have
    response = marketer.post(f"{ADMIN}/{campaign.pk}/do/cancel/", follow=True)
    (message,) = [str(m) for m in response.context["messages"]]
    run.refresh_from_db()
    assert run.totals["cancelled"] == 3
    assert message == f"Cancelled run {run.pk}: 3 messages not sent, 1 already sent."


# --- Preview and test send ---------------------------------------------------------------------


def test_preview_shows_real_links_and_headers_for_a_chosen_recipient(
    marketer, template, contact_list
):
    vera = RecipientFactory(email="vera@example.com", name="Vera Vip")
    add_members(contact_list, [vera])
    campaign = CampaignFactory(template=template)
    campaign.contact_lists.set([contact_list])
    response = marketer.get(f"{ADMIN}/{campaign.pk}/preview/", {"recipient": "vera@example.com"})
    page = response.content.decode()
    assert "10% off for Vera" in page or "20% off for Vera" in page
    headers = dict(response.context["headers"])
    assert headers["From"] == campaign.from_header
    assert headers["To"] == "Vera Vip <vera@example.com>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = headers["List-Unsubscribe"].split(",")[0].strip("<> ")
    assert unsubscribe in response.context["links"]
    token = unsubscribe.rstrip("/").rsplit("/", 1)[-1]
    assert unsubscribe_token_read(token)[0] == vera  # a real link for her
    assert any("/preferences/" in link for link in response.context["links"])
    assert '<option value="vera@example.com" selected>' in page  # chosen from the audience

    sample = marketer.get(f"{ADMIN}/{campaign.pk}/preview/")
    assert sample.context["is_sample"] and "List-Unsubscribe" in dict(sample.context["headers"])


def test_a_test_send_creates_no_recipient_and_carries_list_unsubscribe(
    marketer, template, contact_list, fake_esp
):
    vera = RecipientFactory(email="vera@example.com", name="Vera Vip")
    campaign = CampaignFactory(template=template, context={"offer": "20% off"})
    campaign.contact_lists.set([contact_list])
    recipients, deliveries = Recipient.objects.count(), Delivery.objects.count()

    response = marketer.post(
        f"{ADMIN}/{campaign.pk}/do/test/",
        {"to": "Tester@Shop.example", "as": vera.email, "next": "preview"},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == [
        "Test message sent to tester@shop.example."
    ]
    assert response.request["PATH_INFO"].endswith("/preview/")
    (sent,) = fake_esp.messages
    assert sent["To"] == "tester@shop.example"
    assert sent["Subject"] == "[Test] 20% off for Vera"
    assert sent["Headers"][TEST_HEADER] == "yes"
    assert sent["Headers"]["List-Unsubscribe"].startswith("<http")
    assert sent["Headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Dear Vera Vip" in sent["HtmlBody"]
    assert Recipient.objects.count() == recipients  # no contact for the tester
    assert not Recipient.objects.filter(email="tester@shop.example").exists()
    assert Delivery.objects.count() == deliveries  # nothing in the campaign's figures

    # Sample data when no recipient is chosen; a suppressed address is refused.
    response = marketer.post(
        f"{ADMIN}/{campaign.pk}/do/test/", {"to": "other@shop.example"}, follow=True
    )
    assert fake_esp.messages[-1]["Subject"] == "[Test] 20% off for Ada"
    Suppression.objects.create(email="gone@shop.example", reason=Suppression.Reason.COMPLAINT)
    response = marketer.post(
        f"{ADMIN}/{campaign.pk}/do/test/", {"to": "gone@shop.example"}, follow=True
    )
    assert "Not sent to gone@shop.example" in str(next(iter(response.context["messages"])))
    response = marketer.post(
        f"{ADMIN}/{campaign.pk}/do/test/",
        {"to": "a@shop.example", "as": "nobody@x.example"},
        follow=True,
    )
    assert "No recipient" in str(next(iter(response.context["messages"])))
    assert len(fake_esp.messages) == 2
    assert Recipient.objects.count() == recipients
