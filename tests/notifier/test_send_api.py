"""``notifier.send``: validation, idempotency, suppression (no worker needed)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from notifier import send
from notifier.errors import InvalidAddress, InvalidContext, InvalidTemplate, NotifierError
from notifier.models import Delivery, Recipient
from notifier.services.suppressions import suppression_add
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db


def _nothing_stored():
    return Delivery.objects.count() == 0 and Recipient.objects.count() == 0


def test_send_stores_a_pending_delivery_for_the_recipient(django_capture_on_commit_callbacks):
    template = TemplateFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        delivery = send(template=template, to="New@Example.com", context={"code": "1234"})
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.recipient.email == "new@example.com"
    assert delivery.kind == Delivery.Kind.TRANSACTIONAL
    assert len(callbacks) == 1  # enqueued only after commit


def test_template_by_name():
    TemplateFactory(name="welcome")
    assert (
        send(template="welcome", to="a@example.com", context={"code": 1}).template.name == "welcome"
    )


@pytest.mark.parametrize("address", ["not-an-address", "a@b", "", "x@@example.com"])
def test_invalid_address_is_refused_and_nothing_stored(address):
    with pytest.raises(InvalidAddress):
        send(subject="s", text="t", to=address)
    assert _nothing_stored()


def test_template_with_syntax_error_is_refused():
    with pytest.raises(InvalidTemplate, match="compile"):
        send(subject="Hi {{ name", text="t", to="a@example.com")
    assert _nothing_stored()


def test_template_reaching_beyond_its_data_is_refused():
    with pytest.raises(InvalidTemplate):
        send(subject="x", html="{% debug %}", to="a@example.com")
    with pytest.raises(InvalidTemplate):
        send(subject="x", html="{% load log %}", to="a@example.com")
    with pytest.raises(InvalidTemplate):
        send(subject="x", html="{{ recipient.__dict__ }}", to="a@example.com")
    assert _nothing_stored()


def test_context_that_is_not_plain_data_is_refused():
    with pytest.raises(InvalidContext):
        send(subject="x", text="t", to="a@example.com", context={"user": object()})
    assert _nothing_stored()


def test_missing_content_and_unknown_template_are_refused():
    with pytest.raises(InvalidTemplate):
        send(to="a@example.com")
    with pytest.raises(InvalidTemplate, match="No template named"):
        send(template="nope", to="a@example.com")
    with pytest.raises(NotifierError, match="timezone-aware"):
        send(subject="s", text="t", to="a@example.com", send_at=timezone.now().replace(tzinfo=None))
    assert _nothing_stored()


def test_same_idempotency_key_returns_the_same_delivery(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        first = send(subject="s", text="t", to="a@example.com", idempotency_key="reset-1")
        second = send(subject="s", text="t", to="a@example.com", idempotency_key="reset-1")
    assert first.pk == second.pk
    assert Delivery.objects.count() == 1
    assert len(callbacks) == 1


def test_suppressed_address_gets_a_suppressed_delivery_and_no_task(
    django_capture_on_commit_callbacks,
):
    suppression_add(email="gone@example.com", reason="hard_bounce")
    with django_capture_on_commit_callbacks() as callbacks:
        delivery = send(subject="s", text="t", to="Gone@example.com")
    assert delivery.status == Delivery.Status.SUPPRESSED
    assert delivery.status_reason == "Not sent: the address is suppressed (hard bounce)."
    assert callbacks == []


def test_future_send_at_waits_for_the_sweeper(django_capture_on_commit_callbacks):
    later = timezone.now() + timedelta(hours=1)
    with django_capture_on_commit_callbacks() as callbacks:
        delivery = send(subject="s", text="t", to="a@example.com", send_at=later)
    assert delivery.next_attempt_at == later
    assert callbacks == []


def test_context_that_makes_the_render_run_away_is_refused():
    template = TemplateFactory(
        html_body="{% for a in s %}{% for b in s %}{% for c in s %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    )
    with pytest.raises(InvalidTemplate, match="NOTIFIER_RENDER_MAX_STEPS"):
        send(template=template, to="a@example.com", context={"s": "x" * 200})
    with pytest.raises(InvalidTemplate, match="NOTIFIER_RENDER_MAX_WIDTH"):
        send(to="a@example.com", subject="s", html='{{ "x"|ljust:"100000000" }}')
    assert not Delivery.objects.exists()
