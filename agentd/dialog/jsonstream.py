"""Incremental extraction of the top-level "say" string from JSON text as it streams.

An LLM writes its reply as JSON (`{"say": "...", "action": {...}}`) one token at a time; the
call loop wants the spoken words before the JSON is complete. `SayStream.feed(chunk)` takes
any split of the text (escapes, surrogate pairs and quotes may be cut anywhere) and returns the
newly decoded characters of the top-level "say" value. It never raises: text that is not JSON
stops the extraction and sets `malformed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_WHITESPACE = " \t\r\n"


@dataclass
class SayStream:
    """A character-level JSON scanner that decodes one top-level string field as it arrives."""

    key: str = "say"
    say: str = ""  # everything decoded from the field so far
    complete: bool = False  # the top-level object has closed
    say_complete: bool = False  # the field's closing quote has been seen
    malformed: bool = False
    _stack: list[str] = field(default_factory=list)  # open containers: "{" or "["
    _started: bool = False
    _in_string: bool = False
    _string_is_key: bool = False
    _capturing: bool = False
    _escape: bool = False
    _unicode_digits: str | None = None  # hex digits of a \\uXXXX escape being read
    _high_surrogate: int | None = None
    _expect_key: bool = False  # inside an object, the next string is a key
    _key_chars: list[str] = field(default_factory=list)
    _current_key: str | None = None  # the depth-1 key whose value comes next
    _captured_once: bool = False

    def feed(self, chunk: str) -> str:
        """Consume more JSON text; return the newly decoded characters of the field."""
        out: list[str] = []
        for ch in chunk:
            if self.malformed or self.complete:
                break
            self._step(ch, out)
        return "".join(out)

    # ---- the scanner ---------------------------------------------------------------------

    def _step(self, ch: str, out: list[str]) -> None:
        if self._in_string:
            self._string_char(ch, out)
            return
        if ch in _WHITESPACE:
            return
        if not self._started:
            if ch != "{":
                self.malformed = True
                return
            self._started = True
            self._open("{")
            return
        if not self._stack:
            return  # text after the closed object is ignored
        if ch == '"':
            self._in_string = True
            self._string_is_key = self._stack[-1] == "{" and self._expect_key
            self._capturing = (
                not self._string_is_key
                and len(self._stack) == 1
                and self._current_key == self.key
                and not self._captured_once
            )
            self._key_chars = []
            return
        if ch in "{[":
            self._open(ch)
        elif ch in "}]":
            expected = "{" if ch == "}" else "["
            if self._stack[-1] != expected:
                self.malformed = True
                return
            self._stack.pop()
            if not self._stack:
                self.complete = True
            elif self._stack[-1] == "{":
                self._expect_key = False
        elif ch == ",":
            if self._stack[-1] == "{":
                self._expect_key = True
                if len(self._stack) == 1:
                    self._current_key = None
        elif ch == ":":
            if self._stack[-1] == "{":
                self._expect_key = False
        # digits, true/false/null letters and signs need no tracking for this purpose

    def _open(self, ch: str) -> None:
        self._stack.append(ch)
        self._expect_key = ch == "{"

    def _string_char(self, ch: str, out: list[str]) -> None:
        if self._unicode_digits is not None:
            if ch not in "0123456789abcdefABCDEF":
                self.malformed = True
                return
            self._unicode_digits += ch
            if len(self._unicode_digits) == 4:
                code = int(self._unicode_digits, 16)
                self._unicode_digits = None
                self._emit_code_point(code, out)
            return
        if self._escape:
            self._escape = False
            if ch == "u":
                self._unicode_digits = ""
                return
            decoded = _SIMPLE_ESCAPES.get(ch)
            if decoded is None:
                self.malformed = True
                return
            self._emit(decoded, out)
            return
        if ch == "\\":
            self._escape = True
            return
        if ch == '"':
            self._end_string(out)
            return
        self._emit(ch, out)

    def _emit_code_point(self, code: int, out: list[str]) -> None:
        if 0xD800 <= code <= 0xDBFF:
            self._flush_lone_surrogate(out)
            self._high_surrogate = code
            return
        if 0xDC00 <= code <= 0xDFFF and self._high_surrogate is not None:
            combined = 0x10000 + ((self._high_surrogate - 0xD800) << 10) + (code - 0xDC00)
            self._high_surrogate = None
            self._emit(chr(combined), out)
            return
        if 0xDC00 <= code <= 0xDFFF:
            self._emit("\ufffd", out)  # a lone low surrogate cannot be spoken
            return
        self._emit(chr(code), out)

    def _flush_lone_surrogate(self, out: list[str]) -> None:
        if self._high_surrogate is not None:
            self._high_surrogate = None
            self._put("\ufffd", out)

    def _emit(self, text: str, out: list[str]) -> None:
        self._flush_lone_surrogate(out)
        self._put(text, out)

    def _put(self, text: str, out: list[str]) -> None:
        if self._string_is_key:
            self._key_chars.append(text)
        elif self._capturing:
            self.say += text
            out.append(text)

    def _end_string(self, out: list[str]) -> None:
        self._flush_lone_surrogate(out)
        self._in_string = False
        if self._string_is_key:
            if len(self._stack) == 1:
                self._current_key = "".join(self._key_chars)
            self._expect_key = False
        elif self._capturing:
            self._capturing = False
            self._captured_once = True
            self.say_complete = True


def extract_say(text: str, key: str = "say") -> str:
    """The decoded top-level field of a (possibly partial) JSON text; "" if absent."""
    stream = SayStream(key=key)
    stream.feed(text)
    return stream.say
