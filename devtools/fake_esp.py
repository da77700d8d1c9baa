"""A local fake ESP speaking the Postmark send API, for development and tests.

Anymail's Postmark backend talks to it unchanged: point ``POSTMARK_API_URL``
at ``http://127.0.0.1:<port>/``. It implements

* ``POST /email`` and ``POST /email/batch`` with Postmark's per-recipient
  results (``ErrorCode`` 0 = accepted, 406 = inactive recipient, 300 =
  invalid address), authenticated by ``X-Postmark-Server-Token``. A batch
  (1-500 messages, else 422) answers 200 with one result per message, in
  order; a fault (status, drop, hang) hits the request as a whole;
* fault injection, set with ``POST /_fake/faults`` (JSON, merged):
  ``error_rate`` + ``error_status`` (random 5xx), ``script`` (a list of actions
  used by the next requests in order, e.g. ``{"status": 503}``,
  ``{"status": 429, "retry_after": 1}``, ``{"hang_after_accept": 5}``,
  ``{"drop": true}``), ``reject`` and ``invalid`` (address lists),
  ``delay`` (seconds per request), ``hang_after_accept_rate`` + ``hang_seconds``;
* ``GET /messages/outbound`` (Postmark's outbound message search, with
  ``count``, ``offset``, ``recipient`` and ``metadata_<key>`` filters), newest
  first; a message is found only ``index_delay`` seconds after it was
  accepted (Postmark indexes with a delay), and ``search_status`` (e.g. 503)
  makes the search fail as an outage would;
* inspection: ``GET /_fake/inbox`` (an HTML inbox for people, as Mailpit
  shows one: the messages newest first, each with its headers, its HTML
  rendered in a sandboxed frame and its text part), ``GET /_fake/messages``
  (everything accepted, as JSON for tests and scripts),
  ``DELETE /_fake/messages`` (forget messages and faults), ``GET /_fake/stats``.

Accepted messages can also be appended to a JSON-lines file (``record_path``)
so another process can count them; a fake ESP started again with the same
file finds them in its message search, as a real ESP does after an outage.
"""

import json
import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BATCH = 500  # messages per /email/batch request, as Postmark

DEFAULT_FAULTS = {
    "error_rate": 0.0,
    "error_status": 503,
    "script": [],
    "reject": [],
    "invalid": [],
    "delay": 0.0,
    "hang_after_accept_rate": 0.0,
    "hang_seconds": 30.0,
    "index_delay": 0.0,
    "search_status": 0,
}


class FakeESPState:
    def __init__(self, token: str | None, record_path: str | None = None, light: bool = False):
        self.token = token
        self.record_path = record_path
        # Light mode keeps no bodies (for benchmarks of hundreds of thousands).
        self.light = light
        self.lock = threading.Lock()
        self.messages: list[dict] = []
        self.requests = 0
        self.errors_injected = 0
        self.faults = json.loads(json.dumps(DEFAULT_FAULTS))
        self.messages.extend(self._recorded())

    def _recorded(self) -> list[dict]:
        """The messages an earlier run of this ESP recorded: a real ESP still
        finds what it accepted before an outage (its message search)."""
        if not self.record_path or not os.path.exists(self.record_path):
            return []
        messages = []
        with open(self.record_path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    messages.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short when the process was killed
        return messages

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.requests = 0
            self.errors_injected = 0
            self.faults = json.loads(json.dumps(DEFAULT_FAULTS))

    def next_action(self) -> dict:
        with self.lock:
            self.requests += 1
            if self.faults["script"]:
                return self.faults["script"].pop(0)
            if self.faults["error_rate"] and random.random() < self.faults["error_rate"]:
                return {"status": self.faults["error_status"]}
            if (
                self.faults["hang_after_accept_rate"]
                and random.random() < self.faults["hang_after_accept_rate"]
            ):
                return {"hang_after_accept": self.faults["hang_seconds"]}
            return {}

    def accept(self, payload: dict) -> dict:
        """Record one Postmark message payload; return its Postmark result."""
        return self.accept_batch([payload])[0]

    def accept_batch(self, payloads: list) -> list[dict]:
        """Record each message of ``payloads`` it accepts (in one write);
        return one Postmark result per message, in order, as Postmark's
        ``/email/batch`` does: a refused message does not stop the others."""
        results, records = [], []
        for payload in payloads:
            result, record = self._result(payload)
            results.append(result)
            if record is not None:
                records.append(record)
        with self.lock:
            self.messages.extend(records)
            if self.record_path and records:
                with open(self.record_path, "a", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(record) + "\n" for record in records))
        return results

    def _result(self, payload) -> tuple[dict, dict | None]:
        """Postmark's result for one message, and the record to keep if accepted."""
        if not isinstance(payload, dict) or not payload.get("To"):
            return {"ErrorCode": 300, "Message": "Invalid 'To' address: ''."}, None
        to = payload["To"]
        addresses = [a.strip().lower() for a in _addr_specs(to)]
        with self.lock:
            rejected = [a for a in addresses if a in self.faults["reject"]]
            invalid = [a for a in addresses if a in self.faults["invalid"]]
        if invalid:
            return {"ErrorCode": 300, "Message": f"Invalid 'To' address: '{invalid[0]}'."}, None
        if rejected and len(rejected) == len(addresses):
            return {
                "ErrorCode": 406,
                "Message": (
                    "You tried to send to a recipient that has been marked as inactive.\n"
                    f"Found inactive addresses: {', '.join(rejected)}.\n"
                    "Inactive recipients are ones that have generated a hard bounce or a spam "
                    "complaint. "
                ),
            }, None
        message_id = str(uuid.uuid4())
        headers = {h.get("Name"): h.get("Value") for h in payload.get("Headers") or []}
        record = {
            "MessageID": message_id,
            "To": to,
            "Metadata": payload.get("Metadata") or {},
            "ReceivedAt": datetime.now(UTC).isoformat(),
        }
        if not self.light:
            record.update(
                From=payload.get("From"),
                Subject=payload.get("Subject"),
                HtmlBody=payload.get("HtmlBody"),
                TextBody=payload.get("TextBody"),
                Headers=headers,
            )
        result = {
            "To": to,
            "SubmittedAt": record["ReceivedAt"],
            "MessageID": message_id,
            "ErrorCode": 0,
            "Message": "OK",
        }
        return result, record

    def search(self, query: dict[str, list[str]]) -> tuple[int, dict]:
        """Postmark's ``GET /messages/outbound``: (status, body)."""
        with self.lock:
            if self.faults["search_status"]:
                self.errors_injected += 1
                return self.faults["search_status"], {"ErrorCode": 100, "Message": "Unavailable"}
            messages = list(self.messages)
            delay = self.faults["index_delay"]
        try:
            count, offset = int(query["count"][0]), int(query["offset"][0])
        except (KeyError, ValueError):
            return 422, {"ErrorCode": 1100, "Message": "count and offset are required."}
        if not 0 < count <= 500 or offset < 0:
            return 422, {"ErrorCode": 1100, "Message": "count must be 1-500, offset >= 0."}
        now = datetime.now(UTC)
        recipient = (query.get("recipient") or [""])[0].lower()
        metadata = {
            key.removeprefix("metadata_"): values[0]
            for key, values in query.items()
            if key.startswith("metadata_")
        }
        found = [
            m
            for m in reversed(messages)
            if (now - datetime.fromisoformat(m["ReceivedAt"])).total_seconds() >= delay
            and (not recipient or recipient in [a.lower() for a in _addr_specs(m["To"])])
            and all(m["Metadata"].get(k) == v for k, v in metadata.items())
        ]
        page = [
            {
                "MessageID": m["MessageID"],
                "To": [{"Email": a, "Name": None} for a in _addr_specs(m["To"])],
                "Recipients": _addr_specs(m["To"]),
                "ReceivedAt": m["ReceivedAt"],
                "Status": "Sent",
                "Metadata": m["Metadata"],
            }
            for m in found[offset : offset + count]
        ]
        return 200, {"TotalCount": len(found), "Messages": page}


def _addr_specs(field: str) -> list[str]:
    from email.utils import getaddresses

    return [addr for _name, addr in getaddresses([field or ""]) if addr]


# The inbox page: nothing runs on it (no script at all), the message is shown
# in a sandboxed frame, and the page refreshes itself every few seconds.
_INBOX_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_INBOX_STYLE = """
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1f2933; display: flex;
  height: 100vh; }
nav { width: 380px; border-right: 1px solid #d9dde3; overflow-y: auto; flex: none; }
nav header { padding: 12px 14px; background: #264b5d; color: #fff; }
nav header h1 { margin: 0; font-size: 16px; }
nav header p { margin: 2px 0 0; opacity: .8; font-size: 12px; }
nav a { display: block; padding: 10px 14px; border-bottom: 1px solid #eceff3; color: inherit;
  text-decoration: none; }
nav a:hover { background: #f3f6f9; } nav a.current { background: #e3edf5; }
nav .to, nav time { font-size: 12px; color: #5f6b7a; } nav .subject { font-weight: 600; }
main { flex: 1; overflow-y: auto; padding: 16px 20px; }
main h2 { margin: 0 0 10px; font-size: 20px; }
table.headers { border-collapse: collapse; margin-bottom: 12px; width: 100%; }
table.headers th { text-align: left; width: 11em; color: #5f6b7a; font-weight: 500;
  vertical-align: top; padding: 2px 8px 2px 0; }
table.headers td { overflow-wrap: anywhere; padding: 2px 0; }
iframe { width: 100%; height: 62vh; border: 1px solid #d9dde3; background: #fff; }
pre { white-space: pre-wrap; border: 1px solid #d9dde3; padding: 10px; background: #fafbfc; }
.empty { color: #5f6b7a; padding: 24px 14px; }
"""


def inbox_page(messages: list[dict], selected: str | None) -> str:
    """The inbox as HTML: a list of messages (newest first) and the selected
    one (the newest by default) with its headers, HTML and text."""
    newest = list(reversed(messages))
    current = next((m for m in newest if m["MessageID"] == selected), None)
    if current is None and newest:
        current = newest[0]
    items = []
    for message in newest:
        chosen = " current" if message is current else ""
        items.append(
            f'<a class="message{chosen}" href="/_fake/inbox?id={escape(message["MessageID"])}">'
            f'<div class="subject">{escape(message.get("Subject") or "(no subject)")}</div>'
            f'<div class="to">To {escape(message.get("To") or "")}</div>'
            f"<time>{escape(message.get('ReceivedAt', '')[:19].replace('T', ' '))} UTC</time></a>"
        )
    listing = "".join(items) or '<p class="empty">No messages yet.</p>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="refresh" content="5">'
        f"<title>Inbox ({len(messages)}) - fake ESP</title><style>{_INBOX_STYLE}</style></head>"
        '<body><nav aria-label="Messages"><header><h1>Development inbox</h1>'
        f"<p>{len(messages)} message{'s' if len(messages) != 1 else ''} accepted by the fake ESP"
        "</p></header>"
        f"{listing}</nav><main>{_message_view(current)}</main></body></html>"
    )


def _message_view(message: dict | None) -> str:
    if message is None:
        return '<p class="empty">Messages the platform sends show up here.</p>'
    if "HtmlBody" not in message and "TextBody" not in message:
        return '<p class="empty">Started with --light: bodies are not kept.</p>'
    headers = {
        "From": message.get("From"),
        "To": message.get("To"),
        "Subject": message.get("Subject"),
        "Received": message.get("ReceivedAt"),
        **(message.get("Headers") or {}),
        **{f"Metadata {k}": v for k, v in (message.get("Metadata") or {}).items()},
    }
    rows = "".join(
        f'<tr><th scope="row">{escape(str(name))}</th><td>{escape(str(value))}</td></tr>'
        for name, value in headers.items()
        if value
    )
    html = message.get("HtmlBody") or ""
    frame = (
        f'<iframe sandbox="" title="HTML part" srcdoc="{escape(html, quote=True)}"></iframe>'
        if html
        else "<p>No HTML part.</p>"
    )
    text = escape(message.get("TextBody") or "")
    return (
        f"<h2>{escape(message.get('Subject') or '(no subject)')}</h2>"
        f'<table class="headers">{rows}</table>{frame}'
        f"<h3>Text part</h3><pre>{text or '(none)'}</pre>"
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without this, Nagle's algorithm
    # and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: "FakeESPServer"

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def _json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"null")

    def _html(self, status: int, page: str) -> None:
        data = page.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", _INBOX_CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        state = self.server.state
        url = urlsplit(self.path)
        if url.path.startswith("/messages/outbound"):
            if state.token and self.headers.get("X-Postmark-Server-Token") != state.token:
                self._json(401, {"ErrorCode": 10, "Message": "Bad or missing server token."})
                return
            status, body = state.search(parse_qs(url.query))
            self._json(status, body)
        elif url.path.rstrip("/") in ("", "/_fake/inbox"):
            selected = parse_qs(url.query).get("id", [None])[0]
            with state.lock:
                messages = list(state.messages)
            self._html(200, inbox_page(messages, selected))
        elif self.path.startswith("/_fake/messages"):
            with state.lock:
                self._json(200, list(state.messages))
        elif self.path.startswith("/_fake/stats"):
            with state.lock:
                self._json(
                    200,
                    {
                        "messages": len(state.messages),
                        "requests": state.requests,
                        "errors_injected": state.errors_injected,
                    },
                )
        else:
            self._json(404, {"ErrorCode": 404, "Message": "Not found"})

    def do_DELETE(self):
        if self.path.startswith("/_fake/messages"):
            self.server.state.reset()
            self._json(200, {"ok": True})
        else:
            self._json(404, {"ErrorCode": 404, "Message": "Not found"})

    def do_POST(self):
        state = self.server.state
        if self.path.startswith("/_fake/faults"):
            faults = self._body() or {}
            with state.lock:
                state.faults.update(faults)
            self._json(200, state.faults)
            return
        if self.path.rstrip("/") not in ("/email", "/email/batch"):
            self._json(404, {"ErrorCode": 404, "Message": "Not found"})
            return
        if state.token and self.headers.get("X-Postmark-Server-Token") != state.token:
            self._json(401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."})
            return
        try:
            payload = self._body()
        except ValueError:
            self._json(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
            return
        action = state.next_action()
        if state.faults["delay"]:
            time.sleep(state.faults["delay"])
        if action.get("drop"):
            with state.lock:
                state.errors_injected += 1
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if "status" in action:
            with state.lock:
                state.errors_injected += 1
            headers = {}
            if action.get("retry_after") is not None:
                headers["Retry-After"] = str(action["retry_after"])
            self._json(
                action["status"],
                {"ErrorCode": 100, "Message": f"Injected HTTP {action['status']}"},
                headers,
            )
            return
        if self.path.rstrip("/") == "/email/batch":
            # Postmark checks the request as a whole first (422), then
            # answers 200 with one result per message.
            if not isinstance(payload, list) or not 0 < len(payload) <= MAX_BATCH:
                self._json(
                    422,
                    {
                        "ErrorCode": 300,
                        "Message": f"A batch is a list of 1 to {MAX_BATCH} messages.",
                    },
                )
                return
            result = state.accept_batch(payload)
            status = 200
        else:
            result = state.accept(payload or {})
            status = 200 if result["ErrorCode"] == 0 else 422
        if action.get("hang_after_accept"):
            with state.lock:
                state.errors_injected += 1
            time.sleep(float(action["hang_after_accept"]))
            self.close_connection = True
            return
        self._json(status, result)


class FakeESPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, state: FakeESPState, verbose: bool = False):
        super().__init__(address, _Handler)
        self.state = state
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def start_in_thread(
    host: str = "127.0.0.1", port: int = 0, token: str | None = None, record_path: str | None = None
) -> FakeESPServer:
    server = FakeESPServer((host, port), FakeESPState(token, record_path))
    threading.Thread(target=server.serve_forever, name="fake-esp", daemon=True).start()
    return server
