"""A message as it would leave, for staff: previews and test sends.

Both build the message by the one render path (``delivery_build_message``)
from an unsaved Delivery, so the registered message hooks add the same
unsubscribe and preference links and the same ``List-Unsubscribe`` headers
a real send gets.

A test send writes nothing: no Delivery (it must not count in a campaign's
figures, and nothing retries it: staff see the transport's answer at once)
and no Recipient (the test address, often a colleague's, must not become a
contact). It is handed to the transport directly, marked as a test by a
subject prefix and ``TEST_HEADER``.
"""

from notifier.errors import NotifierError
from notifier.models import Delivery, Recipient, Template
from notifier.sending.message import delivery_build_message
from notifier.sending.wire import transport_connection
from notifier.services.recipients import normalize_email
from notifier.services.suppressions import active_suppressions, suppression_reasons

TEST_HEADER = "X-Notifier-Test"
TEST_SUBJECT_PREFIX = "[Test] "


def message_preview(
    *,
    template: Template,
    context: dict,
    recipient: Recipient,
    kind: str = Delivery.Kind.CAMPAIGN,
    from_email: str = "",
    render_as: Recipient | None = None,
):
    """The email ``recipient`` would get (an EmailMultiAlternatives, not sent):
    its links and headers made for ``recipient``, its text rendered with
    ``render_as``'s data (default: the recipient's). Raises on a broken render."""
    delivery = Delivery(
        recipient=recipient,
        kind=kind,
        template=template,
        context=context or {},
        from_email=from_email,
    )
    return delivery_build_message(delivery, render_as=render_as)


def message_send_test(
    *,
    to: str,
    template: Template,
    context: dict,
    render_as: Recipient | None = None,
    kind: str = Delivery.Kind.CAMPAIGN,
    from_email: str = "",
    transport: str,
) -> str:
    """Send one test of the message to ``to`` now; returns the address.

    Rendered with ``render_as``'s data (a chosen recipient; default: the
    address's own recipient, or sample data). Links and List-Unsubscribe
    belong to the address's own recipient when it is one, else to a
    throwaway that is never saved (its links lead to "not valid any more",
    so a tester's click unsubscribes nobody). A suppressed address is
    refused, as it would be for real.
    """
    email = normalize_email(to)
    own = Recipient.objects.filter(email=email).first()
    if own is not None:
        reason = suppression_reasons([own]).get(own.pk)
    else:
        reason = active_suppressions([email]).get(email)
        reason = reason and f"Suppressed: {reason}"
    if reason is not None:
        raise NotifierError(f"Not sent to {email}. {reason}.")
    link_recipient = own or Recipient(email=email)
    if render_as is None:
        render_as = own or Recipient(email=email, name="Ada Lovelace", attributes={})
    message = message_preview(
        template=template,
        context=context,
        recipient=link_recipient,
        kind=kind,
        from_email=from_email,
        render_as=render_as,
    )
    message.subject = f"{TEST_SUBJECT_PREFIX}{message.subject}"
    message.extra_headers[TEST_HEADER] = "yes"
    message.to = [email]
    message.metadata = {"test": "yes"}
    try:
        transport_connection(transport).send_messages([message])
    except NotifierError:
        raise
    except Exception as exc:
        raise NotifierError(f"The transport did not take the test message: {exc}") from exc
    return email
