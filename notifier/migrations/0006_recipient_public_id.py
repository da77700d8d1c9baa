"""Recipients get a random public id for the links in their emails.

Existing rows are filled by the database itself (one statement on
PostgreSQL, however many recipients), then the column becomes unique and
non-null with a database default, so bulk SQL inserts get one too.
"""

import uuid

from django.db import migrations, models

import notifier.models


def fill_public_ids(apps, schema_editor):
    Recipient = apps.get_model("notifier", "Recipient")
    table = schema_editor.quote_name(Recipient._meta.db_table)
    random_uuid = (
        "gen_random_uuid()"
        if schema_editor.connection.vendor == "postgresql"
        else "lower(hex(randomblob(16)))"
    )
    schema_editor.execute(f"UPDATE {table} SET public_id = {random_uuid} WHERE public_id IS NULL")


class Migration(migrations.Migration):
    dependencies = [
        ("notifier", "0005_template_kinds_revisions_sender_identities"),
    ]

    operations = [
        migrations.AddField(
            model_name="recipient",
            name="public_id",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(fill_public_ids, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="recipient",
            name="public_id",
            field=models.UUIDField(
                db_default=notifier.models.RandomUUID(),
                default=uuid.uuid4,
                editable=False,
                unique=True,
            ),
        ),
    ]
