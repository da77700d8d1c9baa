"""The Marketing group edits A/B variants and reads runs' A/B tests."""

from django.db import migrations

MARKETING_PERMISSIONS = {
    "campaignvariant": ("add", "change", "delete", "view"),
    "runabtest": ("view",),
}


def forward(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config("campaigns")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name="Marketing").first()
    if group is None:
        return
    for model, actions in MARKETING_PERMISSIONS.items():
        group.permissions.add(
            *Permission.objects.filter(
                content_type__app_label="campaigns",
                codename__in=[f"{action}_{model}" for action in actions],
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0012_ab_tests"),
    ]

    operations = [
        migrations.RunPython(forward, migrations.RunPython.noop),
    ]
