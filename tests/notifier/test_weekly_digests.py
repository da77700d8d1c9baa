"""Weekly digests: each recipient's own local weekday and time, once per local
week, across DST changes, driven by the clock (``now=``); then through a real
worker. The hourly and daily ones are in ``test_digests.py``."""

import re
from datetime import UTC, datetime, time, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

import pytest
from django.test import Client

from notifier import notify
from notifier.models import Delivery, Frequency, Notification, Recipient, Topic
from notifier.sending.message import delivery_build_message
from notifier.services.digests import digest_batches_due, digests_build, weekly_window
from notifier.services.preferences import recipient_weekly_digest_set
from notifier.services.unsubscribe import preferences_token
from notifier.tasks import digests_weekly
from tests.conftest import wait_for
from tests.notifier.factories import RecipientFactory, TopicFactory

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def _event(recipient, topic, title, at):
    notification = notify(recipient, topic, {"title": title}).notification
    Notification.objects.filter(pk=notification.pk).update(created_at=at)


def _run(now):
    for batches in digest_batches_due(frequency=Frequency.WEEKLY, now=now):
        for batch in batches:
            digests_build(
                recipient_ids=batch.recipient_ids,
                frequency=batch.frequency,
                window=batch.window,
                cutoff=batch.cutoff,
            )


def _titles(delivery):
    return re.findall(r"- (\S+)", delivery_build_message(delivery).body)


def _local(zone, day, hour, minute=0):
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=zone)


@pytest.mark.django_db
def test_weekly_digest_at_each_recipients_day_and_time_once_a_week_across_dst():
    """Acceptance: Berlin's DST starts on Sunday 2024-03-31, New York's on
    Sunday 2024-03-10; each weekly digest goes out at its local day and time
    (a different UTC hour before and after), exactly once per local week."""
    topic = TopicFactory(default_frequency=Frequency.WEEKLY)
    ber = RecipientFactory(time_zone="Europe/Berlin")
    recipient_weekly_digest_set(recipient=ber, weekday=6, at=time(9, 0))  # Sunday 09:00
    nyc = RecipientFactory(time_zone="America/New_York")
    recipient_weekly_digest_set(recipient=nyc, weekday=0, at=time(7, 30))  # Monday 07:30
    # Sunday 02:30 does not exist in Berlin on 2024-03-31 (02:00 -> 03:00).
    gap = RecipientFactory(time_zone="Europe/Berlin")
    recipient_weekly_digest_set(recipient=gap, weekday=6, at=time(2, 30))

    start = datetime(2024, 3, 1, tzinfo=UTC)
    end = datetime(2024, 4, 9, tzinfo=UTC)
    day = start
    while day < end:  # one event a day at noon UTC for each
        for r in (ber, nyc, gap):
            _event(r, topic, f"{r.pk}-{day:%m%d}", day.replace(hour=12))
        day += timedelta(days=1)

    built_at = {}
    now = start
    while now <= end:  # beat's 5-minute tick, every 30 minutes here
        _run(now)
        for key in Delivery.objects.exclude(idempotency_key__in=built_at).values_list(
            "idempotency_key", flat=True
        ):
            built_at[key] = now
        now += timedelta(minutes=30)

    def sent(recipient):
        prefix = f"digest:weekly:{recipient.pk}:"
        return {k.removeprefix(prefix): v for k, v in built_at.items() if k.startswith(prefix)}

    assert sent(ber) == {
        "2024-W09": _local(BERLIN, "2024-03-03", 9).astimezone(UTC),  # 08:00 UTC
        "2024-W10": _local(BERLIN, "2024-03-10", 9).astimezone(UTC),
        "2024-W11": _local(BERLIN, "2024-03-17", 9).astimezone(UTC),
        "2024-W12": _local(BERLIN, "2024-03-24", 9).astimezone(UTC),
        "2024-W13": _local(BERLIN, "2024-03-31", 9).astimezone(UTC),  # 07:00 UTC
        "2024-W14": _local(BERLIN, "2024-04-07", 9).astimezone(UTC),
    }
    assert sent(ber)["2024-W12"].hour == 8 and sent(ber)["2024-W13"].hour == 7
    assert sent(nyc) == {
        "2024-W10": _local(NEW_YORK, "2024-03-04", 7, 30).astimezone(UTC),  # 12:30 UTC
        "2024-W11": _local(NEW_YORK, "2024-03-11", 7, 30).astimezone(UTC),  # 11:30 UTC
        "2024-W12": _local(NEW_YORK, "2024-03-18", 7, 30).astimezone(UTC),
        "2024-W13": _local(NEW_YORK, "2024-03-25", 7, 30).astimezone(UTC),
        "2024-W14": _local(NEW_YORK, "2024-04-01", 7, 30).astimezone(UTC),
        "2024-W15": _local(NEW_YORK, "2024-04-08", 7, 30).astimezone(UTC),
    }
    assert sent(nyc)["2024-W10"].hour == 12 and sent(nyc)["2024-W11"].hour == 11
    # The skipped 02:30 means 03:30 summer time that night: once, that week.
    assert sent(gap)["2024-W13"] == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    assert len(sent(gap)) == 6

    # Every event is in exactly one digest: the first after it.
    for recipient in (ber, nyc, gap):
        seen = []
        for delivery in Delivery.objects.filter(recipient=recipient):
            titles = _titles(delivery)
            cutoff = built_at[delivery.idempotency_key]
            assert titles and all(
                datetime.strptime(f"2024{t.split('-')[1]}", "%Y%m%d").replace(hour=12, tzinfo=UTC)
                < cutoff
                for t in titles
            )
            seen += titles
        assert len(seen) == len(set(seen))
        left = Notification.objects.filter(recipient=recipient, included_at__isnull=True)
        assert len(seen) + left.count() == Notification.objects.filter(recipient=recipient).count()
    message = delivery_build_message(Delivery.objects.filter(recipient=ber).first())
    assert message.subject.startswith("Your weekly digest: 7 new notifications")


def test_weekly_window_is_the_last_chosen_moment_named_by_its_iso_week():
    at = time(9, 0)
    # Sunday 2024-03-31, 08:59 in Berlin: the digest of the previous Sunday.
    before = _local(BERLIN, "2024-03-31", 8, 59)
    assert weekly_window(now=before, time_zone="Europe/Berlin", weekday=6, at=at) == (
        "2024-W12",
        _local(BERLIN, "2024-03-24", 9).astimezone(UTC),
    )
    on_time = _local(BERLIN, "2024-03-31", 9)
    assert weekly_window(now=on_time, time_zone="Europe/Berlin", weekday=6, at=at) == (
        "2024-W13",
        on_time.astimezone(UTC),
    )
    # A zone name that is not an IANA zone counts as UTC.
    moment = datetime(2024, 5, 8, 12, tzinfo=UTC)  # a Wednesday
    assert weekly_window(now=moment, time_zone="Mars/Base", weekday=2, at=at) == (
        "2024-W19",
        datetime(2024, 5, 8, 9, tzinfo=UTC),
    )


@pytest.mark.django_db
def test_moving_the_day_later_in_a_week_already_sent_waits_for_next_week():
    ann = RecipientFactory(time_zone="UTC")  # Monday 08:00 by default
    assert (ann.weekly_digest_day, ann.weekly_digest_time) == (0, time(8, 0))
    topic = TopicFactory(default_frequency=Frequency.WEEKLY)
    _event(ann, topic, "a", datetime(2024, 5, 5, 12, tzinfo=UTC))
    _run(datetime(2024, 5, 6, 8, tzinfo=UTC))  # Monday 08:00: week 19's digest
    _event(ann, topic, "b", datetime(2024, 5, 6, 12, tzinfo=UTC))
    recipient_weekly_digest_set(recipient=ann, weekday=4, at=time(18, 0))  # Friday 18:00
    _run(datetime(2024, 5, 10, 18, tzinfo=UTC))  # Friday of the same week: nothing
    _run(datetime(2024, 5, 17, 18, tzinfo=UTC))  # next Friday: week 20's digest
    keys = sorted(Delivery.objects.values_list("idempotency_key", flat=True))
    assert keys == [f"digest:weekly:{ann.pk}:2024-W19", f"digest:weekly:{ann.pk}:2024-W20"]


@pytest.mark.django_db
def test_bad_weekly_settings_are_refused():
    ann = RecipientFactory()
    for weekday, at in [(7, time(8)), (-1, time(8)), (0, "08:00")]:
        with pytest.raises(ValueError):
            recipient_weekly_digest_set(recipient=ann, weekday=weekday, at=at)
    ann.refresh_from_db()
    assert (ann.weekly_digest_day, ann.weekly_digest_time) == (0, time(8, 0))


@pytest.mark.django_db
def test_the_preference_page_sets_the_weekly_day_and_time():
    browser = Client(enforce_csrf_checks=True)
    topic = Topic.objects.create(key="news", name="News")
    ann = RecipientFactory(time_zone="Europe/Berlin")
    path = f"/preferences/{preferences_token(recipient=ann)}/"
    html = browser.get(path).content.decode()
    assert "Weekly digest" in html and "Europe/Berlin" in html
    assert '<option value="0" selected>Monday</option>' in html
    assert '<option value="08:00" selected>08:00</option>' in html
    csrf = browser.cookies["csrftoken"].value
    data = {
        "csrfmiddlewaretoken": csrf,
        "action": "save",
        f"topic_{topic.pk}": "weekly",
        "weekly_digest_day": "4",
        "weekly_digest_time": "17:30",
    }
    assert browser.post(path, data).status_code == 302
    ann.refresh_from_db()
    assert (ann.weekly_digest_day, ann.weekly_digest_time) == (4, time(17, 30))
    assert ann.preferences.get().frequency == "weekly"
    for bad in ({"weekly_digest_day": "8"}, {"weekly_digest_time": "17:31"}):
        response = browser.post(path, {**data, "weekly_digest_day": "1", **bad})
        assert response.status_code == 400
    ann.refresh_from_db()
    assert (ann.weekly_digest_day, ann.weekly_digest_time) == (4, time(17, 30))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_weekly_digests_through_a_real_worker_once_each(celery_worker_process, fake_esp):
    """The beat task on a real worker: each recipient's digest at their own
    local moment, once, however often the task runs."""
    topic = TopicFactory(default_frequency=Frequency.WEEKLY, digest_item="{{ data.title }}")
    ber = RecipientFactory(time_zone="Europe/Berlin")
    recipient_weekly_digest_set(recipient=ber, weekday=6, at=time(9, 0))
    nyc = RecipientFactory(time_zone="America/New_York")
    recipient_weekly_digest_set(recipient=nyc, weekday=0, at=time(7, 30))
    for r in (ber, nyc):
        _event(r, topic, f"evt-{r.pk}", datetime(2024, 3, 29, 12, tzinfo=UTC))

    def tick(at):
        return digests_weekly.apply_async(kwargs={"now": at.isoformat()}, queue="maintenance").get(
            timeout=60
        )

    # Sunday 2024-03-31 06:59 UTC is 08:59 in Berlin (summer time since 03:00).
    assert tick(datetime(2024, 3, 31, 6, 59, tzinfo=UTC)) == {"recipients": 0, "tasks": 0}
    assert tick(datetime(2024, 3, 31, 7, 0, tzinfo=UTC)) == {"recipients": 1, "tasks": 1}
    wait_for(lambda: Delivery.objects.filter(recipient=ber).exists(), timeout=60)
    assert tick(datetime(2024, 3, 31, 7, 0, tzinfo=UTC)) == {"recipients": 0, "tasks": 0}
    # Monday 07:30 in New York is 11:30 UTC (summer time since 2024-03-10).
    assert tick(datetime(2024, 4, 1, 11, 29, tzinfo=UTC))["recipients"] == 0
    assert tick(datetime(2024, 4, 1, 11, 30, tzinfo=UTC))["recipients"] == 1
    wait_for(lambda: Delivery.objects.filter(status=Delivery.Status.SENT).count() == 2, timeout=60)
    assert tick(datetime(2024, 4, 1, 12, 0, tzinfo=UTC))["recipients"] == 0
    assert sorted(parseaddr(m["To"])[1] for m in fake_esp.messages) == sorted(
        [ber.email, nyc.email]
    )
    assert all(m["Subject"].startswith("Your weekly digest") for m in fake_esp.messages)
    assert not Notification.objects.filter(included_at__isnull=True).exists()
    assert Recipient.objects.count() == 2
