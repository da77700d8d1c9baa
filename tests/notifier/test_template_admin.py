"""The template preview page: rendered for a recipient with a JSON context,
and a broken context or template shown to staff, never a server error."""

import json

import pytest

from tests.notifier.factories import RecipientFactory, TemplateFactory

pytestmark = pytest.mark.django_db


def _preview(client, template, **params):
    return client.get(f"/admin/notifier/template/{template.pk}/preview/", params)


def test_preview_renders_for_the_recipient_with_the_context(admin_client):
    template = TemplateFactory()
    RecipientFactory(email="grace@example.com", name="Grace Hopper")
    page = _preview(
        admin_client, template, recipient="grace@example.com", context=json.dumps({"code": "Z9"})
    )
    assert page.status_code == 200
    html = page.content.decode()
    assert "Hello Grace" in html and "Z9" in html


def test_preview_with_sample_data_and_bad_input_says_why(admin_client):
    template = TemplateFactory()
    page = _preview(admin_client, template, recipient="nobody@example.com", context="[1]")
    assert page.status_code == 200
    html = page.content.decode()
    assert "No recipient" in html and "The context must be a JSON object." in html
