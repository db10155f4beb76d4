"""Reading tool arguments defensively: the agent validates them against the schema, but a
tool still must not raise anything but ToolError on odd input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentd.dialog.tools.errors import ToolRefused


def text_arg(arguments: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = arguments.get(key) if isinstance(arguments, Mapping) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ToolRefused(f"missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ToolRefused(f"{key} must be text")
    return str(value).strip()


def int_arg(arguments: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = arguments.get(key) if isinstance(arguments, Mapping) else None
    if value is None or value == "":
        if required:
            raise ToolRefused(f"missing {key}")
        return None
    if isinstance(value, bool):
        raise ToolRefused(f"{key} must be a number")
    try:
        number = int(str(value).strip().lstrip("#"))
    except ValueError:
        raise ToolRefused(f"{key} must be a number") from None
    if not -(2**63) <= number < 2**63:
        raise ToolRefused(f"{key} is out of range")
    return number


def verified_id(facts: Mapping[str, Any], key: str = "patient_id") -> str | None:
    """The record id a successful identity check stored in the call's facts."""
    verified = facts.get("verified") if isinstance(facts, Mapping) else None
    if isinstance(verified, Mapping):
        value = verified.get(key, verified.get("record_id"))
        if value is not None and str(value).strip():
            return str(value)
    return None
