import factory

from notifier.models import Recipient, Template


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
