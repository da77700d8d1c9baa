"""The HTML that leaves: a complete document, CSS inlined once on save, MJML."""

import pytest
from django.core.exceptions import ValidationError

from notifier import templating
from notifier.email_html import EmailHtmlProblem, email_html_compile
from notifier.models import Recipient, Template
from notifier.sending.message import delivery_build_message, preview_render
from notifier.services.templates import template_restore, template_save
from tests.notifier.factories import DeliveryFactory, RecipientFactory
from tests.notifier.html_parse import Document, assert_complete_document

STYLED = """<style>
  h1 { color: #aa0000; }
  td.price { font-weight: bold; }
  @media (max-width: 600px) { h1 { font-size: 20px; } }
</style>
<h1>Hello {{ recipient.first_name }}</h1>
<table>
{% for item in items %}<tr><td class="price {% if item.big %}big{% endif %}">{{ item.name }}:
{% if item.price > 10 %}dear{% else %}cheap{% endif %}</td></tr>{% endfor %}
</table>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""

MJML = """<mjml>
  <mj-head><mj-style inline="inline">.hello { background-color: #eeeeff; }</mj-style></mj-head>
  <mj-body>
    <mj-section><mj-column>
      <mj-text css-class="hello">Hello {{ recipient.first_name }}</mj-text>
      <mj-button href="https://shop.example/{{ recipient.first_name|lower }}">Shop</mj-button>
    </mj-column></mj-section>
    {% if vip %}<mj-section><mj-column><mj-text>VIP corner</mj-text></mj-column></mj-section>{% endif %}
  </mj-body>
</mjml>"""

ADA = {"recipient": {"first_name": "Ada", "name": "Ada Lovelace", "email": "ada@example.com"}}


def render(compiled: str, **context) -> str:
    return templating.render(compiled, {**ADA, **context})


def test_template_tags_survive_inlining_in_place():
    compiled = email_html_compile(source=STYLED, title="Hi {{ recipient.first_name }} & co")
    # Every tag and variable is still there, as written, and still compiles.
    for piece in (
        "{{ recipient.first_name }}",
        "{% for item in items %}",
        "{% if item.price > 10 %}",
        'class="price {% if item.big %}big{% endif %}"',
        'href="{{ unsubscribe_url }}"',
    ):
        assert piece in compiled
    html = render(
        compiled,
        items=[{"name": "Tea", "price": 12, "big": True}, {"name": "Cake", "price": 3}],
        unsubscribe_url="https://x.example/u/1",
    )
    document = assert_complete_document(html)
    # The loop stayed inside the table (a parser moves stray text out of it).
    cells = document.find("td", **{"class": "price big"}) + document.find(
        "td", **{"class": "price "}
    )
    assert [c["text"].split()[0] for c in cells] == ["Tea:", "Cake:"]
    assert "dear" in cells[0]["text"] and "cheap" in cells[1]["text"]
    assert all("font-weight: bold" in c["attrs"]["style"] for c in cells)
    (h1,) = document.find("h1")
    assert "color: #aa0000" in h1["attrs"]["style"] and h1["text"].strip() == "Hello Ada"
    (title,) = document.find("title")
    assert title["text"].strip() == "Hi Ada & co"
    # @media rules stay in a <style> for the clients that read them; the rest is inlined.
    assert "@media (max-width: 600px)" in html and "td.price" not in html
    (link,) = document.find("a")
    assert link["attrs"]["href"] == "https://x.example/u/1"


def test_the_default_layout_is_a_centred_table_of_600px_at_most():
    document = Document(email_html_compile(source="<p>Hi</p>"))
    assert any("max-width: 600px" in t["attrs"].get("style", "") for t in document.find("table"))
    assert document.find("td", align="center")


def test_a_complete_document_is_not_wrapped_again_but_completed():
    compiled = email_html_compile(
        source="<html><head><style>p{color:red}</style></head><body><p>x</p></body></html>"
    )
    document = assert_complete_document(compiled)
    assert document.tags().count("html") == 1 and not document.find("table")
    assert document.find("p")[0]["attrs"]["style"] == "color: red;"


def test_a_tag_between_attributes_is_refused_with_a_sentence():
    with pytest.raises(EmailHtmlProblem, match="between the attributes"):
        email_html_compile(source='<p {% if vip %}class="vip"{% endif %}>x</p>')


def test_mjml_compiles_and_keeps_its_template_tags():
    compiled = email_html_compile(source=MJML, source_format="mjml")
    html = render(compiled, vip=True)
    document = assert_complete_document(html)
    assert "Hello Ada" in html and "VIP corner" in html
    assert "VIP corner" not in render(compiled, vip=False)
    assert document.find("a", href="https://shop.example/ada")
    (hello,) = document.find("td", **{"class": "hello"})
    assert "background-color: #eeeeff" in hello["attrs"]["style"]


def test_broken_mjml_is_a_sentence():
    with pytest.raises(EmailHtmlProblem, match="The MJML does not compile"):
        email_html_compile(source="<mjml><mj-body><mj-section>", source_format="mjml")


@pytest.mark.django_db
def test_saving_stores_the_compiled_html_and_the_sender_renders_it():
    template = Template(
        name="styled", kind="campaign", subject="Hi {{ recipient.first_name }}", html_body=STYLED
    )
    template.full_clean()
    revision = template_save(template=template)
    stored = Template.objects.get(pk=template.pk)
    assert stored.compiled_html.startswith("<!DOCTYPE html>")
    assert 'style="' in stored.compiled_html and "{% for item in items %}" in stored.compiled_html
    assert revision.source_format == "html" and revision.layout == "centered"

    # The sender renders the stored document, not the source: prove it by
    # changing the stored copy behind the service's back.
    Template.objects.filter(pk=template.pk).update(
        compiled_html=stored.compiled_html.replace("Hello", "Stored hello")
    )
    delivery = DeliveryFactory(template=Template.objects.get(pk=template.pk), context={"items": []})
    message = delivery_build_message(delivery)
    html = message.alternatives[0][0]
    assert "Stored hello" in html
    assert_complete_document(html)
    # The text part is still derived from the HTML, without the CSS.
    assert "Stored hello" in message.body and "@media" not in message.body


@pytest.mark.django_db
def test_rows_without_a_stored_document_and_inline_html_still_leave_complete():
    recipient = RecipientFactory()
    old = DeliveryFactory(recipient=recipient)  # factory rows skip the service
    assert old.template.compiled_html == ""
    assert_complete_document(delivery_build_message(old).alternatives[0][0])
    inline = DeliveryFactory(
        template=None, subject="s", html_body="<p>Inline {{ code }}</p>", context={"code": "7"}
    )
    assert_complete_document(delivery_build_message(inline).alternatives[0][0])


@pytest.mark.django_db
def test_mjml_is_checked_on_save_and_restored_with_its_format():
    broken = Template(name="m", kind="campaign", subject="s", source_format="mjml", html_body="<p>")
    with pytest.raises(ValidationError) as error:
        broken.full_clean()
    assert "MJML" in str(error.value.message_dict["html_body"])

    template = Template(
        name="m", kind="campaign", subject="s", source_format="mjml", html_body=MJML
    )
    template.full_clean()
    first = template_save(template=template)
    template.source_format, template.html_body = "html", "<p>Now plain</p>"
    template_save(template=template)
    restored = template_restore(revision=first)
    assert restored.source_format == "mjml" and "mj-outlook-group-fix" in restored.compiled_html
    _subject, html, _text = preview_render(
        subject="s",
        html_body=restored.compiled_html,
        text_body="",
        context={},
        recipient=Recipient(email="ada@example.com", name="Ada Lovelace"),
    )
    assert "Hello Ada" in html


def test_template_tags_in_comments_and_outlook_conditionals_stay_in_them():
    source = (
        "<!-- for {{ recipient.email }} -->"
        '<!--[if mso]><table width="{{ width }}"><tr><td><![endif]-->'
        "<p>Hi {{ recipient.first_name }}</p>"
    )
    compiled = email_html_compile(source=source, layout="plain")
    html = render(compiled, width=600)
    assert "<!-- for ada@example.com -->" in html
    assert '<!--[if mso]><table width="600"><tr><td><![endif]-->' in html
    assert "--&gt;" not in html and "Hi Ada" in html
