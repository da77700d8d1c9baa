"""The one render path: a Delivery (or a preview of one) into an email message.

Context, in order of precedence: the row's own context, then its group's
shared context (a campaign's, as it was at launch: stored once on the
DeliveryGroup, not copied into every row), plus ``recipient`` (the recipient's render data) and what
message hooks add (unsubscribe links). Templates render in the locked-down
engine of ``notifier.templating``.
"""

from collections.abc import Callable
from email.utils import formataddr

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from notifier import templating
from notifier.email_html import email_html_compile
from notifier.models import Delivery, DeliveryGroup, Recipient
from notifier.sending.mime import SHORT_HEADERS, new_boundary
from notifier.services.recipients import recipient_render_data
from notifier.services.templates import template_sent_html

# Message hooks may add context and headers (unsubscribe links, for example).
MessageHook = Callable[[Delivery, dict, dict], None]
_message_hooks: list[MessageHook] = []


def register_message_hook(hook: MessageHook) -> None:
    if hook not in _message_hooks:
        _message_hooks.append(hook)


def group_contexts(group_ids: set[int]) -> dict[int, dict]:
    """The shared context of each group among ``group_ids`` (one query),
    frozen once here: every message of the batch shares one read-only copy,
    and the template parts that read only it render once (see
    ``templating.shared_layer``)."""
    if not group_ids:
        return {}
    rows = DeliveryGroup.objects.filter(pk__in=group_ids).values_list("pk", "context")
    return {pk: templating.shared_layer(context) for pk, context in rows}


def message_context(*layers: dict | None, recipient: Recipient) -> dict:
    """The context a message renders with: ``layers`` merged in order (a later
    one wins; plain data, which rendering only reads) and ``recipient``, the
    recipient's render data. A new top-level dict: callers may add to it."""
    context: dict = {}
    for layer in layers:
        if isinstance(layer, dict):
            context.update(layer)
    context["recipient"] = recipient_render_data(recipient)
    return context


def message_render(
    *,
    subject: str,
    html_body: str,
    text_body: str,
    context: dict,
    shared: templating.SharedContext | None = None,
) -> tuple[str, str, str]:
    """(subject, html, text) of a message, ``context`` from ``message_context``
    (``shared``: its group's layer, see ``group_contexts``). Raises on a
    template that does not compile or render."""
    return templating.render_message(
        subject=subject, html_body=html_body, text_body=text_body, context=context, shared=shared
    )


def preview_render(
    *, subject: str, html_body: str, text_body: str, context: dict | None, recipient: Recipient
) -> tuple[str, str, str]:
    """What ``recipient`` would get: previews, and the check ``send()`` makes
    before storing anything."""
    return message_render(
        subject=subject,
        html_body=html_body,
        text_body=text_body,
        context=message_context(context, recipient=recipient),
    )


def inline_html_document(html: str) -> str:
    """Inline HTML (``send(html=...)``, digests) as a complete document in the
    default layout: compiled once per process for each distinct source."""
    if not html:
        return html
    try:
        return email_html_compile(source=html)
    except ValueError:  # a source the parser cannot keep as written: send it as is
        return html


class OutboundMessage(EmailMultiAlternatives):
    """A message whose MIME parts get random 128-bit boundaries up front
    (``mime.new_boundary``) and whose headers are written by
    ``mime.ShortHeaders``. The SMTP backend writes it without the tree when
    it can (``mime.message_bytes``)."""

    def message(self, **kwargs):
        mime = super().message(**kwargs)
        for part in mime.walk():
            if part.is_multipart() and part.get_boundary() is None:
                part.set_boundary(new_boundary())
        mime.policy = SHORT_HEADERS  # the generator writes every part with it
        return mime


def _content(delivery: Delivery) -> tuple[str, str, str]:
    if delivery.template_id:
        t = delivery.template
        # A row's own subject wins (an A/B variant's).
        return delivery.subject or t.subject, template_sent_html(t), t.text_body
    return delivery.subject, inline_html_document(delivery.html_body), delivery.text_body


def delivery_build_message(
    delivery: Delivery, *, run_context: dict | None = None, render_as: Recipient | None = None
) -> EmailMultiAlternatives:
    """Render ``delivery`` into an email message (raises on a broken render).

    ``run_context`` is the shared context of the delivery's group (see
    ``DeliveryGroup``); looked up when not given. ``render_as`` renders
    ``recipient`` with another person's data (a test send shows a chosen
    recipient's message); links and headers stay the delivery recipient's.
    """
    if run_context is None and delivery.run_id is not None:
        run_context = group_contexts({delivery.run_id}).get(delivery.run_id)
    # This message's own top-level dict (hooks add to it); values are plain
    # data decoded from JSON, which rendering only reads.
    context = message_context(
        run_context, delivery.context, recipient=render_as or delivery.recipient
    )
    headers = {"Message-ID": delivery.message_id}
    headers.update(delivery.headers or {})
    for hook in _message_hooks:
        hook(delivery, context, headers)
    subject_src, html_src, text_src = _content(delivery)
    subject, html, text = message_render(
        subject=subject_src,
        html_body=html_src,
        text_body=text_src,
        context=context,
        shared=run_context if isinstance(run_context, templating.SharedContext) else None,
    )
    recipient = delivery.recipient
    message = OutboundMessage(
        subject=subject,
        body=text,
        from_email=delivery.from_email or settings.DEFAULT_FROM_EMAIL,
        to=[formataddr((recipient.name, recipient.email)) if recipient.name else recipient.email],
        headers=headers,
    )
    if html:
        message.attach_alternative(html, "text/html")
    # Anymail sends these as ESP metadata: webhooks then name the delivery.
    message.metadata = {"delivery": str(delivery.uuid)}
    return message
