"""The "Marketing" group: contacts, lists, segments, templates and campaigns;
deliveries read-only; nothing else (no users, groups or system settings)."""

from django.db import migrations

GROUP = "Marketing"
ALL = ("add", "change", "delete", "view")
PERMISSIONS = {
    ("notifier", "recipient"): ALL,
    ("notifier", "template"): ALL,
    ("notifier", "delivery"): ("view",),
    ("campaigns", "contactlist"): ALL,
    ("campaigns", "listmembership"): ALL,
    ("campaigns", "segment"): ALL,
    ("campaigns", "segmentcondition"): ALL,
    ("campaigns", "campaign"): ALL,
    ("campaigns", "campaignrun"): ("view",),
}


def create_group(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran; make sure
    # the ones this group needs exist now.
    for app_label in ("notifier", "campaigns"):
        app_config = apps.get_app_config(app_label)
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    wanted = []
    for (app_label, model), actions in PERMISSIONS.items():
        for action in actions:
            wanted.append(
                Permission.objects.get(
                    content_type__app_label=app_label,
                    content_type__model=model,
                    codename=f"{action}_{model}",
                )
            )
    group.permissions.set(wanted)


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0001_lists_segments_campaigns"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
