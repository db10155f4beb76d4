"""Run pydantic validation and turn its errors into file:line:key ConfigIssues."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import Node

from agentd.config.errors import ConfigError, ConfigIssue
from agentd.config.values import BLAME_CTX_KEY
from agentd.config.yaml_source import format_path, line_of

ModelT = TypeVar("ModelT", bound=BaseModel)

_MAX_SHOWN_INPUT = 60


def validate_document(
    model: type[ModelT],
    data: Any,
    *,
    source: str,
    root: Node | None,
    base_dir: Path | str | None,
    prior_issues: Sequence[ConfigIssue] = (),
) -> ModelT:
    """Validate `data` against `model`; raise ConfigError listing every issue found.

    `root` is the YAML node tree `data` came from (None when there is none) and is used
    only to find line numbers. Relative file paths resolve against `base_dir`.
    """
    if data is None:
        data = {}  # an empty file: report the missing required sections
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd()}
    issues = list(prior_issues)
    try:
        result = model.model_validate(data, context=context)
    except ValidationError as exc:
        issues.extend(_issue(model, error, source, root) for error in exc.errors())
        result = None
    if issues or result is None:
        raise ConfigError(issues)
    return result


def _issue(
    model: type[BaseModel], error: ErrorDetails, source: str, root: Node | None
) -> ConfigIssue:
    loc = list(error["loc"])
    ctx = error.get("ctx") or {}
    bad_key = bool(loc) and loc[-1] == "[key]"
    if bad_key:
        loc.pop()
    if BLAME_CTX_KEY in ctx:
        loc.extend(str(ctx[BLAME_CTX_KEY]).split("."))
    return ConfigIssue(
        file=source,
        line=line_of(root, loc),
        key=format_path(loc),
        message=_message(model, error, loc, bad_key),
    )


def _message(model: type[BaseModel], error: ErrorDetails, loc: list[Any], bad_key: bool) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required key missing"
    if kind == "extra_forbidden":
        return "unknown key" + _suggestion(model, loc)
    if kind == "config_check":
        return error["msg"]
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    text = _expected(kind, ctx, error["msg"])
    if bad_key:
        text = "invalid key: " + text
    if _is_secret(model, loc):
        return text  # never echo what was typed for a password
    return f"{text}, got {_shown(error.get('input'))}"


_EXPECTED_BY_TYPE = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping of keys",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
    "greater_than_equal": "expected at least {ge}",
    "greater_than": "expected more than {gt}",
    "less_than_equal": "expected at most {le}",
    "less_than": "expected less than {lt}",
    "too_short": "expected at least {min_length} item(s)",
    "too_long": "expected at most {max_length} item(s)",
}


def _expected(kind: str, ctx: dict[str, Any], fallback: str) -> str:
    template = _EXPECTED_BY_TYPE.get(kind)
    if template is not None:
        try:
            return template.format(**ctx)
        except (KeyError, IndexError):
            pass
    for prefix in ("Input should be ", "Input should have ", "Value should have "):
        if fallback.startswith(prefix):
            return "expected " + fallback[len(prefix) :]
    return fallback[:1].lower() + fallback[1:]


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_INPUT else text[: _MAX_SHOWN_INPUT - 3] + "..."


def _suggestion(model: type[BaseModel], loc: Sequence[Any]) -> str:
    parent = _model_at(model, loc[:-1])
    if parent is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; expected one of: {', '.join(parent.model_fields)}"


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class reached by following field names in `loc`, if there is one."""
    current: type[BaseModel] = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        nested = _model_class(field.annotation) if field is not None else None
        if nested is None:
            return None
        current = nested
    return current


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def _is_secret(model: type[BaseModel], loc: Sequence[Any]) -> bool:
    if not loc:
        return False
    parent = _model_at(model, loc[:-1])
    if parent is None or not isinstance(loc[-1], str) or loc[-1] not in parent.model_fields:
        return False
    annotation = parent.model_fields[loc[-1]].annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)
