"""Signed unsubscribe and preference links, and what unsubscribing does.

A link carries a token made by ``django.core.signing`` (an HMAC keyed by
``SECRET_KEY``, with one salt per purpose, so an unsubscribe token is no
preference token and no other signed value of the site is either) over the
recipient's random ``public_id`` (never the sequential id) and a scope.
Nothing in it can be guessed or changed without the key.

Unsubscribe tokens do not expire: RFC 8058 needs a link in an old email to
work (rotate ``SECRET_KEY`` through ``SECRET_KEY_FALLBACKS`` to keep them
valid), and tokens made before public ids (naming the recipient's id) are
still read. Preference tokens, which open a page showing the address and its
choices, expire after ``NOTIFIER_PREFERENCE_LINK_DAYS``; every email carries
a fresh one, and an older preference link (of either format) shows a page
saying so.

Scopes:

* ``all``          a Suppression: nothing is sent to the address any more;
* ``topics``       every topic preference off (digests and notifications);
* ``topic:<key>``  that topic's preference off;
* ``<name>:<id>``  a scope handler registered with ``register_scope_handler``
                   (no app registers one today). Without a handler the
                   request is treated as ``all``: an unsubscribe must never be
                   a no-op.
"""

import functools
import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils.encoding import force_bytes

from notifier.errors import InvalidAddress, NotifierError
from notifier.models import Delivery, Frequency, Recipient, Suppression, Topic
from notifier.services.preferences import preference_set, preferences_all_off
from notifier.services.suppressions import suppression_add, suppression_lift

logger = logging.getLogger(__name__)

UNSUBSCRIBE_SALT = "notifier.unsubscribe"
# Preference tokens before public ids and expiry: recognised only to say
# the link has expired.
LEGACY_PREFERENCES_SALT = "notifier.preferences"
PREFERENCES_SALT = "notifier.preferences.v2"
MAX_TOKEN_LENGTH = 512

SCOPE_ALL = "all"
SCOPE_TOPICS = "topics"
SCOPE_RE = re.compile(r"^(all|topics|[a-z][a-z0-9_]{0,19}:[A-Za-z0-9_.-]{1,64})$")

# A delivery asks for List-Unsubscribe with this header (stripped before
# sending): a scope (``topic:orders``) or ``yes`` for the default scope.
REQUEST_HEADER = "X-Notifier-Unsubscribe"
LIST_KINDS = frozenset({Delivery.Kind.CAMPAIGN, Delivery.Kind.DIGEST})
DEFAULT_SCOPE_FOR_KIND = {Delivery.Kind.DIGEST: SCOPE_TOPICS}


class InvalidLink(NotifierError):
    """A token that was tampered with, truncated, or made for something else."""


class LinkExpired(InvalidLink):
    """A genuine preference link older than NOTIFIER_PREFERENCE_LINK_DAYS."""


# --- Extension points ---------------------------------------------------------


@dataclass(frozen=True)
class ScopeHandler:
    # Does the unsubscribe; returns a sentence for the recipient.
    unsubscribe: Callable[..., str]
    # Names what the scope covers ("the Weekly news list").
    describe: Callable[[str], str] | None = None


_scope_handlers: dict[str, ScopeHandler] = {}


def register_scope_handler(
    name: str,
    *,
    unsubscribe: Callable[..., str],
    describe: Callable[[str], str] | None = None,
) -> None:
    """Handle ``<name>:<value>`` scopes: ``unsubscribe(recipient=..., value=...)``."""
    if name in ("topic", SCOPE_ALL, SCOPE_TOPICS) or not SCOPE_RE.match(f"{name}:x"):
        raise ValueError(f"Cannot register scope {name!r}.")
    _scope_handlers[name] = ScopeHandler(unsubscribe=unsubscribe, describe=describe)


# --- Tokens ---------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _hmac_for(key_salt: str, secret: str | bytes, algorithm: str) -> hmac.HMAC:
    """Django's ``salted_hmac`` keyed once per process for each (salt, secret):
    the derived key and the HMAC's keyed state, copied for each value."""
    hasher = getattr(hashlib, algorithm)
    return hmac.new(hasher(force_bytes(key_salt) + force_bytes(secret)).digest(), digestmod=hasher)


class _KeyedOnce:
    """The signature Django's signers make (so every link made before still
    verifies, and the other way round), without deriving the key again for
    every message."""

    def signature(self, value, key=None):
        mac = _hmac_for(self.salt + "signer", key or self.key, self.algorithm).copy()
        mac.update(force_bytes(value))
        return signing.b64_encode(mac.digest()).decode()


class _Signer(_KeyedOnce, signing.Signer):
    pass


class _TimestampSigner(_KeyedOnce, signing.TimestampSigner):
    pass


@functools.lru_cache(maxsize=16)
def _signer_made(cls: type, salt: str, key, fallback_keys: tuple) -> signing.Signer:
    return cls(salt=salt, key=key, fallback_keys=list(fallback_keys))


def _signer(salt: str, cls: type = _Signer) -> signing.Signer:
    """One signer per process for each salt and key (making one per link
    cost about as much as signing with it); a new key gets a new one."""
    return _signer_made(cls, salt, settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS))


def unsubscribe_token(*, recipient: Recipient, scope: str = SCOPE_ALL) -> str:
    if not SCOPE_RE.match(scope):
        raise ValueError(f"Invalid unsubscribe scope {scope!r}.")
    return _signer(UNSUBSCRIBE_SALT).sign_object({"p": recipient.public_id.hex, "s": scope})


def preferences_token(*, recipient: Recipient) -> str:
    """A preference link's token: the recipient's public id and the time it was made."""
    return _signer(PREFERENCES_SALT, _TimestampSigner).sign_object({"p": recipient.public_id.hex})


def _unsign(token: str, signer: signing.Signer, **kwargs):
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidLink("This link is not valid.")
    try:
        return signer.unsign_object(token, **kwargs)
    except signing.SignatureExpired:
        raise LinkExpired("This link has expired.") from None
    except (signing.BadSignature, ValueError, UnicodeDecodeError):
        raise InvalidLink("This link is not valid.") from None


def _recipient(data, *keys: str) -> Recipient:
    """The recipient a signed payload names: ``p`` (public id) or, in tokens
    made before public ids, ``r`` (the id); ``keys`` are its other keys."""
    if not isinstance(data, dict):
        raise InvalidLink("This link is not valid.")
    if set(data) == {"p", *keys} and isinstance(data["p"], str):
        try:
            lookup = {"public_id": uuid.UUID(hex=data["p"])}
        except ValueError:
            raise InvalidLink("This link is not valid.") from None
    elif set(data) == {"r", *keys} and type(data["r"]) is int:
        lookup = {"pk": data["r"]}
    else:
        raise InvalidLink("This link is not valid.")
    try:
        return Recipient.objects.get(**lookup)
    except Recipient.DoesNotExist:
        raise InvalidLink("This link is not valid any more.") from None


def unsubscribe_token_read(token: str) -> tuple[Recipient, str]:
    """Return the recipient and scope of an unsubscribe token, or raise InvalidLink."""
    data = _unsign(token, _signer(UNSUBSCRIBE_SALT))
    scope = data.get("s") if isinstance(data, dict) else None
    if not isinstance(scope, str) or not SCOPE_RE.match(scope):
        raise InvalidLink("This link is not valid.")
    return _recipient(data, "s"), scope


def preferences_token_read(token: str) -> Recipient:
    """The recipient of a preference token; LinkExpired for a genuine old one."""
    max_age = timedelta(days=settings.NOTIFIER_PREFERENCE_LINK_DAYS)
    try:
        data = _unsign(token, _signer(PREFERENCES_SALT, _TimestampSigner), max_age=max_age)
    except LinkExpired:
        raise
    except InvalidLink:
        # Made before preference links expired: genuine, but too old now.
        _unsign(token, _signer(LEGACY_PREFERENCES_SALT))
        raise LinkExpired("This link has expired.") from None
    return _recipient(data)


_PLACEHOLDER = "TOKEN0PLACEHOLDER"


@functools.lru_cache(maxsize=8)
def _url_pattern(name: str, site_url: str) -> tuple[str, str]:
    """(before, after) the token in the absolute URL: one reverse() per process,
    not two per message."""
    before, _, after = reverse(name, args=[_PLACEHOLDER]).partition(_PLACEHOLDER)
    return f"{site_url}{before}", after


def _link(name: str, token: str) -> str:
    before, after = _url_pattern(name, settings.SITE_URL)
    return f"{before}{token}{after}"


def unsubscribe_url(*, recipient: Recipient, scope: str = SCOPE_ALL) -> str:
    token = unsubscribe_token(recipient=recipient, scope=scope)
    return _link("notifier:unsubscribe", token)


def preferences_url(*, recipient: Recipient) -> str:
    token = preferences_token(recipient=recipient)
    return _link("notifier:preferences", token)


# --- What a scope means -------------------------------------------------------------


def scope_describe(scope: str) -> str:
    """A phrase for pages: what unsubscribing from ``scope`` stops."""
    if scope == SCOPE_ALL:
        return "all email from us"
    if scope == SCOPE_TOPICS:
        return "all notifications and digests"
    name, _, value = scope.partition(":")
    if name == "topic":
        topic = Topic.objects.filter(key=value).first()
        return f"“{topic.name}” notifications" if topic else "these notifications"
    handler = _scope_handlers.get(name)
    if handler and handler.describe:
        return handler.describe(value)
    return "this mailing"


def recipient_unsubscribe(*, recipient: Recipient, scope: str, source: str = "link") -> str:
    """Unsubscribe ``recipient`` from ``scope`` at once; returns a sentence saying what changed.

    Idempotent: doing it twice leaves the same state. A Suppression is seen by
    every batch before its next hand-off, and a topic turned off takes its
    waiting notifications with it, so pending mail of the scope is not sent.
    """
    if scope == SCOPE_ALL:
        return _unsubscribe_all(
            recipient=recipient, note=f"Unsubscribed by the recipient ({source})"
        )
    if scope == SCOPE_TOPICS:
        preferences_all_off(recipient=recipient)
        return "You will get no more notifications or digests."
    name, _, value = scope.partition(":")
    if name == "topic":
        topic = Topic.objects.filter(key=value).first()
        if topic is None:
            return "These notifications no longer exist; nothing more will be sent for them."
        preference_set(recipient=recipient, topic=topic, frequency=Frequency.OFF)
        return f"You will get no more “{topic.name}” notifications."
    handler = _scope_handlers.get(name)
    if handler is None:
        logger.warning("No handler for unsubscribe scope %r; suppressing the address", scope)
        return _unsubscribe_all(
            recipient=recipient,
            note=f"Unsubscribed by the recipient from {scope} ({source}); "
            "no handler for that scope, so from everything",
        )
    return handler.unsubscribe(recipient=recipient, value=value)


def _unsubscribe_all(*, recipient: Recipient, note: str) -> str:
    if recipient.status != Recipient.Status.ERASED:
        try:
            suppression_add(
                email=recipient.email, reason=Suppression.Reason.UNSUBSCRIBED, note=note
            )
        except InvalidAddress:
            logger.warning("Recipient %s has an invalid address; nothing to suppress", recipient.pk)
    return "You will get no more email from us."


def recipient_resubscribe(*, recipient: Recipient) -> bool:
    """Lift the recipient's own unsubscribe (never a bounce or complaint: staff lift those)."""
    suppression = Suppression.objects.filter(
        email=recipient.email, lifted_at__isnull=True, reason=Suppression.Reason.UNSUBSCRIBED
    ).first()
    if suppression is None:
        return False
    suppression_lift(
        suppression=suppression, reason="Resubscribed by the recipient on the preference page"
    )
    return True


# --- The message hook -----------------------------------------------------------------


def _pop_header(headers: dict, name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name.lower():
            return str(headers.pop(key)).strip()
    return None


def delivery_unsubscribe_scope(delivery: Delivery, requested: str | None = None) -> str:
    if requested and SCOPE_RE.match(requested):
        return requested
    return DEFAULT_SCOPE_FOR_KIND.get(delivery.kind, SCOPE_ALL)


def unsubscribe_message_hook(delivery: Delivery, context: dict, headers: dict) -> None:
    """Give every message its links, and bulk mail its RFC 8058 headers.

    Campaign and digest mail (and any delivery carrying the request header)
    gets ``List-Unsubscribe`` (https, plus mailto when configured) and
    ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. Templates see
    ``unsubscribe_url`` and ``preferences_url``.
    """
    requested = _pop_header(headers, REQUEST_HEADER)
    if requested is not None and requested.lower() in ("", "0", "no", "false"):
        requested = None
    scope = delivery_unsubscribe_scope(delivery, requested)
    token = unsubscribe_token(recipient=delivery.recipient, scope=scope)
    one_click = _link("notifier:unsubscribe", token)
    context["unsubscribe_url"] = one_click
    context["preferences_url"] = preferences_url(recipient=delivery.recipient)
    if delivery.kind not in LIST_KINDS and not requested:
        return
    targets = [f"<{one_click}>"]
    mailto = settings.NOTIFIER_UNSUBSCRIBE_MAILTO
    if mailto:
        targets.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + token, safe='')}>")
    headers["List-Unsubscribe"] = ", ".join(targets)
    headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
