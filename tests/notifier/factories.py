import factory
from django.utils import timezone

from notifier.models import Delivery, DeliveryGroup, Recipient, SenderIdentity, Template, Topic


class RecipientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Recipient
        django_get_or_create = ("email",)

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    name = factory.Sequence(lambda n: f"Person {n}")


class TemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Template

    name = factory.Sequence(lambda n: f"template-{n}")
    subject = "Hello {{ recipient.first_name }}"
    html_body = "<p>Hi {{ recipient.name }}, your code is <b>{{ code }}</b>.</p>"
    text_body = ""


class SenderIdentityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SenderIdentity
        django_get_or_create = ("email",)

    name = "Shop"
    email = "news@shop.example"


class DeliveryFactory(factory.django.DjangoModelFactory):
    """A pending outbox row, as a campaign run or a digest writes it."""

    class Meta:
        model = Delivery

    recipient = factory.SubFactory(RecipientFactory)
    kind = Delivery.Kind.CAMPAIGN
    template = factory.SubFactory(TemplateFactory)
    context = factory.LazyFunction(lambda: {"code": "A1"})
    transport = "esp"
    next_attempt_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        # A row of a run (``run_id=N``) belongs to the DeliveryGroup N.
        if kwargs.get("run_id") is not None:
            DeliveryGroup.objects.get_or_create(pk=kwargs["run_id"], defaults={"owner": "test"})
        return super()._create(model_class, *args, **kwargs)


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"topic-{n}")
    name = factory.Sequence(lambda n: f"Topic {n}")
    default_frequency = "hourly"
    digest_item = "{{ data.title }}"
