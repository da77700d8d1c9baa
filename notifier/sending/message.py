"""The one render path: a Delivery (or a preview of one) into an email message.

Context, in order of precedence: the row's own context, then its run's shared
context (a campaign's, as it was at launch: stored once per run, not copied
into every row), plus ``recipient`` (the recipient's render data) and what
message hooks add (unsubscribe links). Templates render in the locked-down
engine of ``notifier.templating``.
"""

from collections.abc import Callable
from email.utils import formataddr

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from notifier import templating
from notifier.models import Delivery
from notifier.services.recipients import recipient_render_data

# A run context provider is told the run ids in a batch and answers each run's
# shared template context. The campaigns app registers one; notifier itself
# never imports campaigns.
RunContexts = Callable[[set[int]], dict[int, dict]]
_run_context_providers: list[RunContexts] = []
# Message hooks may add context and headers (unsubscribe links, for example).
MessageHook = Callable[[Delivery, dict, dict], None]
_message_hooks: list[MessageHook] = []


def register_run_context(provider: RunContexts) -> None:
    if provider not in _run_context_providers:
        _run_context_providers.append(provider)


def register_message_hook(hook: MessageHook) -> None:
    if hook not in _message_hooks:
        _message_hooks.append(hook)


def run_contexts(run_ids: set[int]) -> dict[int, dict]:
    contexts: dict[int, dict] = {}
    if run_ids:
        for provider in _run_context_providers:
            contexts.update(provider(run_ids))
    return contexts


def _content(delivery: Delivery) -> tuple[str, str, str]:
    if delivery.template_id:
        t = delivery.template
        return t.subject, t.html_body, t.text_body
    return delivery.subject, delivery.html_body, delivery.text_body


def delivery_build_message(
    delivery: Delivery, *, run_context: dict | None = None
) -> EmailMultiAlternatives:
    """Render ``delivery`` into an email message (raises on a broken render).

    ``run_context`` is the shared context of the delivery's run (see
    ``register_run_context``); looked up when not given.
    """
    if run_context is None and delivery.run_id is not None:
        run_context = run_contexts({delivery.run_id}).get(delivery.run_id)
    # This message's own top-level dict (hooks add to it); values are plain
    # data decoded from JSON, which rendering only reads.
    context = dict(run_context or {})
    if isinstance(delivery.context, dict):
        context.update(delivery.context)
    context["recipient"] = recipient_render_data(delivery.recipient)
    headers = {"Message-ID": delivery.message_id}
    headers.update(delivery.headers or {})
    for hook in _message_hooks:
        hook(delivery, context, headers)
    subject_src, html_src, text_src = _content(delivery)
    subject, html, text = templating.render_message(
        subject=subject_src, html_body=html_src, text_body=text_src, context=context
    )
    recipient = delivery.recipient
    message = EmailMultiAlternatives(
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
