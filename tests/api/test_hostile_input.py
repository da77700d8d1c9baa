"""Client mistakes are answered 400 with the field and the reason, never 503
("retry later") and never with an ERROR traceback in the log; every path
under /api/ that does not exist answers a JSON 404."""

import logging
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from notifier.models import Delivery, Recipient
from tests.api.conftest import assert_matches_openapi
from tests.notifier.factories import TemplateFactory, TopicFactory

pytestmark = pytest.mark.django_db

MESSAGES = "/api/v1/messages"
EVENTS = "/api/v1/events"
INLINE = {"to": "ann@example.com", "subject": "Hello", "text": "Hi there"}


@pytest.fixture
def no_errors_logged(caplog):
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def _assert_refused(response, field: str | None, path: str = "/messages"):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    if field is not None:
        assert field in [d["field"] for d in error.get("details", [])], error
    assert_matches_openapi(response, path, "post")
    assert not Delivery.objects.exists()
    assert not Recipient.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**INLINE, "send_at": "0001-01-01T00:00:00+14:00"}, "send_at"),
        ({**INLINE, "send_at": "9999-12-31T23:59:59-14:00"}, "send_at"),
        ({**INLINE, "send_at": "2024-02-30T00:00:00Z"}, "send_at"),
        ({**INLINE, "send_at": "2024-01-01T25:00:00Z"}, "send_at"),
        ({**INLINE, "send_at": "2030-01-01T00:00:00+99:00"}, "send_at"),
        ({**INLINE, "text": "a\x00b"}, "text"),
        ({**INLINE, "subject": "\x00"}, "subject"),
        ({**INLINE, "context": {"k": "v\x00"}}, "context.k"),
        ({**INLINE, "context": {"k\x00": "v"}}, "context.k\x00"),
        ({**INLINE, "context": {"list": [1, "\ud800"]}}, "context.list.1"),
        ({"to": "ann@example.com", "template": "Password\x00reset"}, "template"),
        ({**INLINE, "name": "a\r\nBcc: x@example.com"}, "name"),
    ],
)
def test_malformed_values_are_refused_with_the_field(api, body, field, no_errors_logged):
    _assert_refused(api.post(MESSAGES, body), field)


def test_a_send_at_in_the_window_is_accepted(api):
    when = timezone.now() + timedelta(days=30)
    response = api.post(MESSAGES, {**INLINE, "send_at": when.isoformat()})
    assert response.status_code == 202


@pytest.mark.parametrize(
    "raw",
    [
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": NaN}}',
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": Infinity}}',
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": -Infinity}}',
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": 1e999}}',
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": %s}}'
        % ("9" * 5000),
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": %s}}'
        % ("[" * 5000 + "]" * 5000),
        '{"to": "ann@example.com", "subject": "s", "text": "t", "context": {"x": %s}}'
        % ("[" * 100 + "]" * 100),
    ],
    ids=["nan", "infinity", "-infinity", "overflow", "long-int", "5000-deep", "100-deep"],
)
def test_json_that_cannot_be_stored_is_refused(api, raw, no_errors_logged):
    response = api.post(MESSAGES, raw=raw)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] in ("invalid_json", "invalid_request")
    assert_matches_openapi(response, "/messages", "post")
    assert not Delivery.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipient": "ann@example.com", "topic": "news", "data": {"t": "\x00"}}, "data.t"),
        ({"recipient": "ann@example.com", "topic": "ne\x00ws"}, "topic"),
        ({"recipient": "ann@example.com", "topic": "news", "data": {"x": [[[[[[[[]]]]]]]]}}, None),
    ],
)
def test_events_refuse_malformed_values_too(api, body, field, no_errors_logged):
    TopicFactory(key="news", default_frequency="instant")
    response = api.post(EVENTS, body)
    if field is None:  # shallow enough: accepted
        assert response.status_code == 202
        return
    _assert_refused(response, field, "/events")


def test_a_template_found_by_name_still_works(api):
    TemplateFactory(name="Password reset")
    response = api.post(MESSAGES, {"to": "ann@example.com", "template": "Password reset"})
    assert response.status_code == 202


# --- Names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a\r\nb: 1", "tab\there", "nul\x00", "del\x7f", "c1\x85", "line\u2028", "para\u2029"]
)
def test_control_characters_in_a_name_are_refused(api, name):
    _assert_refused(api.post(MESSAGES, {**INLINE, "name": name}), "name")


def test_a_caller_cannot_rename_a_recipient_another_caller_created(api, api_token):
    from api.services import api_token_create

    other = type(api)(api_token_create(service="shop")[1])
    same_service = type(api)(api_token_create(service=api_token.service)[1])
    Recipient.objects.create(email="staff@example.com")  # staff, an import: no caller

    assert other.post(MESSAGES, {**INLINE, "name": "Ann Shop"}).status_code == 202
    assert api.post(MESSAGES, {**INLINE, "name": "Mallory"}).status_code == 202
    assert (
        api.post(MESSAGES, {**INLINE, "to": "staff@example.com", "name": "Eve"}).status_code == 202
    )
    assert Recipient.objects.get(email="ann@example.com").name == "Ann Shop"
    assert Recipient.objects.get(email="staff@example.com").name == ""

    # Its own recipients a service (any of its tokens) may name again.
    assert api.post(MESSAGES, {**INLINE, "to": "bob@example.com", "name": "Bob"}).status_code == 202
    assert (
        same_service.post(
            MESSAGES, {**INLINE, "to": "bob@example.com", "name": "Robert"}
        ).status_code
        == 202
    )
    bob = Recipient.objects.get(email="bob@example.com")
    assert (bob.name, bob.created_by) == ("Robert", f"api:{api_token.service}")


# --- Paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api",
        "/api/",
        "/api/v2/messages",
        "/api/v1/messages/not-a-uuid",
        "/api/v1/messages/00000000-0000-0000-0000-000000000000/extra",
        "/api/v1/%0A",
        "/api/v1/messages%0A",
        "/api/v1/events/",
    ],
)
@pytest.mark.parametrize("debug", [False, True])
def test_every_unknown_api_path_answers_a_json_404(path, debug, settings):
    settings.DEBUG = debug
    response = Client().get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_other_unknown_paths_keep_the_html_page():
    response = Client().get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.postgresql  # PostgreSQL refuses NUL in text; SQLite stores it
def test_a_value_the_database_refuses_is_the_callers_mistake(api, monkeypatch, no_errors_logged):
    """A last line: should a value pass every check and still be refused by
    PostgreSQL, the answer is a 400, not "retry later"."""
    from api import views
    from notifier.services import transactional

    for module in (views, transactional):
        monkeypatch.setattr(module, "storable_problem", lambda value, **kwargs: None)
    response = api.post(MESSAGES, {**INLINE, "text": "nul\x00"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert not Delivery.objects.exists()


def test_a_replay_is_answered_even_once_its_send_at_left_the_window(api, monkeypatch):
    from notifier.services import transactional

    body = {**INLINE, "send_at": (timezone.now() - timedelta(hours=20)).isoformat()}
    first = api.post(MESSAGES, body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    monkeypatch.setattr(transactional, "SEND_AT_MAX_PAST", timedelta(hours=1))  # time passed

    again = api.post(MESSAGES, body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    fresh = api.post(MESSAGES, body, headers={"Idempotency-Key": "k2"})
    assert fresh.status_code == 400
    assert fresh.json()["error"]["details"][0]["field"] == "send_at"
