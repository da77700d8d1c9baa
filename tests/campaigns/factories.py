import factory

from campaigns.models import Campaign, ContactList, ListMembership, Segment, SegmentCondition
from tests.notifier.factories import RecipientFactory, SenderIdentityFactory, TemplateFactory


class ContactListFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ContactList

    name = factory.Sequence(lambda n: f"list-{n}")


class SegmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Segment

    name = factory.Sequence(lambda n: f"segment-{n}")


class SegmentConditionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SegmentCondition

    segment = factory.SubFactory(SegmentFactory)
    field = "attribute"
    attribute = "plan"
    operator = "equals"
    value = "pro"


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign

    name = factory.Sequence(lambda n: f"campaign-{n}")
    template = factory.SubFactory(
        TemplateFactory,
        kind="campaign",
        subject="News for {{ recipient.first_name }}",
        html_body="<p>Hello {{ recipient.name }} ({{ recipient.email }}), {{ offer }}</p>",
    )
    context = factory.LazyFunction(lambda: {"offer": "20% off"})
    sender = factory.SubFactory(SenderIdentityFactory)


def campaign_form_data(**overrides) -> dict:
    """What the admin's campaign form posts for a campaign sent by hand."""
    data = {
        "name": "Spring sale",
        "context": '{"offer": "10% off"}',
        "transport": "esp",
        "schedule": "none",
        "send_at_0": "",
        "send_at_1": "",
        "cron_minute": "0",
        "cron_hour": "*",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "cron_day_of_week": "*",
        "schedule_time_zone": "Europe/Paris",
    }
    data.update(overrides)
    return data


def add_members(contact_list: ContactList, recipients) -> None:
    ListMembership.objects.bulk_create(
        [ListMembership(contact_list=contact_list, recipient=r) for r in recipients]
    )


__all__ = [
    "CampaignFactory",
    "ContactListFactory",
    "RecipientFactory",
    "SegmentConditionFactory",
    "SegmentFactory",
    "add_members",
    "campaign_form_data",
]
