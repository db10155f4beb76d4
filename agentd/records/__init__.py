"""Call records: SQLite store, the call loop's observer, `agentd calls`, recordings,
retention."""

from agentd.records.model import (
    CallEnd,
    CallRecord,
    Outcome,
    RecordError,
    ToolCall,
    Turn,
    TurnLatency,
    outcome_for,
)
from agentd.records.store import CallStore, default_database_path

__all__ = [
    "CallEnd",
    "CallRecord",
    "CallStore",
    "Outcome",
    "RecordError",
    "ToolCall",
    "Turn",
    "TurnLatency",
    "default_database_path",
    "outcome_for",
]
