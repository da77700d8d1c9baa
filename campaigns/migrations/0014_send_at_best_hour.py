from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0013_ab_test_permissions")]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="send_at_best_hour",
            field=models.BooleanField(
                default=False,
                help_text="Each recipient gets the message at the hour of their day at which "
                "they opened and clicked most over the last 90 days; recipients with too "
                "little history get the local send time above. Needs a local send time.",
                verbose_name="Send at each recipient's best hour",
            ),
        ),
    ]
