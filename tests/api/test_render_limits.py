"""A request whose message would break the render limits is a 400, never a hung worker."""

import pytest

from notifier.models import Delivery

pytestmark = pytest.mark.django_db

MESSAGES = "/api/v1/messages"
NESTED = "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        ({"html": '{{ "x"|ljust:"100000000" }}'}, "NOTIFIER_RENDER_MAX_WIDTH"),
        ({"html": NESTED, "context": {"s": "x" * 200}}, "NOTIFIER_RENDER_MAX_STEPS"),
    ],
)
def test_a_runaway_message_is_refused_with_the_limit_named(api, body, limit):
    response = api.post(MESSAGES, {"to": "ann@example.com", "subject": "Hi", **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_message" and limit in error["message"]
    assert not Delivery.objects.exists()
