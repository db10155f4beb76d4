"""The configuration reference (key, type, default, description), generated from the models."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agentd.config.schema import Config
from agentd.config.values import TypeName

_SCALAR_NAMES = {
    int: "int",
    float: "number",
    str: "string",
    bool: "bool",
    SecretStr: "secret string",
}


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """One key of the configuration file as the reference documents it."""

    key: str
    type: str
    default: str
    description: str


def config_reference(model: type[BaseModel] = Config) -> list[ReferenceRow]:
    """Every key of `model`, sections first and then their keys, in declaration order."""
    return list(_rows(model, ""))


def render_config_reference(rows: list[ReferenceRow] | None = None) -> str:
    """The reference as a Markdown table."""
    rows = config_reference() if rows is None else rows
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for row in rows:
        cells = (
            f"`{row.key}`",
            row.type,
            f"`{row.default}`" if row.default else "",
            row.description,
        )
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _rows(model: type[BaseModel], prefix: str) -> typing.Iterator[ReferenceRow]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield ReferenceRow(
                key, "section", "required" if field.is_required() else "", _describe(field)
            )
            yield from _rows(nested, key + ".")
        else:
            yield ReferenceRow(key, _field_type(field), _default_text(field), _describe(field))


def _describe(field: FieldInfo) -> str:
    return field.description or ""


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _field_type(field: FieldInfo) -> str:
    for item in field.metadata:
        if isinstance(item, TypeName):
            return item.name
    return _type_name(field.annotation) + _bounds(field.metadata)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        for item in args[1:]:
            if isinstance(item, TypeName):
                return item.name
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args if arg is not type(None))
    if origin is typing.Literal:
        return " | ".join(str(arg) for arg in args)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    return _SCALAR_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(metadata: list[Any]) -> str:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = (
                getattr(item, "ge", None) if isinstance(item, annotated_types.Ge) else f">{item.gt}"
            )
        if isinstance(item, annotated_types.Le):
            high = item.le
    if low is None and high is None:
        return ""
    return f" {'' if low is None else low}..{'' if high is None else high}"


def _default_text(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "default_text" in extra:
        return f"= {extra['default_text']}"
    if field.is_required():
        return "required"
    factory = field.default_factory
    value = factory() if factory is not None else field.default  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)
