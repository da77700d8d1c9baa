"""Demo lists, a segment and draft campaigns (one with an A/B test) for
``make run`` (idempotent)."""

from django.db import transaction

from campaigns.models import (
    Campaign,
    CampaignVariant,
    ContactList,
    ListMembership,
    Segment,
    SegmentCondition,
    WinnerMetric,
)
from notifier.models import Recipient, SenderIdentity, Template

DEMO_CONTEXT = {
    "product": "Notifier",
    "steps": ["Import your contacts", "Write a template", "Schedule a campaign"],
}


@transaction.atomic
def demo_campaigns_setup() -> None:
    newsletter, _ = ContactList.objects.get_or_create(
        name="Newsletter", defaults={"description": "Everyone who asked for news (demo)."}
    )
    ListMembership.objects.bulk_create(
        [
            ListMembership(contact_list=newsletter, recipient=r)
            for r in Recipient.objects.filter(email__endswith="@example.com")
        ],
        ignore_conflicts=True,
    )
    pro, created = Segment.objects.get_or_create(
        name="Pro plan", defaults={"description": "Recipients whose plan attribute is pro."}
    )
    if created:
        SegmentCondition.objects.create(
            segment=pro, field="attribute", attribute="plan", operator="equals", value="pro"
        )
    template = Template.objects.filter(name="Welcome", kind=Template.Kind.CAMPAIGN).first()
    if template is None:
        return
    sender, _ = SenderIdentity.objects.get_or_create(
        email="news@example.com", defaults={"name": "Notifier demo"}
    )
    campaign, created = Campaign.objects.get_or_create(
        name="Welcome (demo)",
        defaults={"template": template, "context": DEMO_CONTEXT, "sender": sender},
    )
    if created:
        campaign.contact_lists.set([newsletter])
        campaign.segments.set([pro])
    # An A/B test to try: half the list gets one of two subjects, and the
    # marketer chooses the winner on the run's results page.
    ab, created = Campaign.objects.get_or_create(
        name="Spring offer (A/B demo)",
        defaults={
            "template": template,
            "context": DEMO_CONTEXT,
            "sender": sender,
            "ab_test_share": 50,
            "ab_winner_metric": WinnerMetric.MANUAL,
            "ab_wait_minutes": 60,
        },
    )
    if created:
        ab.contact_lists.set([newsletter])
        for position, subject in enumerate(
            ("Spring is here at {{ product }}", "{{ recipient.first_name }}, 20% off this spring")
        ):
            CampaignVariant.objects.create(campaign=ab, position=position, subject=subject)
