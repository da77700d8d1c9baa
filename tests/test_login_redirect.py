"""A staff login without ``next`` lands on the admin index, which exists
(Django's default, /accounts/profile/, does not)."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client


@pytest.mark.django_db
def test_a_login_without_next_goes_to_the_admin_index():
    get_user_model().objects.create_superuser("staff", "staff@example.com", "a-long-password-1")
    client = Client()
    response = client.post("/admin/login/", {"username": "staff", "password": "a-long-password-1"})
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get(response["Location"]).status_code == 200
