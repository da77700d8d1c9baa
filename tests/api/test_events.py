"""POST /api/v1/events: authentication, validation, idempotency.

``notify()`` itself belongs to ``notifier.services.notifications``; these
tests replace it with a recording stand-in so they check what the API does
around it. ``test_events_reach_the_real_notify`` runs against the real one.
"""

import importlib.util

import pytest

import notifier
from api.models import IdempotencyRecord
from notifier.errors import NotifierError
from notifier.models import Topic
from tests.api.conftest import ApiClient, assert_matches_openapi

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/events"
EVENT = {"recipient": "ann@example.com", "topic": "comments", "data": {"author": "Bob"}}


@pytest.fixture
def topic(db):
    return Topic.objects.create(key="comments", name="Comments")


@pytest.fixture
def notify_calls(monkeypatch):
    calls = []

    def stand_in(*, recipient, topic, data, idempotency_key=None):
        if recipient == "refused@example.com":
            raise NotifierError("This recipient cannot be notified.")
        calls.append({"recipient": recipient, "topic": topic, "data": data, "key": idempotency_key})

    # Set in the module dict: reading the attribute would import the real one.
    monkeypatch.setitem(vars(notifier), "notify", stand_in)
    return calls


def test_an_event_is_handed_to_notify(api, topic, notify_calls):
    response = api.post(EVENTS, EVENT)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    assert_matches_openapi(response, "/events", "post")
    assert notify_calls == [
        {
            "recipient": "ann@example.com",
            "topic": "comments",
            "data": {"author": "Bob"},
            "key": None,
        }
    ]


def test_events_need_a_token(topic, notify_calls):
    response = ApiClient("ntf_wrong").post(EVENTS, EVENT)
    assert response.status_code == 401
    assert_matches_openapi(response, "/events", "post")
    assert notify_calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"topic": "comments"}, "(body)"),
        ({**EVENT, "topic": ""}, "topic"),
        ({**EVENT, "data": "text"}, "data"),
        ({**EVENT, "extra": 1}, "(body)"),
        ({**EVENT, "topic": "unknown"}, "topic"),
    ],
)
def test_invalid_events_are_refused(api, topic, notify_calls, body, field):
    response = api.post(EVENTS, body)
    assert response.status_code == 400
    assert field in [d["field"] for d in response.json()["error"]["details"]]
    assert_matches_openapi(response, "/events", "post")
    assert notify_calls == []


def test_notify_refusals_are_clear_errors(api, topic, notify_calls):
    response = api.post(EVENTS, {**EVENT, "recipient": "refused@example.com"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_event",
        "message": "This recipient cannot be notified.",
    }


def test_event_idempotency_replays_and_refuses(api, topic, notify_calls):
    headers = {"Idempotency-Key": "comment-7"}
    first = api.post(EVENTS, EVENT, headers=headers)
    again = api.post(EVENTS, EVENT, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again["Idempotent-Replayed"] == "true"
    assert len(notify_calls) == 1
    assert notify_calls[0]["key"] == "api:billing:comment-7"
    conflict = api.post(EVENTS, {**EVENT, "data": {"author": "Eve"}}, headers=headers)
    assert conflict.status_code == 422
    assert_matches_openapi(conflict, "/events", "post")
    assert len(notify_calls) == 1
    # A key used for a message cannot be replayed as an event either.
    other = api.post(
        "/api/v1/messages",
        {"to": "a@example.com", "subject": "s", "text": "t"},
        headers={"Idempotency-Key": "comment-7"},
    )
    assert other.status_code == 422
    assert IdempotencyRecord.objects.count() == 1


def test_oversized_events_are_refused(api, topic, notify_calls, settings):
    settings.API_MAX_BODY_BYTES = 200
    response = api.post(EVENTS, {**EVENT, "data": {"text": "x" * 500}})
    assert response.status_code == 413
    assert_matches_openapi(response, "/events", "post")
    assert notify_calls == []


@pytest.mark.skipif(
    importlib.util.find_spec("notifier.services.notifications") is None,
    reason="notifier.services.notifications (notify) is not in this tree yet",
)
def test_events_reach_the_real_notify(api, topic):
    from notifier.models import Delivery, Notification

    response = api.post(EVENTS, EVENT, headers={"Idempotency-Key": "real-1"})
    assert response.status_code == 202, response.content
    assert Notification.objects.count() + Delivery.objects.count() >= 1
