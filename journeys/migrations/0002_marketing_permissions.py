"""Journeys are campaign material: the "Marketing" group edits them and reads
who is inside."""

from django.db import migrations

GROUP = "Marketing"
ALL = ("add", "change", "delete", "view")
PERMISSIONS = {
    ("journeys", "journey"): ALL,
    ("journeys", "journeystep"): ALL,
    ("journeys", "journeyenrollment"): ("view",),
}


def grant(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config("journeys")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    for (app_label, model), actions in PERMISSIONS.items():
        group.permissions.add(
            *Permission.objects.filter(
                content_type__app_label=app_label,
                content_type__model=model,
                codename__in=[f"{action}_{model}" for action in actions],
            )
        )


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    group = Group.objects.filter(name=GROUP).first()
    if group is not None:
        group.permissions.remove(*group.permissions.filter(content_type__app_label="journeys"))


class Migration(migrations.Migration):
    dependencies = [
        ("journeys", "0001_journeys"),
        ("campaigns", "0002_marketing_group"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
