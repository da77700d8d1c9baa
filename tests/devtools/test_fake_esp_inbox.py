"""The fake ESP's development inbox: messages for people, as Mailpit shows them."""

import html
import re

import pytest
import requests

from notifier import send
from notifier.sending import deliveries_send_batch
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db


def test_the_inbox_lists_messages_and_shows_one_with_headers_and_its_html(
    fake_esp, fake_esp_server
):
    template = TemplateFactory(
        subject="Hello {{ recipient.first_name }}",
        html_body='<p>Hi "{{ recipient.name }}"</p><script>alert(1)</script>',
    )
    first = send(template=template, to="ada@example.com", name="Ada Lovelace")
    second = send(template=template, to="grace@example.com", name="Grace Hopper")
    deliveries_send_batch(delivery_ids=[first.pk])
    deliveries_send_batch(delivery_ids=[second.pk])

    response = requests.get(f"{fake_esp_server.url}_fake/inbox", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    page = response.text
    # Newest first, and the newest is shown.
    subjects = re.findall(r'<div class="subject">([^<]*)</div>', page)
    assert subjects == ["Hello Grace", "Hello Ada"]
    assert '<th scope="row">Message-ID</th>' in page
    frame = re.search(r'<iframe sandbox="" title="HTML part" srcdoc="([^"]*)"></iframe>', page)
    assert frame, "the HTML part in a sandboxed frame"
    shown = html.unescape(frame[1])
    assert shown.startswith("<!DOCTYPE html>") and 'Hi "Grace Hopper"' in shown
    assert "<script>" not in page.replace(frame[1], "")  # no script outside the frame

    # Choosing another message shows it; an unknown id falls back to the newest.
    ada_id = next(m["MessageID"] for m in fake_esp.messages if "ada@" in m["To"])
    chosen = requests.get(f"{fake_esp_server.url}_fake/inbox", params={"id": ada_id}, timeout=5)
    assert "<h2>Hello Ada</h2>" in chosen.text
    unknown = requests.get(f"{fake_esp_server.url}_fake/inbox?id=%3Cx%3E", timeout=5)
    assert unknown.status_code == 200 and "<h2>Hello Grace</h2>" in unknown.text

    # The JSON stays for tests and scripts.
    assert len(requests.get(f"{fake_esp_server.url}_fake/messages", timeout=5).json()) == 2


def test_an_empty_inbox_says_so(fake_esp, fake_esp_server):
    page = requests.get(f"{fake_esp_server.url}_fake/inbox", timeout=5).text
    assert "No messages yet." in page
