"""Business tools for the dialog: calendar, records and identity built-ins on SQLite/CSV,
HTTP webhooks, and the registry that builds them from a policy."""

from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.registry import (
    BUILTIN_OPTIONS,
    RequiresGuard,
    build_handoff_webhook,
    build_tools,
    facts_after,
)
from agentd.dialog.tools.webhook import WebhookCaller, WebhookSpec, WebhookTool, post_handoff

__all__ = [
    "BUILTIN_OPTIONS",
    "RequiresGuard",
    "ToolConfigError",
    "ToolRefused",
    "WebhookCaller",
    "WebhookSpec",
    "WebhookTool",
    "build_handoff_webhook",
    "build_tools",
    "facts_after",
    "post_handoff",
]
