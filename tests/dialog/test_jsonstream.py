"""SayStream: the "say" field decoded from JSON split anywhere, never raising."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.dialog.jsonstream import SayStream, extract_say


def feed_all(chunks: list[str]) -> tuple[str, SayStream]:
    stream = SayStream()
    return "".join(stream.feed(c) for c in chunks), stream


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(max(c, 0), len(text)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


def test_plain_say_streams_characters_as_they_arrive() -> None:
    stream = SayStream()
    assert stream.feed('{"say": "Hel') == "Hel"
    assert stream.feed("lo, the") == "lo, the"
    assert not stream.say_complete
    assert stream.feed("re.\", ") == "re."
    assert stream.say_complete and not stream.complete
    assert stream.feed('"action": {"type": "none"}}') == ""
    assert stream.complete
    assert stream.say == "Hello, there."


def test_escape_split_between_backslash_and_letter() -> None:
    text, _ = feed_all(['{"say": "a\\', 'nb\\', '"c\\', "\\", 'd"}'])
    assert text == 'a\nb"c\\d'


def test_unicode_escape_split_inside_the_hex_digits() -> None:
    text, _ = feed_all(['{"say": "caf\\u0', "0", "e", '9 ok"}'])
    assert text == "café ok"


def test_surrogate_pair_split_across_chunks() -> None:
    text, _ = feed_all(['{"say": "hi \\ud83d', "\\ude00", '"}'])
    assert text == "hi \U0001f600"


def test_lone_surrogates_become_replacement_characters() -> None:
    assert extract_say('{"say": "a\\ud83db"}') == "a\ufffdb"
    assert extract_say('{"say": "a\\ude00b"}') == "a\ufffdb"


def test_say_after_other_keys_and_nested_say_is_ignored() -> None:
    text = json.dumps(
        {"action": {"type": "tool", "arguments": {"say": "NO", "list": ["say", {"say": "x"}]}},
         "say": "yes"}
    )
    assert extract_say(text) == "yes"


def test_a_string_value_equal_to_say_is_not_a_key() -> None:
    assert extract_say('{"other": "say", "say": "real"}') == "real"


def test_duplicate_say_key_only_first_is_spoken() -> None:
    assert extract_say('{"say": "one", "say": "two"}') == "one"


def test_braces_and_quotes_inside_strings_do_not_confuse_depth() -> None:
    text, stream = feed_all(['{"x": "}}]]\\"{", "say": "a}b{c\\"", "y": 1}'])
    assert text == 'a}b{c"'
    assert stream.complete


def test_not_json_is_marked_malformed_without_raising() -> None:
    stream = SayStream()
    assert stream.feed("Sure! Here is") == ""
    assert stream.malformed
    bad = SayStream()
    assert bad.feed('{"say": "ok\\q more"}') == "ok"
    assert bad.malformed
    hexbad = SayStream()
    hexbad.feed('{"say": "\\u12G4"}')
    assert hexbad.malformed
    mismatch = SayStream()
    mismatch.feed('{"a": [1}')
    assert mismatch.malformed


def test_text_after_the_object_is_ignored() -> None:
    text, stream = feed_all(['{"say": "a"} {"say": "b"}'])
    assert text == "a" and stream.complete


@settings(max_examples=300, deadline=None)
@given(
    say=st.text(max_size=60),
    other=st.text(max_size=20),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_of_any_reply_decodes_exactly(
    say: str, other: str, ascii_only: bool, cuts: list[int]
) -> None:
    reply = {"say": say, "action": {"type": "transfer", "target": other, "reason": other}}
    text = json.dumps(reply, ensure_ascii=ascii_only)
    decoded, stream = feed_all(split_at(text, cuts))
    assert decoded == say
    assert stream.complete and stream.say_complete and not stream.malformed


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_garbage_never_raises(garbage: str) -> None:
    stream = SayStream()
    for ch in garbage:
        stream.feed(ch)
