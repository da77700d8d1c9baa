"""A local SMTP sink (aiosmtpd) that keeps every message it accepts (and,
given a file, appends one JSON line per message to it: its Message-ID and
recipients, for a count that outlives the process)."""

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
            if self.record_path:
                line = {"message_id": message["Message-ID"], "rcpt_tos": list(envelope.rcpt_tos)}
                with open(self.record_path, "a") as record:
                    record.write(json.dumps(line) + "\n")
        return "250 Message accepted for delivery"

    def reset(self):
        with self.lock:
            self.messages.clear()
            self.reject.clear()


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
