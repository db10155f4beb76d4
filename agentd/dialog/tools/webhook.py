"""HTTP webhooks as tools, and the hand-off webhook, on one request path.

Templates: `{name}` in the URL, header values and JSON body strings is replaced by a tool
argument or by `{caller_id}` / `{call_ref}` (which arguments cannot override). URL values
are percent-encoded; a body string that is exactly one placeholder keeps the value's JSON
type. Secrets `${env:NAME}` and `${file:path}` (path relative to the policy file) are read
once, when the tool is built, so a missing one is a load-time error; values containing
secrets are never templated further.

Retries (with doubling backoff) happen on connection failures and HTTP 5xx, never on 4xx
or on a read timeout (the server may have acted). Each attempt is bounded by `timeout_s`
overall, and the response body by MAX_RESPONSE_BYTES.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.types import HandoffRecord, JsonDict, ToolContext, ToolError

MAX_RESPONSE_BYTES = 64 * 1024
MAX_STRING_CHARS = 300
MAX_LIST_ITEMS = 10
MAX_DICT_KEYS = 20
MAX_DEPTH = 4
MAX_BACKOFF_S = 2.0
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET = re.compile(r"\$\{(env|file):([^}]+)\}")
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
_REFUSED_STATUSES = {409, 422}  # the server understood and said no: a business refusal


def resolve_secrets(
    text: str, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """Replace `${env:NAME}` and `${file:path}` references; ToolConfigError if one is
    missing (the message names the reference, never a value)."""
    env = os.environ if environ is None else environ

    def secret(match: re.Match[str]) -> str:
        kind, ref = match.group(1), match.group(2).strip()
        if kind == "env":
            if ref not in env:
                raise ToolConfigError(f"environment variable {ref} is not set")
            return env[ref]
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ToolConfigError(f"secret file {path} cannot be read") from None

    return _SECRET.sub(secret, text)


def _fill(template: str, values: Mapping[str, Any], encode: bool) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values or values[name] is None:
            raise ToolRefused(f"missing {name}")
        value = values[name]
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        if not encode:
            return text
        if text in (".", ".."):  # a path segment of dots would climb the URL path
            return "%2E" * len(text)
        return quote(text, safe="")

    return _PLACEHOLDER.sub(one, template)


def _fill_json(template: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            name = whole.group(1)
            if name not in values:
                raise ToolRefused(f"missing {name}")
            return values[name]
        return _fill(template, values, encode=False)
    if isinstance(template, Mapping):
        return {str(k): _fill_json(v, values) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_fill_json(v, values) for v in template]
    return template


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


@dataclass(frozen=True)
class WebhookSpec:
    """One configured request. `body` None: POST/PUT/PATCH send the arguments as JSON."""

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    timeout_s: float = 3.0
    retries: int = 0
    backoff_s: float = 0.25
    verify_tls: bool | str = True


class WebhookCaller:
    """A spec with its secrets resolved, ready to send (thread-safe: a client per call)."""

    def __init__(
        self,
        spec: WebhookSpec,
        *,
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        method = spec.method.upper()
        if method not in _METHODS:
            raise ToolConfigError(f"webhook method {spec.method!r} is not one of {sorted(_METHODS)}")
        if not re.match(r"^https?://", spec.url, re.IGNORECASE):
            raise ToolConfigError(f"webhook url {spec.url!r} must start with http:// or https://")
        if not 0 < spec.timeout_s <= 60 or not 0 <= spec.retries <= 5:
            raise ToolConfigError("webhook timeout_s must be in (0, 60] and retries in 0..5")
        self.spec = spec
        self.method = method
        self._sleep = sleep
        self.url = resolve_secrets(spec.url, base_dir=base_dir, environ=environ)
        self._url_has_secret = self.url != spec.url
        # (name, value, value holds a secret and so is sent exactly as resolved)
        self.headers: list[tuple[str, str, bool]] = []
        for name, raw in spec.headers.items():
            resolved = resolve_secrets(str(raw), base_dir=base_dir, environ=environ)
            self.headers.append((str(name), resolved, resolved != str(raw)))

    def send(self, values: Mapping[str, Any], default_body: Any = None) -> JsonDict:
        """Send once plus retries; {"status": code, "response": trimmed JSON or text}."""
        url = self.url if self._url_has_secret else _fill(self.url, values, encode=True)
        headers = {n: (v if secret else _fill(v, values, encode=False)) for n, v, secret in self.headers}
        payload: Any = None
        if self.spec.body is not None:
            payload = _fill_json(self.spec.body, values)
        elif self.method in ("POST", "PUT", "PATCH"):
            payload = default_body
        content = None
        if payload is not None:
            content = json.dumps(payload, default=str).encode()
            headers.setdefault("Content-Type", "application/json")
        failure = "webhook failed"
        attempts = self.spec.retries + 1
        with httpx.Client(
            timeout=httpx.Timeout(self.spec.timeout_s), trust_env=False, verify=self.spec.verify_tls
        ) as client:
            for attempt in range(attempts):
                if attempt:
                    self._sleep(min(MAX_BACKOFF_S, self.spec.backoff_s * 2 ** (attempt - 1)))
                try:
                    status, body, content_type = self._attempt(client, url, headers, content)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    failure = "could not connect"
                    continue
                except httpx.TimeoutException:
                    raise ToolError("timed out") from None
                except httpx.HTTPError:
                    raise ToolError("connection failed") from None
                except ToolError:
                    raise
                except Exception:  # bad URL after templating, TLS setup, ...: never crash a call
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
        deadline = time.monotonic() + self.spec.timeout_s  # whole attempt, slow drips included
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
            if isinstance(decoded.get(key), str):
                return decoded[key][:120]
        return ""
    return decoded[:120] if isinstance(decoded, str) else ""


class WebhookTool:
    """A policy tool backed by an HTTP endpoint."""

    def __init__(
        self,
        name: str,
        spec: WebhookSpec,
        *,
        description: str = "",
        parameters: JsonDict | None = None,
        confirm: bool = False,
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.description = description or f"Call the {name.replace('_', ' ')} service."
        self.parameters: JsonDict = parameters or {"type": "object", "properties": {}}
        self.confirm = confirm
        self.caller = WebhookCaller(spec, base_dir=base_dir, environ=environ, sleep=sleep)

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        arguments = dict(arguments or {})
        values = {**arguments, "caller_id": context.caller_id or "", "call_ref": context.call_ref}
        return self.caller.send(values, default_body=arguments)


def post_handoff(
    target: WebhookSpec | WebhookCaller | str,
    record: HandoffRecord | JsonDict,
    *,
    timeout_s: float = 2.0,
    retries: int = 1,
    headers: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JsonDict:
    """Send a hand-off record (its JSON is the body unless the spec has a body template,
    which may use {call_ref} {caller_id} {reason} {summary} and {record}). ToolError on
    failure; callers log it, the transfer goes ahead regardless."""
    if isinstance(target, str):
        target = WebhookSpec(
            url=target, timeout_s=timeout_s, retries=retries, headers=dict(headers or {})
        )
    caller = (
        target
        if isinstance(target, WebhookCaller)
        else WebhookCaller(target, base_dir=base_dir, environ=environ, sleep=sleep)
    )
    document = record.to_json() if isinstance(record, HandoffRecord) else dict(record)
    values = {
        "call_ref": document.get("call_ref"),
        "caller_id": document.get("caller_id") or "",
        "reason": document.get("reason") or "",
        "summary": document.get("summary") or "",
        "record": document,
    }
    return caller.send(values, default_body=document)
