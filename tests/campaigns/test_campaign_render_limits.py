"""A campaign whose context makes its template run away is refused when saved."""

import json

import pytest

from campaigns.models import Campaign
from tests.campaigns.factories import ContactListFactory
from tests.campaigns.test_admin import _campaign_form
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db


def test_the_campaign_form_names_the_broken_render_limit(marketer):
    template = TemplateFactory(
        kind="campaign", html_body="{% for a in s %}" * 3 + "{% endfor %}" * 3
    )
    response = marketer.post(
        "/admin/campaigns/campaign/add/",
        _campaign_form(
            template=template.pk,
            contact_lists=[ContactListFactory().pk],
            context=json.dumps({"s": "x" * 200}),
        ),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "NOTIFIER_RENDER_MAX_STEPS" in str(errors["template"])
    assert not Campaign.objects.exists()
