"""Campaign-level actions staff (and beat) take: save, schedule, launch, test, delete."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignRun
from campaigns.selectors import campaign_active_run
from campaigns.services.abtests import campaign_ab_problems
from campaigns.services.runs import campaign_run_cancel
from campaigns.services.schedules import campaign_schedule_remove, campaign_schedule_sync
from notifier import templating
from notifier.errors import NotifierError
from notifier.models import Recipient, SenderIdentity, Template
from notifier.sending.message import preview_render
from notifier.services.previews import message_preview, message_send_test
from notifier.services.senders import sender_validate
from notifier.services.templates import template_sent_html

logger = logging.getLogger(__name__)


def campaign_problems(
    *, campaign: Campaign, check_audience: bool = True, variant_count: int | None = None
) -> dict[str, str]:
    """What is wrong with the campaign's settings, per field ({} when fine).
    ``variant_count``: the A/B variants being entered (default: the saved ones)."""
    problems = {}
    if campaign.transport not in settings.NOTIFIER_TRANSPORTS:
        problems["transport"] = (
            f"Unknown transport {campaign.transport!r}; "
            f"configured: {', '.join(settings.NOTIFIER_TRANSPORTS)}."
        )
    if campaign.template_id and campaign.template.kind != Template.Kind.CAMPAIGN:
        problems["template"] = (
            f"{campaign.template.name!r} is a transactional template; "
            "a campaign uses a campaign template."
        )
    if campaign.sender_id:
        problems.update(_sender_problems(campaign.sender))
    try:
        context = templating.plain_data(campaign.context)
        if not isinstance(context, dict):
            problems["context"] = "The context must be a JSON object."
    except templating.ContextNotPlainData as exc:
        problems["context"] = str(exc)
    if "context" not in problems and campaign.template_id is not None:
        sample = Recipient(email="ada.lovelace@example.com", name="Ada Lovelace", attributes={})
        try:
            campaign_render(campaign=campaign, recipient=sample)
        except templating.RenderLimitExceeded as exc:
            problems["template"] = f"With this context, the template breaks a render limit: {exc}"
        except Exception:  # other errors depend on the recipient; each send reports its own
            pass
    problems.update(campaign_ab_problems(campaign=campaign, variant_count=variant_count))
    if campaign.schedule == Campaign.Schedule.ONCE and campaign.send_at is None:
        problems["send_at"] = "Give the time to send at."
    if (
        check_audience
        and campaign.pk
        and not campaign.contact_lists.exists()
        and not campaign.segments.exists()
    ):
        problems["contact_lists"] = "Choose at least one contact list or segment."
    return problems


def _sender_problems(sender: SenderIdentity) -> dict[str, str]:
    if sender.domain:
        return {"sender": "Choose an address identity, not a whole domain."}
    try:
        sender_validate(from_email=sender.from_header)
    except NotifierError as exc:
        return {"sender": str(exc)}
    return {}


def _raise_problems(problems: dict[str, str]) -> None:
    if problems:
        raise CampaignError(" ".join(problems.values()))


def campaign_save(*, campaign: Campaign, user=None, arm: bool = True) -> Campaign:
    """Save edits and bring the beat entry in line with them.

    Saving arms a schedule: a campaign with a one-off time still ahead or a
    crontab becomes ``scheduled`` (a running or paused one keeps its status;
    its entry follows the edit; ``arm=False`` leaves a finished or
    cancelled one as it is). Clearing the schedule of a scheduled campaign
    takes it back to draft. The caller checks the audience (the admin saves
    lists and segments after this).
    """
    if campaign.pk is None and user is not None and user.is_authenticated:
        campaign.created_by = user
    if campaign.schedule == Campaign.Schedule.NONE and campaign.status == Campaign.Status.SCHEDULED:
        campaign.status = Campaign.Status.DRAFT
    elif (arm or campaign.status == Campaign.Status.SCHEDULED) and _armable(campaign):
        campaign.status = Campaign.Status.SCHEDULED
    with transaction.atomic():
        campaign.save()
        campaign_schedule_sync(campaign=campaign)
    return campaign


def _armable(campaign: Campaign) -> bool:
    if campaign.status in (Campaign.Status.RUNNING, Campaign.Status.PAUSED):
        return False
    if campaign.schedule == Campaign.Schedule.CRONTAB:
        return True
    return (
        campaign.schedule == Campaign.Schedule.ONCE
        and campaign.send_at is not None
        and campaign.send_at > timezone.now()
    )


def campaign_schedule(*, campaign: Campaign) -> Campaign:
    """Arm the campaign's schedule (one-off time or crontab)."""
    if campaign.schedule == Campaign.Schedule.NONE:
        raise CampaignError("Choose a schedule first (once at a time, or a crontab).")
    if campaign.status in (Campaign.Status.RUNNING, Campaign.Status.PAUSED):
        raise CampaignError("The campaign is running; its schedule is already active.")
    _raise_problems(campaign_problems(campaign=campaign))
    if campaign.schedule == Campaign.Schedule.ONCE and campaign.send_at <= timezone.now():
        raise CampaignError("The send time is in the past.")
    return _set_status(campaign, Campaign.Status.SCHEDULED)


def campaign_unschedule(*, campaign: Campaign) -> Campaign:
    if campaign.status != Campaign.Status.SCHEDULED:
        raise CampaignError("The campaign is not scheduled.")
    return _set_status(campaign, Campaign.Status.DRAFT)


@transaction.atomic
def _set_status(campaign: Campaign, status: str) -> Campaign:
    campaign.status = status
    campaign.save(update_fields=["status", "updated_at"])
    campaign_schedule_sync(campaign=campaign)
    return campaign


# Crontabs tick at most once a minute: a second scheduled launch this soon
# after the last one is the same tick delivered twice.
TICK_DEDUP_SECONDS = 45


def campaign_run_create(*, campaign_id: int, trigger: str, user=None) -> CampaignRun | None:
    """Create a queued run, unless one is active already (then None).

    One active run per campaign at a time: a recurring tick that comes while
    the previous run is still going is skipped (and logged).
    """
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        _raise_problems(campaign_problems(campaign=campaign))
        if trigger == CampaignRun.Trigger.SCHEDULE and campaign.status not in (
            Campaign.Status.SCHEDULED,
            Campaign.Status.RUNNING,
        ):
            logger.info("Campaign %s is %s; scheduled launch skipped", campaign_id, campaign.status)
            return None
        if (
            trigger == CampaignRun.Trigger.SCHEDULE
            and campaign.runs.filter(
                trigger=CampaignRun.Trigger.SCHEDULE,
                created_at__gte=timezone.now() - timedelta(seconds=TICK_DEDUP_SECONDS),
            ).exists()
        ):
            # Two beats (or one beat's task redelivered) for the same tick: the
            # campaign row lock serialises them and the second one stops here.
            logger.warning("Campaign %s already started a run for this tick", campaign_id)
            return None
        if campaign_active_run(campaign=campaign) is not None:
            if trigger == CampaignRun.Trigger.MANUAL:
                raise CampaignError("A run of this campaign is still going.")
            logger.warning("Campaign %s still has an active run; tick skipped", campaign_id)
            return None
        run = CampaignRun.objects.create(
            campaign=campaign,
            trigger=trigger,
            launched_by=user if user is not None and user.is_authenticated else None,
        )
        campaign.status = Campaign.Status.RUNNING
        campaign.save(update_fields=["status", "updated_at"])
    return run


def campaign_launch_now(*, campaign: Campaign, user=None) -> CampaignRun:
    """Staff: start a run now. A worker materialises and fans it out."""
    from campaigns.tasks import launch_run

    run = campaign_run_create(
        campaign_id=campaign.pk, trigger=CampaignRun.Trigger.MANUAL, user=user
    )
    transaction.on_commit(lambda: launch_run.apply_async(args=[run.pk], queue="maintenance"))
    return run


def campaign_cancel(*, campaign: Campaign) -> int:
    """Cancel the active run (if any) and disarm the schedule."""
    cancelled = 0
    run = campaign_active_run(campaign=campaign)
    if run is None and campaign.status not in (Campaign.Status.SCHEDULED, Campaign.Status.DRAFT):
        raise CampaignError("Nothing to cancel: the campaign is not scheduled or running.")
    with transaction.atomic():
        if run is not None:
            cancelled = campaign_run_cancel(run=run)
        Campaign.objects.filter(pk=campaign.pk).update(
            status=Campaign.Status.CANCELLED, updated_at=timezone.now()
        )
        campaign.refresh_from_db()
        campaign_schedule_sync(campaign=campaign)
    return cancelled


def campaign_delete(*, campaign: Campaign) -> None:
    """Delete the campaign, its runs and its beat entry; stop an active run first.

    The run's Deliveries stay (they record what was sent); cancelling the
    active run first leaves none of them waiting to be sent.
    """
    with transaction.atomic():
        run = campaign_active_run(campaign=campaign)
        if run is not None:
            campaign_run_cancel(run=run)
        campaign_schedule_remove(campaign=campaign)
        campaign.delete()


def campaign_render(*, campaign: Campaign, recipient: Recipient) -> tuple[str, str, str]:
    """(subject, html, text) as ``recipient`` would get it. Raises on a broken render."""
    template = campaign.template
    return preview_render(
        subject=template.subject,
        html_body=template_sent_html(template),
        text_body=template.text_body,
        context=templating.plain_data(campaign.context or {}),
        recipient=recipient,
    )


def campaign_preview_message(*, campaign: Campaign, recipient: Recipient):
    """The email ``recipient`` would get from the campaign now (not sent): the
    real links and List-Unsubscribe headers of a saved recipient. Raises on a
    broken render."""
    return message_preview(
        template=campaign.template,
        context=templating.plain_data(campaign.context or {}),
        recipient=recipient,
        from_email=campaign.from_header,
    )


def campaign_send_test(
    *,
    campaign: Campaign,
    to: str,
    sender: SenderIdentity | None,
    render_as: Recipient | None = None,
) -> str:
    """Send the campaign's message to one address now, marked as a test.

    Rendered with ``render_as``'s data (a chosen recipient; default: the
    address's own data, or sample data), with the campaign's headers
    (List-Unsubscribe); it creates no contact and no Delivery (see
    ``notifier.services.previews``). ``sender`` is an address identity
    (None: the default sender). Returns the address it went to.
    """
    if sender is not None:
        _raise_problems(_sender_problems(sender))
    try:
        return message_send_test(
            to=to,
            template=campaign.template,
            context=templating.plain_data(campaign.context or {}),
            render_as=render_as,
            from_email=sender.from_header if sender is not None else "",
            transport=campaign.transport,
        )
    except (NotifierError, templating.ContextNotPlainData) as exc:
        raise CampaignError(str(exc)) from exc
    except Exception as exc:  # the template does not render for this recipient
        raise CampaignError(f"Could not render the message: {exc}") from exc
