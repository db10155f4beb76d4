"""The agent's mind: text turns in, speech and actions out, following an operator's policy.

`types` is the shared vocabulary; `policy` the validated call-flow policy (`load_policy`).
"""

# Import order matters: the config schema imports `agentd.dialog.policy` for its dialog:
# section, and the policy module imports the config package's parts. Loading the config
# package first, whichever of the two a program imports first, keeps that cycle harmless.
import agentd.config  # noqa: F401  (must stay first)
from agentd.dialog.policy import DialogConfig, LlmConfig, Policy, load_policy, parse_policy

__all__ = ["DialogConfig", "LlmConfig", "Policy", "load_policy", "parse_policy"]
