"""Asking a transport whether it accepted a message ("was this sent?").

A message is in doubt when it was handed over but its answer was lost (the
worker died mid-request, the request timed out after sending). An ESP that
can be searched knows the answer: Postmark's outbound message search finds a
message by the ``delivery`` metadata every message carries (its Delivery's
uuid). A lookup returns the ESP's message id, or None when the message is
certainly not there, and raises ``LookupUnavailable`` when the ESP cannot
answer. SMTP cannot be asked: its in-doubt rows wait for staff.
"""

from collections.abc import Callable

import requests
from django.conf import settings
from django.utils.module_loading import import_string

from notifier.models import Delivery

Lookup = Callable[[Delivery], str | None]


class LookupUnavailable(Exception):
    """The transport could not say (down, timeout, an unexpected answer)."""


def transport_lookup(transport: str) -> Lookup | None:
    """The configured lookup of ``transport`` (``LOOKUP`` in NOTIFIER_TRANSPORTS), if any."""
    path = settings.NOTIFIER_TRANSPORTS.get(transport, {}).get("LOOKUP")
    return import_string(path) if path else None


def postmark_lookup(delivery: Delivery) -> str | None:
    """The Postmark MessageID of ``delivery``'s message, or None if Postmark has none."""
    anymail = settings.ANYMAIL
    url = anymail.get("POSTMARK_API_URL", "https://api.postmarkapp.com/").rstrip("/")
    try:
        response = requests.get(
            f"{url}/messages/outbound",
            params={"count": 1, "offset": 0, "metadata_delivery": str(delivery.uuid)},
            headers={
                "Accept": "application/json",
                "X-Postmark-Server-Token": anymail.get("POSTMARK_SERVER_TOKEN", ""),
            },
            timeout=anymail.get("REQUESTS_TIMEOUT", (5, 20)),
        )
    except requests.RequestException as exc:
        raise LookupUnavailable(f"Postmark could not be reached: {exc}") from exc
    if response.status_code != 200:
        raise LookupUnavailable(f"Postmark's message search answered {response.status_code}.")
    try:
        body = response.json()
        messages = body["Messages"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LookupUnavailable("Postmark's message search gave an unreadable answer.") from exc
    return str(messages[0]["MessageID"]) if messages else None
