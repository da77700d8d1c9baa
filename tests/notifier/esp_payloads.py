"""Webhook bodies in the ESPs' own formats, as their documentation shows them.

Postmark: https://postmarkapp.com/developer/webhooks/webhooks-overview
(Delivery, Bounce with Type HardBounce / SoftBounce, SpamComplaint, Open,
Click); Mailgun: https://documentation.mailgun.com/docs/mailgun/user-manual/tracking-messages/
(JSON webhooks with a signature block).
"""

import base64
import hashlib
import hmac
import itertools
import json

from django.conf import settings
from django.test import Client

POSTMARK_URL = "/webhooks/anymail/postmark/tracking/"
MAILGUN_URL = "/webhooks/anymail/mailgun/tracking/"
_ids = itertools.count(901542550)


def basic_auth(credentials: str | None = None) -> str:
    credentials = credentials or settings.ANYMAIL["WEBHOOK_SECRET"]
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def post_webhook(
    client: Client, body, *, url: str = POSTMARK_URL, auth: str | None = "default", **extra
):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = {}
    if auth == "default":
        headers["HTTP_AUTHORIZATION"] = basic_auth()
    elif auth is not None:
        headers["HTTP_AUTHORIZATION"] = auth
    return client.post(url, data=data, content_type="application/json", **headers, **extra)


def _common(message_id: str, delivery_uuid: str | None) -> dict:
    return {
        "MessageID": message_id,
        "ServerID": 23,
        "MessageStream": "broadcast",
        "Tag": "",
        "Metadata": {"delivery": delivery_uuid} if delivery_uuid else {},
    }


def postmark_delivery(*, message_id, email, delivery_uuid=None, at="2026-03-01T10:00:05.123Z"):
    return {
        "RecordType": "Delivery",
        **_common(message_id, delivery_uuid),
        "Recipient": email,
        "DeliveredAt": at,
        "Details": "smtp;250 2.0.0 OK 1709287205 ok",
    }


def postmark_bounce(
    *,
    message_id,
    email,
    delivery_uuid=None,
    bounce_type="HardBounce",
    at="2026-03-01T10:00:09.3963933-04:00",
    bounce_id=None,
):
    names = {
        "HardBounce": (1, "Hard bounce", "The server was unable to deliver your message"),
        "SoftBounce": (4096, "Soft bounce", "Unable to temporarily deliver this email"),
        "Transient": (2, "Message delayed", "The server could not temporarily deliver"),
    }
    code, name, description = names[bounce_type]
    return {
        "RecordType": "Bounce",
        "ID": bounce_id or next(_ids),
        "Type": bounce_type,
        "TypeCode": code,
        "Name": name,
        **_common(message_id, delivery_uuid),
        "Description": description,
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "news@example.org",
        "BouncedAt": at,
        "DumpAvailable": True,
        "Inactive": bounce_type == "HardBounce",
        "CanActivate": True,
        "Subject": "Our news",
        "Content": "Return-Path: <>\r\nReceived: ...",
    }


def postmark_spam_complaint(*, message_id, email, delivery_uuid=None):
    return {
        "RecordType": "SpamComplaint",
        "ID": next(_ids),
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        **_common(message_id, delivery_uuid),
        "Description": "",
        "Details": "Test spam complaint details",
        "Email": email,
        "From": "news@example.org",
        "BouncedAt": "2026-03-01T11:28:50.3963933-04:00",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": False,
        "Subject": "Our news",
    }


def postmark_open(*, message_id, email, delivery_uuid=None, at="2026-03-01T12:21:41.2493688Z"):
    return {
        "RecordType": "Open",
        **_common(message_id, delivery_uuid),
        "FirstOpen": True,
        "Client": {"Name": "Gmail", "Company": "Google", "Family": "Gmail"},
        "OS": {"Name": "unknown", "Company": "unknown", "Family": "unknown"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
        "ReadSeconds": 5,
        "Geo": {},
        "ReceivedAt": at,
        "Recipient": email,
    }


def postmark_click(*, message_id, email, delivery_uuid=None, at="2026-03-01T12:22:11.9065619Z"):
    return {
        "RecordType": "Click",
        **_common(message_id, delivery_uuid),
        "ClickLocation": "HTML",
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "Desktop",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) etc.",
        "OriginalLink": "https://example.org/news/1",
        "Geo": {"CountryISOCode": "RS", "Country": "Serbia", "City": "Novi Sad"},
        "ReceivedAt": at,
        "Recipient": email,
    }


def postmark_subscription_change(*, message_id, email, reason="ManualSuppression"):
    return {
        "RecordType": "SubscriptionChange",
        **_common(message_id, None),
        "ChangedAt": "2026-03-01T17:17:32Z",
        "Recipient": email,
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": reason,
    }


def mailgun_event(*, signing_key: str, event: str, email: str, delivery_uuid: str, token: str):
    timestamp = "1772359205"
    signature = hmac.new(
        signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256
    ).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "event": event,
            "timestamp": 1772359205.329574,
            "id": "CPgfbmQMTCKtHW6uIWtuVe",
            "recipient": email,
            "message": {"headers": {"message-id": "20260301101005.1.2@mg.example.org"}},
            "user-variables": {"delivery": delivery_uuid},
            "delivery-status": {"message": "OK", "code": 250, "description": ""},
        },
    }
