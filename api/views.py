"""The HTTP API for other services (described in ``openapi.yaml``).

Every answer is JSON. A request passes, in order: token authentication,
the token's rate limit, size and media type, JSON parsing, schema
validation, then the Idempotency-Key check around the work itself. Whatever
fails first is answered with a clear error and nothing is stored.
"""

import json
import logging
import re
from collections.abc import Callable
from functools import wraps
from uuid import UUID, uuid4

from django.conf import settings
from django.db import DataError
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from api.models import ApiToken
from api.schema import openapi_document, schema_errors
from api.services import (
    Answer,
    IdempotencyConflict,
    api_rate_limit_take,
    api_token_authenticate,
    idempotent_call,
    request_fingerprint,
)
from campaigns.models import ContactList, SignupForm
from campaigns.services.signups import SignupRefused, SignupRequest, signup_request
from notifier.errors import (
    InvalidAddress,
    InvalidContext,
    InvalidName,
    InvalidSchedule,
    InvalidTemplate,
    NotifierError,
)
from notifier.models import Delivery, Recipient, Topic
from notifier.services.inputs import storable_problem
from notifier.services.privacy import recipient_export
from notifier.services.recipients import normalize_email
from notifier.services.transactional import check_send_at

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, *, details=None) -> JsonResponse:
    body = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return JsonResponse(body, status=status)


def api_view(methods: tuple[str, ...]) -> Callable:
    """Token auth, rate limit, JSON errors and allowed methods for one view."""

    def decorator(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                response = error_response(
                    405, "method_not_allowed", f"Use {' or '.join(methods)} here."
                )
                response["Allow"] = ", ".join(methods)
                return response
            token = _authenticate(request)
            if token is None:
                response = error_response(
                    401,
                    "unauthorized",
                    "Send a valid API token as 'Authorization: Bearer <token>'.",
                )
                response["WWW-Authenticate"] = 'Bearer realm="notifier"'
                return response
            limit = api_rate_limit_take(token=token)
            try:
                if limit.retry_after is not None:
                    raise ApiError(
                        429,
                        "rate_limited",
                        f"Rate limit of {limit.limit} requests per minute reached; "
                        f"retry in {limit.retry_after} s.",
                        headers={"Retry-After": str(limit.retry_after)},
                    )
                response = view(request, token, *args, **kwargs)
            except ApiError as exc:
                response = error_response(exc.status, exc.code, exc.message, details=exc.details)
                for name, value in exc.headers.items():
                    response[name] = value
            except Exception as exc:
                if isinstance(exc, DataError) and request.method == "POST":
                    # A value of the body the database (or its driver)
                    # refused: the caller's mistake, not an outage. Every
                    # known case is refused earlier, with its field.
                    logger.warning("API request refused by the database: %s", exc)
                    response = error_response(
                        400, "invalid_request", "The request holds a value that cannot be stored."
                    )
                else:
                    # An outage (database, broker), never the caller's input:
                    # say so in JSON, and keep the traceback in the log.
                    logger.exception("API request failed: %s %s", request.method, request.path)
                    response = error_response(
                        503, "unavailable", "The service is unavailable; retry later."
                    )
                    response["Retry-After"] = "10"
            response["RateLimit-Limit"] = str(limit.limit)
            response["RateLimit-Remaining"] = str(limit.remaining)
            return response

        wrapper.allowed_methods = methods
        return wrapper

    return decorator


def _authenticate(request: HttpRequest) -> ApiToken | None:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return api_token_authenticate(secret=secret.strip())


def _json_body(request: HttpRequest, schema_name: str) -> dict:
    limit = settings.API_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "invalid_request", "Content-Length is not a number.")
    if declared > limit:
        raise ApiError(413, "too_large", f"The body is larger than {limit} bytes.")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"The body is larger than {limit} bytes.")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        # ValueError: JSONDecodeError, NaN/Infinity, an integer too long to read.
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.")
    except RecursionError:
        raise ApiError(400, "invalid_json", "The body is not valid JSON: nested too deeply.")
    problem = storable_problem(data)
    if problem is not None:
        raise _invalid(*problem)
    details = schema_errors(schema_name, data)
    if details:
        raise ApiError(400, "invalid_request", "The request is not valid.", details=details)
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _idempotency_key(request: HttpRequest) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 visible ASCII characters.",
        )
    return key


def _run_idempotent(request, token: ApiToken, body: dict, handler) -> JsonResponse:
    key = _idempotency_key(request)
    fingerprint = request_fingerprint(method=request.method, path=request.path, body=body)
    try:
        answer = idempotent_call(
            service=token.service, key=key, fingerprint=fingerprint, handler=lambda: handler(key)
        )
    except IdempotencyConflict as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc))
    response = JsonResponse(answer.body, status=answer.status)
    if answer.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _delivery_key_prefix(token: ApiToken) -> str:
    # Every message sent through the API carries "api:<service>:..." as its
    # Delivery.idempotency_key: that is how a service sees only its own.
    return f"api:{token.service}:"


def _caller(token: ApiToken) -> str:
    # The recipients a service creates are its own to name (see
    # recipient_get_or_create); its tokens are one caller.
    return f"api:{token.service}"


def _message_url(delivery: Delivery) -> str:
    return reverse("api:message", args=[delivery.uuid])


# --- Views ----------------------------------------------------------------------


# The request field each kind of refusal from send() is about.
_SEND_ERROR_FIELDS = {
    InvalidAddress: "to",
    InvalidName: "name",
    InvalidSchedule: "send_at",
    InvalidTemplate: "template",
    InvalidContext: "context",
}


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        "invalid_request",
        f"The request is not valid: {field}: {message}",
        details=[{"field": field, "message": message}],
    )


def _send_at(body: dict):
    if "send_at" not in body:
        return None
    try:
        send_at = parse_datetime(body["send_at"])
    except ValueError as exc:  # well formed, but no such time (2024-02-30)
        raise _invalid("send_at", f"Not a valid date and time: {exc}.")
    if send_at is None:
        raise _invalid("send_at", "Not an ISO 8601 date and time.")
    try:
        return check_send_at(send_at)
    except InvalidSchedule as exc:
        raise _invalid("send_at", str(exc))


@api_view(("POST",))
def messages(request, token: ApiToken):
    body = _json_body(request, "MessageRequest")

    def handler(key: str | None) -> Answer:
        from notifier import send

        # Checked here, not before: a replayed request is answered as it was
        # the first time, even once its send_at has slipped out of the window.
        send_at = _send_at(body)
        try:
            delivery = send(
                to=body["to"],
                name=body.get("name", ""),
                template=body.get("template"),
                subject=body.get("subject"),
                html=body.get("html"),
                text=body.get("text"),
                context=body.get("context"),
                send_at=send_at,
                idempotency_key=_delivery_key_prefix(token) + (key or f"auto:{uuid4()}"),
                caller=_caller(token),
            )
        except NotifierError as exc:
            error = {"code": "invalid_message", "message": str(exc)}
            field = next((f for t, f in _SEND_ERROR_FIELDS.items() if isinstance(exc, t)), None)
            if field is not None:
                error["details"] = [{"field": field, "message": str(exc)}]
            return Answer(400, {"error": error})
        logger.info("API message %s queued for %s", delivery.uuid, token.service)
        return Answer(
            202,
            {
                "id": str(delivery.uuid),
                "status": delivery.status,
                "to": delivery.recipient.email,
                "created_at": delivery.created_at.isoformat(),
                "url": _message_url(delivery),
            },
        )

    return _run_idempotent(request, token, body, handler)


MESSAGE_FIELDS = (
    "uuid",
    "status",
    "status_reason",
    "recipient__email",
    "attempts",
    "created_at",
    "sent_at",
    "opens",
    "clicks",
)


@api_view(("GET",))
def message(request, token: ApiToken, id: UUID):
    delivery = (
        Delivery.objects.filter(uuid=id, idempotency_key__startswith=_delivery_key_prefix(token))
        # Only what the answer shows: a column it does not show can never
        # keep a message from being read.
        .only(*MESSAGE_FIELDS)
        .select_related("recipient")
        .prefetch_related("events")
        .first()
    )
    if delivery is None:
        raise ApiError(404, "not_found", f"No message {id} sent by this service.")
    return JsonResponse(
        {
            "id": str(delivery.uuid),
            "status": delivery.status,
            "status_reason": delivery.status_reason,
            "to": delivery.recipient.email,
            "attempts": delivery.attempts,
            "created_at": delivery.created_at.isoformat(),
            "sent_at": delivery.sent_at.isoformat() if delivery.sent_at else None,
            "opens": delivery.opens,
            "clicks": delivery.clicks,
            "events": [
                {
                    "type": event.event_type,
                    "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
                    "description": event.description,
                }
                for event in sorted(delivery.events.all(), key=lambda e: e.id)
            ],
        }
    )


@api_view(("POST",))
def events(request, token: ApiToken):
    body = _json_body(request, "EventRequest")
    if not Topic.objects.filter(key=body["topic"]).exists():
        raise ApiError(
            400,
            "invalid_request",
            "The request is not valid.",
            details=[{"field": "topic", "message": f"No topic with key {body['topic']!r}."}],
        )

    def handler(key: str | None) -> Answer:
        from notifier import notify

        try:
            notify(
                recipient=body["recipient"],
                topic=body["topic"],
                data=body.get("data", {}),
                idempotency_key=_delivery_key_prefix(token) + key if key else None,
            )
        except NotifierError as exc:
            return Answer(400, {"error": {"code": "invalid_event", "message": str(exc)}})
        return Answer(202, {"status": "accepted"})

    return _run_idempotent(request, token, body, handler)


def _ip_address(value: str | None) -> str | None:
    import ipaddress

    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _invalid("ip_address", "Not an IPv4 or IPv6 address.")


@api_view(("POST",))
def subscriptions(request, token: ApiToken):
    body = _json_body(request, "SubscriptionRequest")
    form = None
    if "form" in body:
        form = SignupForm.objects.filter(slug=body["form"]).first()
        if form is None:
            raise _invalid("form", f"No signup form {body['form']!r}.")
    if "lists" in body:
        lists = list(ContactList.objects.filter(pk__in=body["lists"]))
        missing = sorted(set(body["lists"]) - {cl.pk for cl in lists})
        if missing:
            raise _invalid("lists", f"No contact list with id {', '.join(map(str, missing))}.")
    elif form is not None:
        lists = list(form.lists.all())
    else:
        raise _invalid("lists", "Give lists, or a form whose lists are meant.")
    consent_text = body.get("consent_text") or (form.consent_text if form else "")
    if not consent_text:
        raise _invalid("consent_text", "Say what the person agreed to (or give a form).")
    ip = _ip_address(body.get("ip_address"))

    def handler(key: str | None) -> Answer:
        try:
            consent = signup_request(
                request=SignupRequest(
                    email=body["email"],
                    name=body.get("name", ""),
                    attributes=body.get("attributes") or {},
                    ip_address=ip,
                ),
                lists=lists,
                consent_text=consent_text,
                form=form,
                double_opt_in=body.get("double_opt_in", True),
                requested_by=_caller(token),
            )
        except SignupRefused as exc:
            if exc.kind == "suppressed":
                return Answer(409, {"error": {"code": "address_suppressed", "message": str(exc)}})
            field = {"invalid_address": "email", "invalid_name": "name"}.get(exc.kind, "(body)")
            return Answer(
                400,
                {
                    "error": {
                        "code": "invalid_request",
                        "message": str(exc),
                        "details": [{"field": field, "message": str(exc)}],
                    }
                },
            )
        return Answer(
            201,
            {
                "id": consent.pk,
                "email": consent.recipient.email,
                "status": "subscribed" if consent.confirmed_at else "awaiting_confirmation",
                "lists": consent.list_ids,
                "requested_at": consent.requested_at.isoformat(),
                "confirmed_at": consent.confirmed_at.isoformat() if consent.confirmed_at else None,
            },
        )

    return _run_idempotent(request, token, body, handler)


@api_view(("GET",))
def recipient_data_export(request, token: ApiToken, email: str):
    try:
        email = normalize_email(email)
    except NotifierError as exc:
        raise _invalid("email", str(exc))
    recipient = Recipient.objects.filter(email=email).first()
    if recipient is None:
        raise ApiError(404, "not_found", "No recipient with this address.")
    return JsonResponse(recipient_export(recipient=recipient))


def openapi(request):
    return JsonResponse(openapi_document())


def not_found(request, exception=None):
    return error_response(404, "not_found", f"No API endpoint at {request.path}.")


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")
