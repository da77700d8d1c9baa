"""Campaigns pick a sender identity instead of typing a From, and use campaign
templates only.

The old ``from_email`` column stays (unused) for one release, as the runbook's
upgrade rule asks; the values are copied, not moved.

Each distinct valid ``from_email`` becomes an address identity; a value that
is not exactly one valid address (control characters, two addresses) is
dropped and its campaign falls back to the default sender. A campaign whose
template is transactional (also used by send(), the API or a topic) gets a
campaign copy of it, so marketing edits never reach transactional mail.
"""

import re
import unicodedata
from email.utils import formataddr, parseaddr

import django.db.models.deletion
from django.db import migrations, models

_ADDRESS = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+$")


def _one_address(value: str) -> tuple[str, str] | None:
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        return None
    name, address = parseaddr(value)
    if not _ADDRESS.match(address) or "," in value.replace(f'"{name}"', ""):
        return None
    return name.strip().replace('"', ""), address.lower()


def _check_constraints_now(schema_editor):
    # Foreign keys are checked at commit on PostgreSQL; the index this
    # migration creates after the updates cannot be built while those checks
    # are pending, so run them as each update happens.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def senders_from_addresses(apps, schema_editor):
    _check_constraints_now(schema_editor)
    Campaign = apps.get_model("campaigns", "Campaign")
    SenderIdentity = apps.get_model("notifier", "SenderIdentity")
    Template = apps.get_model("notifier", "Template")
    TemplateRevision = apps.get_model("notifier", "TemplateRevision")
    for campaign in Campaign.objects.exclude(from_email="").order_by("pk"):
        parsed = _one_address(campaign.from_email)
        if parsed is None:
            print(
                f"\n  Campaign {campaign.pk}: From {campaign.from_email!r} dropped (not one address)"
            )
            continue
        name, address = parsed
        identity, _ = SenderIdentity.objects.get_or_create(email=address, defaults={"name": name})
        if name and not identity.name:  # the first campaign had a bare address
            identity.name = name
            identity.save(update_fields=["name"])
        Campaign.objects.filter(pk=campaign.pk).update(sender=identity)
    copies = {}
    for campaign in Campaign.objects.filter(template__kind="transactional").select_related(
        "template"
    ):
        original = campaign.template
        if original.pk not in copies:
            name = f"{original.name} (campaign)"[:200]
            while Template.objects.filter(name=name).exists():
                name = f"{name[:190]} {original.pk}"
            copy = Template.objects.create(
                name=name,
                kind="campaign",
                subject=original.subject,
                html_body=original.html_body,
                text_body=original.text_body,
            )
            TemplateRevision.objects.create(
                template=copy,
                action="created",
                name=copy.name,
                kind=copy.kind,
                subject=copy.subject,
                html_body=copy.html_body,
                text_body=copy.text_body,
                changed_by_name="(migration)",
            )
            copies[original.pk] = copy
        Campaign.objects.filter(pk=campaign.pk).update(template=copies[original.pk])


def addresses_from_senders(apps, schema_editor):
    _check_constraints_now(schema_editor)
    Campaign = apps.get_model("campaigns", "Campaign")
    for campaign in Campaign.objects.filter(sender__isnull=False).select_related("sender"):
        sender = campaign.sender
        value = formataddr((sender.name, sender.email)) if sender.name else sender.email
        Campaign.objects.filter(pk=campaign.pk).update(from_email=value)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0003_run_context"),
        ("notifier", "0005_template_kinds_revisions_sender_identities"),
    ]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="sender",
            field=models.ForeignKey(
                blank=True,
                help_text="Who the mail is from. Leave empty for the default sender.",
                limit_choices_to={"domain": ""},
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="campaigns",
                to="notifier.senderidentity",
            ),
        ),
        migrations.RunPython(senders_from_addresses, addresses_from_senders),
        migrations.AlterField(
            model_name="campaign",
            name="from_email",
            field=models.CharField(blank=True, editable=False, max_length=320),
        ),
        migrations.AlterField(
            model_name="campaign",
            name="template",
            field=models.ForeignKey(
                limit_choices_to={"kind": "campaign"},
                on_delete=django.db.models.deletion.PROTECT,
                related_name="campaigns",
                to="notifier.template",
            ),
        ),
    ]
