"""Connections to a transport and the sender threads that use them.

A transport whose backend has a batch API (``send_batch``, such as
``notifier.sending.postmark.EmailBackend``) and a ``BATCH_SIZE`` above 1 takes
its messages in requests of that many, over one connection on one sender
thread: the next request renders while the previous one is on the wire, and
at most one request is ever in flight (the in-doubt bound, see README).
Other transports (SMTP) take one message per request, over up to
``NOTIFIER_SEND_THREADS`` connections, each on its own sender thread. A
hand-over takes several messages (half of ``NOTIFIER_SEND_AHEAD``), so the
journal marks them in one round trip; they queue for the first free
connection, and never more than ``NOTIFIER_SEND_AHEAD`` are handed over and
not yet answered (the in-doubt bound).
Answers come back on a queue, one per message, and are recorded on the
batch's own thread: database and journal writes never happen on a sender
thread.
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

from config.logging import log_context
from notifier.errors import UnknownTransport
from notifier.instruments import observe_send, observe_sends
from notifier.models import Delivery
from notifier.sending.outcomes import (
    UNKNOWN,
    Outcome,
    classify_batch,
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


def transport_batch_size(name: str, connection) -> int:
    """Messages per request on ``name``: its ``BATCH_SIZE`` (capped by the
    backend's own limit) where its backend has a batch API, else 1."""
    wanted = settings.NOTIFIER_TRANSPORTS[name].get("BATCH_SIZE") or 1
    if wanted <= 1 or not hasattr(connection, "send_batch"):
        return 1
    return max(1, min(int(wanted), getattr(connection, "batch_size", wanted)))


def transport_rate(name: str) -> float:
    """Messages per second allowed on ``name`` (0: unlimited)."""
    return settings.NOTIFIER_TRANSPORTS[name].get("RATE_LIMIT") or 0


def send_ahead() -> int:
    """On a transport without a batch API: messages a batch may have handed
    over and not yet answered (``NOTIFIER_SEND_AHEAD``, at least one per
    sender thread); a killed worker leaves at most this many in doubt."""
    return max(1, settings.NOTIFIER_SEND_THREADS, settings.NOTIFIER_SEND_AHEAD)


def row_log_context(delivery: Delivery):
    """Log lines inside name ``delivery``, its row id and its run."""
    return log_context(delivery_id=delivery.id, delivery=str(delivery.uuid), run_id=delivery.run_id)


def _transmit(conn, message: EmailMultiAlternatives, delivery: Delivery, transport: str):
    """Hand one message over (on a sender thread) and classify the answer."""
    with row_log_context(delivery):
        return _transmit_one(conn, message, delivery, transport)


def _transmit_one(conn, message: EmailMultiAlternatives, delivery: Delivery, transport: str):
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
                # The SMTP connection is unusable after a mid-send failure: it
                # is dropped and the backend opens a new one for its next
                # message (ours keeps that one open: smtp.EmailBackend).
                getattr(conn, "drop_connection", conn.close)()
        else:
            outcome = classify_sent_message(message, delivery.recipient.email)
        span.set_attribute("notifier.outcome", outcome.status)
    observe_send(transport=transport, outcome=outcome.status, seconds=time.monotonic() - started)
    logger.info("Handed to %s: %s %s", transport, outcome.status, outcome.error or "")
    return outcome


Item = tuple[Delivery, EmailMultiAlternatives]


def _transmit_batch(conn, items: list[Item], transport: str) -> list[Outcome]:
    """Hand ``items`` over in one batch request (on the sender thread) and
    classify each message's answer."""
    messages = [message for _delivery, message in items]
    emails = [delivery.recipient.email for delivery, _message in items]
    started = time.monotonic()
    with _tracer.start_as_current_span(
        "notifier.transport.send_batch",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "notifier.transport": transport,
            "notifier.messages": len(items),
            "notifier.deliveries": [str(delivery.uuid) for delivery, _message in items],
        },
    ) as span:
        try:
            errors = conn.send_batch(messages)
        except Exception as exc:
            outcomes = classify_batch(messages, emails, errors=None, exc=exc)
        else:
            outcomes = classify_batch(messages, emails, errors=errors)
        span.set_attribute("notifier.outcomes", [outcome.status for outcome in outcomes])
    statuses = [outcome.status for outcome in outcomes]
    observe_sends(transport=transport, outcomes=statuses, seconds=time.monotonic() - started)
    if logger.isEnabledFor(logging.INFO):  # one line per message, naming its row
        for (delivery, _message), outcome in zip(items, outcomes, strict=True):
            with row_log_context(delivery), log_context(request_messages=len(items)):
                logger.info("Handed to %s: %s %s", transport, outcome.status, outcome.error or "")
    return outcomes


class Wire:
    """Open connections to one transport (raises if one cannot be opened:
    ``UnknownTransport``, or the transport is down) and the sender threads
    (none for one connection sending one message per request: messages are
    then sent inline)."""

    def __init__(self, transport: str, *, messages: int):
        self.transport = transport
        first = transport_connection(transport)
        self.batch_size = transport_batch_size(transport, first)
        # A batch transport keeps one request in flight: the in-doubt bound.
        threads = 1 if self.batch_size > 1 else max(1, settings.NOTIFIER_SEND_THREADS)
        # Messages handed over and not yet answered, at most: one request on
        # a batch transport, else NOTIFIER_SEND_AHEAD queued for the threads.
        self.ahead = self.batch_size if self.batch_size > 1 else send_ahead()
        self.connections = [first]
        self.connections += [
            transport_connection(transport) for _ in range(min(threads, messages) - 1)
        ]
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
            if len(self.connections) > 1 or self.batch_size > 1
            else None
        )

    def request_size(self) -> int:
        """How many messages the next hand-over takes: a batch request's
        ``batch_size``; else half of ``ahead`` (at least one), so the journal
        marks several in one round trip while those handed over before are
        still leaving."""
        if self.batch_size > 1:
            return self.batch_size
        return max(1, (self.ahead + 1) // 2)

    def has_room(self, messages: int) -> bool:
        """Whether ``messages`` (one hand-over) may be handed over now: on a
        batch transport when no request is in flight, else when no more than
        ``ahead`` would be handed over and not yet answered."""
        if self.batch_size > 1:
            return not self.in_flight
        return not self.in_flight or self.in_flight + messages <= self.ahead

    def send(self, items: list[Item]) -> None:
        """Hand ``items`` over (``has_room`` must say so): one request on a
        batch transport (at most ``batch_size``), else one request each, queued
        for the first free connection."""
        if self.batch_size > 1:
            self._send_request(items)
        else:
            for item in items:
                self._send_request([item])

    def _send_request(self, items: list[Item]) -> None:
        self.in_flight += len(items)
        context = contextvars.copy_context()  # the sender thread logs with it
        free, answers, transport = self.free, self.answers, self.transport

        def transmit() -> None:
            # As many threads as connections: one is free for each request
            # that starts.
            conn = free.get()
            try:
                if self.batch_size > 1:
                    outcomes = context.run(_transmit_batch, conn, items, transport)
                else:
                    ((delivery, message),) = items
                    outcomes = [context.run(_transmit, conn, message, delivery, transport)]
            except BaseException as exc:  # never leave the batch waiting
                outcomes = [Outcome(UNKNOWN, error=f"Sender thread failed: {exc!r}") for _ in items]
            for (delivery, _message), outcome in zip(items, outcomes, strict=True):
                answers.put((delivery, outcome))
            free.put(conn)

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
