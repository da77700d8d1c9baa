"""``notifier.notify``: preferences, idempotency, suppression, bad input, pruning."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifier import notify
from notifier.errors import InvalidAddress, InvalidContext, NotifierError
from notifier.models import Delivery, Notification, Preference, Recipient
from notifier.sending.message import delivery_build_message
from notifier.services import notifications
from notifier.services.notifications import NotifyOutcome, notifications_prune
from notifier.services.suppressions import suppression_add
from tests.notifier.factories import RecipientFactory, TemplateFactory, TopicFactory

pytestmark = pytest.mark.django_db


def _nothing_stored():
    return not Notification.objects.exists() and not Delivery.objects.exists()


def test_public_import_is_the_service():
    assert notify is notifications.notify


def test_instant_without_template_sends_the_topic_name_and_entry(
    django_capture_on_commit_callbacks,
):
    topic = TopicFactory(
        key="comments",
        name="New comments",
        default_frequency="instant",
        digest_item="{{ data.title }}",
    )
    with django_capture_on_commit_callbacks() as callbacks:
        result = notify("Ann@Example.com", "comments", {"title": "Bob replied <b>hi</b>"})
    assert result.outcome == NotifyOutcome.INSTANT and result.frequency == "instant"
    delivery = result.delivery
    assert delivery.kind == Delivery.Kind.NOTIFICATION
    assert delivery.recipient.email == "ann@example.com"
    assert delivery.context == {
        "data": {"title": "Bob replied <b>hi</b>"},
        "topic": {"key": "comments", "name": "New comments", "description": ""},
    }
    assert len(callbacks) == 1  # queued on commit, through the delivery engine
    message = delivery_build_message(delivery)
    assert message.subject == "New comments"
    html = message.alternatives[0][0]
    assert "Bob replied &lt;b&gt;hi&lt;/b&gt;" in html
    assert not Notification.objects.exists()
    assert topic.notifications.count() == 0


def test_instant_uses_the_topic_template():
    template = TemplateFactory(subject="{{ topic.name }}: {{ data.what }}", html_body="<p>x</p>")
    TopicFactory(
        key="orders", name="Orders", default_frequency="instant", instant_template=template
    )
    result = notify("a@example.com", "orders", {"what": "shipped"})
    assert result.delivery.template == template
    assert delivery_build_message(result.delivery).subject == "Orders: shipped"


def test_preference_overrides_the_topic_default():
    recipient = RecipientFactory()
    topic = TopicFactory(default_frequency="instant")
    Preference.objects.create(recipient=recipient, topic=topic, frequency="hourly")
    result = notify(recipient, topic, {"title": "t"})
    assert result.outcome == NotifyOutcome.DIGEST
    notification = result.notification
    assert (notification.recipient, notification.topic, notification.frequency) == (
        recipient,
        topic,
        "hourly",
    )
    assert notification.data == {"title": "t"} and notification.included_at is None
    assert not Delivery.objects.exists()


def test_daily_default_stores_a_daily_notification():
    topic = TopicFactory(default_frequency="daily")
    result = notify("b@example.com", topic, {"n": 1})
    assert result.outcome == NotifyOutcome.DIGEST and result.notification.frequency == "daily"


def test_off_stores_and_sends_nothing():
    recipient = RecipientFactory()
    topic = TopicFactory(default_frequency="hourly")
    Preference.objects.create(recipient=recipient, topic=topic, frequency="off")
    result = notify(recipient, topic, {"n": 1}, idempotency_key="k-off")
    assert result.outcome == NotifyOutcome.OFF
    assert result.delivery is None and result.notification is None
    assert _nothing_stored()


@pytest.mark.parametrize("frequency", ["instant", "hourly"])
def test_repeated_idempotency_key_stores_the_event_once(frequency):
    topic = TopicFactory(default_frequency=frequency)
    first = notify("c@example.com", topic, {"n": 1}, idempotency_key="evt-1")
    second = notify("c@example.com", topic, {"n": 2}, idempotency_key="evt-1")
    assert not first.duplicate and second.duplicate
    assert second.outcome == first.outcome
    assert Notification.objects.count() + Delivery.objects.count() == 1
    if frequency == "instant":
        assert second.delivery.pk == first.delivery.pk
        assert first.delivery.idempotency_key == "notify:evt-1"
    else:
        assert second.notification.pk == first.notification.pk


def test_idempotency_key_race_is_settled_by_the_unique_constraint(monkeypatch):
    """Two calls that both pass the look-up: the second insert loses and
    returns the first call's notification."""
    topic = TopicFactory(default_frequency="hourly")
    first = notify("d@example.com", topic, {"n": 1}, idempotency_key="race")
    monkeypatch.setattr(notifications, "_seen_before", lambda key: None)
    second = notify("d@example.com", topic, {"n": 2}, idempotency_key="race")
    assert second.duplicate and second.notification.pk == first.notification.pk
    assert Notification.objects.count() == 1


def test_suppressed_address_gets_nothing():
    suppression_add(email="e@example.com", reason="hard_bounce")
    for frequency in ("instant", "hourly"):
        topic = TopicFactory(default_frequency=frequency)
        assert notify("e@example.com", topic, {}).outcome == NotifyOutcome.SUPPRESSED
    erased = RecipientFactory(status=Recipient.Status.ERASED)
    assert notify(erased, topic, {}).outcome == NotifyOutcome.SUPPRESSED
    assert _nothing_stored()


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("a@example.com", "no-such-topic", {}), NotifierError, "No topic with key"),
        (("a@example.com", 42, {}), NotifierError, "topic must be"),
        (("not an address", "t", {}), InvalidAddress, "Invalid email"),
        (("a@example.com", "t", {"when": timezone.now()}), InvalidContext, "plain JSON"),
    ],
)
def test_bad_input_is_refused_and_nothing_stored(args, error, message):
    TopicFactory(key="t")
    with pytest.raises(error, match=message):
        notify(*args)
    assert _nothing_stored() and not Recipient.objects.exists()


@pytest.mark.parametrize("key", ["", "  ", 7, "k" * 241])
def test_bad_idempotency_key_is_refused(key):
    TopicFactory(key="t")
    with pytest.raises(NotifierError, match="idempotency_key"):
        notify("a@example.com", "t", {}, idempotency_key=key)
    assert _nothing_stored()


def test_broken_instant_template_is_the_callers_error():
    TopicFactory(key="t", default_frequency="instant", digest_item="{% if %}")
    with pytest.raises(NotifierError, match="compile"):
        notify("a@example.com", "t", {})
    assert _nothing_stored()


def test_storing_a_digest_event_takes_a_few_queries():
    recipient = RecipientFactory()
    topic = TopicFactory(default_frequency="hourly")
    with CaptureQueriesContext(connection) as queries:
        notify(recipient, topic, {"n": 1}, idempotency_key="q-1")
    # key look-ups (2), the topic event, preference, suppression, insert, savepoints
    assert len(queries) <= 10


def test_prune_deletes_old_included_notifications_only(settings):
    settings.NOTIFIER_NOTIFICATION_RETENTION_DAYS = 30
    topic = TopicFactory(default_frequency="hourly")
    now = timezone.now()
    old, recent, pending = (notify(f"p{i}@example.com", topic, {}).notification for i in range(3))
    Notification.objects.filter(pk=old.pk).update(included_at=now - timedelta(days=31))
    Notification.objects.filter(pk=recent.pk).update(included_at=now - timedelta(days=29))
    Notification.objects.filter(pk=pending.pk).update(created_at=now - timedelta(days=90))
    assert notifications_prune(now=now, chunk=1) == 1
    assert set(Notification.objects.values_list("pk", flat=True)) == {recent.pk, pending.pk}
    assert notifications_prune(now=now, retention_days=0) == 1
    assert list(Notification.objects.values_list("pk", flat=True)) == [pending.pk]


def test_every_accepted_event_is_logged_whatever_the_preference():
    """Automations read this log (by id): an event counts even when the
    recipient turned the topic's emails off; a repeated key is logged once."""
    from notifier.models import TopicEvent

    off = TopicFactory(default_frequency="off")
    instant = TopicFactory(default_frequency="instant")
    notify("ann@example.com", off, {"n": 1}, idempotency_key="log-1")
    notify("ann@example.com", off, {"n": 1}, idempotency_key="log-1")
    notify("ann@example.com", instant, {"n": 2})
    logged = list(TopicEvent.objects.order_by("id").values_list("topic_id", "data"))
    assert logged == [(off.pk, {"n": 1}), (instant.pk, {"n": 2})]
