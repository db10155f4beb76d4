"""The JSON schema every model output follows, and the strict parser that enforces it.

Each turn the model writes exactly one object: `{"say": "...", "action": {...}}`. "say" comes
first (llama.cpp's grammar keeps property order) so speech can start before the action is
decided. The action is one of: nothing, one declared tool with arguments matching that tool's
parameter schema, a transfer to one declared target, or ending the call. The backend's grammar
makes other outputs unlikely; `parse_reply` makes them impossible to act on, whatever the model
or a remote server produced.

The validator here covers the JSON-schema subset that tool parameters use (type, enum, const,
properties/required/additionalProperties, items/minItems/maxItems, min/maxLength, pattern,
minimum/maximum and their exclusive forms, anyOf/oneOf); annotations such as description,
title, format and default are ignored. Keywords that would change meaning and are not
enforced ($ref, not, allOf, if/then/else, ...) are refused when the schema is built.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentd.dialog.types import AgentAction, AgentReply, JsonDict

SAY_MAX_CHARS = 300
REASON_MAX_CHARS = 200

_UNSUPPORTED = frozenset(
    {
        "$ref", "$defs", "definitions", "not", "allOf", "if", "then", "else",
        "dependentRequired", "dependentSchemas", "patternProperties", "propertyNames",
        "unevaluatedProperties", "unevaluatedItems", "contains", "prefixItems",
    }
)
_TYPES = frozenset({"string", "integer", "number", "boolean", "object", "array", "null"})


class ReplyError(ValueError):
    """The model output is not a reply this policy allows (the message says why)."""


class LlmError(RuntimeError):
    """A backend could not produce a reply (model missing, server down or slow, context
    overflow, bad stream): the agent says so and follows the policy's failure rule."""


class SchemaError(ValueError):
    """A tool's parameter schema uses JSON-schema features this layer cannot enforce."""


# ---- building ---------------------------------------------------------------------------------


def strict_parameters(schema: Mapping[str, Any], *, where: str = "parameters") -> JsonDict:
    """A copy of a tool parameter schema where every object refuses undeclared properties.

    JSON schema allows extra properties unless told otherwise; a tool must only get the
    arguments it declared, and the grammar and the validator must agree, so objects without
    `additionalProperties` get `false` (and objects without `properties` accept only `{}`).
    """
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a schema must be an object, not {type(schema).__name__}")
    result: JsonDict = copy.deepcopy(dict(schema))
    _make_strict(result, where)
    return result


def _make_strict(schema: JsonDict, where: str) -> None:
    bad = sorted(_UNSUPPORTED & schema.keys())
    if bad:
        raise SchemaError(f"{where}: unsupported JSON-schema keyword {bad[0]!r}")
    declared = schema.get("type")
    for t in declared if isinstance(declared, list) else [declared]:
        if t is not None and t not in _TYPES:
            raise SchemaError(f"{where}: unknown type {t!r}")
    is_object = declared == "object" or (declared is None and "properties" in schema)
    if is_object:
        schema.setdefault("properties", {})
        if not isinstance(schema["properties"], dict):
            raise SchemaError(f"{where}.properties: must be an object")
        schema.setdefault("additionalProperties", False)
        for name, sub in schema["properties"].items():
            if not isinstance(sub, dict):
                raise SchemaError(f"{where}.properties.{name}: a schema must be an object")
            _make_strict(sub, f"{where}.properties.{name}")
        extra = schema["additionalProperties"]
        if isinstance(extra, dict):
            _make_strict(extra, f"{where}.additionalProperties")
        for name in schema.get("required", []):
            if name not in schema["properties"]:
                raise SchemaError(f"{where}.required: {name!r} is not a declared property")
    if isinstance(schema.get("items"), dict):
        _make_strict(schema["items"], f"{where}.items")
    for key in ("anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            if not isinstance(sub, dict):
                raise SchemaError(f"{where}.{key}[{i}]: a schema must be an object")
            _make_strict(sub, f"{where}.{key}[{i}]")


def turn_schema(
    tools: Mapping[str, Mapping[str, Any]],
    targets: Sequence[str],
    *,
    allow_end: bool = True,
    say_max_chars: int = SAY_MAX_CHARS,
) -> JsonDict:
    """The schema of one model output: "say" first, then one declared action."""
    actions: list[JsonDict] = [_closed_object({"type": {"const": "none"}})]
    for name, parameters in tools.items():
        actions.append(
            _closed_object(
                {
                    "type": {"const": "tool"},
                    "name": {"const": name},
                    "arguments": strict_parameters(parameters, where=f"tools.{name}.parameters"),
                }
            )
        )
    if targets:
        actions.append(
            _closed_object(
                {
                    "type": {"const": "transfer"},
                    "target": {"enum": list(dict.fromkeys(targets))},
                    "reason": {"type": "string", "maxLength": REASON_MAX_CHARS},
                }
            )
        )
    if allow_end:
        actions.append(
            _closed_object(
                {
                    "type": {"const": "end_call"},
                    "reason": {"type": "string", "maxLength": REASON_MAX_CHARS},
                }
            )
        )
    return _closed_object(
        {
            "say": {"type": "string", "maxLength": say_max_chars},
            "action": {"anyOf": actions},
        }
    )


def _closed_object(properties: JsonDict) -> JsonDict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


# ---- parsing ----------------------------------------------------------------------------------


def parse_reply(
    text: str,
    tools: Mapping[str, Mapping[str, Any]],
    targets: Sequence[str],
    *,
    allow_end: bool = True,
    say_max_chars: int = SAY_MAX_CHARS,
) -> AgentReply:
    """Parse and strictly validate one model output; raise `ReplyError` for anything the
    policy did not declare (unknown tool or target, extra fields, bad arguments)."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ReplyError(f"reply is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ReplyError("reply must be a JSON object")
    _only_keys(value, {"say", "action"}, "reply")
    say = value.get("say")
    if not isinstance(say, str):
        raise ReplyError("reply.say must be a string")
    if len(say) > say_max_chars:
        raise ReplyError(f"reply.say is longer than {say_max_chars} characters")
    action = value.get("action")
    if not isinstance(action, dict):
        raise ReplyError("reply.action must be an object")
    return AgentReply(say=say, action=_parse_action(action, tools, targets, allow_end))


def _parse_action(
    action: JsonDict,
    tools: Mapping[str, Mapping[str, Any]],
    targets: Sequence[str],
    allow_end: bool,
) -> AgentAction:
    kind = action.get("type")
    if kind == "none":
        _only_keys(action, {"type"}, "action")
        return AgentAction()
    if kind == "tool":
        _only_keys(action, {"type", "name", "arguments"}, "action")
        name = action.get("name")
        if not isinstance(name, str) or name not in tools:
            raise ReplyError(f"action calls an undeclared tool {name!r}")
        arguments = action.get("arguments")
        if not isinstance(arguments, dict):
            raise ReplyError(f"action.arguments of tool {name!r} must be an object")
        errors = validate(arguments, strict_parameters(tools[name]), "arguments")
        if errors:
            raise ReplyError(f"tool {name!r}: {errors[0]}")
        return AgentAction(kind="tool", tool=name, arguments=arguments)
    if kind == "transfer":
        _only_keys(action, {"type", "target", "reason"}, "action")
        target = action.get("target")
        if not isinstance(target, str) or target not in targets:
            raise ReplyError(f"action transfers to an undeclared target {target!r}")
        return AgentAction(kind="transfer", target=target, reason=_reason(action))
    if kind == "end_call" and allow_end:
        _only_keys(action, {"type", "reason"}, "action")
        return AgentAction(kind="end_call", reason=_reason(action))
    raise ReplyError(f"action.type {kind!r} is not allowed here")


def _reason(action: JsonDict) -> str:
    reason = action.get("reason")
    if not isinstance(reason, str):
        raise ReplyError("action.reason must be a string")
    if len(reason) > REASON_MAX_CHARS:
        raise ReplyError(f"action.reason is longer than {REASON_MAX_CHARS} characters")
    return reason


def _only_keys(value: JsonDict, allowed: set[str], where: str) -> None:
    extra = sorted(value.keys() - allowed)
    if extra:
        raise ReplyError(f"{where} has an undeclared field {extra[0]!r}")
    missing = sorted(allowed - value.keys())
    if missing:
        raise ReplyError(f"{where} is missing the field {missing[0]!r}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> JsonDict:
    result: JsonDict = {}
    for key, item in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = item
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ---- validation -------------------------------------------------------------------------------


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Every way `value` breaks `schema` (the subset in this module's docstring)."""
    errors: list[str] = []
    _check(value, schema, path, errors)
    return errors


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_matches(value: Any, expected: str) -> bool:
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


def _json_equal(a: Any, b: Any) -> bool:
    # JSON has no bool/int confusion: true is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    return type(a) is type(b) and a == b


def _check(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "const" in schema and not _json_equal(value, schema["const"]):
        errors.append(f"{path}: must be {json.dumps(schema['const'])}")
        return
    if "enum" in schema and not any(_json_equal(value, v) for v in schema["enum"]):
        errors.append(f"{path}: must be one of {json.dumps(schema['enum'])}")
        return
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = sum(1 for sub in schema[key] if not validate(value, sub, path))
            if matches == 0 or (key == "oneOf" and matches > 1):
                errors.append(f"{path}: matches {matches} of the allowed shapes ({key})")
                return
    declared = schema.get("type")
    if declared is not None:
        allowed = declared if isinstance(declared, list) else [declared]
        if not any(_type_matches(value, t) for t in allowed):
            errors.append(f"{path}: must be of type {'/'.join(allowed)}, not {_json_type(value)}")
            return
    if isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, path, errors)
    elif isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)


def _check_string(value: str, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']} characters")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, value) is None:
                errors.append(f"{path}: does not match {pattern!r}")
        except re.error:
            errors.append(f"{path}: the schema's pattern {pattern!r} is not a valid regex")


def _check_number(value: float, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{path}: must be a finite number")
        return
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: less than {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: greater than {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        errors.append(f"{path}: must be greater than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        errors.append(f"{path}: must be less than {schema['exclusiveMaximum']}")


def _check_object(value: JsonDict, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], f"{path}.{name}", errors)
        elif extra is False:
            errors.append(f"{path}: undeclared property {name!r}")
        elif isinstance(extra, Mapping):
            _check(item, extra, f"{path}.{name}", errors)


def _check_array(value: list[Any], schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            _check(item, items, f"{path}[{i}]", errors)
