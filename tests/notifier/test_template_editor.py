"""The template editor's live preview endpoint (the browser test drives the page)."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.notifier.html_parse import assert_complete_document

pytestmark = pytest.mark.django_db

URL = "/admin/notifier/template/live-preview/"


def test_the_preview_renders_the_unsaved_source_as_it_would_be_sent(marketer):
    answer = marketer.post(
        URL,
        {
            "subject": "Hi {{ recipient.first_name }}",
            "source_format": "html",
            "layout": "centered",
            "html_body": "<style>h1{color:#a00}</style><h1>Hello {{ recipient.first_name }}</h1>"
            '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
            "text_body": "",
        },
    )
    assert answer.status_code == 200
    data = answer.json()
    assert data["subject"] == "Hi Ada"
    document = assert_complete_document(data["html"])
    (h1,) = document.find("h1")
    assert "color: #a00" in h1["attrs"]["style"]
    assert document.find("a", href="https://example.com/unsubscribe/sample")
    assert "Hello Ada" in data["text"]


def test_mjml_previews_too(marketer):
    data = marketer.post(
        URL,
        {
            "source_format": "mjml",
            "html_body": "<mjml><mj-body><mj-section><mj-column><mj-text>Hi {{ recipient.name }}"
            "</mj-text></mj-column></mj-section></mj-body></mjml>",
        },
    ).json()
    assert "Hi Ada Lovelace" in data["html"]


@pytest.mark.parametrize(
    "source, message",
    [
        ("{% if %}", "line 1"),
        ("{{ recipient.name", "opened but never closed"),
        ('<p {% if x %}class="a"{% endif %}>', "between the attributes"),
    ],
)
def test_a_broken_source_is_an_answer_not_an_error(marketer, source, message):
    answer = marketer.post(URL, {"html_body": source})
    assert answer.status_code == 200 and message in answer.json()["error"]


def test_bad_input_is_a_4xx(marketer):
    answer = marketer.post(URL, {"html_body": "x", "source_format": "docx"})
    assert answer.status_code == 400 and "source_format" in answer.json()["error"]
    assert marketer.get(URL).status_code == 405


def test_it_needs_csrf_and_a_template_permission(marketing_group):
    mia = User.objects.create_user("mia", password="pw", is_staff=True)
    mia.groups.add(marketing_group)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(mia)
    assert strict.post(URL, {"html_body": "<p>x</p>"}).status_code == 403
    outsider = Client()
    outsider.force_login(User.objects.create_user("oscar", password="pw", is_staff=True))
    assert outsider.post(URL, {"html_body": "<p>x</p>"}).status_code == 403


def test_the_editor_page_loads_its_script_from_our_origin(marketer):
    page = marketer.get("/admin/notifier/template/add/").content.decode()
    assert 'src="/static/notifier/template_editor.js"' in page
    assert 'data-preview-url="/admin/notifier/template/live-preview/"' in page
    assert "onload=" not in page and "oninput=" not in page
