from email_validator import EmailNotValidError, validate_email

from notifier.errors import InvalidAddress
from notifier.models import Recipient


def normalize_email(address: str) -> str:
    """Return the canonical form of ``address`` or raise InvalidAddress.

    Syntax only (no DNS): the domain is IDNA-normalised and the whole address
    lower-cased, so ``Ann@Example.COM`` and ``ann@example.com`` are one person.
    """
    if not isinstance(address, str) or not address.strip():
        raise InvalidAddress("An email address is required.")
    if len(address) > 254:
        raise InvalidAddress("Email address is longer than 254 characters.")
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"Invalid email address {address!r}: {exc}") from exc
    return result.normalized.lower()


def recipient_get_or_create(*, email: str, name: str = "") -> Recipient:
    normalized = normalize_email(email)
    recipient, created = Recipient.objects.get_or_create(
        email=normalized, defaults={"name": name[:200]}
    )
    if not created and name and not recipient.name:
        recipient.name = name[:200]
        recipient.save(update_fields=["name", "updated_at"])
    return recipient


def recipient_render_data(recipient: Recipient) -> dict:
    """What a template sees as ``recipient``: plain data, nothing else."""
    first_name = recipient.name.split()[0] if recipient.name.strip() else ""
    return {
        "email": recipient.email,
        "name": recipient.name,
        "first_name": first_name,
        "locale": recipient.locale,
        "time_zone": recipient.time_zone,
        "attributes": recipient.attributes or {},
    }
