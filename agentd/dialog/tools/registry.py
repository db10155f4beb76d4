"""Build a call flow's tools from its policy's `tools:` section, and keep the call's facts
about what has succeeded (for `requires:` checks).

Facts this module reads and writes (the agent merges `facts_after` results into the call's
facts after every successful tool run):
    verified:  {"tool": <tool name>, "record_id": <id>, <id_field>: <id>}   (identity.verify)
    succeeded: [<tool names that ran without error this call>]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentd.dialog.tools import calendar, identity, records
from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.webhook import WebhookCaller, WebhookSpec, WebhookTool
from agentd.dialog.types import JsonDict, Tool, ToolContext

_COMMON = frozenset({"builtin", "description", "confirm", "requires"})
_CALENDAR = frozenset({"database", "date_order"})
BUILTIN_OPTIONS: dict[str, frozenset[str]] = {
    "calendar.find_slots": _CALENDAR | {"max_results", "look_ahead_days"},
    "calendar.book": _CALENDAR,
    "calendar.move": _CALENDAR,
    "calendar.cancel": _CALENDAR,
    "calendar.list": _CALENDAR,
    "records.lookup": frozenset({"records", "table", "key", "caller_id_field", "fields"}),
    "records.update": frozenset(
        {"records", "table", "key", "caller_id_field", "fields", "condition", "refusal"}
    ),
    "identity.verify": frozenset(
        {"records", "table", "match", "id_field", "date_order", "name_threshold", "max_attempts"}
    ),
}
"""Options each builtin accepts besides builtin/description/confirm/requires."""

WEBHOOK_OPTIONS = frozenset(
    {"method", "url", "headers", "body", "timeout_s", "retries", "backoff_s", "verify_tls"}
)


def _plain(value: Any) -> Any:
    """A pydantic model (the policy's) or mapping as plain dicts, unset options dropped."""
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    return value


def default_date_order(timezone: str) -> str:
    """Month-first where that is the custom (the US and its neighbours' zones), else
    day-first; a policy can say `date_order:` explicitly."""
    return "mdy" if timezone.startswith(("America/", "US/", "Pacific/Honolulu")) else "dmy"


def build_tools(policy: Any, base_dir: Path | str) -> dict[str, Tool]:
    """Every tool the policy declares, by name; ToolConfigError naming the tool on a bad
    setting. Files are resolved against `base_dir` (the policy file's folder) but only
    opened when a tool runs, so seed scripts may create them after loading."""
    document = _plain(policy)
    base = Path(base_dir)
    agent = document.get("agent") or {}
    timezone = str(agent.get("timezone") or "UTC")
    calendar.zone(timezone)  # fail now on a bad zone
    date_order = str(agent.get("date_order") or default_date_order(timezone))
    tools: dict[str, Tool] = {}
    for name, spec in (document.get("tools") or {}).items():
        try:
            tool = _build_one(str(name), dict(spec), base, timezone, date_order)
        except ToolConfigError as exc:
            raise ToolConfigError(f"tools.{name}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ToolConfigError(f"tools.{name}: {exc}") from None
        requires = tuple(spec.get("requires") or ())
        unknown = [r for r in requires if r not in (document.get("tools") or {})]
        if unknown:
            raise ToolConfigError(f"tools.{name}.requires: no tool named {unknown[0]!r}")
        tools[str(name)] = RequiresGuard(tool, requires) if requires else tool
    return tools


def _build_one(
    name: str, spec: dict[str, Any], base: Path, timezone: str, date_order: str
) -> Tool:
    builtin = spec.get("builtin")
    webhook = spec.get("webhook")
    if (builtin is None) == (webhook is None):
        raise ToolConfigError("set exactly one of `builtin` or `webhook`")
    common: dict[str, Any] = {"confirm": bool(spec.get("confirm", False))}
    if spec.get("description"):
        common["description"] = str(spec["description"])
    if webhook is not None:
        return _webhook_tool(name, spec, dict(webhook), base, common)
    if builtin not in BUILTIN_OPTIONS:
        raise ToolConfigError(f"unknown builtin {builtin!r}; known: {', '.join(BUILTIN_OPTIONS)}")
    options = {k: v for k, v in spec.items() if k not in _COMMON}
    extra = sorted(set(options) - BUILTIN_OPTIONS[builtin])
    if extra:
        allowed = ", ".join(sorted(BUILTIN_OPTIONS[builtin]))
        raise ToolConfigError(f"{builtin} has no option {extra[0]!r} (it takes: {allowed})")
    if builtin.startswith("calendar."):
        if "database" not in options:
            raise ToolConfigError(f"{builtin} needs `database`")
        database = base / str(options.pop("database"))
        options.setdefault("date_order", date_order)
        return calendar.CALENDAR_TOOLS[builtin](
            name, database, timezone=timezone, **options, **common
        )
    if "records" not in options:
        raise ToolConfigError(f"{builtin} needs `records`")
    path = base / str(options.pop("records"))
    if builtin == "identity.verify":
        options.setdefault("date_order", date_order)
        return identity.Verify(name, path, timezone=timezone, **options, **common)
    return records.RECORD_TOOLS[builtin](name, path, **options, **common)


def _webhook_tool(
    name: str, spec: dict[str, Any], webhook: dict[str, Any], base: Path, common: dict[str, Any]
) -> Tool:
    extra = sorted(set(spec) - _COMMON - {"webhook", "parameters"})
    if extra:
        raise ToolConfigError(f"a webhook tool has no option {extra[0]!r}")
    parameters = spec.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        raise ToolConfigError("parameters must be a JSON schema with type: object")
    return WebhookTool(
        name, webhook_spec(webhook), parameters=dict(parameters), base_dir=base, **common
    )


def webhook_spec(settings: Mapping[str, Any]) -> WebhookSpec:
    """A WebhookSpec from a policy's webhook mapping (tool or hand-off)."""
    settings = _plain(settings)
    extra = sorted(set(settings) - WEBHOOK_OPTIONS)
    if extra:
        raise ToolConfigError(f"webhook has no option {extra[0]!r}")
    if "url" not in settings:
        raise ToolConfigError("webhook needs `url`")
    return WebhookSpec(
        url=str(settings["url"]),
        method=str(settings.get("method", "POST")),
        headers={str(k): str(v) for k, v in (settings.get("headers") or {}).items()},
        body=settings.get("body"),
        timeout_s=float(settings.get("timeout_s", 3.0)),
        retries=int(settings.get("retries", 0)),
        backoff_s=float(settings.get("backoff_s", 0.25)),
        verify_tls=settings.get("verify_tls", True),
    )


def build_handoff_webhook(policy: Any, base_dir: Path | str) -> WebhookCaller | None:
    """The policy's `escalation.handoff_webhook`, ready for `webhook.post_handoff`."""
    document = _plain(policy)
    settings = (document.get("escalation") or {}).get("handoff_webhook")
    if not settings:
        return None
    settings = {"timeout_s": 2.0, "retries": 1, **settings}
    try:
        return WebhookCaller(webhook_spec(settings), base_dir=Path(base_dir))
    except (ToolConfigError, TypeError, ValueError) as exc:
        raise ToolConfigError(f"escalation.handoff_webhook: {exc}") from None


def requirement_met(requirement: str, facts: Mapping[str, Any]) -> bool:
    verified = facts.get("verified")
    if isinstance(verified, Mapping) and verified.get("tool") == requirement:
        return True
    succeeded = facts.get("succeeded")
    return isinstance(succeeded, (list, tuple)) and requirement in succeeded


def facts_after(
    tool: Tool | str, result: JsonDict, facts: Mapping[str, Any]
) -> dict[str, Any]:
    """The call's facts after `tool` returned `result` (not raised): the tool is added to
    `succeeded`, and a positive identity check is recorded under `verified`. A verify
    that returned verified false did not succeed."""
    name = tool if isinstance(tool, str) else tool.name
    updated = dict(facts)
    if isinstance(result, Mapping) and result.get("verified") is False:
        return updated
    succeeded = list(updated.get("succeeded") or ())
    if name not in succeeded:
        succeeded.append(name)
    updated["succeeded"] = succeeded
    if isinstance(result, Mapping) and result.get("verified") is True:
        updated["verified"] = {
            "tool": name,
            **{k: v for k, v in result.items() if k not in ("verified", "name")},
        }
    return updated


class RequiresGuard:
    """A tool that refuses to run until the checks it requires succeeded in this call."""

    def __init__(self, tool: Tool, requires: Sequence[str]) -> None:
        self.tool = tool
        self.requires = tuple(requires)
        self.name = tool.name
        self.description = tool.description
        self.parameters = tool.parameters
        self.confirm = tool.confirm

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        missing = [r for r in self.requires if not requirement_met(r, context.facts)]
        if missing:
            raise ToolRefused(f"call {missing[0]} successfully first")
        return self.tool.run(arguments, context)


