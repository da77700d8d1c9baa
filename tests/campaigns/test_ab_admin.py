"""A/B tests in the marketing admin: setting one up, hostile input (a clear
form error, nothing saved, never a 500), the results page and the
"choose the winner now" page."""

from datetime import UTC, datetime
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignVariant, RunABTest
from campaigns.services.campaigns import campaign_run_create
from campaigns.tasks import send_ab_winner
from notifier.models import Delivery
from tests.campaigns.factories import CampaignFactory, ContactListFactory, campaign_form_data
from tests.campaigns.test_ab_tests import ab_campaign, launched
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db
ADMIN = "/admin/campaigns/campaign"


@pytest.fixture
def template():
    return TemplateFactory(kind="campaign", subject="News", html_body="<p>Hi</p>")


def _form(template, contact_list, variants=(), **overrides):
    data = campaign_form_data(
        name="Spring test",
        context="{}",
        schedule_time_zone="UTC",
        template=template.pk,
        contact_lists=[contact_list.pk],
        ab_test_share="20",
        ab_winner_metric="opens",
        ab_wait_minutes="240",
        **{
            "variants-TOTAL_FORMS": str(len(variants)),
            "variants-INITIAL_FORMS": "0",
            "variants-MIN_NUM_FORMS": "0",
            "variants-MAX_NUM_FORMS": "4",
        },
    )
    for n, variant in enumerate(variants):
        data.update({f"variants-{n}-{key}": value for key, value in variant.items()})
    data.update(overrides)
    return data


TWO = ({"subject": "Spring is here"}, {"subject": "20% off, {{ recipient.first_name }}"})


def test_a_marketer_sets_up_a_test_and_reads_it_in_words(marketer, template):
    audience = ContactListFactory()
    response = marketer.post(f"{ADMIN}/add/", _form(template, audience, TWO))
    assert response.status_code == 302, response.context["adminform"].form.errors
    campaign = Campaign.objects.get(name="Spring test")
    assert campaign.ab_test_share == 20
    assert list(campaign.variants.values_list("subject", flat=True)) == [v["subject"] for v in TWO]
    page = marketer.get(f"{ADMIN}/{campaign.pk}/change/").content.decode()
    assert (
        "20 % of the audience get one of 2 variants (10 % each); after 4 hours, the variant "
        "with the highest open rate goes to the other 80 %." in page
    )
    assert "A/B variants" in page
    assert [str(v) for v in campaign.variants.all()] == ["Variant A", "Variant B"]


def _refused(client, data, *, where: str, text: str):
    response = client.post(f"{ADMIN}/add/", data)
    assert response.status_code == 200
    page = response.content.decode()
    assert text in page, (where, page[page.find("errornote") : page.find("errornote") + 2000])
    assert not Campaign.objects.exists() and not CampaignVariant.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"ab_test_share": "0"}, "The test share is a percentage from 1 to 50."),
        ({"ab_test_share": "51"}, "The test share is a percentage from 1 to 50."),
        ({"ab_test_share": "-5"}, "greater than or equal to 0"),
        ({"ab_test_share": "ten"}, "Enter a whole number."),
        ({"ab_test_share": "99999999999"}, "The test share is a percentage from 1 to 50."),
        ({"ab_wait_minutes": "5"}, "Wait between 15 minutes and 7 days (10080 minutes)."),
        ({"ab_wait_minutes": "20000"}, "Wait between 15 minutes and 7 days (10080 minutes)."),
        ({"ab_wait_minutes": "-1"}, "greater than or equal to 0"),
        ({"ab_winner_metric": "revenue"}, "Select a valid choice."),
        ({"local_send_time": "09:00"}, "cannot be combined with a recipient-local send time"),
        ({"variants-0-subject": "{% if %}"}, "This subject does not work as a template"),
        ({"variants-0-template": "999999"}, "Select a valid choice."),
        ({"variants-1-subject": "Spring is here"}, "Variants A and B are the same"),
        ({"variants-TOTAL_FORMS": "1"}, "An A/B test needs 2 to 4 variants; you entered 1."),
        ({"variants-TOTAL_FORMS": "abc"}, "An A/B test needs 2 to 4 variants; you entered 0."),
    ],
)
def test_hostile_input_gets_a_clear_error_and_saves_nothing(marketer, template, overrides, text):
    _refused(marketer, _form(template, ContactListFactory(), TWO, **overrides), where="", text=text)


def test_more_than_four_variants_are_refused(marketer, template):
    five = [{"subject": f"Subject {n}"} for n in range(5)]
    data = _form(template, ContactListFactory(), five)
    _refused(marketer, data, where="five", text="An A/B test needs 2 to 4 variants")


def test_a_transactional_template_is_not_a_variant(marketer, template):
    private = TemplateFactory(kind="transactional")
    data = _form(template, ContactListFactory(), TWO, **{"variants-1-template": str(private.pk)})
    _refused(marketer, data, where="transactional", text="Select a valid choice.")


def test_a_campaign_whose_variants_went_missing_is_not_launched():
    campaign = CampaignFactory(ab_test_share=20)
    campaign.contact_lists.set([ContactListFactory()])
    CampaignVariant.objects.create(campaign=campaign, subject="Only one")
    with pytest.raises(CampaignError, match="needs 2 to 4 variants"):
        campaign_run_create(campaign_id=campaign.pk, trigger="manual")


# --- Results and the winner ---------------------------------------------------------------


@pytest.fixture
def manual_run(fan_outs, monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    campaign = ab_campaign(people=1000, metric="manual")
    run = launched(campaign)
    rows = Delivery.objects.filter(run_id=run.pk)
    rows.update(status="sent")
    for group, opened in (("A", 20), ("B", 60)):
        ids = list(rows.filter(context__ab_group=group).values_list("id", flat=True)[:opened])
        rows.filter(id__in=ids).update(opens=1)
    return run


def test_the_results_page_shows_each_variant_with_its_sample_and_confidence(marketer, manual_run):
    page = marketer.get(f"/admin/campaigns/campaignrun/{manual_run.pk}/results/").content.decode()
    test = RunABTest.objects.get(run=manual_run)
    a, b = (Delivery.objects.filter(run_id=manual_run.pk, context__ab_group=g) for g in "AB")
    assert 'data-variant="A"' in page and 'data-variant="B"' in page
    assert f"<td>{a.count()}</td>" in page and f"<td>{b.count()}</td>" in page
    assert "B&#x27;s open rate is higher than A&#x27;s with 99 % confidence." in page
    assert "testing; waiting for you to choose the winner" in page
    assert "winner by staff&#x27;s choice</h2>" in page
    assert test.winner == ""


def test_choosing_the_winner_confirms_records_then_a_worker_sends_it_once(
    marketer, manual_run, django_capture_on_commit_callbacks
):
    """The choice is recorded in the request; the rest's rows (a launch's
    work for a large audience) are written by the task it queues."""
    url = f"/admin/campaigns/campaignrun/{manual_run.pk}/winner/"
    results = f"/admin/campaigns/campaignrun/{manual_run.pk}/results/"
    confirm = marketer.get(url).content.decode()
    assert "This cannot be undone" in confirm and 'value="B"' in confirm
    assert marketer.post(url, {"winner": "Z"}).status_code == 400
    assert RunABTest.objects.get(run=manual_run).winner == ""
    before = Delivery.objects.filter(run_id=manual_run.pk).count()
    with (
        mock.patch.object(send_ab_winner, "apply_async") as queued,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = marketer.post(url, {"winner": "B"}, follow=True)
    assert response.status_code == 200
    assert any("Variant B goes to the rest" in str(m) for m in response.context["messages"])
    queued.assert_called_once_with(args=[manual_run.pk], queue="maintenance")
    assert Delivery.objects.filter(run_id=manual_run.pk).count() == before
    test = RunABTest.objects.get(run=manual_run)
    assert (test.chosen, test.winner, test.decided_by.username) == ("B", "", "mia")
    page = marketer.get(results).content.decode()
    assert "variant <strong>B</strong> was chosen by mia; its messages for the rest" in page
    assert 'http-equiv="refresh"' in page
    other = marketer.post(url, {"winner": "A"})
    assert other.status_code == 400 and "Variant B was chosen by mia" in other.content.decode()
    assert "being written" in marketer.get(url).content.decode()

    assert send_ab_winner(manual_run.pk) == 1000 - before  # the worker
    assert Delivery.objects.filter(run_id=manual_run.pk).count() == 1000
    again = marketer.post(url, {"winner": "A"})
    assert again.status_code == 400 and "Variant B already won" in again.content.decode()
    assert send_ab_winner(manual_run.pk) == 0  # a redelivered task writes nothing
    assert Delivery.objects.filter(run_id=manual_run.pk).count() == 1000
    test = RunABTest.objects.get(run=manual_run)
    assert test.winner == "B" and test.decided_by.username == "mia"
    assert test.decision == "B was chosen by mia."
    assert 'http-equiv="refresh"' not in marketer.get(results).content.decode()
    page = marketer.get(f"{ADMIN}/{manual_run.campaign_id}/change/").content.decode()
    assert "variant <strong>B</strong> won on 2026-03-02 09:00" in page


def test_staff_who_may_only_look_cannot_choose(client, manual_run):
    viewer = User.objects.create_user("vic", password="pw", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_campaign", "view_campaignrun"])
    )
    client.force_login(viewer)
    url = f"/admin/campaigns/campaignrun/{manual_run.pk}/winner/"
    assert client.post(url, {"winner": "B"}).status_code == 403
    assert RunABTest.objects.get(run=manual_run).winner == ""
