"""Through the API to the ESP: a real Celery worker sends what the API queued."""

import pytest

from notifier.models import Delivery
from tests.api.conftest import ApiClient
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_an_api_message_is_sent_and_its_status_readable(celery_worker_process, fake_esp):
    from api.services import api_token_create

    _token, secret = api_token_create(service="billing")
    api = ApiClient(secret)
    response = api.post(
        "/api/v1/messages",
        {"to": "ann@example.com", "subject": "Receipt", "text": "Thanks"},
        headers={"Idempotency-Key": "receipt-1"},
    )
    assert response.status_code == 202
    url = response.json()["url"]
    wait_for(lambda: api.get(url).json()["status"] == "sent", timeout=30)
    assert [m["Subject"] for m in fake_esp.messages] == ["Receipt"]
    # Replaying the request sends nothing more.
    again = api.post(
        "/api/v1/messages",
        {"to": "ann@example.com", "subject": "Receipt", "text": "Thanks"},
        headers={"Idempotency-Key": "receipt-1"},
    )
    assert again["Idempotent-Replayed"] == "true"
    assert Delivery.objects.count() == 1 and len(fake_esp.messages) == 1
