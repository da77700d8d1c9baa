"""A run's results over time: the selector, the chart and the admin page."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User

from campaigns.charts import results_chart
from campaigns.models import CampaignRun
from campaigns.selectors import run_results
from notifier.models import Delivery, DeliveryEvent
from tests.campaigns.factories import CampaignFactory
from tests.notifier.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
_keys = itertools.count()


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def bucket(n: int) -> datetime:
    return minutes(n).replace(second=0)


def sent(run: CampaignRun, at: datetime, status: str = Delivery.Status.SENT) -> Delivery:
    return DeliveryFactory(run_id=run.pk, status=status, sent_at=at, next_attempt_at=None)


def event(delivery: Delivery, event_type: str, at: datetime | None) -> DeliveryEvent:
    return DeliveryEvent.objects.create(
        delivery=delivery,
        event_key=f"test:{next(_keys)}",
        event_type=event_type,
        email=delivery.recipient.email,
        occurred_at=at,
    )


@pytest.fixture
def run():
    return CampaignRun.objects.create(campaign=CampaignFactory(), status="done")


def test_each_message_counts_once_per_stage_in_the_bucket_of_its_first_event(
    run, django_assert_max_num_queries
):
    a, b, c = sent(run, minutes(0)), sent(run, minutes(0.2)), sent(run, minutes(1))
    sent(run, None, status=Delivery.Status.FAILED)  # never sent: not in the chart
    bounced = sent(run, minutes(1), status=Delivery.Status.BOUNCED)
    event(a, "delivered", minutes(2))
    event(b, "delivered", minutes(2.2))
    event(bounced, "bounced", minutes(2))
    event(a, "opened", minutes(5))
    event(a, "opened", minutes(3))  # received later, happened earlier: the first open
    event(a, "opened", minutes(3))  # the same instant twice: still one message
    event(b, "opened", minutes(9))
    event(a, "clicked", minutes(4))
    event(a, "clicked", minutes(6))
    event(c, "deferred", minutes(2))  # not a series
    other = CampaignRun.objects.create(campaign=run.campaign)
    event(sent(other, minutes(0)), "opened", minutes(1))  # another run's

    with django_assert_max_num_queries(4):
        results = run_results(run_id=run.pk)

    assert results.unit == "minute"
    assert results.new == {
        "sent": [(bucket(0), 2), (bucket(1), 2)],
        "delivered": [(bucket(2), 2)],
        "opened": [(bucket(3), 1), (bucket(9), 1)],
        "clicked": [(bucket(4), 1)],
        "bounced": [(bucket(2), 1)],
    }
    assert results.totals == {"sent": 4, "delivered": 2, "opened": 2, "clicked": 1, "bounced": 1}
    assert results.start == bucket(-1) and results.end == bucket(10)
    assert results.rows()[0] == (
        bucket(0),
        {"sent": 2, "delivered": 0, "opened": 0, "clicked": 0, "bounced": 0},
    )


@pytest.mark.parametrize(
    ("span", "unit"),
    [
        (timedelta(minutes=50), "minute"),
        (timedelta(hours=5), "hour"),
        (timedelta(days=20), "day"),
        (timedelta(days=400), "week"),
    ],
)
def test_buckets_grow_with_the_span(run, span, unit):
    delivery = sent(run, T0)
    event(delivery, "opened", T0 + span)
    results = run_results(run_id=run.pk)
    assert results.unit == unit
    assert results.totals["opened"] == results.totals["sent"] == 1


def test_nothing_sent_has_no_chart(run):
    DeliveryFactory(run_id=run.pk)  # pending
    results = run_results(run_id=run.pk)
    assert results.totals == dict.fromkeys(results.totals, 0)
    assert results_chart(results) is None


def test_chart_lines_end_at_the_totals(run):
    for i in range(12):
        delivery = sent(run, minutes(i / 4))
        event(delivery, "delivered", minutes(1 + i / 4))
        if i % 3 == 0:
            event(delivery, "opened", minutes(10 + i))
    chart = results_chart(run_results(run_id=run.pk))
    lines = {line.key: line for line in chart.lines}
    assert [line.key for line in chart.lines] == [
        "sent",
        "delivered",
        "opened",
        "clicked",
        "bounced",
    ]
    assert (lines["sent"].total, lines["opened"].total, lines["opened"].percent) == (12, 4, "33%")
    left, top, right, bottom = chart.plot
    # Cumulative, on a 0-15 axis: "sent" ends at 12, between the 10 and 15 ticks.
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10", "15"]
    ten, fifteen = chart.y_ticks[2].at, chart.y_ticks[3].at
    assert fifteen == top and fifteen < lines["sent"].points[-1][1] < ten
    assert lines["clicked"].points == [] and lines["clicked"].path == f"M{left},{bottom}H{right}"
    assert chart.x_ticks and all(left <= t.at <= right for t in chart.x_ticks)
    assert [t.label for t in chart.x_ticks] == ["10:00", "10:05", "10:10", "10:15", "10:20"]


def test_results_page_shows_the_chart_and_totals(marketer, run):
    delivery = sent(run, minutes(0))
    event(delivery, "delivered", minutes(1))
    event(delivery, "opened", minutes(2))
    response = marketer.get(f"/admin/campaigns/campaignrun/{run.pk}/results/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<svg class="results-chart"' in page and "<script" not in page.split("<svg")[1]
    assert (
        "Messages so far, by minute: sent 1, delivered 1, opened 1, clicked 0, bounced 0." in page
    )
    assert "100% of sent" in page


def test_results_page_before_anything_was_sent(marketer, run):
    response = marketer.get(f"/admin/campaigns/campaignrun/{run.pk}/results/")
    assert response.status_code == 200
    assert "Nothing has been sent in this run yet." in response.content.decode()
    assert marketer.get("/admin/campaigns/campaignrun/999999/results/").status_code == 404


def test_results_need_the_view_permission(client, run):
    client.force_login(User.objects.create_user("sam", password="pw", is_staff=True))
    assert client.get(f"/admin/campaigns/campaignrun/{run.pk}/results/").status_code == 403


def test_campaign_page_and_run_list_link_to_results(marketer, run):
    url = f"/admin/campaigns/campaignrun/{run.pk}/results/"
    assert (
        url in marketer.get(f"/admin/campaigns/campaign/{run.campaign_id}/change/").content.decode()
    )
    assert url in marketer.get("/admin/campaigns/campaignrun/").content.decode()
