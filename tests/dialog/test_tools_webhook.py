"""Webhook tools and the hand-off webhook against a loopback HTTP server in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.webhook import WebhookTool, post_handoff, trim
from agentd.dialog.types import HandoffRecord, ToolContext, ToolError, TranscriptLine

CONTEXT = ToolContext(
    caller_id="+44 7700 900123", call_ref="call-42", now_iso="2025-03-14T10:00:00+00:00", facts={}
)


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeServer:
    """Answers with queued replies (the last one repeats) and records every request."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply()]
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    server.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                    reply = server.replies.pop(0) if len(server.replies) > 1 else server.replies[0]
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = (
                    reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                )
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def tool(spec: dict[str, Any], **kw: Any) -> WebhookTool:
    kw.setdefault("sleep", lambda s: None)
    return WebhookTool("send_confirmation", spec, description="Send a text.", **kw)


def test_success_with_templating_and_encoding(server: FakeServer) -> None:
    spec = {
        "method": "POST",
        "url": server.url + "/api/appointments/{appointment_id}/confirm?who={caller_id}",
        "headers": {"X-Call": "{call_ref}"},
        "body": {
            "appointment_id": "{appointment_id}",
            "caller": "{caller_id}",
            "note": "id {appointment_id}!",
        },
    }
    server.replies = [Reply(200, {"sent": True, "id": "m-1"})]
    result = tool(spec).run({"appointment_id": 17, "caller_id": "forged"}, CONTEXT)
    assert result == {"status": 200, "response": {"sent": True, "id": "m-1"}}
    seen = server.seen[0]
    assert seen.method == "POST"
    assert seen.path == "/api/appointments/17/confirm?who=%2B44%207700%20900123"
    assert seen.headers["X-Call"] == "call-42"
    # a whole-placeholder keeps its type; caller_id comes from the call, not the arguments
    assert json.loads(seen.body) == {
        "appointment_id": 17,
        "caller": "+44 7700 900123",
        "note": "id 17!",
    }


def test_url_values_cannot_escape_the_path(server: FakeServer) -> None:
    spec = {"method": "GET", "url": server.url + "/orders/{order}"}
    tool(spec).run({"order": "../admin?x=1&y=2"}, CONTEXT)
    assert server.seen[0].path == "/orders/..%2Fadmin%3Fx%3D1%26y%3D2"
    with pytest.raises(ToolRefused):
        tool(spec).run({"order": ".."}, CONTEXT)
    assert len(server.seen) == 1


def test_default_body_is_the_arguments(server: FakeServer) -> None:
    tool({"url": server.url + "/x"}).run({"a": 1, "b": "two"}, CONTEXT)
    assert json.loads(server.seen[0].body) == {"a": 1, "b": "two"}
    assert server.seen[0].headers["Content-Type"] == "application/json"


def test_secret_header_from_env_and_file(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN_TEST", "s3cr{et}")
    (tmp_path / "key.txt").write_text("file-key\n", encoding="utf-8")
    spec = {
        "url": server.url + "/x",
        "headers": {"Authorization": "Bearer ${env:CRM_TOKEN_TEST}", "X-Key": "${file:key.txt}"},
    }
    made = tool(spec, base_dir=tmp_path)
    assert "s3cr" not in repr(made.caller.spec)  # secrets never show in reprs
    made.run({}, CONTEXT)
    assert server.seen[0].headers["Authorization"] == "Bearer s3cr{et}"  # braces not templated
    assert server.seen[0].headers["X-Key"] == "file-key"
    monkeypatch.delenv("CRM_TOKEN_TEST")
    with pytest.raises(ToolConfigError, match="CRM_TOKEN_TEST"):
        tool(spec, base_dir=tmp_path)


def test_timeout(server: FakeServer) -> None:
    server.replies = [Reply(200, {"late": True}, delay_s=1.5)]
    spec = {"url": server.url + "/slow", "timeout_s": 0.3, "retries": 2}
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out"):
        tool(spec).run({}, CONTEXT)
    assert time.monotonic() - started < 1.4  # not retried: the server may have acted
    assert len(server.seen) == 1


def test_500_then_retry_succeeds(server: FakeServer) -> None:
    server.replies = [Reply(500, {"error": "boom"}), Reply(200, {"ok": 1})]
    pauses: list[float] = []
    result = tool({"url": server.url + "/x", "retries": 1}, sleep=pauses.append).run({}, CONTEXT)
    assert result["response"] == {"ok": 1}
    assert len(server.seen) == 2 and pauses == [0.25]


def test_500_twice_is_a_tool_error(server: FakeServer) -> None:
    server.replies = [Reply(503, {"error": "down"})]
    with pytest.raises(ToolError, match="HTTP 503") as caught:
        tool({"url": server.url + "/x", "retries": 1}).run({}, CONTEXT)
    assert not isinstance(caught.value, ToolRefused)
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    ("status", "kind"), [(404, ToolError), (401, ToolError), (422, ToolRefused)]
)
def test_4xx_is_not_retried(server: FakeServer, status: int, kind: type[Exception]) -> None:
    server.replies = [Reply(status, {"error": "no such appointment"})]
    with pytest.raises(kind, match=f"HTTP {status}: no such appointment"):
        tool({"url": server.url + "/x", "retries": 3}).run({}, CONTEXT)
    assert len(server.seen) == 1


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    pauses: list[float] = []
    spec = {"url": f"http://127.0.0.1:{port}/x", "timeout_s": 1, "retries": 2}
    with pytest.raises(ToolError, match="could not connect"):
        tool(spec, sleep=pauses.append).run({}, CONTEXT)
    assert pauses == [0.25, 0.5]  # retried with doubling backoff


def test_text_and_large_responses_are_trimmed(server: FakeServer) -> None:
    server.replies = [Reply(200, b"plain words " * 100)]
    result = tool({"method": "GET", "url": server.url + "/t"}).run({}, CONTEXT)
    assert result["response"].startswith("plain words") and len(result["response"]) <= 303
    server.replies = [
        Reply(200, {"items": list(range(100)), "deep": {"a": {"b": {"c": {"d": 1}}}}})
    ]
    result = tool({"method": "GET", "url": server.url + "/t"}).run({}, CONTEXT)
    assert result["response"]["items"] == list(range(10))
    assert result["response"]["deep"]["a"]["b"]["c"] == "..."
    assert trim("x" * 1000).endswith("...")


def test_missing_argument_is_refused_before_sending(server: FakeServer) -> None:
    spec = {"url": server.url + "/a/{appointment_id}"}
    with pytest.raises(ToolRefused, match="appointment_id"):
        tool(spec).run({}, CONTEXT)
    assert server.seen == []


def test_bad_specs_are_config_errors() -> None:
    with pytest.raises(ToolConfigError):
        tool({"url": "ftp://example/x"})
    with pytest.raises(ToolConfigError):
        tool({"url": "http://127.0.0.1:9/x", "method": "GET", "body": {"a": 1}})
    with pytest.raises(ToolConfigError):
        tool({"url": "http://127.0.0.1:9/x", "timeout_s": 0})


def test_post_handoff(server: FakeServer) -> None:
    record = HandoffRecord(
        call_ref="call-42",
        caller_id="07700900123",
        summary="Wants to reschedule.",
        reason="caller_asks_for_human",
        transcript=(TranscriptLine("caller", "a person please"),),
        facts={"name": "Ann"},
        tool_calls=(),
    )
    server.replies = [Reply(502), Reply(200, {"ticket": 9})]
    result = post_handoff(server.url + "/api/handoff", record, sleep=lambda s: None)
    assert result["response"] == {"ticket": 9}
    sent = json.loads(server.seen[-1].body)
    assert sent["call_ref"] == "call-42" and sent["transcript"][0]["text"] == "a person please"
    templated = {
        "url": server.url + "/h/{call_ref}",
        "body": {"ref": "{call_ref}", "from": "{caller_id}"},
    }
    post_handoff(templated, record)
    assert server.seen[-1].path == "/h/call-42"
    assert json.loads(server.seen[-1].body) == {"ref": "call-42", "from": "07700900123"}
