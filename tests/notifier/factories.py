import factory

from notifier.models import Recipient, Template, Topic


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


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"topic-{n}")
    name = factory.Sequence(lambda n: f"Topic {n}")
    default_frequency = "hourly"
    digest_item = "{{ data.title }}"
