"""Connections to a transport and the sender threads that use them.

A batch opens up to ``NOTIFIER_SEND_THREADS`` connections to one transport
(Anymail for ESPs, Django's SMTP backend) and hands each message to a sender
thread holding one of them, so the next message renders while earlier ones
wait for the ESP. Answers come back on a queue and are recorded on the batch's
own thread: database and journal writes never happen on a sender thread.
"""

import contextvars
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from opentelemetry import trace

from notifier.errors import UnknownTransport
from notifier.instruments import observe_send
from notifier.models import Delivery
from notifier.sending.outcomes import (
    UNKNOWN,
    Outcome,
    classify_exception,
    classify_sent_message,
)

logger = logging.getLogger(__name__)
# A no-op unless tracing is configured (config.tracing).
_tracer = trace.get_tracer(__name__)


def transport_connection(name: str):
    try:
        config = settings.NOTIFIER_TRANSPORTS[name]
    except KeyError:
        raise UnknownTransport(
            f"Unknown transport {name!r}; configured: {', '.join(settings.NOTIFIER_TRANSPORTS)}"
        ) from None
    return get_connection(config["BACKEND"], fail_silently=False, **config.get("OPTIONS", {}))


def transport_rate(name: str) -> float:
    """Messages per second allowed on ``name`` (0: unlimited)."""
    return settings.NOTIFIER_TRANSPORTS[name].get("RATE_LIMIT") or 0


def _transmit(conn, message: EmailMultiAlternatives, delivery: Delivery, transport: str):
    """Hand one message over (on a sender thread) and classify the answer."""
    started = time.monotonic()
    with _tracer.start_as_current_span(
        "notifier.transport.send",
        kind=trace.SpanKind.CLIENT,
        attributes={"notifier.delivery": str(delivery.uuid), "notifier.transport": transport},
    ) as span:
        try:
            conn.send_messages([message])
        except Exception as exc:
            outcome = classify_exception(exc)
            if outcome.status == UNKNOWN and transport == "smtp":
                # The SMTP connection is unusable after a mid-send failure; the
                # backend opens a new one for its next message.
                conn.close()
        else:
            outcome = classify_sent_message(message, delivery.recipient.email)
        span.set_attribute("notifier.outcome", outcome.status)
    observe_send(transport=transport, outcome=outcome.status, seconds=time.monotonic() - started)
    logger.info("Handed to %s: %s %s", transport, outcome.status, outcome.error or "")
    return outcome


class Wire:
    """Open connections to one transport (raises if one cannot be opened:
    ``UnknownTransport``, or the transport is down) and the sender threads
    (none with a single connection: messages are then sent inline)."""

    def __init__(self, transport: str, *, messages: int):
        threads = max(1, settings.NOTIFIER_SEND_THREADS)
        self.transport = transport
        self.connections = [transport_connection(transport) for _ in range(min(threads, messages))]
        for conn in self.connections:
            conn.open()
        self.rate = transport_rate(transport)
        self.free: SimpleQueue = SimpleQueue()
        self.answers: SimpleQueue = SimpleQueue()
        self.in_flight = 0
        for conn in self.connections:
            self.free.put(conn)
        self.pool = (
            ThreadPoolExecutor(max_workers=len(self.connections), thread_name_prefix="sender")
            if len(self.connections) > 1
            else None
        )

    def has_free_connection(self) -> bool:
        return not self.free.empty()

    def send(self, delivery: Delivery, message: EmailMultiAlternatives) -> None:
        """Hand ``message`` to a free connection (there must be one)."""
        conn = self.free.get()
        self.in_flight += 1
        context = contextvars.copy_context()  # the sender thread logs with it
        free, answers, transport = self.free, self.answers, self.transport

        def transmit() -> None:
            try:
                outcome = context.run(_transmit, conn, message, delivery, transport)
            except BaseException as exc:  # never leave the batch waiting
                outcome = Outcome(UNKNOWN, error=f"Sender thread failed: {exc!r}")
            free.put(conn)
            answers.put((delivery, outcome))

        if self.pool is None:
            transmit()
        else:
            self.pool.submit(transmit)

    def received(self, *, wait: bool) -> Iterator[tuple[Delivery, Outcome]]:
        """The answers that came back (waiting for the first one if ``wait``)."""
        while self.in_flight:
            try:
                delivery, outcome = self.answers.get(block=wait)
            except Empty:
                return
            wait = False
            self.in_flight -= 1
            yield delivery, outcome

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        for conn in self.connections:
            try:
                conn.close()
            except Exception:
                logger.warning("Error closing %s connection", self.transport, exc_info=True)
