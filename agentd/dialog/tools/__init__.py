"""Business tools for the dialog: calendar, records and identity built-ins on SQLite/CSV,
HTTP webhooks, and the registry that builds them from a policy."""

from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.registry import (
    RequiresGuard,
    build_handoff_webhook,
    build_tools,
    facts_after,
)
from agentd.dialog.tools.webhook import WebhookCaller, WebhookTool, post_handoff

__all__ = [
    "RequiresGuard",
    "ToolConfigError",
    "ToolRefused",
    "WebhookCaller",
    "WebhookTool",
    "build_handoff_webhook",
    "build_tools",
    "facts_after",
    "post_handoff",
]
