"""Delivery.failure_kind: why a row failed, as data (it was only in the text
of status_reason). Existing failed rows get theirs from the texts the sender
wrote: "Gave up after N attempts" (transient errors exhausted), a last error
starting "Could not render" (a broken render), anything else permanent."""

from django.db import migrations, models
from django.db.models import Q


def derive_failure_kind(apps, schema_editor):
    Delivery = apps.get_model("notifier", "Delivery")
    failed = Delivery.objects.filter(status="failed")
    failed.filter(status_reason__startswith="Gave up").update(failure_kind="transient_exhausted")
    failed.filter(last_error__startswith="Could not render").exclude(
        status_reason__startswith="Gave up"
    ).update(failure_kind="render")
    failed.filter(failure_kind="").update(failure_kind="permanent")


def forget_failure_kind(apps, schema_editor):
    Delivery = apps.get_model("notifier", "Delivery")
    Delivery.objects.filter(~Q(failure_kind="")).update(failure_kind="")


class Migration(migrations.Migration):
    dependencies = [
        ("notifier", "0006_recipient_public_id"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="failure_kind",
            field=models.CharField(
                blank=True,
                choices=[
                    ("", "-"),
                    ("transient_exhausted", "Transient errors, attempts exhausted"),
                    ("permanent", "Permanent error"),
                    ("render", "Could not render"),
                ],
                default="",
                max_length=24,
            ),
        ),
        migrations.RunPython(derive_failure_kind, forget_failure_kind, elidable=True),
    ]
