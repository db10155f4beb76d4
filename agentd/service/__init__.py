"""agentd as a well-behaved system service: systemd readiness and watchdog (`notify`),
reload and drain/shutdown (`lifecycle`), pre-flight checks (`check`) and log lines
(`logging`). The `service:` config section lives in `config`.
"""

# Import order matters: the config schema imports `agentd.service.config` for its service:
# section, and that module imports the config package's parts. Loading the config package
# first, whichever of the two a program imports first, keeps that cycle harmless.
import agentd.config  # noqa: F401  (must stay first)
from agentd.service.config import ServiceConfig

__all__ = ["ServiceConfig"]
