"""Staff can send a digest now (for recipients, or for a topic), and a topic
without its own entry template shows readable lines, never a Python repr."""

import json
from email.utils import parseaddr

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from notifier.models import Delivery, Notification, Topic
from notifier.services.digests import digest_context
from notifier.services.notifications import notify
from tests.conftest import wait_for
from tests.notifier.factories import RecipientFactory, TopicFactory


def _text(message) -> str:
    return message.get("TextBody") or ""


@pytest.mark.django_db
def test_an_entry_without_its_own_template_reads_as_words():
    topic = TopicFactory(digest_item="{{ data }}")
    context = digest_context(
        frequency="hourly",
        window="w",
        entries={topic.pk: [(1, timezone.now())]},
        topics={topic.pk: topic},
        data={1: {"title": "Bob replied", "tags": ["a", "b"], "n": 2}},
    )
    (item,) = context["sections"][0]["items"]
    assert item["text"] == "title: Bob replied · tags: a, b · n: 2"
    assert "{" not in item["html"] and "'" not in item["html"]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_send_digest_now_from_the_topic_admin(client, celery_worker_process, fake_esp):
    comments = TopicFactory(key="comments", default_frequency="hourly")
    likes = TopicFactory(key="likes", default_frequency="hourly")
    ann, bob, cid = (RecipientFactory(email=f"{n}@example.com") for n in ("ann", "bob", "cid"))
    notify(ann, comments, {"title": "c1"})
    notify(ann, likes, {"title": "l1"})  # goes with ann's digest: all her pending hourly ones
    notify(bob, likes, {"title": "l2"})  # bob has nothing of "comments": not sent now
    notify(cid, comments, {"title": "c2"})
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)

    response = client.post(
        reverse("admin:notifier_topic_changelist"),
        {"action": "send_digest_now", "_selected_action": [comments.pk]},
        follow=True,
    )
    assert "Building and sending the digests of 2 recipients now" in response.content.decode()
    wait_for(lambda: len(fake_esp.messages) == 2, timeout=60)
    by_to = {parseaddr(m["To"])[1]: _text(m) for m in fake_esp.messages}
    assert set(by_to) == {"ann@example.com", "cid@example.com"}
    assert "c1" in by_to["ann@example.com"] and "l1" in by_to["ann@example.com"]
    assert "c2" in by_to["cid@example.com"]
    assert Notification.objects.filter(recipient=bob, included_at__isnull=True).count() == 1

    # Nothing left for them: a second press sends nothing more.
    again = client.post(
        reverse("admin:notifier_topic_changelist"),
        {"action": "send_digest_now", "_selected_action": [comments.pk]},
        follow=True,
    )
    assert "nothing to send" in again.content.decode()
    # Bob's, from the recipient admin.
    client.post(
        reverse("admin:notifier_recipient_changelist"),
        {"action": "send_digest_now", "_selected_action": [bob.pk]},
    )
    wait_for(lambda: Delivery.objects.filter(kind="digest", status="sent").count() == 3, 60)
    assert len(fake_esp.messages) == 3


@pytest.mark.django_db
def test_demo_data_has_a_readable_digest_topic_with_waiting_comments(settings, capsys):
    settings.DEBUG = True
    call_command("demo_setup")
    call_command("demo_setup")  # idempotent
    topic = Topic.objects.get(key="comments")
    waiting = Notification.objects.filter(topic=topic, included_at__isnull=True)
    assert waiting.count() == 4
    context = digest_context(
        frequency="hourly",
        window="w",
        entries={topic.pk: [(n.pk, n.created_at) for n in waiting]},
        topics={topic.pk: topic},
        data={n.pk: n.data for n in waiting},
    )
    texts = {item["text"] for item in context["sections"][0]["items"]}
    assert "Grace Hopper commented on Notes on the Analytical Engine" in texts
    assert all("{" not in text for text in texts), json.dumps(sorted(texts))
