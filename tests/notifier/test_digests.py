"""Digest building and scheduling, driven by the clock (``now=``): content,
cutoffs, exactly-once, local 08:00 across time zones and DST. The flows through
a real worker are in ``test_digests_e2e.py``."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifier import notify
from notifier.admin import TopicForm
from notifier.models import Delivery, Notification, Recipient
from notifier.sending import message as sending_message
from notifier.sending.message import delivery_build_message
from notifier.services.digests import building as digests_building
from notifier.services.digests import (
    digest_batches_due,
    digests_build,
    digests_run,
    hourly_window,
)
from notifier.services.digests import scheduling as digests_scheduling
from notifier.services.retries import deliveries_dispatch_due
from notifier.services.suppressions import suppression_add
from tests.notifier.factories import RecipientFactory, TopicFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)


def _event(recipient, topic, title, at, **kw):
    notification = notify(recipient, topic, {"title": title}, **kw).notification
    Notification.objects.filter(pk=notification.pk).update(created_at=at)
    return notification


def _run(frequency, now, **kw):
    """One scheduler pass, with each batch built in this process."""
    results = []
    for batches in digest_batches_due(frequency=frequency, now=now, **kw):
        for batch in batches:
            results.append(
                digests_build(
                    recipient_ids=batch.recipient_ids,
                    frequency=batch.frequency,
                    window=batch.window,
                    cutoff=batch.cutoff,
                )
            )
    return results


def _titles(text):
    return re.findall(r"- (\S+)", text)


def test_digest_groups_by_topic_newest_first_with_count_and_cap(monkeypatch):
    links = {"preferences_url": "https://example.com/prefs/abc"}
    monkeypatch.setattr(
        sending_message,
        "_message_hooks",
        [lambda delivery, context, headers: context.update(links)],
    )
    ann = RecipientFactory(email="ann@example.com")
    news = TopicFactory(key="news", name="News", digest_item="<em>{{ data.title }}</em>")
    alerts = TopicFactory(key="alerts", name="Alerts", digest_cap=2)
    for i in range(5):
        _event(ann, alerts, f"alert-{i}", T0 - timedelta(minutes=50 - i))
    _event(ann, news, "news-old", T0 - timedelta(minutes=59))
    _event(ann, news, "news-new", T0 - timedelta(minutes=10))

    (result,) = _run("hourly", T0 + timedelta(hours=1))
    assert result == {"built": 1, "suppressed": 0, "notifications": 7, "existing": 0}
    delivery = Delivery.objects.get()
    assert delivery.kind == Delivery.Kind.DIGEST and delivery.template is None
    assert delivery.idempotency_key == f"digest:hourly:{ann.pk}:2024-05-06T10"
    assert set(Notification.objects.values_list("digest", flat=True)) == {delivery.pk}
    assert not Notification.objects.filter(included_at__isnull=True).exists()

    message = delivery_build_message(delivery)
    assert message.subject == "Your hourly digest: 7 new notifications"
    # News has the newest entry, so it comes first; entries newest first; the
    # cap shows Alerts' two newest and counts the rest.
    assert message.body.index("News (2)") < message.body.index("Alerts (5)")
    assert _titles(message.body) == ["news-new", "news-old", "alert-4", "alert-3"]
    assert "And 3 more." in message.body
    html = message.alternatives[0][0]
    assert "<li><em>news-new</em></li>" in html
    assert 'href="https://example.com/prefs/abc"' in html
    assert "https://example.com/prefs/abc" in message.body


def test_data_is_escaped_and_never_read_as_template_source():
    ann = RecipientFactory()
    topic = TopicFactory(digest_item="{{ data.title }}")
    _event(ann, topic, "<script>{{ recipient.email }}{% now 'Y' %}", T0 - timedelta(minutes=5))
    _run("hourly", T0 + timedelta(hours=1))
    message = delivery_build_message(Delivery.objects.get())
    html = message.alternatives[0][0]
    assert "&lt;script&gt;{{ recipient.email }}{% now &#x27;Y&#x27; %}" in html
    assert "- <script>{{ recipient.email }}{% now 'Y' %}" in message.body


def test_a_broken_entry_template_still_builds_the_digest():
    ann = RecipientFactory()
    topic = TopicFactory(digest_item="{% if %}")  # staff saved it past the admin check
    _event(ann, topic, "still-here", T0 - timedelta(minutes=5))
    _run("hourly", T0 + timedelta(hours=1))
    assert "still-here" in delivery_build_message(Delivery.objects.get()).body


def test_notifications_after_the_cutoff_wait_for_the_next_digest():
    ann = RecipientFactory()
    topic = TopicFactory()
    _event(ann, topic, "before", T0)  # 09:30
    _event(ann, topic, "after", T0 + timedelta(minutes=31))  # 10:01, after the 10:00 cutoff
    run_at = T0 + timedelta(minutes=35)  # the 10:00 run, late
    _run("hourly", run_at)
    first = Delivery.objects.get()
    assert _titles(delivery_build_message(first).body) == ["before"]
    assert Notification.objects.get(data__title="after").included_at is None
    # Running again in the same hour finds nothing new to send.
    assert _run("hourly", run_at + timedelta(minutes=20)) == []
    _run("hourly", T0 + timedelta(hours=1, minutes=31))  # 11:01
    second = Delivery.objects.exclude(pk=first.pk).get()
    assert second.idempotency_key.endswith(":2024-05-06T11")
    assert _titles(delivery_build_message(second).body) == ["after"]


def test_a_second_build_for_the_same_window_sends_nothing_twice(
    django_capture_on_commit_callbacks,
):
    ann, bob = RecipientFactory(), RecipientFactory()
    topic = TopicFactory()
    for r in (ann, bob):
        _event(r, topic, "x", T0)
    window, cutoff = hourly_window(now=T0 + timedelta(hours=1))
    args = dict(recipient_ids=[ann.pk, bob.pk], frequency="hourly", window=window, cutoff=cutoff)
    with django_capture_on_commit_callbacks(execute=True):
        assert digests_build(**args)["built"] == 2
    # A late event from before the cutoff (its transaction committed after
    # the digest) does not make a second digest for the window.
    _event(ann, topic, "late", T0)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert digests_build(**args) == {
            "built": 0,
            "suppressed": 0,
            "notifications": 0,
            "existing": 2,
        }
    assert callbacks == []  # both were dispatched the first time
    assert Delivery.objects.count() == 2
    assert Notification.objects.get(data__title="late").included_at is None


def test_a_build_that_fails_midway_leaves_everything_pending_then_builds_once(monkeypatch):
    ann = RecipientFactory()
    topic = TopicFactory()
    for i in range(3):
        _event(ann, topic, f"e{i}", T0)
    window, cutoff = hourly_window(now=T0 + timedelta(hours=1))
    args = dict(recipient_ids=[ann.pk], frequency="hourly", window=window, cutoff=cutoff)

    def dies(**kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(digests_building, "_mark_included", dies)
    with pytest.raises(RuntimeError):
        digests_build(**args)  # after the Delivery insert, before the marking
    assert not Delivery.objects.exists()
    assert Notification.objects.filter(included_at__isnull=True).count() == 3

    monkeypatch.undo()
    assert digests_build(**args)["built"] == 1
    delivery = Delivery.objects.get()
    assert sorted(_titles(delivery_build_message(delivery).body)) == ["e0", "e1", "e2"]
    assert Notification.objects.filter(digest=delivery).count() == 3


def test_a_digest_written_dispatched_but_never_published_is_left_to_the_sweeper(
    django_capture_on_commit_callbacks, monkeypatch, settings
):
    published = []
    monkeypatch.setattr(
        "notifier.tasks.send_deliveries.apply_async",
        lambda args, queue: published.append((args[0], queue)),
    )
    ann = RecipientFactory()
    _event(ann, TopicFactory(), "x", T0)
    window, cutoff = hourly_window(now=T0 + timedelta(hours=1))
    args = dict(recipient_ids=[ann.pk], frequency="hourly", window=window, cutoff=cutoff)
    with django_capture_on_commit_callbacks(execute=False):  # died before on_commit ran
        digests_build(**args)
    delivery = Delivery.objects.get()
    # Written dispatched (no UPDATE marks it afterwards), yet never published.
    assert delivery.dispatched_at is not None and published == []
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert digests_build(**args)["existing"] == 1
    assert callbacks == [] and published == []  # a rerun does not publish it again
    # The sweeper does, once NOTIFIER_REDISPATCH_SECONDS have passed.
    settings.NOTIFIER_REDISPATCH_SECONDS = 0
    assert deliveries_dispatch_due() == 1
    assert published == [([delivery.pk], "digests")] and Delivery.objects.count() == 1

    # One built but never marked (its build died before the marking): the
    # rerun marks and publishes it.
    Delivery.objects.filter(pk=delivery.pk).update(dispatched_at=None)
    published.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert digests_build(**args)["existing"] == 1
    delivery.refresh_from_db()
    assert delivery.dispatched_at is not None and published == [([delivery.pk], "digests")]


def test_suppressed_recipient_gets_a_recorded_digest_that_is_never_sent(
    django_capture_on_commit_callbacks,
):
    ann = RecipientFactory(email="ann@example.com")
    _event(ann, TopicFactory(), "x", T0)
    suppression_add(email="ann@example.com", reason="complaint")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        (result,) = _run("hourly", T0 + timedelta(hours=1))
    assert result["suppressed"] == 1 and callbacks == []
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.SUPPRESSED
    assert Notification.objects.get().digest == delivery


def test_build_of_a_batch_takes_a_fixed_number_of_queries(django_capture_on_commit_callbacks):
    topics = [TopicFactory() for _ in range(3)]
    recipients = [RecipientFactory() for _ in range(50)]
    for r in recipients:
        for i in range(6):
            _event(r, topics[i % 3], f"t{i}", T0)
    window, cutoff = hourly_window(now=T0 + timedelta(hours=1))
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = digests_build(
            recipient_ids=[r.pk for r in recipients],
            frequency="hourly",
            window=window,
            cutoff=cutoff,
        )
    assert result["built"] == 50 and result["notifications"] == 300
    # existing keys, lock, topics, data, recipients, suppressions, insert,
    # mark, dispatch + savepoints: not one per recipient
    assert len(queries) <= 12, [q["sql"][:80] for q in queries]


def test_scheduler_pages_through_due_recipients_in_small_batches():
    topic = TopicFactory()
    recipients = [RecipientFactory() for _ in range(25)]
    for r in recipients[:20]:
        _event(r, topic, "x", T0)
    _event(recipients[20], topic, "too-late", T0 + timedelta(hours=1))
    _event(recipients[21], TopicFactory(default_frequency="daily"), "daily", T0)
    with CaptureQueriesContext(connection) as queries:
        pages = list(
            digest_batches_due(
                frequency="hourly", now=T0 + timedelta(minutes=31), batch_size=3, page_size=8
            )
        )
    assert [sum(len(b.recipient_ids) for b in page) for page in pages] == [8, 8, 4]
    assert max(len(b.recipient_ids) for page in pages for b in page) == 3
    ids = [rid for page in pages for b in page for rid in b.recipient_ids]
    assert ids == sorted(r.pk for r in recipients[:20])
    # per page: one read of due ids, one look-up of digests already built
    assert len(queries) == 2 * len(pages) + 1


def test_run_fans_out_a_group_on_the_digests_queue(monkeypatch):
    published = []

    class FakeGroup:
        def __init__(self, signatures):
            self.signatures = signatures

        def apply_async(self):
            published.append(self.signatures)

    monkeypatch.setattr(digests_scheduling, "group", FakeGroup)
    topic = TopicFactory()
    recipients = [RecipientFactory() for _ in range(3)]
    for r in recipients:
        _event(r, topic, "x", T0)
    result = digests_run(frequency="hourly", now=T0 + timedelta(hours=1))
    assert result == {"recipients": 3, "tasks": 1}
    (signature,) = published[0]
    assert signature.task == "notifier.build_digests"
    assert signature.options["queue"] == "digests"
    assert signature.args == (
        [r.pk for r in recipients],
        "hourly",
        "2024-05-06T10",
        "2024-05-06T10:00:00+00:00",
    )


# --- Daily digests at local 08:00 --------------------------------------------------


def _tick_until(end, start, step=timedelta(minutes=15)):
    """Drive the clock like beat's tick (every 5 minutes; 15 here, to keep the
    test short); return {delivery key: the tick that built it}."""
    sent_at = {}
    now = start
    while now <= end:
        _run("daily", now)
        for key in Delivery.objects.exclude(idempotency_key__in=sent_at).values_list(
            "idempotency_key", flat=True
        ):
            sent_at[key] = now
        now += step
    return sent_at


@pytest.mark.parametrize(
    ("zone", "days"),
    [
        # US daylight saving starts on 2024-03-10: 08:00 is 13:00 UTC, then 12:00.
        ("America/New_York", ["2024-03-09", "2024-03-10", "2024-03-11"]),
        # EU daylight saving starts on 2024-03-31: 08:00 is 07:00 UTC, then 06:00.
        ("Europe/Berlin", ["2024-03-30", "2024-03-31"]),
        # ... and ends on 2024-10-27: 06:00 UTC, then 07:00.
        ("Europe/Berlin", ["2024-10-26", "2024-10-27"]),
    ],
)
def test_daily_digest_goes_out_at_local_eight_across_dst(zone, days):
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    here = RecipientFactory(time_zone=zone)
    elsewhere = RecipientFactory(time_zone="Asia/Tokyo")  # no DST, 23:00 UTC
    topic = TopicFactory(default_frequency="daily")
    for day in days:
        local = datetime.fromisoformat(day).replace(tzinfo=tz)
        for r in (here, elsewhere):
            # One event before the local digest time, one after (next day's).
            _event(r, topic, f"{day}-early", local.replace(hour=3).astimezone(UTC))
            _event(r, topic, f"{day}-late", local.replace(hour=9).astimezone(UTC))
    start = datetime.fromisoformat(days[0]).replace(tzinfo=tz).astimezone(UTC) - timedelta(hours=1)
    sent_at = _tick_until(start + timedelta(days=len(days), hours=11), start)

    for day in days:
        expected = datetime.fromisoformat(day).replace(hour=8, tzinfo=tz).astimezone(UTC)
        assert sent_at[f"digest:daily:{here.pk}:{day}"] == expected
        assert sent_at[f"digest:daily:{here.pk}:{day}"].astimezone(tz).hour == 8
    for key, at in sent_at.items():
        if key.startswith(f"digest:daily:{elsewhere.pk}:"):
            assert at.astimezone(ZoneInfo("Asia/Tokyo")).time().isoformat() == "08:00:00"
    # Every event is in exactly one digest: the one after it was created.
    for delivery in Delivery.objects.filter(recipient=here):
        titles = _titles(delivery_build_message(delivery).body)
        day = delivery.idempotency_key.rsplit(":", 1)[1]
        previous = (datetime.fromisoformat(day) - timedelta(days=1)).date().isoformat()
        assert sorted(titles) == sorted(
            t for t in [f"{previous}-late", f"{day}-early"] if t[:10] in days
        )
    assert not Notification.objects.filter(
        recipient=here, included_at__isnull=True, data__title__in=[f"{d}-early" for d in days]
    ).exists()


def test_daily_digest_once_a_day_and_unknown_zones_count_as_utc():
    odd = RecipientFactory(time_zone="Mars/Olympus_Mons")
    topic = TopicFactory(default_frequency="daily")
    morning = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
    _event(odd, topic, "a", morning - timedelta(hours=2))
    assert _run("daily", morning - timedelta(minutes=5)) == []
    assert _run("daily", morning)[0]["built"] == 1
    # Later that day: an event before 08:00 committed late is kept for tomorrow.
    _event(odd, topic, "b", morning - timedelta(hours=1))
    assert _run("daily", morning + timedelta(hours=3)) == []
    assert _run("daily", morning + timedelta(days=1))[0]["built"] == 1
    keys = sorted(Delivery.objects.values_list("idempotency_key", flat=True))
    assert keys == [f"digest:daily:{odd.pk}:2024-05-06", f"digest:daily:{odd.pk}:2024-05-07"]


def test_daily_digest_time_is_a_setting(settings):
    settings.NOTIFIER_DAILY_DIGEST_TIME = datetime.strptime("18:30", "%H:%M").time()
    ann = RecipientFactory(time_zone="Europe/London")  # BST in May: UTC+1
    _event(ann, TopicFactory(default_frequency="daily"), "x", datetime(2024, 5, 6, 9, tzinfo=UTC))
    assert _run("daily", datetime(2024, 5, 6, 17, 25, tzinfo=UTC)) == []
    assert _run("daily", datetime(2024, 5, 6, 17, 30, tzinfo=UTC))[0]["built"] == 1


def test_hourly_and_daily_are_separate():
    ann = RecipientFactory()
    _event(ann, TopicFactory(default_frequency="daily"), "d", T0)
    _event(ann, TopicFactory(default_frequency="hourly"), "h", T0)
    (hourly,) = _run("hourly", T0 + timedelta(hours=1))
    assert hourly["notifications"] == 1
    assert Notification.objects.get(data__title="d").included_at is None


def test_topic_admin_form_refuses_a_broken_digest_entry():
    form = TopicForm(
        data={
            "key": "k",
            "name": "K",
            "default_frequency": "hourly",
            "digest_item": "{{ data.title",
            "digest_cap": 5,
        }
    )
    assert not form.is_valid()
    assert "never closed" in form.errors["digest_item"][0]


def test_unknown_frequency_is_refused():
    with pytest.raises(ValueError, match="hourly, daily or weekly"):
        digests_build(recipient_ids=[1], frequency="instant", window="w", cutoff=timezone.now())
    with pytest.raises(ValueError, match="hourly, daily or weekly"):
        list(digest_batches_due(frequency="off", now=timezone.now()))
    assert not Recipient.objects.exists()


def test_beat_installs_the_digest_and_prune_schedules():
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import ModelEntry

    import notifier.tasks  # noqa: F401 - registers the tasks, as the worker does
    from config.celery import app

    # What DatabaseScheduler does with CELERY_BEAT_SCHEDULE when beat starts.
    for name, entry in app.conf.beat_schedule.items():
        ModelEntry.from_entry(name, app=app, **entry)
    installed = {
        task.name: (task.task, str(task.crontab), task.queue)
        for task in PeriodicTask.objects.filter(name__startswith="notifier-").exclude(
            # intervals, not crontabs
            name__in=["notifier-sweep", "notifier-resolve-in-doubt", "notifier-probe-transports"]
        )
    }
    assert installed == {
        "notifier-digests-hourly": (
            "notifier.digests_hourly",
            "0 * * * * (m/h/dM/MY/d) UTC",
            "maintenance",
        ),
        "notifier-digests-daily": (
            "notifier.digests_daily",
            "*/5 * * * * (m/h/dM/MY/d) UTC",
            "maintenance",
        ),
        "notifier-digests-weekly": (
            "notifier.digests_weekly",
            "*/5 * * * * (m/h/dM/MY/d) UTC",
            "maintenance",
        ),
        "notifier-prune-notifications": (
            "notifier.prune_notifications",
            "30 3 * * * (m/h/dM/MY/d) UTC",
            "maintenance",
        ),
    }
    for name in (
        "notifier.digests_hourly",
        "notifier.digests_daily",
        "notifier.digests_weekly",
        "notifier.build_digests",
    ):
        assert name in app.tasks


@pytest.mark.parametrize(
    "rendered",
    [
        "<b>Bob &amp; Ann</b> #5",
        '<a href="https://x.example/?a=1">it&#x27;s</a><br/> <i class="c d">x</i>',
        "a < b and c > d",
        "<b>open",
        "x <!-- note --> y",
        "<a href='q'>single</a>",
        '<a title="1 > 0">gt</a>',
        "<script>if (a < b) {}</script>&nbsp;",
        "plain &amp; simple",
        "<b><i>nested</i></b>&",
    ],
)
def test_entry_text_is_strip_tags_of_its_html(rendered):
    from django.utils.html import strip_tags

    from notifier.services.digests.entries import _strip_tags

    assert _strip_tags(rendered) == strip_tags(rendered)


def test_entry_text_takes_linear_time_on_long_unclosed_markup():
    import time

    from notifier.services.digests.entries import _strip_tags

    started = time.monotonic()
    for hostile in ("a" * 100_000 + "<", "<b x" + ' y="1"' * 20_000 + "<", "&amp;" * 20_000 + "<"):
        _strip_tags(hostile)
    assert time.monotonic() - started < 5  # was exponential: 26 characters took 10 s


# The digest's sources before its sections were rendered at build time: the
# sender rendered the whole digest from the entries in the row's context.
SECTIONS_AS_TEMPLATE_HTML = """<h1>Your {{ period }} digest</h1>
{% for section in sections %}<h2>{{ section.topic.name }} ({{ section.count }})</h2>
<ul>
{% for item in section.items %}<li>{{ item.html|safe }}</li>
{% endfor %}</ul>
{% if section.more %}<p>And {{ section.more }} more.</p>
{% endif %}{% endfor %}{% if preferences_url %}<p><a href="{{ preferences_url }}">Choose which notifications you get, and how often</a></p>
{% endif %}{% if unsubscribe_url %}<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
{% endif %}"""
SECTIONS_AS_TEMPLATE_TEXT = """Your {{ period }} digest
{% for section in sections %}
{{ section.topic.name }} ({{ section.count }})
{% for item in section.items %}- {{ item.text }}
{% endfor %}{% if section.more %}And {{ section.more }} more.
{% endif %}{% endfor %}{% if preferences_url %}
Choose which notifications you get, and how often: {{ preferences_url }}
{% endif %}{% if unsubscribe_url %}Unsubscribe: {{ unsubscribe_url }}
{% endif %}"""


@pytest.mark.parametrize(
    "links",
    [{}, {"preferences_url": "https://x.example/p?a=1&b=2", "unsubscribe_url": "https://u/1"}],
)
def test_sections_rendered_at_build_give_the_message_the_whole_template_gave(links):
    from notifier import templating
    from notifier.services.digests import DIGEST_HTML, DIGEST_SUBJECT, DIGEST_TEXT
    from notifier.services.digests.entries import digest_body, digest_contexts

    topics = {
        1: TopicFactory(name="News & <Views>", digest_item="<em>{{ data.title }}</em>"),
        2: TopicFactory(name="Alerts", digest_cap=2, digest_item="{% if %}"),
        3: TopicFactory(name="Plain", digest_item="{{ data }}"),
    }
    topics = {topic.pk: topic for topic in topics.values()}
    news, alerts, plain = topics
    entries = {
        news: [(1, T0), (2, T0 - timedelta(minutes=3))],
        alerts: [(n, T0 - timedelta(minutes=n)) for n in range(3, 8)],
        plain: [(9, T0 - timedelta(minutes=1))],
    }
    data = {n: {"title": f"t{n} <b>&amp;</b> {{{{ x }}}}", "n": n} for n in range(10)}
    content = digest_contexts(
        frequency="daily", window="w", entries={7: entries}, topics=topics, data=data
    )[7]
    compile_html = sending_message.inline_html_document

    def rendered(subject, html, text, context):
        return templating.render_message(
            subject=subject,
            html_body=compile_html(html),
            text_body=text,
            context=templating.plain_data({**context, **links}),
        )

    before = rendered(DIGEST_SUBJECT, SECTIONS_AS_TEMPLATE_HTML, SECTIONS_AS_TEMPLATE_TEXT, content)
    after = rendered(DIGEST_SUBJECT, DIGEST_HTML, DIGEST_TEXT, digest_body(content))
    assert after == before
    assert "And 3 more." in after[2] and "News &amp; &lt;Views&gt; (2)" in after[1]
