"""Signups: forms with double opt-in, and subscriptions through the API.

A signup (``signup_request``) stores a ``Consent`` awaiting confirmation and
sends, through ``notifier.send`` in the same transaction, an email with a
signed link that expires after ``SIGNUP_CONFIRM_DAYS``. Nothing joins a list
until that link is followed (``signup_confirm``): then, in one transaction,
the contact joins the consent's lists, the requested name (when the contact
has none) and attributes are applied, the consent is stamped, a
``subscribed`` webhook is queued and ``signup_confirmed`` is sent.

An address that is suppressed (unsubscribed, bounced, complained, erased) is
refused with ``SignupRefused`` and the same words whatever the reason.

**The seam for other apps.** ``signup_confirmed`` (a Django signal, sent
inside the confirming transaction, so what a receiver writes commits or
rolls back with the confirmation) has the keyword arguments ``recipient``
(a ``notifier.Recipient``), ``form`` (the ``SignupForm``, or None for an API
subscription) and ``consent``. Journeys connect to it to enrol a recipient
on ``trigger="signup_confirmed"``; this app never imports them.
"""

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.dispatch import Signal
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Consent, ContactList, ListMembership, SignupForm
from notifier import send
from notifier.errors import AddressSuppressed
from notifier.models import Recipient, Template
from notifier.redis import get_redis
from notifier.services.privacy import address_erased
from notifier.services.recipients import check_name, normalize_email, recipient_get_or_create
from notifier.services.suppressions import active_suppressions, suppression_reasons
from notifier.services.webhooks import recipient_event_data, webhook_event_record

signup_confirmed = Signal()  # kwargs: recipient, form, consent

CONFIRMATION_TEMPLATE = "Signup confirmation"
FORM_TOKEN_SALT = "campaigns.signup.form"
CONFIRM_SALT = "campaigns.signup.confirm"
REFUSED_MESSAGE = (
    "This address cannot be subscribed. If you unsubscribed earlier, "
    "use the link in one of our emails or contact us to subscribe again."
)


class SignupRefused(ValueError):
    """The signup cannot go ahead; ``kind`` says why (data), the message is for people."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# --- The form page's token: signed, timestamped, used once ----------------------------


def signup_form_token(*, form: SignupForm) -> str:
    return signing.dumps({"f": form.pk, "n": secrets.token_urlsafe(12)}, salt=FORM_TOKEN_SALT)


def signup_form_token_check(*, form: SignupForm, token: str) -> str:
    """The token's nonce, or SignupRefused (``token_invalid`` / ``token_expired``)."""
    max_age = settings.SIGNUP_FORM_TOKEN_HOURS * 3600
    try:
        data = signing.loads(token, salt=FORM_TOKEN_SALT, max_age=max_age)
    except signing.SignatureExpired:
        raise SignupRefused(
            "token_expired", "This form has expired; please send it again."
        ) from None
    except signing.BadSignature:
        raise SignupRefused(
            "token_invalid", "This form could not be read; please send it again."
        ) from None
    if not isinstance(data, dict) or data.get("f") != form.pk or not isinstance(data.get("n"), str):
        raise SignupRefused("token_invalid", "This form could not be read; please send it again.")
    return data["n"]


def signup_form_token_use(*, nonce: str) -> None:
    """Spend a token: a replayed form post is refused (``token_used``)."""
    key = f"notifier:signup:token:{nonce}"
    if not get_redis().set(key, "1", nx=True, ex=settings.SIGNUP_FORM_TOKEN_HOURS * 3600 + 60):
        raise SignupRefused("token_used", "This form was sent already; please send it again.")


def signup_rate_limit_take(*, client: str) -> bool:
    """Count one form post from ``client`` (an IP address) in this hour; False
    once ``SIGNUP_RATE_LIMIT_PER_HOUR`` is used up."""
    hour = int(timezone.now().timestamp() // 3600)
    key = f"notifier:signup:rate:{client}:{hour}"
    redis = get_redis()
    with redis.pipeline() as pipe:
        count, _ = pipe.incr(key).expire(key, 3700).execute()
    return count <= settings.SIGNUP_RATE_LIMIT_PER_HOUR


# --- Signing up -------------------------------------------------------------------


def confirm_token(*, consent: Consent) -> str:
    return signing.dumps(consent.pk, salt=CONFIRM_SALT)


def confirm_token_read(token: str) -> Consent:
    """The consent a confirmation link names; SignupRefused
    (``link_expired`` / ``link_invalid``) otherwise."""
    max_age = settings.SIGNUP_CONFIRM_DAYS * 86400
    try:
        pk = signing.loads(token, salt=CONFIRM_SALT, max_age=max_age)
    except signing.SignatureExpired:
        raise SignupRefused("link_expired", "This confirmation link has expired.") from None
    except signing.BadSignature:
        raise SignupRefused("link_invalid", "This confirmation link is not valid.") from None
    consent = Consent.objects.select_related("recipient", "form").filter(pk=pk).first()
    if not isinstance(pk, int) or consent is None:
        raise SignupRefused("link_invalid", "This confirmation link is not valid.")
    return consent


def _check_address(email: str) -> str:
    try:
        email = normalize_email(email)
    except ValueError as exc:
        raise SignupRefused("invalid_address", str(exc)) from None
    if active_suppressions([email]) or address_erased(email):
        raise SignupRefused("suppressed", REFUSED_MESSAGE)
    return email


def _confirmation_template(form: SignupForm | None) -> Template:
    if form is not None and form.confirmation_template_id:
        return form.confirmation_template
    template = Template.objects.filter(name=CONFIRMATION_TEMPLATE).first()
    if template is None:
        raise SignupRefused(
            "no_template",
            f"No confirmation template: create the template {CONFIRMATION_TEMPLATE!r}.",
        )
    return template


@dataclass
class SignupRequest:
    email: str
    name: str = ""
    attributes: dict | None = None
    ip_address: str | None = None


def signup_request(
    *,
    request: SignupRequest,
    lists: list[ContactList],
    consent_text: str,
    form: SignupForm | None = None,
    double_opt_in: bool = True,
    requested_by: str = "",
) -> Consent:
    """Record a signup's consent; with double opt-in email the confirmation
    link, else subscribe at once. Raises SignupRefused for a refused address."""
    email = _check_address(request.email)
    try:
        check_name(request.name)
    except ValueError as exc:
        raise SignupRefused("invalid_name", str(exc)) from None
    if not lists:
        raise SignupRefused("no_lists", "Choose at least one list.")
    template = _confirmation_template(form) if double_opt_in else None
    with transaction.atomic():
        try:
            recipient = recipient_get_or_create(email=email, caller=requested_by or None)
        except AddressSuppressed:
            raise SignupRefused("suppressed", REFUSED_MESSAGE) from None
        if suppression_reasons([recipient]):
            raise SignupRefused("suppressed", REFUSED_MESSAGE)
        consent = Consent.objects.create(
            recipient=recipient,
            form=form,
            source=Consent.Source.API if requested_by.startswith("api:") else Consent.Source.FORM,
            requested_by=requested_by,
            list_ids=[contact_list.pk for contact_list in lists],
            consent_text=consent_text,
            name=request.name,
            attributes=request.attributes or {},
            double_opt_in=double_opt_in,
            ip_address=request.ip_address,
        )
        if not double_opt_in:
            return signup_confirm(consent=consent, ip_address=request.ip_address)
        confirm_url = settings.SITE_URL + reverse(
            "campaigns:signup_confirm", args=[confirm_token(consent=consent)]
        )
        send(
            to=recipient,
            template=template,
            context={
                "confirm_url": confirm_url,
                "form_name": form.title if form else "",
                "lists": [contact_list.name for contact_list in lists],
                "valid_days": settings.SIGNUP_CONFIRM_DAYS,
            },
            idempotency_key=f"signup-confirm:{consent.pk}",
        )
    return consent


def signup_confirm(*, consent: Consent, ip_address: str | None) -> Consent:
    """Follow a confirmation: join the lists (idempotent: a second click
    changes nothing). Raises SignupRefused if the address was suppressed since."""
    with transaction.atomic():
        consent = (
            Consent.objects.select_for_update(of=("self",))
            .select_related("form")
            .get(pk=consent.pk)
        )
        if consent.confirmed_at is not None:
            return consent
        recipient = Recipient.objects.select_for_update().get(pk=consent.recipient_id)
        if recipient.status == Recipient.Status.ERASED or suppression_reasons([recipient]):
            raise SignupRefused("suppressed", REFUSED_MESSAGE)
        if consent.name and not recipient.name:
            recipient.name = consent.name
        if consent.attributes:
            recipient.attributes = {**(recipient.attributes or {}), **consent.attributes}
        recipient.save(update_fields=["name", "attributes", "updated_at"])
        lists = list(ContactList.objects.filter(pk__in=consent.list_ids))
        ListMembership.objects.bulk_create(
            [ListMembership(contact_list=cl, recipient=recipient) for cl in lists],
            ignore_conflicts=True,
        )
        consent.confirmed_at = timezone.now()
        consent.confirm_ip_address = ip_address
        consent.save(update_fields=["confirmed_at", "confirm_ip_address"])
        webhook_event_record(
            event_type="subscribed",
            event_key=f"subscribed:{consent.pk}",
            recipient=recipient,
            data={
                "recipient": recipient_event_data(recipient),
                "lists": [{"id": cl.pk, "name": cl.name} for cl in lists],
                "form": consent.form.slug if consent.form else None,
                "source": consent.source,
                "confirmed_at": consent.confirmed_at,
            },
        )
        signup_confirmed.send(
            sender=Consent, recipient=recipient, form=consent.form, consent=consent
        )
    return consent
