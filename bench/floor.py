"""The floor: a plain process that renders and sends, no queue, no database.

Kept apart from ``bench.parts`` so a freshly spawned interpreter can import
it before Django is set up.
"""

from email.utils import formataddr

from bench.run import HTML, ITEMS, SUBJECT, TEXT


def recipient_data(i: int) -> dict:
    return {
        "email": f"u{i}@bench.example",
        "name": f"Reader {i}",
        "first_name": "Reader",
        "locale": "en",
        "time_zone": "UTC",
        "attributes": {"plan": "pro" if i % 3 == 0 else "free", "vip": i % 10 == 0},
    }


def recipient_to(i: int) -> str:
    """The To header of bench recipient ``i``, as the campaign sends it."""
    data = recipient_data(i)
    return formataddr((data["name"], data["email"]))


def floor_message(i: int):
    """Bench recipient ``i``'s message, rendered: the same as the campaign's
    (same content, same From and To)."""
    from django.core.mail import EmailMultiAlternatives

    from notifier import templating

    context = {"items": ITEMS, "recipient": recipient_data(i)}
    subject, html, text = templating.render_message(
        subject=SUBJECT, html_body=HTML, text_body=TEXT, context=context
    )
    message = EmailMultiAlternatives(
        subject,
        text,
        "Bench <bench@bench.example>",
        [recipient_to(i)],
        headers={"Message-ID": f"<floor-{i}@bench.example>"},
    )
    message.attach_alternative(html, "text/html")
    return message


def floor_process(transport: str, indices: range, ready, go, queue) -> None:
    """A plain process: render and send, no queue, no database."""
    import django

    django.setup()
    from notifier import templating
    from notifier.sending.wire import transport_connection

    conn = transport_connection(transport)
    conn.open()
    templating.check_syntax(HTML)  # compiled before the clock starts, as ours are cached
    ready.release()
    go.wait()
    sent = 0
    for i in indices:
        sent += conn.send_messages([floor_message(i)])
    conn.close()
    queue.put(sent)


def batch_floor_process(transport: str, indices: range, ready, go, queue) -> None:
    """A plain process: render the same messages and send them in requests of
    the transport's ``BATCH_SIZE`` through its batch API (Postmark's
    ``/email/batch``), no queue, no database. Counts the messages the ESP
    accepted (each one's own answer)."""
    import django

    django.setup()
    from notifier import templating
    from notifier.sending.wire import transport_batch_size, transport_connection

    conn = transport_connection(transport)
    conn.open()
    size = transport_batch_size(transport, conn)
    templating.check_syntax(HTML)
    ready.release()
    go.wait()
    sent = 0
    pending: list = []
    for i in indices:
        pending.append(floor_message(i))
        if len(pending) >= size:
            sent += _send_batch(conn, pending)
            pending = []
    if pending:
        sent += _send_batch(conn, pending)
    conn.close()
    queue.put(sent)


def _send_batch(conn, messages: list) -> int:
    errors = conn.send_batch(messages)
    return sum(
        1
        for message, error in zip(messages, errors, strict=True)
        if error is None and message.anymail_status.status <= {"sent", "queued"}
    )
