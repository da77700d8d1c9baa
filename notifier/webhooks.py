"""Anymail's tracking webhook views, wired for the configured ESPs and hardened.

Anymail authenticates (basic auth from ``ANYMAIL["WEBHOOK_SECRET"]``, plus
the ESP's signature where it has one), parses the ESP's format and sends
the ``tracking`` signal that ``notifier.services.events`` records. Around
it, ``esp_tracking_webhook`` adds what a public endpoint needs:

* no secret configured -> every request refused (never open to the web);
* missing or wrong credentials -> 401; bad signature -> 400;
* a body over ``NOTIFIER_WEBHOOK_MAX_BYTES`` -> 400 before parsing;
* a body Anymail cannot parse (bad JSON, wrong shapes) -> 400, not 500.

Failures while recording (the database is down) still answer 500, so the
ESP delivers the event again later; recording is idempotent.
"""

import functools
import logging

from anymail import urls as anymail_urls
from anymail.exceptions import AnymailError, AnymailWebhookValidationFailure
from anymail.utils import get_request_basic_auth
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import Http404, HttpResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt

logger = logging.getLogger(__name__)


class MalformedWebhook(Exception):
    pass


def _tracking_view_classes() -> dict[str, type]:
    """Anymail's tracking view class per ESP name (``postmark``, ``mailgun``, ...)."""
    found = {}
    for pattern in anymail_urls.urlpatterns:
        name = pattern.name or ""
        view_class = getattr(pattern.callback, "view_class", None)
        if name.endswith("_tracking_webhook") and view_class is not None:
            found[name.removesuffix("_tracking_webhook")] = view_class
    return found


@functools.cache
def hardened_view_class(esp: str) -> type:
    base = _tracking_view_classes()[esp]

    class Hardened(base):
        def run_validators(self, request):
            try:
                super().run_validators(request)
            except AnymailWebhookValidationFailure:
                raise
            except Exception as exc:  # a validator choking on a malformed body
                raise AnymailWebhookValidationFailure(f"Malformed webhook: {exc}") from exc

        def parse_events(self, request):
            try:
                return list(super().parse_events(request))
            except Exception as exc:
                raise MalformedWebhook(f"{type(exc).__name__}: {exc}") from exc

    Hardened.__name__ = Hardened.__qualname__ = f"Hardened{base.__name__}"
    return Hardened


def _secrets() -> list[str]:
    secret = settings.ANYMAIL.get("WEBHOOK_SECRET") or []
    return [secret] if isinstance(secret, str) else [s for s in secret if s]


def _text(status: int, message: str, **headers) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain")
    for key, value in headers.items():
        response[key.replace("_", "-")] = value
    return response


@csrf_exempt
@login_not_required
def esp_tracking_webhook(request, esp: str):
    if esp not in settings.NOTIFIER_WEBHOOK_ESPS or esp not in _tracking_view_classes():
        raise Http404("No such webhook.")
    secrets = _secrets()
    if not secrets:
        logger.error("ESP webhook refused: ANYMAIL_WEBHOOK_SECRET is not set")
        return _text(403, "Webhook authentication is not configured.")
    if request.method == "POST":
        given = get_request_basic_auth(request)
        if given is None or not any(constant_time_compare(given, s) for s in secrets):
            return _text(
                401, "Missing or wrong credentials.", WWW_Authenticate='Basic realm="webhooks"'
            )
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _text(400, "Bad Content-Length.")
        limit = settings.NOTIFIER_WEBHOOK_MAX_BYTES
        try:
            if length > limit or len(request.body) > limit:
                return _text(400, f"Body larger than {limit} bytes.")
        except RequestDataTooBig:
            return _text(400, f"Body larger than {limit} bytes.")
    try:
        view = hardened_view_class(esp).as_view()
        return view(request)
    except AnymailWebhookValidationFailure as exc:
        logger.warning("ESP webhook rejected: %s", exc)
        return _text(400, "Webhook validation failed.")
    except MalformedWebhook as exc:
        logger.warning("Malformed %s webhook: %s", esp, exc)
        return _text(400, "Malformed webhook body.")
    except (AnymailError, ImproperlyConfigured):
        logger.exception("The %s webhook is not configured", esp)
        return _text(503, "Webhook not configured.")
