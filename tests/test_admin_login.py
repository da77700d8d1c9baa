"""Admin login brute-force protection (django-axes): lockout per username and IP."""

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client

from api.services import api_token_create

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"


@pytest.fixture
def staff():
    return User.objects.create_user("mia", password="right-password-1", is_staff=True)


def _login(password: str, ip: str = "10.0.0.1", client: Client | None = None):
    client = client or Client(REMOTE_ADDR=ip)
    return client.post(
        LOGIN, {"username": "mia", "password": password, "next": "/admin/"}, REMOTE_ADDR=ip
    )


def test_repeated_failures_lock_the_username_and_ip_out(settings, staff):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        assert _login("wrong").status_code == 200  # the form again, with its error
    locked = _login("wrong")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed sign-in attempts" in page and "mia" in page
    assert "0:15:00" in page  # the cool-off
    # Now even the right password is refused, with the same clear page.
    right = _login("right-password-1")
    assert right.status_code == 429 and "_auth_user_id" not in right.client.session
    # Another address is not locked out by these failures.
    elsewhere = _login("right-password-1", ip="10.0.0.2")
    assert elsewhere.status_code == 302


def test_an_administrator_unlocks_from_the_admin(settings, staff, admin_client):
    settings.AXES_FAILURE_LIMIT = 2
    _login("wrong")
    assert _login("wrong").status_code == 429
    (attempt,) = AccessAttempt.objects.all()
    listing = admin_client.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "mia" in listing.content.decode()
    response = admin_client.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert _login("right-password-1").status_code == 302


def test_a_success_before_the_limit_starts_the_count_again(settings, staff):
    settings.AXES_FAILURE_LIMIT = 3
    _login("wrong")
    _login("wrong")
    assert _login("right-password-1").status_code == 302
    _login("wrong")
    _login("wrong")
    assert _login("right-password-1").status_code == 302


def test_api_tokens_are_not_affected_by_a_lockout(settings, staff):
    settings.AXES_FAILURE_LIMIT = 2
    _login("wrong")
    assert _login("wrong").status_code == 429
    _token, secret = api_token_create(service="billing")
    response = Client(REMOTE_ADDR="10.0.0.1").post(
        "/api/v1/messages",
        data={"to": "ann@example.com", "subject": "Hi", "text": "Hi"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 202, response.content


def test_forwarded_for_is_trusted_only_behind_the_configured_proxies(settings, staff):
    settings.AXES_FAILURE_LIMIT = 2
    settings.LOGIN_PROXY_COUNT = 1

    def login(password, forwarded):
        return Client().post(
            LOGIN,
            {"username": "mia", "password": password},
            REMOTE_ADDR="192.168.0.1",
            HTTP_X_FORWARDED_FOR=forwarded,
        )

    # The client prepends a fresh address each time: only the proxy's entry counts.
    login("wrong", "1.1.1.1, 203.0.113.9")
    assert login("wrong", "2.2.2.2, 203.0.113.9").status_code == 429
    assert login("right-password-1", "203.0.113.10").status_code == 302
