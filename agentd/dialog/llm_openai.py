"""An OpenAI-compatible chat server (llama.cpp server, vLLM, Ollama) as an `LlmBackend`.

POST `{base_url}/chat/completions` with `stream: true`; the reply arrives as server-sent
events whose `delta.content` pieces are JSON text. The schema goes in `response_format`
(`{"type": "json_schema", ...}`); a server that refuses that gets llama.cpp server's
top-level `json_schema` field instead, and the working form is remembered. Every failure
(refused connection, timeout, HTTP error, broken stream) is an `LlmError` with a one-line
reason; the agent says so and follows the policy's failure rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx

from agentd.dialog.jsonstream import SayStream
from agentd.dialog.schema import LlmError
from agentd.dialog.types import Cancel, ChatMessage, GenerationStats, JsonDict

SchemaMode = Literal["response_format", "json_schema"]
_MAX_STREAM_BYTES = 1 << 20  # a reply is a few hundred bytes; stop a runaway stream
_MAX_ERROR_CHARS = 200


class OpenAIBackend:
    """Streams schema-constrained chat completions from an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        temperature: float = 0.0,
        seed: int | None = 42,
        schema_mode: SchemaMode | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.seed = seed
        self.schema_mode: SchemaMode | None = schema_mode  # None: try response_format first
        self.last_stats: GenerationStats | None = None
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
            trust_env=False,  # an on-prem server: never route through a proxy from the env
        )

    def prefill(self, messages: list[ChatMessage]) -> None:
        """No-op: servers cache prompt prefixes themselves (llama.cpp `cache_prompt`)."""

    def close(self) -> None:
        self._client.close()

    def request_body(
        self, messages: list[ChatMessage], schema: JsonDict, max_tokens: int, mode: SchemaMode
    ) -> JsonDict:
        body: JsonDict = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "cache_prompt": True,  # llama.cpp server: keep the prefix in its KV cache
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if mode == "response_format":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "agent_turn", "strict": True, "schema": schema},
            }
        else:
            body["json_schema"] = schema
        return body

    def generate(
        self,
        messages: list[ChatMessage],
        schema: JsonDict,
        *,
        max_tokens: int = 256,
        on_say: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> tuple[str, GenerationStats]:
        """The server's JSON reply; `on_say` gets the say text as it streams. A cancelled
        generation closes the stream and returns the text so far."""
        started = time.perf_counter()
        modes: list[SchemaMode] = (
            [self.schema_mode] if self.schema_mode else ["response_format", "json_schema"]
        )
        for i, mode in enumerate(modes):
            body = self.request_body(messages, schema, max_tokens, mode)
            try:
                result = self._stream(body, started, on_say, cancel)
            except _SchemaRefused as refused:
                if i + 1 < len(modes):
                    continue
                raise LlmError(f"LLM server refused the schema: {refused}") from None
            self.schema_mode = mode
            self.last_stats = result[1]
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream(
        self,
        body: JsonDict,
        started: float,
        on_say: Callable[[str], None] | None,
        cancel: Cancel | None,
    ) -> tuple[str, GenerationStats]:
        url = f"{self.base_url}/chat/completions"
        stream = SayStream()
        text: list[str] = []
        usage: JsonDict = {}
        first_at: float | None = None
        pieces = 0
        try:
            with self._client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    detail = _short(response.read().decode("utf-8", errors="replace"))
                    if response.status_code in (400, 422) and _mentions_schema(detail):
                        raise _SchemaRefused(f"HTTP {response.status_code}: {detail}")
                    raise LlmError(f"LLM server answered HTTP {response.status_code}: {detail}")
                for event in _events(response.iter_lines(), started, self.timeout_s):
                    if cancel is not None and cancel.cancelled:
                        break
                    if "error" in event:
                        raise LlmError(f"LLM server error: {_short(json.dumps(event['error']))}")
                    if isinstance(event.get("usage"), dict):
                        usage = event["usage"]
                    if isinstance(event.get("timings"), dict):
                        usage = {**usage, "timings": event["timings"]}
                    piece = _delta_content(event)
                    if not piece:
                        continue
                    if first_at is None:
                        first_at = time.perf_counter()
                    pieces += 1
                    text.append(piece)
                    spoken = stream.feed(piece)
                    if spoken and on_say is not None:
                        on_say(spoken)
        except httpx.TimeoutException:
            raise LlmError(f"LLM server at {self.base_url} timed out") from None
        except httpx.HTTPError as exc:
            reason = _short(str(exc))
            raise LlmError(f"LLM server at {self.base_url} unreachable: {reason}") from None
        reply = "".join(text)
        cancelled = cancel is not None and cancel.cancelled
        if not reply and not cancelled:
            raise LlmError("LLM server sent an empty reply")
        now = time.perf_counter()
        stats = GenerationStats(
            prompt_tokens=_int(
                usage.get("prompt_tokens"),
                _int(_get(usage, "timings", "prompt_n")) + _int(_get(usage, "timings", "cache_n")),
            ),
            cached_tokens=_int(
                _get(usage, "prompt_tokens_details", "cached_tokens"),
                _int(_get(usage, "timings", "cache_n")),
            ),
            completion_tokens=_int(usage.get("completion_tokens"), pieces),
            first_token_ms=((first_at or now) - started) * 1000.0,
            total_ms=(now - started) * 1000.0,
        )
        return reply, stats


class _SchemaRefused(Exception):
    """The server rejected the way the schema was sent (try the other field)."""


def _events(lines: Iterator[str], started: float, timeout_s: float) -> Iterator[JsonDict]:
    """JSON payloads of an SSE stream, bounded in bytes and total time."""
    received = 0
    data: list[str] = []
    for line in lines:
        received += len(line) + 1
        if received > _MAX_STREAM_BYTES:
            raise LlmError("LLM server stream is too long")
        if time.perf_counter() - started > timeout_s:
            raise LlmError(f"LLM reply took longer than {timeout_s:g} s")
        if line.startswith(":"):
            continue  # SSE comment / keep-alive
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:
            continue  # other SSE fields (event:, id:) carry nothing we need
        payload = "\n".join(data)
        data = []
        if payload.strip() == "[DONE]":
            return
        yield _decode_event(payload)
    if data and "".join(data).strip() != "[DONE]":
        yield _decode_event("\n".join(data))


def _decode_event(payload: str) -> JsonDict:
    try:
        event = json.loads(payload)
    except ValueError:
        raise LlmError(f"LLM server sent a malformed event: {_short(payload)}") from None
    if not isinstance(event, dict):
        raise LlmError(f"LLM server sent a malformed event: {_short(payload)}")
    return event


def _delta_content(event: JsonDict) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or choices[0].get("message") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _mentions_schema(detail: str) -> bool:
    lowered = detail.lower()
    return any(word in lowered for word in ("response_format", "json_schema", "schema"))
