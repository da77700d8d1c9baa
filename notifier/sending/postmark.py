"""Postmark's batch API for many individually rendered messages.

Anymail's Postmark backend sends one message per ``POST /email``; its own
batch mode sends one message to many recipients through an ESP-side template,
which does not fit messages rendered here per recipient. ``EmailBackend``
extends it with ``send_batch``: up to ``batch_size`` complete messages
(at most 500 and 50 MB, Postmark's limits) in one ``POST /email/batch``.

Postmark answers such a request with HTTP 200 and one result per message, in
the order sent (``ErrorCode`` 0: accepted, with its ``MessageID``; 406:
inactive recipient; 300: invalid request or address; others: not sent). Each
message's ``anymail_status`` is set from its own result, as Anymail does for a
single send; a result that names no recipient status (an error Anymail would
raise for) is returned as that message's ``PostmarkEntryError``. A whole
request that fails (HTTP 429/5xx, a timeout, a dropped connection) raises the
exception Anymail raises for a single send: what it means for the rows
(retry, or in doubt) is decided in ``outcomes``, for every message of the
request alike.
"""

import functools
import re

import requests
from anymail.backends import postmark
from anymail.exceptions import AnymailError, AnymailRequestsAPIError
from anymail.message import AnymailRecipientStatus, AnymailStatus
from anymail.utils import CaseInsensitiveCasePreservingDict, EmailAddress, parse_address_list

from notifier.sending.addresses import plain_address_parts

# Postmark's limits for one /email/batch request.
MAX_BATCH_MESSAGES = 500
MAX_BATCH_BYTES = 50 * 1024 * 1024

_INACTIVE = r"inactive addresses:\s*(.*)\.\s*Inactive recipients"
_INVALID_RECIPIENT = re.compile(r"^(Invalid|Error\s+parsing)\s+'(To|Cc|Bcc)'", re.IGNORECASE)


class PostmarkEntryError(AnymailError):
    """One message of a batch was refused for a reason that is not about its
    recipients (``ErrorCode`` and Postmark's ``Message``): a permanent error
    for that message only."""

    def __init__(self, error_code: int, text: str):
        super().__init__(f"Postmark refused the message (ErrorCode {error_code}): {text}")
        self.error_code = error_code


def addresses_parsed(value, field: str | None = None) -> list[EmailAddress]:
    """Anymail's ``parse_address_list(value, field)``; plain addresses
    (``addresses``) are taken apart without its parse, to equal objects."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list | tuple) and items:
        parts = [plain_address_parts(item) for item in items]
        if None not in parts:
            return [
                EmailAddress(display_name=name, username=local, domain=domain)
                for name, local, domain in parts
            ]
    return parse_address_list(value, field=field)


class _Payload(postmark.PostmarkPayload):
    """Anymail's Postmark payload, its addresses read by ``addresses_parsed``."""

    base_message_attrs = tuple(
        (
            attr,
            combiner,
            functools.partial(addresses_parsed, field=attr)
            if converter is parse_address_list
            else converter,
        )
        for attr, combiner, converter in postmark.PostmarkPayload.base_message_attrs
    )


class EmailBackend(postmark.EmailBackend):
    """Anymail's Postmark backend, plus ``send_batch`` (``batch_size``
    messages per request; option ``batch_size`` in the transport's OPTIONS)."""

    def __init__(self, batch_size: int = MAX_BATCH_MESSAGES, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = max(1, min(int(batch_size), MAX_BATCH_MESSAGES))

    def build_message_payload(self, message, defaults):
        return _Payload(message, defaults, self)

    def send_batch(self, messages: list) -> list[PostmarkEntryError | None]:
        """Send ``messages`` (at most ``batch_size``) in one request.

        Sets each message's ``anymail_status`` and returns, per message, None
        or the ``PostmarkEntryError`` its result carried. Raises like a single
        send when the request as a whole fails (nothing is known to be sent
        for an HTTP error; a timeout or dropped connection leaves all of them
        in doubt).
        """
        if not messages:
            return []
        if len(messages) > self.batch_size:
            raise ValueError(f"{len(messages)} messages; at most {self.batch_size} per request")
        payloads = []
        for message in messages:
            message.anymail_status = AnymailStatus()
            payloads.append(self.build_message_payload(message, self.send_defaults))
        body = payloads[0].serialize_json([payload.data for payload in payloads])
        if len(body) > MAX_BATCH_BYTES:  # json.dumps writes ASCII: one byte a character
            raise ValueError("The batch is over Postmark's 50 MB limit; send fewer per request.")
        response = self._post_batch(body, payloads[0], messages[0])
        results = self.deserialize_json_response(response, payloads[0], messages[0])
        if not isinstance(results, list) or len(results) != len(messages):
            raise AnymailRequestsAPIError(
                "Postmark's batch answer does not have one result per message",
                payload=payloads[0],
                response=response,
                backend=self,
            )
        errors: list[PostmarkEntryError | None] = []
        for message, payload, result in zip(messages, payloads, results, strict=True):
            message.anymail_status.esp_response = response
            try:
                message.anymail_status.set_recipient_status(self._entry_status(payload, result))
                errors.append(None)
            except PostmarkEntryError as exc:
                errors.append(exc)
        return errors

    def _post_batch(self, body: str, payload, message):
        if self.session is None:
            raise RuntimeError("send_batch needs an open connection (call open() first).")
        url = f"{self.api_url}email/batch"
        headers = {**payload.headers, "X-Postmark-Server-Token": payload.server_token}
        try:
            response = self.session.post(url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as err:
            # As Anymail raises for a single send: both its own error and the
            # original requests exception type (which tells a refused
            # connection from a timeout after sending).
            exc_class = type("AnymailRequestsAPIError", (AnymailRequestsAPIError, type(err)), {})
            raise exc_class(
                f"Error posting to {url}:", email_message=message, payload=payload
            ) from err
        # The batch endpoint answers 200 even when messages fail; anything
        # else (401, 422 for the request as a whole, 429, 5xx) is about all.
        super(postmark.EmailBackend, self).raise_for_status(response, payload, message)
        return response

    def _entry_status(self, payload, result) -> dict[str, AnymailRecipientStatus]:
        """The recipients' status from one message's result, as Anymail reads
        a single send's answer."""
        if not isinstance(result, dict) or "Message" not in result:
            raise PostmarkEntryError(-1, f"unreadable result {result!r}")
        code, text = result.get("ErrorCode", 0), str(result["Message"])
        unknown = AnymailRecipientStatus(message_id=None, status="unknown")
        status = CaseInsensitiveCasePreservingDict(
            {r.addr_spec: unknown for r in payload.to_emails + payload.cc_and_bcc_emails}
        )
        if code == 0:
            sent = AnymailRecipientStatus(
                message_id=result.get("MessageID"),
                status="queued" if "delivery may be delayed" in text else "sent",
            )
            to = [r.addr_spec for r in addresses_parsed(result.get("To") or "")]
            for addr in to or [r.addr_spec for r in payload.to_emails]:
                status[addr] = sent
            for r in payload.cc_and_bcc_emails:
                status[r.addr_spec] = sent
            rejected = AnymailRecipientStatus(message_id=None, status="rejected")
            for addr in self._addr_specs_from_error_msg(text, _INACTIVE):
                status[addr] = rejected
        elif code == 406:
            rejected = AnymailRecipientStatus(message_id=None, status="rejected")
            for addr in self._addr_specs_from_error_msg(text, _INACTIVE):
                status[addr] = rejected
        elif code == 300 and _INVALID_RECIPIENT.match(text):
            invalid = AnymailRecipientStatus(message_id=None, status="invalid")
            for addr in self._addr_specs_from_error_msg(text, r"address:?\s*'(.*)'"):
                status[addr] = invalid
        else:
            raise PostmarkEntryError(code, text)
        return dict(status)
