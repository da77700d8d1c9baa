"""A/B tests of campaign runs: the test share at the launch, the winner to the rest.

A campaign with a test share and 2-4 variants launches each run with only
the test share: each recipient's bucket (``campaigns.splits``, a hash of run
and recipient) picks their variant. At the test's ``decide_at`` (a due time
in the database that beat's ``campaigns.decide_ab_tests`` polls, never a
Celery countdown), or when staff choose, the winner goes to the rest.
Staff's choice is recorded at once and a worker writes the rest's rows
(``run_ab_choose_winner``): for a large audience that is a launch's work.

Invariants:

* **One variant per recipient.** Every row of the run, test share or rest,
  is written by the outbox's one ``INSERT ... SELECT ... ON CONFLICT DO
  NOTHING``; the unique (run, recipient) constraint keeps each recipient to
  one row, so the rest is simply "the audience" again: whoever already has a
  variant's row gets nothing more.
* **Decided once.** The decision and the rest's rows commit in one
  transaction holding the run's and the test's row locks; a second trigger
  (beat again, the button pressed twice, a redelivered task) finds a winner
  and writes nothing. A worker that dies before the commit leaves the test
  undecided (the next tick decides); after it, the rows are written
  dispatched and the sweeper sends them if the fan-out was lost. A choice
  staff recorded is decided the same way by its task, or by the next tick
  if the task was lost; another choice is refused meanwhile.
* **The run stays open** while its test is undecided
  (``campaign_run_finalise`` asks ``run_ab_test_pending``).
"""

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from campaigns.errors import CampaignError
from campaigns.models import (
    AB_LABELS,
    AB_SHARE_MAX,
    AB_SHARE_MIN,
    AB_VARIANTS_MAX,
    AB_VARIANTS_MIN,
    AB_WAIT_MAX,
    AB_WAIT_MIN,
    Campaign,
    CampaignRun,
    RunABTest,
    WinnerMetric,
)
from campaigns.selectors import AB_GROUP_KEY, AB_REST, campaign_audience, run_ab_report
from campaigns.splits import SplitBucket, variant_ranges
from notifier.instruments import count_task_failure
from notifier.models import Delivery, DeliveryGroup
from notifier.services.outbox import deliveries_materialise

logger = logging.getLogger(__name__)


# --- What staff set up ----------------------------------------------------------------


def campaign_ab_problems(*, campaign: Campaign, variant_count: int | None = None) -> dict[str, str]:
    """What stops the campaign's A/B test, per field ({} when fine or off).
    ``variant_count`` defaults to the saved variants (a saved campaign)."""
    share = campaign.ab_test_share
    if share is None:
        return {}
    problems = {}
    if not AB_SHARE_MIN <= share <= AB_SHARE_MAX:
        problems["ab_test_share"] = (
            f"The test share is a percentage from {AB_SHARE_MIN} to {AB_SHARE_MAX}."
        )
    if not AB_WAIT_MIN <= (campaign.ab_wait_minutes or 0) <= AB_WAIT_MAX:
        problems["ab_wait_minutes"] = (
            f"Wait between {AB_WAIT_MIN} minutes and 7 days ({AB_WAIT_MAX} minutes)."
        )
    if campaign.ab_winner_metric not in WinnerMetric.values:
        problems["ab_winner_metric"] = "Choose how the winner is picked."
    if campaign.local_send_time is not None:
        problems["ab_test_share"] = (
            "An A/B test cannot be combined with a recipient-local send time: clear one of them."
        )
    if variant_count is None and campaign.pk:
        variant_count = campaign.variants.count()
    if variant_count is not None and not AB_VARIANTS_MIN <= variant_count <= AB_VARIANTS_MAX:
        problems.setdefault(
            "ab_test_share",
            f"An A/B test needs {AB_VARIANTS_MIN} to {AB_VARIANTS_MAX} variants "
            f"(this campaign has {variant_count}); add variants below or clear the test share.",
        )
    return problems


def variant_description(*, subject: str, sender_name: str, template_name: str) -> str:
    """What a variant changes, in words."""
    parts = []
    if subject:
        parts.append(f"subject “{subject}”")
    if sender_name:
        parts.append(f"from {sender_name}")
    if template_name:
        parts.append(f"template “{template_name}”")
    return ", ".join(parts) or "the campaign as it is"


def campaign_variants_snapshot(*, campaign: Campaign) -> list[dict]:
    """The variants as plain data, labelled A, B, ... (what a run keeps)."""
    snapshot = []
    variants = campaign.variants.select_related("template", "sender")[:AB_VARIANTS_MAX]
    for label, variant in zip(AB_LABELS, variants, strict=False):
        snapshot.append(
            {
                "label": label,
                "subject": variant.subject,
                "template_id": variant.template_id or campaign.template_id,
                "from_email": (
                    variant.sender.from_header if variant.sender_id else campaign.from_header
                ),
                "description": variant_description(
                    subject=variant.subject,
                    sender_name=str(variant.sender) if variant.sender_id else "",
                    template_name=variant.template.name if variant.template_id else "",
                ),
            }
        )
    return snapshot


# --- The launch: the test share ---------------------------------------------------------


def run_ab_test_open(*, run: CampaignRun, launched_at: datetime) -> RunABTest | None:
    """The run's A/B test, as the campaign sets it up now (None: no test)."""
    campaign = run.campaign
    if campaign.ab_test_share is None:
        return None
    test, _created = RunABTest.objects.get_or_create(
        run=run,
        defaults={
            "share": campaign.ab_test_share,
            "metric": campaign.ab_winner_metric,
            "variants": campaign_variants_snapshot(campaign=campaign),
            "decide_at": launched_at + timedelta(minutes=campaign.ab_wait_minutes),
        },
    )
    return test


def _materialise(*, run: CampaignRun, group_id: int, audience, variant: dict, group: str) -> int:
    return deliveries_materialise(
        group=DeliveryGroup.objects.get(pk=group_id),
        audience=audience,
        kind=Delivery.Kind.CAMPAIGN,
        template_id=variant["template_id"],
        from_email=variant["from_email"],
        transport=run.campaign.transport,
        subject=variant["subject"],
        context={AB_GROUP_KEY: group},
    )


def run_ab_materialise_test(*, run: CampaignRun, test: RunABTest) -> int:
    """Write the test share's rows: each variant's equal part of the buckets
    below the share (set-based, one statement per variant)."""
    audience = campaign_audience(campaign=run.campaign).alias(
        ab_bucket=SplitBucket("id", run_id=run.pk)
    )
    ranges = variant_ranges(share=test.share, count=len(test.variants))
    return sum(
        _materialise(
            run=run,
            group_id=run.pk,
            audience=audience.filter(ab_bucket__gte=low, ab_bucket__lt=high),
            variant=variant,
            group=variant["label"],
        )
        for variant, (low, high) in zip(test.variants, ranges, strict=True)
    )


def run_ab_test_pending(*, run_id: int) -> bool:
    """Whether the run waits for its A/B winner (it must not close)."""
    return RunABTest.objects.filter(run_id=run_id, winner="").exists()


# --- The winner -------------------------------------------------------------------------


def run_ab_winner_pick(*, test: RunABTest) -> tuple[str, str]:
    """The winner by the test's metric, and why in words (the earlier label
    wins a tie; the lead need not be meaningful: the wait is over)."""
    report = run_ab_report(test=test)
    ranked = report.ranked(test.metric)
    leader = ranked[0]
    words = f"{leader.label} had the highest {report.rate_name(test.metric)}"
    words += f" ({leader.rate(test.metric) * 100:.1f} % of {leader.sent} sent)."
    statement = report.statement(test.metric)
    return leader.label, f"{words} {statement}" if statement else words


def staff_name(user) -> str:
    """Who made a decision, in words: a username, or "staff"."""
    return user.get_username() if user is not None else "staff"


def _staff(user):
    """The user to record as ``decided_by`` (None for nobody logged in)."""
    return user if user is not None and user.is_authenticated else None


def _refuse_decision(*, run: CampaignRun | None, test: RunABTest | None) -> None:
    """Why the run's test cannot be decided now (a CampaignError), if it cannot."""
    if run is None or test is None:
        raise CampaignError("This run has no A/B test.")
    if test.winner:
        raise CampaignError(f"Variant {test.winner} already won; the rest of the audience has it.")
    if run.status != CampaignRun.Status.RUNNING:
        raise CampaignError(
            f"The run is {run.get_status_display().lower()}: a winner is sent only while it runs."
        )


def _refuse_choice(*, run: CampaignRun | None, test: RunABTest | None, winner: str) -> None:
    """Why staff cannot choose ``winner`` now (a CampaignError), if they cannot."""
    _refuse_decision(run=run, test=test)
    if test.chosen and test.chosen != winner:
        raise CampaignError(
            f"Variant {test.chosen} was chosen by {staff_name(test.decided_by)}; its messages for "
            "the rest of the audience are being written."
        )
    if test.variant(winner) is None:
        labels = ", ".join(v["label"] for v in test.variants)
        raise CampaignError(f"Choose one of the variants ({labels}).")


def _locked(run_id: int) -> tuple[CampaignRun | None, RunABTest | None]:
    from campaigns.services.runs import _run_locked

    run = _run_locked(run_id)
    test = RunABTest.objects.select_for_update().filter(run_id=run_id).first()
    return run, test


def run_ab_choose_winner(*, run_id: int, winner: str, user=None) -> None:
    """Staff's choice of the winner: checked and recorded now (``chosen``),
    its rows for the rest of the audience written by a worker
    (``send_ab_winner``, on the maintenance queue): for a large audience
    that is a launch's work, longer than a web request should take. Beat
    sends a recorded choice whose task was lost (``run_ab_tests_decide_due``).
    Refused (CampaignError) for a decided test, another choice already
    recorded, a run that is not running, or an unknown variant."""
    from campaigns.tasks import send_ab_winner

    with transaction.atomic():
        run, test = _locked(run_id)
        _refuse_choice(run=run, test=test, winner=winner)
        if test.chosen:
            return  # the same choice again (pressed twice): already on its way
        test.chosen = winner
        test.decided_by = _staff(user)
        test.save(update_fields=["chosen", "decided_by"])
        # Robust: with the broker down the choice stays recorded (and the
        # page says so); beat's next tick sends it.
        transaction.on_commit(
            lambda: send_ab_winner.apply_async(args=[run_id], queue="maintenance"), robust=True
        )
    logger.info("Run %s: variant %s chosen by %s", run_id, winner, staff_name(user))


def run_ab_send_winner(*, run_id: int, winner: str | None = None, user=None) -> int:
    """Decide the run's A/B test and write the rest's rows with the winner.

    ``winner`` is staff's choice (a variant's label); None sends the choice
    staff recorded (``run_ab_choose_winner``), else picks by the test's
    metric (refused for a manual test). Returns the rows written: 0 when the
    test was already decided by a trigger without a choice (beat again, a
    redelivered task); a staff choice on a decided test is refused.
    """
    from campaigns.services.runs import run_fan_out

    with transaction.atomic():
        run, test = _locked(run_id)
        if test is not None and test.winner and winner is None:
            return 0
        if winner is None and test is not None and test.chosen:
            winner, user = test.chosen, test.decided_by
        if winner is None:
            _refuse_decision(run=run, test=test)
            if test.metric == WinnerMetric.MANUAL:
                raise CampaignError("This test waits for you to choose the winner.")
            winner, words = run_ab_winner_pick(test=test)
        else:
            _refuse_choice(run=run, test=test, winner=winner)
            words = f"{winner} was chosen by {staff_name(user)}."
        added = _materialise(
            run=run,
            group_id=run.pk,
            audience=campaign_audience(campaign=run.campaign),
            variant=test.variant(winner),
            group=AB_REST,
        )
        test.winner = winner
        test.decided_at = timezone.now()
        test.decided_by = _staff(user)
        test.decision = words
        test.rest = added
        test.save(update_fields=["winner", "decided_at", "decided_by", "decision", "rest"])
        run.recipients += added
        run.save(update_fields=["recipients"])
        transaction.on_commit(lambda: run_fan_out(run_id=run.pk))
    logger.info("Run %s: variant %s wins; %s more messages", run_id, winner, added)
    return added


def run_ab_tests_decide_due() -> dict[str, int]:
    """Beat: send the winner of every automatic test whose wait is over, and
    the choice staff recorded whose task has not sent it (lost, or the run
    was paused meanwhile); of running runs only: a paused run's test waits
    for the resume. One test's error is logged and never stops the others."""
    result = {"decided": 0, "failed": 0}
    automatic_due = Q(decide_at__lte=timezone.now()) & ~Q(metric=WinnerMetric.MANUAL)
    due = RunABTest.objects.filter(
        automatic_due | ~Q(chosen=""), winner="", run__status=CampaignRun.Status.RUNNING
    ).values_list("run_id", flat=True)
    for run_id in list(due):
        try:
            run_ab_send_winner(run_id=run_id)
        except Exception:
            logger.exception("Run %s: could not send the A/B winner; next tick tries again", run_id)
            count_task_failure(task="campaigns.decide_ab_tests")
            result["failed"] += 1
        else:
            result["decided"] += 1
    return result
