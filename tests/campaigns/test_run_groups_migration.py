"""The migrations that move campaign runs onto notifier's DeliveryGroup keep
every run's state, context and rows: runs in every state, a run with no rows
yet, and rows of a run deleted with its campaign."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("notifier", "0007_delivery_failure_kind"), ("campaigns", "0005_run_problems")]
AFTER = [("notifier", "0008_delivery_groups"), ("campaigns", "0006_runs_send_with_delivery_groups")]
STATUSES = ["queued", "running", "paused", "done", "cancelled"]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def _old_data(apps) -> dict:
    Recipient = apps.get_model("notifier", "Recipient")
    Template = apps.get_model("notifier", "Template")
    Delivery = apps.get_model("notifier", "Delivery")
    Campaign = apps.get_model("campaigns", "Campaign")
    CampaignRun = apps.get_model("campaigns", "CampaignRun")
    template = Template.objects.create(name="t", subject="s", html_body="<p>{{ offer }}</p>")
    people = [Recipient.objects.create(email=f"p{i}@example.com") for i in range(3)]
    campaign = Campaign.objects.create(name="c", template=template, context={"offer": "x"})
    runs = {}
    for status in STATUSES:
        run = CampaignRun.objects.create(
            campaign=campaign, status=status, context={"offer": status}
        )
        runs[status] = run.pk
        if status == "queued":
            continue  # not launched: no rows yet
        for person in people:
            Delivery.objects.create(
                recipient=person,
                kind="campaign",
                template=template,
                run_id=run.pk,
                status="pending" if status in ("running", "paused") else "sent",
            )
    # A deleted campaign's run: its rows stay, naming a run that is gone.
    gone = CampaignRun.objects.create(
        campaign=Campaign.objects.create(name="gone", template=template), status="done"
    )
    Delivery.objects.create(recipient=people[0], template=template, run_id=gone.pk, status="sent")
    gone.campaign.delete()
    transactional = Delivery.objects.create(recipient=people[1], subject="hi", status="sent")
    return {"runs": runs, "gone": gone.pk, "transactional": transactional.pk}


@pytest.mark.django_db(transaction=True)
def test_runs_in_every_state_move_to_their_delivery_groups_without_loss():
    try:
        old = _old_data(_migrate(BEFORE))
        rows_before = dict(
            _migrate(BEFORE).get_model("notifier", "Delivery").objects.values_list("pk", "run_id")
        )
        apps = _migrate(AFTER)
        Delivery = apps.get_model("notifier", "Delivery")
        DeliveryGroup = apps.get_model("notifier", "DeliveryGroup")
        CampaignRun = apps.get_model("campaigns", "CampaignRun")

        assert dict(Delivery.objects.values_list("pk", "run_id")) == rows_before
        groups = {g.pk: g for g in DeliveryGroup.objects.all()}
        expected_state = {"paused": "paused", "cancelled": "cancelled"}
        for status, run_id in old["runs"].items():
            group = groups[run_id]
            assert group.state == expected_state.get(status, "active"), status
            assert group.context == {"offer": status}
            assert group.owner == "campaigns.run"
            assert CampaignRun.objects.filter(pk=run_id, status=status).exists()
        assert groups[old["gone"]].state == "cancelled"
        assert set(groups) == {*old["runs"].values(), old["gone"]}
        assert Delivery.objects.get(pk=old["transactional"]).run_id is None
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
