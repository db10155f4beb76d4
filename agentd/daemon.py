"""`agentd run`: the long-running process — logging, the SIP user agent, signals."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
import time

from agentd.config import Config
from agentd.linetest import echo_handler, playback_handler
from agentd.sip.ua import UaSettings, UserAgent

log = logging.getLogger("agentd")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    """One line per event on stdout (journald adds the time and unit)."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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


def call_handler(config: Config):
    app = config.app
    transfers = dict(app.dtmf_transfer)
    if app.mode == "playback":
        assert app.playback_file is not None
        return playback_handler(app.playback_file, transfers)
    return echo_handler(app.echo_delay_ms, transfers)


async def serve(config: Config, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); 0 on a clean stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    services = None
    if config.dialog.enabled:
        # The AI agent: models load once here and every call shares them.
        from agentd.call.app import agent_handler, build_services
        from agentd.speech.interfaces import SpeechError

        try:
            services = await asyncio.to_thread(build_services, config)
        except (SpeechError, OSError, ValueError, RuntimeError) as exc:  # ModelError, LlmError
            log.error("cannot start the agent: %s", exc)
            return 1
        handler = agent_handler(services)
    else:
        handler = call_handler(config)
    ua = UserAgent(ua_settings(config), handler)
    try:
        await ua.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.sip.local_address,
                  config.sip.local_port, exc)
        if services is not None:
            services.tts.close()
        return 1
    # Start-up objects (config, models, modules) never die: keep them out of the garbage
    # collector's full passes, which otherwise stall the media clock for 10+ ms.
    gc.freeze()
    host, port = ua.local_address
    log.info("agentd listening on %s:%s (%s), registering %s at %s:%s", host, port,
             config.sip.transport, ua.aor, *ua.settings.registrar)
    started = time.monotonic()
    await stop.wait()
    log.info("stopping after %.0f s", time.monotonic() - started)
    await ua.stop()
    if services is not None:
        services.tts.close()
    return 0


def run(config: Config, config_path: str | None = None) -> int:
    """`agentd run`: readiness, watchdog, reload and drain live in agentd.service.lifecycle;
    it builds the UA and the call handler with `ua_settings` and `call_handler` above."""
    from agentd.service.lifecycle import run_service

    return run_service(config, config_path)
