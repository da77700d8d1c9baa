"""Quiet hours: no notification email between local times chosen by the
installation, a topic or the recipient; instant notifications inside are held
in the outbox until the window ends (or go into the next daily digest); a
critical topic's go at once. Driven by the clock in two time zones (and across
DST), then through a real worker."""

from datetime import UTC, datetime, time, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from notifier import notify
from notifier.models import Delivery, Frequency, Notification, QuietHoursMode, Topic
from notifier.services.digests import digest_batches_due, digests_build
from notifier.services.notifications import NotifyOutcome
from notifier.services.preferences import recipient_quiet_hours_set
from notifier.services.quiet_hours import quiet_hours_end
from notifier.services.retries import deliveries_dispatch_due
from notifier.services.unsubscribe import preferences_token
from notifier.tasks import sweep
from tests.conftest import wait_for
from tests.notifier.factories import RecipientFactory, TopicFactory

BERLIN, LOS_ANGELES = ZoneInfo("Europe/Berlin"), ZoneInfo("America/Los_Angeles")


@pytest.fixture
def clock(monkeypatch):
    """Drive ``timezone.now()`` (notify, send, the sweeper read it)."""
    now = {"at": datetime(2024, 6, 3, 12, tzinfo=UTC)}
    monkeypatch.setattr(timezone, "now", lambda: now["at"])

    def set_to(at):
        now["at"] = at.astimezone(UTC)

    return set_to


def _night_owl(zone, **kw):
    recipient = RecipientFactory(time_zone=zone)
    recipient_quiet_hours_set(
        recipient=recipient, start=time(22, 0), end=time(7, 0), mode=kw.get("mode", "hold")
    )
    return recipient


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("zone", "inside", "ends"),
    [
        # Berlin in summer (UTC+2): 23:30 local is 21:30 UTC; 07:00 is 05:00 UTC.
        ("Europe/Berlin", datetime(2024, 6, 3, 21, 30, tzinfo=UTC), "2024-06-04T05:00"),
        # Los Angeles in summer (UTC-7): 03:00 local is 10:00 UTC; 07:00 is 14:00 UTC.
        ("America/Los_Angeles", datetime(2024, 6, 4, 10, 0, tzinfo=UTC), "2024-06-04T14:00"),
    ],
)
def test_instant_notification_in_quiet_hours_is_held_then_sent_at_their_end(
    clock, zone, inside, ends, django_capture_on_commit_callbacks, monkeypatch
):
    """Acceptance: held in the outbox (no task, no countdown), handed to a
    worker by the sweeper when the window ends; a critical topic at once."""
    dispatched = []
    monkeypatch.setattr(
        "notifier.services.retries.deliveries_dispatch",
        lambda *, ids_by_kind: dispatched.extend(i for ids in ids_by_kind.values() for i in ids),
    )
    owl = _night_owl(zone)
    news = TopicFactory(key="news", default_frequency=Frequency.INSTANT)
    security = TopicFactory(key="security", default_frequency=Frequency.INSTANT, critical=True)
    clock(inside)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        held = notify(owl, news, {"title": "x"})
    assert held.outcome == NotifyOutcome.HELD
    end = datetime.fromisoformat(ends).replace(tzinfo=UTC)
    assert held.held_until == end and held.delivery.next_attempt_at == end
    assert end.astimezone(ZoneInfo(zone)).time() == time(7, 0)
    assert callbacks == []  # nothing handed to Celery
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        urgent = notify(owl, security, {"title": "reset"})
    assert urgent.outcome == NotifyOutcome.INSTANT and urgent.held_until is None
    assert len(callbacks) == 1  # dispatched on commit, at once

    clock(end - timedelta(seconds=1))
    deliveries_dispatch_due()
    assert held.delivery.pk not in dispatched
    clock(end)
    deliveries_dispatch_due()
    assert held.delivery.pk in dispatched
    assert Delivery.objects.get(pk=held.delivery.pk).status == Delivery.Status.PENDING


@pytest.mark.django_db
def test_outside_quiet_hours_and_for_recipients_without_them_nothing_is_held(clock):
    news = TopicFactory(default_frequency=Frequency.INSTANT)
    owl = _night_owl("Europe/Berlin")
    lark = RecipientFactory(time_zone="Europe/Berlin")
    clock(datetime(2024, 6, 3, 23, 30, tzinfo=BERLIN))
    assert notify(lark, news, {}).outcome == NotifyOutcome.INSTANT
    clock(datetime(2024, 6, 4, 7, 0, tzinfo=BERLIN))  # the end is outside
    assert notify(owl, news, {}).outcome == NotifyOutcome.INSTANT
    clock(datetime(2024, 6, 3, 21, 59, tzinfo=BERLIN))
    assert notify(owl, news, {}).outcome == NotifyOutcome.INSTANT


@pytest.mark.django_db
def test_installation_and_topic_quiet_hours_add_up(clock, settings):
    settings.NOTIFIER_QUIET_HOURS = (time(23, 0), time(6, 0))
    ann = RecipientFactory(time_zone="America/Los_Angeles")
    recipient_quiet_hours_set(recipient=ann, start=time(5, 30), end=time(7, 0), mode="hold")
    promos = TopicFactory(
        default_frequency=Frequency.INSTANT,
        quiet_hours_start=time(6, 30),
        quiet_hours_end=time(9, 0),
    )
    news = TopicFactory(default_frequency=Frequency.INSTANT)
    clock(datetime(2024, 6, 3, 23, 30, tzinfo=LOS_ANGELES))
    # 23:00-06:00 then 05:30-07:00: news waits until 07:00; promos until 09:00.
    assert notify(ann, news, {}).held_until == datetime(2024, 6, 4, 7, tzinfo=LOS_ANGELES)
    assert notify(ann, promos, {}).held_until == datetime(2024, 6, 4, 9, tzinfo=LOS_ANGELES)
    bob = RecipientFactory(time_zone="Europe/Berlin")  # only the installation's
    clock(datetime(2024, 6, 4, 2, 0, tzinfo=BERLIN))
    assert notify(bob, news, {}).held_until == datetime(2024, 6, 4, 6, tzinfo=BERLIN)
    clock(datetime(2024, 6, 4, 8, 0, tzinfo=BERLIN))  # the topic's alone
    assert notify(bob, promos, {}).held_until == datetime(2024, 6, 4, 9, tzinfo=BERLIN)


@pytest.mark.django_db
def test_folded_into_the_next_daily_digest_when_the_recipient_prefers(clock):
    owl = _night_owl("Europe/Berlin", mode=QuietHoursMode.DIGEST)
    news = TopicFactory(default_frequency=Frequency.INSTANT)
    security = TopicFactory(default_frequency=Frequency.INSTANT, critical=True)
    clock(datetime(2024, 6, 3, 23, 30, tzinfo=BERLIN))
    folded = notify(owl, news, {"title": "night"})
    assert folded.outcome == NotifyOutcome.DIGEST and folded.frequency == Frequency.DAILY
    assert notify(owl, security, {}).outcome == NotifyOutcome.INSTANT
    assert Delivery.objects.count() == 1
    morning = datetime(2024, 6, 4, 8, 0, tzinfo=BERLIN)  # the daily digest's time
    for batches in digest_batches_due(frequency=Frequency.DAILY, now=morning):
        for b in batches:
            clock(morning)
            digests_build(
                recipient_ids=b.recipient_ids,
                frequency=b.frequency,
                window=b.window,
                cutoff=b.cutoff,
            )
    digest = Delivery.objects.get(kind=Delivery.Kind.DIGEST)
    assert Notification.objects.get().digest == digest


@pytest.mark.django_db
def test_a_digest_built_in_quiet_hours_waits_for_their_end(
    clock, django_capture_on_commit_callbacks
):
    owl = _night_owl("America/Los_Angeles")
    topic = TopicFactory(default_frequency=Frequency.HOURLY)
    clock(datetime(2024, 6, 3, 22, 10, tzinfo=LOS_ANGELES))
    notify(owl, topic, {"title": "late"})
    top_of_hour = datetime(2024, 6, 3, 23, 0, tzinfo=LOS_ANGELES)
    clock(top_of_hour)
    (batches,) = list(digest_batches_due(frequency=Frequency.HOURLY, now=top_of_hour))
    (batch,) = batches
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = digests_build(
            recipient_ids=batch.recipient_ids,
            frequency=batch.frequency,
            window=batch.window,
            cutoff=batch.cutoff,
        )
    assert result["built"] == 1 and callbacks == []  # not handed to Celery
    digest = Delivery.objects.get()
    assert digest.next_attempt_at == datetime(2024, 6, 4, 7, tzinfo=LOS_ANGELES)
    assert digest.dispatched_at is None


def test_quiet_hours_end_across_dst_and_midnight():
    windows = [(time(1, 0), time(2, 30))]
    # Berlin springs forward at 02:00 on 2024-03-31: 02:30 is 03:30 summer time.
    at = datetime(2024, 3, 31, 1, 30, tzinfo=BERLIN)
    assert quiet_hours_end(now=at, time_zone="Europe/Berlin", windows=windows) == datetime(
        2024, 3, 31, 1, 30, tzinfo=UTC
    )
    # Los Angeles falls back at 02:00 on 2024-11-03: 22:00-07:00 is 10 hours.
    night = [(time(22, 0), time(7, 0))]
    at = datetime(2024, 11, 2, 22, 0, tzinfo=LOS_ANGELES)
    end = quiet_hours_end(now=at, time_zone="America/Los_Angeles", windows=night)
    assert end - at.astimezone(UTC) == timedelta(hours=10)
    assert end.astimezone(LOS_ANGELES).time() == time(7, 0)
    # Outside, empty, and unknown zones (UTC).
    assert quiet_hours_end(now=at, time_zone="Europe/Berlin", windows=[]) is None
    assert quiet_hours_end(now=at, time_zone="X/Y", windows=[(time(5), time(5))]) is None
    assert quiet_hours_end(
        now=datetime(2024, 1, 1, 23, tzinfo=UTC), time_zone="X/Y", windows=night
    ) == datetime(2024, 1, 2, 7, tzinfo=UTC)


@pytest.mark.django_db
def test_bad_quiet_hours_are_refused_and_change_nothing():
    ann = RecipientFactory()
    for start, end, mode in [
        (time(22), None, "hold"),
        (time(22), time(22), "hold"),
        (time(22), time(7), "later"),
    ]:
        with pytest.raises(ValueError):
            recipient_quiet_hours_set(recipient=ann, start=start, end=end, mode=mode)
    ann.refresh_from_db()
    assert (ann.quiet_hours_start, ann.quiet_hours_end, ann.quiet_hours_mode) == (
        None,
        None,
        "hold",
    )


@pytest.mark.django_db
def test_the_preference_page_sets_quiet_hours():
    browser = Client(enforce_csrf_checks=True)
    topic = Topic.objects.create(key="news", name="News")
    ann = RecipientFactory(time_zone="America/Los_Angeles")
    path = f"/preferences/{preferences_token(recipient=ann)}/"
    html = browser.get(path).content.decode()
    assert "Quiet hours" in html and '<option value="" selected>No quiet hours</option>' in html
    csrf = browser.cookies["csrftoken"].value
    data = {
        "csrfmiddlewaretoken": csrf,
        "action": "save",
        f"topic_{topic.pk}": "instant",
        "quiet_hours_start": "21:30",
        "quiet_hours_end": "06:00",
        "quiet_hours_mode": "digest",
    }
    assert browser.post(path, data).status_code == 302
    ann.refresh_from_db()
    assert (ann.quiet_hours_start, ann.quiet_hours_end, ann.quiet_hours_mode) == (
        time(21, 30),
        time(6, 0),
        "digest",
    )
    assert '<option value="21:30" selected>21:30</option>' in browser.get(path).content.decode()
    for bad in (
        {"quiet_hours_end": ""},
        {"quiet_hours_end": "20:00"},
        {"quiet_hours_start": "25:00"},
        {"quiet_hours_mode": "never"},
    ):
        response = browser.post(path, {**data, "quiet_hours_start": "20:00", **bad})
        assert response.status_code == 400, bad
        assert 'role="alert"' in response.content.decode()
    ann.refresh_from_db()
    assert ann.quiet_hours_start == time(21, 30)
    # Clearing both turns them off.
    browser.post(path, {**data, "quiet_hours_start": "", "quiet_hours_end": ""})
    ann.refresh_from_db()
    assert (ann.quiet_hours_start, ann.quiet_hours_end) == (None, None)


def _seconds(at: datetime) -> time:
    return at.time().replace(microsecond=0)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_held_notifications_go_out_through_a_real_worker_when_quiet_hours_end(
    celery_worker_process, fake_esp
):
    """Two recipients in two zones, each inside quiet hours that end a few
    seconds from now (their local time): their news waits in the outbox
    until the sweeper finds it due; the critical topic goes out at once."""
    news = TopicFactory(key="news", default_frequency=Frequency.INSTANT)
    security = TopicFactory(key="security", default_frequency=Frequency.INSTANT, critical=True)
    now = timezone.now()
    held = {}
    for zone in ("Asia/Kolkata", "America/Los_Angeles"):
        recipient = RecipientFactory(time_zone=zone)
        local = now.astimezone(ZoneInfo(zone))
        recipient_quiet_hours_set(
            recipient=recipient,
            start=_seconds(local - timedelta(hours=1)),
            end=_seconds(local + timedelta(seconds=10)),
            mode="hold",
        )
        result = notify(recipient, news, {"title": "news"})
        assert result.outcome == NotifyOutcome.HELD
        held[recipient.email] = result
    urgent = notify(next(iter(held.values())).delivery.recipient, security)
    assert urgent.outcome == NotifyOutcome.INSTANT
    wait_for(lambda: Delivery.objects.filter(status=Delivery.Status.SENT).count() == 1)
    # The critical one went out; the held ones have not been handed to a worker.
    assert [parseaddr(m["To"])[1] for m in fake_esp.messages] == [urgent.delivery.recipient.email]
    for result in held.values():
        delivery = Delivery.objects.get(pk=result.delivery.pk)
        assert delivery.status == Delivery.Status.PENDING and delivery.dispatched_at is None
        assert delivery.next_attempt_at == result.held_until > now

    def swept_and_sent():
        sweep.apply_async(queue="maintenance").get(timeout=10)
        return Delivery.objects.filter(status=Delivery.Status.SENT).count() == 3

    wait_for(swept_and_sent, timeout=60, interval=0.5)
    sent = {parseaddr(m["To"])[1]: m for m in fake_esp.messages}
    assert set(sent) == set(held) | {urgent.delivery.recipient.email}
    assert len(fake_esp.messages) == 3
    for result in held.values():
        delivery = Delivery.objects.get(pk=result.delivery.pk)
        assert delivery.sent_at >= result.held_until
