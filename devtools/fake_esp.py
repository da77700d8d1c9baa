"""A local fake ESP speaking the Postmark send API, for development and tests.

Anymail's Postmark backend talks to it unchanged: point ``POSTMARK_API_URL``
at ``http://127.0.0.1:<port>/``. It implements

* ``POST /email`` and ``POST /email/batch`` with Postmark's per-recipient
  results (``ErrorCode`` 0 = accepted, 406 = inactive recipient, 300 =
  invalid address), authenticated by ``X-Postmark-Server-Token``;
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
* inspection: ``GET /_fake/messages`` (everything accepted),
  ``DELETE /_fake/messages`` (forget messages and faults), ``GET /_fake/stats``.

Accepted messages can also be appended to a JSON-lines file (``record_path``)
so another process can count them.
"""

import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

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
        to = payload.get("To", "")
        addresses = [a.strip().lower() for a in _addr_specs(to)]
        with self.lock:
            rejected = [a for a in addresses if a in self.faults["reject"]]
            invalid = [a for a in addresses if a in self.faults["invalid"]]
        if invalid:
            return {"ErrorCode": 300, "Message": f"Invalid 'To' address: '{invalid[0]}'."}
        if rejected and len(rejected) == len(addresses):
            return {
                "ErrorCode": 406,
                "Message": (
                    "You tried to send to a recipient that has been marked as inactive.\n"
                    f"Found inactive addresses: {', '.join(rejected)}.\n"
                    "Inactive recipients are ones that have generated a hard bounce or a spam "
                    "complaint. "
                ),
            }
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
        with self.lock:
            self.messages.append(record)
            if self.record_path:
                with open(self.record_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
        return {
            "To": to,
            "SubmittedAt": record["ReceivedAt"],
            "MessageID": message_id,
            "ErrorCode": 0,
            "Message": "OK",
        }

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

    def do_GET(self):
        state = self.server.state
        if self.path.startswith("/messages/outbound"):
            if state.token and self.headers.get("X-Postmark-Server-Token") != state.token:
                self._json(401, {"ErrorCode": 10, "Message": "Bad or missing server token."})
                return
            status, body = state.search(parse_qs(urlsplit(self.path).query))
            self._json(status, body)
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
            result = [state.accept(item) for item in payload or []]
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
