"""`agentd run`: config to user-agent settings; the process itself lives in agentd.service."""

from __future__ import annotations

import logging

from agentd.config import Config
from agentd.sip.ua import UaSettings

log = logging.getLogger("agentd")


def ua_settings(config: Config) -> UaSettings:
    sip, media = config.sip, config.media
    assert sip.password is not None and sip.domain is not None
    return UaSettings(
        extension=sip.extension,
        registrar=(sip.registrar.host, sip.registrar.port),
        domain=sip.domain,
        auth_user=sip.auth_user or sip.extension,
        password=sip.password.get_secret_value(),
        local_host=str(sip.local_address),
        local_port=sip.local_port,
        transport=sip.transport,
        register_expires=sip.register_expires,
        registration_max_refresh=min(300.0, sip.register_expires),
        display_name=sip.display_name,
        user_agent=sip.user_agent,
        trusted_sources=tuple(sip.trusted_sources or ()),
        max_calls=sip.max_calls,
        rate_per_second=sip.rate_limit.per_second,
        rate_burst=sip.rate_limit.burst,
        session_timer=sip.session_timer,
        rtp_port_min=media.rtp_port_min,
        rtp_port_max=media.rtp_port_max,
        codecs=tuple(media.codecs),
        dtmf_payload_type=media.dtmf_payload_type,
        jitter_min_ms=media.jitter_min_ms,
        jitter_max_ms=media.jitter_max_ms,
    )


def run(config: Config, config_path: str | None = None) -> int:
    """`agentd run`: readiness, watchdog, reload and drain live in agentd.service.lifecycle;
    it builds the UA with `ua_settings` above and the call handler with agentd.handlers."""
    from agentd.service.lifecycle import run_service

    return run_service(config, config_path)
