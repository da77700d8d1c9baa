import functools
import re
import zoneinfo

from email_validator import EmailNotValidError, validate_email

from notifier.errors import AddressSuppressed, InvalidAddress, InvalidName
from notifier.models import Recipient, name_problem

NAME_MAX = Recipient._meta.get_field("name").max_length
LOCALE_MAX = Recipient._meta.get_field("locale").max_length
# A BCP 47 language tag as mail needs it: a language, then optional script,
# region or variant parts ("en", "pt-BR", "zh-Hant-TW"); "_" is read as "-".
_LOCALE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$", re.IGNORECASE)


@functools.cache
def _time_zones() -> dict[str, str]:
    return {name.casefold(): name for name in zoneinfo.available_timezones()}


def normalize_time_zone(value: str) -> str:
    """The IANA name for ``value`` (any case: ``europe/paris`` is
    ``Europe/Paris``), or ValueError with a sentence saying why not."""
    name = _time_zones().get(value.strip().casefold())
    if name is None:
        raise ValueError(
            f"Unknown time zone {value.strip()[:64]!r}; use an IANA name such as Europe/Paris."
        )
    return name


def normalize_locale(value: str) -> str:
    """``value`` as a language tag (``en_gb`` is ``en-GB``), or ValueError."""
    tag = value.strip().replace("_", "-")
    if len(tag) > LOCALE_MAX or not _LOCALE.match(tag):
        raise ValueError(
            f"Unknown locale {value.strip()[:32]!r}; use a language tag such as en, fr or pt-BR."
        )
    language, *rest = tag.split("-")
    parts = [language.lower()]
    for part in rest:
        if len(part) == 2 or (len(part) == 3 and part.isdigit()):
            parts.append(part.upper())  # region
        elif len(part) == 4:
            parts.append(part.title())  # script
        else:
            parts.append(part.lower())
    return "-".join(parts)


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


def check_name(name: str) -> str:
    """Return ``name`` if it can be a recipient's name, else raise InvalidName."""
    if not isinstance(name, str):
        raise InvalidName("The name must be a string.")
    if len(name) > NAME_MAX:
        raise InvalidName(f"The name is longer than {NAME_MAX} characters.")
    problem = name_problem(name)
    if problem is not None:
        raise InvalidName(problem)
    return name


def recipient_get_or_create(*, email: str, name: str = "", caller: str | None = None) -> Recipient:
    """The recipient with ``email``, created if new (with ``name``).

    A recipient is shared by every service that mails it, so one caller must
    not change what another set up. ``caller`` (``"api:<service>"``) names an
    HTTP API caller: it names recipients it creates, and may rename only
    those. Without a caller (code in this process) an empty name is filled in.
    """
    normalized = normalize_email(email)
    check_name(name)
    recipient = Recipient.objects.filter(email=normalized).first()
    if recipient is None:
        address_refuse_if_erased(normalized)
    recipient, created = Recipient.objects.get_or_create(
        email=normalized, defaults={"name": name, "created_by": caller or ""}
    )
    if created or not name or name == recipient.name:
        return recipient
    may_rename = recipient.created_by == caller if caller else not recipient.name
    if may_rename:
        recipient.name = name
        recipient.save(update_fields=["name", "updated_at"])
    return recipient


ERASED_MESSAGE = (
    "This address cannot be used: it is suppressed at its owner's request. "
    "Staff can lift the suppression."
)


def address_refuse_if_erased(email: str) -> None:
    """Raise AddressSuppressed when ``email`` belongs to an erased recipient
    (see ``notifier.services.privacy``): storing it again would undo the erase."""
    from notifier.services.privacy import address_erased

    if address_erased(email):
        raise AddressSuppressed(ERASED_MESSAGE)


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


def _check_attribute_name(name) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise ValueError("An attribute name is 1 to 64 characters.")


def recipients_attribute_set(*, ids: list[int], name: str, value) -> int:
    """``recipient_attribute_set`` for many recipients at once: two queries
    (read under row locks, one bulk write) whatever the count. Returns how
    many were set."""
    from django.db import transaction

    _check_attribute_name(name)
    with transaction.atomic():
        locked = list(
            Recipient.objects.select_for_update()
            .filter(pk__in=ids)
            .order_by("pk")  # one lock order: two writers never deadlock
            .only("id", "attributes")
        )
        for recipient in locked:
            recipient.attributes = {**(recipient.attributes or {}), name: value}
        Recipient.objects.bulk_update(locked, ["attributes"], batch_size=500)
    return len(locked)


def recipient_attribute_set(*, recipient: Recipient, name: str, value) -> Recipient:
    """Set one attribute of ``recipient`` (other attributes are kept).

    Read and written under a row lock, so two writers of different attributes
    of the same recipient do not undo each other.
    """
    from django.db import transaction

    _check_attribute_name(name)
    with transaction.atomic():
        locked = Recipient.objects.select_for_update().get(pk=recipient.pk)
        attributes = dict(locked.attributes or {})
        attributes[name] = value
        Recipient.objects.filter(pk=recipient.pk).update(attributes=attributes)
    recipient.attributes = attributes
    return recipient
