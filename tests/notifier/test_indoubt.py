"""In-doubt deliveries are resolved by asking the ESP (Postmark's outbound
message search, implemented by the fake ESP): found -> sent with the ESP's
id; not found -> sent again once; the ESP cannot answer -> left in doubt and
asked again later. Every step is recorded on the delivery."""

from datetime import timedelta

import pytest
from django.utils import timezone

from notifier.models import Delivery, DeliveryResolution
from notifier.sending import deliveries_send_batch
from notifier.services.indoubt import deliveries_resolve_in_doubt
from tests.notifier.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def _in_doubt(minutes_ago: float = 10, **fields) -> Delivery:
    delivery = DeliveryFactory(status=Delivery.Status.UNKNOWN, **fields)
    Delivery.objects.filter(pk=delivery.pk).update(
        updated_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    delivery.refresh_from_db()
    return delivery


def _accepted_by_the_esp(fake_esp, delivery: Delivery) -> str:
    """The ESP took the message although its answer never reached us."""
    answer = fake_esp.accept(
        {"To": delivery.recipient.email, "Metadata": {"delivery": str(delivery.uuid)}}
    )
    return answer["MessageID"]


def test_a_message_the_esp_has_is_marked_sent_with_its_id(fake_esp):
    delivery = _in_doubt()
    esp_id = _accepted_by_the_esp(fake_esp, delivery)
    _accepted_by_the_esp(fake_esp, _in_doubt())  # another one: the search is by delivery

    assert deliveries_resolve_in_doubt() == {"found": 2}
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.esp_message_id == esp_id
    (resolution,) = delivery.resolutions.all()
    assert resolution.verdict == "found" and esp_id in resolution.detail
    assert len(fake_esp.messages) == 2  # nothing sent again


def test_a_message_the_esp_never_got_is_sent_again_once(fake_esp):
    delivery = _in_doubt()
    assert deliveries_resolve_in_doubt() == {"resent": 1}
    assert deliveries_resolve_in_doubt() == {}  # a second sweep finds nothing to do
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.dispatched_at is None
    assert deliveries_send_batch(delivery_ids=[delivery.pk]) == {"sent": 1}
    assert len(fake_esp.messages) == 1

    # In doubt again after the resend, and not found: staff decide, no third copy.
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.UNKNOWN, updated_at=timezone.now() - timedelta(hours=1)
    )
    fake_esp.messages.clear()
    assert deliveries_resolve_in_doubt() == {"left": 1}
    assert deliveries_resolve_in_doubt() == {}
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.UNKNOWN
    assert "left for staff" in delivery.status_reason
    assert list(delivery.resolutions.order_by("id").values_list("verdict", flat=True)) == [
        "resent",
        "left",
    ]


def test_a_row_is_not_looked_up_before_the_esp_has_indexed_it(fake_esp, settings):
    settings.NOTIFIER_INDOUBT_INDEX_DELAY = 300
    young = _in_doubt(minutes_ago=1)
    assert deliveries_resolve_in_doubt() == {}
    young.refresh_from_db()
    assert young.status == Delivery.Status.UNKNOWN and not young.resolutions.exists()


def test_when_the_esp_cannot_answer_the_row_stays_in_doubt_and_is_asked_later(fake_esp):
    delivery = _in_doubt()
    fake_esp.faults["search_status"] = 503
    assert deliveries_resolve_in_doubt() == {"unavailable": 1}
    assert deliveries_resolve_in_doubt() == {}  # backing off
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.UNKNOWN
    assert delivery.next_attempt_at > timezone.now() + timedelta(minutes=4)
    assert "503" in delivery.resolutions.get().detail

    # The ESP is back: the next look-up (when due) settles it.
    fake_esp.faults["search_status"] = 0
    _accepted_by_the_esp(fake_esp, delivery)
    later = timezone.now() + timedelta(minutes=11)
    assert deliveries_resolve_in_doubt(now=later) == {"found": 1}


def test_smtp_rows_wait_for_staff(fake_esp):
    delivery = _in_doubt(transport="smtp")
    assert deliveries_resolve_in_doubt() == {}
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.UNKNOWN
    assert not DeliveryResolution.objects.exists()


def test_the_fake_esp_search_speaks_postmarks_api(fake_esp_server, fake_esp):
    import requests

    delivery = _in_doubt()
    _accepted_by_the_esp(fake_esp, delivery)
    url = f"{fake_esp_server.url}messages/outbound"
    headers = {"X-Postmark-Server-Token": "test-fake-esp-token", "Accept": "application/json"}
    found = requests.get(
        url,
        params={"count": 5, "offset": 0, "metadata_delivery": str(delivery.uuid)},
        headers=headers,
        timeout=5,
    ).json()
    assert found["TotalCount"] == 1 and found["Messages"][0]["Status"] == "Sent"
    assert requests.get(url, params={"count": 5, "offset": 0}, timeout=5).status_code == 401
    assert (
        requests.get(url, params={"count": 0, "offset": 0}, headers=headers, timeout=5).status_code
        == 422
    )


def test_a_restarted_fake_esp_still_finds_what_it_recorded(tmp_path):
    from devtools.fake_esp import FakeESPState

    record = str(tmp_path / "accepted.jsonl")
    before = FakeESPState(token=None, record_path=record, light=True)
    answer = before.accept({"To": "a@example.com", "Metadata": {"delivery": "d-1"}})
    after = FakeESPState(token=None, record_path=record, light=True)  # the ESP restarted
    status, body = after.search({"count": ["1"], "offset": ["0"], "metadata_delivery": ["d-1"]})
    assert status == 200 and body["Messages"][0]["MessageID"] == answer["MessageID"]
