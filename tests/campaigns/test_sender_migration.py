"""The data migrations that split templates by kind and turn From addresses into
sender identities, run on rows written by the schema before them."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("notifier", "0003_partial_indexes"), ("campaigns", "0003_run_context")]
AFTER = [
    ("notifier", "0005_template_kinds_revisions_sender_identities"),
    ("campaigns", "0004_campaign_sender_identity"),
]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_templates_get_a_kind_and_campaign_froms_become_identities():
    old = _migrate(BEFORE)
    Template = old.get_model("notifier", "Template")
    Recipient = old.get_model("notifier", "Recipient")
    Delivery = old.get_model("notifier", "Delivery")
    Topic = old.get_model("notifier", "Topic")
    Campaign = old.get_model("campaigns", "Campaign")
    content = {"subject": "s", "html_body": "<p>h</p>"}
    reset = Template.objects.create(name="Password reset", **content)
    alert = Template.objects.create(name="Alert", **content)
    news = Template.objects.create(name="News", **content)
    shared = Template.objects.create(name="Shared", **content)
    unused = Template.objects.create(name="Unused", **content)
    ann = Recipient.objects.create(email="ann@example.com")
    Delivery.objects.create(recipient=ann, kind="transactional", template=reset)
    Delivery.objects.create(recipient=ann, kind="campaign", template=news, run_id=1)
    Delivery.objects.create(recipient=ann, kind="transactional", template=shared)
    Topic.objects.create(key="alerts", name="Alerts", instant_template=alert)
    Campaign.objects.create(name="A", template=news, from_email="Shop <News@Shop.example>")
    Campaign.objects.create(name="B", template=news, from_email="news@shop.example")
    Campaign.objects.create(name="C", template=shared, from_email="Help <help@shop.example>")
    Campaign.objects.create(
        name="D", template=news, from_email="a@x.example\r\nBcc: b@evil.example"
    )
    Campaign.objects.create(name="E", template=news, from_email="a@x.example, b@x.example")
    Campaign.objects.create(name="F", template=news, from_email="")

    new = _migrate(AFTER)
    Template = new.get_model("notifier", "Template")
    kinds = dict(Template.objects.values_list("name", "kind"))
    assert kinds == {
        "Password reset": "transactional",
        "Alert": "transactional",
        "Shared": "transactional",
        "News": "campaign",
        "Unused": "campaign",
        "Shared (campaign)": "campaign",  # campaign C's own copy
    }
    revisions = new.get_model("notifier", "TemplateRevision").objects
    assert revisions.filter(action="baseline").count() == 5
    assert revisions.filter(name="Shared (campaign)", action="created").exists()

    identities = new.get_model("notifier", "SenderIdentity").objects
    assert sorted(identities.values_list("name", "email")) == [
        ("Help", "help@shop.example"),
        ("Shop", "news@shop.example"),
    ]
    Campaign = new.get_model("campaigns", "Campaign")
    senders = dict(Campaign.objects.values_list("name", "sender__email"))
    assert senders == {
        "A": "news@shop.example",
        "B": "news@shop.example",
        "C": "help@shop.example",
        "D": None,  # not one clean address: back to the default sender
        "E": None,
        "F": None,
    }
    assert Campaign.objects.get(name="C").template.name == "Shared (campaign)"
    assert unused.pk  # untouched rows keep their ids

    # And back: the From addresses return.
    old = _migrate(BEFORE)
    froms = dict(old.get_model("campaigns", "Campaign").objects.values_list("name", "from_email"))
    assert froms["A"] == "Shop <news@shop.example>" and froms["F"] == ""
    _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
