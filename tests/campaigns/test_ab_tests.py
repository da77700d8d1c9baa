"""A/B tests: the split, the statistics, the decision and its exactly-once
guarantee (services in one process; the flow through a worker is in
test_ab_e2e_worker.py)."""

from collections import Counter
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.utils import timezone

from campaigns.abstats import compare, comparison_in_words, higher_confidence
from campaigns.errors import CampaignError
from campaigns.models import CampaignRun, CampaignVariant, Recipient, RunABTest
from campaigns.selectors import run_ab_group_results, run_ab_report
from campaigns.services.abtests import (
    run_ab_choose_winner,
    run_ab_send_winner,
    run_ab_tests_decide_due,
)
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import campaign_run_finalise, campaign_run_launch
from campaigns.splits import BUCKETS, SplitBucket, bucket_of, variant_ranges
from campaigns.tasks import send_ab_winner
from notifier.models import Delivery
from tests.campaigns.factories import CampaignFactory, ContactListFactory

LAUNCH = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock(monkeypatch):
    now = {"at": LAUNCH}
    monkeypatch.setattr(timezone, "now", lambda: now["at"])
    return lambda at: now.update(at=at)


def _people(count: int) -> list[int]:
    return [
        r.pk
        for r in Recipient.objects.bulk_create(
            Recipient(email=f"p{n}@example.com", name=f"P{n}") for n in range(count)
        )
    ]


def ab_campaign(*, people: int, share=20, metric="opens", subjects=("Subject A", "Subject B")):
    from campaigns.models import ListMembership

    ids = _people(people)
    audience = ContactListFactory()
    ListMembership.objects.bulk_create(
        ListMembership(contact_list=audience, recipient_id=pk) for pk in ids
    )
    campaign = CampaignFactory(ab_test_share=share, ab_winner_metric=metric, ab_wait_minutes=60)
    campaign.contact_lists.set([audience])
    for position, subject in enumerate(subjects):
        CampaignVariant.objects.create(campaign=campaign, position=position, subject=subject)
    return campaign


def launched(campaign) -> CampaignRun:
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    return campaign_run_launch(run_id=run.pk)


# --- The split -------------------------------------------------------------------------


def test_variant_ranges_cut_the_share_evenly():
    assert variant_ranges(share=20, count=2) == [(0, 1000), (1000, 2000)]
    assert variant_ranges(share=50, count=4) == [
        (0, 1250),
        (1250, 2500),
        (2500, 3750),
        (3750, 5000),
    ]
    low_high = variant_ranges(share=1, count=3)
    assert low_high[0][0] == 0 and low_high[-1][1] == BUCKETS // 100


def test_buckets_are_even_and_differ_between_runs():
    counts = Counter(bucket_of(pk, run_id=7) // 1000 for pk in range(1, 20_001))
    # 10 deciles of 20,000 ids: each within 5 % of 2,000.
    assert all(1900 <= n <= 2100 for n in counts.values()), counts
    same = sum(bucket_of(pk, run_id=7) == bucket_of(pk, run_id=8) for pk in range(1, 5001))
    assert same < 50  # another run splits anew


@pytest.mark.django_db
def test_the_database_computes_the_same_buckets_as_python():
    ids = _people(300)
    rows = dict(
        Recipient.objects.filter(pk__in=ids)
        .annotate(bucket=SplitBucket("id", run_id=12345))
        .values_list("pk", "bucket")
    )
    assert rows == {pk: bucket_of(pk, run_id=12345) for pk in ids}


@pytest.mark.django_db
def test_the_test_share_is_split_evenly_and_stably(clock, fan_outs):
    campaign = ab_campaign(people=2000)
    run = launched(campaign)
    groups = run_ab_group_results(run_id=run.pk)
    assert set(groups) == {"A", "B"}
    assert 360 <= groups["A"].total + groups["B"].total <= 440  # 20 % of 2,000
    assert abs(groups["A"].total - groups["B"].total) <= 60
    # Stable: each row's variant is its recipient's bucket in this run.
    for recipient_id, group in Delivery.objects.filter(run_id=run.pk).values_list(
        "recipient_id", "context__ab_group"
    ):
        bucket = bucket_of(recipient_id, run_id=run.pk)
        assert group == ("A" if bucket < 1000 else "B")
    subjects = dict(
        Delivery.objects.filter(run_id=run.pk).values_list("context__ab_group", "subject")
    )
    assert subjects == {"A": "Subject A", "B": "Subject B"}
    test = RunABTest.objects.get(run=run)
    assert test.decide_at == LAUNCH + timedelta(minutes=60) and test.winner == ""


# --- Statistics ------------------------------------------------------------------------


def test_two_proportion_confidence_matches_known_values():
    # 100/1000 vs 130/1000: z = 2.10, one-sided confidence 98.2 %.
    assert higher_confidence(130, 1000, 100, 1000) == pytest.approx(0.9822, abs=1e-3)
    assert higher_confidence(50, 100, 50, 100) == pytest.approx(0.5)
    assert higher_confidence(0, 100, 0, 100) == 0.5
    assert higher_confidence(1, 0, 1, 10) is None


def test_comparisons_in_words():
    assert comparison_in_words(compare(("A", 40, 200), ("B", 80, 200)), rate_name="open rate") == (
        "B's open rate is higher than A's with 99 % confidence."
    )
    slight = comparison_in_words(compare(("A", 40, 200), ("B", 44, 200)), rate_name="open rate")
    assert slight.startswith("B's open rate is higher than A's, but not yet meaningful (")
    assert "95 % is needed" in slight
    assert comparison_in_words(compare(("A", 3, 10), ("B", 9, 10)), rate_name="click rate") == (
        "B's and A's click rates: not yet meaningful (fewer than 30 messages sent to one of them)."
    )
    tie = comparison_in_words(compare(("A", 10, 100), ("B", 10, 100)), rate_name="open rate")
    assert tie == "A and B have the same open rate so far: not yet meaningful."


# --- The decision ---------------------------------------------------------------------


def _open(run, group: str, count: int) -> None:
    ids = list(
        Delivery.objects.filter(run_id=run.pk, context__ab_group=group).values_list("id", flat=True)
    )[:count]
    Delivery.objects.filter(id__in=ids).update(status="sent", opens=1)


def _sent(run) -> None:
    Delivery.objects.filter(run_id=run.pk, status="pending").update(status="sent")


@pytest.mark.django_db
def test_the_winner_goes_to_the_rest_once(clock, fan_outs, django_capture_on_commit_callbacks):
    campaign = ab_campaign(people=1000)
    run = launched(campaign)
    test_rows = Delivery.objects.filter(run_id=run.pk).count()
    _sent(run)
    _open(run, "B", 60)
    _open(run, "A", 10)
    # Before the wait is over nothing happens, and the run does not close.
    clock(LAUNCH + timedelta(minutes=59))
    assert run_ab_tests_decide_due() == {"decided": 0, "failed": 0}
    assert campaign_run_finalise(run_id=run.pk) is False
    clock(LAUNCH + timedelta(minutes=60))
    with django_capture_on_commit_callbacks(execute=True):
        assert run_ab_tests_decide_due() == {"decided": 1, "failed": 0}
    test = RunABTest.objects.get(run=run)
    assert test.winner == "B" and test.decided_at == LAUNCH + timedelta(minutes=60)
    assert test.decision.startswith("B had the highest open rate (")
    assert "B's open rate is higher than A's with 99 % confidence." in test.decision
    rows = Delivery.objects.filter(run_id=run.pk)
    assert rows.count() == 1000 == test_rows + test.rest
    assert rows.filter(context__ab_group="rest", subject="Subject B").count() == test.rest
    # Triggered again (beat, a redelivered task): nothing more.
    assert run_ab_tests_decide_due() == {"decided": 0, "failed": 0}
    assert run_ab_send_winner(run_id=run.pk) == 0
    with pytest.raises(CampaignError, match="already won"):
        run_ab_send_winner(run_id=run.pk, winner="A")
    assert rows.count() == 1000
    assert len(set(rows.values_list("recipient_id", flat=True))) == 1000
    run.refresh_from_db()
    assert run.recipients == 1000
    assert fan_outs == [run.pk, run.pk]  # the launch's, and the winner's


@pytest.mark.django_db
def test_by_clicks_and_a_tie_goes_to_the_first(clock, fan_outs):
    campaign = ab_campaign(people=400, metric="clicks")
    run = launched(campaign)
    _sent(run)
    clock(LAUNCH + timedelta(hours=2))
    run_ab_tests_decide_due()
    test = RunABTest.objects.get(run=run)
    assert test.winner == "A" and "same click rate" in test.decision


@pytest.mark.django_db
def test_a_manual_test_waits_for_staff_and_takes_their_choice(clock, fan_outs, admin_user):
    campaign = ab_campaign(people=500, metric="manual", subjects=("One", "Two", "Three"))
    run = launched(campaign)
    clock(LAUNCH + timedelta(days=3))
    assert run_ab_tests_decide_due()["decided"] == 0
    with pytest.raises(CampaignError, match="waits for you"):
        run_ab_send_winner(run_id=run.pk)
    with pytest.raises(CampaignError, match=r"Choose one of the variants \(A, B, C\)"):
        run_ab_send_winner(run_id=run.pk, winner="D", user=admin_user)
    assert run_ab_send_winner(run_id=run.pk, winner="C", user=admin_user) > 0
    test = RunABTest.objects.get(run=run)
    assert (test.winner, test.decided_by, test.decision) == (
        "C",
        admin_user,
        "C was chosen by admin.",
    )
    assert set(
        Delivery.objects.filter(run_id=run.pk, context__ab_group="rest").values_list(
            "subject", flat=True
        )
    ) == {"Three"}
    assert Delivery.objects.filter(run_id=run.pk).count() == 500


@pytest.mark.django_db
def test_a_paused_run_waits_and_a_cancelled_one_sends_no_winner(clock, fan_outs):
    from campaigns.services.runs import campaign_run_cancel, campaign_run_pause

    campaign = ab_campaign(people=200)
    run = launched(campaign)
    campaign_run_pause(run=run)
    clock(LAUNCH + timedelta(hours=2))
    assert run_ab_tests_decide_due()["decided"] == 0
    with pytest.raises(CampaignError, match="paused"):
        run_ab_send_winner(run_id=run.pk, winner="A")
    campaign_run_cancel(run=CampaignRun.objects.get(pk=run.pk))
    run.refresh_from_db()
    assert run.status == "cancelled" and run.finished_at is not None
    assert not Delivery.objects.filter(run_id=run.pk, context__ab_group="rest").exists()


@pytest.mark.django_db
def test_the_report_states_sample_sizes_and_confidence(clock, fan_outs):
    campaign = ab_campaign(people=2000)
    run = launched(campaign)
    _sent(run)
    _open(run, "B", 80)
    _open(run, "A", 30)
    report = run_ab_report(test=RunABTest.objects.get(run=run))
    assert [row.label for row in report.variants] == ["A", "B"]
    assert all(row.sent > 150 for row in report.variants)
    assert report.statement("opens").startswith("B's open rate is higher than A's with 99")
    assert report.rest.total == 0


@pytest.mark.django_db
def test_a_decision_that_dies_before_its_commit_leaves_the_test_to_the_next_tick(
    clock, fan_outs, monkeypatch
):
    campaign = ab_campaign(people=600)
    run = launched(campaign)
    before = Delivery.objects.filter(run_id=run.pk).count()
    clock(LAUNCH + timedelta(hours=1))

    def die(*args, **kwargs):
        raise SystemExit("worker killed")

    with monkeypatch.context() as patch:
        patch.setattr(RunABTest, "save", die)
        with pytest.raises(SystemExit):
            run_ab_send_winner(run_id=run.pk)
    # Rolled back with it: no rows for the rest, no winner.
    assert Delivery.objects.filter(run_id=run.pk).count() == before
    assert RunABTest.objects.get(run=run).winner == ""
    assert run_ab_tests_decide_due()["decided"] == 1
    assert Delivery.objects.filter(run_id=run.pk).count() == 600


@pytest.mark.django_db
def test_a_recorded_choice_whose_task_was_lost_is_sent_by_the_next_tick(
    clock, fan_outs, admin_user
):
    """Staff's choice is recorded before its task is queued; if the task
    never runs (lost with the broker), beat sends the choice, manual test or
    not, and only once."""
    campaign = ab_campaign(people=300, metric="manual")
    run = launched(campaign)
    before = Delivery.objects.filter(run_id=run.pk).count()
    with mock.patch.object(send_ab_winner, "apply_async"):  # published, then lost
        run_ab_choose_winner(run_id=run.pk, winner="B", user=admin_user)
        run_ab_choose_winner(run_id=run.pk, winner="B", user=admin_user)  # pressed twice
    with pytest.raises(CampaignError, match="Variant B was chosen by admin"):
        run_ab_choose_winner(run_id=run.pk, winner="A", user=admin_user)
    with pytest.raises(CampaignError, match="Variant B was chosen by admin"):
        run_ab_send_winner(run_id=run.pk, winner="A", user=admin_user)
    assert Delivery.objects.filter(run_id=run.pk).count() == before
    assert run_ab_tests_decide_due() == {"decided": 1, "failed": 0}
    assert run_ab_tests_decide_due() == {"decided": 0, "failed": 0}
    test = RunABTest.objects.get(run=run)
    assert (test.winner, test.decided_by, test.decision) == (
        "B",
        admin_user,
        "B was chosen by admin.",
    )
    rest = Delivery.objects.filter(run_id=run.pk, context__ab_group="rest")
    assert set(rest.values_list("subject", flat=True)) == {"Subject B"}
    assert Delivery.objects.filter(run_id=run.pk).count() == 300 == before + test.rest
    assert send_ab_winner(run.pk) == 0  # the task, arriving late: nothing more


@pytest.mark.django_db(transaction=True)
def test_a_choice_made_while_the_broker_is_down_is_kept_for_the_next_tick(
    clock, fan_outs, admin_user
):
    campaign = ab_campaign(people=100, metric="manual")
    run = launched(campaign)
    with mock.patch.object(send_ab_winner, "apply_async", side_effect=ConnectionError("down")):
        run_ab_choose_winner(run_id=run.pk, winner="B", user=admin_user)  # no error for staff
    assert RunABTest.objects.get(run=run).chosen == "B"
    assert run_ab_tests_decide_due()["decided"] == 1
    assert RunABTest.objects.get(run=run).winner == "B"


@pytest.mark.django_db
def test_a_choice_waits_for_a_paused_run_to_resume(clock, fan_outs, admin_user):
    from campaigns.abtest_admin import run_ab_decision_html
    from campaigns.services.runs import campaign_run_pause, campaign_run_resume

    campaign = ab_campaign(people=200, metric="manual")
    run = launched(campaign)
    before = Delivery.objects.filter(run_id=run.pk).count()
    with mock.patch.object(send_ab_winner, "apply_async"):
        run_ab_choose_winner(run_id=run.pk, winner="A", user=admin_user)
    campaign_run_pause(run=CampaignRun.objects.get(pk=run.pk))
    assert send_ab_winner(run.pk) == 0  # the task finds the run paused: it waits
    assert run_ab_tests_decide_due()["decided"] == 0
    test = RunABTest.objects.get(run=run)
    assert "goes to the rest of the audience once the run resumes" in run_ab_decision_html(test)
    campaign_run_resume(run=CampaignRun.objects.get(pk=run.pk))
    assert run_ab_tests_decide_due()["decided"] == 1
    assert RunABTest.objects.get(run=run).winner == "A"
    assert before < Delivery.objects.filter(run_id=run.pk).count() == 200


@pytest.mark.django_db
def test_a_choice_for_a_run_cancelled_before_its_task_is_never_sent(clock, fan_outs, admin_user):
    from campaigns.abtest_admin import run_ab_decision_html
    from campaigns.services.runs import campaign_run_cancel

    other = launched(ab_campaign(people=100, metric="manual"))
    with mock.patch.object(send_ab_winner, "apply_async"):
        run_ab_choose_winner(run_id=other.pk, winner="B", user=admin_user)
    campaign_run_cancel(run=CampaignRun.objects.get(pk=other.pk))
    assert run_ab_tests_decide_due()["decided"] == 0
    assert send_ab_winner(other.pk) == 0
    test = RunABTest.objects.get(run=other)
    assert test.winner == "" and "was cancelled before it went to the rest" in (
        run_ab_decision_html(test)
    )
    assert not Delivery.objects.filter(run_id=other.pk, context__ab_group="rest").exists()
