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
]
