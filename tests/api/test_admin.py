"""Tokens are created and revoked by staff in the admin; the secret is shown once."""

import hashlib

import pytest
from django.contrib.messages import get_messages

from api.models import ApiToken
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db


def test_staff_create_a_token_and_see_its_secret_once(admin_client):
    response = admin_client.post(
        "/admin/api/apitoken/add/",
        {"service": "billing", "description": "invoices", "rate_limit_per_minute": "100"},
    )
    assert response.status_code == 302, response.content
    token = ApiToken.objects.get()
    words = " ".join(str(m) for m in get_messages(response.wsgi_request)).split()
    (secret,) = [word for word in words if word.startswith("ntf_")]
    assert hashlib.sha256(secret.encode()).hexdigest() == token.key_hash
    assert (token.service, token.rate_limit_per_minute) == ("billing", 100)
    # Shown on the next page (the redirect's target), then never again.
    assert secret in admin_client.get(response.url).content.decode()
    page = admin_client.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()
    assert secret not in page and token.key_hash not in page
    assert (
        ApiClient(secret).get("/api/v1/messages/00000000-0000-0000-0000-000000000000").status_code
        == 404
    )


def test_staff_revoke_tokens(admin_client):
    admin_client.post("/admin/api/apitoken/add/", {"service": "billing"})
    token = ApiToken.objects.get()
    response = admin_client.post(
        "/admin/api/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_an_invalid_service_name_is_refused(admin_client):
    response = admin_client.post("/admin/api/apitoken/add/", {"service": "no spaces please"})
    assert response.status_code == 200  # the form again, with its error
    assert ApiToken.objects.count() == 0
