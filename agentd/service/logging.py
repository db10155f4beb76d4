"""Log lines for journald and collectors: one line per event, with level, stage and call.

    setup_logging("info", "json", secrets=("s3cret",))
    log.info("call %s from %s", leg.reference, Private(leg.caller))    # caller hidden at info
    with log_context(call=leg.reference, stage="asr"): ...            # tags every line inside

* One event is one line: newlines inside a message or traceback are written as `\\n`.
* `stage` is the layer that logged (sip, media, speech, dialog, service...), taken from an
  explicit `extra={"stage": ...}`, else the `log_context`, else the logger name.
* `call` is the call's short reference, from `extra`, the context, or a message that starts
  with `call <ref>` (the SIP layer's convention).
* Secrets (the SIP password, API keys) are replaced by `***` wherever they appear.
* `Private` values (caller numbers, transcripts) are shown only when the operator enables
  it: at log level debug. Otherwise they read `<caller>` / `<transcript N chars>`, also
  when no formatter of ours is installed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from agentd.private import Private  # re-exported: callers import it from here too

__all__ = [
    "JsonFormatter",
    "LogEvent",
    "Private",
    "TextFormatter",
    "config_secrets",
    "log_context",
    "make_formatter",
    "setup_logging",
]

_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentd_call", default=None)
_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentd_stage", default=None)
_CALL_PREFIX = re.compile(r"^call ([0-9A-Za-z]{4,32})\b")
SECRET_MASK = "***"


@contextlib.contextmanager
def log_context(*, call: str | None = None, stage: str | None = None) -> Iterator[None]:
    """Tag every log line in this block (and tasks started in it) with `call`/`stage`."""
    tokens = []
    if call is not None:
        tokens.append((_CALL, _CALL.set(call)))
    if stage is not None:
        tokens.append((_STAGE, _STAGE.set(stage)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


@dataclass(frozen=True)
class LogEvent:
    """What a formatter writes for one record."""

    ts: float
    level: str
    logger: str
    stage: str
    call: str | None
    msg: str
    exc: str | None


class _EventFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = (), show_private: bool = False) -> None:
        super().__init__()
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self.show_private = show_private

    def event(self, record: logging.LogRecord) -> LogEvent:
        msg = self._message(record)
        call = getattr(record, "call", None) or _CALL.get()
        if call is None:
            match = _CALL_PREFIX.match(msg)
            call = match.group(1) if match else None
        stage = getattr(record, "stage", None) or _STAGE.get() or _stage_of(record.name)
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return LogEvent(
            ts=round(record.created, 3),
            level=record.levelname.lower(),
            logger=record.name,
            stage=str(stage),
            call=None if call is None else str(call),
            msg=self._redact(msg),
            exc=None if exc is None else self._redact(exc),
        )

    def _message(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple):
            args = tuple(self._reveal(arg) for arg in args)
        elif isinstance(args, dict):
            args = {key: self._reveal(value) for key, value in args.items()}
        text = str(record.msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError, KeyError):
                text = f"{text} {args!r}"  # a bad format string must not lose the event
        return text

    def _reveal(self, value: Any) -> Any:
        if isinstance(value, Private):
            return value.value if self.show_private else value.masked()
        return value

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, SECRET_MASK)
        return text


class TextFormatter(_EventFormatter):
    """`INFO sip call=1a2b3c4d: message` (journald adds time and unit)."""

    def format(self, record: logging.LogRecord) -> str:
        event = self.event(record)
        call = f" call={event.call}" if event.call else ""
        line = f"{record.levelname} {event.stage}{call}: {event.msg}"
        if event.exc:
            line += f" | {event.exc}"
        return _one_line(line)


class JsonFormatter(_EventFormatter):
    """One JSON object per line: ts, level, logger, stage, call, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        event = self.event(record)
        entry: dict[str, Any] = {
            "ts": event.ts,
            "level": event.level,
            "logger": event.logger,
            "stage": event.stage,
        }
        if event.call:
            entry["call"] = event.call
        entry["msg"] = event.msg
        if event.exc:
            entry["exc"] = event.exc
        return json.dumps(entry, ensure_ascii=False)


def make_formatter(
    fmt: str, *, secrets: Iterable[str] = (), show_private: bool = False
) -> _EventFormatter:
    if fmt == "json":
        return JsonFormatter(secrets, show_private)
    return TextFormatter(secrets, show_private)


def setup_logging(
    level: str,
    fmt: str,
    *,
    secrets: Iterable[str] = (),
    show_private: bool | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every logger to one stdout handler with our formatter; returns the handler.

    Calling it again (on reload) replaces the handler, so level, format and secrets change
    together. Private data shows when `show_private`, by default only at level debug.
    """
    if show_private is None:
        show_private = level.lower() == "debug"
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(make_formatter(fmt, secrets=secrets, show_private=show_private))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


def config_secrets(config: Any) -> tuple[str, ...]:
    """The secret strings in a Config that must never reach a log line."""
    found: list[str] = []
    password = getattr(getattr(config, "sip", None), "password", None)
    if password is not None:
        found.append(password.get_secret_value())
    llm = getattr(getattr(config, "dialog", None), "llm", None)
    if llm is not None:
        key = llm.api_key()
        if key:
            found.append(key)
    # Very short secrets would mask ordinary words; digest auth makes them weak anyway.
    return tuple(secret for secret in found if len(secret) >= 3)


def _stage_of(logger_name: str) -> str:
    parts = logger_name.split(".")
    if parts[0] == "agentd" and len(parts) > 1:
        return parts[1]
    return parts[0] or "root"


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
