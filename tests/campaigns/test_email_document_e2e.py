"""What a campaign's recipients get, read back from the fake ESP: a complete
HTML document with the template's CSS inlined; MJML compiled on save."""

import pytest

from campaigns.models import ListMembership
from campaigns.services.campaigns import campaign_launch_now
from notifier.models import Template
from tests.campaigns.factories import CampaignFactory, ContactListFactory
from tests.campaigns.test_e2e_worker import wait_closed
from tests.notifier.factories import RecipientFactory
from tests.notifier.html_parse import assert_complete_document

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

STYLED = """<style>
h1 { color: #aa0000; font-size: 28px; }
p.lead { font-style: italic; }
</style>
<h1>Hello {{ recipient.first_name }}</h1>
<p class="lead">{{ offer }} this week.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""

MJML = """<mjml><mj-head><mj-style inline="inline">.hello { background-color: #eeeeff; }</mj-style>
</mj-head><mj-body><mj-section><mj-column>
<mj-text css-class="hello">Hello {{ recipient.first_name }}, {{ offer }}</mj-text>
<mj-button href="https://shop.example/spring">See the collection</mj-button>
</mj-column></mj-section></mj-body></mjml>"""


def add_template(client, **fields) -> Template:
    data = {"kind": "campaign", "layout": "centered", "text_body": "", **fields}
    response = client.post("/admin/notifier/template/add/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    return Template.objects.get(name=fields["name"])


def send_campaign(template: Template, fake_esp) -> dict:
    ada = RecipientFactory(email="ada@example.com", name="Ada Lovelace")
    audience = ContactListFactory()
    ListMembership.objects.create(contact_list=audience, recipient=ada)
    campaign = CampaignFactory(template=template, context={"offer": "20% off"})
    campaign.contact_lists.set([audience])
    run = wait_closed(campaign_launch_now(campaign=campaign).pk)
    assert run.totals["sent"] == 1
    (message,) = fake_esp.messages
    return message


def test_a_campaign_message_is_a_complete_document_with_inline_styles(
    celery_worker_process, fake_esp, marketer
):
    template = add_template(
        marketer,
        name="Spring",
        subject="Spring news for {{ recipient.first_name }}",
        source_format="html",
        html_body=STYLED,
    )
    message = send_campaign(template, fake_esp)
    document = assert_complete_document(message["HtmlBody"])
    (title,) = document.find("title")
    assert title["text"].strip() == "Spring news for Ada"
    (h1,) = document.find("h1")
    assert h1["text"].strip() == "Hello Ada"
    assert "color: #aa0000" in h1["attrs"]["style"] and "font-size: 28px" in h1["attrs"]["style"]
    (lead,) = document.find("p", **{"class": "lead"})
    assert "font-style: italic" in lead["attrs"]["style"]
    assert lead["text"].strip() == "20% off this week."
    assert "<style" not in message["HtmlBody"]  # nothing left to inline
    unsubscribe = [a for a in document.find("a") if a["text"].strip() == "Unsubscribe"]
    assert unsubscribe[0]["attrs"]["href"].startswith("http")
    # The text part is derived from the HTML: words, no markup or CSS.
    assert "Hello Ada" in message["TextBody"] and "color" not in message["TextBody"]


def test_an_mjml_template_compiles_on_save_and_sends(celery_worker_process, fake_esp, marketer):
    template = add_template(
        marketer, name="Spring MJML", subject="Spring", source_format="mjml", html_body=MJML
    )
    assert "mj-column-per-100" in template.compiled_html  # compiled when saved
    message = send_campaign(template, fake_esp)
    document = assert_complete_document(message["HtmlBody"])
    (hello,) = document.find("td", **{"class": "hello"})
    assert "background-color: #eeeeff" in hello["attrs"]["style"]
    assert "Hello Ada, 20% off" in message["HtmlBody"]
    assert document.find("a", href="https://shop.example/spring")
