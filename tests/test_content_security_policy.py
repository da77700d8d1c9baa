"""The Content-Security-Policy header on admin and public pages."""

import re

import pytest
from django.test import Client

from notifier.services.unsubscribe import unsubscribe_token
from tests.campaigns.factories import CampaignFactory
from tests.notifier.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in header.split(";") if part.strip())
    }


def _inline_scripts(html: str) -> list[str]:
    """The attributes of every <script> without a src (inline code)."""
    return [attrs for attrs in re.findall(r"<script\b([^>]*)>", html) if "src=" not in attrs]


def test_public_pages_forbid_inline_script_and_framing():
    token = unsubscribe_token(recipient=RecipientFactory())
    response = Client().get(f"/unsubscribe/{token}/")
    policy = _directives(response)
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert _inline_scripts(response.content.decode()) == []


def test_admin_inline_script_carries_the_request_nonce(admin_client):
    campaign = CampaignFactory()
    response = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert response.status_code == 200
    script_src = _directives(response)["script-src"]
    assert "'unsafe-inline'" not in script_src
    (nonce,) = [v.removeprefix("'nonce-").removesuffix("'") for v in script_src if "nonce" in v]
    scripts = _inline_scripts(response.content.decode())
    assert scripts and all(f'nonce="{nonce}"' in attrs for attrs in scripts)


def test_previews_render_inside_the_policy(admin_client):
    campaign = CampaignFactory()
    response = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/preview/")
    policy = _directives(response)
    # The srcdoc frame inherits the policy: no script, its remote images shown.
    assert policy["script-src"] == ["'self'"] and "https:" in policy["img-src"]
    assert 'sandbox=""' in response.content.decode()
