"""agentd: an on-prem, fully offline AI phone agent."""

__version__ = "0.1.0"
