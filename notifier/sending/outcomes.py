"""What a transport's answer (or exception) means for a Delivery.

* ``sent``      accepted; ``esp_message_id`` set.
* ``retry``     transient: connection refused, connect timeout, SMTP 4xx,
                ESP 429/5xx. Nothing was accepted, so trying again is safe.
* ``failed``    permanent: SMTP 5xx, ESP rejected/invalid, a broken render.
* ``unknown``   in doubt: the request reached the transport but no answer came
                back (read timeout, connection dropped mid-request). The ESP
                may have accepted it, so it is not resent blindly (see services.indoubt).

``apply_outcome`` turns an outcome into a Delivery's fields (in memory; the
batch and the sweeper write them in bulk with ``persist.deliveries_write``),
with the retry policy: exponential backoff until ``NOTIFIER_MAX_ATTEMPTS``,
then ``failed`` with ``failure_kind = transient_exhausted``.
"""

import random
import smtplib
import socket
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta

import requests
from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)
from django.conf import settings

from notifier.models import Delivery, Suppression

SENT, RETRY, FAILED, UNKNOWN = "sent", "retry", "failed", "unknown"
# Not handed over: a provider limit says "later" (not an attempt; see limits.py).
DEFER = "defer"


@dataclass
class Outcome:
    status: str
    esp_message_id: str = ""
    error: str = ""
    retry_after: float | None = None
    attempts: int = 0
    # For ``failed``: a Delivery.FailureKind (blank reads as permanent).
    failure_kind: str = ""
    # For ``defer``: when the row is due again (ISO 8601, journal-friendly).
    not_before: str = ""
    # A Suppression.Reason to add for the address (blank: none), when the
    # answer says no mail can reach it, such as an ESP's inactive recipient.
    suppress: str = ""
    # The transport itself failed ("connect", "timeout", "5xx"; blank: it
    # answered): counted towards marking it down (failover.py).
    fault: str = ""

    def as_journal(self) -> dict:
        # Every field is a plain value: a copy of them (``asdict`` would deep-copy).
        return dict(vars(self))

    @classmethod
    def from_journal(cls, data: dict) -> "Outcome":
        # Keys an older version wrote (``extra``) are ignored.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:2000]


def _retry_after(response) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _never_reached_server(exc: BaseException) -> bool:
    """True when a requests error happened before anything was sent.

    Anymail re-raises requests errors with its own message; the original is
    the ``__cause__``.
    """
    chain = []
    while exc is not None and len(chain) < 5:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any(isinstance(e, requests.exceptions.ConnectTimeout) for e in chain):
        return True
    text = " ".join(repr(e.args[0] if e.args else e) for e in chain)
    markers = ("NewConnectionError", "Connection refused", "Name or service not known")
    return any(marker in text for marker in markers)


def classify_exception(exc: BaseException) -> Outcome:
    """Map an exception raised while handing a message over to an Outcome."""
    # An HTTP answer from the ESP (Anymail's error is also a requests.HTTPError).
    if isinstance(exc, AnymailAPIError) and getattr(exc, "status_code", None) is not None:
        status = getattr(exc, "status_code", None)
        response = getattr(exc, "response", None)
        if status in (408, 429) or status >= 500:
            fault = "5xx" if status >= 500 else ("timeout" if status == 408 else "")
            return Outcome(
                RETRY, error=_short(exc), retry_after=_retry_after(response), fault=fault
            )
        return Outcome(FAILED, error=_short(exc))
    # No HTTP answer: requests errors reach us wrapped by Anymail (the wrapper
    # also subclasses the original requests exception type).
    if isinstance(exc, requests.exceptions.RequestException):
        if _never_reached_server(exc):
            return Outcome(RETRY, error=_short(exc), fault="connect")
        return Outcome(
            UNKNOWN, error=f"No answer from the ESP after sending: {_short(exc)}", fault="timeout"
        )
    if isinstance(exc, AnymailAPIError):
        return Outcome(RETRY, error=_short(exc))
    if isinstance(
        exc,
        AnymailRecipientsRefused
        | AnymailInvalidAddress
        | AnymailUnsupportedFeature
        | AnymailSerializationError,
    ):
        return Outcome(FAILED, error=_short(exc))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        if codes and all(400 <= code < 500 for code in codes):
            return Outcome(RETRY, error=_short(exc))
        return Outcome(FAILED, error=_short(exc))
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Outcome(
            UNKNOWN, error=f"SMTP server closed the connection mid-send: {exc}", fault="timeout"
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        if 400 <= exc.smtp_code < 500:
            return Outcome(RETRY, error=_short(exc))
        return Outcome(FAILED, error=_short(exc))
    if isinstance(exc, ConnectionRefusedError | socket.gaierror | smtplib.SMTPConnectError):
        return Outcome(RETRY, error=_short(exc), fault="connect")
    if isinstance(exc, TimeoutError | OSError):
        return Outcome(
            UNKNOWN, error=f"Transport timed out or failed mid-send: {_short(exc)}", fault="timeout"
        )
    if isinstance(exc, AnymailError):
        return Outcome(FAILED, error=_short(exc))
    return Outcome(UNKNOWN, error=f"Unexpected error while sending: {_short(exc)}")


def classify_sent_message(message, email: str) -> Outcome:
    """Read the per-recipient result of a message the backend accepted."""
    status = getattr(message, "anymail_status", None)
    if status is None:  # plain Django backends (SMTP): accepted by the server
        return Outcome(SENT, esp_message_id=message.extra_headers.get("Message-ID", ""))
    recipient = status.recipients.get(email)
    if recipient is None:
        return Outcome(SENT, esp_message_id=status.message_id or "")
    if recipient.status == "rejected":
        # Anymail's "rejected": the ESP will not mail the address, having seen
        # it hard-bounce or complain (Postmark's 406 "inactive recipient").
        return Outcome(
            FAILED,
            error=f"The ESP refused to send to {email}: it marks the address inactive after "
            "an earlier hard bounce or spam complaint. The address is now suppressed.",
            suppress=Suppression.Reason.HARD_BOUNCE,
        )
    if recipient.status == "invalid":
        return Outcome(FAILED, error=f"The ESP refused {email} as an invalid address.")
    if recipient.status == "failed":
        return Outcome(FAILED, error=f"The ESP could not send to {email}.")
    return Outcome(SENT, esp_message_id=recipient.message_id or status.message_id or "")


def classify_batch(
    messages: list, emails: list[str], *, errors: list | None, exc: BaseException | None = None
) -> list[Outcome]:
    """The outcome of each message of one batch request, in order.

    A request that failed as a whole (``exc``) gives every message the same
    outcome: retry when nothing was accepted (HTTP 429/5xx, refused
    connection), in doubt when the request may have been accepted (a timeout
    or a connection lost after sending). Otherwise each message has its own
    answer: its recipient's status, or the error its result carried.
    """
    if exc is not None:
        outcome = classify_exception(exc)
        return [replace(outcome) for _ in messages]
    return [
        classify_exception(error) if error is not None else classify_sent_message(message, email)
        for message, email, error in zip(messages, emails, errors, strict=True)
    ]


def backoff_seconds(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with +/-50% jitter, at least the ESP's Retry-After."""
    base = settings.NOTIFIER_BACKOFF_BASE * (2 ** max(0, attempts - 1))
    delay = min(settings.NOTIFIER_BACKOFF_CAP, base) * random.uniform(0.5, 1.5)
    if retry_after:
        delay = max(delay, retry_after)
    return delay


def apply_outcome(delivery: Delivery, outcome: Outcome, *, now) -> None:
    """Set the fields of ``delivery`` for ``outcome`` (in memory only)."""
    delivery.claim_token = None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    delivery.failure_kind = Delivery.FailureKind.NONE
    if outcome.attempts:
        delivery.attempts = outcome.attempts
    if outcome.status == SENT:
        delivery.status = Delivery.Status.SENT
        delivery.esp_message_id = outcome.esp_message_id[:255]
        delivery.sent_at = now
        delivery.last_error = ""
        delivery.status_reason = ""
    elif outcome.status == RETRY and delivery.attempts < settings.NOTIFIER_MAX_ATTEMPTS:
        delivery.status = Delivery.Status.PENDING
        delivery.next_attempt_at = now + timedelta(
            seconds=backoff_seconds(delivery.attempts, outcome.retry_after)
        )
        delivery.dispatched_at = None
        delivery.last_error = outcome.error
        delivery.status_reason = (
            f"Transient error on attempt {delivery.attempts} of "
            f"{settings.NOTIFIER_MAX_ATTEMPTS}; it is tried again later."
        )
    elif outcome.status == RETRY:
        delivery.status = Delivery.Status.FAILED
        delivery.failure_kind = Delivery.FailureKind.TRANSIENT_EXHAUSTED
        delivery.last_error = outcome.error
        delivery.status_reason = f"Gave up after {delivery.attempts} attempts."
    elif outcome.status == FAILED:
        delivery.status = Delivery.Status.FAILED
        delivery.failure_kind = outcome.failure_kind or Delivery.FailureKind.PERMANENT
        delivery.last_error = outcome.error
        delivery.status_reason = "Permanent error: sending again would fail the same way."
    elif outcome.status == UNKNOWN:
        delivery.status = Delivery.Status.UNKNOWN
        delivery.last_error = outcome.error
        delivery.status_reason = (
            "Handed to the transport, but no answer was recorded: it is in doubt."
        )
    elif outcome.status == DEFER:
        delivery.status = Delivery.Status.PENDING
        delivery.next_attempt_at = datetime.fromisoformat(outcome.not_before)
        delivery.dispatched_at = None
        delivery.status_reason = outcome.error
    elif outcome.status in (Delivery.Status.SUPPRESSED, Delivery.Status.CANCELLED):
        delivery.status = outcome.status
        delivery.status_reason = outcome.error
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown outcome {outcome.status}")
