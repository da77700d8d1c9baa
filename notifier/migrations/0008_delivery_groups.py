"""DeliveryGroup: the group a Delivery is sent with (a campaign run), owned by
notifier. ``Delivery.run_id`` (a bare integer naming a campaign run) becomes
a foreign key to it, on the same column.

Every run id found on a Delivery gets a group with that id (active, no
context) so the key can be added without touching a Delivery row; the
campaigns app's next migration gives its runs' groups their state, context
and label, and creates groups for runs that have no Delivery yet.
"""

import django.db.models.deletion
from django.db import migrations, models


def groups_for_existing_run_ids(apps, schema_editor):
    Delivery = apps.get_model("notifier", "Delivery")
    DeliveryGroup = apps.get_model("notifier", "DeliveryGroup")
    run_ids = (
        Delivery.objects.filter(run_id__isnull=False)
        .order_by()
        .values_list("run_id", flat=True)
        .distinct()
    )
    DeliveryGroup.objects.bulk_create(
        [DeliveryGroup(id=run_id, owner="run") for run_id in run_ids.iterator()],
        batch_size=1000,
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("notifier", "0007_delivery_failure_kind"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryGroup",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("owner", models.CharField(max_length=64)),
                ("label", models.CharField(blank=True, max_length=200)),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("active", "Active"),
                            ("paused", "Paused"),
                            ("cancelled", "Cancelled"),
                        ],
                        default="active",
                        max_length=16,
                    ),
                ),
                ("context", models.JSONField(blank=True, default=dict)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["-id"]},
        ),
        migrations.RunPython(groups_for_existing_run_ids, migrations.RunPython.noop),
        # The index and the constraint name the field; the column stays run_id.
        migrations.RemoveConstraint(model_name="delivery", name="delivery_one_per_run_recipient"),
        migrations.RemoveIndex(model_name="delivery", name="delivery_run_status_idx"),
        migrations.AlterField(
            model_name="delivery",
            name="run_id",
            field=models.BigIntegerField(blank=True, null=True, db_column="run_id"),
        ),
        migrations.RenameField(model_name="delivery", old_name="run_id", new_name="run"),
        migrations.AlterField(
            model_name="delivery",
            name="run",
            field=models.ForeignKey(
                blank=True,
                db_column="run_id",
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="deliveries",
                to="notifier.deliverygroup",
            ),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(fields=["run", "status"], name="delivery_run_status_idx"),
        ),
        migrations.AddConstraint(
            model_name="delivery",
            constraint=models.UniqueConstraint(
                fields=("recipient", "run"), name="delivery_one_per_run_recipient"
            ),
        ),
    ]
