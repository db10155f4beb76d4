"""HTTP webhooks as tools, and the hand-off webhook, on one request path.

The request comes from the policy's `WebhookSpec` (agentd.dialog.policy): `{name}` templates
in the URL (percent-encoded), header values and JSON body strings are filled from the tool's
arguments plus `{caller_id}` / `{call_ref}` (which arguments cannot override); a body string
that is exactly one `{field}` keeps the value's JSON type. Secrets (`${env:NAME}`,
`${file:path}`) were resolved when the policy loaded. With no `body`, POST/PUT/PATCH send the
arguments as the JSON body.

Retries (with doubling backoff) happen on connection failures and HTTP 5xx, never on 4xx or
on a read timeout (the server may have acted). Each attempt is bounded by `timeout_s`
overall (slow drips included), and the response body by MAX_RESPONSE_BYTES.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from agentd.dialog.policy import WebhookSpec
from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.types import HandoffRecord, JsonDict, ToolContext, ToolError

MAX_RESPONSE_BYTES = 64 * 1024
MAX_STRING_CHARS = 300
MAX_LIST_ITEMS = 10
MAX_DICT_KEYS = 20
MAX_DEPTH = 4
MAX_BACKOFF_S = 2.0
_REFUSED_STATUSES = {409, 422}  # the server understood and said no: a business refusal


def webhook_spec(
    settings: WebhookSpec | Mapping[str, Any], base_dir: Path | None = None
) -> WebhookSpec:
    """The policy's webhook model, validating a plain mapping (secrets resolved against
    `base_dir`); ToolConfigError with pydantic's first message when it is not valid."""
    if isinstance(settings, WebhookSpec):
        return settings
    context = {"base_dir": str(base_dir)} if base_dir is not None else {}
    try:
        return WebhookSpec.model_validate(dict(settings), context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ToolConfigError(f"webhook {where}: {first.get('msg')}".replace(" :", ":")) from None


def trim(value: Any, depth: int = 0) -> Any:
    """A response cut down to what an LLM should read back on a phone call."""
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING_CHARS else value[:MAX_STRING_CHARS] + "..."
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        return "..."
    if isinstance(value, dict):
        items = list(value.items())[:MAX_DICT_KEYS]
        return {str(k): trim(v, depth + 1) for k, v in items}
    if isinstance(value, list):
        return [trim(v, depth + 1) for v in value[:MAX_LIST_ITEMS]]
    return value


class WebhookCaller:
    """A validated webhook, ready to send (thread-safe: a client per call)."""

    def __init__(
        self,
        spec: WebhookSpec | Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        backoff_s: float = 0.25,
        verify_tls: bool | str = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = webhook_spec(spec, base_dir)
        self.method = self.spec.method
        self.timeout_s = float(self.spec.timeout_s)
        self.backoff_s = backoff_s
        self.verify_tls = verify_tls
        self._sleep = sleep

    def send(self, values: Mapping[str, Any], default_body: Any = None) -> JsonDict:
        """Send once plus retries; {"status": code, "response": trimmed JSON or text}."""
        for name in self.spec.url.fields:
            # "." or ".." is a path segment that would climb the URL (clients normalise it)
            if str(values.get(name, "")).strip() in (".", ".."):
                raise ToolRefused(f"{name} is not a valid value")
        try:
            url = self.spec.render_url(values)
            headers = self.spec.render_headers(values)
            payload: Any = None
            if self.spec.body is not None:
                payload = self.spec.render_body(values)
            elif self.method in ("POST", "PUT", "PATCH"):
                payload = default_body
            content = None
            if payload is not None:
                content = json.dumps(payload, default=str).encode()
                headers.setdefault("Content-Type", "application/json")
        except ToolError as exc:
            raise ToolRefused(str(exc)) from None  # a missing argument: ask, do not escalate
        failure = "webhook failed"
        attempts = int(self.spec.retries) + 1
        with httpx.Client(
            timeout=httpx.Timeout(self.timeout_s), trust_env=False, verify=self.verify_tls
        ) as client:
            for attempt in range(attempts):
                if attempt:
                    self._sleep(min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)))
                try:
                    status, body, content_type = self._attempt(client, url, headers, content)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    failure = "could not connect"
                    continue
                except httpx.TimeoutException:
                    raise ToolError("timed out") from None
                except httpx.HTTPError:
                    raise ToolError("connection failed") from None
                except Exception:  # noqa: BLE001  bad URL after templating, TLS setup, ...: never crash a call
                    raise ToolError("webhook request could not be made") from None
                if status >= 500:
                    failure = f"HTTP {status}"
                    continue
                decoded = _decode(body, content_type)
                if status >= 400:
                    detail = _detail(decoded)
                    message = f"HTTP {status}" + (f": {detail}" if detail else "")
                    raise (ToolRefused if status in _REFUSED_STATUSES else ToolError)(message)
                return {"status": status, "response": trim(decoded)}
        raise ToolError(failure)

    def _attempt(
        self, client: httpx.Client, url: str, headers: dict[str, str], content: bytes | None
    ) -> tuple[int, bytes, str]:
        deadline = time.monotonic() + self.timeout_s  # whole attempt, slow drips included
        with client.stream(self.method, url, headers=headers, content=content) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_RESPONSE_BYTES:
                    break
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("response too slow")
            return (
                response.status_code,
                b"".join(chunks)[:MAX_RESPONSE_BYTES],
                response.headers.get("content-type", ""),
            )


def _decode(body: bytes, content_type: str) -> Any:
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text.strip()


def _detail(decoded: Any) -> str:
    if isinstance(decoded, dict):
        for key in ("error", "message", "detail"):
            value = decoded.get(key)
            if isinstance(value, str):
                return value[:120]
        return ""
    return decoded[:120] if isinstance(decoded, str) else ""


class WebhookTool:
    """A policy tool backed by an HTTP endpoint."""

    def __init__(
        self,
        name: str,
        spec: WebhookSpec | Mapping[str, Any],
        *,
        description: str = "",
        parameters: JsonDict | None = None,
        confirm: bool = False,
        base_dir: Path | None = None,
        backoff_s: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.description = description or f"Call the {name.replace('_', ' ')} service."
        self.parameters: JsonDict = parameters or {"type": "object", "properties": {}}
        self.confirm = confirm
        self.caller = WebhookCaller(spec, base_dir=base_dir, backoff_s=backoff_s, sleep=sleep)

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        arguments = dict(arguments or {})
        values = {**arguments, "caller_id": context.caller_id or "", "call_ref": context.call_ref}
        return self.caller.send(values, default_body=arguments)


def post_handoff(
    target: WebhookCaller | WebhookSpec | Mapping[str, Any] | str,
    record: HandoffRecord | JsonDict,
    *,
    timeout_s: float = 2.0,
    retries: int = 1,
    base_dir: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JsonDict:
    """Send a hand-off record: its JSON is the body unless the webhook has a body template
    (which may use {call_ref} and {caller_id}). A plain URL gets POST with `timeout_s` and
    `retries`. ToolError on failure; the caller logs it and transfers regardless."""
    if isinstance(target, str):
        target = {"url": target, "method": "POST", "timeout_s": timeout_s, "retries": retries}
    caller = (
        target
        if isinstance(target, WebhookCaller)
        else WebhookCaller(target, base_dir=base_dir, sleep=sleep)
    )
    document = record.to_json() if isinstance(record, HandoffRecord) else dict(record)
    values = {
        "call_ref": document.get("call_ref") or "",
        "caller_id": document.get("caller_id") or "",
    }
    return caller.send(values, default_body=document)
