"""``notifier.send``: one message from application code.

The Delivery is written in the caller's transaction and its task published
only after that transaction commits (a worker never races the row), on the
``transactional`` queue so no campaign can delay it.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifier import templating
from notifier.errors import (
    InvalidAddress,
    InvalidContext,
    InvalidName,
    InvalidSchedule,
    InvalidTemplate,
    NotifierError,
    UnknownTransport,
)
from notifier.models import Delivery, Recipient, Template
from notifier.sending.message import preview_render
from notifier.services.dispatch import delivery_dispatch_on_commit
from notifier.services.inputs import storable_problem
from notifier.services.recipients import (
    check_name,
    normalize_email,
    recipient_get_or_create,
)
from notifier.services.senders import sender_validate
from notifier.services.suppressions import suppression_reasons

# How far from now a message may be scheduled: a little in the past (a
# caller's clock, a retried request) and up to a year ahead.
SEND_AT_MAX_PAST = timedelta(days=1)
SEND_AT_MAX_AHEAD = timedelta(days=365)


def check_send_at(send_at: datetime) -> datetime:
    """Return ``send_at`` if a message may be scheduled then, else raise InvalidSchedule."""
    if not isinstance(send_at, datetime):
        raise InvalidSchedule("send_at must be a datetime.")
    if timezone.is_naive(send_at):
        raise InvalidSchedule("send_at must be timezone-aware.")
    now = timezone.now()
    # Compared before any conversion: year 1 at +14:00 has no UTC equivalent.
    if send_at < now - SEND_AT_MAX_PAST or send_at > now + SEND_AT_MAX_AHEAD:
        raise InvalidSchedule(
            f"send_at must be between {SEND_AT_MAX_PAST.days} day before and "
            f"{SEND_AT_MAX_AHEAD.days} days after now ({now:%Y-%m-%dT%H:%M:%SZ})."
        )
    return send_at


# The error raised for a problem with each argument.
_FIELD_ERRORS = {
    "to": InvalidAddress,
    "name": InvalidName,
    "template": InvalidTemplate,
    "subject": InvalidTemplate,
    "html": InvalidTemplate,
    "text": InvalidTemplate,
    "context": InvalidContext,
}


def _resolve_template(template) -> Template | None:
    """The transactional template meant; campaign templates are refused.

    Campaign templates are editable by marketing staff; a transactional
    message (a password reset) must never be built from one.
    """
    if isinstance(template, str):
        try:
            template = Template.objects.get(name=template)
        except Template.DoesNotExist:
            raise InvalidTemplate(f"No template named {template!r}.") from None
    elif template is not None and not isinstance(template, Template):
        raise InvalidTemplate("template must be a Template or a template name.")
    if template is not None and template.kind != Template.Kind.TRANSACTIONAL:
        raise InvalidTemplate(
            f"Template {template.name!r} is a campaign template; "
            "send() and the API use transactional templates only."
        )
    return template


def send(
    *,
    to: str | Recipient,
    template: Template | str | None = None,
    subject: str | None = None,
    html: str | None = None,
    text: str | None = None,
    context: dict | None = None,
    idempotency_key: str | None = None,
    send_at: datetime | None = None,
    from_email: str | None = None,
    transport: str | None = None,
    headers: dict | None = None,
    name: str = "",
    kind: str = Delivery.Kind.TRANSACTIONAL,
    caller: str | None = None,
) -> Delivery:
    """Queue one email and return its Delivery.

    Give either ``template`` (a Template or its name) or inline ``subject`` and
    ``html``/``text``. The same ``idempotency_key`` twice returns the first
    Delivery and sends once. A suppressed address gets a Delivery marked
    ``suppressed`` and no email. Bad input raises ``NotifierError`` (with a
    message saying what is wrong) and stores nothing.

    ``send_at`` may lie from a day before to a year after now. ``name`` names
    a new recipient; ``caller`` (``"api:<service>"``) says who asks, for the
    rules of ``recipient_get_or_create``.
    """
    # First: these values reach database queries (the idempotency key, the
    # template name) before anything else looks at them.
    problem = storable_problem(
        {
            "to": to if isinstance(to, str) else "",
            "name": name,
            "template": template if isinstance(template, str) else "",
            "subject": subject,
            "html": html,
            "text": text,
            "context": context,
            "idempotency_key": idempotency_key,
            "from_email": from_email,
            "headers": headers,
        }
    )
    if problem is not None:
        field, reason = problem
        error = _FIELD_ERRORS.get(field.partition(".")[0], NotifierError)
        raise error(f"{field}: {reason}")
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key.strip():
            raise NotifierError("idempotency_key must be a non-empty string.")
        if len(idempotency_key) > 255:
            raise NotifierError("idempotency_key is longer than 255 characters.")
        existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing

    template_obj = _resolve_template(template)
    if template_obj is None:
        if not subject or not (html or text):
            raise InvalidTemplate("Give a template, or a subject and an html or text body.")
    elif subject or html or text:
        raise InvalidTemplate("Give either a template or inline content, not both.")
    if send_at is not None:
        send_at = check_send_at(send_at)
    check_name(name)
    transport = transport or settings.NOTIFIER_DEFAULT_TRANSPORT
    if transport not in settings.NOTIFIER_TRANSPORTS:
        raise UnknownTransport(f"Unknown transport {transport!r}.")
    try:
        plain_context = templating.plain_data(context or {})
    except templating.ContextNotPlainData as exc:
        raise InvalidContext(str(exc)) from exc
    if not isinstance(plain_context, dict):
        raise InvalidContext("context must be a dict.")
    if from_email:
        from_email = sender_validate(from_email=from_email)
    if headers and not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise NotifierError("headers must map strings to strings.")

    recipient_email = to.email if isinstance(to, Recipient) else normalize_email(to)

    # Render once now, so a template that cannot render with this context is
    # the caller's error, raised here, not a failed send later.
    subject_src = template_obj.subject if template_obj else subject
    html_src = template_obj.html_body if template_obj else (html or "")
    text_src = template_obj.text_body if template_obj else (text or "")
    try:
        preview_render(
            subject=subject_src,
            html_body=html_src,
            text_body=text_src,
            context=plain_context,
            recipient=to
            if isinstance(to, Recipient)
            else Recipient(email=recipient_email, name=name),
        )
    except templating.TemplateSyntaxProblem as exc:
        raise InvalidTemplate(f"Template does not compile: {exc}") from exc
    except Exception as exc:
        raise InvalidTemplate(f"Template does not render with this context: {exc}") from exc

    with transaction.atomic():
        recipient = (
            to
            if isinstance(to, Recipient)
            else recipient_get_or_create(email=recipient_email, name=name, caller=caller)
        )
        suppressed = suppression_reasons([recipient]).get(recipient.id)
        fields = dict(
            recipient=recipient,
            kind=kind,
            template=template_obj,
            subject="" if template_obj else subject,
            html_body="" if template_obj else (html or ""),
            text_body="" if template_obj else (text or ""),
            context=plain_context,
            from_email=from_email or "",
            headers=headers or {},
            transport=transport,
            idempotency_key=idempotency_key,
            next_attempt_at=send_at or timezone.now(),
        )
        if suppressed is not None:
            fields.update(status=Delivery.Status.SUPPRESSED, status_reason=suppressed)
        try:
            with transaction.atomic():
                delivery = Delivery.objects.create(**fields)
        except IntegrityError:
            if idempotency_key is None:
                raise
            return Delivery.objects.get(idempotency_key=idempotency_key)
        due = send_at is None or send_at <= timezone.now()
        if delivery.status == Delivery.Status.PENDING and due:
            delivery_dispatch_on_commit(delivery)
    return delivery
