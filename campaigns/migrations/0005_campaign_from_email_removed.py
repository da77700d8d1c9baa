"""The free-text From is gone: campaigns pick a sender identity (0004 moved the
values over), and pick among campaign templates only.

Apart from 0004 so PostgreSQL has no pending constraint checks from its
updates when the table is altered.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0004_campaign_sender_identity")]

    operations = [
        migrations.RemoveField(model_name="campaign", name="from_email"),
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
