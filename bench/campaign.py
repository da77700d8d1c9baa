"""Campaigns as the benchmark and the fault runs use them: through the
campaigns services, the way staff would, on recipients made set-based."""

import time
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from campaigns.models import Campaign, CampaignRun, ContactList
from campaigns.selectors import run_status_counts, run_totals
from campaigns.services.campaigns import (
    campaign_launch_now,
    campaign_run_create,
    campaign_schedule,
)
from notifier.models import Delivery, Recipient, SenderIdentity, Template


def recreate_database() -> None:
    """Drop and create the configured database, then migrate it (benchmark
    and fault runs start from nothing)."""
    import psycopg
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    params = settings.DATABASES["default"]
    dsn = (
        f"host={params['HOST'] or '127.0.0.1'} port={params['PORT'] or 5432} "
        f"user={params['USER']} dbname=postgres"
    )
    if params.get("PASSWORD"):
        dsn += f" password={params['PASSWORD']}"
    connections.close_all()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{params["NAME"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{params["NAME"]}"')
    call_command("migrate", verbosity=0)


def ensure_recipients(n: int) -> None:
    """Recipients u0..u(n-1)@bench.example, created with one INSERT ... SELECT."""
    have = Recipient.objects.filter(email__endswith="@bench.example").count()
    if have >= n:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifier_recipient
                (email, name, attributes, time_zone, locale, status, created_at, updated_at)
            SELECT 'u' || i || '@bench.example', 'Reader ' || i,
                   jsonb_build_object('plan', CASE WHEN i %% 3 = 0 THEN 'pro' ELSE 'free' END,
                                      'vip', i %% 10 = 0),
                   'UTC', 'en', 'active', now(), now()
            FROM generate_series(%s, %s - 1) AS i
            ON CONFLICT (email) DO NOTHING
            """,
            [have, n],
        )
        # As autovacuum would have on a live database, where contacts were
        # imported long before a launch: real row counts for the planner, hint
        # bits and visibility map set (else the launch's first read of each
        # fresh page pays for that write).
        cursor.execute("VACUUM ANALYZE notifier_recipient")


def audience_list(n: int) -> ContactList:
    """A contact list holding the first ``n`` bench recipients."""
    contact_list, created = ContactList.objects.get_or_create(name=f"bench-{n}")
    if created:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO campaigns_listmembership (contact_list_id, recipient_id, added_at)
                SELECT %s, id, now() FROM notifier_recipient
                WHERE email LIKE 'u%%@bench.example'
                ORDER BY id LIMIT %s
                ON CONFLICT DO NOTHING
                """,
                [contact_list.pk, n],
            )
            cursor.execute("VACUUM ANALYZE campaigns_listmembership")
    return contact_list


def _campaign(n: int, transport: str, template: Template, **fields) -> Campaign:
    campaign = Campaign.objects.create(
        name=f"bench {n} {transport} {time.time_ns()}",
        template=template,
        transport=transport,
        context={"items": _items()},
        sender=SenderIdentity.objects.get_or_create(
            email="bench@bench.example", defaults={"name": "Bench"}
        )[0],
        **fields,
    )
    campaign.contact_lists.set([audience_list(n)])
    return campaign


def _items():
    from bench.run import ITEMS

    return ITEMS


def launch(*, n: int, transport: str, template: Template) -> CampaignRun:
    """Launch a campaign to ``n`` recipients as staff would ("Launch now")."""
    ensure_recipients(n)
    campaign = _campaign(n, transport, template)
    return campaign_launch_now(campaign=campaign)


def queued_run(*, n: int, template: Template) -> CampaignRun:
    """A queued run of a new campaign to ``n`` recipients (not launched)."""
    ensure_recipients(n)
    campaign = _campaign(n, "esp", template)
    return campaign_run_create(campaign_id=campaign.pk, trigger=CampaignRun.Trigger.MANUAL)


def chaos_template() -> Template:
    template, _ = Template.objects.update_or_create(
        name="Chaos",
        defaults={
            "kind": Template.Kind.CAMPAIGN,
            "subject": "Hello {{ recipient.first_name }}",
            "html_body": "<p>Hi {{ recipient.name }}, this is message {{ recipient.email }}.</p>",
            "text_body": "",
        },
    )
    return template


def run_closed_with_matching_totals(run_id: int, wait: float = 90.0) -> str:
    """'' if the run closed with totals equal to its rows, else what is wrong."""
    deadline = time.monotonic() + wait
    run = CampaignRun.objects.get(pk=run_id)
    while run.finished_at is None and time.monotonic() < deadline:
        time.sleep(0.5)
        run.refresh_from_db()
    if run.finished_at is None:
        return f"run not closed ({run.status})"
    expected = run_totals(run_status_counts(run_id=run_id))
    if run.totals != expected:
        return f"run totals {run.totals} != rows {expected}"
    return ""


def recurring_runs_check(stack, *, minutes: int, n: int = 200) -> tuple[str, dict]:
    """Schedule a campaign every minute while two beats run; count the runs.

    Returns (problem or '', counts for the table).
    """
    campaign = _campaign(
        n,
        "esp",
        chaos_template(),
        schedule=Campaign.Schedule.CRONTAB,
        cron_minute="*",
        cron_hour="*",
    )
    campaign_schedule(campaign=campaign)
    started = timezone.now()
    time.sleep(minutes * 60 + 20)
    campaign.schedule = Campaign.Schedule.NONE
    from campaigns.services.campaigns import campaign_unschedule

    campaign_unschedule(campaign=campaign)
    runs = list(campaign.runs.order_by("created_at"))
    for run in runs:
        run_closed_with_matching_totals(run.pk, wait=60)
    accepted = stack.accepted()
    rows = list(
        Delivery.objects.filter(run_id__in=[r.pk for r in runs]).values_list("uuid", "status")
    )
    once = sum(1 for uuid, _ in rows if accepted.get(str(uuid), 0) == 1)
    dupes = sum(1 for uuid, _ in rows if accepted.get(str(uuid), 0) > 1)
    missing = sum(
        1 for uuid, status in rows if accepted.get(str(uuid), 0) == 0 and status != "unknown"
    )
    ticks = {r.created_at.replace(second=0, microsecond=0) for r in runs}
    problems = []
    if len(ticks) != len(runs):
        problems.append(f"{len(runs)} runs for {len(ticks)} ticks")
    elapsed_ticks = int((timezone.now() - started) / timedelta(minutes=1))
    if len(runs) < elapsed_ticks - 1:
        problems.append(f"only {len(runs)} runs in {elapsed_ticks} minutes")
    counts = {
        "recipients": len(rows),
        "exactly_once": once,
        "duplicates": dupes,
        "missing": missing,
        "unknown": sum(1 for _, status in rows if status == "unknown"),
        "final": {"runs": len(runs)},
    }
    return "; ".join(problems), counts
