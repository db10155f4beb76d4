"""agentd configuration: one YAML file, validated up front with file:line:key errors.

config = load_config("/etc/agentd/config.yaml")   # raises ConfigError
config.sip.registrar.host, config.sip.password.get_secret_value()
"""

from agentd.config.errors import ConfigError, ConfigIssue
from agentd.config.loader import load_config, parse_config
from agentd.config.reference import ReferenceRow, config_reference, render_config_reference
from agentd.config.schema import (
    AppConfig,
    Config,
    LogConfig,
    MediaConfig,
    RateLimitConfig,
    SipConfig,
)
from agentd.config.values import HostPort

__all__ = [
    "AppConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "HostPort",
    "LogConfig",
    "MediaConfig",
    "RateLimitConfig",
    "ReferenceRow",
    "SipConfig",
    "config_reference",
    "load_config",
    "parse_config",
    "render_config_reference",
]
