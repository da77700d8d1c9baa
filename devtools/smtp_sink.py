"""A local SMTP sink (aiosmtpd) that keeps every message it accepts (and,
given a file, appends one JSON line per message to it: its Message-ID and
recipients, for a count that outlives the process).

It advertises ``PIPELINING`` as real servers do (aiosmtpd reads commands in
order from its stream, so pipelined commands are answered in order); tests
can turn that off, refuse a sender, a recipient or a message, or drop the
connection once a message is in (``SinkHandler``'s attributes).
"""

import json
import threading
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class SinkHandler:
    def __init__(self, record_path: str | None = None):
        self.record_path = record_path
        self.lock = threading.Lock()
        self.messages = []
        self.reset()

    def reset(self):
        with self.lock:
            self.messages.clear()
            # Advertise ESMTP command pipelining (RFC 2920) in the EHLO answer.
            self.pipelining = True
            # Address (lower case) -> (code, text) its RCPT TO is answered with.
            self.reject: dict[str, tuple[int, str]] = {}
            # (code, text) every MAIL FROM is answered with (None: accepted).
            self.refuse_sender: tuple[int, str] | None = None
            # (code, text) every message is answered with after its data
            # (None: accepted), and nothing is kept.
            self.refuse_data: tuple[int, str] | None = None
            # Keep each message, then close the connection without answering:
            # the client cannot know the message was accepted. True: every
            # message; a number: that many of the next messages.
            self.drop_after_data: bool | int = False
            # EHLO greetings answered: one per connection a client opened.
            self.greetings = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        with self.lock:
            self.greetings += 1
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if self.refuse_sender:
            return f"{self.refuse_sender[0]} {self.refuse_sender[1]}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        code = self.reject.get(address.lower())
        if code:
            return f"{code[0]} {code[1]}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.refuse_data:
            return f"{self.refuse_data[0]} {self.refuse_data[1]}"
        message = message_from_bytes(
            envelope.original_content or envelope.content, policy=policy.default
        )
        with self.lock:
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "message": message,
                }
            )
            if self.record_path:
                line = {"message_id": message["Message-ID"], "rcpt_tos": list(envelope.rcpt_tos)}
                with open(self.record_path, "a") as record:
                    record.write(json.dumps(line) + "\n")
        if self.drop_after_data:
            if self.drop_after_data is not True:
                self.drop_after_data -= 1
            server.transport.close()
        return "250 Message accepted for delivery"


def start_sink(
    host: str = "127.0.0.1", port: int = 0, record_path: str | None = None
) -> tuple[Controller, SinkHandler]:
    handler = SinkHandler(record_path)
    controller = Controller(handler, hostname=host, port=port or _free_port(host))
    controller.start()
    return controller, handler


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["SMTP", "SinkHandler", "start_sink"]
