"""A stand-in for the CRM / shop API the examples' webhooks call (http://127.0.0.1:8780).

The examples' tools post to it (a text-message confirmation, a new lead, a return) and so
does the hand-off webhook. It answers every POST with `{"ok": true, ...}` as JSON and reports
each request to `on_request` (with whether it carried the example's bearer token), so a demo
can show what the agent sent. A stand-in accepts what a real CRM would check; loopback only.

    with CrmStandIn(token="...", on_request=print) as crm:   # serves until the block ends
        ...
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_PORT = 8780
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class CrmRequest:
    method: str
    path: str
    body: Any  # the parsed JSON body (None when there is none or it is not JSON)
    token: bool | None  # carried the expected bearer token (None: no Authorization header)


class CrmStandIn:
    """A tiny HTTP server on 127.0.0.1 answering the examples' webhooks."""

    def __init__(self, *, port: int = DEFAULT_PORT, token: str | None = None,
                 on_request: Callable[[CrmRequest], None] | None = None) -> None:
        self.token = token
        self.on_request = on_request
        self.requests: list[CrmRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="crm",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> CrmStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CrmStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, request: CrmRequest) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for `request` (after it was recorded)."""
        if request.method != "POST":
            return 405, {"ok": False, "error": "only POST"}
        parts = request.path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["crm", "appointments"] and parts[3] == "confirm":
            return 200, {"ok": True, "sent": True, "appointment_id": parts[2]}
        return 200, {"ok": True}

    def _record(self, request: CrmRequest) -> None:
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)


def _handler(crm: CrmStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve()

        def do_GET(self) -> None:  # noqa: N802
            self._serve()

        def _serve(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
            raw = self.rfile.read(length) if length > 0 else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            given = self.headers.get("Authorization")
            token = None if given is None else given == f"Bearer {crm.token}"
            request = CrmRequest(self.command, self.path, body, token)
            crm._record(request)
            status, answer = crm.answer(request)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # requests are reported through on_request

    return Handler
