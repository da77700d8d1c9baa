"""A local SMTP sink (aiosmtpd) that keeps every message it accepts."""

import threading
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class SinkHandler:
    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []
        self.reject: dict[str, tuple[int, str]] = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        code = self.reject.get(address.lower())
        if code:
            return f"{code[0]} {code[1]}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
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
        return "250 Message accepted for delivery"

    def reset(self):
        with self.lock:
            self.messages.clear()
            self.reject.clear()


def start_sink(host: str = "127.0.0.1", port: int = 0) -> tuple[Controller, SinkHandler]:
    handler = SinkHandler()
    controller = Controller(handler, hostname=host, port=port or _free_port(host))
    controller.start()
    return controller, handler


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["SMTP", "SinkHandler", "start_sink"]
