import pytest
from django.core.exceptions import ValidationError

from notifier import templating
from notifier.models import Template


def test_renders_with_autoescape_and_derives_text():
    subject, html, text = templating.render_message(
        subject="Hi {{ name }}",
        html_body="<p>{{ name }} said {{ quote }}</p>",
        text_body="",
        context={"name": "Ann", "quote": "<script>x</script>"},
    )
    assert subject == "Hi Ann"
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "Ann said" in text and "<p>" not in text


def test_subject_is_not_html_escaped_and_is_one_line():
    subject, _, _ = templating.render_message(
        subject="Tom & Jerry\n{{ x }}", html_body="", text_body="t", context={"x": "<3"}
    )
    assert subject == "Tom & Jerry <3"


@pytest.mark.parametrize(
    "source",
    [
        "{% load static %}{% static 'x' %}",
        "{% include 'admin/base.html' %}",
        "{% extends 'admin/base.html' %}",
        "{% debug %}",
        "{% url 'admin:index' %}",
        "{% csrf_token %}",
    ],
)
def test_tags_reaching_beyond_the_data_are_refused(source):
    with pytest.raises(templating.TemplateSyntaxProblem):
        templating.check_syntax(source)


def test_private_attributes_are_refused():
    with pytest.raises(templating.TemplateSyntaxProblem, match="underscore"):
        templating.check_syntax("{{ name.__class__ }}")


def test_context_must_be_plain_data():
    with pytest.raises(templating.ContextNotPlainData):
        templating.plain_data({"user": object()})


def test_syntax_error_names_the_line():
    with pytest.raises(templating.TemplateSyntaxProblem, match="line 2"):
        templating.check_syntax("ok\n{% if %}")


@pytest.mark.django_db
def test_template_clean_reports_each_broken_part():
    template = Template(name="t", subject="{{ a", html_body="{% for x in %}", text_body="fine")
    with pytest.raises(ValidationError) as info:
        template.full_clean()
    assert set(info.value.message_dict) == {"subject", "html_body"}
