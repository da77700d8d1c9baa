"""POST /api/v1/messages and GET /api/v1/messages/<id>: authentication, rate
limit, idempotency, validation, size limits, and the answers' shape."""

import hashlib
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from api.models import ApiToken, IdempotencyRecord
from api.services import api_token_create, api_tokens_revoke
from notifier.models import Delivery, DeliveryEvent, Recipient
from tests.api.conftest import ApiClient, assert_matches_openapi
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db

MESSAGES = "/api/v1/messages"
INLINE = {"to": "ann@example.com", "subject": "Hello", "text": "Hi there"}


def _nothing_stored():
    return Delivery.objects.count() == 0 and Recipient.objects.count() == 0


# --- Authentication ---------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer ntf_not-a-real-token", "Token x"],
)
def test_requests_without_a_valid_token_are_refused(authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = ApiClient(None).post(MESSAGES, INLINE, headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"
    assert_matches_openapi(response, "/messages", "post")
    assert _nothing_stored()


def test_a_revoked_token_is_refused(api, api_token):
    assert api_tokens_revoke(ids=[api_token.pk]) == 1
    response = api.post(MESSAGES, INLINE)
    assert response.status_code == 401
    assert _nothing_stored()


def test_tokens_are_stored_hashed(api_token):
    stored = ApiToken.objects.get(pk=api_token.pk)
    assert api_token.secret not in {stored.key_hash, stored.key_prefix, stored.description}
    assert stored.key_hash == hashlib.sha256(api_token.secret.encode()).hexdigest()
    assert api_token.secret.startswith(stored.key_prefix)


def test_get_needs_a_token_too(api):
    sent = api.post(MESSAGES, INLINE).json()
    response = ApiClient(None).get(sent["url"])
    assert response.status_code == 401
    assert_matches_openapi(response, "/messages/{id}", "get")


# --- Rate limit -----------------------------------------------------------------------


def test_the_request_after_the_limit_gets_429_with_retry_after():
    _token, secret = api_token_create(service="billing", rate_limit_per_minute=3)
    api = ApiClient(secret)
    answers = [api.post(MESSAGES, {**INLINE, "to": f"p{i}@example.com"}) for i in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]

    over = api.post(MESSAGES, {**INLINE, "to": "p3@example.com"})
    assert over.status_code == 429
    assert 1 <= int(over["Retry-After"]) <= 60
    assert over.json()["error"]["code"] == "rate_limited"
    assert_matches_openapi(over, "/messages", "post")
    assert Delivery.objects.count() == 3  # the refused request did nothing

    # Each token has its own budget.
    _other, other_secret = api_token_create(service="shop", rate_limit_per_minute=3)
    assert ApiClient(other_secret).post(MESSAGES, INLINE).status_code == 202


def test_reads_count_against_the_limit(settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 2
    _token, secret = api_token_create(service="billing")
    api = ApiClient(secret)
    url = api.post(MESSAGES, INLINE).json()["url"]
    assert api.get(url).status_code == 200
    response = api.get(url)
    assert response.status_code == 429 and response.has_header("Retry-After")
    assert_matches_openapi(response, "/messages/{id}", "get")


# --- Idempotency ---------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer(api):
    headers = {"Idempotency-Key": "invoice-42"}
    first = api.post(MESSAGES, INLINE, headers=headers)
    # Same request, keys in another order and other spacing: still the same.
    reordered = json.dumps(dict(reversed(list(INLINE.items()))), indent=2)
    second = api.post(MESSAGES, raw=reordered, headers=headers)
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert Delivery.objects.count() == 1
    assert_matches_openapi(second, "/messages", "post")


def test_same_key_with_another_body_is_refused(api):
    headers = {"Idempotency-Key": "invoice-42"}
    assert api.post(MESSAGES, INLINE, headers=headers).status_code == 202
    response = api.post(MESSAGES, {**INLINE, "subject": "Changed"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert_matches_openapi(response, "/messages", "post")
    assert Delivery.objects.count() == 1
    assert Delivery.objects.get().subject == "Hello"


def test_keys_are_per_service(api):
    headers = {"Idempotency-Key": "k1"}
    assert api.post(MESSAGES, INLINE, headers=headers).status_code == 202
    _token, other = api_token_create(service="shop")
    response = ApiClient(other).post(MESSAGES, {**INLINE, "text": "other"}, headers=headers)
    assert response.status_code == 202
    assert Delivery.objects.count() == 2


def test_a_failed_request_keeps_nothing_and_may_be_corrected(api):
    headers = {"Idempotency-Key": "k1"}
    bad = api.post(MESSAGES, {**INLINE, "to": "not-an-address"}, headers=headers)
    assert bad.status_code == 400
    assert IdempotencyRecord.objects.count() == 0 and _nothing_stored()
    assert api.post(MESSAGES, INLINE, headers=headers).status_code == 202


def test_an_expired_key_is_forgotten(api, settings):
    headers = {"Idempotency-Key": "k1"}
    assert api.post(MESSAGES, INLINE, headers=headers).status_code == 202
    IdempotencyRecord.objects.update(created_at=timezone.now() - timezone.timedelta(days=2))
    response = api.post(MESSAGES, {**INLINE, "subject": "Later"}, headers=headers)
    # The record expired, so this is no conflict; the Delivery's own key still
    # sends once: the answer is the first message.
    assert response.status_code == 202
    assert Delivery.objects.count() == 1


@pytest.mark.parametrize("key", ["", "with space", "x" * 201, "ключ"])
def test_a_malformed_idempotency_key_is_refused(api, key):
    response = api.post(MESSAGES, INLINE, headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert _nothing_stored()


# --- Validation and limits ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "s", "text": "t"}, "(body)"),  # no recipient
        ({**INLINE, "to": 42}, "to"),
        ({**INLINE, "context": ["not", "an", "object"]}, "context"),
        ({**INLINE, "surprise": True}, "(body)"),
        ({**INLINE, "send_at": 3}, "send_at"),
        ([INLINE], "(body)"),
        ("a string", "(body)"),
    ],
)
def test_schema_errors_name_the_field(api, body, field):
    response = api.post(MESSAGES, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in [d["field"] for d in error["details"]]
    assert_matches_openapi(response, "/messages", "post")
    assert _nothing_stored()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**INLINE, "to": "not-an-address"}, "address"),
        ({"to": "a@example.com", "subject": "s"}, "Give a template"),
        ({**INLINE, "template": "nope"}, "nope"),
        ({"to": "a@example.com", "subject": "{{ oops", "text": "t"}, "compile"),
        ({**INLINE, "send_at": "2030-01-01T10:00:00"}, "timezone-aware"),
    ],
)
def test_messages_send_refuses_get_a_clear_error(api, body, message):
    response = api.post(MESSAGES, body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert_matches_openapi(response, "/messages", "post")
    assert _nothing_stored()


def test_a_send_at_that_is_no_date_is_refused(api):
    response = api.post(MESSAGES, {**INLINE, "send_at": "tomorrow"})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "send_at"


def test_invalid_json_is_refused(api):
    response = api.post(MESSAGES, raw='{"to": "a@example.com",')
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert_matches_openapi(response, "/messages", "post")
    assert _nothing_stored()


def test_other_media_types_are_refused(api):
    response = api.post(
        MESSAGES, raw="to=a@example.com", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert_matches_openapi(response, "/messages", "post")
    assert _nothing_stored()


def test_an_oversized_body_is_refused_before_it_is_read(api, settings):
    settings.API_MAX_BODY_BYTES = 1000
    body = {**INLINE, "text": "x" * 2000}
    response = api.post(MESSAGES, body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert_matches_openapi(response, "/messages", "post")
    assert _nothing_stored()
    # Just under the limit is fine.
    assert api.post(MESSAGES, {**INLINE, "text": "x" * 900}).status_code == 202


def test_a_body_longer_than_its_content_length_claims_is_cut_and_refused(api, settings):
    settings.API_MAX_BODY_BYTES = 1000
    payload = json.dumps({**INLINE, "text": "x" * 2000}).encode()
    response = api.client.generic(
        "POST",
        MESSAGES,
        data=payload,
        content_type="application/json",
        headers={"Authorization": f"Bearer {api.secret}"},
        CONTENT_LENGTH="500",
    )
    # Only 500 bytes are read: they are not JSON, and nothing is stored.
    assert response.status_code == 400
    assert _nothing_stored()


def test_wrong_method_and_unknown_paths_answer_json(api):
    response = api.get(MESSAGES)
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
    for path in ("/api/v1/nothing", "/api/v1/messages/not-a-uuid", "/api/v2/messages"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


# --- The work itself ----------------------------------------------------------------------


def test_a_template_message_is_queued_and_described(api, django_capture_on_commit_callbacks):
    TemplateFactory(name="Password reset", subject="Reset", html_body="<a href='{{ link }}'>x</a>")
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(
            MESSAGES,
            {
                "to": "Ann@Example.com",
                "name": "Ann",
                "template": "Password reset",
                "context": {"link": "https://example.com/r/1"},
            },
        )
    assert response.status_code == 202, response.content
    assert_matches_openapi(response, "/messages", "post")
    body = response.json()
    delivery = Delivery.objects.get(uuid=body["id"])
    assert (delivery.status, delivery.recipient.email) == ("pending", "ann@example.com")
    assert delivery.recipient.name == "Ann"
    assert delivery.context == {"link": "https://example.com/r/1"}
    assert delivery.idempotency_key.startswith("api:billing:")
    assert len(callbacks) == 1  # queued after commit
    assert body["url"] == f"/api/v1/messages/{delivery.uuid}"


def test_a_scheduled_message_waits(api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        later = (timezone.now() + timedelta(days=300)).replace(microsecond=0)
        response = api.post(MESSAGES, {**INLINE, "send_at": later.isoformat()})
    assert response.status_code == 202
    assert callbacks == []
    assert Delivery.objects.get().next_attempt_at == later


def test_get_returns_status_and_events(api):
    sent = api.post(MESSAGES, INLINE).json()
    delivery = Delivery.objects.get(uuid=sent["id"])
    Delivery.objects.filter(pk=delivery.pk).update(
        status="delivered", sent_at=timezone.now(), opens=1
    )
    DeliveryEvent.objects.create(
        delivery=delivery, event_key="e1", event_type="delivered", occurred_at=timezone.now()
    )
    DeliveryEvent.objects.create(delivery=delivery, event_key="e2", event_type="opened")
    response = api.get(sent["url"])
    assert response.status_code == 200
    assert_matches_openapi(response, "/messages/{id}", "get")
    body = response.json()
    assert body["status"] == "delivered" and body["opens"] == 1
    assert [e["type"] for e in body["events"]] == ["delivered", "opened"]


def test_a_service_sees_only_its_own_messages(api):
    sent = api.post(MESSAGES, INLINE).json()
    _token, other = api_token_create(service="shop")
    response = ApiClient(other).get(sent["url"])
    assert response.status_code == 404
    assert_matches_openapi(response, "/messages/{id}", "get")
    # Nor messages sent from code in this process.
    from notifier import send

    own = send(to="b@example.com", subject="s", text="t")
    assert api.get(f"/api/v1/messages/{own.uuid}").status_code == 404
