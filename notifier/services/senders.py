"""Who mail may come from: one checked From header, within the sender identities.

The rule, the same for campaigns, test sends, ``send()`` and the HTTP API:

* a From is exactly one address, optionally with a display name
  (``Shop <news@shop.example>``); no control characters (so no CR/LF header
  injection), no second address (no commas outside a quoted name);
* when any ``SenderIdentity`` exists, the address must be an address
  identity's, or at a domain identity's domain; with none configured any
  valid address is allowed;
* ``DEFAULT_FROM_EMAIL`` (what an empty From means) is always allowed.
"""

import re
import unicodedata
from email.utils import formataddr, parseaddr

from django.conf import settings

from notifier.errors import InvalidAddress, InvalidSender
from notifier.models import SenderIdentity
from notifier.services.recipients import normalize_email

MAX_FROM_LENGTH = 320

# "Display Name <address>", '"Quoted, Name" <address>' or a bare address.
_FROM_RE = re.compile(
    r"""^\s*(?:
        (?P<name>[^<>",;]*?|"(?:[^"\\]|\\.)*")\s*<(?P<angle>[^<>\s,;"]+)>
      | (?P<bare>[^<>\s,;"]+)
    )\s*$""",
    re.VERBOSE,
)


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") or char == "\x85" for char in value)


def sender_parse(value: str) -> tuple[str, str]:
    """(display name, normalised address) of a one-address From, or InvalidSender."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidSender("from_email must be a non-empty string.")
    if len(value) > MAX_FROM_LENGTH:
        raise InvalidSender(f"from_email is longer than {MAX_FROM_LENGTH} characters.")
    if _has_control_characters(value):
        raise InvalidSender("from_email must not contain control characters (such as CR or LF).")
    match = _FROM_RE.match(value)
    if match is None:
        raise InvalidSender(
            f"from_email must be exactly one address, as 'Name <address>' or 'address': {value!r}."
        )
    name, address = parseaddr(value)
    if not address or address != (match["angle"] or match["bare"]):
        raise InvalidSender(f"from_email must be exactly one address: {value!r}.")
    try:
        address = normalize_email(address)
    except InvalidAddress as exc:
        raise InvalidSender(f"from_email: {exc}") from exc
    return name.strip(), address


def _default_address() -> str:
    return parseaddr(settings.DEFAULT_FROM_EMAIL)[1].lower()


def sender_address_allowed(address: str) -> bool:
    """Whether a normalised address is within the configured identities."""
    if address == _default_address():
        return True
    identities = SenderIdentity.objects.all()
    if not identities.exists():
        return True
    domain = address.rpartition("@")[2]
    return identities.filter(email=address).exists() or identities.filter(domain=domain).exists()


def sender_validate(*, from_email: str) -> str:
    """The From header to store for ``from_email``, or InvalidSender.

    Exactly one address without control characters, within the sender
    identities when any are configured (see the module docstring).
    """
    name, address = sender_parse(from_email)
    if not sender_address_allowed(address):
        raise InvalidSender(
            f"{address} is not a configured sender identity; "
            "ask an administrator to add it (Notifier > Sender identities)."
        )
    return formataddr((name, address)) if name else address


def sender_identity_problems(*, identity: SenderIdentity) -> dict[str, str]:
    """What is wrong with an identity, per field ({} when fine)."""
    problems = {}
    if bool(identity.email) == bool(identity.domain):
        problems["email"] = "Give either one address or a domain, not both."
    if identity.name and (_has_control_characters(identity.name) or '"' in identity.name):
        problems["name"] = "The display name must not contain control characters or quotes."
    if identity.email:
        try:
            identity.email = normalize_email(identity.email)
        except InvalidAddress as exc:
            problems["email"] = str(exc)
    if identity.domain:
        try:
            identity.domain = normalize_email(f"postmaster@{identity.domain.strip()}").rpartition(
                "@"
            )[2]
        except InvalidAddress:
            problems["domain"] = f"Invalid domain {identity.domain!r}."
    return problems
