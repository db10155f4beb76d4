"""Tool error kinds beyond the shared `ToolError`."""

from __future__ import annotations

from agentd.dialog.types import ToolError


class ToolRefused(ToolError):
    """The tool worked but the business rule said no (slot taken, order shipped, caller not
    verified). The agent tells the caller; unlike a plain `ToolError` (timeout, HTTP 5xx,
    missing database) it is not a reason for the policy's `tool_failure` escalation."""


class ToolConfigError(ValueError):
    """A tool's policy settings are unusable (unknown builtin, bad option, missing secret).
    Raised while building tools, so the operator sees it at load time, never mid-call."""
