"""OpenAIBackend against a fake loopback server that streams SSE chunks (no internet)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentd.dialog.llm_openai import OpenAIBackend
from agentd.dialog.schema import LlmError, parse_reply, turn_schema
from agentd.dialog.types import Cancel, ChatMessage

TOOLS = {"find_slots": {"type": "object", "properties": {"day": {"type": "string"}}}}
TARGETS = ["front_desk"]
SCHEMA = turn_schema(TOOLS, TARGETS)
MESSAGES = [ChatMessage("system", "You are Ava."), ChatMessage("user", "Hi")]
REPLY = '{"say": "Sure \\"Bob\\", caf\\u00e9 at 9\\n.", "action": {"type": "none"}}'
# adversarial token splits: inside an escape, inside a \\u escape, between key and value
PIECES = [
    '{"sa', 'y": "Su', 're \\', '"Bob\\"', ", caf\\u0", "0e9 at 9\\", 'n."',
    ', "action": {"type": "none"}}',
]


def sse(event: Any) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def chunk(content: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


@dataclass
class FakeServer:
    """Answers each POST with `behaviour(handler, body)`; records every request body."""

    behaviour: Callable[[BaseHTTPRequestHandler, dict], None]
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)


def stream_pieces(pieces: list[str], usage: dict | None = None, delay_s: float = 0.0):
    def behaviour(handler: BaseHTTPRequestHandler, body: dict) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        handler.wfile.write(b": keep-alive\n\n")
        handler.wfile.write(sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
        for piece in pieces:
            handler.wfile.write(sse(chunk(piece)))
            handler.wfile.flush()
            if delay_s:
                time.sleep(delay_s)
        if usage is not None:
            handler.wfile.write(sse({"choices": [], "usage": usage}))
        handler.wfile.write(b"data: [DONE]\n\n")

    return behaviour


def status(code: int, text: str) -> Callable[[BaseHTTPRequestHandler, dict], None]:
    def behaviour(handler: BaseHTTPRequestHandler, body: dict) -> None:
        data = text.encode()
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return behaviour


@pytest.fixture()
def server() -> Iterator[tuple[FakeServer, str]]:
    fake = FakeServer(behaviour=stream_pieces(PIECES))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            fake.requests.append(body)
            fake.headers.append(dict(self.headers))
            assert self.path == "/v1/chat/completions"
            try:
                fake.behaviour(self, body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def backend(url: str, **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("timeout_s", 3.0)
    return OpenAIBackend(url, "qwen2.5-1.5b", **kwargs)


def test_streams_say_across_adversarial_splits(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    fake.behaviour = stream_pieces(
        PIECES,
        usage={
            "prompt_tokens": 40,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 32},
        },
    )
    spoken: list[str] = []
    llm = backend(url, api_key="sk-test")
    text, stats = llm.generate(MESSAGES, SCHEMA, max_tokens=99, on_say=spoken.append)
    assert text == REPLY
    assert "".join(spoken) == 'Sure "Bob", café at 9\n.'
    assert len(spoken) >= 4
    assert parse_reply(text, TOOLS, TARGETS).say == "".join(spoken)
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens) == (40, 32, 20)
    assert 0 < stats.first_token_ms <= stats.total_ms
    body = fake.requests[0]
    assert body["stream"] is True and body["max_tokens"] == 99 and body["temperature"] == 0.0
    assert body["messages"] == [
        {"role": "system", "content": "You are Ava."},
        {"role": "user", "content": "Hi"},
    ]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert fake.headers[0]["Authorization"] == "Bearer sk-test"
    llm.close()


def test_llama_server_timings_give_cached_tokens(server: tuple[FakeServer, str]) -> None:
    fake, url = server

    def behaviour(handler: BaseHTTPRequestHandler, body: dict) -> None:
        handler.send_response(200)
        handler.end_headers()
        last = {**chunk(REPLY), "timings": {"prompt_n": 7, "cache_n": 50}}
        handler.wfile.write(sse(last) + b"data: [DONE]\n\n")

    fake.behaviour = behaviour
    _, stats = backend(url).generate(MESSAGES, SCHEMA)
    assert stats.cached_tokens == 50


def test_falls_back_to_llama_server_json_schema_field(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    good = stream_pieces([REPLY])

    def behaviour(handler: BaseHTTPRequestHandler, body: dict) -> None:
        if "response_format" in body:
            refusal = '{"error": "response_format type json_schema not supported"}'
            status(400, refusal)(handler, body)
        else:
            good(handler, body)

    fake.behaviour = behaviour
    llm = backend(url)
    assert llm.generate(MESSAGES, SCHEMA)[0] == REPLY
    assert fake.requests[1]["json_schema"] == SCHEMA
    llm.generate(MESSAGES, SCHEMA)  # the working form is remembered: one request
    assert len(fake.requests) == 3 and "response_format" not in fake.requests[2]


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (status(500, "internal error: model crashed"), "HTTP 500: internal error"),
        (status(401, "bad key"), "HTTP 401"),
        (status(400, "schema is invalid"), "refused the schema"),
        (stream_pieces([]), "empty reply"),
    ],
)
def test_server_failures_are_clear_errors(
    server: tuple[FakeServer, str], behaviour: Callable, message: str
) -> None:
    fake, url = server
    fake.behaviour = behaviour
    with pytest.raises(LlmError, match=message):
        backend(url).generate(MESSAGES, SCHEMA)


def test_malformed_event_and_error_event(server: tuple[FakeServer, str]) -> None:
    fake, url = server

    def garbage(handler: BaseHTTPRequestHandler, body: dict) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(sse(chunk('{"say": "x')) + b"data: {not json\n\n")

    fake.behaviour = garbage
    with pytest.raises(LlmError, match="malformed event"):
        backend(url).generate(MESSAGES, SCHEMA)

    def error_event(handler: BaseHTTPRequestHandler, body: dict) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(sse({"error": {"message": "context too long"}}))

    fake.behaviour = error_event
    with pytest.raises(LlmError, match="context too long"):
        backend(url).generate(MESSAGES, SCHEMA)


def test_stalled_server_times_out(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    fake.behaviour = stream_pieces(['{"say": "a', "b", "c"], delay_s=1.0)
    started = time.perf_counter()
    with pytest.raises(LlmError, match="timed out|longer than"):
        backend(url, timeout_s=0.3).generate(MESSAGES, SCHEMA)
    assert time.perf_counter() - started < 10  # bounded, not hanging


def test_refused_connection_is_a_clear_error() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LlmError, match="unreachable"):
        backend(f"http://127.0.0.1:{port}/v1", timeout_s=1.0).generate(MESSAGES, SCHEMA)


def test_cancel_closes_the_stream_and_returns_text_so_far(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    fake.behaviour = stream_pieces(PIECES, delay_s=0.05)
    cancel = Cancel()

    def on_say(text: str) -> None:
        cancel.cancel()

    text, _ = backend(url).generate(MESSAGES, SCHEMA, on_say=on_say, cancel=cancel)
    assert text == "".join(PIECES[:2])
