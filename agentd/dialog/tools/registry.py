"""Build a call flow's tools from its validated policy (`agentd.dialog.policy.Policy`), and
keep the call's facts about what has succeeded (for `requires:` checks).

Facts this module reads and writes (the agent merges `facts_after(...)` into the call's facts
after every tool run that did not raise):
    verified:  {"tool": <tool name>, "record_id": <id>, <id_field>: <id>}   (identity.verify)
    succeeded: [<tool names that succeeded this call>]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentd.dialog.policy import DEFAULT_IDENTITY_MATCH, Policy, ToolSpec
from agentd.dialog.tools import calendar, identity, records
from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.webhook import WebhookCaller, WebhookTool
from agentd.dialog.types import JsonDict, Tool, ToolContext


def build_tools(policy: Policy, base_dir: Path | str | None = None) -> dict[str, Tool]:
    """Every tool the policy declares, by name. Paths in a loaded policy are already
    absolute; a relative one resolves against `base_dir` (default: the policy's folder).
    ToolConfigError names the tool on a setting the tools cannot use."""
    base = (
        Path(base_dir)
        if base_dir is not None
        else (policy.source.parent if policy.source is not None else Path.cwd())
    )
    tools: dict[str, Tool] = {}
    for name, spec in policy.tools.items():
        try:
            tool = build_tool(name, spec, policy, base)
        except (ToolConfigError, TypeError, ValueError) as exc:
            raise ToolConfigError(f"tools.{name}: {exc}") from None
        tools[name] = RequiresGuard(tool, spec.requires) if spec.requires else tool
    return tools


def build_tool(name: str, spec: ToolSpec, policy: Policy, base: Path) -> Tool:
    """One tool (without its `requires` guard)."""
    timezone = policy.agent.timezone
    date_order = policy.agent.date_order
    description = spec.description_text
    if spec.webhook is not None:
        return WebhookTool(
            name,
            spec.webhook,
            description=description,
            parameters=spec.parameters_schema,
            confirm=spec.confirm,
        )
    builtin = spec.builtin or ""
    if builtin.startswith("calendar."):
        if spec.database is None:
            raise ToolConfigError(f"{builtin} needs database")
        options: dict[str, Any] = {}
        if builtin == "calendar.find_slots":
            if spec.max_results is not None:
                options["max_results"] = spec.max_results
            if spec.look_ahead_days is not None:
                options["look_ahead_days"] = spec.look_ahead_days
        return calendar.CALENDAR_TOOLS[builtin](
            name,
            _path(spec.database, base),
            timezone=timezone,
            date_order=date_order,
            description=description,
            confirm=spec.confirm,
            **options,
        )
    if spec.records is None:
        raise ToolConfigError(f"{builtin} needs records")
    path = _path(spec.records, base)
    if builtin == "identity.verify":
        return identity.Verify(
            name,
            path,
            match=spec.match or DEFAULT_IDENTITY_MATCH,
            table=spec.table,
            id_field=spec.id_field or "patient_id",
            date_order=date_order,
            timezone=timezone,
            description=description,
            confirm=spec.confirm,
        )
    settings: dict[str, Any] = {
        "table": spec.table,
        "key": spec.key,
        "caller_id_field": spec.caller_id_field,
        "fields": spec.fields,
        "description": description,
        "confirm": spec.confirm,
    }
    if builtin == "records.lookup":
        return records.Lookup(name, path, **settings)
    if builtin == "records.update":
        return records.Update(name, path, condition=spec.condition, **settings)
    raise ToolConfigError(f"unknown builtin {builtin!r}")


def build_handoff_webhook(policy: Policy) -> WebhookCaller | None:
    """The policy's `escalation.handoff_webhook`, ready for `webhook.post_handoff`."""
    spec = policy.escalation.handoff_webhook
    return WebhookCaller(spec) if spec is not None else None


def _path(value: Path | str, base: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def requirement_met(requirement: str, facts: Mapping[str, Any]) -> bool:
    """Whether the tool `requirement` succeeded earlier in the call, per its facts."""
    verified = facts.get("verified")
    if isinstance(verified, Mapping) and verified.get("tool") == requirement:
        return True
    succeeded = facts.get("succeeded")
    return isinstance(succeeded, (list, tuple)) and requirement in succeeded


def facts_after(tool: Tool | str, result: JsonDict, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The call's facts after `tool` returned `result` (did not raise): the tool joins
    `succeeded`, and a positive identity check is stored under `verified`. A check that
    returned verified false did not succeed."""
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
            **{k: v for k, v in result.items() if k != "verified"},
        }
    return updated


class RequiresGuard:
    """A tool that refuses to run until the tools it requires succeeded in this call."""

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
