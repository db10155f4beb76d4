"""The `service:` config section: how agentd behaves as a long-running service."""

from __future__ import annotations

from pydantic import Field

from agentd.config.values import FilePath, Number, Section


class ServiceConfig(Section):
    """Running as a service: shutdown drain, reload pid file, registration wait."""

    drain_seconds: Number = Field(
        5.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long calls in progress may go on (new calls get 486) "
        "before they are ended politely; systemd's TimeoutStopSec must be longer.",
    )
    goodbye_seconds: Number = Field(
        4.0,
        ge=0,
        le=60,
        description="How long a call's goodbye line may take when the drain time is up.",
    )
    pid_file: FilePath | None = Field(
        None,
        description="File the daemon writes its pid to, read by `agentd reload`; "
        "relative to the config file.",
        json_schema_extra={"default_text": "$RUNTIME_DIRECTORY/agentd.pid under systemd, else unset"},
    )
