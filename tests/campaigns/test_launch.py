"""Materialising a run: set-based, idempotent, one row per recipient."""

import re
import resource
import tracemalloc

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns.models import CampaignRun
from campaigns.selectors import run_batch_ranges, run_status_counts
from campaigns.services.campaigns import campaign_run_create
from campaigns.services.runs import campaign_run_launch, run_materialise
from notifier.models import Delivery, Recipient
from notifier.sending.engine import _Batch
from notifier.sending.message import delivery_build_message, group_contexts
from notifier.services.suppressions import suppression_add, suppression_reason_sql
from tests.campaigns.factories import (
    CampaignFactory,
    ContactListFactory,
    RecipientFactory,
    SegmentConditionFactory,
    add_members,
)

pytestmark = pytest.mark.django_db


def _campaign_with_audience():
    people = RecipientFactory.create_batch(10)
    first, second = ContactListFactory(), ContactListFactory()
    add_members(first, people[:6])
    add_members(second, people[4:8])  # 4 and 5 are in both
    pro = people[9]
    pro.attributes = {"plan": "pro"}
    pro.save()
    condition = SegmentConditionFactory(attribute="plan", operator="equals", value="PRO")
    campaign = CampaignFactory()
    campaign.contact_lists.set([first, second])
    campaign.segments.set([condition.segment])
    return campaign, people


def test_one_row_per_audience_member_with_suppressed_marked(fan_outs):
    campaign, people = _campaign_with_audience()
    suppression_add(email=people[0].email, reason="hard_bounce")
    Recipient.objects.filter(pk=people[1].pk).update(status="unsubscribed")
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")

    run = campaign_run_launch(run_id=run.pk)

    assert run.status == "running" and run.recipients == 9
    rows = {d.recipient_id: d for d in Delivery.objects.filter(run_id=run.pk)}
    assert set(rows) == {p.pk for p in people[:8]} | {people[9].pk}
    assert rows[people[0].pk].status == "suppressed"
    assert rows[people[0].pk].status_reason == "Not sent: the address is suppressed (hard bounce)."
    assert rows[people[1].pk].status_reason == "Not sent: the recipient has unsubscribed."
    pending = rows[people[2].pk]
    assert pending.status == "pending" and pending.kind == "campaign"
    assert pending.template_id == campaign.template_id
    # The campaign context is stored once, on the run's group, not on every row.
    assert pending.context == {} and pending.run.context == {"offer": "20% off"}
    assert pending.run.owner == "campaigns.run" and pending.run.state == "active"
    assert pending.from_email == "Shop <news@shop.example>"
    assert pending.dispatched_at is not None and pending.next_attempt_at is not None
    assert pending.uuid and len({d.uuid for d in rows.values()}) == 9
    assert run_status_counts(run_id=run.pk) == {"pending": 7, "suppressed": 2}
    assert fan_outs == [run.pk]


def test_launching_twice_materialises_and_publishes_once(fan_outs):
    campaign, _ = _campaign_with_audience()
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)
    campaign_run_launch(run_id=run.pk)
    assert Delivery.objects.filter(run_id=run.pk).count() == 9
    assert fan_outs == [run.pk]
    # The insert itself is idempotent too.
    assert run_materialise(run=CampaignRun.objects.get(pk=run.pk)) == 0


@pytest.mark.postgresql  # the uuid is made in SQL per dialect; SQLite's is version 4
def test_launched_rows_get_time_ordered_version_7_uuids(fan_outs):
    campaign, _ = _campaign_with_audience()
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    before = int(timezone.now().timestamp() * 1000)
    campaign_run_launch(run_id=run.pk)
    after = int(timezone.now().timestamp() * 1000)

    uuids = list(
        Delivery.objects.filter(run_id=run.pk).order_by("id").values_list("uuid", flat=True)
    )
    assert len(uuids) == 9 and len(set(uuids)) == 9
    assert {(u.version, u.variant) for u in uuids} == {(7, "specified in RFC 4122")}
    stamps = [u.int >> 80 for u in uuids]  # the first 48 bits: Unix milliseconds
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after


@pytest.mark.postgresql  # a question for PostgreSQL's planner
def test_the_launch_reads_the_suppressions_once_or_by_their_index():
    """Never a scan of every suppression per member: a join the planner can
    hash (one read of the active suppressions) or probe through the unique
    index, whichever is cheaper."""
    join, sql, params = suppression_reason_sql(email="m.email", status="m.status")
    query = f"EXPLAIN SELECT {sql} FROM notifier_recipient m {join}"
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "SubPlan" not in plan and "Join" in plan, plan
        for method in ("hashjoin", "mergejoin", "seqscan"):
            cursor.execute(f"SET LOCAL enable_{method} = off")
        cursor.execute(query, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # Left a nested loop, each member is one probe of the unique index.
    assert "suppression_one_active_per_email" in plan, plan


def test_batch_ranges_cover_the_pending_rows(fan_outs):
    campaign, _ = _campaign_with_audience()
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")
    campaign_run_launch(run_id=run.pk)
    ranges = run_batch_ranges(run_id=run.pk, batch_size=3)
    pending = list(
        Delivery.objects.filter(run_id=run.pk, status="pending")
        .order_by("id")
        .values_list("id", flat=True)
    )
    assert len(ranges) == 3
    covered = [i for first, last in ranges for i in pending if first <= i <= last]
    assert covered == pending


def _bulk_recipients(count: int, list_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifier_recipient
                (email, name, attributes, time_zone, locale, status, created_at, updated_at)
            SELECT 'bulk' || n || '@example.com', 'Bulk ' || n, '{}'::jsonb, 'UTC', 'en',
                   'active', now(), now()
            FROM generate_series(1, %s) AS n
            """,
            [count],
        )
        cursor.execute(
            """
            INSERT INTO campaigns_listmembership (contact_list_id, recipient_id, added_at)
            SELECT %s, id, now() FROM notifier_recipient WHERE email LIKE 'bulk%%'
            """,
            [list_id],
        )


@pytest.mark.postgresql
def test_100k_launch_is_set_based_and_memory_flat(django_assert_max_num_queries, capsys):
    """Acceptance: a 100,000-recipient run in a few queries, flat memory.

    The chord is really published; the rows stay uncommitted (this test's
    transaction), so a worker left running by another test sends nothing.
    """
    contact_list = ContactListFactory()
    _bulk_recipients(100_000, contact_list.pk)
    campaign = CampaignFactory()
    campaign.contact_lists.set([contact_list])
    run = campaign_run_create(campaign_id=campaign.pk, trigger="manual")

    tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # lock run + open its delivery group (one upsert) + audience lists +
    # segments + work_mem + INSERT ... SELECT + save run + ANALYZE + batch
    # ranges + publish (no queries)
    with django_assert_max_num_queries(11) as ctx:
        campaign_run_launch(run_id=run.pk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    assert Delivery.objects.filter(run_id=run.pk).count() == 100_000
    with capsys.disabled():
        print(
            f"\n100k launch: {len(ctx.captured_queries)} queries, "
            f"Python peak allocation {peak / 1024:.0f} KiB, "
            f"max RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB"
        )
    for query in ctx.captured_queries:
        assert "bulk1@example.com" not in query["sql"]


def test_messages_render_with_the_context_the_run_took_at_launch(fan_outs):
    campaign, people = _campaign_with_audience()
    run = campaign_run_launch(
        run_id=campaign_run_create(campaign_id=campaign.pk, trigger="manual").pk
    )
    campaign.context = {"offer": "edited after launch"}
    campaign.save()
    pending = Delivery.objects.get(run_id=run.pk, recipient=people[2])

    message = delivery_build_message(pending)

    html = message.alternatives[0][0]
    assert "20% off" in html and "edited" not in html


@pytest.mark.postgresql
def test_a_big_launch_leaves_batch_claims_looking_rows_up_by_key(fan_outs):
    """Statistics taken when no row was pending would make the planner claim
    ids by scanning every due row; the launch refreshes them."""
    contact_list = ContactListFactory()
    _bulk_recipients(20_000, contact_list.pk)
    first, second = CampaignFactory(), CampaignFactory()
    for campaign in (first, second):
        campaign.contact_lists.set([contact_list])
    done = campaign_run_launch(
        run_id=campaign_run_create(campaign_id=first.pk, trigger="manual").pk
    )
    Delivery.objects.filter(run_id=done.pk).update(status="sent")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifier_delivery")  # no row pending

    run = campaign_run_launch(
        run_id=campaign_run_create(campaign_id=second.pk, trigger="manual").pk
    )

    one = Delivery.objects.filter(run_id=run.pk).values_list("id", flat=True).first()
    plain_claim = Delivery.objects.filter(
        id__in=[one], status="pending", next_attempt_at__lte=timezone.now()
    )
    assert "notifier_delivery_pkey" in plain_claim.explain()
    # And the batch's own claim finds rows by key even with stale statistics.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifier_delivery")
    Delivery.objects.filter(run_id=run.pk).update(status="sent")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifier_delivery")  # no row pending again
    Delivery.objects.filter(run_id=run.pk).update(status="pending")
    batch = _Batch([one])
    with CaptureQueriesContext(connection) as queries:
        batch.claim()
    batch.finish()  # hands the row back and closes the claim's journal
    claim_sql = next(q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE"))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + claim_sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "notifier_delivery_pkey" in plan, plan


def test_a_template_cannot_use_up_the_run_context(fan_outs):
    campaign, _ = _campaign_with_audience()
    campaign.context = {"coupons": ["C1", "C2", "C3"]}
    campaign.template.html_body = "{{ coupons.pop }}{{ coupons.0 }}-{{ coupons|length }}"
    campaign.template.save()
    campaign.save()
    run = campaign_run_launch(
        run_id=campaign_run_create(campaign_id=campaign.pk, trigger="manual").pk
    )
    shared = group_contexts({run.pk})[run.pk]  # as a batch loads it, once for all its rows

    htmls = [
        delivery_build_message(d, run_context=shared).alternatives[0][0]
        for d in Delivery.objects.filter(run_id=run.pk)[:3]
    ]

    # Each message is a whole document; its body is the same for all three.
    assert [re.search(r"C\d-\d", html)[0] for html in htmls] == ["C1-3"] * 3
    assert shared == {"coupons": ["C1", "C2", "C3"]}
