"""Each campaign run sends with notifier's DeliveryGroup of the same id.

For every run: its group (created here when the run has no Delivery yet)
takes the run's state (paused and cancelled runs -> paused and cancelled
groups; queued, running and done -> active), the context the run took at
launch, the owner and a label. Groups of runs deleted with their campaign
(their Deliveries are kept) stay, marked cancelled. Then the run's own
context column goes: the group holds it.
"""

from django.db import migrations

OWNER = "campaigns.run"
STATE_FOR_STATUS = {"paused": "paused", "cancelled": "cancelled"}


def runs_to_groups(apps, schema_editor):
    CampaignRun = apps.get_model("campaigns", "CampaignRun")
    DeliveryGroup = apps.get_model("notifier", "DeliveryGroup")
    run_ids = set()
    for run in CampaignRun.objects.order_by("pk").iterator():
        run_ids.add(run.pk)
        DeliveryGroup.objects.update_or_create(
            pk=run.pk,
            defaults={
                "owner": OWNER,
                "label": f"Run {run.pk} of campaign {run.campaign_id}",
                "state": STATE_FOR_STATUS.get(run.status, "active"),
                "context": run.context or {},
            },
        )
    # Groups made by notifier for run ids whose run is gone.
    DeliveryGroup.objects.filter(owner="run").exclude(pk__in=run_ids).update(
        owner=OWNER, state="cancelled"
    )


def groups_to_runs(apps, schema_editor):
    CampaignRun = apps.get_model("campaigns", "CampaignRun")
    DeliveryGroup = apps.get_model("notifier", "DeliveryGroup")
    for pk, context in DeliveryGroup.objects.filter(owner=OWNER).values_list("pk", "context"):
        CampaignRun.objects.filter(pk=pk).update(context=context)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0005_run_problems"),
        ("notifier", "0008_delivery_groups"),
    ]

    operations = [
        migrations.RunPython(runs_to_groups, groups_to_runs),
        migrations.RemoveField(model_name="campaignrun", name="context"),
    ]
