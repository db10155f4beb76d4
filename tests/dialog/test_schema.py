"""turn_schema built from the policy's tools and targets; parse_reply refuses anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.dialog.schema import (
    SAY_MAX_CHARS,
    ReplyError,
    SchemaError,
    parse_reply,
    strict_parameters,
    turn_schema,
    validate,
)
from agentd.dialog.types import AgentAction, AgentReply

TOOLS = {
    "find_slots": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
            "count": {"type": "integer", "minimum": 1, "maximum": 3},
        },
        "required": ["day"],
    },
    "verify_identity": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "date_of_birth": {"type": "string"}},
        "required": ["name", "date_of_birth"],
    },
    "hours_today": {"type": "object"},
}
TARGETS = ["front_desk", "billing"]


def reply(action: dict, say: str = "OK.") -> str:
    return json.dumps({"say": say, "action": action})


def slots(**arguments: object) -> str:
    return reply({"type": "tool", "name": "find_slots", "arguments": arguments})


def test_schema_puts_say_first_and_closes_every_object() -> None:
    schema = turn_schema(TOOLS, TARGETS)
    assert list(schema["properties"]) == ["say", "action"]
    assert schema["required"] == ["say", "action"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["say"] == {"type": "string", "maxLength": SAY_MAX_CHARS}
    variants = schema["properties"]["action"]["anyOf"]
    kinds = [v["properties"]["type"]["const"] for v in variants]
    assert kinds == ["none", "tool", "tool", "tool", "transfer", "end_call"]
    names = [v["properties"]["name"]["const"] for v in variants if "name" in v["properties"]]
    assert names == list(TOOLS)
    transfer = variants[4]
    assert transfer["properties"]["target"] == {"enum": TARGETS}
    for v in variants:
        assert v["additionalProperties"] is False
        assert v["required"] == list(v["properties"])
        assert list(v["properties"])[0] == "type"
    # a tool without declared properties accepts only {}
    hours = variants[3]["properties"]["arguments"]
    assert hours["properties"] == {} and hours["additionalProperties"] is False
    # the caller's schema was not modified
    assert "additionalProperties" not in TOOLS["find_slots"]


def test_schema_without_targets_or_end() -> None:
    schema = turn_schema({}, [], allow_end=False)
    variants = schema["properties"]["action"]["anyOf"]
    assert [v["properties"]["type"]["const"] for v in variants] == ["none"]


def test_schema_refuses_keywords_it_cannot_enforce() -> None:
    with pytest.raises(SchemaError, match=r"tools.x.parameters.properties.a: .*'\$ref'"):
        turn_schema({"x": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}}, [])
    with pytest.raises(SchemaError, match="not a declared property"):
        strict_parameters({"type": "object", "properties": {}, "required": ["a"]})
    with pytest.raises(SchemaError, match="unknown type"):
        strict_parameters({"type": "date"})


def test_schema_compiles_to_a_llama_grammar() -> None:
    grammar = pytest.importorskip("llama_cpp.llama_grammar")
    gbnf = grammar.json_schema_to_gbnf(json.dumps(turn_schema(TOOLS, TARGETS)))
    root = next(line for line in gbnf.splitlines() if line.startswith("root ::="))
    assert root.index("say") < root.index("action")
    assert '\\"front_desk\\"' in gbnf and '\\"find_slots\\"' in gbnf


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ({"type": "none"}, AgentAction()),
        (
            {"type": "tool", "name": "find_slots", "arguments": {"day": "2025-03-04"}},
            AgentAction(kind="tool", tool="find_slots", arguments={"day": "2025-03-04"}),
        ),
        (
            {"type": "tool", "name": "hours_today", "arguments": {}},
            AgentAction(kind="tool", tool="hours_today", arguments={}),
        ),
        (
            {"type": "transfer", "target": "billing", "reason": "invoice question"},
            AgentAction(kind="transfer", target="billing", reason="invoice question"),
        ),
        (
            {"type": "end_call", "reason": "done"},
            AgentAction(kind="end_call", reason="done"),
        ),
    ],
)
def test_parse_reply_accepts_declared_actions(action: dict, expected: AgentAction) -> None:
    assert parse_reply(reply(action, "Sure."), TOOLS, TARGETS) == AgentReply("Sure.", expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            reply({"type": "tool", "name": "delete_all", "arguments": {}}),
            "undeclared tool 'delete_all'",
        ),
        (reply({"type": "transfer", "target": "911", "reason": "x"}), "undeclared target '911'"),
        (
            reply({"type": "transfer", "target": "sip:attacker@evil", "reason": "x"}),
            "undeclared target",
        ),
        (reply({"type": "transfer", "target": None, "reason": "x"}), "undeclared target None"),
        (reply({"type": "dial", "number": "911"}), "action.type 'dial' is not allowed"),
        (reply({"type": "none", "extra": 1}), "undeclared field 'extra'"),
        (
            json.dumps({"say": "x", "action": {"type": "none"}, "system": "y"}),
            "undeclared field 'system'",
        ),
        (json.dumps({"say": "x"}), "missing the field 'action'"),
        (json.dumps({"action": {"type": "none"}}), "missing the field 'say'"),
        (json.dumps({"say": 5, "action": {"type": "none"}}), "say must be a string"),
        (
            json.dumps({"say": "x" * (SAY_MAX_CHARS + 1), "action": {"type": "none"}}),
            "longer than",
        ),
        (slots(day="tomorrow"), "does not match"),
        (slots(), "missing required property 'day'"),
        (slots(day="2025-01-01", sql="drop"), "undeclared property 'sql'"),
        (slots(day="2025-01-01", count=9), "greater than 3"),
        (slots(day="2025-01-01", count=True), "must be of type integer"),
        (
            reply({"type": "tool", "name": "hours_today", "arguments": {"a": 1}}),
            "undeclared property 'a'",
        ),
        (reply({"type": "tool", "name": "hours_today", "arguments": []}), "must be an object"),
        (reply({"type": "transfer", "target": "billing"}), "missing the field 'reason'"),
        ('{"say": "a", "say": "b", "action": {"type": "none"}}', "not valid JSON: duplicate key"),
        ('{"say": "a", "action": {"type": "none"}', "not valid JSON"),
        ('{"say": NaN, "action": {"type": "none"}}', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("", "not valid JSON"),
    ],
)
def test_parse_reply_refuses_anything_undeclared(text: str, message: str) -> None:
    with pytest.raises(ReplyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_reply(text, TOOLS, TARGETS)


def test_end_call_refused_when_not_allowed() -> None:
    with pytest.raises(ReplyError, match="not allowed"):
        parse_reply(reply({"type": "end_call", "reason": "x"}), TOOLS, TARGETS, allow_end=False)


def test_validate_covers_the_subset() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
            "n": {"type": ["number", "null"], "exclusiveMinimum": 0},
            "code": {"anyOf": [{"type": "string", "minLength": 3}, {"type": "integer"}]},
            "one": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "flag": {"const": True},
        },
        "additionalProperties": {"type": "string"},
    }
    assert validate({"tags": ["a"], "n": None, "code": 12, "x": "y", "flag": True}, schema) == []
    errors = validate(
        {"tags": ["c", "a", "b"], "n": 0, "code": "ab", "one": 2, "flag": 1, "x": 5}, schema
    )
    joined = "\n".join(errors)
    for fragment in (
        "$.tags: more than 2",
        "$.tags[0]: must be one of",
        "$.n: must be greater",
        "$.code: matches 0",
        "$.one: matches 2",
        "$.flag: must be true",
        "$.x: must be of type string",
    ):
        assert fragment in joined
    assert validate(1.0, {"type": "integer"}) == []
    assert validate(float("inf"), {"type": "number"}) != []


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=10,
    )
)
def test_parse_reply_only_raises_reply_error(action: object) -> None:
    for text in (json.dumps({"say": "x", "action": action}), json.dumps(action)):
        try:
            parse_reply(text, TOOLS, TARGETS)
        except ReplyError:
            pass
