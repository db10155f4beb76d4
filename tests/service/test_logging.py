"""Log lines: one per event, stage and call fields, JSON, secrets and private data."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agentd.service.logging import Private, log_context, setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(level: str, fmt: str, **kwargs: object) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream, **kwargs)  # type: ignore[arg-type]
    return stream


def test_text_line_has_level_stage_and_call(restore_root: None) -> None:
    out = capture("info", "text")
    logging.getLogger("agentd.sip").info("call %s answered: %s", "1a2b3c4d", "abc@host")
    assert out.getvalue() == "INFO sip call=1a2b3c4d: call 1a2b3c4d answered: abc@host\n"


def test_json_line_with_context_fields(restore_root: None) -> None:
    out = capture("info", "json")
    with log_context(call="feedf00d", stage="asr"):
        logging.getLogger("agentd.speech.asr_whisper").warning("slow decode %d ms", 900)
    logging.getLogger("agentd.dialog").info("no call here")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "warning" and first["stage"] == "asr"
    assert first["call"] == "feedf00d" and first["msg"] == "slow decode 900 ms"
    assert second["stage"] == "dialog" and "call" not in second


def test_an_event_with_a_traceback_is_still_one_line(restore_root: None) -> None:
    out = capture("info", "text")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("agentd.service").exception("failed:\nhere")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "Traceback" in lines[0] and "boom\\nsecond line" in lines[0]


def test_secrets_never_appear(restore_root: None) -> None:
    out = capture("debug", "json", secrets=("s3cret-pw",))
    log = logging.getLogger("agentd.sip")
    log.info("password is %s", "s3cret-pw")
    try:
        raise ValueError("bad s3cret-pw")
    except ValueError:
        log.exception("oops")
    assert "s3cret-pw" not in out.getvalue()
    assert out.getvalue().count("***") >= 2  # message, exception (and its source line)


def test_caller_numbers_and_transcripts_only_at_debug(restore_root: None) -> None:
    out = capture("info", "text")
    log = logging.getLogger("agentd.call")
    log.info("call %s from %s said %s", "1a2b3c4d", Private("+15551234567"),
             Private("my card is 4111", "transcript"))
    assert "+15551234567" not in out.getvalue() and "4111" not in out.getvalue()
    assert "from <caller> said <transcript 15 chars>" in out.getvalue()
    out = capture("debug", "text")
    log.info("call %s from %s", "1a2b3c4d", Private("+15551234567"))
    assert "from +15551234567" in out.getvalue()


def test_private_is_masked_even_without_our_formatter() -> None:
    assert str(Private("+15551234567")) == "<caller>"
    assert "%s" % Private("hello", "transcript") == "<transcript 5 chars>"


def test_a_bad_format_string_keeps_the_event(restore_root: None) -> None:
    out = capture("info", "text")
    logging.getLogger("agentd").info("%d items", "x")
    assert "%d items" in out.getvalue()
